"""A study in its storage, as workers share it: optuna's Study to read trials, the storage to write them, and
the study's id. Workers hold this instead of reaching into optuna's private `_storage` and `_trial_id`."""
import json
from dataclasses import dataclass

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage

from ...foundations.errors import UsageError
from ...foundations.storage import first_line
from .experiment import Experiment


@dataclass
class Board:
    storage: BaseStorage
    study: optuna.Study
    study_id: int

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)


def open_study(exp: Experiment, storage: BaseStorage) -> Board:
    """Creates the study (or loads it) and checks it was made from the same experiment."""
    try:
        study = optuna.create_study(study_name=exp.name, storage=storage, directions=exp.directions,
                                    load_if_exists=True)
    except sqlalchemy.exc.SQLAlchemyError as e:
        reason = first_line(getattr(e, "orig", None) or e, str(getattr(storage, "url", "")))  # RDB storages keep it
        raise UsageError(f"storage error: {reason}") from None
    if study.user_attrs.get("experiment") is None:
        study.set_user_attr("experiment", stored_fingerprint(exp))
    check_same_experiment(exp, study)
    # what may grow between invocations: the report reads the axes from here
    study.set_user_attr("axes", exp.fields)
    study.set_user_attr("linked", exp.linked)
    study.set_user_attr("seeds", exp.seeds)
    return Board(storage, study, storage.get_study_id_from_name(exp.name))


def stored_fingerprint(exp: Experiment) -> dict:
    """The experiment's fingerprint as the storage gives it back (JSON: tuples become lists)."""
    return json.loads(json.dumps(exp.fingerprint()))


def check_same_experiment(exp: Experiment, study: optuna.Study) -> None:
    """A study in a storage keeps the experiment it was made from (its arms and seeds may grow)."""
    mine = stored_fingerprint(exp)
    theirs = study.user_attrs.get("experiment", mine)
    if theirs != mine:
        diff = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
        raise UsageError(f"study {exp.name!r} in this storage was made from a different experiment "
                         f"({', '.join(diff)} differ: {', '.join(f'{k}={theirs.get(k)!r}' for k in diff)} there); "
                         f"name the study differently in [study].name or restore the file")


def load_board(exp: Experiment, storage: BaseStorage) -> Board:
    """The board of a study that open_study made (another process's view of it, maybe hours later, as a requeued
    Slurm task: the experiment file must still be the one the study was made from)."""
    study = optuna.load_study(study_name=exp.name, storage=storage)
    check_same_experiment(exp, study)
    return Board(storage, study, storage.get_study_id_from_name(exp.name))
