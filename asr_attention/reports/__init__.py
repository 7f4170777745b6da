"""Reports and studies read from run folders and committed results: sweep and study reports, recipe choice, cost matrix, DDP check, seed baselines, zero-shot table."""
