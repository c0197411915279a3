"""Weighted adapter combination against PEFT's add_weighted_adapter (the reference; tests only).

Two (or three) LoRA adapters with random weights are made in PEFT, saved, and loaded into our
model; each combination must give PEFT's logits within 1e-5 (fp32, tiny Llama). For DARE, PEFT's
random drop masks are drawn from a generator seeded like ours (PEFT itself draws from the global
RNG, which its own adapter initialisation also consumes).
"""

import copy

import pytest
import torch

from tests.tiny import tiny_llama
from tunesmith.errors import ConfigError
from tunesmith.methods import apply_method
from tunesmith.methods.base import adapter_configs, adapter_layers
from tunesmith.methods.combine import CombineOptions, combine_adapters
from tunesmith.methods.ia3 import Ia3Config
from tunesmith.methods.io import load_adapter
from tunesmith.methods.lora import LoraConfig

peft = pytest.importorskip("peft")
merge_utils = pytest.importorskip("peft.utils.merge_utils")

TOL = 1e-5
INPUT = torch.tensor([[5, 9, 13, 40, 41, 42, 7, 8], [6, 10, 14, 50, 51, 52, 9, 3]])
SEED = 123


def _logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def _peft_model(base, specs):
    """A PeftModel holding adapters a0, a1, ... of the given (r, alpha, targets), random weights."""
    model = None
    for i, (r, alpha, targets) in enumerate(specs):
        cfg = peft.LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, target_modules=targets)
        if model is None:
            model = peft.get_peft_model(copy.deepcopy(base), cfg, adapter_name=f"a{i}")
        else:
            model.add_adapter(f"a{i}", cfg)
    torch.manual_seed(7)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(0.3 * torch.randn_like(p))
    return model.eval()


def _ours_from(theirs, base, names, tmp_path):
    ours = copy.deepcopy(base)
    for name in names:
        theirs.save_pretrained(tmp_path, selected_adapters=[name])
        load_adapter(ours, tmp_path / name if name != "default" else tmp_path, name)
    return ours


@pytest.fixture
def seeded_peft_dare(monkeypatch):
    """PEFT's random_pruning with its masks from a generator seeded like CombineOptions.seed."""
    gen = torch.Generator().manual_seed(SEED)

    def random_pruning(tensor, density, rescale):
        mask = torch.bernoulli(torch.full_like(input=tensor, fill_value=density), generator=gen)
        pruned = tensor * mask
        return pruned / density if rescale else pruned

    monkeypatch.setattr(merge_utils, "random_pruning", random_pruning)


EQUAL = [(4, 8, ["q_proj", "v_proj"]), (4, 16, ["v_proj", "down_proj"])]
RANKS = [(4, 8, ["q_proj", "v_proj"]), (2, 4, ["v_proj", "down_proj"]), (3, 3, ["q_proj"])]
CASES = [
    ("linear", EQUAL, {}),
    ("cat", RANKS, {}),
    ("svd", RANKS, {}),
    ("svd", RANKS, {"svd_rank": 2, "svd_clamp": 0.9}),
    ("ties", EQUAL, {"density": 0.5}),
    ("ties", EQUAL, {"density": 0.7, "majority_sign": "frequency"}),
    ("dare_linear", EQUAL, {"density": 0.6}),
    ("dare_ties", EQUAL, {"density": 0.6}),
    ("magnitude_prune", EQUAL, {"density": 0.4}),
    ("ties_svd", RANKS, {"density": 0.5}),
    ("dare_linear_svd", RANKS, {"density": 0.5}),
    ("magnitude_prune_svd", RANKS, {"density": 0.5}),
]


@pytest.mark.parametrize(
    "combination,specs,options", CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)]
)
def test_combination_matches_peft(combination, specs, options, tmp_path, seeded_peft_dare):
    base = tiny_llama()
    names = [f"a{i}" for i in range(len(specs))]
    weights = [0.7, -0.4, 1.3][: len(specs)]
    theirs = _peft_model(base, specs)
    ours = _ours_from(theirs, base, names, tmp_path)
    peft_options = {k: v for k, v in options.items() if k != "majority_sign"}
    if "majority_sign" in options:
        peft_options["majority_sign_method"] = options["majority_sign"]
    theirs.add_weighted_adapter(names, weights, "mix", combination, **peft_options)
    theirs.set_adapter("mix")
    combine_adapters(ours, names, weights, "mix", CombineOptions(combination, seed=SEED, **options))
    expected = _logits(theirs)
    assert (expected - _logits(base)).abs().max() > 1e-3, "the combination should change the output"
    assert (_logits(ours) - expected).abs().max().item() <= TOL


def test_dare_same_seed_same_adapter_other_seed_differs(tmp_path):
    base = tiny_llama()
    theirs = _peft_model(base, EQUAL)
    outs = []
    for seed in (1, 1, 2):
        ours = _ours_from(theirs, base, ["a0", "a1"], tmp_path)
        combine_adapters(
            ours, ["a0", "a1"], [0.5, 0.5], "mix", combination="dare_linear", density=0.5, seed=seed
        )
        outs.append(_logits(ours))
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


def test_ia3_linear_matches_peft(tmp_path):
    base = tiny_llama()
    cfg = peft.IA3Config(task_type="CAUSAL_LM")
    theirs = peft.get_peft_model(copy.deepcopy(base), cfg, adapter_name="a0")
    theirs.add_adapter("a1", cfg)
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "ia3_l" in n:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    ours = _ours_from(theirs, base, ["a0", "a1"], tmp_path)
    theirs.add_weighted_adapter(["a0", "a1"], [0.6, 0.4], "mix")
    theirs.set_adapter("mix")
    combine_adapters(ours, ["a0", "a1"], [0.6, 0.4], "mix")
    assert (_logits(ours) - _logits(theirs)).abs().max().item() <= TOL


def _two_loras(**second):
    model = tiny_llama()
    apply_method(model, LoraConfig(r=4, target_modules=["q_proj"]), "a")
    apply_method(model, LoraConfig(**{"r": 4, "target_modules": ["q_proj"], **second}), "b")
    return model


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"weights": [1.0]}, r"1 weight\(s\) for 2 adapter\(s\)"),
        ({"combination": "ties", "density": 0.0}, r"density must be in \(0, 1\]"),
        ({"combination": "ties", "density": 1.5}, r"density must be in \(0, 1\]"),
        ({"combination": "ties"}, "needs a density"),
        ({"combination": "linear", "density": 0.5}, "takes no density"),
        ({"combination": "average"}, "unknown combination 'average'"),
        ({"adapters": ["a", "zz"]}, "no adapter named zz"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, message):
    model = _two_loras()
    args = {"adapters": ["a", "b"], "weights": [0.5, 0.5], "combination": "linear", **kwargs}
    adapters, weights = args.pop("adapters"), args.pop("weights")
    with pytest.raises(ConfigError, match=message):
        combine_adapters(model, adapters, weights, "mix", **args)
    assert "mix" not in adapter_configs(model)


def test_unequal_ranks_need_cat_or_svd():
    model = _two_loras(r=2)
    with pytest.raises(ConfigError, match="need one rank; they have r = 4, 2"):
        combine_adapters(model, ["a", "b"], [0.5, 0.5], "mix", combination="linear")
    combine_adapters(model, ["a", "b"], [0.5, 0.5], "mix", combination="cat")
    assert adapter_configs(model)["mix"].r == 6


def test_mixed_methods_and_unsupported_combinations_are_refused():
    model = tiny_llama()
    apply_method(model, LoraConfig(r=4, target_modules=["q_proj"]), "a")
    apply_method(model, Ia3Config(), "b")
    with pytest.raises(ConfigError, match="different methods \\(ia3, lora\\)"):
        combine_adapters(model, ["a", "b"], [0.5, 0.5], "mix")
    apply_method(model, Ia3Config(), "c")
    with pytest.raises(ConfigError, match="method ia3 does not take combination 'svd'"):
        combine_adapters(model, ["b", "c"], [0.5, 0.5], "mix", combination="svd")


def test_dora_sources_are_refused():
    model = _two_loras(use_dora=True)
    with pytest.raises(ConfigError, match="'b' is a DoRA adapter"):
        combine_adapters(model, ["a", "b"], [0.5, 0.5], "mix", combination="svd")


def test_combined_adapter_is_active_and_alone_trainable():
    model = _two_loras()
    combine_adapters(model, ["a", "b"], [0.5, 0.5], "mix", combination="cat")
    layers = [layer for _, layer in adapter_layers(model)]
    assert all(layer.active_adapters == ["mix"] for layer in layers)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".mix." in n for n in trainable)
