#!/usr/bin/env bash
# device side, with setsid: bash .dev/s/pipeline_b.sh GOAL_DEADLINE_S E2E_S -- the base runs that OOMed, staggered
# so their calibrations do not peak together, beside the first pass's tiny.en runs; then the e2e benchmark alone
set -u
deadline=$1 e2e_s=$2
R=/root/res; exec > $R/pipeline_b.log 2>&1
cp .dev/s/base.sweeps $R/; cd /root/work; source .dev/s/env.sh
export ASR_ATTENTION_COMMIT=598148b OMP_NUM_THREADS=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
mkdir -p $R/retention_b
while read -r name overrides; do
  python -m asr_attention.train -m $overrides trainer=gpu logger=none data.num_workers=1 \
    "hydra.sweep.dir=$R/retention_b/$name" >> "$R/retention_b/$name.log" 2>&1 &
  stamp "started $name"; sleep 20
done < $R/base.sweeps
while (( $(date +%s) - t0 < deadline )) && { pgrep -f "asr_attention[.]train" > /dev/null; }; do sleep 5; done
stamp "goal runs over (or deadline)"; bash .dev/s/kill.sh; sleep 3
runs=$(ls -d $R/retention/whisper_retain_kl_mla_d4_act_s0/0 $R/retention_b/whisper_base_retain_kl_mla_d4_act_s0/0 2>/dev/null)
timeout $e2e_s python -m asr_attention.bench.end_to_end --models whisper whisper_base --variants mha mla gqa \
  --hf static dynamic --sets an4 speechocean762 --batches 64 16 1 --limit-batch1 32 --run $runs \
  --commit 598148b --out $R/end_to_end > $R/e2e.log 2>&1; stamp "e2e rc=$?"
stamp done; touch $R/DONE
