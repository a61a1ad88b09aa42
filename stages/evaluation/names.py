"""Artifact names of the evaluation stages, importable without torch (the report's figures read them)."""

SWEEP = "threshold-sweep"  # D-MoLE only: its routing is what the thresholds change
SWEEP_TABLE = "sweep.parquet"
