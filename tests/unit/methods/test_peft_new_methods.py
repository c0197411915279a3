"""LoHa, LoKr, VeRA, LN tuning and FourierFT against Hugging Face PEFT (the reference; tests only).

Per method x architecture: an adapter saved by us loads in PEFT with the same logits, one saved by
PEFT loads in ours with the same logits, merging gives PEFT's merged logits, and the gradients of
the trained tensors agree. All in fp32, max abs diff <= 1e-5, with random non-zero adapter
weights so the adapters change the output. PEFT options we do not implement are refused on load.
"""

import copy
import json
import warnings
from dataclasses import dataclass, field

import pytest
import torch

from tests.unit.methods.matrix_support import BUILDERS
from tunesmith.errors import CheckpointError, ConfigError
from tunesmith.methods import apply_method, get_method, merge_adapters
from tunesmith.methods.base import adapter_layers
from tunesmith.methods.fourierft import FourierFTConfig
from tunesmith.methods.io import load_adapter, save_adapter
from tunesmith.methods.ln_tuning import LnTuningConfig
from tunesmith.methods.loha import LohaConfig
from tunesmith.methods.lokr import LokrConfig, factorization
from tunesmith.methods.vera import VeraConfig

peft = pytest.importorskip("peft")

TOL = 1e-5
INPUT = torch.tensor([[5, 9, 13, 40, 41, 42, 7, 8], [6, 10, 14, 50, 51, 52, 9, 0]])
MASK = torch.tensor([[1] * 8, [1] * 7 + [0]])
LLAMA = ["q_proj", "v_proj", "down_proj"]
BERT = ["query", "value", "intermediate.dense"]
GPT2 = ["c_attn", "c_proj"]  # attn.c_proj and mlp.c_proj too (Conv1D, transposed weights)


@dataclass
class Pair:
    """The same adapter described to us and to PEFT (`peft_cls` names PEFT's config class)."""

    id: str
    arch: str
    ours: object
    peft_cls: str
    peft_kwargs: dict = field(default_factory=dict)
    noise: float = 0.05  # random change of the adapter tensors before comparing
    random_init: bool = False  # every trained tensor starts random (FourierFT's default)

    def __str__(self):
        return f"{self.id}-{self.arch}"

    def peft_config(self):
        # BERT is no causal LM: PEFT's plain PeftModel wraps it.
        task = None if self.arch == "bert" else "CAUSAL_LM"
        return getattr(peft, self.peft_cls)(task_type=task, **self.peft_kwargs)


PAIRS = [
    # PEFT's LoHa and LoKr take nn.Linear only (not GPT-2's Conv1D): Llama and BERT here.
    Pair(
        "loha",
        "llama",
        LohaConfig(r=4, alpha=8, target_modules=LLAMA),
        "LoHaConfig",
        dict(r=4, alpha=8, target_modules=LLAMA),
    ),
    Pair(
        "loha",
        "bert",
        LohaConfig(r=2, alpha=3, target_modules=BERT),
        "LoHaConfig",
        dict(r=2, alpha=3, target_modules=BERT),
        noise=0.3,
    ),
    # r = 1: W2 is a rank-1 product; decompose_factor 8 with decompose_both: W1 is one too.
    Pair(
        "lokr",
        "llama",
        LokrConfig(r=1, alpha=2, target_modules=LLAMA),
        "LoKrConfig",
        dict(r=1, alpha=2, target_modules=LLAMA),
    ),
    Pair(
        "lokr-both",
        "llama",
        LokrConfig(r=1, decompose_both=True, decompose_factor=8, target_modules=LLAMA),
        "LoKrConfig",
        dict(r=1, decompose_both=True, decompose_factor=8, target_modules=LLAMA),
    ),
    Pair(
        "lokr-lycoris",
        "bert",
        LokrConfig(r=4, alpha=2, init_weights="lycoris", target_modules=BERT),
        "LoKrConfig",
        dict(r=4, alpha=2, init_weights="lycoris", target_modules=BERT),
        noise=0.3,
    ),
    # VeRA's lambda_b starts at zero: a larger change so that the adapter shows in the logits.
    Pair(
        "vera",
        "llama",
        VeraConfig(r=8, target_modules=LLAMA),
        "VeraConfig",
        dict(r=8, target_modules=LLAMA),
        noise=0.5,
    ),
    Pair(
        "vera",
        "gpt2",
        VeraConfig(r=4, projection_prng_key=3, d_initial=0.2, target_modules=GPT2),
        "VeraConfig",
        dict(r=4, projection_prng_key=3, d_initial=0.2, target_modules=GPT2),
        noise=0.5,
    ),
    # A and B not in the file: both sides regenerate them from the seed.
    Pair(
        "vera-regenerated",
        "llama",
        VeraConfig(r=6, save_projection=False, projection_prng_key=11, target_modules="all-linear"),
        "VeraConfig",
        dict(r=6, save_projection=False, projection_prng_key=11, target_modules="all-linear"),
        noise=0.5,
    ),
    # Our default (every norm) is PEFT's default for Llama and GPT-2; PEFT has none for BERT.
    Pair("ln_tuning", "llama", LnTuningConfig(), "LNTuningConfig"),
    Pair("ln_tuning", "gpt2", LnTuningConfig(), "LNTuningConfig"),
    Pair(
        "ln_tuning",
        "bert",
        LnTuningConfig(),
        "LNTuningConfig",
        dict(target_modules=["LayerNorm"]),
        noise=0.3,
    ),
    # PEFT's default init: a random spectrum; the frequency entries are regenerated from the seed.
    Pair(
        "fourierft",
        "llama",
        FourierFTConfig(n_frequency=64, target_modules=LLAMA),
        "FourierFTConfig",
        dict(n_frequency=64, target_modules=LLAMA),
        random_init=True,
    ),
    Pair(
        "fourierft",
        "gpt2",
        FourierFTConfig(n_frequency=50, scaling=100.0, random_loc_seed=5, target_modules=GPT2),
        "FourierFTConfig",
        dict(n_frequency=50, scaling=100.0, random_loc_seed=5, target_modules=GPT2),
        random_init=True,
    ),
    Pair(
        "fourierft-zeros",
        "bert",
        FourierFTConfig(n_frequency=100, init_weights=True, target_modules=BERT),
        "FourierFTConfig",
        dict(n_frequency=100, init_weights=True, target_modules=BERT),
        noise=1.0,
    ),
]


def _logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT, attention_mask=MASK).logits


def _perturb_(params, noise):
    # Random and non-zero, near the init: (1 +- 0.3) * p + noise * N(0, 1).
    torch.manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.copy_(p * (1 + 0.3 * torch.randn_like(p)) + noise * torch.randn_like(p))


def _ours(pair, base):
    model = apply_method(copy.deepcopy(base), copy.deepcopy(pair.ours))
    params = [
        p
        for _, layer in adapter_layers(model)
        for p in layer.adapter_parameters("default").values()
    ]
    _perturb_(params, pair.noise)
    return model


def _peft(pair, base):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. fan_in_fan_out set for GPT-2's Conv1D
        model = peft.get_peft_model(copy.deepcopy(base), pair.peft_config())
    _perturb_([p for p in model.parameters() if p.requires_grad], pair.noise)
    return model.eval()


def _peft_load(pair, base, path):
    # Our files always say task_type CAUSAL_LM; PEFT's causal-LM wrapper cannot hold BERT.
    cfg = peft.PeftConfig.from_pretrained(path)
    cfg.task_type = pair.peft_config().task_type
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.PeftModel.from_pretrained(copy.deepcopy(base), path, config=cfg).eval()


def _key(name):
    # Our and PEFT's parameter names, both without the wrapper prefix and the adapter name.
    return name.replace("base_model.model.", "", 1).replace(".default", "")


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
    assert _max_diff(_logits(_peft_load(pair, base, tmp_path)), _logits(ours)) <= TOL


@pytest.mark.parametrize("pair", PAIRS, ids=str)
def test_peft_saved_loads_in_ours(pair, tmp_path):
    base = BUILDERS[pair.arch]()
    theirs = _peft(pair, base)
    assert _max_diff(_logits(theirs), _logits(base)) > 1e-3, "the adapter should change the output"
    theirs.save_pretrained(tmp_path)
    ours = load_adapter(copy.deepcopy(base), tmp_path)
    assert _max_diff(_logits(ours), _logits(theirs)) <= TOL


@pytest.mark.parametrize("pair", [p for p in PAIRS if get_method(p.ours.name).can_merge], ids=str)
def test_merge_matches_peft_merge(pair, tmp_path):
    base = BUILDERS[pair.arch]()
    ours = _ours(pair, base)
    save_adapter(ours, tmp_path)
    theirs = _peft_load(pair, base, tmp_path).merge_and_unload()
    merge_adapters(ours)
    assert _max_diff(_logits(ours), _logits(theirs)) <= TOL


@pytest.mark.parametrize("pair", [p for p in PAIRS if not p.random_init], ids=str)
def test_deterministic_init_matches_peft(pair):
    # Tensors PEFT starts at a constant (zeros, d_initial) start at the same value in ours.
    base = BUILDERS[pair.arch]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = _trainable(peft.get_peft_model(copy.deepcopy(base), pair.peft_config()))
    ours = _trainable(apply_method(copy.deepcopy(base), copy.deepcopy(pair.ours)))
    constant = [n for n, p in theirs.items() if torch.all(p == p.flatten()[0])]
    assert constant, "every method here starts some tensor at a constant"
    for name in constant:
        assert torch.equal(ours[name], theirs[name]), name


@pytest.mark.parametrize("pair", PAIRS, ids=str)
def test_gradients_match_peft(pair):
    # PEFT's (perturbed) tensors copied into ours give PEFT's gradients.
    base = BUILDERS[pair.arch]()
    theirs = _peft(pair, base)
    ours = apply_method(copy.deepcopy(base), copy.deepcopy(pair.ours))
    theirs_params = _trainable(theirs)
    assert set(_trainable(ours)) == set(theirs_params)
    with torch.no_grad():
        for name, p in _trainable(ours).items():
            p.copy_(theirs_params[name])
    labels = INPUT.masked_fill(MASK == 0, -100)
    for model in (ours, theirs):
        model.eval()  # no dropout: the base model's would differ between the two runs
        model(input_ids=INPUT, attention_mask=MASK, labels=labels).loss.backward()
    for name, p in _trainable(ours).items():
        assert _max_diff(p.grad, theirs_params[name].grad) <= TOL, name


def _saved_with(tmp_path, pair, **changes):
    # A PEFT-saved adapter whose adapter_config.json then gets `changes`.
    _peft(pair, BUILDERS[pair.arch]()).save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return tmp_path


UNSUPPORTED = [
    (PAIRS[0], {"rank_pattern": {"q_proj": 2}}),
    (PAIRS[0], {"modules_to_save": ["lm_head"]}),
    (PAIRS[2], {"alpha_pattern": {"q_proj": 2}}),
    (PAIRS[2], {"layers_to_transform": [0]}),
    (PAIRS[5], {"bias": "all"}),
    (PAIRS[5], {"layers_pattern": "layers"}),
    (PAIRS[8], {"exclude_modules": ["norm"]}),
    (PAIRS[8], {"modules_to_save": ["lm_head"]}),
    (PAIRS[11], {"n_frequency_pattern": {"q_proj": 10}}),
    (PAIRS[11], {"bias": "fourier_only"}),
]


@pytest.mark.parametrize(
    "pair,changes", UNSUPPORTED, ids=[f"{p.id}-{next(iter(c))}" for p, c in UNSUPPORTED]
)
def test_unsupported_peft_option_is_refused_by_name(pair, changes, tmp_path):
    option = next(iter(changes))
    spec = get_method(pair.ours.name)
    peft_cfg = {**spec.to_peft_config(pair.ours), **changes}
    with pytest.raises(ConfigError, match=option):
        spec.from_peft_config(peft_cfg)
    with pytest.raises(CheckpointError, match=option):
        load_adapter(BUILDERS[pair.arch](), _saved_with(tmp_path, pair, **changes))


def test_lokr_factorization_matches_peft():
    from peft.tuners.lokr.layer import factorization as peft_factorization

    for factor in (-1, 1, 2, 3, 4, 8, 16):
        for dim in range(1, 300):
            assert factorization(dim, factor) == peft_factorization(dim, factor), (dim, factor)


@pytest.mark.parametrize("key", [0, 5])
def test_vera_projections_equal_peft(key):
    # The seeded A and B, sized for the largest targeted layer (down_proj: in 32; up_proj: out 32).
    base = BUILDERS["llama"]()
    targets = ["q_proj", "up_proj", "down_proj"]
    ours = apply_method(
        copy.deepcopy(base), VeraConfig(r=8, projection_prng_key=key, target_modules=targets)
    )
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.VeraConfig(r=8, projection_prng_key=key, target_modules=targets)
    )
    projection = next(layer.projection for _, layer in adapter_layers(ours))
    assert projection.vera_A["default"].shape == (8, 32)
    assert torch.equal(projection.vera_A["default"], theirs.base_model.vera_A["default"])
    assert torch.equal(projection.vera_B["default"], theirs.base_model.vera_B["default"])


@pytest.mark.parametrize("seed", [777, 1])
def test_fourierft_frequency_entries_equal_peft(seed):
    base = BUILDERS["llama"]()
    cfg = dict(n_frequency=30, random_loc_seed=seed, target_modules=["k_proj", "up_proj"])
    ours = apply_method(copy.deepcopy(base), FourierFTConfig(**cfg))
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.FourierFTConfig(**cfg))
    theirs_layers = {
        _key(n): m for n, m in theirs.named_modules() if hasattr(m, "fourierft_spectrum")
    }
    for path, layer in adapter_layers(ours):
        assert torch.equal(layer.indices["default"], theirs_layers[path].indices["default"]), path
