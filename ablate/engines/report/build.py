"""Writes a study's report: the figures that apply, report.md, trials.csv and summary.json."""
from pathlib import Path

import optuna

from ...foundations.io import write_json
from .analysis import analyse
from . import figures
from .markdown import clean, write_csv, write_markdown


def build(study: optuna.Study, storage: str, out: Path, formats: list[str], control: tuple[str, str] | None = None
          ) -> dict:
    """Writes the figures, report.md, trials.csv and summary.json into `out`; returns the summary."""
    a = analyse(study, storage, control)
    figs = figures.Figures(out, formats)
    for spec in figures.FIGURES:
        if spec.applies(a):
            spec.draw(a, figs)
    summary = clean({**a.summary, "out": str(out), "figures": figs.made})
    write_csv(out / "trials.csv", a.frame)
    write_json(out / "summary.json", summary)
    write_markdown(out / "report.md", summary, figs, study)
    return summary
