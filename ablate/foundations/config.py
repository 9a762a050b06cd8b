"""The run config: one dataclass, a comment per field, and the check of every field's type and range."""
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from blocks.checks import check_fields

from .errors import UsageError
from .runtime import DEVICES

SHUFFLES = ("none", "patch", "global")  # MLP-Mixer Fig. 4: no shuffle, patches + pixels within, all pixels
MATCH_METRICS = ("params", "macs")


@dataclass
class RunConfig:
    spatial: str = "mlp"                 # spatial mixer (blocks.SPATIAL)
    channel: str = "mlp"                 # channel mixer (blocks.CHANNEL)
    preset: str = "tiny"                 # backbone preset (blocks.PRESETS)
    model_options: dict = field(default_factory=dict)  # other backbone fields to override, e.g. {"norm": "batch"}
    match: str | None = None             # params | macs: resize the model to match_to's budget (engines.matching)
    match_to: str | None = None          # the reference spatial mixer for `match`
    dataset: str = "fashion-mnist"       # a name in engines.data.DATASETS, or imagefolder:<path>
    img_size: int | None = None          # imagefolder: images resized and centre-cropped to this square; None = first's
    data_dir: str | None = None          # looked at before $ABLATE_DATA, ~/.cache/ablate and the Debian package
    train_size: int | None = None        # stratified, nested subset of the training set; None = all
    epochs: int = 5
    eval_every: int = 1                  # evaluate on the test set every k epochs (and always after the last)
    batch_size: int = 256                # the global batch: under torchrun each of N processes takes batch_size / N
    lr: float = 2e-3                     # peak learning rate after warm-up
    weight_decay: float = 0.05           # AdamW; not on norms, biases, position embeddings, class tokens (timm)
    warmup_epochs: float = 0.5           # linear warm-up, then cosine to 1% of lr, stepped every batch
    label_smoothing: float = 0.1
    augment: bool = False                # random crop (pad 2 at 28 px, 4 at 32 px) + horizontal flip; off by
                                         # default: it costs accuracy in the 5-minute default budget (README)
    shuffle: str = "none"                # none | patch | global: a fixed pixel permutation of train and test
    seed: int = 0                        # model init, data order, subset and shuffle
    device: str = "auto"                 # auto | cpu | cuda
    compile: bool = False                # torch.compile the model (pays off on GPU)
    out: str = "runs"                    # run folders go here

    def key(self) -> str:
        """Identifies the experiment: everything but where and on what it runs."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("device", "out", "data_dir", "compile")}
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


CHOICES = {"shuffle": SHUFFLES, "device": DEVICES, "match": MATCH_METRICS}
RANGES = {
    "lr": (lambda v: v > 0, "> 0"), "weight_decay": (lambda v: v >= 0, ">= 0"),
    "warmup_epochs": (lambda v: v >= 0, ">= 0"), "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "epochs": (lambda v: v > 0, "> 0"), "batch_size": (lambda v: v > 0, "> 0"), "eval_every": (lambda v: v > 0, "> 0"),
    "train_size": (lambda v: v > 0, "> 0"), "img_size": (lambda v: v > 0, "> 0"),
}
MODEL_RESERVED = ("spatial", "channel")  # run options of their own, not model_options


def check(cfg: RunConfig) -> None:
    """Every field's type, choices and range (UsageError naming the field); names that registries know (mixers,
    presets, datasets) are checked where those registries are (engines.training.plan)."""
    check_fields(cfg, RANGES, CHOICES, error=UsageError)
    reserved = [k for k in cfg.model_options if k in MODEL_RESERVED]
    if reserved:
        raise UsageError(f"model_options may not set {', '.join(reserved)}: set them as run options or [arms] axes")
