"""The run config: one dataclass, a comment per field, and the check of every field's type and range."""
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from blocks.checks import MAX_IMG_SIZE, above, check_fields, shown, whole

from .errors import UsageError
from .runtime import DEVICES, PRECISIONS

RECIPES = {  # each an option of RunConfig (or, under model_options, of the backbone) and its value
    # the 5-minute default job: 5 epochs, no augmentation (it costs accuracy in so short a budget: README)
    "short": {"epochs": 5, "batch_size": 256, "augment": False, "mixup": 0.0, "cutmix": 0.0, "random_erasing": 0.0,
              "ema": 0.0, "model_options": {}},
    # to convergence for studies: 4x the epochs and an average of the weights. Augmentation, Mixup/CutMix, random
    # erasing and drop path stay off: on `tiny` each cost accuracy in 8-epoch pilots (README: time to accuracy)
    "long": {"epochs": 20, "batch_size": 256, "augment": False, "mixup": 0.0, "cutmix": 0.0, "random_erasing": 0.0,
             "ema": 0.999, "model_options": {}},
    # long for a model that overfits in 20 epochs: crop + flip, and twice the steps. `tiny-hier`, seed 0: validation
    # accuracy attention 0.9168, mlp 0.9194, against long's 0.9130, 0.9092 (README: time to accuracy)
    "long-aug": {"epochs": 20, "batch_size": 128, "augment": True, "mixup": 0.0, "cutmix": 0.0, "random_erasing": 0.0,
                 "ema": 0.999, "model_options": {}},
}
SHUFFLES = ("none", "patch", "global")  # MLP-Mixer Fig. 4: no shuffle, patches + pixels within, all pixels
MATCH_METRICS = ("params", "macs")
# numpy's global generator (timm's Mixup draws from it) takes seeds below 2**32, and rank r of a distributed job
# seeds it with seed + 1_000_003 * r: seeds below 2**31 leave room for 2,147 ranks without wrapping onto another
# seed's draws (every torch generator, seeded with up to seed * 1000 + epoch, takes any of them too)
MAX_SEED = 2**31 - 1
MAX_IMAGES = 2**31 - 1         # a training or validation split: the int32 range, more than any dataset holds
MAX_BATCH = 2**24              # 16.8 M images: more than any dataset this toolkit trains on (ImageNet-21k: 14 M)
MAX_EPOCHS = 10**6
MAX_STEPS = 10**9              # 11 days at a millisecond a step
MAX_EVALUATIONS = 10_000       # each rewrites the run record, whose history grows by one entry per evaluation


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
    val_size: int | None = None          # validation images held out of the training set: stratified, the same for
                                         # every seed; None = the dataset's default (5,000 for Fashion-MNIST); 0 = none
    train_size: int | None = None        # stratified subset of the rest, nested across sizes for a seed; None = all
    recipe: str = "short"                # short | long | long-aug: a tested bundle of the (recipe) options below
    epochs: int | None = None            # (recipe) budget in passes over the training set (each drops its last
                                         # partial batch); None: the recipe's, unless `steps` is set
    steps: int | None = None             # budget in optimizer steps, the same at every train size (epochs roll over)
    eval_every: int | None = None        # evaluate every k epochs, or k steps with `steps`; None = every epoch, or
                                         # every steps // 10 steps with `steps` (always after the last step)
    test_each_eval: bool = False         # the test set at every evaluation, not only after the last step (it is at
                                         # every one anyway when there is no validation split)
    batch_size: int | None = None        # (recipe) the global batch: under torchrun each of N processes takes
                                         # batch_size / N
    lr: float = 2e-3                     # the rate warm-up climbs to (timm's cosine, which runs from step 0 on, has
                                         # then already decayed it by cos: 0.976 lr after a 10% warm-up)
    weight_decay: float = 0.05           # AdamW; not on norms, biases, position embeddings, class tokens (timm)
    warmup: float = 0.1                  # linear warm-up over this fraction of the steps, then cosine to 1% of lr
    label_smoothing: float = 0.1         # also of Mixup/CutMix's mixed targets
    augment: bool | None = None          # (recipe) random crop (pad 2 at 28 px, 4 at 32 px) + horizontal flip
    mixup: float | None = None           # (recipe) Mixup's alpha (timm.data.Mixup, batch mode); 0 = off
    cutmix: float | None = None          # (recipe) CutMix's alpha; 0 = off; with both on, each batch takes one
    random_erasing: float | None = None  # (recipe) probability per image (timm's RandomErasing, per-pixel noise)
    ema: float | None = None             # (recipe) decay of the weights' moving average (timm ModelEmaV3, warmed up);
                                         # evaluation uses the average; 0 = off
    shuffle: str = "none"                # none | patch | global: a fixed pixel permutation of train and test
    seed: int = 0                        # model init, data order, subset and shuffle
    device: str = "auto"                 # auto | cpu | cuda
    precision: str = "auto"              # auto | fp32 | bf16 (autocast); auto = bf16 where the device has it in
                                         # hardware (CUDA from Ampere on, CPUs with AVX512-BF16 or AMX), else fp32
    compile: bool = False                # torch.compile the model (pays off on GPU)
    out: str = "runs"                    # run folders go here

    @property
    def budget(self) -> tuple[str, int]:
        """("epochs", E) or ("steps", N): the unit of the budget and its size (of a resolved config)."""
        return ("steps", self.steps) if self.steps is not None else ("epochs", self.epochs)

    def key(self) -> str:
        """Identifies the experiment as it runs (recipe resolved): everything but where and on what it runs, and in
        which precision (`auto` may differ between machines; runs.identity adds the resolved precision where runs are
        reused or resumed)."""
        fields = {k: v for k, v in dataclasses.asdict(resolve(self)).items()
                  if k not in ("device", "out", "data_dir", "compile", "precision")}
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


CHOICES = {"shuffle": SHUFFLES, "device": DEVICES, "precision": PRECISIONS, "match": MATCH_METRICS,
           "recipe": tuple(RECIPES)}
AT_LEAST_0 = (lambda v: v >= 0), ">= 0"
RANGES = {  # every number here must also be finite (blocks.checks)
    "lr": above(0), "weight_decay": AT_LEAST_0,
    "warmup": (lambda v: 0 <= v < 1, "in [0, 1): a fraction of the run"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"), "epochs": whole(1, MAX_EPOCHS),
    "steps": whole(1, MAX_STEPS), "batch_size": whole(1, MAX_BATCH), "eval_every": whole(1, MAX_STEPS),
    "train_size": whole(1, MAX_IMAGES), "val_size": whole(0, MAX_IMAGES), "img_size": whole(1, MAX_IMG_SIZE),
    "mixup": AT_LEAST_0, "cutmix": AT_LEAST_0,
    "random_erasing": (lambda v: 0 <= v <= 1, "in [0, 1]"), "ema": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "seed": whole(0, MAX_SEED),
}
MODEL_RESERVED = ("spatial", "channel")  # run options of their own, not model_options


def resolve(cfg: RunConfig) -> RunConfig:
    """The config with every (recipe) option that was left unset taken from its recipe: what the run trains with,
    and what its record and its key hold. Options set explicitly win; so do model_options over the recipe's."""
    recipe = RECIPES.get(cfg.recipe)
    if recipe is None:
        raise UsageError(f"unknown recipe {shown(cfg.recipe)}; valid: {', '.join(RECIPES)}")
    values = {k: v for k, v in recipe.items() if k != "model_options" and getattr(cfg, k) is None}
    if cfg.steps is not None:
        values.pop("epochs", None)
    return dataclasses.replace(cfg, **values, model_options={**recipe["model_options"], **cfg.model_options})


def check(cfg: RunConfig) -> None:
    """Every field's type, choices and range (UsageError naming the field); names that registries know (mixers,
    presets, datasets) are checked where those registries are (engines.training.plan)."""
    check_fields(cfg, RANGES, CHOICES, error=UsageError)
    if cfg.epochs is not None and cfg.steps is not None:
        raise UsageError(f"epochs = {cfg.epochs} and steps = {cfg.steps}: give the budget in one unit, not both")
    resolved = resolve(cfg)
    if (resolved.mixup or resolved.cutmix) and resolved.batch_size % 2:
        raise UsageError(f"Mixup/CutMix pair each image with another of its batch: batch_size "
                         f"{resolved.batch_size} must be even")
    if resolved.train_size is not None and resolved.batch_size > resolved.train_size:
        raise UsageError(f"train_size {resolved.train_size} is smaller than one batch ({resolved.batch_size}); "
                         f"lower batch_size")
    check_evaluations(resolved)
    reserved = [k for k in cfg.model_options if k in MODEL_RESERVED]
    if reserved:
        raise UsageError(f"model_options may not set {', '.join(reserved)}: set them as run options or [arms] axes")


def check_evaluations(cfg: RunConfig) -> None:
    """A bounded number of evaluations (the trainer lists their steps before the first): every epoch, or ten a run
    with a budget in steps, unless eval_every says otherwise."""
    unit, size = cfg.budget
    if unit == "steps" and cfg.eval_every is None:
        return
    evaluations = size // (cfg.eval_every or 1)
    if evaluations > MAX_EVALUATIONS:
        raise UsageError(f"{unit} = {size:,} with eval_every = {cfg.eval_every or 1:,} makes {evaluations:,} "
                         f"evaluations; valid: at most {MAX_EVALUATIONS:,} (each rewrites the run record): raise "
                         f"eval_every to {-(-size // MAX_EVALUATIONS):,} or more")
