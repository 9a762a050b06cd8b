"""Values that make no sense stop before any work with exit 2 and a message naming the option and its valid range:
non-finite numbers, seeds that would alias, budgets that would allocate their schedule, models that contradict the
data or cannot train, mixer options of every registered mixer, damaged data files, and values too long to echo."""
import gzip
import hashlib
import math
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import blocks
from ablate.commands import main
from ablate.engines import data
from ablate.engines.data import idx
from ablate.foundations.config import MAX_SEED
from blocks.checks import conforms, mixer_options
from blocks.spatial.base import SpatialMixer
from conftest import assert_refused
from torchvision import datasets as tv

SYN = ["--dataset", "synthetic", "--epochs", "1"]
STUDY = '[study]\nname = "x"\nseeds = [0]\n[run]\ndataset = "synthetic"\nval_size = 100\n{run}\n[arms]\n{arms}\n'


def model_opt(kind: str, mixer: str, options: str) -> list[str]:
    return [f"--{kind}", mixer, "--model-opt", f'{kind}_options={{"{mixer}": {options}}}']


CASES = {
    # every float finite
    "lr inf": (["--lr", "inf", *SYN], r"lr = inf is not a finite number; valid: lr > 0"),
    "lr nan": (["--lr", "nan", *SYN], r"lr = nan is not a finite number; valid: lr > 0"),
    "weight decay nan": (["--weight-decay", "nan", *SYN], r"weight_decay = nan is not a finite number; valid: weight_decay >= 0"),
    "warmup -inf": (["--warmup=-inf", *SYN], r"warmup = -inf is not a finite number; valid: warmup in \[0, 1\)"),
    "label smoothing nan": (["--label-smoothing", "nan", *SYN], r"label_smoothing = nan is not a finite"),
    "mixup inf": (["--mixup", "inf", *SYN], r"mixup = inf is not a finite number; valid: mixup >= 0"),
    "cutmix nan": (["--cutmix", "nan", *SYN], r"cutmix = nan is not a finite"),
    "random erasing nan": (["--random-erasing", "nan", *SYN], r"random_erasing = nan is not a finite number; valid: random_erasing in \[0, 1\]"),
    "ema inf": (["--ema", "inf", *SYN], r"ema = inf is not a finite number; valid: ema in \[0, 1\)"),
    "drop path nan": (["--model-opt", "drop_path=NaN", *SYN], r"drop_path = nan is not a finite number; valid: drop_path in \[0, 1\)"),
    "layer scale inf": (["--model-opt", "layer_scale=Infinity", *SYN], r"layer_scale = inf is not a finite number; valid: layer_scale > 0"),
    "res scale per stage inf": (["--model-opt", "res_scale=[Infinity]", *SYN], r"res_scale = \[inf\] is not a finite"),
    "norm eps overflows": (["--model-opt", "norm_eps=1e400", *SYN], r"norm_eps = inf is not a finite number; valid: norm_eps in \(0, 1\]"),
    "head hidden ratio nan": (["--model-opt", "head_hidden_ratio=NaN", *SYN], r"head_hidden_ratio = nan is not a finite"),
    "channel ratio inf": ([*model_opt("channel", "mlp", '{"ratio": Infinity}'), *SYN], r"channel mixer 'mlp' option ratio = inf is not a finite number; valid: ratio in \(0, 64\]"),
    "conv expansion nan": ([*model_opt("spatial", "conv", '{"expansion": NaN}'), *SYN], r"option expansion = nan is not a finite"),
    "attention dropout nan": ([*model_opt("spatial", "attention", '{"attn_drop": NaN}'), *SYN], r"option attn_drop = nan"),
    "token-MLP ratio inf": ([*model_opt("spatial", "mlp", '{"hidden_ratio": Infinity}'), *SYN], r"option hidden_ratio = inf"),
    # seeds every generator takes without wrapping onto another seed
    "seed -1": (["--seed", "-1", *SYN], r"seed = -1 is out of range: seed from 0 to 2,147,483,647"),
    "seed 2**31": (["--seed", str(2**31), *SYN], r"seed = 2147483648 is out of range: seed from 0 to 2,147,483,647"),
    "seed 2**32 (aliased seed 0)": (["--seed", str(2**32), *SYN], r"seed = 4294967296 is out of range"),
    "seed 2**64": (["--seed", str(2**64), *SYN], r"seed = 18446744073709551616 is out of range"),
    # bounded work
    "epochs 10**12": (["--epochs", str(10**12), "--dataset", "synthetic"], r"epochs = 1000000000000 is out of range: epochs from 1 to 1,000,000"),
    "steps 10**15": (["--steps", str(10**15), "--dataset", "synthetic"], r"steps = 1000000000000000 is out of range: steps from 1 to 1,000,000,000"),
    "eval every 10**15": (["--eval-every", str(10**15), *SYN], r"eval_every = 1000000000000000 is out of range"),
    "an evaluation every step of 10**9": (["--steps", str(10**9), "--eval-every", "1", "--dataset", "synthetic"], r"makes 1,000,000,000 evaluations; valid: at most 10,000 .*raise eval_every to 100,000"),
    "an evaluation every epoch of 50,000": (["--epochs", "50000", "--dataset", "synthetic"], r"makes 50,000 evaluations"),
    "batch larger than any dataset": (["--batch-size", str(2**30), *SYN], r"batch_size = 1073741824 is out of range: batch_size from 1 to 16,777,216"),
    "batch larger than the subset": (["--batch-size", "64", "--train-size", "10", *SYN], r"train_size 10 is smaller than one batch \(64\)"),
    "train size 10**12": (["--train-size", str(10**12), *SYN], r"train_size = 1000000000000 is out of range"),
    "img size 10**6": (["--img-size", str(10**6), "--dataset", "imagefolder:/nowhere"], r"img_size = 1000000 is out of range: img_size from 1 to 8,192"),
    "a model far too wide": (["--model-opt", "dims=[1000000000]", *SYN], r"dims = \[1000000000\] is out of range: dims from 1 to 65,536"),
    "a model far too deep": (["--model-opt", "depths=[1000000000]", *SYN], r"depths = \[1000000000\] is out of range"),
    "too many blocks in all": (["--spatial", "conv", "--preset", "tiny-hier", "--model-opt", "depths=[400,400,400,1]", *SYN], r"make 1,201 blocks; valid: .*from 1 to 1,000 blocks in all"),
    "too many classes": (["--model-opt", "num_classes=10000000", *SYN], r"num_classes = 10000000 is out of range: num_classes from 0 to 1,000,000"),
    "too many input channels": (["--model-opt", "in_chans=1000000", *SYN], r"in_chans = 1000000 is out of range"),
    "a model too large for memory": (["--model-opt", "dims=[65536]", *SYN], r"needs .* GiB .* more than the .* GiB free"),
    # model settings that contradict the data or cannot train
    "fewer classes than the data": (["--model-opt", "num_classes=5", *SYN], r"num_classes = 5 does not fit synthetic; valid: 10, as synthetic has 10 classes"),
    "more classes than the data": (["--model-opt", "num_classes=11", *SYN], r"num_classes = 11 does not fit synthetic"),
    "features only": (["--model-opt", "num_classes=0", *SYN], r"num_classes = 0 builds a model without a classifier .*cannot be trained"),
    "RGB model on grey images": (["--model-opt", "in_chans=3", *SYN], r"in_chans = 3 does not fit synthetic; valid: 1"),
    "patch stem that drops pixels": (["--spatial", "conv", "--model-opt", "stem=patch", "--model-opt", "patch_size=8",
                                      "--model-opt", "img_size=32", "--model-opt", "pos_embed=none", *SYN], r"patch stem \(patch_size 8\) does not divide synthetic's 28 px images"),
    "no stage": (["--model-opt", "depths=[]", "--model-opt", "dims=[]", *SYN], r"depths = \[\] make 0 blocks"),
    "a stage of no blocks": (["--spatial", "conv", "--preset", "tiny-hier", "--model-opt", "depths=[1,0,1,1]", *SYN], r"depths = \[1, 0, 1, 1\] is out of range: depths from 1 to 1,000"),
    "heads that do not divide the width": ([*model_opt("spatial", "attention", '{"num_heads": 5}'), *SYN], r"dim 64 is not divisible by num_heads 5; valid: num_heads that divide the width, here 1, 2, 4"),
    "head size that leaves a remainder": ([*model_opt("spatial", "attention", '{"head_dim": 20}'), *SYN], r"dim 64 is not divisible by num_heads 3 \(dim // head_dim 20\)"),
    "a conv stem wider than the model": (["--spatial", "conv", "--model-opt", "dims=[1]", "--model-opt", "pos_embed=none", *SYN], r"conv stem .* must be at least 2, not 1"),
    "a channel MLP of no hidden unit": ([*model_opt("channel", "mlp", '{"ratio": 0.001}'), *SYN], r"ratio 0.001 of width 64 leaves no hidden unit; valid: ratio >= 0.0156"),
    "a head MLP of no hidden unit": (["--model-opt", "head_hidden_ratio=0.001", *SYN], r"head_hidden_ratio: ratio 0.001"),
    # mixer options (each mixer's declaration)
    "kernel 0": ([*model_opt("spatial", "conv", '{"kernel_size": 0}'), *SYN], r"spatial mixer 'conv' option kernel_size = 0 is out of range: kernel_size odd, from 1 to 255"),
    "kernel -3": ([*model_opt("spatial", "conv", '{"kernel_size": -3}'), *SYN], r"kernel_size = -3 is out of range"),
    "kernel 2.5": ([*model_opt("spatial", "conv", '{"kernel_size": 2.5}'), *SYN], r"kernel_size = 2.5 must be a whole number"),
    "even kernel": ([*model_opt("spatial", "conv", '{"kernel_size": 4}'), *SYN], r"kernel_size = 4 is out of range: kernel_size odd"),
    "pool 0": ([*model_opt("spatial", "pool", '{"pool_size": 0}'), *SYN], r"option pool_size = 0 is out of range"),
    "pool 2": ([*model_opt("spatial", "pool", '{"pool_size": 2}'), *SYN], r"option pool_size = 2 is out of range"),
    "heads 0 (not 'unset')": ([*model_opt("spatial", "attention", '{"num_heads": 0}'), *SYN], r"num_heads = 0 is out of range: num_heads from 1 to 65,536"),
    "head size 0": ([*model_opt("spatial", "attention", '{"head_dim": 0}'), *SYN], r"option head_dim = 0 is out of range"),
    "ratio 0": ([*model_opt("channel", "glu", '{"ratio": 0}'), *SYN], r"channel mixer 'glu' option ratio = 0 is out of range: ratio in \(0, 64\]"),
    "ratio negative": ([*model_opt("channel", "mlp", '{"ratio": -4}'), *SYN], r"option ratio = -4 is out of range"),
    "expansion 0 (not 'no expansion')": ([*model_opt("spatial", "conv", '{"expansion": 0}'), *SYN], r"option expansion = 0 is out of range"),
    "unknown activation": ([*model_opt("channel", "mlp", '{"act": "nope"}'), *SYN], r"unknown channel mixer 'mlp' option act 'nope'; valid: gelu, relu, silu"),
    "bias not a bool": ([*model_opt("channel", "mlp", '{"bias": 1}'), *SYN], r"option bias = 1 must be true or false"),
    "option of an unused mixer": ([*model_opt("spatial", "conv", '{"kernel_size": 0}')[2:], *SYN], r"kernel_size = 0"),
}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory) -> Path:
    """A finished run under --out: a refused command must leave it as it was."""
    out = tmp_path_factory.mktemp("saved") / "runs"
    assert main(["--dataset", "synthetic", "--train-size", "100", "--epochs", "1", "--batch-size", "50",
                 "--model-opt", "depths=[1]", "--model-opt", "dims=[16]", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("case", CASES)
def test_nonsense_value_exits_2_before_any_work(case, saved_runs, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    before = snapshot(saved_runs)
    argv, message = CASES[case]
    assert_refused([*argv, "--out", str(saved_runs)], message, capsys)
    assert snapshot(saved_runs) == before


@pytest.mark.parametrize("run, arms, message", [
    ("epochs = 1\nlr = inf", 'spatial = ["conv"]', r"lr = inf is not a finite number"),
    ("epochs = 1\nweight_decay = nan", 'spatial = ["conv"]', r"weight_decay = nan is not a finite number"),
    ("epochs = 1\nmodel_options = { drop_path = nan }", 'spatial = ["conv"]', r"drop_path = nan is not a finite number"),
    ("epochs = 1", 'lr = [1e-3, inf]', r"lr = inf is not a finite number"),
    ("epochs = 1", 'label_smoothing = [nan]', r"label_smoothing = nan"),
    ("epochs = 1\nmodel_options = { spatial_options = { conv = { kernel_size = 0 } } }", 'spatial = ["conv"]',
     r"kernel_size = 0 is out of range"),
    ("epochs = 1000000000000", 'spatial = ["conv"]', r"epochs = 1000000000000 is out of range"),
    ("steps = 1000000000\neval_every = 1", 'spatial = ["conv"]', r"makes 1,000,000,000 evaluations"),
])
def test_experiment_file_values_are_checked(run, arms, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    file = tmp_path / "bad.toml"
    file.write_text(STUDY.format(run=run, arms=arms))
    assert_refused(["study", str(file), "--storage", f"sqlite:///{tmp_path}/s.db"], message, capsys)
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "runs").exists()


def test_seed_range_leaves_room_for_every_generator_and_rank():
    """numpy's global generator takes seeds below 2**32; rank r adds 1_000_003 * r to the seed."""
    assert MAX_SEED + 1_000_003 * 2_146 < 2**32
    np.random.seed(MAX_SEED + 1_000_003 * 2_146)
    torch.Generator().manual_seed(MAX_SEED * 1000 + 999)  # subsets.epoch_order's seed


# -- every declared option of every registered mixer --------------------------------------------------------------

CANDIDATES = [0, -1, 2.5, math.inf, math.nan, "x", True]  # zero, negative, fractional, non-finite, wrong types


def refused_by_declaration(cls, option: str, value) -> bool:
    """Whether the option's declaration refuses `value`: its type hint, then finiteness, `option_ranges` and
    `option_choices`."""
    if not conforms(value, mixer_options(cls)[option]):
        return True
    if isinstance(value, float) and not math.isfinite(value):
        return True
    ok, _ = getattr(cls, "option_ranges", {}).get(option, (None, ""))
    names = getattr(cls, "option_choices", {}).get(option)
    return (ok is not None and not ok(value)) or (names is not None and value not in names)


MIXER_OPTIONS = [(kind, name, option) for kind, registry in (("spatial", blocks.SPATIAL), ("channel", blocks.CHANNEL))
                 for name, cls in registry.items() for option in mixer_options(cls)]


@pytest.mark.parametrize("kind, name, option", MIXER_OPTIONS, ids=["-".join(t) for t in MIXER_OPTIONS])
def test_every_mixer_option_refuses_what_its_declaration_refuses(kind, name, option):
    cls = (blocks.SPATIAL if kind == "spatial" else blocks.CHANNEL)[name]
    assert refused_by_declaration(cls, option, math.inf) and refused_by_declaration(cls, option, math.nan)
    for value in CANDIDATES:
        overrides = {kind: name, f"{kind}_options": {name: {option: value}}}
        if refused_by_declaration(cls, option, value):
            with pytest.raises(blocks.ConfigError, match=rf"{kind} mixer '{name}' option {option}"):
                blocks.preset_config("tiny", **overrides)
        else:
            blocks.preset_config("tiny", **overrides)


class Shift(SpatialMixer):
    """A mixer that declares nothing but its signature."""

    def __init__(self, dim: int, grid: tuple[int, int], groups: int = 4, scale: float = 1.0):
        super().__init__()


@pytest.mark.parametrize("options, message", [({"groups": 2.5}, "groups = 2.5 must be a whole number"),
                                               ({"groups": "4"}, "groups = '4' must be a whole number"),
                                               ({"scale": math.nan}, "scale = nan is not a finite number"),
                                               ({"scale": "x"}, "scale = 'x' must be a number")])
def test_an_undeclared_option_is_checked_by_its_type_hint(options, message, monkeypatch):
    monkeypatch.setitem(blocks.SPATIAL, "shift", Shift)
    with pytest.raises(blocks.ConfigError, match=message):
        blocks.create("tiny", spatial="shift", spatial_options={"shift": options})
    blocks.create("tiny", spatial="shift", spatial_options={"shift": {"groups": 3, "scale": 0.5}})


@pytest.mark.parametrize("argv", [["--model-opt", "norm=" + "x" * 10**6, *SYN], ["--spatial", "s" * 10**6, *SYN],
                                  ["--preset", "p" * 10**6, *SYN], ["--model-opt", "k" * 10**6 + "=1", *SYN],
                                  ["--model-opt", "dims=[" + "1" * 5000 + "]", *SYN],
                                  ["--model-opt", "depths=" + "[" * 10**5, *SYN]])
def test_a_long_value_is_shortened_in_the_message(argv, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    err = assert_refused(argv, r"\.\.\. \([\d,]+ characters\)", capsys)
    assert len(err) < 2_000


# -- damaged data files -----------------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape) + \
        array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n_train: int = 60, n_test: int = 20) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for (images, labels), n in zip(idx.IDX_FILES.values(), (n_train, n_test)):
        (folder / images).write_bytes(gzip.compress(idx_bytes(rng.integers(0, 256, (n, 28, 28)))))
        (folder / labels).write_bytes(gzip.compress(idx_bytes(np.arange(n) % 10)))
    return folder


def flip_middle(raw: bytes) -> bytes:
    """A gzip stream whose compressed bytes are damaged in the middle: it fails partway through."""
    middle = len(raw) // 2
    return raw[:middle] + bytes(b ^ 0xFF for b in raw[middle:middle + 64]) + raw[middle + 64:]


IMAGES, LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
IDX_DAMAGE = {  # file -> (new content from the valid raw IDX bytes, message)
    "wrong magic": (IMAGES, lambda raw: gzip.compress(b"\0\0\x09" + raw[3:]), r"is not an IDX file of unsigned bytes with 3 dimensions: it starts with 00000903"),
    "wrong number of dims": (IMAGES, lambda raw: gzip.compress(idx_bytes(np.zeros((60, 784)))), r"starts with 00000802, not 00000803"),
    "labels with image dims": (LABELS, lambda raw: gzip.compress(idx_bytes(np.zeros((60, 28, 28)))), r"labels-idx1-ubyte.gz is not an IDX file .* 1 dimensions"),
    "images of another size": (IMAGES, lambda raw: gzip.compress(idx_bytes(np.zeros((60, 32, 32)))), r"holds items of shape \(32, 32\); valid: \(28, 28\)"),
    "truncated body": (IMAGES, lambda raw: gzip.compress(raw[:-100]), r"is truncated or corrupt: its header says \(60, 28, 28\), 47,040 bytes, and it holds 46,940"),
    "longer than its header": (IMAGES, lambda raw: gzip.compress(raw + b"\0" * 10), r"is truncated or corrupt: .* it holds more"),
    "header cut short": (IMAGES, lambda raw: gzip.compress(raw[:9]), r"truncated inside its header"),
    "empty file": (IMAGES, lambda raw: b"", r"it starts with nothing"),
    "a huge claimed size": (IMAGES, lambda raw: gzip.compress(raw[:4] + (2**32 - 1).to_bytes(4, "big") + raw[8:]),
                            r"claims 4,294,967,295 items; valid: at most 1,000,000"),
    "gzip failing mid-stream": (IMAGES, lambda raw: flip_middle(gzip.compress(raw)), r"cannot read .*train-images-idx3-ubyte.gz"),
    "gzip cut short": (IMAGES, lambda raw: gzip.compress(raw)[:-200], r"cannot read .*train-images-idx3-ubyte.gz: Compressed file ended"),
    "gzip checksum wrong": (IMAGES, lambda raw: gzip.compress(raw)[:-8] + b"\0" * 4 + gzip.compress(raw)[-4:], r"cannot read .*CRC check failed"),
    "label 11 of 10 classes": (LABELS, lambda raw: gzip.compress(raw[:-1] + b"\x0b"), r"train-labels-idx1-ubyte.gz holds label 11, outside the 10 classes 0..9"),
    "counts disagree": (LABELS, lambda raw: gzip.compress(idx_bytes(np.arange(59) % 10)), r"holds 60 images but .*train-labels-idx1-ubyte.gz holds 59 labels"),
}


@pytest.mark.parametrize("damage", IDX_DAMAGE)
def test_damaged_idx_file_exits_2_naming_it(damage, tmp_path, capsys):
    folder = write_mnist(tmp_path / "mnist")
    name, make, message = IDX_DAMAGE[damage]
    target = folder / name
    target.write_bytes(make(gzip.decompress(target.read_bytes())))
    err = assert_refused(["--data-dir", str(folder), "--epochs", "1", "--out", str(tmp_path / "runs")],
                         message, capsys)
    assert str(target) in err and len(err.strip().splitlines()) == 1 and not list(tmp_path.glob("runs/*/*"))


CIFAR_FILES = [f for f, _ in tv.CIFAR10.train_list + tv.CIFAR10.test_list]


def batch_pickle(n: int = 4, labels=None, data=None) -> bytes:
    data = np.random.default_rng(0).integers(0, 256, (n, 3072), dtype=np.uint8) if data is None else data
    return pickle.dumps({"batch_label": "x", "labels": list(range(n)) if labels is None else labels, "data": data,
                         "filenames": [f"{i}.png" for i in range(n)]}, protocol=4)


class RunsCode:
    """Pickled, a call of os.mkdir(marker) when it is loaded: what a batch must never do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def write_cifar(root: Path, monkeypatch, **replace) -> Path:
    """root/cifar-10-batches-py with six small batches; their md5s stand in for upstream's."""
    folder = root / tv.CIFAR10.base_folder
    folder.mkdir(parents=True)
    for name in CIFAR_FILES:
        (folder / name).write_bytes(replace.get(name, batch_pickle()))
    md5 = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in CIFAR_FILES}
    monkeypatch.setattr(tv.CIFAR10, "train_list", [[f, md5[f]] for f, _ in tv.CIFAR10.train_list])
    monkeypatch.setattr(tv.CIFAR10, "test_list", [[f, md5[f]] for f, _ in tv.CIFAR10.test_list])
    return root


def test_a_cifar_folder_of_valid_batches_loads(tmp_path, monkeypatch):
    ds = data.load("cifar10", str(write_cifar(tmp_path, monkeypatch)), download=False)
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32) and ds.num_classes == 10
    assert ds.train_y.tolist()[:4] == [0, 1, 2, 3]


CIFAR_DAMAGE = {
    "a pickle that runs code": (lambda marker: pickle.dumps({"data": RunsCode(marker)}), r"names 'posix.mkdir', which a CIFAR batch does not hold"),
    "not a pickle": (lambda marker: b"garbage" * 10, r"cannot read .*data_batch_1: \w+"),
    "a cut pickle": (lambda marker: batch_pickle()[:100], r"cannot read .*data_batch_1"),
    "images of another size": (lambda marker: batch_pickle(data=np.zeros((4, 100), np.uint8)), r"data_batch_1 is not a CIFAR batch: its 'data' must be uint8 images of 3072 bytes"),
    "images as floats": (lambda marker: batch_pickle(data=np.zeros((4, 3072))), r"is not a CIFAR batch: its 'data'"),
    "not a dict": (lambda marker: pickle.dumps([1, 2, 3]), r"is not a CIFAR batch"),
    "label 10 of 10 classes": (lambda marker: batch_pickle(labels=[0, 1, 2, 10]), r"its 'labels' must list 4 labels, one per image, each in 0..9"),
    "labels that disagree with the images": (lambda marker: batch_pickle(labels=[0, 1]), r"its 'labels' must list 4 labels"),
}


@pytest.mark.parametrize("damage", CIFAR_DAMAGE)
def test_damaged_cifar_batch_exits_2_naming_it_and_runs_no_code(damage, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make, message = CIFAR_DAMAGE[damage]
    marker = tmp_path / "code-ran"
    root = write_cifar(tmp_path / "data", monkeypatch, data_batch_1=make(marker))
    err = assert_refused(["--dataset", "cifar10", "--data-dir", str(root), "--epochs", "1"], message, capsys)
    assert "data_batch_1" in err and not marker.exists()


def test_cifar_batch_of_another_md5_is_refused_before_it_is_unpickled(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_cifar(tmp_path / "data", monkeypatch)
    marker = tmp_path / "code-ran"
    (root / tv.CIFAR10.base_folder / "test_batch").write_bytes(pickle.dumps(RunsCode(marker)))
    assert_refused(["--dataset", "cifar10", "--data-dir", str(root), "--epochs", "1"],
                   r"test_batch is missing or corrupt: its md5 is not upstream's", capsys)
    assert not marker.exists()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height and holds no pixels: PIL opens it (reads its size) without decoding."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + end


def write_images(root: Path, first: bytes | None = None) -> Path:
    """root/{train,val}/{a,b}/*.png of 8 px; `first` replaces the first training image's bytes."""
    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(root / split / label / f"{i}.png")
    if first is not None:
        (root / "train" / "a" / "0.png").write_bytes(first)
    return root


IMAGE_DAMAGE = {
    "not an image": (b"this is text", r"cannot read .*train/a/0.png: cannot identify image file"),
    "a decompression bomb": (png_header(100_000, 100_000), r"cannot read .*0.png: Image size \(10000000000 pixels\) exceeds"),
    "above PIL's pixel limit": (png_header(10_000, 10_000), r"cannot read .*0.png: Image size \(100000000 pixels\) exceeds limit of 89478485"),
    "larger than a model can take": (png_header(9_000, 9_000), r"the first training image, .*0.png, is 9000 px on its shorter side; valid: images from 1 to 8,192 px, or pass --img-size"),
}


@pytest.mark.parametrize("damage", IMAGE_DAMAGE)
def test_damaged_image_folder_exits_2_naming_the_file(damage, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, message = IMAGE_DAMAGE[damage]
    root = write_images(tmp_path / "images", first)
    assert_refused(["--dataset", f"imagefolder:{root}", "--spatial", "conv", "--epochs", "1"], message, capsys)


def test_an_image_that_is_a_pipe_is_refused_not_waited_for(tmp_path, cli):
    root = write_images(tmp_path / "images")
    os.remove(root / "train" / "a" / "0.png")
    os.mkfifo(root / "train" / "a" / "0.png")
    out = cli("--dataset", f"imagefolder:{root}", "--spatial", "conv", "--epochs", "1", "--out",
              str(tmp_path / "runs"), cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "0.png is not a regular file" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("seeds, message", [("[0, 4294967296]", r"\[study\].seeds: seed = 4294967296 is out of range"),
                                            ("[-1]", r"\[study\].seeds: seed = -1 is out of range")])
def test_study_seeds_are_checked_before_a_worker_creates_a_trial(seeds, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    file = tmp_path / "bad.toml"
    file.write_text(STUDY.format(run="epochs = 1", arms='spatial = ["conv"]').replace("seeds = [0]", f"seeds = {seeds}"))
    assert_refused(["study", str(file), "--storage", f"sqlite:///{tmp_path}/s.db"], message, capsys)
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("option", ["dims=[65536]", "dims=[16384]"])
def test_profile_refuses_a_model_too_large_before_it_builds_or_measures_it(option, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("ablate.commands.profile.matmul_flops", lambda *a: pytest.fail("measured before checking"))
    assert_refused(["profile", "--spatial", "attention,conv", "--model-opt", option, "--csv", str(tmp_path / "p.csv")],
                   r"needs .* GiB .* more than the .* GiB free", capsys)
    assert not (tmp_path / "p.csv").exists()
