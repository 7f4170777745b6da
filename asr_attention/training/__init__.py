"""The training pipeline: LightningModules (CTC, seq2seq), distillation, checkpointing, callbacks, and the builders that compose them from a config."""
