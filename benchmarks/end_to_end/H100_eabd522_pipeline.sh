#!/usr/bin/env bash
# device side, with setsid: bash .dev/s/pipeline_i.sh COMMIT -- session 6, short of device time (four machine
# starts failed, 180 s each): GPU tests of the code new on CUDA (latent decode kernel, stop check, compaction,
# prompt replay), then alone on the card: large-v3 generation rows (mla-graph through the kernel), end to end tiny.en
# MHA fp32 (stop check, compaction).
set -u
commit=$1; R=/root/res; mkdir -p $R/end_to_end $R/generate; exec > $R/pipeline.log 2>&1
rm -rf /root/work && mkdir -p /root/work && cp -a . /root/work/ && cd /root/work
source .dev/s/env.sh
export ASR_ATTENTION_COMMIT=$commit OMP_NUM_THREADS=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
card=H100; bw=3.35e12; nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && { bw=4.8e12; card=H200; }; stamp "HBM bytes/s for the limit: $bw"
python -m pytest -q -p no:cacheprovider tests/test_latent_decode_kernel.py tests/test_stop_check.py \
  tests/test_compaction.py tests/test_fast_transcription.py tests/test_cross_latent.py tests/test_generation_caches.py \
  > $R/gpu_tests.log 2>&1; echo "gpu tests rc=$?" >> $R/gpu_tests.log; stamp "tests: $(tail -2 $R/gpu_tests.log | head -1)"
timeout 180 python -m asr_attention.bench.generate --sizes large-v3 --decoders hf-static mla-graph mha-graph \
  gqa-graph --batches 64 1 --max-batch --budget 110 --bandwidth $bw --commit "$commit" \
  --out $R/generate/large-v3_$commit > $R/generate.log 2>&1; stamp "generate rc=$?"
timeout 200 python -m asr_attention.bench.end_to_end --models whisper --variants mha --hf static dynamic \
  --sets an4 speechocean762 --batches 64 1 --limit-batch1 32 --commit "$commit" \
  --name ${card}_${commit}_whisper --out $R/end_to_end > $R/e2e_tiny.log 2>&1; stamp "e2e tiny rc=$?"
stamp done; touch $R/DONE
