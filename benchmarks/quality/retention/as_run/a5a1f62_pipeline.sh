#!/usr/bin/env bash
# device side, with setsid: bash .dev/s/pipeline_c.sh COMMIT RUNS_S BANDWIDTH
# training runs (staggered) beside the GPU tests and the zero-shot per-site tables; at RUNS_S all of them stop;
# then, alone on the card, the end-to-end benchmark (with a trained base run) and the generation rows per size
set -u
commit=$1 runs_s=$2 bw=$3
R=/root/res; mkdir -p $R/zero_shot $R/retention; exec > $R/pipeline.log 2>&1
rm -rf /root/work && mkdir -p /root/work && cp -a . /root/work/ && cd /root/work
cp benchmarks/zero_shot/whisper*_speechocean762_H100.json $R/zero_shot/ 2>/dev/null
source .dev/s/env.sh
export ASR_ATTENTION_COMMIT=$commit OMP_NUM_THREADS=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "from asr_attention.backbones.whisper.load import build_whisper; from omegaconf import OmegaConf; build_whisper(OmegaConf.load('conf/model/whisper_base.yaml'))" && stamp "base weights joined"
while read -r name overrides; do
  python -m asr_attention.train -m $overrides trainer=gpu logger=none data.num_workers=1 \
    "hydra.sweep.dir=$R/retention/$name" >> "$R/retention/$name.log" 2>&1 &
  stamp "started $name"; sleep 15
done < .dev/s/c.sweeps
(python -m pytest -q -p no:cacheprovider tests/test_generation_caches.py tests/test_fast_transcription.py \
  tests/test_end_to_end_bench.py tests/test_whisper_base.py tests/test_whisper_reference.py > $R/gpu_tests.log 2>&1;
 echo "gpu tests rc=$?" >> $R/gpu_tests.log) &
(for m in whisper whisper_base; do
  nice python -m asr_attention.reports.zero_shot --model $m --set speechocean762 --limit 200 --batch-size 64 \
    --sites decoder_self+cross,decoder_self,cross --out $R/zero_shot/${m}_speechocean762_H100.json \
    --variants "mla r=d/2 activation,mla r=d/4 activation,gqa g=2,mla r=d/4 plain,gqa g=1"; echo "zero-shot $m rc=$?"
 done > $R/zero_shot.log 2>&1) &
while (( $(date +%s) - t0 < runs_s )) && pgrep -f "asr_attention[.](train|reports)|pytes[t]" > /dev/null; do sleep 5; done
stamp "runs over (or deadline)"; bash .dev/s/kill.sh; sleep 5
runs=""; for r in $R/retention/whisper_base_retain_kl_mla_d4_act_s0/0 $R/retention/whisper_retain_kl_mla_d2_act_2k_s0/0; do
  python3 -c "import json,sys; sys.exit(0 if json.load(open('$r/results.json')).get('best_checkpoint') else 1)" 2>/dev/null && runs="$runs $r"
done; stamp "trained runs for e2e: $runs"
timeout 240 python -m asr_attention.bench.end_to_end --models whisper whisper_base --variants mha mla \
  --hf static dynamic --sets an4 speechocean762 --batches 64 1 --limit-batch1 32 --run $runs \
  --commit "$commit" --out $R/end_to_end > $R/e2e.log 2>&1; stamp "e2e rc=$?"
timeout 170 python -m asr_attention.bench.generate --sizes base small medium --decoders hf-static hf-dynamic \
  mha-graph mla-graph gqa-graph --batches 64 --max-batch --budget 120 --bandwidth $bw --commit "$commit" \
  --out $R/generate/sizes_$commit > $R/generate.log 2>&1; stamp "generate rc=$?"
stamp done; touch $R/DONE
