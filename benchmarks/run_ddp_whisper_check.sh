#!/usr/bin/env bash
# Issue-33 check on a 2-GPU machine: Whisper tiny.en fine-tuned with the quality study's recipe
# (experiment=quality_whisper_1k: decoder self + cross converted, attention only, lr 3e-5, 1,000 steps, val every 200;
# study/variant=mla_d4_act: MLA r = d/4, activation-aware), the encoder frozen and served from the encoder-output
# store, fp32, seed 0, global batch 2B = 8 (the study's), in two ways:
#   ddp:   2 GPUs (NCCL), trainer=ddp, batch B per rank
#   accum: 1 GPU, batch B, accumulate_grad_batches=2: the same batches per optimizer step (rank r takes batches r,
#          r+2, ... of one seeded order), so val curve, final weights and WER agree up to float summation order
#          (tests/test_ddp.py checks the same on CPU). Lightning counts val_check_interval in training batches, so
#          this run's is doubled to validate, and pick its best checkpoint, at the same steps.
# Then both fine-tuned models are tested on speechocean762 (asr_attention.evaluate, where this commit has it), and
# asr_attention.reports.ddp writes the table: test and val-curve differences, final weights against the CPU test's
# tolerance, training speed per GPU, the card, CUDA and NCCL versions.
# DISTILL=0.5 adds the distillation teacher to both runs (optim.distill_weight; the study's recipe has none).
# CFG_JOB=1 prints each run's composed config (--cfg job) instead of running anything: no GPU needed.
# Usage: bash benchmarks/run_ddp_whisper_check.sh <commit> [out_dir] 2>&1 | tee benchmarks/ddp_whisper_2gpu.log
#   -> <out_dir>/ddp_whisper_2gpu.md and .json (ddp_whisper_2gpu_distill.* with DISTILL)
set -u
COMMIT=${1:-unknown}
OUT_DIR=${2:-benchmarks}
WORK=${DDP_WORK:-/tmp/ddp_whisper_check}
PY=${PYTHON:-python3}
B=${BATCH:-4}
VAL_EVERY=200   # the recipe's val_check_interval, in optimizer steps
SO762=${SO762:-../shared/data/speechocean762_train}   # a manifest folder: manifest.tsv and its audio
NAME=ddp_whisper_2gpu${DISTILL:+_distill}
COMMON=(experiment=quality_whisper_1k study/variant=mla_d4_act seed=0 trainer.precision=32-true
        data.batch_size=$B +data.eval_batch_size=8 data.num_workers=4 logger=none
        ${DISTILL:+optim.distill_weight=$DISTILL})

fit() {  # fit <name> <visible GPUs> overrides...
  local name=$1 gpus=$2
  shift 2
  if [ -n "${CFG_JOB:-}" ]; then
    echo "=== $name"
    CUDA_VISIBLE_DEVICES=$gpus "$PY" -m asr_attention.train "${COMMON[@]}" "$@" "hydra.run.dir=$WORK/$name" --cfg job
    return
  fi
  echo "=== $name ($(date +%T)): $*"
  CUDA_VISIBLE_DEVICES=$gpus "$PY" -m asr_attention.train "${COMMON[@]}" "$@" "hydra.run.dir=$WORK/$name"
  echo "=== $name ended with status $?"
}

[ -n "${CFG_JOB:-}" ] || rm -rf "$WORK"
fit ddp 0,1 trainer=ddp trainer.devices=2 trainer.val_check_interval=$VAL_EVERY
fit accum 0 trainer=gpu +trainer.accumulate_grad_batches=2 trainer.val_check_interval=$((2 * VAL_EVERY))
[ -z "${CFG_JOB:-}" ] || exit 0

EVAL=()
if "$PY" -c "import asr_attention.evaluate" 2>/dev/null; then
  for run in ddp accum; do
    echo "=== speechocean762, $run ($(date +%T))"
    CUDA_VISIBLE_DEVICES=0 "$PY" -m asr_attention.evaluate "$WORK/$run" data=manifest "data.root=$SO762" \
      data.test_split=manifest.tsv model.decoding.max_tokens=96 --name so762
  done
  EVAL=(--eval so762)
else
  echo "=== speechocean762 skipped: asr_attention.evaluate is not in this commit"
fi
"$PY" -m asr_attention.reports.ddp --commit "$COMMIT" --out "$OUT_DIR/$NAME" ${EVAL[@]+"${EVAL[@]}"} "$WORK"/{ddp,accum}
