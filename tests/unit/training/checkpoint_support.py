"""Helpers shared by the checkpoint tests: a small trained setup (parameters, optimizer with two
groups, schedule) and its checkpoint."""

import torch

from tunesmith.training.checkpoint import save_checkpoint
from tunesmith.training.optim8bit import AdamW8bit


def trained_setup(seed=0, optimizer="adamw"):
    """Trainable params (one 2-D, one 1-D), optimizer with two groups, LambdaLR, a few steps taken."""
    torch.manual_seed(seed)
    params = {"w": torch.nn.Parameter(torch.randn(8, 4)), "b": torch.nn.Parameter(torch.randn(4))}
    groups = [
        {"params": [params["w"]], "weight_decay": 0.1},
        {"params": [params["b"]], "weight_decay": 0.0},
    ]
    if optimizer == "adamw8bit":
        opt = AdamW8bit(groups, lr=1e-2, min_8bit_size=16)  # w (32 values) in 8 bits, b (4) in fp32
    else:
        opt = torch.optim.AdamW(groups, lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(3):
        (params["w"].sum() ** 2 + params["b"].pow(3).sum()).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return params, opt, sched


def save_at(path, setup, step, **extra):
    params, opt, sched = setup
    save_checkpoint(
        path,
        params,
        opt,
        sched,
        {"step": step, "epoch": 0, "batch": step, "best_eval_loss": None, **extra},
    )


def fresh_setup(optimizer="adamw"):
    return trained_setup(seed=99, optimizer=optimizer)


def truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
