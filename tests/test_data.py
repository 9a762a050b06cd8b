"""Data: IDX parsing and download path (on files the test writes), real Fashion-MNIST, subsets, augmentation."""
import functools
import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from ablate.engines import data
from ablate.engines.data import idx, search, subsets, transforms
from ablate.engines.data.memory import Batches
from ablate.engines.data.transforms import Transform
from ablate.foundations.errors import DataError


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(folder: Path, n_train: int = 60, n_test: int = 20) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for (images, labels), n in zip(idx.IDX_FILES.values(), (n_train, n_test)):
        write_idx(folder / images, rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / labels, np.arange(n) % 10)


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No env dir, an empty cache and no Debian package: only what the test provides is found."""
    monkeypatch.delenv("ABLATE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(search, "DEBIAN_DIR", tmp_path / "no-debian")
    return tmp_path


def test_real_fashion_mnist(fashion_dir):
    ds = data.load("fashion-mnist", str(fashion_dir), download=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8
    assert ds.train_y.bincount().tolist() == [6000] * 10
    assert ds.test_y.bincount().tolist() == [1000] * 10


def test_lookup_order(isolated, monkeypatch):
    write_fake_mnist(isolated / "flag", n_train=30)
    write_fake_mnist(isolated / "env" / "fashion-mnist", n_train=40)
    write_fake_mnist(isolated / "cache" / "ablate" / "fashion-mnist", n_train=50)
    monkeypatch.setenv("ABLATE_DATA", str(isolated / "env"))
    assert len(data.load("fashion-mnist", str(isolated / "flag")).train_y) == 30
    assert len(data.load("fashion-mnist").train_y) == 40
    monkeypatch.delenv("ABLATE_DATA")
    assert len(data.load("fashion-mnist").train_y) == 50


@pytest.fixture
def mirror(isolated):
    """A local HTTP mirror on loopback serving IDX files the test writes."""
    folder = isolated / "mirror"
    write_fake_mnist(folder)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_checks_md5_and_caches(isolated, mirror, monkeypatch):
    """The upstream path for real: torchvision's download over HTTP from a mirror, md5 checked."""
    folder, url = mirror
    resources = [(name, hashlib.md5((folder / name).read_bytes()).hexdigest())
                 for pair in idx.IDX_FILES.values() for name in pair]
    monkeypatch.setattr(idx.tv.FashionMNIST, "mirrors", [url])
    monkeypatch.setattr(idx.tv.FashionMNIST, "resources", resources)
    ds = data.load("fashion-mnist")
    assert len(ds.train_y) == 60 and len(ds.test_y) == 20
    assert (isolated / "cache" / "ablate" / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file()


def test_download_with_bad_checksum_leaves_nothing(isolated, mirror, monkeypatch):
    resources = [(name, "0" * 32) for pair in idx.IDX_FILES.values() for name in pair]
    monkeypatch.setattr(idx.tv.FashionMNIST, "mirrors", [mirror[1]])
    monkeypatch.setattr(idx.tv.FashionMNIST, "resources", resources)
    with pytest.raises(DataError, match="md5"):
        data.load("fashion-mnist")
    assert list((isolated / "cache" / "ablate" / "fashion-mnist").iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_file_names_the_file(isolated, damage):
    folder = isolated / "flag"
    write_fake_mnist(folder)
    target = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(target.read_bytes())
    target.write_bytes(gzip.compress(raw[: len(raw) // 2]) if damage == "truncate" else b"not a gzip file")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*(delete it|truncated)"):
        data.load("fashion-mnist", str(folder))


def test_unknown_dataset_lists_valid():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'; valid: fashion-mnist, mnist"):
        data.load("imagenet")


def test_nested_stratified_subsets():
    labels = torch.arange(1000) % 10
    small, large = subsets.nested_subset(labels, 100, seed=3), subsets.nested_subset(labels, 500, seed=3)
    assert set(small.tolist()) <= set(large.tolist())
    assert labels[small].bincount().tolist() == [10] * 10
    assert not torch.equal(small, subsets.nested_subset(labels, 100, seed=4))
    with pytest.raises(DataError, match="outside 1..1000"):
        subsets.nested_subset(labels, 1001, seed=0)


def test_augment_crops_and_flips_per_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    g = torch.Generator().manual_seed(0)
    out = transforms.augment(x.repeat(64, 1, 1, 1), pad=2, flip=True, generator=g)
    assert out.shape == (128, 1, 6, 6)
    distinct = {tuple(o.flatten().tolist()) for o in out[::2]}
    assert len(distinct) > 10  # offsets and flips differ per image
    unpadded = transforms.augment(x, pad=0, flip=False, generator=g)
    assert torch.equal(unpadded, x)


def test_batches_cover_epoch_in_seeded_order():
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 1, 2, 2).contiguous()
    y = torch.arange(100)
    mean, std = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    batches = Batches(x, y, 10, Transform(mean, std), train=True, seed=1)
    first = torch.cat([b for _, b in batches.epoch(0)])
    assert sorted(first.tolist()) == list(range(100))
    assert torch.equal(first, torch.cat([b for _, b in batches.epoch(0)]))
    assert not torch.equal(first, torch.cat([b for _, b in batches.epoch(1)]))


def test_no_two_seeds_share_an_epoch_order_even_past_1000_epochs():
    """Step budgets on small subsets run thousands of epochs: seed 0's epoch 1000 must not be seed 1's epoch 0."""
    orders = {tuple(subsets.epoch_order(100, s, e).tolist()) for s in (0, 1, 2) for e in (0, 1, 999, 1000, 1001, 2000)}
    assert len(orders) == 3 * 6
    first, later = subsets.TrainOrder(1000, 10, seed=0), subsets.TrainOrder(1000, 10, seed=1)
    assert not torch.equal(first.permutation(1000), later.permutation(0))
    assert torch.equal(first.permutation(5), torch.randperm(1000, generator=torch.Generator().manual_seed(5)))
