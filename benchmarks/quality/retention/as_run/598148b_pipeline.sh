#!/usr/bin/env bash
# device side, with setsid: bash .dev/s/pipeline.sh COMMIT GOAL_S E2E_S
# goal runs (15 at once) beside the GPU tests and the zero-shot tables; then the end-to-end benchmark alone
set -u
commit=$1 goal_s=$2 e2e_s=$3
R=/root/res; mkdir -p $R; exec > $R/pipeline.log 2>&1
rm -rf /root/work && mkdir -p /root/work && cp -a . /root/work/ && cd /root/work
source .dev/s/env.sh
export ASR_ATTENTION_COMMIT=$commit OMP_NUM_THREADS=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
python -c "from asr_attention.backbones.whisper.load import build_whisper; from omegaconf import OmegaConf; build_whisper(OmegaConf.load('conf/model/whisper_base.yaml'))" && stamp "base weights joined"
(timeout $goal_s python -m pytest -q -p no:cacheprovider tests/test_generation_caches.py tests/test_fast_transcription.py \
  tests/test_end_to_end_bench.py tests/test_whisper_base.py tests/test_whisper_reference.py > $R/gpu_tests.log 2>&1;
 echo "gpu tests rc=$?" >> $R/gpu_tests.log) &
(mkdir -p $R/zero_shot; for m in whisper whisper_base; do
  timeout $goal_s nice python -m asr_attention.reports.zero_shot --model $m --set speechocean762 --limit 200 --batch-size 64 \
    --sites decoder_self+cross,decoder_self,cross --out $R/zero_shot/${m}_speechocean762.json \
    --variants "gqa g=2,gqa g=1,mla r=d/2 activation,mla r=d/4 activation,mla r=d/4 plain,linear"; echo "zero-shot $m rc=$?"
 done > $R/zero_shot.log 2>&1) &
JOBS=15 timeout $goal_s bash benchmarks/side_by_side.sh .dev/s/goal.sweeps $R/retention trainer=gpu logger=none \
  data.num_workers=1 > $R/goal.log 2>&1; stamp "goal rc=$?"
bash .dev/s/kill.sh; sleep 3; stamp "others stopped"
runs=$(ls -d $R/retention/whisper_retain_kl_mla_d4_act_s0/0 $R/retention/whisper_base_retain_kl_mla_d4_act_s0/0 2>/dev/null)
timeout $e2e_s python -m asr_attention.bench.end_to_end --models whisper whisper_base --variants mha mla gqa \
  --hf static dynamic --sets an4 speechocean762 --batches 64 16 1 --limit-batch1 32 --run $runs \
  --commit "$commit" --out $R/end_to_end > $R/e2e.log 2>&1; stamp "e2e rc=$?"
stamp done; touch $R/DONE
