"""Run bookkeeping: a run folder's identity and lock, results.json, code version, sweep failures, W&B."""
