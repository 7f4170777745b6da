#!/usr/bin/env bash
# device side, with setsid: bash .dev/s/resume.sh LIMIT_S NAME -- once the pipeline is DONE, the same command again
# for the base r = d/4 seed-2 run the deadline stopped: it resumes (phases kept, training from its last checkpoint)
R=/root/res; exec > $R/resume_$2.log 2>&1
while [ ! -f $R/DONE ]; do sleep 1; done
cd /root/work; source .dev/s/env.sh
export ASR_ATTENTION_COMMIT=a5a1f62 OMP_NUM_THREADS=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
name=$2
overrides=$(grep "^$name " .dev/s/c.sweeps | cut -d' ' -f2-)
echo "$(date +%T) resuming $name"
timeout $1 python -m asr_attention.train -m $overrides trainer=gpu logger=none data.num_workers=1 \
  "hydra.sweep.dir=$R/retention/$name" >> "$R/retention/$name.resumed.log" 2>&1
echo "$(date +%T) rc=$?"; touch $R/DONE_$2
