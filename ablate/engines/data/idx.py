"""MNIST-format datasets (IDX files): Fashion-MNIST and MNIST, from a local folder or downloaded from upstream."""
import gzip
import hashlib
import os
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
    arrays = {split: (read_idx(folder / imgs, hint), read_idx(folder / labels, hint))
              for split, (imgs, labels) in IDX_FILES.items()}
    for split, (x, y) in arrays.items():
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{name} {split} files in {folder} disagree: images {tuple(x.shape)}, "
                            f"labels {tuple(y.shape)}; {hint}")
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    return Dataset(name, train_x[:, None], train_y.long(), test_x[:, None], test_y.long(), num_classes=10)


def read_idx(path: Path, hint: str) -> torch.Tensor:
    """Reads a (gzipped) IDX file of unsigned bytes: magic 0x0000 08 <ndim>, then big-endian int32 sizes."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}; {hint}") from None
    if len(raw) < 4 or raw[:3] != b"\0\0\x08":
        raise DataError(f"{path} is not an IDX file of unsigned bytes; {hint}")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated or corrupt: header says {shape}, found {data.size} bytes; {hint}")
    return torch.from_numpy(data.reshape(shape).copy())


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


