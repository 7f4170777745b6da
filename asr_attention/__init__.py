"""asr_attention: swap a pretrained speech encoder's multi-head attention for MLA, GQA or linear attention."""

from . import resolvers  # noqa: F401  (registers ${pkg:...} before any config is composed)
