"""Matrix cases for LN tuning: the weights (and biases) of the normalisation layers, counted from
each tiny model's config: Llama RMSNorm (weight h) twice per block plus the final norm; GPT-2
LayerNorm (weight + bias) twice per block plus ln_f; BERT LayerNorm after the embeddings, twice per
block and in the MLM head's transform."""

from tests.unit.methods.matrix_support import Case
from tunesmith.methods.ln_tuning import LnTuningConfig


def _h_layers(m):
    return m.config.hidden_size, m.config.num_hidden_layers


def llama_norms(m):
    h, n = _h_layers(m)
    return (2 * n + 1) * h


def gpt2_norms(m):
    h, n = _h_layers(m)
    return (2 * n + 1) * 2 * h


def bert_norms(m):
    h, n = _h_layers(m)
    return (1 + 2 * n + 1) * 2 * h


CASES = [
    Case("ln_tuning", "llama", LnTuningConfig(), llama_norms),
    Case("ln_tuning", "gpt2", LnTuningConfig(), gpt2_norms),
    Case("ln_tuning", "bert", LnTuningConfig(), bert_norms),
    Case(
        "ln_tuning-input",
        "llama",
        LnTuningConfig(target_modules=["input_layernorm"]),
        lambda m: _h_layers(m)[0] * _h_layers(m)[1],
    ),
    Case(
        "ln_tuning-regex",
        "gpt2",
        LnTuningConfig(target_modules=r".*\.(ln_2|ln_f)"),
        lambda m: (_h_layers(m)[1] + 1) * 2 * _h_layers(m)[0],
    ),
]
