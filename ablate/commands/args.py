"""Argument helpers every command shares: value parsers and the model and run flags."""
import argparse
import dataclasses
import json

import blocks
from blocks.checks import shown

from ..engines import data
from ..foundations.config import MATCH_METRICS, RECIPES, SHUFFLES, RunConfig
from ..foundations.parsing import non_negative_int, positive_int
from ..foundations.runtime import DEVICES, PRECISIONS


def key_value(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE parsed as JSON when it is JSON (numbers, true, lists), else kept as a string; a value
    that starts like JSON ([, {, ") but does not parse is an error, not a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {shown(text)}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError as e:
        if value.lstrip().startswith(("[", "{", '"')):
            raise argparse.ArgumentTypeError(f"{shown(key)}: malformed JSON value {shown(value)} ({e.msg} at "
                                             f"character {e.pos})") from None
        return key, value
    except (ValueError, RecursionError) as e:  # a number of over 4,300 digits; lists nested too deep
        raise argparse.ArgumentTypeError(f"{shown(key)}: cannot read the value {shown(value)}: {e}") from None


def add_model_args(p: argparse.ArgumentParser, many: bool) -> None:
    """The model slots: one name each for `run`, comma-separated lists for `profile`."""
    suffix = " (comma-separated to compare several)" if many else ""
    p.add_argument("--spatial", default="mlp", help=f"spatial mixer: {', '.join(blocks.SPATIAL)}{suffix}")
    p.add_argument("--channel", default="mlp", help=f"channel mixer: {', '.join(blocks.CHANNEL)}{suffix}")
    p.add_argument("--preset", default="tiny", help=f"backbone preset (see `ablate list`){suffix}")
    p.add_argument("--model-opt", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="override a backbone option, e.g. norm=batch, pos_embed=sincos, depths=[4] (repeatable)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    add_model_args(p, many=False)
    p.add_argument("--match", choices=MATCH_METRICS, default=None,
                   help="resize the model (width, then channel-MLP ratio) to --match-to's params or MACs")
    p.add_argument("--match-to", default=None, metavar="SPATIAL", help="the spatial mixer whose budget --match hits")
    p.add_argument("--dataset", default=d.dataset, help=f"one of {', '.join(data.names())}")
    p.add_argument("--data-dir", default=None, help="folder to look in first for the dataset files")
    p.add_argument("--img-size", type=positive_int, default=None,
                   help="imagefolder datasets: resize and centre-crop images to this square (default: the first's)")
    p.add_argument("--val-size", type=non_negative_int, default=None,
                   help="validation images held out of the training set, stratified, the same for every seed "
                        "(default: the dataset's, 5,000 for Fashion-MNIST; 0 = none)")
    p.add_argument("--train-size", type=positive_int, default=None,
                   help="stratified subset of the rest of the training set (nested across sizes for one seed)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=positive_int, default=None,
                        help="budget in passes over the training set (default: the recipe's, "
                             + ", ".join(f"{k} {v['epochs']}" for k, v in RECIPES.items()) + ")")
    budget.add_argument("--steps", type=positive_int, default=None,
                        help="budget in optimizer steps, the same at every --train-size (epochs roll over)")
    p.add_argument("--eval-every", type=positive_int, default=None,
                   help="evaluate on validation and test every k epochs, or k steps with --steps (default: every "
                        "epoch, or 10 times a run; always after the last step)")
    p.add_argument("--test-each-eval", action="store_true",
                   help="evaluate the test set at every evaluation too (default: validation at every evaluation, "
                        "test after the last step; with no validation split, test at every evaluation)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="the global batch (default: the recipe's)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW, warm-up + cosine)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup", type=float, default=d.warmup,
                   help="linear warm-up over this fraction of the run's steps, then cosine (the same shape at every "
                        "budget)")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--recipe", choices=RECIPES, default=d.recipe,
                   help="a tested bundle of training options (epochs, batch size, augmentation, Mixup/CutMix, random "
                        "erasing, EMA, drop path); the flags below override its parts: "
                        + "; ".join(f"{name}: {recipe_text(name)}" for name in RECIPES))
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop + horizontal flip, batched (default: the recipe's)")
    p.add_argument("--mixup", type=float, default=None, metavar="ALPHA", help="Mixup alpha, 0 = off (timm, batched)")
    p.add_argument("--cutmix", type=float, default=None, metavar="ALPHA", help="CutMix alpha, 0 = off (timm, batched)")
    p.add_argument("--random-erasing", type=float, default=None, metavar="P",
                   help="random erasing probability per image (timm's, on the device)")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="evaluate an exponential moving average of the weights with this decay (timm ModelEmaV3), "
                        "0 = off")
    p.add_argument("--shuffle", choices=SHUFFLES, default=d.shuffle,
                   help="fixed pixel permutation of train and test images (MLP-Mixer Fig. 4)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=DEVICES, default=d.device)
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="fp32, or bf16 autocast; auto = bf16 where the device has it in hardware (CUDA from Ampere "
                        "on, CPUs with AVX512-BF16 or AMX), else fp32; the record says which ran")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--out", default=d.out, help="folder for run folders (record.json + checkpoint.pt)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue the newest unfinished run of this config and precision under --out, or RUN_DIR")
    p.add_argument("--json", action="store_true", help="print the run record as one JSON document on stdout")


def recipe_text(name: str) -> str:
    recipe = RECIPES[name]
    parts = [f"{k}={v}" for k, v in recipe.items() if k != "model_options"]
    return " ".join(parts + [f"{k}={v}" for k, v in recipe["model_options"].items()])


def run_config(args: argparse.Namespace) -> RunConfig:
    names = {f.name for f in dataclasses.fields(RunConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return RunConfig(**values, model_options=dict(args.model_opt))
