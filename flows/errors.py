"""Errors the CLI reports as one line with exit code 2."""


class UsageError(Exception):
    """Bad arguments or inputs found after parsing; printed as one line, exit code 2."""
