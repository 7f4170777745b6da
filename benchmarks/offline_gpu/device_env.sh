# device side, sourced at the start of each run: packages, corpora linked into the package, offline flags
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
for d in an4_corpus speechocean762_corpus; do
  [ -L asr_attention/data/$d ] || { rm -rf asr_attention/data/$d; ln -s /root/stage/data/$d asr_attention/data/$d; }
done
