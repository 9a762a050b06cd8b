"""`python -m ablate [run] --spatial S --channel C ...`: train one model and print its record."""
import argparse
import json
import sys

from ..engines.training.runs import run
from ..foundations import distributed
from .args import add_run_args, run_config

HELP = "train one model (the default command)"
add_arguments = add_run_args


def main(args: argparse.Namespace) -> int:
    try:
        record = run(run_config(args), resume=args.resume, quiet=args.json)
    except KeyboardInterrupt:  # the run's record says "interrupted"; its last checkpoint is where it goes on
        if distributed.context().main:  # under torchrun every rank gets the Ctrl-C
            print("ablate run: interrupted; the same command with --resume continues the run from its last "
                  "checkpoint", file=sys.stderr)
        return 130
    if not distributed.context().main:  # under torchrun, rank 0 speaks for the job
        return 0
    if args.json:
        print(json.dumps(record))
    else:
        print(f"{record['spatial']}/{record['channel']} on {record['dataset']}: test_acc {record['test_acc']:.4f}, "
              f"{record['params']:,} params, {record['macs'] / 1e6:.1f} M MACs, {record['train_time_s']:.0f} s "
              f"-> {record['run_dir']}")
    return 0
