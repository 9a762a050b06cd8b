"""`imagefolder:<path>` datasets streamed from disk, for image sets larger than memory (ImageNet-style).

Layout (torchvision's ImageFolder): `<path>/train/<class>/<image>` and `<path>/val/<class>/<image>` (or `test/`).
A torch DataLoader's worker processes read each image, convert it to RGB and resize it to a fixed square
(shorter side to the size, centre crop); batches travel to the device as uint8 and get the same batched
augmentation and normalisation there as in-memory datasets (transforms.Transform). Only file names and labels
are held.
"""
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Sampler
from torchvision import datasets as tv
from torchvision.transforms.v2 import functional as TF

from blocks.checks import MAX_IMG_SIZE

from ...foundations import distributed
from ...foundations.errors import DataError
from ...foundations.runtime import usable_cores
from .subsets import TrainOrder, eval_order
from .transforms import Transform, augment_generator

MEAN_STD_SAMPLE = 500  # training images (fixed draw) the normalisation statistics come from
MAX_WORKERS = 8


def default_workers() -> int:
    """Loader processes per rank: this node's cores shared among its ranks, at most MAX_WORKERS."""
    return max(1, min(MAX_WORKERS, usable_cores() // distributed.context().local_world))


def open_image(path: str) -> Image.Image:
    """The image at `path`, its header read; a file that is not a readable image of at most PIL's pixel limit
    (Image.MAX_IMAGE_PIXELS, 89 M: PIL only warns up to twice that, and decoding it takes gigabytes in each loader
    process) is a DataError naming it."""
    if not Path(path).is_file():  # a pipe or a device named like an image would block or never end
        raise DataError(f"imagefolder: {path} is not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"imagefolder: cannot read {path}: {e}") from None  # "cannot identify image" is an OSError


def read_image(path: str, size: int) -> torch.Tensor:
    """(3, size, size) uint8: RGB, shorter side resized to `size` (antialiased), centre-cropped to a square."""
    with open_image(path) as img:
        try:
            x = TF.pil_to_tensor(img.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # decoding: a truncated file, a bomb
            raise DataError(f"imagefolder: cannot read {path}: {e}") from None
    if tuple(x.shape[1:]) != (size, size):
        x = TF.center_crop(TF.resize(x, size, antialias=True), [size, size])
    return x


class FolderSplit(torch.utils.data.Dataset):
    """One split of an image folder: file names and labels; an image is read from disk when indexed."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], size: int):
        self.samples, self.classes, self.size = samples, classes, size
        self.targets = torch.tensor([label for _, label in samples])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return read_image(path, self.size), label


@dataclass
class FolderDataset:
    """What the Trainer needs of a dataset (like memory.Dataset), with the images left on disk."""
    name: str
    train: FolderSplit
    test: FolderSplit
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return 3, self.train.size, self.train.size

    @property
    def train_y(self) -> torch.Tensor:
        return self.train.targets

    @property
    def test_y(self) -> torch.Tensor:
        return self.test.targets

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std in [0, 1] units, shaped (1, C, 1, 1), of MEAN_STD_SAMPLE training images drawn
        with a fixed seed: a property of the dataset, and cheap where reading the whole set would take an epoch."""
        pick = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(0))[:MEAN_STD_SAMPLE]
        sums, squares, pixels = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
        for x, _ in read_batches(DataLoader(self.train, batch_size=64, sampler=pick.tolist(),
                                            num_workers=default_workers())):
            x = x.double().div_(255)
            sums, squares = sums + x.sum((0, 2, 3)), squares + x.square().sum((0, 2, 3))
            pixels += x[:, 0].numel()
        mean = sums / pixels
        std = (squares / pixels - mean.square()).clamp_min(0).sqrt()
        return mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)

    def eval_batch_size(self, train_batch_size: int) -> int:
        """Evaluation batches as large as training's: each image is read and decoded from disk."""
        return train_batch_size

    def batches(self, split: str, indices: torch.Tensor, batch_size: int, transform: Transform,
                device: torch.device, train: bool = False, seed: int = 0, rank: int = 0, world: int = 1,
                rollover: bool = False) -> "FolderBatches":
        """Minibatches of `split` ("train" or "test") at `indices`, read from disk batch by batch."""
        return FolderBatches(self.train if split == "train" else self.test, indices, batch_size, transform, device,
                             train, seed, rank, world, rollover)


def load_folder(root: Path, img_size: int | None = None) -> FolderDataset:
    """Lists `root/train` and `root/val` (or `root/test`); images are `img_size` px square, default: the shorter
    side of the first training image."""
    splits = [root / "train", next((root / s for s in ("val", "test") if (root / s).is_dir()), root / "val")]
    for split in splits:
        if not split.is_dir():
            raise DataError(f"imagefolder: {split} is not a folder; expected {root}/train/<class>/ and "
                            f"{root}/val/<class>/ (or test/)")
    try:
        train, test = (tv.ImageFolder(str(s)) for s in splits)  # lists the files, reads none
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"imagefolder: {e}") from None
    if train.classes != test.classes:
        raise DataError(f"imagefolder: train classes {train.classes} differ from {splits[1].name} classes "
                        f"{test.classes}")
    if img_size is None:
        first = train.samples[0][0]
        with open_image(first) as img:  # reads the header only
            img_size = min(img.size)
        if not 1 <= img_size <= MAX_IMG_SIZE:
            raise DataError(f"imagefolder: the first training image, {first}, is {img_size} px on its shorter side; "
                            f"valid: images from 1 to {MAX_IMG_SIZE:,} px, or pass --img-size to resize them")
    elif not 1 <= img_size <= MAX_IMG_SIZE:
        raise DataError(f"--img-size {img_size} is out of range; valid: from 1 to {MAX_IMG_SIZE:,}")
    return FolderDataset(f"imagefolder:{root}", FolderSplit(train.samples, train.classes, img_size),
                         FolderSplit(test.samples, test.classes, img_size), num_classes=len(train.classes))


def read_batches(loader: DataLoader):
    """Iterates `loader`; an unreadable image stops it with a DataError naming the file, not a worker traceback."""
    try:
        yield from loader
    except DataError as e:  # from a worker, the message is "Caught DataError in DataLoader worker..." + traceback
        raise DataError(str(e).strip().splitlines()[-1].removeprefix(f"{DataError.__module__}.DataError: ")) from None


class StepSampler(Sampler[list[int]]):
    """A batch sampler over training steps start..stop - 1, each batch in subsets.TrainOrder's order; set `.steps`
    before iterating (the loader's workers may persist)."""

    def __init__(self, indices: torch.Tensor, order: TrainOrder):
        self.indices, self.order, self.steps = indices, order, range(0)

    def __iter__(self):
        return (self.indices[self.order.indices(step)].tolist() for step in self.steps)

    def __len__(self) -> int:
        return len(self.steps)


class FolderBatches:
    """Minibatches of `split[indices]` streamed through a DataLoader, with memory.Batches's interface: `len()`,
    `stream(start, stop)` of training steps and `epoch(e)`, yielding (x, y) on `device`."""

    def __init__(self, split: FolderSplit, indices: torch.Tensor, batch_size: int, transform: Transform,
                 device: torch.device = torch.device("cpu"), train: bool = False, seed: int = 0, rank: int = 0,
                 world: int = 1, rollover: bool = False, workers: int | None = None):
        self.split, self.indices, self.device, self.transform, self.train = split, indices, device, transform, train
        self.generator = augment_generator(seed, rank)
        workers = default_workers() if workers is None else workers
        if train:
            self.order = TrainOrder(len(indices), batch_size, seed, rank, world, rollover)
            self.sampler = StepSampler(indices, self.order)
            options = dict(batch_sampler=self.sampler)
        else:
            options = dict(batch_size=batch_size, sampler=indices[eval_order(len(indices), rank, world)].tolist())
        self.loader = DataLoader(split, num_workers=workers, persistent_workers=workers > 0,
                                 pin_memory=device.type == "cuda", **options)

    def __len__(self) -> int:
        return len(self.order) if self.train else len(self.loader)

    def stream(self, start: int, stop: int):
        self.sampler.steps = range(start, stop)
        return self.batches()

    def epoch(self, epoch: int):
        return self.stream(epoch * len(self), (epoch + 1) * len(self)) if self.train else self.batches()

    def batches(self):
        for x, y in read_batches(self.loader):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield self.transform(x, self.generator if self.train else None), y
