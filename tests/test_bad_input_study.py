"""Untrusted experiment files and storage URLs (issue 32): a study name never becomes a path outside --out, no
password shows in any message, record or report, a diverged run is reported as a failed result, and identical arms
or huge grids are refused when the file loads. Each refusal exits 2 with one line naming the key, leaves what was
saved as it was, and starts nothing."""
import contextlib
import io
import json
from pathlib import Path
from urllib.parse import quote

import optuna
import pytest

from ablate import commands as cli
from ablate.engines.study import experiment
from ablate.engines.study.arms import MAX_ARMS, MAX_CELLS, check_size
from ablate.engines.study.cells import MAX_FOLDER_BYTES, arm_folder
from ablate.foundations.errors import UsageError
from ablate.foundations.storage import masked
from conftest import run_cli

RUN = ('[run]\ndataset = "synthetic"\nval_size = 100\ntrain_size = 200\nbatch_size = 50\nwarmup = 0\naugment = false\n'
       'model_options = { depths = [1], dims = [16] }\n')
PASSWORD = "Zq7Secr3tPw"


def write(folder: Path, text: str, name: str = "exp.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder): what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


@pytest.fixture
def saved(tmp_path):
    """A storage with a study in it and a run folder under --out, as earlier work left them."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="earlier", storage=url)
    run = tmp_path / "out" / "earlier" / "arm" / "final-seed0"
    run.mkdir(parents=True)
    write(run, "{}", "record.json")
    return url


def refused(capsys, *argv: str) -> str:
    """stderr of `ablate *argv`, which must exit 2 with one line and no traceback."""
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


# --- names from files never become paths outside --out ---------------------------------------------------------

BAD_NAMES = ["../../x", "../x", "/tmp/abs", "a/b", "a\\\\b", "", ".", "..", ".hidden", "-rf", "a\\u0000b", "a\\nb",
             "a b", "x" * 101, "名前", "a:b", "~"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_study_name_that_is_not_a_folder_name_exits_2(tmp_path, capsys, saved, name):
    file = write(tmp_path, f'[study]\nname = "{name}"\n' + RUN + "epochs = 1\n")
    before, outside = tree(tmp_path), sorted(tmp_path.parent.iterdir())
    for status in ([], ["--status"]):
        err = refused(capsys, "study", str(file), "--storage", saved, "--out", str(tmp_path / "out"), *status)
        assert "[study].name = " in err and "letters, digits, '-', '_' or '.'" in err
    assert tree(tmp_path) == before and sorted(tmp_path.parent.iterdir()) == outside


@pytest.mark.parametrize("file_name", ["..toml", ".hidden.toml", "a b.toml", "x" * 101 + ".toml"])
def test_a_study_named_by_its_file_name_is_checked_too(tmp_path, capsys, file_name):
    file = write(tmp_path, RUN + "epochs = 1\n", file_name)
    err = refused(capsys, "study", str(file), "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert f"(from the file name {file_name}; set [study].name)" in err and not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("name", ["structure-x-mixer", "a", "V1.2_b-3", "x" * 100, "time-to-accuracy-tiny-hier"])
def test_plain_study_names_load(tmp_path, name):
    assert experiment.load(write(tmp_path, f'[study]\nname = "{name}"\n' + RUN)).name == name
    assert experiment.load(write(tmp_path, RUN, f"{name}.toml")).name == name


@pytest.mark.parametrize("reuse", ['["../other"]', '["/abs/study"]', '["ok", "a/b"]', '[""]', '[".."]', '[".x"]'])
def test_a_reused_study_name_that_is_not_a_folder_name_exits_2(tmp_path, capsys, saved, reuse):
    file = write(tmp_path, f'[study]\nname = "mine"\nreuse = {reuse}\n' + RUN + "epochs = 1\n")
    before = tree(tmp_path)
    err = refused(capsys, "study", str(file), "--storage", saved, "--out", str(tmp_path / "out"))
    assert "[study].reuse = " in err and "letters, digits" in err and tree(tmp_path) == before


@pytest.mark.parametrize("name", ["../escape", "/abs/escape", "a/b", "..", ".", "", "x" * 101, "a\0b"])
def test_the_report_folder_is_named_by_the_study_only_when_it_is_a_folder_name(tmp_path, capsys, monkeypatch,
                                                                                saved, name):
    monkeypatch.chdir(tmp_path)  # the default folder is reports/NAME, from here
    before, outside = tree(tmp_path), sorted(tmp_path.parent.iterdir())
    err = refused(capsys, "report", "--study", name, "--storage", saved)
    assert "--study " in err and "default output folder reports/NAME" in err and "give the folder with -o" in err
    assert tree(tmp_path) == before and sorted(tmp_path.parent.iterdir()) == outside
    err = refused(capsys, "report", "--study", name, "--storage", saved, "-o", str(tmp_path / "r"))
    assert "no study" in err and "earlier" in err and not (tmp_path / "r").exists()  # -o: any name, looked up


@pytest.mark.parametrize("label", ["dataset=imagefolder:/data/../../etc", "model_options=" + "{\"norm\":\"x\"}" * 40,
                                   "spatial=mlp,model_options=" + "é" * 200, "a\0b=c/d", "lr=" + "9" * 300])
def test_an_arm_folder_is_one_short_name(label):
    folder = arm_folder(label)
    assert "/" not in folder and "\0" not in folder and folder not in (".", "..")
    assert len(folder.encode()) <= MAX_FOLDER_BYTES
    assert arm_folder(label + "x") != folder  # a long label cut short is still told apart


# --- no password in any message, record or report ---------------------------------------------------------------

FAILING_URLS = [  # each fails to open: a server that is not there, a URL that does not parse, no driver
    f"postgresql://u:{PASSWORD}@127.0.0.1:1/db",
    f"postgresql://u:{PASSWORD}@127.0.0.1:notaport/db",
    f"postgresql://u:{PASSWORD}@[::1/db",
    f"postgresql+psycopg2://u:{PASSWORD}@127.0.0.1:1/db",
    f"postgresql://u:p@{PASSWORD}@127.0.0.1:1/db",
    f"postgresql://u:{PASSWORD}@@127.0.0.1:1/db",
    f"postgresql://u:{PASSWORD}/x?y#z@127.0.0.1:1/db",
    f"postgresql://u:{quote(PASSWORD + '@:/')}@127.0.0.1:1/db",
    f"postgresql://u@127.0.0.1:1/db?password={PASSWORD}",
    f"postgresql://127.0.0.1:1/db?sslmode=disable&user=u&password={PASSWORD}&connect_timeout=5",
    f"postgresql://u@127.0.0.1:1/db?sslpassword={PASSWORD}",
    f"postgresql://u@127.0.0.1:1/db?token={PASSWORD}",
    f"postgresql:u:{PASSWORD}@127.0.0.1/db",
    f"u:{PASSWORD}@127.0.0.1/db",
    f"mysql+pymysql://u:{PASSWORD}@127.0.0.1:1/db",
    f"nosuchdriver://u:{PASSWORD}@127.0.0.1/db",
    f"host=127.0.0.1 user=u password={PASSWORD}",
]


@pytest.mark.parametrize("url", FAILING_URLS)
def test_masked_hides_the_password_of_any_form(url):
    shown = masked(url)
    assert PASSWORD not in shown and "***" in shown and shown != url
    assert "127.0.0.1" in shown or "[::1" in shown  # where it points stays readable


@pytest.mark.parametrize("url", ["sqlite:///ablate.db", "journal:/shared/study.log", "runs/study.journal",
                                 "postgresql://nobody@127.0.0.1:1/ablate", "mysql+pymysql://me@db.example/ablate",
                                 "postgresql://db.example:5432/a?sslmode=require"])
def test_masked_leaves_a_url_without_a_password_as_it_is(url):
    assert masked(url) == url


@pytest.mark.parametrize("url", FAILING_URLS)
def test_no_password_in_any_message_of_study_status_or_report(tmp_path, capsys, url):
    file = write(tmp_path, '[study]\nname = "pw"\n' + RUN + "epochs = 1\n")
    for argv in (["study", str(file), "--storage", url, "--out", str(tmp_path / "out")],
                 ["study", str(file), "--status", "--storage", url],
                 ["report", "--study", "pw", "--storage", url, "-o", str(tmp_path / "r")]):
        err = refused(capsys, *argv)
        assert PASSWORD not in err and "storage" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.toml"]  # no run folder, report or database


@pytest.mark.parametrize("command, url", [
    ("report", f"sqlite:///nofile.db?password={PASSWORD}"),  # report's "no such file"
    ("status", f"postgresql://u:{PASSWORD}@127.0.0.1:notaport/db"),
    ("study", f"postgresql://u:p@{PASSWORD}@127.0.0.1:1/db"),
])
def test_no_password_in_what_a_command_prints(tmp_path, command, url):
    file = write(tmp_path, '[study]\nname = "pw"\n' + RUN + "epochs = 1\n")
    argv = {"report": ["report", "--study", "pw", "--storage", url, "-o", "r"],
            "status": ["study", str(file), "--status", "--storage", url],
            "study": ["study", str(file), "--storage", url, "--out", "out"]}[command]
    result = run_cli(*argv, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert PASSWORD not in result.stdout + result.stderr and "***" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.toml"]


# --- a study whose storage URL carries a password and whose one arm diverges --------------------------------------

@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """`study`, `study --status` and `report` of two arms, one at lr = 1e6: warm-up starts it small, so it diverges
    after evaluations that saved its record. The storage URL has a password parameter (SQLite ignores it)."""
    folder = tmp_path_factory.mktemp("diverged")
    file = write(folder, '[study]\nname = "div"\nseeds = [0]\n[arms]\nlr = [1e-2, 1e6]\n'
                 + RUN.replace("warmup = 0", "warmup = 0.5") + "steps = 12\neval_every = 1\n")
    url = f"sqlite:///{folder / 's.db'}?password={PASSWORD}"
    printed = {}
    for name, argv in (("study", ["study", str(file), "--storage", url, "--out", str(folder / "runs"), "--json"]),
                       ("status", ["study", str(file), "--status", "--storage", url]),
                       ("report", ["report", "--study", "div", "--storage", url, "-o", str(folder / "r"), "--json"])):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
        assert code == 0, err.getvalue()
        printed[name] = out.getvalue() + err.getvalue()
    return folder, printed


def test_a_diverged_run_is_reported_as_failed_with_its_error(diverged):
    folder, printed = diverged
    trial = next(t for t in optuna.load_study(study_name="div", storage=f"sqlite:///{folder / 's.db'}").trials
                 if t.state == optuna.trial.TrialState.FAIL)
    assert trial.user_attrs["record"]["error"] is None  # the record of its last evaluation: what hid the error
    doc = json.loads((folder / "r" / "summary.json").read_text())
    assert doc["interrupted"] == 0
    (failed,) = doc["failed_runs"]
    assert failed["error"] == trial.user_attrs["error"] and failed["error"].startswith("diverged")
    assert failed["number"] == trial.number and failed["phase"] == "final" and "1000000" in failed["arm"]
    assert [(a["n"], a["failed"]) for a in doc["arms"] if a["arm"] == failed["arm"]] == [(0, 1)]
    md = (folder / "r" / "report.md").read_text()
    assert "interrupted" not in md and "failed includes 1 diverged run(s)" in md
    assert f"| {trial.number} | {failed['arm']} | final | 0 | diverged" in md


def test_a_password_in_a_working_storage_url_is_in_no_output(diverged):
    folder, printed = diverged
    assert all(PASSWORD not in text for text in printed.values())
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".csv", ".svg", ".log", ".txt"):
            assert PASSWORD not in path.read_text(errors="replace"), path
    assert json.loads((folder / "r" / "summary.json").read_text())["storage"].endswith("?password=***")


# --- two arms that are one run -------------------------------------------------------------------------------------

@pytest.mark.parametrize("arms, message", [
    ("lr = [1, 1.0]", "[arms].lr lists the same value twice: 1 and 1.0 are both 1.0"),
    ("lr = [0.01, 1e-2, 0.1]", "[arms].lr lists the same value twice: 0.01 and 0.01"),
    ("warmup = [0, 0.0]", "[arms].warmup lists the same value twice: 0 and 0.0"),
    ('spatial = ["conv", "mlp", "conv"]', "[arms].spatial lists the same value twice: 'conv' and 'conv'"),
    ("train_size = [100, 100]", "[arms].train_size lists the same value twice"),
    ("model_options = [{ depths = [1] }, { depths = [1] }]", "[arms].model_options lists the same value twice"),
    ("optim = [{ lr = 0.01, weight_decay = 0 }, { weight_decay = 0.0, lr = 1e-2 }]",
     "[arms].optim lists the same value twice"),
    ('recipe = ["short", "long"]', "arms 'recipe=short' and 'recipe=long' are the same run"),  # [run] sets ema
])
def test_two_arms_that_are_one_run_exit_2_naming_them(tmp_path, capsys, saved, arms, message):
    run = '[run]\ndataset = "synthetic"\nval_size = 100\nepochs = 1\nema = 0.0\n'  # recipes differ in epochs, ema
    file = write(tmp_path, f'[study]\nname = "twins"\n{run}[arms]\n{arms}\n')
    before = tree(tmp_path)
    for status in ([], ["--status"]):
        err = refused(capsys, "study", str(file), "--storage", saved, "--out", str(tmp_path / "out"), *status)
        assert message in err and "keep one" in err
    assert tree(tmp_path) == before


# --- grids too large to run --------------------------------------------------------------------------------------

HUNDRED = ", ".join(str(round(1e-4 * (i + 1), 6)) for i in range(100))
HUGE = {
    "three axes of 100": (f"[arms]\nlr = [{HUNDRED}]\nweight_decay = [{HUNDRED}]\nlabel_smoothing = "
                          f"[{', '.join(str(i / 200) for i in range(100))}]\n", "[arms] makes 1,000,000 arms"),
    "two axes of 100": (f"[arms]\nlr = [{HUNDRED}]\nweight_decay = [{HUNDRED}]\n", "[arms] makes 10,000 arms"),
    "a grid search of 10,000 points": (f'[study]\nsampler = "grid"\n[arms]\nspatial = ["conv", "mlp"]\n[search]\n'
                                       f"lr = {{ choices = [{HUNDRED}] }}\n"
                                       f"weight_decay = {{ choices = [{HUNDRED}] }}\n",
                                       "the study has 20,002 cells (2 arms x (10,000 [study].trials_per_arm + 1"),
    "a billion tuning trials": ("[study]\ntrials_per_arm = 1000000000\n[search]\nlr = { low = 1e-4, high = 1e-1 }\n",
                                "the study has 1,000,000,001 cells"),
    "twenty thousand seeds": (f"[study]\nseeds = [{', '.join(map(str, range(20000)))}]\n",
                              "the study has 20,000 cells (1 arms x (0 [study].trials_per_arm + 20,000 [study].seeds"),
}


@pytest.mark.parametrize("case", HUGE)
def test_a_huge_grid_is_refused_before_any_arm_is_listed(tmp_path, capsys, monkeypatch, saved, case):
    text, message = HUGE[case]
    file = write(tmp_path, RUN + "epochs = 1\n" + text)

    def listed(self):
        raise AssertionError("the arms were listed")
    monkeypatch.setattr(experiment.Experiment, "arms", property(listed))
    monkeypatch.setattr(experiment.Experiment, "grid", property(listed))
    before = tree(tmp_path)
    for status in ([], ["--status"]):
        err = refused(capsys, "study", str(file), "--storage", saved, "--out", str(tmp_path / "out"), *status)
        assert message in err and "limit of" in err, err
    assert tree(tmp_path) == before


def test_a_million_arms_exit_2_at_once_in_a_fresh_process(tmp_path):
    file = write(tmp_path, RUN + "epochs = 1\n" + HUGE["three axes of 100"][0])
    result = run_cli("study", str(file), "--storage", "sqlite:///s.db", cwd=tmp_path, timeout=300)
    assert result.returncode == 2 and "1,000,000 arms" in result.stderr and "limit of 1,000" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.toml"]


def test_the_limits_are_where_they_say():
    check_size({"a": [0] * MAX_ARMS}, 0, 1)
    check_size({"a": [0] * 100}, MAX_CELLS // 100 - 1, 1)
    with pytest.raises(UsageError, match=f"1,001 arms .* limit of {MAX_ARMS:,}"):
        check_size({"a": [0] * 7, "b": [0] * 143}, 0, 1)
    with pytest.raises(UsageError, match=f"10,001 cells .* limit of {MAX_CELLS:,}"):
        check_size({}, 0, MAX_CELLS + 1)
