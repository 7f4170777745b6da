"""Generation with the converted decoder caches: Whisper sizes, what a decode step must read, and the decoding
loops the generation benchmark times (`python -m asr_attention.bench.generate`)."""
