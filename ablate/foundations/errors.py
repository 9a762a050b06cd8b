"""Errors the CLI maps to exit codes: UsageError -> 2 (bad input), RunFailed -> 1."""
from blocks.errors import ConfigError


class UsageError(ConfigError):
    """Bad flags, files or values given by the user (exit 2)."""


class DataError(UsageError):
    """A dataset that is missing, corrupt or cannot be used as asked (exit 2)."""


class RunFailed(RuntimeError):
    """A run that started and failed: it diverged, or could not save (exit 1)."""


class Diverged(RunFailed):
    """The loss went non-finite: a result of its config (a study records it and does not retry the cell)."""
