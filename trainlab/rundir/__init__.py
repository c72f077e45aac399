"""The run directory contract: metrics.jsonl, summary.json, TensorBoard events, checkpoints, results.csv and reports."""
