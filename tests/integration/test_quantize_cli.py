"""QLoRA through the CLI on a tiny model: quantize, info, train (8-bit AdamW), merge both ways, refusals."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.tiny import save_tiny_model
from tunesmith import load_model
from tunesmith.cli.main import main
from tunesmith.utils.modules import quantization_schemes

IDS = torch.tensor([[5, 6, 7, 8, 9]])


@pytest.fixture
def run_dir(tmp_path):
    save_tiny_model(tmp_path / "tiny")
    records = [{"instruction": f"Echo {i}", "input": "", "output": f"echo {i}"} for i in range(20)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = {
        "model": {"name": str(tmp_path / "tiny"), "quantize": "nf4"},
        "method": {"name": "lora", "r": 4, "alpha": 8, "target_modules": "all-linear"},
        "data": {"train": str(tmp_path / "data.jsonl"), "max_length": 48},
        "train": {
            "max_steps": 3,
            "batch_size": 4,
            "lr": 1e-2,
            "log_every": 1,
            "optimizer": "adamw8bit",
        },
        "eval": {"max_new_tokens": 2, "limit": 2},
        "output": {"dir": str(tmp_path / "out")},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def test_quantize_then_info_reports_bytes_and_scheme(run_dir, capsys):
    q = run_dir / "q"
    assert (
        main(["quantize", "--model", str(run_dir / "tiny"), "--scheme", "nf4", "--output", str(q)])
        == 0
    )
    assert (q / "tunesmith_quantization.json").is_file()
    capsys.readouterr()
    assert main(["info", "--model", str(q)]) == 0
    out = capsys.readouterr().out
    assert "nf4 (14 linear layers)" in out and "base weight bytes" in out
    assert main(["info", "--model", str(run_dir / "tiny"), "--quantize", "int8"]) == 0
    assert "int8 (14 linear layers)" in capsys.readouterr().out
    assert main(["info", str(run_dir / "cfg.yaml")]) == 0  # model.quantize of the config
    assert "nf4 (14 linear layers)" in capsys.readouterr().out


def test_qlora_train_and_merge_full_precision_or_requantized(run_dir, capsys):
    assert main(["train", str(run_dir / "cfg.yaml")]) == 0
    out, tiny = run_dir / "out", str(run_dir / "tiny")
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert all(adapter[k].abs().sum() > 0 for k in adapter if "lora_B" in k)
    qlora, _ = load_model(tiny, adapter=str(out), quantize="nf4")

    merged = run_dir / "merged"
    assert (
        main(
            [
                "merge",
                "--model",
                tiny,
                "--adapter",
                str(out),
                "--quantize",
                "nf4",
                "--output",
                str(merged),
            ]
        )
        == 0
    )
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(IDS).logits, qlora(IDS).logits, atol=1e-5, rtol=1e-5)

    capsys.readouterr()
    requant = run_dir / "requant"
    assert (
        main(
            [
                "merge",
                "--model",
                tiny,
                "--adapter",
                str(out),
                "--quantize",
                "nf4",
                "--keep-quantized",
                "--output",
                str(requant),
            ]
        )
        == 0
    )
    assert "relative Frobenius error" in capsys.readouterr().out
    model, _ = load_model(str(requant))
    assert quantization_schemes(model) == {"nf4": 14}
    with torch.no_grad():
        assert (
            model(IDS).logits - qlora(IDS).logits
        ).abs().max() < 0.5  # up to the re-quantization


def test_full_fine_tuning_on_a_quantized_base_is_refused(run_dir, capsys):
    cfg = yaml.safe_load((run_dir / "cfg.yaml").read_text())
    cfg["method"] = {"name": "full"}
    (run_dir / "full.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(run_dir / "full.yaml")]) == 2
    err = capsys.readouterr().err
    assert "cannot train on a quantized base" in err and "Traceback" not in err
