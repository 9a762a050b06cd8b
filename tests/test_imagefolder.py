"""`imagefolder:<path>` datasets stream from disk: a small folder of generated PNGs, end to end and piece by piece."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ablate.engines import data
from ablate.engines.data import folder as stream
from ablate.engines.data.memory import Batches
from ablate.engines.data.transforms import Transform
from ablate.foundations.errors import DataError

COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}  # one class each


def write_folder(root: Path, train: int = 20, val: int = 10, size=(32, 32), seed: int = 0) -> Path:
    """root/{train,val}/<class>/*.png: the class's colour plus noise, so a model can learn it and not trivially."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 60, (size[1], size[0], 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_folder(tmp_path / "images")


def test_trains_from_a_folder_via_cli(cli, folder, tmp_path):
    out = cli("--dataset", f"imagefolder:{folder}", "--spatial", "conv", "--epochs", "2", "--batch-size", "10",
              "--device", "cpu", "--out", str(tmp_path / "runs"), "--json")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["train_size"] == 60 and record["test_size"] == 30
    assert record["config"]["model"]["in_chans"] == 3 and record["config"]["model"]["img_size"] == 32
    assert record["test_acc"] > 0.6  # chance is 1/3


def test_the_dataset_holds_names_not_images(folder):
    ds = data.load(f"imagefolder:{folder}")
    assert isinstance(ds, stream.FolderDataset) and ds.shape == (3, 32, 32) and ds.num_classes == 3
    for split in (ds.train, ds.test):
        tensors = [v for v in vars(split).values() if isinstance(v, torch.Tensor)]
        assert [t.shape for t in tensors] == [(len(split),)]  # the labels, nothing image-sized
        assert all(isinstance(path, str) for path, _ in split.samples)


def test_every_epoch_reads_the_disk(folder):
    """What an epoch yields is what is on disk when it runs, read through the loader's persistent workers."""
    ds = data.load(f"imagefolder:{folder}")
    zero, one = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    batches = stream.FolderBatches(ds.train, torch.arange(len(ds.train)), 12, Transform(zero, one), train=True,
                                   workers=2)
    assert len(batches) == 5
    first = torch.cat([x for x, _ in batches.epoch(0)])
    assert first.std() > 0.1  # noisy colours
    for path, _ in ds.train.samples:
        Image.new("RGB", (32, 32), (0, 0, 0)).save(path)
    second = torch.cat([x for x, _ in batches.epoch(1)])
    assert second.shape == first.shape and second.abs().max() == 0


def test_order_matches_in_memory_batches(folder):
    """The same (seed, epoch) order and rank sharding as memory.Batches, so both kinds of data train alike."""
    ds = data.load(f"imagefolder:{folder}")
    zero, one = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    subset = torch.arange(0, 60, 2)  # a subset: positions in it map back to file indices
    for rank in (0, 1):
        streamed = stream.FolderBatches(ds.train, subset, 5, Transform(zero, one), train=True, seed=4, rank=rank,
                                        world=2, workers=0)
        memory = Batches(torch.zeros(30, 3, 1, 1, dtype=torch.uint8), ds.train_y[subset], 5, Transform(zero, one),
                         train=True, seed=4, rank=rank, world=2)
        assert len(streamed) == len(memory) == 3
        for epoch in (0, 1):
            got = [y.tolist() for _, y in streamed.epoch(epoch)]
            assert got == [y.tolist() for _, y in memory.epoch(epoch)]


def test_mean_std_from_the_images(folder):
    ds = data.load(f"imagefolder:{folder}")
    mean, std = ds.mean_std()
    pixels = torch.stack([ds.train[i][0] for i in range(len(ds.train))]).double() / 255  # 60 < the sample size
    assert torch.allclose(mean.flatten().double(), pixels.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(std.flatten().double(), pixels.std((0, 2, 3)), atol=1e-3)


def test_img_size_resizes_and_crops_to_a_square(tmp_path):
    root = write_folder(tmp_path / "wide", train=2, val=1, size=(48, 30))
    ds = data.load(f"imagefolder:{root}", img_size=20)
    x, _ = ds.train[0]
    assert ds.shape == (3, 20, 20) and x.shape == (3, 20, 20) and x.dtype == torch.uint8
    assert data.load(f"imagefolder:{root}").shape == (3, 30, 30)  # default: the first image's shorter side
    with pytest.raises(DataError, match="--img-size applies to imagefolder"):
        data.load("synthetic", img_size=20)


def test_corrupt_image_names_the_file(cli, folder, tmp_path):
    bad = folder / "train" / "green" / "3.png"
    bad.write_bytes(b"not a png")
    out = cli("--dataset", f"imagefolder:{folder}", "--epochs", "1", "--batch-size", "10", "--device", "cpu",
              "--out", str(tmp_path / "runs"))
    assert out.returncode == 2
    assert f"cannot read {bad}" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_missing_split_says_the_layout(tmp_path):
    (tmp_path / "only" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="val is not a folder; expected .*/train/<class>/ and .*/val/<class>/"):
        data.load(f"imagefolder:{tmp_path / 'only'}")


@pytest.mark.slow
def test_torchrun_streams_each_rank_its_shard(cli, folder, tmp_path):
    """2 ranks reading the folder through their own loaders take the steps one process takes. The patch stem has
    no BatchNorm: on CPU, BatchNorm normalises over each rank's share of the batch (SyncBatchNorm is GPU-only)."""
    from test_distributed import torchrun
    args = ["--dataset", f"imagefolder:{folder}", "--spatial", "conv", "--model-opt", "stem=patch", "--epochs", "2",
            "--batch-size", "10", "--device", "cpu", "--json"]
    single = cli(*args, "--out", str(tmp_path / "one"))
    ddp = torchrun(*args, "--out", str(tmp_path / "ddp"))
    assert single.returncode == 0 and ddp.returncode == 0, ddp.stderr
    one, two = json.loads(single.stdout), json.loads(ddp.stdout)
    assert two["world_size"] == 2 and two["train_size"] == one["train_size"] == 60
    for a, b in zip(one["history"], two["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["test_acc"] == a["test_acc"]
