"""The base of every error a user can fix: the CLI prints it as one line and exits non-zero."""


class UserError(Exception):
    """Bad input, a missing upstream step, an impossible option: not a bug, so no traceback."""
