"""Experiment files (TOML): [study] settings, fixed [run] options, [arms] axes and an optional [search] space,
parsed into an Experiment with every key and type checked (UsageError naming the key otherwise)."""
import dataclasses
import inspect
import itertools
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

import blocks
from blocks.checks import check_values, conforms, describe, shown

from ...foundations.config import RANGES, SHUFFLES, RunConfig
from ...foundations.errors import UsageError
from ...foundations.runtime import DEVICES
from .. import data
from .arms import check_arms, check_size
from .names import check_name

# Run-record keys a study can optimize, with the direction that means "better".
METRICS = {"val_acc": "maximize", "val_loss": "minimize", "params": "minimize", "macs": "minimize",
           "train_time_s": "minimize", "train_img_s": "maximize", "infer_img_s": "maximize"}
EPOCH_METRICS = ("val_acc", "val_loss")  # in every history entry, so pruners can see them
TEST_METRICS = ("test_acc", "test_loss")  # recorded and reported, never an objective: objectives choose
SAMPLERS = {"grid": None, "tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
PRUNERS = {"none": None, "median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
           "threshold": optuna.pruners.ThresholdPruner}  # threshold: e.g. stop a run still at chance
STUDY_KEYS = ("name", "metric", "direction", "directions", "sampler", "sampler_options", "pruner", "pruner_options",
              "trials_per_arm", "seeds", "reuse")
SECTIONS = ("study", "run", "arms", "search")
NOT_SETTABLE = ("seed", "out")  # seeds come from [study].seeds, the folder from `study --out`
RUN_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig) if f.name not in NOT_SETTABLE}
HINTS = typing.get_type_hints(RunConfig)
CHOICES = {"spatial": tuple(blocks.SPATIAL), "channel": tuple(blocks.CHANNEL), "preset": tuple(blocks.PRESETS),
           "shuffle": SHUFFLES, "device": DEVICES}
POSITIVE = ("train_size", "epochs", "batch_size", "lr")


@dataclass(frozen=True)
class Arm:
    label: str  # "spatial=mlp,channel=glu": the arm's name in the storage
    axes: dict  # {"spatial": "mlp", "channel": "glu"}: the RunConfig fields this arm sets


@dataclass
class Experiment:
    path: Path
    name: str
    metrics: list[str]
    directions: list[str]
    sampler: str
    sampler_options: dict
    pruner: str
    pruner_options: dict
    trials_per_arm: int
    seeds: list[int]
    run: dict                      # fixed RunConfig fields
    axes: dict                     # axis -> list of values (tables for a linked axis); every combination is an arm
    search: dict = field(default_factory=dict)  # field -> optuna distribution, tuned per arm
    reuse: list[str] = field(default_factory=list)  # studies under the same --out whose identical runs are taken

    @property
    def arm_count(self) -> int:
        """How many arms the axes make, counted without listing them."""
        return math.prod(len(values) for values in self.axes.values())

    @property
    def arms(self) -> list[Arm]:
        if not self.axes:
            return [Arm("base", {})]
        arms = []
        for combo in itertools.product(*self.axes.values()):
            fields = {}
            for axis, value in zip(self.axes, combo):
                fields.update({axis: value} if axis in RUN_FIELDS else value)
            arms.append(Arm(",".join(f"{k}={fmt(v)}" for k, v in fields.items()), fields))
        return arms

    @property
    def fields(self) -> dict:
        """Every run option the arms vary, with its values in file order (a linked axis gives several)."""
        values: dict = {}
        for arm in self.arms:
            for k, v in arm.axes.items():
                if v not in values.setdefault(k, []):
                    values[k].append(v)
        return values

    @property
    def linked(self) -> dict:
        """Each linked axis and the run options its tables set together: {"structure": ["channel", "model_options"]}.
        The report treats such an axis as one factor, as the file does."""
        return {axis: list(values[0]) for axis, values in self.axes.items() if axis not in RUN_FIELDS}

    @property
    def grid(self) -> list[dict]:
        """With sampler = "grid": every combination of the [search] choices, in file order."""
        names = list(self.search)
        return [dict(zip(names, combo)) for combo in itertools.product(*(d.choices for d in self.search.values()))]

    def fingerprint(self) -> dict:
        """What the cells' results depend on; a study in a storage must keep it (arms and seeds may grow)."""
        return {"run": self.run, "metric": self.metrics, "direction": self.directions, "sampler": self.sampler,
                "sampler_options": self.sampler_options, "pruner": self.pruner, "pruner_options": self.pruner_options,
                "trials_per_arm": self.trials_per_arm,
                "search": {k: optuna.distributions.distribution_to_json(d) for k, d in self.search.items()}}

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return SAMPLERS[self.sampler](seed=seed, **self.sampler_options)

    def make_pruner(self) -> optuna.pruners.BasePruner | None:
        cls = PRUNERS[self.pruner]
        return cls(**self.pruner_options) if cls else None


def fmt(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


def load(path: str | Path) -> Experiment:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"experiment file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read experiment file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path} is not valid TOML: {e}") from None
    try:
        return parse(doc, path)
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None


def parse(doc: dict, path: Path) -> Experiment:
    unknown_keys("", doc, SECTIONS)
    study, run, axes, search = (section(doc, name) for name in SECTIONS)
    unknown_keys("[study]", study, STUDY_KEYS)
    name = study_name(study, path)
    metrics, directions = objectives(study)
    sampler = choice("[study].sampler", typed("[study].sampler", study.get("sampler", "tpe" if search else "grid"),
                                              str), SAMPLERS)
    pruner = choice("[study].pruner", typed("[study].pruner", study.get("pruner", "none"), str), PRUNERS)
    seeds = as_list("[study].seeds", study.get("seeds", [0]), int)
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"[study].seeds must list distinct whole numbers, got {shown(seeds)}")
    for seed in seeds:  # each becomes a run's seed: refused here, before a worker creates its trial
        check_values({"seed": seed}, {"seed": int}, RANGES, {}, UsageError, "[study].seeds: ")
    trials_per_arm = typed("[study].trials_per_arm", study.get("trials_per_arm", 0), int)
    reuse = [check_name("[study].reuse", n) for n in as_list("[study].reuse", study.get("reuse", []), str)]
    if name in reuse or len(set(reuse)) != len(reuse):
        raise UsageError(f"[study].reuse must list other studies, each once, got {shown(reuse)} in study {shown(name)}")
    run, axes, search = run_options(run, axes, search)
    exp = Experiment(path, name, metrics, directions, sampler,
                     options("[study].sampler_options", study.get("sampler_options", {}), SAMPLERS[sampler]),
                     pruner, options("[study].pruner_options", study.get("pruner_options", {}), PRUNERS[pruner]),
                     trials_per_arm, seeds, run, axes, search, reuse)
    check_tuning(exp)
    check_size(exp.axes, exp.trials_per_arm, len(exp.seeds))
    check_arms(run, exp.arms, next((m for m in exp.metrics if m in EPOCH_METRICS), None))
    return exp


def study_name(study: dict, path: Path) -> str:
    """[study].name, or the file's name without .toml: the study's folder under --out, so a plain folder name."""
    if "name" in study:
        return check_name("[study].name", typed("[study].name", study["name"], str))
    return check_name("[study].name", path.stem, f" (from the file name {path.name}; set [study].name)")


def objectives(study: dict) -> tuple[list[str], list[str]]:
    """[study].metric (one or several run-record keys) and their directions (each metric's natural one by default)."""
    metrics = as_list("[study].metric", study.get("metric", "val_acc"), str)
    for m in metrics:
        if m in TEST_METRICS:
            raise UsageError(f"[study].metric = {shown(m)} would choose on the test set (samplers, pruners and the best "
                             f"arm follow the objective); use {m.replace('test', 'val')}, measured on the validation "
                             f"split. Every run still records {m}, and the report shows it")
        choice("[study].metric", m, METRICS)
    if len(set(metrics)) != len(metrics):
        raise UsageError(f"[study].metric lists a metric twice: {metrics}")
    if "direction" in study and "directions" in study:
        raise UsageError("[study] has both direction and directions; keep one")
    key = "directions" if "directions" in study else "direction"
    directions = as_list(f"[study].{key}", study.get(key, [METRICS[m] for m in metrics]), str)
    if len(directions) != len(metrics):
        raise UsageError(f"[study].{key} has {len(directions)} entries for {len(metrics)} metrics")
    for d in directions:
        choice(f"[study].{key}", d, ("maximize", "minimize"))
    return metrics, directions


def run_options(run: dict, axes: dict, search: dict) -> tuple[dict, dict, dict]:
    """[run], [arms] and [search], each value checked, each run option set in one place only."""
    run = {key: run_value(f"[run].{key}", key, value) for key, value in run.items()}
    owner = {key: "[run]" for key in run}
    for key, values in axes.items():
        axes[key] = axis(key, values)
        for option in {n for v in axes[key] for n in ((key,) if key in RUN_FIELDS else v)}:
            if option in owner:
                raise UsageError(f"{option} is set both in {owner[option]} and by [arms].{key}; keep one")
            owner[option] = f"[arms].{key}"
    for key in search:
        if key in owner:
            raise UsageError(f"{key} is tuned in [search] and also set in {owner[key]}; keep one")
    return run, axes, {key: distribution(f"[search].{key}", key, spec) for key, spec in search.items()}


def check_tuning(exp: Experiment) -> None:
    """The tuning budget, sampler and pruner fit the [search] space (sets trials_per_arm for a grid)."""
    if exp.search and exp.sampler == "grid":
        for key, dist in exp.search.items():
            if not isinstance(dist, CategoricalDistribution):
                raise UsageError(f"[search].{key}: sampler \"grid\" needs choices = [...]; "
                                 f"use sampler = \"tpe\" or \"random\" for a range")
        size = math.prod(len(d.choices) for d in exp.search.values())  # counted: a huge grid is refused, not listed
        if exp.trials_per_arm not in (0, size):
            raise UsageError(f"[study].trials_per_arm is {exp.trials_per_arm}, but the [search] grid has {size} "
                             f"points; leave it out or set it to {size}")
        exp.trials_per_arm = size
    elif exp.search and exp.trials_per_arm < 1:
        raise UsageError("[study].trials_per_arm must be at least 1 with [search] (the tuning budget per arm)")
    elif not exp.search and exp.trials_per_arm:
        raise UsageError("[study].trials_per_arm needs a [search] section (there is nothing to tune)")
    if exp.pruner != "none":
        if not exp.search:
            raise UsageError(f"[study].pruner = \"{exp.pruner}\" needs a [search] section: only tuning trials are "
                             f"pruned, the final runs of every arm always run to the end")
        if len(exp.metrics) > 1:
            raise UsageError("[study].pruner must be \"none\" with several metrics (optuna prunes one objective)")
        if exp.metrics[0] not in EPOCH_METRICS:
            raise UsageError(f"[study].pruner needs a metric recorded every epoch ({', '.join(EPOCH_METRICS)}), "
                             f"not {exp.metrics[0]!r}")
    for key, make in (("pruner", exp.make_pruner), ("sampler", lambda: exp.sampler == "grid" or exp.make_sampler(0))):
        try:  # option values are only checked by the optuna classes themselves
            make()
        except (TypeError, ValueError) as e:
            raise UsageError(f"[study].{key}_options: {e}") from None


def axis(key: str, values) -> list:
    """An [arms] axis: values of one run option, or tables that set several together (a linked axis, e.g.
    data = [{ train_size = 1000, epochs = 40 }, { train_size = 60000, epochs = 1 }])."""
    values = as_list(f"[arms].{key}", values, object)
    if not values:
        raise UsageError(f"[arms].{key} is empty: list at least one value")
    if key in RUN_FIELDS:
        return distinct(key, values, [run_value(f"[arms].{key}", key, v) for v in values])
    if not all(isinstance(v, dict) and v for v in values):
        check_field(f"[arms].{key}", key)  # neither a run option nor a linked axis: name the valid options
    if len({frozenset(v) for v in values}) != 1:
        raise UsageError(f"[arms].{key}: every table of a linked axis must set the same options, got {values}")
    return distinct(key, values, [{name: run_value(f"[arms].{key}.{name}", name, v) for name, v in table.items()}
                                  for table in values])


def distinct(key: str, given: list, values: list) -> list:
    """An axis's values, each once as the run reads it (lr = 1 and lr = 1.0 are one arm run twice)."""
    seen: dict[str, int] = {}
    for i, value in enumerate(values):
        first = seen.setdefault(fmt(value), i)
        if first != i:
            raise UsageError(f"[arms].{key} lists the same value twice: {shown(given[first])} and {shown(given[i])} are both "
                             f"{fmt(value)}, so their arms would be the same run; keep one")
    return values


def section(doc: dict, name: str) -> dict:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise UsageError(f"[{name}] must be a table, got {type(value).__name__}")
    return dict(value)


def unknown_keys(where: str, table: dict, valid) -> None:
    unknown = [k for k in table if k not in valid]
    if unknown:
        label = f"{where} key" if where else "section"
        raise UsageError(f"unknown {label} {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")


def typed(key: str, value, *kinds):
    """`value` if it is one of `kinds` (blocks.checks's rules: TOML true is not a number), else a UsageError."""
    if kinds != (object,) and not any(conforms(value, k) for k in kinds):
        raise UsageError(f"{key} must be {' or '.join(describe(k) for k in kinds)}, got {shown(value)}")
    return float(value) if kinds == (float,) else value


def as_list(key: str, value, kind) -> list:
    values = value if isinstance(value, list) else [value]
    return [typed(key, v, kind) for v in values]


def choice(key: str, value, valid):
    if value not in valid:
        raise UsageError(f"{key} = {shown(value)} is not one of: {', '.join(valid)}")
    return value


def options(key: str, value, cls) -> dict:
    """Keyword arguments for an optuna sampler or pruner class, checked against its signature."""
    if not isinstance(value, dict):
        raise UsageError(f"{key} must be a table, got {shown(value)}")
    if cls is None and value:
        raise UsageError(f"{key}: this choice takes no options")
    params = {} if cls is None else {k: p for k, p in inspect.signature(cls).parameters.items() if k != "seed"}
    unknown_keys(key, value, list(params))
    for name, v in value.items():  # typed like the default where the default says (TOML has no callables anyway)
        default = params[name].default
        if isinstance(default, (bool, int, float)):  # not str: hyperband's max_resource is "auto" or a number
            typed(f"{key}.{name}", v, float if type(default) is float else type(default))
    return dict(value)


def field_kinds(name: str) -> tuple:
    hint = HINTS[name]
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(k for k in kinds if k is not type(None))


def check_field(key: str, name: str) -> None:
    if name not in RUN_FIELDS:
        hint = " (set by [study].seeds)" if name == "seed" else " (set by `study --out`)" if name == "out" else ""
        raise UsageError(f"{key}: unknown run option {shown(name)}{hint}; valid: {', '.join(RUN_FIELDS)}")


def run_value(key: str, name: str, value):
    """One value for RunConfig field `name`, with its type and range checked."""
    check_field(key, name)
    kinds = field_kinds(name)
    value = typed(key, value, *kinds)
    if name in CHOICES:
        choice(key, value, CHOICES[name])
    if name in POSITIVE and value <= 0:
        raise UsageError(f"{key} must be positive, got {value}")
    if name == "dataset":
        try:
            data.lookup(value)
        except UsageError:
            raise UsageError(f"{key} = {shown(value)} is not one of: {', '.join(data.names())}") from None
    return value


def distribution(key: str, name: str, spec) -> BaseDistribution:
    """A [search] entry: {low, high[, log][, step]} for numbers, or {choices = [...]}."""
    if not isinstance(spec, dict):
        raise UsageError(f"{key} must be a table such as {{ low = 1e-4, high = 1e-2, log = true }} "
                         f"or {{ choices = [...] }}, got {shown(spec)}")
    check_field(key, name)
    if "choices" in spec:
        unknown_keys(key, spec, ("choices",))
        choices = [run_value(f"{key}.choices", name, v) for v in as_list(f"{key}.choices", spec["choices"], object)]
        if not choices:
            raise UsageError(f"{key}.choices is empty")
        return CategoricalDistribution(choices)
    unknown_keys(key, spec, ("low", "high", "log", "step"))
    kinds = field_kinds(name)
    if not set(kinds) & {int, float}:
        raise UsageError(f"{key}: {name} is not a number; use {{ choices = [...] }}")
    if "low" not in spec or "high" not in spec:
        raise UsageError(f"{key} needs both low and high (or choices)")
    kind = int if int in kinds else float
    low, high = (run_value(f"{key}.{b}", name, typed(f"{key}.{b}", spec[b], kind)) for b in ("low", "high"))
    log = typed(f"{key}.log", spec.get("log", False), bool)
    step = spec.get("step")
    step = None if step is None else typed(f"{key}.step", step, kind)
    try:
        if kind is int:
            return IntDistribution(low, high, log=log, step=step or 1)
        return FloatDistribution(low, high, log=log, step=step)
    except ValueError as e:
        raise UsageError(f"{key}: {e}") from None
