"""All of Whisper decoding: one loop (loop.py) over a cache object (caches.py: growing, or none as the
reference; static_decode.py: preallocated, with a CUDA-graph option), logit filters (logit_filters.py), greedy and
beam search as interchangeable token decoders (greedy.py, beam.py), the temperature fallback policy (fallback.py),
the token limit (token_limit.py) and the entries training and the tools call (decoding.py: transcribe, sample),
which on a GPU decode through pooled preallocated caches replaying a CUDA graph (fast_path.py).
Generation at scale: Whisper sizes, what a decode step must read, and the decoders the generation benchmark
compares (`python -m asr_attention.bench.generate`)."""
