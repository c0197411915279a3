"""Matrix cases for FourierFT: n_frequency spectral coefficients per targeted layer, whatever its
size. PEFT's default init draws the spectrum from N(0, 1), so the model does not start at the
base; init_weights=True (zeros) does."""

from tests.unit.methods.matrix_support import Case, linear_shapes
from tunesmith.methods.fourierft import FourierFTConfig

BERT_TARGETS = r".*\.(query|key|value|dense)"  # not the MLM decoder (tied to the embeddings)


def fourierft_params(model, targets, n):
    return n * len(linear_shapes(model, targets))


CASES = [
    Case(
        "fourierft",
        "llama",
        FourierFTConfig(n_frequency=64, target_modules=["q_proj", "v_proj", "down_proj"]),
        lambda m: fourierft_params(m, ["q_proj", "v_proj", "down_proj"], 64),
        identity_at_init=False,
    ),
    Case(
        "fourierft-zeros",
        "llama",
        FourierFTConfig(
            n_frequency=40, scaling=300.0, init_weights=True, target_modules="all-linear"
        ),
        lambda m: fourierft_params(m, "all-linear", 40),
    ),
    Case(
        "fourierft",
        "gpt2",
        FourierFTConfig(n_frequency=50, random_loc_seed=3, target_modules=["c_attn", "mlp.c_proj"]),
        lambda m: fourierft_params(m, ["c_attn", "mlp.c_proj"], 50),
        identity_at_init=False,
    ),
    Case(
        "fourierft",
        "bert",
        FourierFTConfig(n_frequency=64, init_weights=True, target_modules=BERT_TARGETS),
        lambda m: fourierft_params(m, BERT_TARGETS, 64),
    ),
]
