"""dmole computation layer: one module per stage, plain functions over typed configs."""

__version__ = "0.1.0"
