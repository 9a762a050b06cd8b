"""Datasets: a registry of name -> entry (loader, image shape, classes). Small datasets live in memory as uint8
tensors (memory.py), image folders stream from disk (folder.py); both hand out minibatches through
`dataset.batches(...)` with the same batched transforms (transforms.py).

Adding a dataset is one entry in DATASETS: a loader `(data_dir, download) -> memory.Dataset` and its shape.
"""
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from blocks.checks import shown

from ...foundations.errors import DataError
from .cifar import load_cifar
from .folder import load_folder
from .idx import load_idx
from .synthetic import synthetic


@dataclass(frozen=True)
class DatasetEntry:
    load: Callable                          # (data_dir, download) -> Dataset; with takes_path: (path, img_size)
    shape: tuple[int, int, int] | None      # (C, H, W) of its images, known before loading; None: read from files
    num_classes: int | None                 # None: read from the files
    val_size: int = 0                       # validation images held out of the training set by default
    takes_path: bool = False                # named `NAME:<path>`, e.g. imagefolder:/data/imagenet


DATASETS: dict[str, DatasetEntry] = {  # 5,000 validation images: a twelfth of MNIST's 60k, a tenth of CIFAR's 50k
    "fashion-mnist": DatasetEntry(partial(load_idx, "fashion-mnist"), (1, 28, 28), 10, val_size=5000),
    "mnist": DatasetEntry(partial(load_idx, "mnist"), (1, 28, 28), 10, val_size=5000),
    "cifar10": DatasetEntry(partial(load_cifar, "cifar10"), (3, 32, 32), 10, val_size=5000),
    "cifar100": DatasetEntry(partial(load_cifar, "cifar100"), (3, 32, 32), 100, val_size=5000),
    "imagefolder": DatasetEntry(lambda path, img_size: load_folder(Path(path), img_size), None, None, takes_path=True),
    "synthetic": DatasetEntry(lambda data_dir, download: synthetic(), (1, 28, 28), 10),
}


def names() -> list[str]:
    """The names a user types: fashion-mnist, ..., imagefolder:<path>, ..."""
    return [f"{name}:<path>" if entry.takes_path else name for name, entry in DATASETS.items()]


def lookup(name: str) -> tuple[DatasetEntry, str | None]:
    """The registry entry of a dataset name, and its path for `NAME:<path>` names."""
    key, _, path = name.partition(":")
    entry = DATASETS.get(key)
    if entry is None or entry.takes_path != bool(path):
        raise DataError(f"unknown dataset {shown(name)}; valid: {', '.join(names())}")
    return entry, path or None


def val_size(name: str, asked: int | None) -> int:
    """The validation split of a run: the size asked for, else the dataset's default."""
    return lookup(name)[0].val_size if asked is None else asked


def check_img_size(name: str, img_size: int | None) -> DatasetEntry:
    """The entry of dataset `name`, which must take --img-size if one is given (only image folders resize)."""
    entry, _ = lookup(name)
    if img_size is not None and not entry.takes_path:
        raise DataError(f"--img-size applies to imagefolder:<path> datasets; {name} images keep their size")
    return entry


def load(name: str, data_dir: str | None = None, download: bool = True, img_size: int | None = None):
    """The dataset `name`: a memory.Dataset, or for `imagefolder:<path>` a folder.FolderDataset read from disk."""
    entry = check_img_size(name, img_size)
    ds = entry.load(lookup(name)[1], img_size) if entry.takes_path else entry.load(data_dir, download)
    check_loaded(name, entry, ds)
    return ds


def check_loaded(name: str, entry: DatasetEntry, ds) -> None:
    """What a loader returned is what its entry declares (the model was planned for that shape and those classes),
    with every label one of the classes: a wrong one would fail inside the loss, or train on a class never scored."""
    if entry.shape is not None and tuple(ds.shape) != entry.shape:
        raise DataError(f"{name}: the loaded images have shape {tuple(ds.shape)}, not the {entry.shape} its "
                        f"registry entry declares")
    if entry.num_classes is not None and ds.num_classes != entry.num_classes:
        raise DataError(f"{name}: the loaded data has {ds.num_classes} classes, not the {entry.num_classes} its "
                        f"registry entry declares")
    for split, labels in (("train", ds.train_y), ("test", ds.test_y)):
        if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < ds.num_classes):
            raise DataError(f"{name}: {split} labels run from {int(labels.min())} to {int(labels.max())}, outside "
                            f"the {ds.num_classes} classes 0..{ds.num_classes - 1}")
