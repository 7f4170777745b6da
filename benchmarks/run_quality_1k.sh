#!/usr/bin/env bash
# experiment=quality_whisper_1k on one GPU, as run for benchmarks/quality/whisper_1k: one process per seed (the
# control, MLA d/2 and MLA d/4 in turn) and the CTC-encoder pair at 2,000 steps, side by side (tiny.en leaves the
# card mostly idle), then the report. Re-running resumes unfinished runs and leaves finished ones untouched.
#   bash benchmarks/run_quality_1k.sh [OUT_ROOT]
set -u
root=${1:-multirun/quality_whisper_1k}
mkdir -p "$root"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # 4 processes x all cores' threads oversubscribed the CPU: ~3x slower
common=(trainer=gpu logger=none data.num_workers=2)
for seed in 0 1 2; do
  python -m asr_attention.train -m experiment=quality_whisper_1k "seed=$seed" "${common[@]}" \
    "hydra.sweep.dir=$root/decoder_seed$seed" >> "$root/decoder_seed$seed.log" 2>&1 &
done
python -m asr_attention.train -m experiment=quality_whisper_1k study/sites=encoder_ctc study/variant=mha,mla_d2_act \
  trainer.max_steps=2000 seed=0 "${common[@]}" "hydra.sweep.dir=$root/ctc_seed0" >> "$root/ctc_seed0.log" 2>&1 &
wait
python -m asr_attention.study_report "$root" --out "$root/report"
