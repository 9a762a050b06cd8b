"""The one exception type for a model that cannot be built as asked."""


class ConfigError(ValueError):
    """A model or mixer was asked for something it cannot do (bad name, option or grid).

    Callers (the CLI) turn this into exit code 2 with the message as is, so the
    message must name what is wrong and, where there are any, the valid choices.
    """
