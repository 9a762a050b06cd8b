"""Type and range checks for config dataclasses, from their type hints: one mechanism for the backbone's config
and ablate's run config, so a wrong value is named the same way wherever it comes from (CLI, TOML, Python)."""
import types
import typing

from .errors import ConfigError

NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false", dict: "a table (dict)",
         type(None): "none"}


def conforms(value, hint) -> bool:
    """Whether `value` fits the type hint (lists stand for tuples; a bool is not a number)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(conforms(value, h) for h in args)
    if hint is typing.Any:
        return True
    if origin is tuple or hint is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if not args:
            return True
        if len(args) == 2 and args[1] is Ellipsis:
            return all(conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(conforms(v, h) for v, h in zip(value, args))
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


def describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(describe(h) for h in args)
    if origin is tuple or hint is tuple:
        return f"a list of {describe(args[0]).removeprefix('a ')}s" if args else "a list"
    return NAMES.get(hint, NAMES.get(origin, getattr(hint, "__name__", str(hint))))


def check_fields(obj, ranges: dict, choices: dict, error=ConfigError) -> None:
    """Every field of dataclass `obj`: its type (from the hints), its choices and its range.

    ranges: field -> (predicate on the value, what the valid range is), applied to each element of a list;
    choices: field -> the valid names (each element of a list). Raises `error` naming the field.
    """
    hints = typing.get_type_hints(type(obj))
    for name, hint in hints.items():
        value = getattr(obj, name)
        if not conforms(value, hint):
            raise error(f"{name} = {value!r} must be {describe(hint)}")
        items = value if isinstance(value, (tuple, list)) else [value]
        if name in choices:
            bad = [v for v in items if v is not None and v not in choices[name]]
            if bad:
                raise error(f"unknown {name} {bad[0]!r}; valid: {', '.join(map(str, choices[name]))}")
        if name in ranges:
            ok, text = ranges[name]
            bad = [v for v in items if v is not None and not ok(v)]
            if bad:
                raise error(f"{name} = {value!r} is out of range: {name} {text}")
