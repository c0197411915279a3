"""Per-parameter learning rates (Objective.lr_scale) and keeping the best evaluation's weights."""

import pytest
import torch
from torch import nn

from tunesmith.config.schema import TrainConfig
from tunesmith.errors import ConfigError
from tunesmith.tasks.classify.modes.head import head_lr_scale
from tunesmith.training import Objective, train
from tunesmith.training.optim import build_optimizer, build_scheduler


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def test_optimizer_groups_carry_the_head_rate():
    model = _Tiny()
    cfg = TrainConfig(lr=1e-3, weight_decay=0.1)
    opt = build_optimizer(dict(model.named_parameters()), cfg, head_lr_scale(10.0))
    rates = {
        (g["lr"], g["weight_decay"]): sorted(p.shape for p in g["params"]) for g in opt.param_groups
    }
    assert rates == {
        (1e-3, 0.1): [torch.Size([4, 4])],
        (1e-3, 0.0): [torch.Size([4])],
        (1e-2, 0.1): [torch.Size([2, 4])],
        (1e-2, 0.0): [torch.Size([2])],
    }


def test_without_lr_scale_the_two_decay_groups_stay():
    params = list(_Tiny().parameters())
    opt = build_optimizer(params, TrainConfig(lr=1e-3, weight_decay=0.0))
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)


def test_schedule_scales_every_group_alike():
    model = _Tiny()
    cfg = TrainConfig(lr=1e-2, warmup_steps=2, scheduler="cosine")
    opt = build_optimizer(dict(model.named_parameters()), cfg, head_lr_scale(4.0))
    sched = build_scheduler(opt, cfg, total_steps=10)
    for _ in range(3):
        opt.step()
        sched.step()
        body, head = sorted({g["lr"] for g in opt.param_groups})
        assert head == pytest.approx(4 * body)


def _collate(items):
    return {"x": torch.stack([i[0] for i in items]), "labels": torch.tensor([i[1] for i in items])}


def _run_with_evals(tmp_path, accuracies, **kw):
    """Train 4 epochs of 2 steps with a scripted eval_accuracy per evaluation; returns
    (result, the weights at each evaluation, the final weights)."""
    model, x = _Tiny(), torch.randn(8, 4)
    examples = [(x[i], i % 2) for i in range(8)]
    seen, script = [], iter(accuracies)

    def evaluate():
        seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        accuracy = next(script)
        if accuracy is KeyboardInterrupt:  # the run is stopped here (Ctrl-C)
            raise KeyboardInterrupt
        return {"eval_loss": 1.0, "eval_accuracy": accuracy}

    def loss(m, batch):
        return nn.functional.cross_entropy(m(batch["x"]), batch["labels"]), 4

    cfg = TrainConfig(
        **{"epochs": 4, "batch_size": 4, "lr": 5e-2, "log_every": 1, **kw},
        best_metric="eval_accuracy",
    )
    result = train(model, examples, cfg, tmp_path, Objective(_collate, loss), evaluate=evaluate)
    return result, seen, dict(model.named_parameters())


def test_keep_best_restores_the_best_epoch_when_a_later_one_is_worse(tmp_path):
    result, seen, final = _run_with_evals(tmp_path, [0.5, 0.9, 0.6, 0.7], keep_best=True)
    assert len(seen) == 4  # one evaluation per epoch without train.eval_every
    assert result.best_step == 4 and result.best_value == 0.9 and not result.stopped_early
    for name, p in final.items():
        torch.testing.assert_close(p.detach(), seen[1][name])
        assert not torch.equal(p.detach(), seen[3][name])


def test_keep_best_survives_an_interrupted_run(tmp_path):
    whole = _run_with_evals(tmp_path / "whole", [0.5, 0.9, 0.6, 0.7], keep_best=True)[2]
    with pytest.raises(KeyboardInterrupt):  # stopped at the third evaluation, after the best
        _run_with_evals(tmp_path / "cut", [0.5, 0.9, KeyboardInterrupt], keep_best=True)
    result, seen, final = _run_with_evals(tmp_path / "cut", [0.6, 0.7], keep_best=True)
    assert len(seen) == 2 and result.best_step == 4 and result.best_value == 0.9
    for name, p in final.items():  # the best weights came back from disk, as in the whole run
        assert torch.equal(p.detach(), whole[name].detach())


def test_early_stopping_stops_after_patience_evaluations(tmp_path):
    result, seen, final = _run_with_evals(
        tmp_path,
        [0.5, 0.9, 0.6, 0.6, 0.8, 0.8],
        epochs=6,
        keep_best=True,
        early_stopping_patience=2,
    )
    assert len(seen) == 4 and result.stopped_early and result.best_step == 4
    for name, p in final.items():
        torch.testing.assert_close(p.detach(), seen[1][name])


def test_keep_best_without_validation_is_an_error(tmp_path):
    model = _Tiny()
    cfg = TrainConfig(max_steps=2, batch_size=4, keep_best=True)
    examples = [(torch.randn(4), i % 2) for i in range(8)]

    def loss(m, batch):
        return nn.functional.cross_entropy(m(batch["x"]), batch["labels"]), 4

    with pytest.raises(ConfigError, match="validation split"):
        train(model, examples, cfg, tmp_path, Objective(_collate, loss))


def test_bad_selection_settings_are_config_errors():
    with pytest.raises(ConfigError, match="early_stopping_patience"):
        TrainConfig(early_stopping_patience=-1)
    with pytest.raises(ConfigError, match="best_metric"):
        TrainConfig(best_metric="accuracy")
