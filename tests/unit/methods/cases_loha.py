"""Matrix cases for LoHa: four factors per targeted (in, out) layer, W1a, W2a: out x r and
W1b, W2b: r x in, so 2r(in + out) parameters each."""

from tests.unit.methods.matrix_support import Case, linear_shapes
from tunesmith.methods.loha import LohaConfig


def loha_params(model, targets, r):
    return sum(2 * r * (i + o) for i, o in linear_shapes(model, targets))


BERT_TARGETS = r".*\.(query|key|value|dense)"

CASES = [
    Case(
        "loha",
        "llama",
        LohaConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
        lambda m: loha_params(m, ["q_proj", "v_proj", "down_proj"], 4),
    ),
    # GPT-2's Conv1D layers store W transposed; the update is built (out, in) and transposed.
    Case(
        "loha",
        "gpt2",
        LohaConfig(r=2, alpha=4, target_modules=["c_attn", "mlp.c_proj"]),
        lambda m: loha_params(m, ["c_attn", "mlp.c_proj"], 2),
    ),
    # Every linear layer but BERT's MLM decoder (all-linear would take it, and its weight is the
    # tied word embedding, so merging into it would change the input embeddings too).
    Case(
        "loha",
        "bert",
        LohaConfig(r=2, target_modules=BERT_TARGETS),
        lambda m: loha_params(m, BERT_TARGETS, 2),
    ),
]
