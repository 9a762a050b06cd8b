"""Datasets held in memory as uint8 tensors (image folders stream from disk: stream.py), nested stratified
subsets, fixed pixel shuffles, and batched augmentation on tensors (no per-image Python)."""
import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets as tv

from . import distributed
from .errors import DataError

IDX_FILES = {  # split -> (images, labels), the file names every MNIST-format mirror uses
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_SOURCES = {"fashion-mnist": tv.FashionMNIST, "mnist": tv.MNIST}  # upstream mirrors and md5s
CIFAR = {"cifar10": tv.CIFAR10, "cifar100": tv.CIFAR100}
DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder:<path>", "synthetic")
DEBIAN_DIR = Path("/usr/share/datasets")


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of the training images, in [0, 1] units, shaped (1, C, 1, 1)."""
        x = self.train_x.float().div_(255)
        return x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1), x.std(dim=(0, 2, 3)).view(1, -1, 1, 1)


def search_dirs(name: str, data_dir: str | None) -> list[Path]:
    """Where a dataset is looked for, in order: --data-dir, $ABLATE_DATA, ~/.cache/ablate, the Debian package."""
    roots = [Path(d) for d in (data_dir, os.environ.get("ABLATE_DATA")) if d]
    roots.append(cache_dir())
    dirs = [d for root in roots for d in (root / name, root)]
    return dirs + [DEBIAN_DIR / name]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ablate"


def load(name: str, data_dir: str | None = None, download: bool = True, img_size: int | None = None):
    """A Dataset in memory, or for `imagefolder:<path>` a stream.FolderDataset read from disk batch by batch."""
    if name.startswith("imagefolder:"):
        from .stream import load_folder
        return load_folder(Path(name.split(":", 1)[1]), img_size)
    if img_size is not None:
        raise DataError(f"--img-size applies to imagefolder:<path> datasets; {name} images keep their size")
    if name in IDX_SOURCES:
        return load_idx(name, data_dir, download)
    if name in CIFAR:
        return load_cifar(name, data_dir, download)
    if name == "synthetic":
        return synthetic()
    raise DataError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")


def load_idx(name: str, data_dir: str | None, download: bool) -> Dataset:
    wanted = [f for pair in IDX_FILES.values() for f in pair]
    folder = next((d for d in search_dirs(name, data_dir) if all((d / f).is_file() for f in wanted)), None)
    if folder is None:
        if not download:
            raise DataError(f"{name} not found in {', '.join(map(str, search_dirs(name, data_dir)))}")
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


def load_cifar(name: str, data_dir: str | None, download: bool) -> Dataset:
    cls = CIFAR[name]
    root = next((d for d in search_dirs(name, data_dir) if (d / cls.base_folder).is_dir()), None)
    if root is None and not download:
        raise DataError(f"{name} not found in {', '.join(map(str, search_dirs(name, data_dir)))}")
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


def synthetic(n_train: int = 2000, n_test: int = 500, shape=(1, 28, 28), num_classes: int = 10) -> Dataset:
    """Learnable fake data for tests: each class is a fixed random template plus noise."""
    g = torch.Generator().manual_seed(0)
    templates = torch.rand(num_classes, *shape, generator=g)

    def draw(n):
        y = torch.arange(n) % num_classes
        x = 0.6 * templates[y] + 0.4 * torch.rand(n, *shape, generator=g)
        return (x * 255).to(torch.uint8), y

    (train_x, train_y), (test_x, test_y) = draw(n_train), draw(n_test)
    return Dataset("synthetic", train_x, train_y, test_x, test_y, num_classes)


def nested_subset(labels: torch.Tensor, size: int | None, seed: int) -> torch.Tensor:
    """Indices of a stratified subset of `size` examples; for one seed, smaller subsets nest inside larger ones.

    Each class is shuffled; every example gets the key (rank in its class) / (class count), and the first
    `size` examples by that key are taken, so any prefix holds the classes in their proportions.
    """
    n = len(labels)
    if size is None or size == n:
        return torch.arange(n)
    if not 0 < size <= n:
        raise DataError(f"--train-size {size} is outside 1..{n}, the size of the training set")
    g = torch.Generator().manual_seed(seed)
    keys = torch.empty(n, dtype=torch.float64)
    for c in labels.unique():
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        keys[idx] = (torch.arange(len(idx), dtype=torch.float64) + 0.5) / len(idx)
    order = torch.argsort(keys, stable=True)
    return order[:size].sort().values


def pixel_permutation(mode: str, height: int, width: int, patch: int, seed: int) -> torch.Tensor | None:
    """A fixed permutation of the H*W pixel positions (MLP-Mixer Fig. 4), or None for `none`.

    patch:  one permutation of the patch grid and one of the pixels inside every patch;
    global: one permutation of all pixels. out.flatten(-2) = img.flatten(-2)[..., perm].
    """
    if mode == "none":
        return None
    g = torch.Generator().manual_seed(seed)
    if mode == "global":
        return torch.randperm(height * width, generator=g)
    if mode != "patch":
        raise DataError(f"unknown shuffle {mode!r}; valid: none, patch, global")
    if height % patch or width % patch:
        raise DataError(f"patch shuffle needs the image ({height}x{width}) divisible by the patch size {patch}")
    gh, gw = height // patch, width // patch
    patch_perm = torch.randperm(gh * gw, generator=g)
    inner_perm = torch.randperm(patch * patch, generator=g)
    # pixel index laid out as (patch row, patch col, row in patch, col in patch)
    index = torch.arange(height * width).view(gh, patch, gw, patch).permute(0, 2, 1, 3).reshape(gh * gw, patch * patch)
    index = index[patch_perm][:, inner_perm]  # output patch j takes input patch perm[j], pixels permuted inside
    return index.view(gh, gw, patch, patch).permute(0, 2, 1, 3).reshape(-1)


def apply_permutation(x: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    if perm is None:
        return x
    B, C, H, W = x.shape
    return x.reshape(B, C, H * W)[..., perm].reshape(B, C, H, W)


def augment(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip for a whole batch (B, C, H, W) at once."""
    B, C, H, W = x.shape
    dev = x.device  # the draws come from a CPU generator (saved in checkpoints); the indexing runs where x is
    if pad:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (B, 1), generator=generator).to(dev)
        dx = torch.randint(0, 2 * pad + 1, (B, 1), generator=generator).to(dev)
        rows = (dy + torch.arange(H, device=dev))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx + torch.arange(W, device=dev))[:, None, None, :]  # (B, 1, 1, W)
        x = padded[torch.arange(B, device=dev)[:, None, None, None], torch.arange(C, device=dev)[None, :, None, None],
                   rows, cols]
    if flip:
        mask = (torch.rand(B, generator=generator) < 0.5).to(dev)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


def prepare(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, perm: torch.Tensor | None, pad: int = 0,
            flip: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uint8 batch (B, C, H, W) -> the model's input: in [0, 1], augmented (given a generator), normalized,
    pixel-shuffled. In-memory and streamed datasets share it, so both see the same transform."""
    x = x.float().div_(255)
    if generator is not None:
        x = augment(x, pad, flip, generator)
    return apply_permutation((x - mean) / std, perm)


def epoch_order(n: int, epoch: int, seed: int, train: bool, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's positions for one epoch: a permutation drawn from (seed, epoch) when training, so a resumed
    run sees the same order, sharded over the ranks of a distributed job (distributed.shard)."""
    order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)) if train
             else torch.arange(n))
    return distributed.shard(order, rank, world, even=train)


def augment_generator(seed: int, rank: int = 0) -> torch.Generator:
    """Augmentation randomness, saved in checkpoints; every rank of a distributed job draws its own."""
    return torch.Generator().manual_seed(seed + 1 + 1_000_003 * rank)


class Batches:
    """Minibatches from in-memory tensors: normalize, augment, shuffle pixels, all batched.

    The order of epoch e is a permutation drawn from (seed, e), so a resumed run sees the same order.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, mean: torch.Tensor, std: torch.Tensor,
                 perm: torch.Tensor | None = None, train: bool = False, pad: int = 0, flip: bool = False,
                 seed: int = 0, rank: int = 0, world: int = 1):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.mean, self.std, self.perm = mean, std, perm
        self.train, self.pad, self.flip, self.seed = train, pad, flip, seed
        self.rank, self.world = rank, world
        self.generator = augment_generator(seed, rank)

    def __len__(self) -> int:
        n = distributed.shard_size(len(self.x), self.rank, self.world, even=self.train)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def epoch(self, epoch: int):
        order = epoch_order(len(self.x), epoch, self.seed, self.train, self.rank, self.world)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield prepare(self.x[idx], self.mean, self.std, self.perm, self.pad, self.flip,
                          self.generator if self.train else None), self.y[idx]
