#!/usr/bin/env bash
# device side, with setsid: every retention run at once (16 lines), then the report and a tarball of the results
set -u
commit=$1 seconds=$2
R=/root/res; mkdir -p $R; exec > $R/pipeline.log 2>&1
rm -rf /root/work && mkdir -p /root/work && cp -a . /root/work/ && cd /root/work
source .dev/env.sh
export ASR_ATTENTION_COMMIT=$commit OMP_NUM_THREADS=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
python -c "from asr_attention.backbones.whisper.load import build_whisper; from omegaconf import OmegaConf; build_whisper(OmegaConf.load('conf/model/whisper_base.yaml'))" && stamp "base weights joined"
JOBS=16 timeout $seconds bash benchmarks/side_by_side.sh .dev/all.sweeps $R/retention trainer=gpu logger=none \
  data.num_workers=1 > $R/runs.log 2>&1; stamp "runs rc=$?"
cd /root/res && tar czf /root/results.tgz --exclude='*.ckpt' retention pipeline.log runs.log; stamp "tar rc=$?"; touch /root/res/DONE
