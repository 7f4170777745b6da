#!/usr/bin/env bash
# One wave of a sweep list on the GPU machine: side_by_side.sh with trainer=gpu, every line at once (a wave is
# sized for the machine), cut at SECONDS, then each run's status and test WER, and its folder (checkpoints left
# out) tarred into OUT_DIR/NAME.tgz -- before a machine lent for a limited time goes back. Runs record COMMIT
# (the tree travels without .git: code_version reads it).
#   bash benchmarks/offline_gpu/wave.sh LIST NAME SECONDS COMMIT [OUT_DIR, default $OUT] [WORK_DIR, default ~]
set -u
list=$1 name=$2 seconds=$3 out=${5:-$OUT} work=${6:-$HOME}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline ASR_ATTENTION_COMMIT=$4
start=$(date +%s)
JOBS=${JOBS:-$(grep -c '^[^#]' "$list")} timeout "$seconds" \
  bash benchmarks/side_by_side.sh "$list" "$work/$name" trainer=gpu data.num_workers=1 > "$work/$name.out" 2>&1
echo "wave $name rc=$? after $(( $(date +%s) - start )) s"
cp "$list" "$work/$name/list.sweeps"
python - "$work/$name" <<'PY'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
for p in sorted(root.rglob("results.json")):
    if "report" not in p.parts:
        d = json.loads(p.read_text())
        print(p.parent.relative_to(root), d["status"], d.get("global_step"), round(d.get("wall_seconds") or 0),
              (d.get("after") or {}).get("test_wer"), (d.get("error") or "")[:100])
PY
tar czf "$out/$name.tgz" --exclude='*.ckpt' -C "$work" "$name" "$name.out" && ls -la "$out"
