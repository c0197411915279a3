"""Load a language model for classification: a causal LM (via load_base_model) or a masked-LM encoder
(BERT, RoBERTa ...), chosen from the checkpoint's declared architecture."""

import json
import logging
from pathlib import Path

from ..errors import ModelLoadError
from ..utils.paths import read_text
from .attention import set_attention
from .frozen_weights import torch_dtype_of
from .loading import load_base_model

log = logging.getLogger(__name__)
CAUSAL_MARKERS = ("ForCausalLM", "LMHeadModel")


def load_language_model(name: str = "default", dtype: str = "float32", attention: str = "auto"):
    """(lm, tokenizer): a masked LM when the directory declares an encoder architecture (e.g.
    BertForMaskedLM), else a causal LM as load_base_model loads it."""
    if not _is_encoder_dir(name):
        return load_base_model(name, dtype, attention=attention)
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    torch_dtype = torch_dtype_of(dtype)
    try:
        lm = AutoModelForMaskedLM.from_pretrained(name, local_files_only=True, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"model.name {name!r}: cannot load it as a masked LM: {str(e).splitlines()[0]}"
        ) from None
    if tokenizer.pad_token is None:
        raise ModelLoadError(
            f"model.name {name!r}: the tokenizer has no pad token; encoders need one"
        )
    set_attention(lm, attention)
    log.info("loaded encoder %s (%s)", name, type(lm).__name__)
    return lm, tokenizer


def _is_encoder_dir(name: str) -> bool:
    config = Path(name) / "config.json"
    if not config.is_file():
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    try:
        data = json.loads(read_text(config, ModelLoadError))
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{config}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    archs = data.get("architectures") or []
    if any(marker in a for a in archs for marker in CAUSAL_MARKERS):
        return False
    return data.get("model_type") in MODEL_FOR_MASKED_LM_MAPPING_NAMES
