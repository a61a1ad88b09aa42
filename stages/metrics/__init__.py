"""Scoring of model predictions (§10) and continual-learning metrics (§11)."""

from ..errors import UserError


class MetricError(UserError):
    """A metric cannot be computed from the given inputs (or tools, e.g. java)."""
