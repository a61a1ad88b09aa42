"""Scoring of model predictions (§10) and continual-learning metrics (§11)."""

from ..errors import UserError

# the named graders (field_graders.py): dmole's own, MCITlib's and CoIN's; here, where importing costs nothing, so
# that the options models can offer them as choices
GRADERS = ("dmole", "mcitlib", "coin")


class MetricError(UserError):
    """A metric cannot be computed from the given inputs (or tools, e.g. java)."""
