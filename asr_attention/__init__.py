"""asr_attention: swap a pretrained speech encoder's multi-head attention for MLA, GQA or linear attention."""

import os

# Importing SpeechBrain switches TF32 matmuls on for the whole process (speechbrain.utils.quirks), which would
# turn every fp32 number here, HF models' too, into TF32 ones. Keep torch's default; a user's own
# SB_DISABLE_QUIRKS wins.
os.environ.setdefault("SB_DISABLE_QUIRKS", "allow_tf32")

from .config import resolvers  # noqa: E402,F401  (registers ${pkg:...} before any config is composed)
