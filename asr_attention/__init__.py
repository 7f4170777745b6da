"""asr_attention: swap a pretrained speech encoder's multi-head attention for MLA, GQA or linear attention."""
