"""CIFAR-10 and CIFAR-100 through torchvision's loader, which checks every batch's md5 and downloads."""
import torch
from torchvision import datasets as tv

from ...foundations.errors import DataError
from ...foundations.runtime import cache_dir
from .search import locate, search_dirs
from .memory import Dataset

CIFAR = {"cifar10": tv.CIFAR10, "cifar100": tv.CIFAR100}


def load_cifar(name: str, data_dir: str | None, download: bool) -> Dataset:
    cls = CIFAR[name]
    root = locate(name, data_dir, lambda d: (d / cls.base_folder).is_dir())
    if root is None and not download:
        raise DataError(f"{name} not found in {', '.join(map(str, search_dirs(name)))}")
    root = root or cache_dir() / name
    try:  # torchvision checks every batch's md5 and downloads when asked
        train, test = (cls(str(root), train=t, download=download and not (root / cls.base_folder).is_dir())
                       for t in (True, False))
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise DataError(f"{name} in {root} is missing or corrupt ({e}); delete {root / cls.base_folder} "
                        f"and rerun to download it again") from None
    as_tensor = lambda d: torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return Dataset(name, as_tensor(train), torch.tensor(train.targets), as_tensor(test), torch.tensor(test.targets),
                   num_classes=len(train.classes))
