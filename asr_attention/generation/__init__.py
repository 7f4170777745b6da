"""Generation at scale with the converted decoder caches: Whisper sizes, what a decode step must read, and the
decoders the generation benchmark compares (`python -m asr_attention.bench.generate`). The decoding loop itself
is `asr_attention.decoding`."""
