"""Artifact names of the evaluation stages, importable without torch (the report's figures read them)."""

SWEEP_TABLE = "sweep.parquet"
