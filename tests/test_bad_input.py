"""The bad-input matrix: every wrong invocation exits 2 with a message naming the problem (and the valid
choices where there are any), no traceback, and nothing already saved is touched."""
import dataclasses
import gzip

import pytest

from conftest import assert_refused
from ablate.engines.training.plan import check
from ablate.foundations.config import RunConfig
from blocks.errors import ConfigError

SYN = ["--dataset", "synthetic", "--epochs", "1"]
GOOD_EXPERIMENT = '[study]\nname = "x"\nseeds = [0]\n[run]\ndataset = "synthetic"\nval_size = 100\nepochs = 1\n[arms]\nspatial = ["conv"]\n'

CASES = {
    # run
    "unknown spatial": (["--spatial", "sa", *SYN], r"unknown spatial mixer 'sa'; valid: attention, mlp, conv, pool, identity, random"),
    "unknown channel": (["--channel", "moe", *SYN], r"unknown channel mixer 'moe'; valid: mlp, glu"),
    "unknown preset": (["--preset", "giant", *SYN], r"unknown preset 'giant'; valid: tiny, small"),
    "unknown dataset": (["--dataset", "imagenet"], r"unknown dataset 'imagenet'; valid: fashion-mnist, mnist"),
    "zero train size": (["--train-size", "0", *SYN], r"--train-size: must be positive, got 0"),
    "negative train size": (["--train-size", "-5", *SYN], r"--train-size: must be positive, got -5"),
    "zero epochs": (["--epochs", "0", "--dataset", "synthetic"], r"--epochs: must be positive"),
    "train size above dataset": (["--train-size", "5000", *SYN], r"--train-size 5000 is outside 1..2000"),
    "negative val size": (["--val-size", "-1", *SYN], r"--val-size: must be >= 0, got -1"),
    "val split as large as the training set": (["--val-size", "2000", *SYN], r"--val-size 2000 must leave training images"),
    "train size above what the val split leaves": (["--val-size", "1000", "--train-size", "1500", *SYN],
                                                   r"--train-size 1500 is more than the 1000 training images left"),
    "steps and epochs": (["--steps", "10", *SYN], r"argument --epochs: not allowed with argument --steps"),
    "warm-up of the whole run": (["--warmup", "1", *SYN], r"warmup = 1.0 is out of range"),
    "negative lr": (["--lr", "-1", *SYN], r"lr = -1.0 is out of range"),
    "patch does not divide image": (["--model-opt", "img_size=30", *SYN], r"image size 30 is not divisible by the patch size 4"),
    "token-MLP on another grid": (["--spatial", "mlp", "--model-opt", "img_size=32", *SYN],
                                  r"built for 32 px images \(8x8 tokens\) and cannot run on a 7x7 token grid"),
    "unknown backbone option": (["--model-opt", "width=3", *SYN], r"unknown backbone option 'width'; valid: img_size"),
    "unknown mixer option": (["--spatial", "conv", "--model-opt", 'spatial_options={"conv": {"k": 3}}', *SYN],
                             r"spatial mixer 'conv' has no option 'k'; its options: kernel_size"),
    "malformed model option": (["--model-opt", "norm", *SYN], r"expected KEY=VALUE, got 'norm'"),
    "unknown shuffle": (["--shuffle", "diagonal", *SYN], r"invalid choice: 'diagonal' \(choose from 'none', 'patch', 'global'\)"),
    "resume dir without checkpoint": (["--resume", "{tmp}/nowhere", *SYN], r"--resume .*nowhere: no checkpoint.pt there"),
    "batch larger than subset": (["--batch-size", "500", "--train-size", "100", *SYN], r"smaller than one batch"),
    "class token with a grid mixer": (["--spatial", "conv", "--model-opt", "head=token", *SYN],
                                      r"'conv' mixes a grid and cannot reach a class token"),
    "corrupt dataset file": (["--data-dir", "{tmp}/corrupt", "--epochs", "1"], r"corrupt/train-images-idx3-ubyte.gz"),
    "data dir not a folder": (["--data-dir", "{tmp}/nowhere", "--epochs", "1"], r"--data-dir .*nowhere is not a folder"),
    "data dir without the dataset": (["--data-dir", "{tmp}/empty", "--epochs", "1"],
                                     r"--data-dir .*empty does not hold fashion-mnist"),
    "drop path above 1": (["--model-opt", "drop_path=1.5", *SYN], r"drop_path = 1.5 is out of range: drop_path in \[0, 1\)"),
    "wrong type of model option": (["--model-opt", "depths=four", *SYN], r"depths = 'four' must be a list of whole numbers"),
    "malformed JSON model option": (["--model-opt", "depths=[4,", *SYN], r"'depths': malformed JSON value '\[4,'"),
    "model too large to allocate": (["--model-opt", "dims=[32768]", *SYN], r"needs .* GiB .* more than the .* GiB free"),
    "reserved model option": (["--model-opt", "spatial=conv", *SYN], r"model_options may not set spatial"),
    # profile
    "profile unknown mixer": (["profile", "--spatial", "attention,sa"], r"unknown spatial mixer 'sa'; valid: attention"),
    "profile size not divisible": (["profile", "--spatial", "conv", "--img-size", "30"], r"not divisible by the patch size"),
    "profile class token with conv": (["profile", "--preset", "vit-s16", "--spatial", "conv"],
                                      r"cannot reach a class token"),
    # study
    "study missing file": (["study", "{tmp}/missing.toml"], r"missing.toml"),
    "study unknown key": (["study", "{tmp}/unknown-key.toml"], r"unknown \[study\] key 'sedes'; valid: name"),
    "study wrong type": (["study", "{tmp}/wrong-type.toml"], r"seeds"),
    "study unknown mixer": (["study", "{tmp}/unknown-mixer.toml"], r"\[arms\].spatial = 'sa' is not one of: attention, mlp"),
    "study bad storage url": (["study", "{tmp}/good.toml", "--storage", "bogus://nowhere"], r"storage"),
    "study unreachable storage": (["study", "{tmp}/good.toml", "--storage", "postgresql://u:secret@127.0.0.1:1/db"],
                                  r"cannot open storage postgresql://u:\*\*\*@127.0.0.1:1/db"),
    # report
    "report unknown study": (["report", "--study", "nope", "--storage", "sqlite:///{tmp}/empty.db"], r"nope"),
    "report missing storage": (["report", "--study", "x", "--storage", "sqlite:///{tmp}/missing.db"], r"missing.db"),
    "report without study": (["report"], r"the following arguments are required: --study"),
    # list
    "list unknown flag": (["list", "--bogus"], r"unrecognized arguments: --bogus"),
    "unknown command flag": (["--bogus"], r"unrecognized arguments: --bogus"),
}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "good.toml").write_text(GOOD_EXPERIMENT)
    (tmp_path / "unknown-key.toml").write_text(GOOD_EXPERIMENT.replace("seeds = [0]", "sedes = [0]"))
    (tmp_path / "wrong-type.toml").write_text(GOOD_EXPERIMENT.replace("seeds = [0]", 'seeds = "zero"'))
    (tmp_path / "unknown-mixer.toml").write_text(GOOD_EXPERIMENT.replace('["conv"]', '["sa"]'))
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (corrupt / name).write_bytes(gzip.compress(b"\0\0\x08\x03" + b"\0\0\0\x05" * 3 + b"short"))
    import optuna
    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path}/empty.db")
    return tmp_path


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2(case, files, capsys, monkeypatch):
    monkeypatch.chdir(files)  # runs/, ablate.db and profile files land in the temp folder
    argv, message = CASES[case]
    assert_refused([a.replace("{tmp}", str(files)) for a in argv], message, capsys)
    assert not list(files.glob("runs/*/record.json"))  # nothing was started


def test_matrix_is_wide():
    commands = {argv[0] if argv[0] in ("profile", "study", "report", "list") else "run" for argv, _ in CASES.values()}
    assert commands == {"run", "profile", "study", "report", "list"} and len(CASES) >= 20


RUN_BAD_VALUES = {"spatial": "sa", "channel": "moe", "preset": "giant", "model_options": [], "match": "flops",
                  "match_to": 3, "dataset": "imagenet", "img_size": 0, "data_dir": 5, "train_size": 0, "epochs": 0,
                  "eval_every": 0, "val_size": -1, "steps": 0, "batch_size": 0, "lr": 0.0, "weight_decay": -1.0, "warmup": 1.0,
                  "label_smoothing": 1.0, "augment": "yes", "shuffle": "rows", "seed": "zero", "device": "tpu",
                  "compile": 1, "out": 5, "recipe": "medium", "mixup": -0.1, "cutmix": "yes",
                  "random_erasing": 1.5, "ema": 1.0, "test_each_eval": "yes", "precision": "fp16"}


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(RunConfig)])
def test_every_run_config_field_is_checked(name):
    """The one check (training.plan.check) names any field with a wrong type or value, before data or files."""
    with pytest.raises(ConfigError, match=name):
        check(RunConfig(**{name: RUN_BAD_VALUES[name]}))
