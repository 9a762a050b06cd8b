"""MNIST-format datasets (IDX files): Fashion-MNIST and MNIST, from a local folder or downloaded from upstream."""
import gzip
import hashlib
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets as tv

from ...foundations.errors import DataError
from ...foundations.runtime import cache_dir
from .search import locate, search_dirs
from .memory import Dataset

IDX_FILES = {  # split -> (images, labels), the file names every MNIST-format mirror uses
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_SOURCES = {"fashion-mnist": tv.FashionMNIST, "mnist": tv.MNIST}  # upstream mirrors and md5s
SIDE, NUM_CLASSES = 28, 10
MAX_ITEMS = 1_000_000  # images in one file (784 MB): EMNIST, the largest MNIST-format set, has 814,255 in all


def load_idx(name: str, data_dir: str | None, download: bool) -> Dataset:
    """The four IDX files of `name` from the first folder that has them (search.locate), else downloaded."""
    wanted = [f for pair in IDX_FILES.values() for f in pair]
    folder = locate(name, data_dir, lambda d: all((d / f).is_file() for f in wanted))
    if folder is None:
        if not download:
            raise DataError(f"{name} not found in {', '.join(map(str, search_dirs(name)))}")
        folder = download_idx(name)
    hint = f"delete it and rerun to download a fresh copy into {cache_dir() / name}" + (
        ", or `apt-get install dataset-fashion-mnist`" if name == "fashion-mnist" else "")
    arrays = {}
    for split, (images, labels) in IDX_FILES.items():
        x, y = read_idx(folder / images, (SIDE, SIDE), hint), read_idx(folder / labels, (), hint)
        if len(x) != len(y):
            raise DataError(f"{folder / images} holds {len(x):,} images but {folder / labels} holds {len(y):,} "
                            f"labels; {hint}")
        if len(y) and y.max() >= NUM_CLASSES:
            raise DataError(f"{folder / labels} holds label {int(y.max())}, outside the {NUM_CLASSES} classes "
                            f"0..{NUM_CLASSES - 1}; {hint}")
        arrays[split] = x, y
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    return Dataset(name, train_x[:, None], train_y.long(), test_x[:, None], test_y.long(), num_classes=NUM_CLASSES)


def read_idx(path: Path, item_shape: tuple[int, ...], hint: str) -> torch.Tensor:
    """Reads a (gzipped) IDX file of unsigned bytes whose items have `item_shape`: magic 0x0000 08 <ndim>, then
    big-endian int32 sizes, then exactly that many bytes. Only as many bytes as a valid header claims are read."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            shape = read_header(f, path, item_shape, hint)
            raw = f.read(math.prod(shape))
            extra = f.read(1)  # also reads a gzip stream to its end, where its checksum is checked
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; zlib.error a corrupt stream
        raise DataError(f"cannot read {path}: {e}; {hint}") from None
    if len(raw) < math.prod(shape) or extra:
        raise DataError(f"{path} is truncated or corrupt: its header says {shape}, {math.prod(shape):,} bytes, and "
                        f"it holds {'more' if extra else f'{len(raw):,}'}; {hint}")
    return torch.from_numpy(np.frombuffer(raw, np.uint8).reshape(shape).copy())


def read_header(f, path: Path, item_shape: tuple[int, ...], hint: str) -> tuple[int, ...]:
    """The shape an IDX header claims, checked against what the file must hold before anything else is read."""
    magic = f.read(4)
    ndim = 1 + len(item_shape)
    if magic != bytes([0, 0, 8, ndim]):
        raise DataError(f"{path} is not an IDX file of unsigned bytes with {ndim} dimensions: it starts with "
                        f"{magic.hex() or 'nothing'}, not {bytes([0, 0, 8, ndim]).hex()}; {hint}")
    sizes = f.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise DataError(f"{path} is truncated inside its header; {hint}")
    shape = tuple(int.from_bytes(sizes[i:i + 4], "big") for i in range(0, 4 * ndim, 4))
    if shape[1:] != item_shape:
        raise DataError(f"{path} holds items of shape {shape[1:]}; valid: {item_shape} (MNIST format); {hint}")
    if shape[0] > MAX_ITEMS:
        raise DataError(f"{path} claims {shape[0]:,} items; valid: at most {MAX_ITEMS:,} in an MNIST-format file; "
                        f"{hint}")
    return shape


def download_idx(name: str) -> Path:
    """Downloads the four IDX files from upstream with their md5 checksums into the cache.

    Files land under a temporary name and are renamed only after the checksum passes,
    so an interrupted or corrupt download never leaves a half-written file behind.
    """
    source = IDX_SOURCES[name]
    folder = cache_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    for filename, md5 in source.resources:
        target = folder / filename
        if target.is_file():
            continue
        tmp = folder / (filename + ".part")
        errors = []
        for mirror in source.mirrors:
            try:
                tv.utils.download_url(mirror + filename, str(folder), filename=tmp.name)
            except Exception as e:  # network errors come in many types; try the next mirror
                errors.append(f"{mirror}: {e}")
                continue
            digest = hashlib.md5(tmp.read_bytes()).hexdigest()
            if digest == md5:
                os.replace(tmp, target)
                break
            errors.append(f"{mirror}: md5 {digest} != {md5}")
            tmp.unlink()
        else:
            raise DataError(f"could not download {filename} for {name} ({'; '.join(errors)}); put the IDX files "
                            f"in {folder} or pass --data-dir" +
                            (" or `apt-get install dataset-fashion-mnist`" if name == "fashion-mnist" else ""))
    return folder


