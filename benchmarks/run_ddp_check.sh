#!/usr/bin/env bash
# Issue-5 DDP proof on a 2-GPU machine: a short fit with 2 processes (trainer=ddp, batch B per rank) against
#   double: 1 GPU with the doubled batch 2B (the same utterances per epoch, grouped differently: close)
#   accum:  1 GPU with batch B and accumulate_grad_batches=2 (the same batches per optimizer step: equal up to
#           float summation order, since rank r takes batches r, r+2, ... of one seeded order)
# fp32, dropout off, eval batches pinned, so the only differences are the ones named above.
# Usage: benchmarks/run_ddp_check.sh <commit> [out_dir]  ->  <out_dir>/ddp_2gpu.md, .json and .log
set -u
COMMIT=${1:-unknown}
OUT_DIR=${2:-benchmarks}
WORK=${DDP_WORK:-/tmp/ddp_check}
PY=${PYTHON:-python3}
B=${BATCH:-8}
rm -rf "$WORK"
COMMON=(experiment=demo model=branchformer attention=mla data.limit_train=null trainer.max_epochs=3
        trainer.precision=32-true +model.arch.dropout=0.0 optim.warmup_steps=0 +data.eval_batch_size=16
        data.num_workers=4 logger=none)

fit() {  # fit <name> overrides...
  local name=$1
  shift
  echo "=== $name ($(date +%T)): $*"
  "$PY" -m asr_attention.train "${COMMON[@]}" "$@" "hydra.run.dir=$WORK/$name"
  echo "=== $name ended with status $?"
}

fit ddp trainer=ddp trainer.devices=2 data.batch_size=$B
fit double trainer=gpu data.batch_size=$((2 * B))
fit accum trainer=gpu data.batch_size=$B +trainer.accumulate_grad_batches=2
"$PY" -m asr_attention.reports.ddp --commit "$COMMIT" --out "$OUT_DIR/ddp_2gpu" "$WORK"/{ddp,double,accum}
