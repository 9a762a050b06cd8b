"""The trials of a study as tables: one row per trial with its run record flattened, the final results, the
study's axes, and readable arm names."""
import re

import numpy as np
import optuna
import pandas as pd
from sqlalchemy.exc import SQLAlchemyError

from ...foundations.config import SHUFFLES
from ...foundations.errors import UsageError
from ...foundations.storage import first_line, masked, open_storage


def load_study(url: str, name: str) -> optuna.Study:
    """The study `name` from an existing storage (report only reads: nothing is created)."""
    storage = open_storage(url, create=False)
    try:
        names = optuna.get_all_study_names(storage)
    except (SQLAlchemyError, OSError) as e:
        raise UsageError(f"cannot read storage {masked(url)}: {first_line(e, url)}") from None
    if name not in names:
        raise UsageError(f"no study {name!r} in {masked(url)}; studies there: {', '.join(sorted(names)) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def value_names(study: optuna.Study) -> list[str]:
    """optuna's trials_dataframe column names for the objective values."""
    return ["value"] if len(study.directions) == 1 else [f"value_{i}" for i in range(len(study.directions))]


def objective_names(study: optuna.Study) -> list[str]:
    """The metrics the objective values are: optuna's metric names, else the experiment's `metric` that `study`
    stores, else value / value_0, value_1, ..."""
    metric = (study.user_attrs.get("experiment") or {}).get("metric")
    metric = [metric] if isinstance(metric, str) else metric
    if study.metric_names:
        return study.metric_names
    if isinstance(metric, list) and len(metric) == len(study.directions):
        return [str(m) for m in metric]
    return value_names(study)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, every state: number, state, values, params_*, the trial's user attributes
    (arm, axes, phase, seed, cell, error, ...) and its run record flattened (config.model.dims, ...)."""
    trials = study.get_trials(deepcopy=False)
    rows = [{"number": t.number, "state": t.state.name,
             "duration_s": t.duration.total_seconds() if t.duration else None,
             **dict(zip(value_names(study), t.values or [])),
             **{f"params_{k}": v for k, v in t.params.items()},
             **{k: v for k, v in t.user_attrs.items() if k != "record"}} for t in trials]
    records = [{k: v for k, v in (t.user_attrs.get("record") or {}).items() if k != "history"} for t in trials]
    rows = [with_record(row, rec) for row, rec in zip(rows, records)]
    histories = [(t.user_attrs.get("record") or {}).get("history") or [] for t in trials]
    frame = pd.DataFrame([{**row, "history": h} for row, h in zip(rows, histories)],
                         columns=None if rows else ["number", "state", "history"])
    for column in ("phase", "arm", "axes", "seed"):
        if column not in frame:
            frame[column] = None
    for column in frame.columns:  # whole numbers stay whole where trials without a record leave gaps
        values = [r[column] for r in rows if r.get(column) is not None]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            frame[column] = frame[column].astype("Int64")
    return frame


def with_record(row: dict, record: dict) -> dict:
    """A trial's row with its run record flattened after it. The trial's own attributes win: a diverged trial's
    `error` over the `error: None` of the record its last evaluation saved."""
    if not record:
        return row
    # one record at a time: normalizing them together would turn whole numbers into floats wherever a record lacks them
    flat = pd.json_normalize(record).to_dict("records")[0]
    return {**row, **{k: v for k, v in flat.items() if k not in row}}


def in_final(frame: pd.DataFrame) -> pd.Series:
    return frame.phase.isna() | (frame.phase == "final")


def final_trials(frame: pd.DataFrame) -> pd.DataFrame:
    """Complete trials of the final phase (or without a phase) that carry a test accuracy, one per cell."""
    if "test_acc" not in frame:
        return frame.iloc[0:0]
    final = frame[(frame.state == "COMPLETE") & in_final(frame) & frame.test_acc.notna()]
    if "cell" in final:  # `study` runs each cell once; should a race ever finish one twice, count it once
        final = final[final.cell.isna() | ~final.cell.duplicated()]
    final = final.copy()
    for column in final.columns:
        if isinstance(final[column].dtype, pd.Int64Dtype) and final[column].notna().all():
            final[column] = final[column].astype("int64")
    return final.infer_objects()


def hashable(value):
    if isinstance(value, (list, tuple)):
        return "/".join(map(str, value))
    if isinstance(value, dict):  # a linked axis or model_options: "stem=patch,patch_size=28"
        return ",".join(f"{k}={hashable(v)}" for k, v in sorted(value.items())) or "{}"
    return value


def arm_keys(frame: pd.DataFrame, study: optuna.Study) -> list[str]:
    """The study's axes that vary among its final results, in the experiment file's order.

    Named by each trial's `axes` attribute (what `study` writes), else the study's `axes` attribute, else
    the record fields that arms usually vary. Each becomes a column of `frame`: the run record's value
    (what ran), or the trial's axes value where a failed trial has no record.
    """
    keys: list[str] = []
    for axes in [*frame["axes"], study.user_attrs.get("axes")]:
        if isinstance(axes, dict):
            keys += [k for k in axes if k not in keys]
    keys = keys or [k for k in AXES if k in frame]
    for key in keys:
        from_axes = frame["axes"].map(lambda a: a.get(key) if isinstance(a, dict) else None)
        column = frame[key].astype(object) if key in frame else pd.Series(None, index=frame.index, dtype=object)
        frame[key] = column.where(column.notna(), from_axes).map(hashable)
    final = final_trials(frame)
    keys = [k for k in keys if final[k].nunique() > 1] if len(final) else []
    for axis, fields in (study.user_attrs.get("linked") or {}).items():
        keys = one_factor(frame, keys, axis, [f for f in fields if f in keys])
    return keys


def one_factor(frame: pd.DataFrame, keys: list[str], axis: str, fields: list[str]) -> list[str]:
    """A linked axis is one factor, as the experiment file has it: named by the one option that tells its tables
    apart (spatial, when each network has its own mixer), else a column `axis` of the options' values in the
    file's order (structure: "identity / {}" for channel identity, no model options). An axis linked to the train
    size stays as it is: it is the data budget (data_axis)."""
    if len(fields) < 2 or "train_size" in fields:
        return keys
    final = final_trials(frame)
    levels = final[fields].astype(str).drop_duplicates()
    identifying = [f for f in fields if levels[f].nunique() == len(levels)]
    if identifying:
        name = identifying[0]
    else:  # a column of its own, beside the trial's attributes (arm, phase, ...) whatever the axis is called
        name = axis if axis not in {*frame, *DERIVED} else f"{axis} ({' / '.join(fields)})"
        frame[name] = frame[fields].astype(str).agg(" / ".join, axis=1)
    at = keys.index(fields[0])
    return [k for k in keys[:at] if k not in fields] + [name] + [k for k in keys[at:] if k not in fields]


def data_axis(final: pd.DataFrame, keys: list[str]) -> list[str]:
    """`train_size` and the axes set together with it (a linked `data` axis: epochs, eval_every per size).

    An axis whose value is fixed by the train size is part of the data budget, not a separate series.
    """
    if "train_size" not in keys:
        return []
    linked = [k for k in keys if k != "train_size" and final.groupby("train_size")[k].nunique().max() == 1]
    return ["train_size", *linked]


def label(frame: pd.DataFrame, keys: list[str], whole_arm: bool = True) -> pd.Series:
    """A readable name per row: the value alone for one key, key=value pairs for several.

    With no keys left, an arm is named as in the storage, and a series of arms (a curve over train sizes)
    by its spatial mixer.
    """
    if not keys:
        if not whole_arm:
            return frame.spatial.astype(str) if "spatial" in frame else pd.Series("all", index=frame.index)
        arm = frame.arm if "arm" in frame else pd.Series(None, index=frame.index, dtype=object)
        return arm.map(lambda a: a if isinstance(a, str) else "all")
    if len(keys) == 1:
        return frame[keys[0]].astype(str)
    # object columns, so that a row of numbers keeps its ints (depth=4, not depth=4.0)
    return frame[keys].astype(object).apply(lambda r: ", ".join(f"{k}={r[k]}" for k in keys), axis=1)


def curve_metric(final: pd.DataFrame) -> str:
    """The accuracy every evaluation has: validation where the runs held a split out (the test set is then looked
    at once, at the end), else test."""
    every = all(e.get("val_acc") is not None for hist in final.history for e in hist)
    return "val_acc" if every else "test_acc"


def curve_axis(final: pd.DataFrame) -> str:
    """What the curves run along: optimizer steps where every run's budget was in steps (at equal steps the epochs
    differ with the train size, 205 at 1k images against 3.7 at 55k), else epochs."""
    stepped = "budget" in final and (final.budget == "steps").all()
    return "step" if stepped and all("step" in e for hist in final.history for e in hist) else "epoch"


def natural(text: str):
    """Sort key that orders 'train_size=1000' before 'train_size=60000'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def unique(frame: pd.DataFrame, column: str) -> list:
    if column not in frame:
        return []
    values = frame[column].dropna().map(hashable).unique().tolist()
    return sorted(values, key=natural)


DERIVED = ("arm_label", "series")  # columns the analysis adds to the frame later
AXES = ("spatial", "channel", "preset", "dataset", "train_size", "shuffle", "epochs")  # record fields arms vary


def sort_key(key: str, value):
    """Arms in reading order: shuffles as none, patch, global; numbers by value; names alphabetically."""
    if key == "shuffle" and value in SHUFFLES:
        return (0, SHUFFLES.index(value), "")
    if isinstance(value, (int, float, np.number)):
        return (1, float(value), "")
    return (2, 0.0, str(value))


def reference(final: pd.DataFrame) -> pd.DataFrame:
    """The trials that compare model choices on equal terms: largest train size, no shuffle."""
    ref = final
    if "train_size" in ref and ref.train_size.nunique() > 1:
        ref = ref[ref.train_size == ref.train_size.max()]
    if "shuffle" in ref and ref.shuffle.nunique() > 1:
        ref = ref[ref.shuffle == ("none" if (ref.shuffle == "none").any() else ref.shuffle.mode()[0])]
    return ref
