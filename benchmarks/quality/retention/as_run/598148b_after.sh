#!/usr/bin/env bash
# device side: once the e2e benchmark is done: the trained run's rows beside transformers' (tiny.en, AN4), then zero-shot
R=/root/res; exec > $R/after2.log 2>&1
cd /root/work; source .dev/s/env.sh
while [ ! -f $R/DONE ]; do sleep 1; done
timeout 100 python -m asr_attention.bench.end_to_end --models whisper --variants mha --hf static dynamic --sets an4 \
  --batches 64 16 1 --limit-batch1 32 --run $R/retention/whisper_retain_kl_mla_d4_act_s0/0 --commit 598148b \
  --name trained_run_tiny_en --out $R/end_to_end; echo "e2e run rc=$?"
end=$(( $(date +%s) + $1 ))
for m in whisper_base whisper; do
  left=$(( end - $(date +%s) )); (( left > 10 )) || break
  timeout $left python -m asr_attention.reports.zero_shot --model $m --set speechocean762 --limit 200 --batch-size 64 \
    --sites decoder_self+cross,decoder_self,cross --out $R/zero_shot/${m}_speechocean762.json \
    --variants "gqa g=2,gqa g=1,mla r=d/2 activation,mla r=d/4 activation,mla r=d/4 plain,linear"; echo "zero-shot $m rc=$?"
done
