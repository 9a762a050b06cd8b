"""Budgets a reviewer can compare: a validation split held out of the training set (nested subsets beside it),
exactly N optimizer steps whatever the train size, and a warm-up whose share of the run is the same at every size."""
import json

import pytest
import torch

from ablate.commands import main
from ablate.engines.data.subsets import TrainOrder, split
from ablate.engines.training import step as step_module
from ablate.engines.training.plan import check
from ablate.engines.training.trainer import Trainer
from ablate.foundations.config import RunConfig

TINY = ["--model-opt", "depths=[1]", "--model-opt", "dims=[16]", "--batch-size", "100", "--dataset", "synthetic"]


def test_validation_split_is_stratified_fixed_and_beside_nested_subsets():
    labels = torch.arange(6000) % 10
    small, val = split(labels, 500, 1000, seed=3)
    large, val_again = split(labels, 500, 4000, seed=3)
    assert torch.equal(val, val_again) and torch.equal(val, split(labels, 500, 1000, seed=4)[1])  # same every seed
    assert labels[val].bincount().tolist() == [50] * 10
    assert set(small.tolist()) <= set(large.tolist())  # nested
    assert not set(large.tolist()) & set(val.tolist())  # never trained on
    assert torch.equal(split(labels, 0, 1000, seed=3)[0], split(labels, 0, 1000, seed=3)[0])


def test_rollover_takes_every_image_once_per_pass_without_dropping_a_partial_batch():
    order = TrainOrder(150, 100, seed=1, rollover=True)
    seen = torch.cat([order.indices(s) for s in range(3)])  # 300 images: exactly two passes over 150
    assert seen.bincount(minlength=150).tolist() == [2] * 150
    dropping = TrainOrder(150, 100, seed=1)  # an epoch budget drops each epoch's last 50
    assert len(dropping) == 1 and torch.equal(dropping.indices(1), dropping.permutation(1)[:100])


@pytest.mark.parametrize("train_size", [150, 400, 1000])
def test_steps_gives_exactly_n_optimizer_steps_at_any_train_size(tmp_path, capsys, monkeypatch, train_size):
    calls = []
    real = step_module.Step.update
    monkeypatch.setattr(step_module.Step, "update", lambda self, loss: calls.append(1) or real(self, loss))
    assert main(["run", *TINY, "--train-size", str(train_size), "--steps", "7", "--out", str(tmp_path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(calls) == 7 and record["steps"] == 7 and record["budget"] == "steps"
    assert record["images_seen"] == 700 and record["epochs"] == pytest.approx(700 / train_size, abs=1e-3)
    assert [h["step"] for h in record["history"]][-1] == 7


def lr_curve(trainer: Trainer) -> list[float]:
    return [trainer.scheduler._get_lr(t)[0] for t in range(trainer.total_steps + 1)]


def test_warmup_is_the_same_share_of_the_run_at_1k_and_55k_images(fashion_dir):
    trainers = [Trainer(cfg, check(cfg)) for cfg in (
        RunConfig(train_size=n, epochs=20, data_dir=str(fashion_dir), device="cpu", out="unused")
        for n in (1000, 55000))]
    small, large = trainers
    assert (small.total_steps, large.total_steps) == (20 * (1000 // 256), 20 * (55000 // 256))
    curves = [lr_curve(t) for t in trainers]
    for k in range(11):  # the learning rate at each tenth of the run
        assert curves[0][k * small.total_steps // 10] == pytest.approx(curves[1][k * large.total_steps // 10])
    for trainer, curve in zip(trainers, curves):  # rising over the first 10% of the steps, falling after
        w = round(0.1 * trainer.total_steps)
        assert all(a < b for a, b in zip(curve[:w], curve[1:w]))
        assert all(a >= b for a, b in zip(curve[w:], curve[w + 1:]))
    assert small.val_size == large.val_size == 5000 and large.train_size == 55000
