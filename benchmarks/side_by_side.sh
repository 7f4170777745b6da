#!/usr/bin/env bash
# Hydra -m sweeps side by side on one machine: one process per line of a sweep list, at most JOBS at once (default
# 16: the study's waves ran 14-19 tiny.en lines on one H200, whose 16 CPU cores were the limit), spread over the
# machine's GPUs, then the study report over all of them.
# A line is `NAME OVERRIDES...` ('#' starts a comment); the run folders go under OUT_ROOT/NAME. Re-running
# resumes unfinished runs and leaves finished ones untouched (asr_attention/runs/identity.py).
#   [JOBS=N] bash benchmarks/side_by_side.sh LIST OUT_ROOT [overrides for every line, e.g. trainer=gpu]
set -u
list=$1 root=$2 max_jobs=${JOBS:-16}
shift 2
mkdir -p "$root"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # N processes x all cores' threads oversubscribed the CPU: ~3x slower
gpus=$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')
i=0
while read -r name overrides; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  while (( $(jobs -pr | wc -l) >= max_jobs )); do wait -n; done
  # shellcheck disable=SC2086  # the overrides are words
  CUDA_VISIBLE_DEVICES=$((i % gpus)) python -m asr_attention.train -m $overrides "$@" \
    "hydra.sweep.dir=$root/$name" >> "$root/$name.log" 2>&1 &
  i=$((i + 1))
done < "$list"
wait
python -m asr_attention.reports.study "$root" --out "$root/report"
