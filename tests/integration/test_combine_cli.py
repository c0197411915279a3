"""`tunesmith merge` with several adapters: a combined PEFT-layout adapter, or merged into the base."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.tiny import save_tiny_model
from tunesmith import load_model
from tunesmith.cli.main import main
from tunesmith.methods import apply_method
from tunesmith.methods.base import adapter_layers
from tunesmith.methods.combine import combine_adapters
from tunesmith.methods.io import load_adapter, save_adapter
from tunesmith.methods.lora import LoraConfig

IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


@pytest.fixture
def saved(tmp_path):
    """A tiny model directory and two saved LoRA adapters of different ranks and targets."""
    model_dir = save_tiny_model(tmp_path / "tiny")
    for i, (r, targets) in enumerate([(4, ["q_proj", "v_proj"]), (2, ["v_proj", "o_proj"])]):
        model, _ = load_model(str(model_dir))
        apply_method(model, LoraConfig(r=r, alpha=2 * r, target_modules=targets))
        torch.manual_seed(i)
        with torch.no_grad():
            for _, layer in adapter_layers(model):
                for p in layer.adapter_parameters("default").values():
                    p.copy_(0.3 * torch.randn_like(p))
        save_adapter(model, tmp_path / f"a{i}", base_model=str(model_dir))
    return tmp_path, str(model_dir), [str(tmp_path / "a0"), str(tmp_path / "a1")]


def _expected(model_dir, adapters, weights, **options):
    model, _ = load_model(model_dir)
    for i, a in enumerate(adapters):
        load_adapter(model, a, f"s{i}")
    combine_adapters(model, ["s0", "s1"], weights, "mix", **options)
    with torch.no_grad():
        return model(IDS).logits


def test_merge_several_adapters_writes_a_combined_peft_adapter(saved, capsys):
    tmp, model_dir, adapters = saved
    out = tmp / "combined"
    args = ["merge", "--model", model_dir, "--adapter", adapters[0], "--adapter", adapters[1]]
    assert main([*args, "--weights", "0.7,0.3", "--combination", "cat", "--output", str(out)]) == 0
    assert "cat combined adapter written to" in capsys.readouterr().out
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 6
    model, _ = load_model(model_dir, adapter=str(out))
    with torch.no_grad():
        got = model(IDS).logits
    torch.testing.assert_close(
        got, _expected(model_dir, adapters, [0.7, 0.3], combination="cat"), atol=1e-5, rtol=1e-5
    )

    merged = tmp / "merged"
    svd = ["--weights", "0.5,0.5", "--combination", "svd", "--svd-rank", "3"]
    assert main([*args, *svd, "--into-base", "--output", str(merged)]) == 0
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            plain(IDS).logits,
            _expected(model_dir, adapters, [0.5, 0.5], combination="svd", svd_rank=3),
            atol=1e-5,
            rtol=1e-5,
        )


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--weights", "0.5"], "1 weight(s) for 2 adapter(s)"),
        (
            ["--weights", "0.5,0.5", "--combination", "ties", "--density", "0"],
            "density must be in (0, 1]",
        ),
        (["--weights", "0.5,0.5", "--combination", "linear"], "need one rank"),
        (["--weights", "a,b"], "--weights must be numbers"),
        ([], "2 adapters need --weights"),
    ],
)
def test_merge_several_adapters_errors(saved, capsys, extra, fragment):
    tmp, model_dir, adapters = saved
    args = ["merge", "--model", model_dir, "--adapter", adapters[0], "--adapter", adapters[1]]
    assert main([*args, *extra, "--output", str(tmp / "x")]) == 2
    assert fragment in capsys.readouterr().err


def test_adapters_of_different_bases_are_refused(saved, capsys):
    tmp, model_dir, adapters = saved
    config = tmp / "a1" / "adapter_config.json"
    cfg = json.loads(config.read_text())
    config.write_text(json.dumps({**cfg, "base_model_name_or_path": "other/model"}))
    args = ["merge", "--model", model_dir, "--adapter", adapters[0], "--adapter", adapters[1]]
    assert main([*args, "--weights", "0.5,0.5", "--output", str(tmp / "x")]) == 2
    assert "trained on different base models" in capsys.readouterr().err


def test_one_adapter_refuses_combination_flags(saved, capsys):
    tmp, model_dir, adapters = saved
    args = ["merge", "--model", model_dir, "--adapter", adapters[0], "--output", str(tmp / "x")]
    assert main([*args, "--combination", "ties"]) == 2
    assert "--combination combine several adapters" in capsys.readouterr().err
