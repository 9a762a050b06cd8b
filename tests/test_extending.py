"""The four recipes of docs/architecture.md, each done inside a test without editing any other file: a spatial
mixer (run + profile), a dataset (run), a report figure (report), a study launcher (study)."""
import json
import threading
from pathlib import Path

import optuna
import torch
from optuna.trial import create_trial

import blocks
from ablate.commands import main
from ablate.engines import data
from ablate.engines.data.memory import Dataset
from ablate.engines.report import figures
from ablate.engines.report.figures import FigureSpec
from ablate.engines.study import launchers
from ablate.engines.study.board import load_board
from ablate.engines.study.launchers import Launcher
from ablate.engines.study.worker import work
from blocks.spatial.base import SpatialMixer

TINY = ["--train-size", "200", "--epochs", "1", "--batch-size", "100", "--model-opt", "depths=[1]",
        "--model-opt", "dims=[16]"]


class Shift(SpatialMixer):
    """Recipe 1's mixer: each channel group looks one token up, down, left or right (a parameter-free shift)."""

    uncounted_ops = frozenset({"aten::roll", "aten::cat", "aten::split"})

    def __init__(self, dim: int, grid: tuple[int, int], groups: int = 4):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        parts = x.chunk(self.groups, dim=-1)
        moves = [(1, 1), (-1, 1), (1, 2), (-1, 2)]
        return torch.cat([p.roll(*moves[i % 4]) for i, p in enumerate(parts)], dim=-1)


def run_json(capsys, *argv) -> dict:
    code = main([*argv, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_recipe_1_a_spatial_mixer_runs_and_profiles(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(blocks.SPATIAL, "shift", Shift)
    record = run_json(capsys, "run", "--spatial", "shift", "--dataset", "synthetic", *TINY, "--out", str(tmp_path))
    assert record["spatial"] == "shift" and record["history"][0]["train_loss"] > 0
    doc = run_json(capsys, "profile", "--spatial", "shift,pool", "--threads", "1", "--warmup", "1", "--repeats", "1",
                   "--batch-size", "8", "--csv", str(tmp_path / "p.csv"))
    shift, pool = doc["rows"]
    assert shift["spatial"] == "shift" and shift["params"] == pool["params"]  # no parameters of its own
    assert shift["train_img_s"] > 0 and shift["peak_mem_mb"] > 0


def test_recipe_2_a_dataset_trains(tmp_path, capsys, monkeypatch):
    def stripes(data_dir, download):
        """Three classes of 16 x 16 RGB images: horizontal, vertical or no stripes, plus noise."""
        g = torch.Generator().manual_seed(0)

        def draw(n):
            y = torch.arange(n) % 3
            x = torch.rand(n, 3, 16, 16, generator=g) * 60
            x[y == 0, :, ::2, :] += 150
            x[y == 1, :, :, ::2] += 150
            return x.to(torch.uint8), y
        (train_x, train_y), (test_x, test_y) = draw(300), draw(90)
        return Dataset("stripes", train_x, train_y, test_x, test_y, num_classes=3)
    monkeypatch.setitem(data.DATASETS, "stripes", data.DatasetEntry(stripes, (3, 16, 16), 3))
    record = run_json(capsys, "run", "--dataset", "stripes", "--spatial", "conv", *TINY, "--out", str(tmp_path))
    assert record["dataset"] == "stripes" and record["test_size"] == 90
    assert record["config"]["model"]["in_chans"] == 3 and record["config"]["model"]["num_classes"] == 3


def test_recipe_3_a_report_figure(tmp_path, capsys, monkeypatch):
    def plot_seeds(a, figs):
        fig, axes = figures.new_figure()
        axes[0, 0].scatter(a.final.seed, a.final.test_acc)
        figs.save(fig, "seeds", "Accuracy per seed")
    monkeypatch.setattr(figures, "FIGURES", [*figures.FIGURES, FigureSpec("seeds", lambda a: len(a.final) > 1,
                                                                          plot_seeds)])
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="toy", storage=url, direction="maximize")
    for seed in range(3):
        record = {"spatial": "mlp", "seed": seed, "test_acc": 0.8 + seed / 100, "history": []}
        study.add_trial(create_trial(value=record["test_acc"], user_attrs={
            "arm": "base", "axes": {}, "phase": "final", "seed": seed, "cell": f"base|final|seed={seed}",
            "record": record}))
    doc = run_json(capsys, "report", "--study", "toy", "--storage", url, "-o", str(tmp_path / "r"))
    assert [f["name"] for f in doc["figures"]] == ["seeds"]
    assert (tmp_path / "r" / "seeds.png").stat().st_size > 0
    assert "![Accuracy per seed](seeds.png)" in (tmp_path / "r" / "report.md").read_text()


def test_recipe_4_a_study_launcher(tmp_path, capsys, monkeypatch):
    started = []

    def threads(exp, board, args):
        """Workers as threads of this process, each with its own storage connection."""
        from ablate.foundations.storage import open_storage

        def worker(i):
            started.append(i)
            work(exp, load_board(exp, open_storage(args.storage, heartbeat=args.heartbeat)), Path(args.out),
                 args.heartbeat, f"thread {i}")
        pool = [threading.Thread(target=worker, args=(i,)) for i in range(args.workers)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return 0
    monkeypatch.setitem(launchers.LAUNCHERS, "threads", Launcher(threads, "worker threads in this process"))
    file = tmp_path / "exp.toml"
    file.write_text('[study]\nname = "toy"\nseeds = [0, 1]\n[run]\ndataset = "synthetic"\nval_size = 100\ntrain_size = 200\n'
                    'batch_size = 100\nepochs = 1\nmodel_options = { depths = [1], dims = [16] }\n'
                    '[arms]\nspatial = ["conv", "pool"]\n')
    doc = run_json(capsys, "study", str(file), "--launcher", "threads", "--workers", "2",
                   "--storage", f"sqlite:///{tmp_path}/s.db", "--out", str(tmp_path / "runs"))
    assert sorted(started) == [0, 1]
    assert doc["cells"] == {"total": 4, "done": 4, "running": 0, "pending": 0} and doc["duplicates"] == 0
