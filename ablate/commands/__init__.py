"""The top layer: one module per command, each with HELP, add_arguments(parser) and main(args).

`python -m ablate [run|profile|study|report|list] ...`; exit 0 ok, 2 bad input, 1 failed run, 130 Ctrl-C.
"""
import argparse
import importlib
import re
import sys

from blocks.checks import SHOWN_CHARS
from blocks.errors import ConfigError

from ..foundations.errors import RunFailed

COMMANDS = {"run": "run", "profile": "profile", "study": "study", "report": "report", "list": "listing"}  # -> module


class Parser(argparse.ArgumentParser):
    """argparse, with a long value cut short in its error messages (it echoes `invalid choice: '<10 MB>'` whole)."""

    def error(self, message: str):
        super().error(LONG_WORD.sub(lambda m: f"{m[0][:SHOWN_CHARS]}... ({len(m[0]):,} characters)", message))


LONG_WORD = re.compile(rf"[^\s']{{{SHOWN_CHARS + 10},}}")  # longer than what shown() leaves of a value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ablate",
                                     description="Swap one slot of one vision backbone, train it, count its cost.")
    sub = parser.add_subparsers(dest="command")
    for name, module in COMMANDS.items():
        command = importlib.import_module(f"{__name__}.{module}")
        p = sub.add_parser(name, help=command.HELP)
        command.add_arguments(p)
        p.set_defaults(func=command.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "run")
    try:
        args = build_parser().parse_args(argv)  # inside: Ctrl-C while torch imports is no traceback either
        return args.func(args)
    except KeyboardInterrupt:  # `run` and `study` catch it themselves to say how to resume
        print(f"ablate {argv[0]}: interrupted", file=sys.stderr)
        return 130
    except ConfigError as e:  # UsageError and DataError are ConfigErrors too
        print(f"ablate {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"ablate {args.command}: failed: {e}", file=sys.stderr)
        return 1
