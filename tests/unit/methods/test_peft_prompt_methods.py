"""Prompt-based methods and LLaMA-Adapter against Hugging Face PEFT (reference; tests only).

Per method on the tiny Llama (grouped-query attention: 2 kv heads for 4 heads): an adapter saved
by us loads in PEFT with the same logits, and one saved by PEFT loads in ours with the same
logits. fp32, max abs diff <= 1e-5, adapter weights randomised so they change the output. PEFT's
logits include the virtual positions for prompt/p-tuning; those are cut before comparing.
"""

import copy
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import tiny_llama
from tunesmith.methods import apply_method
from tunesmith.methods.io import load_adapter, save_adapter
from tunesmith.methods.llama_adapter import LlamaAdapterConfig
from tunesmith.methods.p_tuning import PTuningConfig
from tunesmith.methods.prefix_tuning import PrefixTuningConfig
from tunesmith.methods.prompt_tuning import PromptTuningConfig

peft = pytest.importorskip("peft")

TOL = 1e-5
INPUT = torch.tensor([[5, 9, 13, 40, 41, 42, 7, 8], [6, 10, 14, 50, 51, 52, 9, 0]])
MASK = torch.tensor([[1] * 8, [1] * 7 + [0]])


@dataclass
class Pair:
    """The same adapter described to us and to PEFT."""

    id: str
    ours: object
    peft_cls: str
    peft_kwargs: dict
    prepended: int = 0  # virtual positions in PEFT's logits

    def __str__(self):
        return self.id

    def peft_config(self):
        return getattr(peft, self.peft_cls)(task_type="CAUSAL_LM", **self.peft_kwargs)


PAIRS = [
    Pair(
        "prompt_tuning",
        PromptTuningConfig(num_virtual_tokens=3),
        "PromptTuningConfig",
        dict(num_virtual_tokens=3),
        prepended=3,
    ),
    Pair(
        "prefix_tuning-mlp",
        PrefixTuningConfig(num_virtual_tokens=3, encoder_hidden_size=12),
        "PrefixTuningConfig",
        dict(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=12),
    ),
    Pair(
        "prefix_tuning-plain",
        PrefixTuningConfig(num_virtual_tokens=4, projection=False),
        "PrefixTuningConfig",
        dict(num_virtual_tokens=4),
    ),
    Pair(
        "p_tuning-lstm",
        PTuningConfig(num_virtual_tokens=3, encoder_hidden_size=8),
        "PromptEncoderConfig",
        dict(num_virtual_tokens=3, encoder_reparameterization_type="LSTM", encoder_hidden_size=8),
        prepended=3,
    ),
    Pair(
        "p_tuning-mlp",
        PTuningConfig(num_virtual_tokens=2, encoder="mlp"),
        "PromptEncoderConfig",
        dict(num_virtual_tokens=2, encoder_reparameterization_type="MLP"),
        prepended=2,
    ),
    Pair(
        "llama_adapter",
        LlamaAdapterConfig(adapter_len=3, adapter_layers=2),
        "AdaptionPromptConfig",
        dict(adapter_len=3, adapter_layers=2),
    ),
]


def _randomise(model):
    # Non-zero everywhere (the LLaMA-Adapter gate starts at 0), on the same scale as the init.
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.5)


def _logits(model, cut=0):
    with torch.no_grad():
        return model(input_ids=INPUT, attention_mask=MASK).logits[:, cut:]


def _max_diff(a, b):
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("pair", PAIRS, ids=str)
def test_ours_loads_in_peft(pair, tmp_path):
    base = tiny_llama()
    ours = apply_method(copy.deepcopy(base), copy.deepcopy(pair.ours))
    _randomise(ours)
    save_adapter(ours, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "ours")
    assert _max_diff(_logits(theirs, pair.prepended), _logits(ours)) <= TOL
    assert (
        _max_diff(_logits(ours), _logits(tiny_llama())) > 1e-3
    )  # the adapter does change the output


@pytest.mark.parametrize("pair", PAIRS, ids=str)
def test_peft_loads_in_ours(pair, tmp_path):
    theirs = peft.get_peft_model(tiny_llama(), pair.peft_config())
    _randomise(theirs)
    theirs.save_pretrained(tmp_path / "peft")
    ours = load_adapter(tiny_llama(), tmp_path / "peft")
    assert _max_diff(_logits(ours), _logits(theirs, pair.prepended)) <= TOL


def test_prefix_file_holds_plain_prefixes_with_kv_heads(tmp_path):
    # PEFT's layout: (n, layers * 2 * kv_heads * head_dim): 2 layers, 2 kv heads of dim 4 -> 32
    model = apply_method(tiny_llama(), PrefixTuningConfig(num_virtual_tokens=5))
    save_adapter(model, tmp_path / "a")
    saved = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert {k: tuple(v.shape) for k, v in saved.items()} == {"prompt_embeddings": (5, 32)}


def test_peft_refuses_a_p_tuning_template_file_instead_of_misreading_it(tmp_path):
    # PEFT only prepends; a template's slot rows make prompt_embeddings longer than PEFT expects.
    model = apply_method(
        tiny_llama(),
        PTuningConfig(num_virtual_tokens=2, template="[P] {text} [P]", placeholder_token_id=5),
    )
    save_adapter(model, tmp_path / "a")
    with pytest.raises(RuntimeError, match="size mismatch"):
        peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / "a")
