"""Matrix cases for the prompt-based methods (prompt tuning, prefix tuning, p-tuning) and
LLaMA-Adapter, with their closed-form trainable counts. D = hidden size, L = layers,
d = kv heads * head dim (the key/value width), h = encoder hidden size, n = virtual tokens."""

from tests.unit.methods.matrix_support import Case
from tunesmith.methods.llama_adapter import LlamaAdapterConfig
from tunesmith.methods.p_tuning import PTuningConfig
from tunesmith.methods.prefix_tuning import PrefixTuningConfig, kv_shape
from tunesmith.methods.prompt_tuning import PromptTuningConfig


def hidden(model):
    return model.config.hidden_size


def prefix_params(model, n, projection=True, h=None):
    layers, kv_heads, head_dim = kv_shape(model.config)
    d = kv_heads * head_dim
    width = layers * 2 * d  # one prefix row: keys and values of every layer
    if not projection:
        return n * width
    h = h or d
    # embedding (n, d), Linear(d, h), Linear(h, width), with biases
    return n * d + (d * h + h) + (h * width + width)


def lstm_params(dim, h, layers):
    # per direction and layer: W_ih (4h, in), W_hh (4h, h), b_ih and b_hh (4h each); in = D, then 2h
    return sum(2 * (4 * h * (dim if i == 0 else 2 * h) + 4 * h * h + 8 * h) for i in range(layers))


def p_tuning_params(model, rows, encoder="lstm", h=None, layers=2):
    dim = hidden(model)
    h = h or dim
    if encoder == "mlp":  # Linear(D, h), Linear(h, h), Linear(h, D)
        return rows * dim + (dim * h + h) + (h * h + h) + (h * dim + dim)
    # embedding, LSTM, then Linear(2h, 2h), Linear(2h, D)
    return rows * dim + lstm_params(dim, h, layers) + (4 * h * h + 2 * h) + (2 * h * dim + dim)


CASES = [
    Case(
        "prompt_tuning",
        "llama",
        PromptTuningConfig(num_virtual_tokens=4),
        lambda m: 4 * hidden(m),
        identity_at_init=False,
    ),
    Case(
        "prompt_tuning-vocab",
        "gpt2",
        PromptTuningConfig(num_virtual_tokens=3, init="vocab"),
        lambda m: 3 * hidden(m),
        identity_at_init=False,
    ),
    Case(
        "prefix_tuning",
        "llama",
        PrefixTuningConfig(num_virtual_tokens=4),
        lambda m: prefix_params(m, 4),
        identity_at_init=False,
    ),
    Case(
        "prefix_tuning-plain",
        "llama",
        PrefixTuningConfig(num_virtual_tokens=3, projection=False),
        lambda m: prefix_params(m, 3, projection=False),
        identity_at_init=False,
    ),
    Case(
        "prefix_tuning",
        "gpt2",
        PrefixTuningConfig(num_virtual_tokens=4, encoder_hidden_size=12),
        lambda m: prefix_params(m, 4, h=12),
        identity_at_init=False,
    ),
    Case(
        "p_tuning",
        "llama",
        PTuningConfig(num_virtual_tokens=4),
        lambda m: p_tuning_params(m, 4),
        identity_at_init=False,
    ),
    Case(
        "p_tuning-mlp",
        "llama",
        PTuningConfig(num_virtual_tokens=3, encoder="mlp", encoder_hidden_size=8),
        lambda m: p_tuning_params(m, 3, "mlp", 8),
        identity_at_init=False,
    ),
    # No p-tuning x GPT-2 cell: GPT-2's dropout (on in _train_steps) moves the 5-step loss more than
    # a fresh LSTM encoder does, so "loss goes down" would be luck; test_prompt_methods covers GPT-2.
    Case(
        "p_tuning-1layer",
        "llama",
        PTuningConfig(num_virtual_tokens=3, encoder_hidden_size=6, encoder_num_layers=1),
        lambda m: p_tuning_params(m, 3, h=6, layers=1),
        identity_at_init=False,
    ),
    # zero-init gate: exactly the base output at init; L adapted layers of (len x D) prompt + 1 gate
    Case(
        "llama_adapter",
        "llama",
        LlamaAdapterConfig(adapter_len=3, adapter_layers=2),
        lambda m: 2 * (3 * hidden(m) + 1),
    ),
]
