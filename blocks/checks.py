"""Type and range checks from type hints: one mechanism for the backbone's config, each mixer's options and ablate's
run config, so a wrong value is named the same way wherever it comes from (CLI, TOML, Python).

A range entry is (predicate on one value, what the valid range is); it applies to each element of a list. Every
number where a float is allowed must also be finite, whatever its range says.
"""
import inspect
import math
import types
import typing

from .errors import ConfigError

NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false", dict: "a table (dict)",
         type(None): "none"}
SHOWN_CHARS = 80  # a value echoed in a message is cut here, so a 10 MB value cannot become a 10 MB line

# Limits of a model that can be described at all: far above every published model (ViT-22B is 6,144 wide and 48
# blocks deep; hidden ratios are 0.5 to 4; kernels up to 51), and low enough that the size of every tensor fits in
# int64 (the largest, a random token-mixing matrix at 8,192 px and patch 1, has 4.5e15 entries), so counting a
# model's parameters on the meta device cannot overflow or take long.
MAX_IMG_SIZE = 8_192
MAX_WIDTH = 65_536          # channels of a stage, input channels, heads, head size
MAX_BLOCKS = 1_000          # blocks in all stages together
MAX_RATIO = 64              # a hidden layer's width over its input's
MAX_KERNEL = 255
MAX_CLASSES = 1_000_000     # ImageNet-21k has 21,843


def whole(low: int, high: int) -> tuple:
    """The range entry low <= value <= high."""
    return (lambda v: low <= v <= high), f"from {low:,} to {high:,}"


def above(low: float, high: float | None = None) -> tuple:
    """The range entry low < value (<= high)."""
    if high is None:
        return (lambda v: v > low), f"> {low}"
    return (lambda v: low < v <= high), f"in ({low}, {high}]"


FRACTION = (lambda v: 0 <= v < 1), "in [0, 1)"
ODD_SIZE = (lambda v: 1 <= v <= MAX_KERNEL and v % 2 == 1), f"odd, from 1 to {MAX_KERNEL} (the grid keeps its size)"
RATIO = above(0, MAX_RATIO)


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """A user's value as a message shows it: its repr, cut to `limit` characters with the full length said."""
    try:
        text = repr(value)
    except ValueError:  # an int too long for str() (Python's 4,300-digit limit)
        return f"<a whole number of {value.bit_length():,} bits>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


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
    if (origin is tuple or hint is tuple) and typing.get_args(args[0] if args else None):
        return f"a list (each {describe(args[0])})"
    if origin is tuple or hint is tuple:
        return f"a list of {describe(args[0]).removeprefix('a ')}s" if args else "a list"
    return NAMES.get(hint, NAMES.get(origin, getattr(hint, "__name__", str(hint))))


def takes_float(hint) -> bool:
    return hint is float or any(takes_float(h) for h in typing.get_args(hint))


def finite(value) -> bool:
    """Whether a number is finite as a float (an int too large for a float is not); other values pass."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_values(values: dict, hints: dict, ranges: dict, choices: dict, error=ConfigError, where: str = "") -> None:
    """Each value's type (its hint), finiteness, choices and range. Raises `error` naming `where` + the name.

    ranges: name -> (predicate on the value, what the valid range is), applied to each element of a list;
    choices: name -> the valid names (each element of a list).
    """
    for name, value in values.items():
        hint = hints[name]
        if not conforms(value, hint):
            raise error(f"{where}{name} = {shown(value)} must be {describe(hint)}")
        items = [v for v in (value if isinstance(value, (tuple, list)) else [value]) if v is not None]
        ok, text = ranges.get(name, (None, "finite"))
        if not all(finite(v) for v in items if isinstance(v, float) or takes_float(hint)):
            raise error(f"{where}{name} = {shown(value)} is not a finite number; valid: {name} {text}")
        bad = [v for v in items if name in choices and v not in choices[name]]
        if bad:
            raise error(f"unknown {where}{name} {shown(bad[0])}; valid: {', '.join(map(str, choices[name]))}")
        if ok and not all(map(ok, items)):
            raise error(f"{where}{name} = {shown(value)} is out of range: {name} {text}")


def check_fields(obj, ranges: dict, choices: dict, error=ConfigError) -> None:
    """Every field of dataclass `obj`: its type (from the hints), finiteness, choices and range."""
    hints = typing.get_type_hints(type(obj))
    check_values({name: getattr(obj, name) for name in hints}, hints, ranges, choices, error)


BUILT_WITH = ("self", "dim", "grid", "prefix_tokens")  # what the backbone passes a mixer; the rest are its options


def mixer_options(cls) -> dict:
    """A mixer's options and their types: its constructor's parameters beyond what the backbone passes, typed by
    their hints (an unannotated one takes any value)."""
    hints = typing.get_type_hints(cls.__init__)
    return {p: hints.get(p, typing.Any) for p in inspect.signature(cls).parameters if p not in BUILT_WITH}


def check_options(cls, options: dict, what: str) -> None:
    """A mixer's options: known names, then each one's type (its hint), finiteness, and the valid values the class
    declares in `option_ranges` and `option_choices` (as RANGES and CHOICES of a config)."""
    accepted = mixer_options(cls)
    unknown = sorted(map(str, set(options) - set(accepted)))
    if unknown:
        more = f" and {len(unknown) - 3:,} more" if len(unknown) > 3 else ""
        raise ConfigError(f"{what} has no option {', '.join(map(shown, unknown[:3]))}{more}; its options: "
                          f"{', '.join(accepted) or 'none'}")
    check_values(options, accepted, getattr(cls, "option_ranges", {}), getattr(cls, "option_choices", {}),
                 where=f"{what} option ")


def hidden_width(ratio: float, dim: int, what: str) -> int:
    """int(ratio * dim), the width of a hidden layer, which must keep at least one unit."""
    width = int(ratio * dim)
    if width < 1:
        raise ConfigError(f"{what}: ratio {ratio} of width {dim} leaves no hidden unit; valid: ratio >= {1 / dim:.3g} "
                          f"at this width")
    return width
