"""Matrix cases for full, selected, bitfit, adapter and sparse, with trainable counts written out
from each tiny model's config (tied weights count once).

Shapes: llama (no biases; q, o: h x h; k, v: h x kv*hd; gate, up, down: h x I; RMSNorm weight h),
GPT-2 (Conv1D with biases: c_attn h -> 3h, c_proj h -> h, c_fc h -> 4h, mlp.c_proj 4h -> h;
LayerNorm weight + bias), BERT (q, k, v, o: h -> h; intermediate h -> I; output I -> h; LayerNorm
weight + bias; MLM head: transform dense h -> h + LayerNorm, decoder tied to the word embeddings
plus a bias of V).
"""

from tests.unit.methods.matrix_support import Case
from tunesmith.methods.adapter import AdapterConfig
from tunesmith.methods.bitfit import BitfitConfig
from tunesmith.methods.full import FullConfig
from tunesmith.methods.selected import SelectedConfig
from tunesmith.methods.sparse import SparseConfig


def _dims(m):
    c = m.config
    return c.hidden_size, c.num_hidden_layers, c.vocab_size


# --- per-block and whole-model counts -------------------------------------------------------------
def llama_kv(m):
    c = m.config
    return c.num_key_value_heads * (
        c.hidden_size // c.num_attention_heads
    )  # k_proj / v_proj outputs


def llama_block(m):
    h, kv = m.config.hidden_size, llama_kv(m)
    return (
        2 * h * h + 2 * h * kv + 3 * h * m.config.intermediate_size + 2 * h
    )  # q, o; k, v; mlp; two RMSNorms


def llama_total(m):
    h, n_layers, vocab = _dims(m)
    return vocab * h + n_layers * llama_block(m) + h  # tied embedding/lm_head, blocks, final norm


def gpt2_mlp(m):
    h = m.config.hidden_size
    return (h * 4 * h + 4 * h) + (4 * h * h + h)  # c_fc, c_proj


def gpt2_total(m):
    h, n_layers, vocab = _dims(m)
    block = (
        2 * h + (h * 3 * h + 3 * h) + (h * h + h) + 2 * h + gpt2_mlp(m)
    )  # ln_1, c_attn, c_proj, ln_2, mlp
    return (
        vocab * h + m.config.n_positions * h + n_layers * block + 2 * h
    )  # wte (tied), wpe, blocks, ln_f


def bert_block(m):
    h, inter = m.config.hidden_size, m.config.intermediate_size
    return 4 * (h * h + h) + 2 * h + (h * inter + inter) + (inter * h + h) + 2 * h


def bert_head(m):
    h, _, vocab = _dims(m)
    return (
        (h * h + h) + 2 * h + vocab + vocab * h
    )  # transform dense + LayerNorm, bias, tied decoder weight


def bert_total(m):
    c = m.config
    h, n_layers, vocab = _dims(m)
    embeddings = (vocab + c.max_position_embeddings + c.type_vocab_size) * h + 2 * h
    return (
        embeddings + n_layers * bert_block(m) + bert_head(m) - vocab * h
    )  # decoder weight is the embedding


# --- bias counts ----------------------------------------------------------------------------------
def gpt2_biases(m):
    h, n_layers, _ = _dims(m)
    return (
        n_layers * (h + 3 * h + h + h + 4 * h + h) + h
    )  # ln_1, c_attn, c_proj, ln_2, c_fc, mlp.c_proj; ln_f


def bert_biases(m):
    h, n_layers, vocab = _dims(m)
    per_layer = (
        4 * h + h + m.config.intermediate_size + h + h
    )  # q k v o, LayerNorm, intermediate, output, LayerNorm
    return (
        h + n_layers * per_layer + h + h + vocab
    )  # embedding LayerNorm; blocks; head dense, LayerNorm, bias


# --- adapters: down (h x b + b) and up (b x h + h) per wrapped module -----------------------------
def adapter_params(m, reduction, per_layer):
    h, n_layers, _ = _dims(m)
    b = h // reduction
    return n_layers * per_layer * (2 * h * b + b + h)


CASES = [
    Case("full", "llama", FullConfig(), llama_total),
    Case("full", "gpt2", FullConfig(), gpt2_total),
    Case("full", "bert", FullConfig(), bert_total),
    # Last block + final norm + lm_head; lm_head is tied to the embedding, which therefore trains.
    Case(
        "selected",
        "llama",
        SelectedConfig(top_k_layers=1, modules=["norm", "lm_head"]),
        lambda m: (
            llama_block(m) + m.config.hidden_size + m.config.vocab_size * m.config.hidden_size
        ),
    ),
    Case(
        "selected",
        "gpt2",
        SelectedConfig(top_k_layers=0, modules=["ln_f", r"transformer\.h\.0\.mlp"]),
        lambda m: 2 * m.config.hidden_size + gpt2_mlp(m),
    ),
    Case(
        "selected",
        "bert",
        SelectedConfig(top_k_layers=1, modules=["cls"]),
        lambda m: bert_block(m) + bert_head(m),
    ),
    Case("bitfit", "gpt2", BitfitConfig(), gpt2_biases),
    Case("bitfit", "bert", BitfitConfig(), bert_biases),
    Case(
        "adapter-houlsby",
        "llama",
        AdapterConfig(placement="houlsby", reduction_factor=4),
        lambda m: adapter_params(m, 4, 2),
    ),
    Case(
        "adapter-pfeiffer",
        "gpt2",
        AdapterConfig(placement="pfeiffer", reduction_factor=2, non_linearity="gelu"),
        lambda m: adapter_params(m, 2, 1),
    ),
    Case(
        "adapter-parallel",
        "bert",
        AdapterConfig(placement="parallel", reduction_factor=4),
        lambda m: adapter_params(m, 4, 1),
    ),
    # Sparse: the matrix counts requires_grad parameters, i.e. the dense update D = in * out per
    # targeted layer (the entries that can still change are checked in test_sparse.py).
    Case(
        "sparse",
        "llama",
        SparseConfig(target_modules=["q_proj", "v_proj"]),
        lambda m: (
            m.config.num_hidden_layers * m.config.hidden_size * (m.config.hidden_size + llama_kv(m))
        ),
    ),
    Case(
        "sparse",
        "gpt2",
        SparseConfig(),  # all-linear: c_attn, attn c_proj, c_fc, mlp c_proj
        lambda m: m.config.num_hidden_layers * (3 + 1 + 4 + 4) * m.config.hidden_size**2,
    ),
    Case(
        "sparse",
        "bert",
        SparseConfig(target_modules=["query", "value"]),
        lambda m: m.config.num_hidden_layers * 2 * m.config.hidden_size**2,
    ),
]
