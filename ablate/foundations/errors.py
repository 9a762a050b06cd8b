"""Errors the CLI maps to exit codes: UsageError -> 2 (bad input), RunFailed -> 1."""
from blocks.errors import ConfigError


class UsageError(ConfigError):
    """Bad flags, files or values given by the user (exit 2)."""


class DataError(UsageError):
    """A dataset that is missing, corrupt or cannot be used as asked (exit 2)."""


class RunFailed(RuntimeError):
    """A run that started and failed: diverged or crashed (exit 1)."""
