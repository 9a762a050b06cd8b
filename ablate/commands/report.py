"""`python -m ablate report --study NAME`: seaborn figures, report.md, trials.csv and a JSON summary, from the
storage alone.

Every number comes from the run records that `study` keeps in each trial's user_attrs. The analysis uses the
complete trials of the final phase (or trials without a phase); tuning trials feed the tuning figures;
trials.csv lists every trial in every state. Figures are chosen by the study's axes (engines.report.figures).
"""
import argparse
import json
from pathlib import Path

import optuna

from blocks.checks import shown

from ..engines.report.build import build
from ..engines.report.frame import load_study
from ..engines.study.names import RULE, is_folder_name
from ..foundations.errors import UsageError

HELP = "plots and a markdown report from a study's storage"
FORMATS = ("png", "svg", "pdf")
CONTROL_CHARS = 200  # an axis and a level of an arm label; the messages that echo them stay short


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, metavar="NAME", help="study name in the storage")
    p.add_argument("--storage", default="sqlite:///ablate.db",
                   help="optuna RDB URL (sqlite:///ablate.db, postgresql://...) or a journal file "
                        "(journal:PATH, or a PATH ending .log/.journal)")
    p.add_argument("-o", "--out", default=None, help="folder for report.md, figures and trials.csv "
                                                     "(default reports/NAME)")
    p.add_argument("--format", default="png,svg", help=f"figure formats, comma-separated: {', '.join(FORMATS)}")
    p.add_argument("--control", default=None, metavar="AXIS=LEVEL",
                   help="test only each other level of AXIS against LEVEL, the other axes held fixed (the "
                        "many-to-one contrasts an experiment pre-registered; Holm corrects over those); default: "
                        "every two arms that differ in one axis")
    p.add_argument("--json", action="store_true", help="print a summary as one JSON document on stdout")


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UsageError(f"--format {shown(text)}: unknown format {', '.join(bad) or '(none given)'}; "
                         f"valid: {', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


def parse_control(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    axis, sep, level = text.partition("=")
    if not (sep and axis.strip() and level.strip()) or len(text) > CONTROL_CHARS:
        raise UsageError(f"--control {shown(text)}: expected AXIS=LEVEL of at most {CONTROL_CHARS} characters, e.g. "
                         f"shuffle=none")
    return axis.strip(), level.strip()


def output_folder(args: argparse.Namespace) -> Path:
    """-o, else reports/<study>: a study name from a storage becomes that folder's name only if it is a plain one."""
    if args.out:
        return Path(args.out)
    if not is_folder_name(args.study):
        raise UsageError(f"--study {args.study[:60]!r} cannot name the default output folder reports/NAME (NAME "
                         f"must be {RULE}); give the folder with -o")
    return Path("reports") / args.study


def main(args: argparse.Namespace) -> int:
    formats, control = parse_formats(args.format), parse_control(args.control)
    out = output_folder(args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(args.storage, args.study)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output folder {out}: {e.strerror or e}") from None
    summary = build(study, args.storage, out, formats, control)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{out / 'report.md'}: {summary['n_trials']} trials, {summary['n_final']} analysed in "
              f"{len(summary['arms'])} arm(s), {len(summary['figures'])} figure(s)")
    return 0
