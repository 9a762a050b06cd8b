"""`python -m ablate [run|profile|study|report|list] ...`; exit 0 ok, 2 bad input, 1 failed run."""
import argparse
import dataclasses
import json
import sys

import blocks

from . import data, distributed, train
from .errors import RunFailed, UsageError

COMMANDS = ("run", "profile", "study", "report", "list")


def key_value(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE parsed as JSON when it is JSON (numbers, true, lists), else kept as a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def add_model_args(p: argparse.ArgumentParser, many: bool) -> None:
    """The model slots: one name each for `run`, comma-separated lists for `profile`."""
    suffix = " (comma-separated to compare several)" if many else ""
    p.add_argument("--spatial", default="mlp", help=f"spatial mixer: {', '.join(blocks.SPATIAL)}{suffix}")
    p.add_argument("--channel", default="mlp", help=f"channel mixer: {', '.join(blocks.CHANNEL)}{suffix}")
    p.add_argument("--preset", default="tiny", help=f"backbone preset (see `ablate list`){suffix}")
    p.add_argument("--model-opt", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="override a backbone option, e.g. norm=batch, pos_embed=sincos, depths=[4] (repeatable)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    d = train.RunConfig()
    add_model_args(p, many=False)
    p.add_argument("--match", choices=("params", "macs"), default=None,
                   help="resize the model (width, then channel-MLP ratio) to --match-to's params or MACs")
    p.add_argument("--match-to", default=None, metavar="SPATIAL", help="the spatial mixer whose budget --match hits")
    p.add_argument("--dataset", default=d.dataset, help=f"one of {', '.join(data.DATASETS)}")
    p.add_argument("--data-dir", default=None, help="folder to look in first for the dataset files")
    p.add_argument("--img-size", type=positive_int, default=None,
                   help="imagefolder datasets: resize and centre-crop images to this square (default: the first's)")
    p.add_argument("--train-size", type=positive_int, default=None,
                   help="stratified subset of the training set (nested across sizes for one seed)")
    p.add_argument("--epochs", type=positive_int, default=d.epochs)
    p.add_argument("--eval-every", type=positive_int, default=d.eval_every,
                   help="evaluate on the test set every k epochs (always after the last)")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW, warm-up + cosine)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=d.augment,
                   help="random crop + horizontal flip, batched (pays off in longer schedules)")
    p.add_argument("--shuffle", choices=("none", "patch", "global"), default=d.shuffle,
                   help="fixed pixel permutation of train and test images (MLP-Mixer Fig. 4)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--out", default=d.out, help="folder for run folders (record.json + checkpoint.pt)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue the newest unfinished run of this config under --out, or RUN_DIR")
    p.add_argument("--json", action="store_true", help="print the run record as one JSON document on stdout")


def run_config(args: argparse.Namespace) -> train.RunConfig:
    names = {f.name for f in dataclasses.fields(train.RunConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return train.RunConfig(**values, model_options=dict(args.model_opt))


def cmd_run(args: argparse.Namespace) -> int:
    record = train.run(run_config(args), resume=args.resume, quiet=args.json)
    if not distributed.context().main:  # under torchrun, rank 0 speaks for the job
        return 0
    if args.json:
        print(json.dumps(record))
    else:
        print(f"{record['spatial']}/{record['channel']} on {record['dataset']}: test_acc {record['test_acc']:.4f}, "
              f"{record['params']:,} params, {record['macs'] / 1e6:.1f} M MACs, {record['train_time_s']:.0f} s "
              f"-> {record['run_dir']}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .profile import preset_table
    doc = {"spatial": list(blocks.SPATIAL), "channel": list(blocks.CHANNEL), "presets": preset_table(),
           "datasets": list(data.DATASETS)}
    if args.json:
        print(json.dumps(doc))
        return 0
    print("spatial mixers:", ", ".join(doc["spatial"]))
    print("channel mixers:", ", ".join(doc["channel"]))
    print("datasets:      ", ", ".join(doc["datasets"]))
    print("presets:")
    for row in doc["presets"]:
        print(f"  {row['preset']:<18} {row['shape']:<13} {row['img_size']:>4} px  {row['params'] / 1e6:8.2f} M params"
              f"  {row['macs'] / 1e9:8.3f} G MACs  spatial={row['spatial']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import profile, report, study
    parser = argparse.ArgumentParser(prog="ablate",
                                     description="Swap one slot of one vision backbone, train it, count its cost.")
    sub = parser.add_subparsers(dest="command")
    add_run_args(sub.add_parser("run", help="train one model (the default command)"))
    profile.add_arguments(sub.add_parser("profile", help="params, MACs, throughput and memory per mixer"))
    study.add_arguments(sub.add_parser("study", help="run an optuna study from an experiment file"))
    report.add_arguments(sub.add_parser("report", help="plots and a markdown report from a study's storage"))
    sub.add_parser("list", help="mixers, presets and datasets").add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "list": cmd_list}
    try:
        if args.command in handlers:
            return handlers[args.command](args)
        from . import profile, report, study
        return {"profile": profile, "study": study, "report": report}[args.command].main(args)
    except blocks.ConfigError as e:  # UsageError and DataError are ConfigErrors too
        print(f"ablate {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"ablate {args.command}: failed: {e}", file=sys.stderr)
        return 1
