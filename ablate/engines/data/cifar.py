"""CIFAR-10 and CIFAR-100 from the upstream archive's python batches (torchvision's file lists, md5s and download).

The batches are pickles, which can run code when loaded: each must have its upstream md5, and is read by an
unpickler that builds nothing but dicts, lists, strings, numbers and numpy arrays, then checked for the shape of a
batch (uint8 images of 3 x 32 x 32, one label in range per image).
"""
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets as tv
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from blocks.checks import shown

from ...foundations.errors import DataError
from ...foundations.runtime import cache_dir
from .search import locate, search_dirs
from .memory import Dataset

CIFAR = {"cifar10": (tv.CIFAR10, "labels", 10), "cifar100": (tv.CIFAR100, "fine_labels", 100)}  # labels key, classes
IMAGE = (3, 32, 32)
ARRAY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                 ("numpy", "ndarray"), ("numpy", "dtype")}  # what a pickled numpy array needs (numpy 1 and 2 names)


class BatchUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: any other class or function a file names is an error."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"it names {shown(f'{module}.{name}')}, which a CIFAR batch does not hold")
        return super().find_class(module, name)


def load_cifar(name: str, data_dir: str | None, download: bool) -> Dataset:
    cls, key, classes = CIFAR[name]
    root = locate(name, data_dir, lambda d: (d / cls.base_folder).is_dir())
    if root is None and not download:
        raise DataError(f"{name} not found in {', '.join(map(str, search_dirs(name)))}")
    root = root or cache_dir() / name
    folder = root / cls.base_folder
    if not folder.is_dir():
        try:  # checks the archive's md5 before it unpacks it
            download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
        except (RuntimeError, OSError, EOFError, ValueError, tarfile.TarError) as e:
            raise DataError(f"could not download {name} into {root} ({e}); put the python batches in "
                            f"{folder} or pass --data-dir") from None
    hint = f"delete {folder} and rerun to download it again"
    (train_x, train_y), (test_x, test_y) = (read_batches(folder, files, key, classes, hint)
                                            for files in (cls.train_list, cls.test_list))
    return Dataset(name, train_x, train_y, test_x, test_y, num_classes=classes)


def read_batches(folder: Path, files: list, key: str, classes: int, hint: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (N, 3, 32, 32) uint8 and labels (N,) of the batch files [name, md5] in `folder`, in order."""
    batches = [read_batch(folder / filename, md5, key, classes, hint) for filename, md5 in files]
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def read_batch(path: Path, md5: str, key: str, classes: int, hint: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not check_integrity(str(path), md5):
        raise DataError(f"{path} is missing or corrupt: its md5 is not upstream's {md5}; {hint}")
    try:
        with open(path, "rb") as f:
            batch = BatchUnpickler(f, encoding="latin1").load()  # latin1: the batches were pickled by Python 2
    except Exception as e:  # a damaged pickle fails in many ways: UnpicklingError, EOFError, ValueError, ...
        raise DataError(f"cannot read {path}: {type(e).__name__}: {str(e)[:200]}; {hint}") from None
    images = batch.get("data") if isinstance(batch, dict) else None
    labels = batch.get(key) if isinstance(batch, dict) else None
    pixels = int(np.prod(IMAGE))
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape[1:] == (pixels,)):
        raise DataError(f"{path} is not a CIFAR batch: its 'data' must be uint8 images of {pixels} bytes each; {hint}")
    if not (isinstance(labels, list) and len(labels) == len(images)
            and all(type(v) is int and 0 <= v < classes for v in labels)):
        raise DataError(f"{path} is not a CIFAR batch: its {key!r} must list {len(images):,} labels, one per image, "
                        f"each in 0..{classes - 1}; {hint}")
    return torch.from_numpy(images.reshape(-1, *IMAGE).copy()), torch.tensor(labels, dtype=torch.int64)
