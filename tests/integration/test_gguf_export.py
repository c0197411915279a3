"""`tunesmith export --gguf` on the embedded model with a LoRA adapter merged in: transformers reads
the file back (its GGUF reader undoes llama.cpp's q/k layout) with the tokenizer and chat template,
and greedy decoding matches the merged model for 32 tokens at f16; q8_0 rounds within its steps."""

import pytest
import torch

from tunesmith.cli.main import main
from tunesmith.methods import apply_method, merge_and_unload
from tunesmith.methods.io import save_adapter
from tunesmith.methods.lora import LoraConfig
from tunesmith.models import load_base_model
from tunesmith.models.gguf_export import export_gguf

pytestmark = pytest.mark.integration
PROMPT = [{"role": "user", "content": "Name three primary colors."}]


def _adapter(path):
    model, _ = load_base_model("default")
    apply_method(model, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "down_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    save_adapter(model, path, base_model="default")
    return model


def _greedy(model, tokenizer, n=32):
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, ids.shape[1] :].tolist()


def test_exported_gguf_reads_back_with_the_merged_weights_and_template(tmp_path, capsys):
    merged = merge_and_unload(_adapter(tmp_path / "adapter")).eval()
    out = tmp_path / "model.gguf"
    assert main(["export", "--adapter", str(tmp_path / "adapter"), "--gguf", str(out)]) == 0
    assert "272 tensors" in capsys.readouterr().out
    back, tokenizer = load_base_model(str(out))
    _, reference_tokenizer = load_base_model("default")
    assert tokenizer.chat_template == reference_tokenizer.chat_template
    assert (
        tokenizer("a test sentence")["input_ids"]
        == reference_tokenizer("a test sentence")["input_ids"]
    )
    ours = dict(merged.named_parameters())
    for name, p in back.named_parameters():  # f16 rounding only: the layout is undone exactly
        assert (p - ours[name]).abs().max() <= 1e-3 * ours[name].abs().max() + 1e-6, name
    assert _greedy(back.eval(), tokenizer) == _greedy(merged, reference_tokenizer)


def test_q8_0_export_rounds_each_matrix_within_q8_0_steps(tmp_path):
    model, _ = load_base_model("default")
    from tunesmith.models.loading import embedded_gguf_path

    export_gguf(model, embedded_gguf_path(), tmp_path / "q8.gguf", "q8_0")
    back, _ = load_base_model(str(tmp_path / "q8.gguf"))
    ours = dict(model.named_parameters())
    for name, p in back.named_parameters():
        ref = ours[name]
        # Q8_0: blocks of 32 along a row share the scale max|block| / 127, stored as f16: rounding
        # is at most half a step plus 127 codes x the scale's f16 error (2**-11): 0.562 steps
        blocks = ref.reshape(-1, 32) if ref.dim() == 2 else ref.reshape(1, -1)
        step = blocks.abs().amax(dim=1, keepdim=True) / 127 if ref.dim() == 2 else 0
        error = (p.reshape(blocks.shape) - blocks).abs()
        assert (error <= 0.562 * step + 1e-7).all(), name
