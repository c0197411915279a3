"""Our adapters against Hugging Face PEFT (the reference implementation; tests only).

Per method x architecture: an adapter saved by us loads in PEFT with the same logits, one saved by
PEFT loads in ours with the same logits, and merging gives PEFT's merged logits. All in fp32,
max abs diff <= 1e-5, with random non-zero adapter weights so the adapters change the output.
"""

import copy
import re
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from tests.unit.methods.matrix_support import BUILDERS
from tunesmith.errors import CheckpointError
from tunesmith.methods import apply_method, merge_adapters
from tunesmith.methods.base import adapter_layers
from tunesmith.methods.ia3 import Ia3Config
from tunesmith.methods.io import load_adapter, read_adapter_config, save_adapter
from tunesmith.methods.lora import LoraConfig, save_pissa_as_lora

peft = pytest.importorskip("peft")

TOL = 1e-5
INPUT = torch.tensor([[5, 9, 13, 40, 41, 42, 7, 8], [6, 10, 14, 50, 51, 52, 9, 0]])
MASK = torch.tensor([[1] * 8, [1] * 7 + [0]])
LLAMA_TARGETS = ["q_proj", "v_proj", "down_proj"]
GPT2_TARGETS = [
    "c_attn",
    "c_proj",
]  # c_proj: attn.c_proj and mlp.c_proj (Conv1D, transposed weights)


@dataclass
class Pair:
    """The same adapter described to us and to PEFT."""

    id: str
    arch: str
    ours: object
    peft_kwargs: dict  # for peft.LoraConfig / peft.IA3Config
    peft_type: str = "LORA"

    def __str__(self):
        return f"{self.id}-{self.arch}"

    def peft_config(self):
        cls = peft.IA3Config if self.peft_type == "IA3" else peft.LoraConfig
        return cls(task_type="CAUSAL_LM", **self.peft_kwargs)


def _lora_pairs(arch, targets):
    lora = dict(r=4, lora_alpha=8, target_modules=targets)
    return [
        Pair("lora", arch, LoraConfig(r=4, alpha=8, target_modules=targets), lora),
        Pair(
            "rslora",
            arch,
            LoraConfig(r=4, alpha=8, use_rslora=True, target_modules=targets),
            {**lora, "use_rslora": True},
        ),
        Pair(
            "dora",
            arch,
            LoraConfig(r=4, alpha=8, use_dora=True, target_modules=targets),
            {**lora, "use_dora": True},
        ),
        Pair(
            "pissa",
            arch,
            LoraConfig(r=4, alpha=8, init="pissa", target_modules=targets),
            {**lora, "init_lora_weights": "pissa"},
        ),
        Pair(
            "lora-top-block",
            arch,
            LoraConfig(r=4, alpha=8, target_modules=targets, layers_to_transform=[-1]),
            {**lora, "layers_to_transform": [1]},  # the tiny models have 2 blocks
        ),
    ]


PAIRS = (
    _lora_pairs("llama", LLAMA_TARGETS)
    + _lora_pairs("gpt2", GPT2_TARGETS)
    + [
        Pair("ia3", "llama", Ia3Config(), {}, "IA3"),  # defaults: k_proj, v_proj, down_proj (ff)
        Pair("ia3", "gpt2", Ia3Config(), {}, "IA3"),  # defaults: c_attn, mlp.c_proj (ff)
        Pair(
            "ia3-regex",
            "llama",
            Ia3Config(
                target_modules=r".*\.(v_proj|up_proj|down_proj)",
                feedforward_modules=r".*\.down_proj",
            ),
            {
                "target_modules": r".*\.(v_proj|up_proj|down_proj)",
                "feedforward_modules": r".*\.down_proj",
            },
            "IA3",
        ),
    ]
)


def _logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT, attention_mask=MASK).logits


def _perturb_(params):
    # Random, non-zero, and (for magnitudes and IA3 vectors) still near their init: (1 +- 0.3) * p + noise.
    with torch.no_grad():
        for p in params:
            p.copy_(p * (1 + 0.3 * torch.randn_like(p)) + 0.05 * torch.randn_like(p))


def _ours(pair, base):
    model = apply_method(copy.deepcopy(base), copy.deepcopy(pair.ours))
    torch.manual_seed(1)
    _perturb_(
        [
            p
            for _, layer in adapter_layers(model)
            for p in layer.adapter_parameters("default").values()
        ]
    )
    return model


def _peft(pair, base):
    model = peft.get_peft_model(copy.deepcopy(base), pair.peft_config())
    torch.manual_seed(1)
    _perturb_([p for n, p in model.named_parameters() if "lora_" in n or "ia3_l" in n])
    return model.eval()


def _key(name):
    # Our and PEFT's parameter names, both without the wrapper prefix and the adapter name.
    name = name.replace("base_model.model.", "", 1).replace(".default", "")
    return re.sub(r"lora_magnitude_vector\.weight$", "lora_magnitude_vector", name)


def _trainable(model):
    return {_key(n): p for n, p in model.named_parameters() if p.requires_grad}


def _max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("pair", PAIRS, ids=str)
def test_ours_saved_loads_in_peft(pair, tmp_path):
    base = BUILDERS[pair.arch]()
    ours = _ours(pair, base)
    assert _max_diff(_logits(ours), _logits(base)) > 1e-3, "the adapter should change the output"
    save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert _max_diff(_logits(theirs), _logits(ours)) <= TOL


@pytest.mark.parametrize("pair", PAIRS, ids=str)
def test_peft_saved_loads_in_ours(pair, tmp_path):
    base = BUILDERS[pair.arch]()
    theirs = _peft(pair, base)
    assert _max_diff(_logits(theirs), _logits(base)) > 1e-3, "the adapter should change the output"
    theirs.save_pretrained(tmp_path)
    ours = load_adapter(copy.deepcopy(base), tmp_path)
    assert _max_diff(_logits(ours), _logits(theirs)) <= TOL


@pytest.mark.parametrize("pair", PAIRS, ids=str)
def test_merge_matches_peft_merge(pair, tmp_path):
    base = BUILDERS[pair.arch]()
    ours = _ours(pair, base)
    save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval().merge_and_unload()
    merge_adapters(ours)
    assert _max_diff(_logits(ours), _logits(theirs)) <= TOL


@pytest.mark.parametrize("pair", [p for p in PAIRS if p.id in ("dora", "ia3")], ids=str)
def test_gradients_match_peft(pair):
    # DoRA detaches the weight norm; a wrong detach shows up here, not in the logits.
    base = BUILDERS[pair.arch]()
    theirs = _peft(pair, base)
    ours = apply_method(copy.deepcopy(base), copy.deepcopy(pair.ours))
    _copy_adapter_from_peft(ours, theirs)
    labels = INPUT.masked_fill(MASK == 0, -100)
    for model in (ours, theirs):
        model(input_ids=INPUT, attention_mask=MASK, labels=labels).loss.backward()
    ours_grads = {n: p.grad for n, p in _trainable(ours).items()}
    theirs_grads = {n: p.grad for n, p in _trainable(theirs).items()}
    assert set(ours_grads) == set(theirs_grads)
    for name, grad in ours_grads.items():
        assert _max_diff(grad, theirs_grads[name]) <= TOL, name


def _copy_adapter_from_peft(ours, theirs):
    theirs_params = _trainable(theirs)
    with torch.no_grad():
        for name, p in _trainable(ours).items():
            p.copy_(theirs_params[name])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_pissa_init_matches_peft(arch):
    # Same SVD on the same fp32 weights: the residual base, A and B agree with PEFT's.
    base = BUILDERS[arch]()
    targets = LLAMA_TARGETS if arch == "llama" else GPT2_TARGETS
    ours = apply_method(
        copy.deepcopy(base), LoraConfig(r=4, alpha=8, init="pissa", target_modules=targets)
    )
    theirs = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(
            task_type="CAUSAL_LM",
            r=4,
            lora_alpha=8,
            target_modules=targets,
            init_lora_weights="pissa",
        ),
    )
    theirs_state = {_key(n): p for n, p in theirs.named_parameters()}
    for name, p in ours.named_parameters():
        assert _max_diff(p, theirs_state[_key(name)]) <= TOL, name
    torch.testing.assert_close(_logits(ours), _logits(base), atol=TOL, rtol=0)


def _other_llama():
    # Hidden size 24 instead of 16: every attention and MLP tensor has another shape.
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=24,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize(
    "cfg,tensor",
    [
        (
            LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
            r"model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight",
        ),
        (
            LoraConfig(r=4, use_dora=True, target_modules=["v_proj"]),
            r"model\.layers\.0\.self_attn\.v_proj\.lora_A\.weight",
        ),
        (Ia3Config(), r"model\.layers\.0\.self_attn\.k_proj\.ia3_l"),
    ],
    ids=["lora", "dora", "ia3"],
)
def test_adapter_for_another_base_names_the_mismatched_tensor(cfg, tensor, tmp_path):
    save_adapter(apply_method(BUILDERS["llama"](), cfg), tmp_path)
    with pytest.raises(CheckpointError, match=tensor + r" has shape"):
        load_adapter(_other_llama(), tmp_path)


def test_pissa_merged_equals_unmerged_and_base_at_init():
    base = BUILDERS["llama"]()
    model = apply_method(
        copy.deepcopy(base), LoraConfig(r=4, init="pissa", target_modules=LLAMA_TARGETS)
    )
    torch.testing.assert_close(_logits(model), _logits(base), atol=TOL, rtol=0)
    torch.manual_seed(1)
    _perturb_(
        [
            p
            for _, layer in adapter_layers(model)
            for p in layer.adapter_parameters("default").values()
        ]
    )
    before = _logits(model)
    merge_adapters(model)
    torch.testing.assert_close(_logits(model), before, atol=TOL, rtol=0)


@pytest.mark.parametrize("arch,rslora", [("llama", False), ("gpt2", True)])
def test_pissa_as_lora_matches_peft_conversion(arch, rslora, tmp_path):
    # PEFT's conversion: save the untrained adapter, train, then save relative to it.
    base = BUILDERS[arch]()
    targets = LLAMA_TARGETS if arch == "llama" else GPT2_TARGETS
    theirs = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(
            task_type="CAUSAL_LM",
            r=4,
            lora_alpha=8,
            use_rslora=rslora,
            target_modules=targets,
            init_lora_weights="pissa",
        ),
    )
    ours = apply_method(
        copy.deepcopy(base),
        LoraConfig(r=4, alpha=8, use_rslora=rslora, init="pissa", target_modules=targets),
    )
    theirs.save_pretrained(tmp_path / "pissa_init")
    torch.manual_seed(1)
    _perturb_([p for n, p in theirs.named_parameters() if "lora_" in n])
    _copy_adapter_from_peft(ours, theirs)
    theirs.save_pretrained(
        tmp_path / "peft", path_initial_model_for_weight_conversion=str(tmp_path / "pissa_init")
    )
    save_pissa_as_lora(ours, tmp_path / "ours")

    ours_cfg, peft_cfg = (read_adapter_config(tmp_path / d) for d in ("ours", "peft"))
    assert ours_cfg["r"] == peft_cfg["r"] == 8 and ours_cfg["init_lora_weights"] is True
    assert ours_cfg["lora_alpha"] == pytest.approx(peft_cfg["lora_alpha"])
    ours_file, peft_file = (
        load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("ours", "peft")
    )
    assert set(ours_file) == set(peft_file)
    for key, tensor in ours_file.items():
        assert _max_diff(tensor, peft_file[key]) <= TOL, key
    # The converted adapter is plain LoRA on the original base: PEFT loads it without PiSSA.
    converted = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    assert _max_diff(_logits(converted), _logits(ours)) <= TOL
