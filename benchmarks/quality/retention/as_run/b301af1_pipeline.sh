#!/usr/bin/env bash
# device side, with setsid: bash .dev/s/pipeline_d.sh COMMIT RUNS_S
# phase A: GPU tests, the six cross-memory retention runs (base first, staggered) and the zero-shot rows still
# missing; at RUNS_S all stop. phase B, alone on the card: end to end (base, then tiny.en, each with its trained
# cross-memory run), then generation rows with the mla-memory decoder. /root/update.tgz (if a poll left one) is
# unpacked over the code before phase B.
set -u
commit=$1 runs_s=$2
R=/root/res; mkdir -p $R/zero_shot $R/retention; exec > $R/pipeline.log 2>&1
rm -rf /root/work && mkdir -p /root/work && cp -a . /root/work/ && cd /root/work
cp benchmarks/zero_shot/whisper*_speechocean762_H100.json $R/zero_shot/
source .dev/s/env.sh
export ASR_ATTENTION_COMMIT=$commit OMP_NUM_THREADS=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
(python -m pytest -q -p no:cacheprovider tests/test_fast_transcription.py tests/test_cross_latent.py \
  tests/test_generation_caches.py tests/test_end_to_end_bench.py tests/test_whisper_base.py \
  tests/test_whisper_reference.py > $R/gpu_tests.log 2>&1; echo "gpu tests rc=$?" >> $R/gpu_tests.log) &
python -c "from asr_attention.backbones.whisper.load import build_whisper; from omegaconf import OmegaConf; build_whisper(OmegaConf.load('conf/model/whisper_base.yaml'))" && stamp "base weights joined"
while read -r name overrides; do
  python -m asr_attention.train -m $overrides trainer=gpu logger=none data.num_workers=1 \
    "hydra.sweep.dir=$R/retention/$name" >> "$R/retention/$name.log" 2>&1 &
  stamp "started $name"; sleep 12
done < .dev/s/d.sweeps
(M="mla r=d/2 activation cross-memory"
 nice python -m asr_attention.reports.zero_shot --model whisper_base --set speechocean762 --limit 200 --batch-size 64 \
   --sites decoder_self+cross,cross --out $R/zero_shot/whisper_base_speechocean762_H100.json \
   --variants "$M,mla r=d/4 plain,gqa g=2,gqa g=1"; echo "zero-shot base rc=$?"
 nice python -m asr_attention.reports.zero_shot --model whisper --set speechocean762 --limit 200 --batch-size 64 \
   --sites decoder_self+cross,cross --out $R/zero_shot/whisper_speechocean762_H100.json --variants "$M"
 echo "zero-shot tiny rc=$?"
 for m in whisper whisper_base; do
  nice python -m asr_attention.reports.zero_shot --model $m --set speechocean762 --limit 200 --batch-size 64 \
    --sites decoder_self+cross,decoder_self,cross --out $R/zero_shot/${m}_speechocean762_H100.json --variants linear
  echo "zero-shot $m linear rc=$?"
 done) > $R/zero_shot.log 2>&1 &
while (( $(date +%s) - t0 < runs_s )) && pgrep -f "asr_attention[.](train|reports)|pytes[t]" > /dev/null; do sleep 5; done
stamp "runs over (or deadline)"; bash .dev/s/kill.sh; sleep 5
[ -f /root/update.tgz ] && tar xzf /root/update.tgz -C /root/work && stamp "code updated: $(cat /root/work/.dev/s/UPDATE 2>/dev/null)"
ok() { python3 -c "import json,sys; sys.exit(0 if json.load(open('$1/results.json')).get('best_checkpoint') else 1)" 2>/dev/null; }
for m in whisper_base whisper; do
  run=$R/retention/${m}_retain_kl_mla_d2_act_memory_s0/0; ok $run || run=""; stamp "e2e $m, trained run: $run"
  timeout ${E2E_S:-220} python -m asr_attention.bench.end_to_end --models $m --variants mha --hf static dynamic \
    --sets an4 speechocean762 --batches 64 1 --limit-batch1 32 ${run:+--run $run} --commit "$commit" \
    --name H100_${commit}_$m --out $R/end_to_end > $R/e2e_$m.log 2>&1; stamp "e2e $m rc=$?"
done
timeout 170 python -m asr_attention.bench.generate --sizes base large-v3 --decoders hf-static mla-graph \
  mla-memory-graph --batches 64 --max-batch --budget 120 --bandwidth 3.35e12 --commit "$commit" \
  --out $R/generate/memory_$commit > $R/generate.log 2>&1; stamp "generate rc=$?"
stamp done; touch $R/DONE
