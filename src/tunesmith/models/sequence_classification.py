"""transformers' sequence-classification layout (`AutoModelForSequenceClassification`), both ways.

- `to_sequence_classification`: a (merged) causal LM + a scalar head -> e.g.
  LlamaForSequenceClassification (`score` (n, hidden), no bias), the backbone's weights shared.
- `load_sequence_classifier`: such a directory (or a PEFT SEQ_CLS adapter on one, as TRL's
  RewardTrainer writes) -> a module with SequenceClassifier's call: model(input_ids,
  attention_mask) -> float32 logits (B, n).

Notable: transformers pools at the rightmost token that is not `config.pad_token_id`, whatever the
attention mask says. When the tokenizer pads with EOS (SmolLM2 does), a text ending in EOS would
be read one token early, so the export picks a pad token that the chat template never writes.
"""

import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .frozen_weights import torch_dtype_of

log = logging.getLogger(__name__)


def is_sequence_classification_dir(path) -> bool:
    """True for a transformers directory whose config names a *ForSequenceClassification
    architecture, or a PEFT adapter directory with task_type SEQ_CLS."""
    path = Path(path)
    for name, key in (("config.json", "architectures"), ("adapter_config.json", "task_type")):
        try:
            value = json.loads((path / name).read_text()).get(key) or []
        except (OSError, ValueError):
            continue
        values = [value] if isinstance(value, str) else value
        if any(v == "SEQ_CLS" or str(v).endswith("ForSequenceClassification") for v in values):
            return True
    return False


def to_sequence_classification(lm: nn.Module, weight: torch.Tensor, tokenizer):
    """(sequence-classification model, tokenizer) with lm's backbone and `weight` (n, hidden) as
    its bias-free `score`; config.pad_token_id (and the tokenizer's pad token) never occur at the
    end of a rendered conversation, so transformers pools at the last real token."""
    from transformers import AutoModelForSequenceClassification

    config = lm.config.__class__.from_dict(lm.config.to_dict())
    config.num_labels = weight.shape[0]
    config.architectures = None
    config.pad_token_id = classification_pad_id(tokenizer)
    model = AutoModelForSequenceClassification.from_config(config, dtype=lm.dtype)
    missing = model.base_model.load_state_dict(lm.base_model.state_dict(), strict=False)
    score = getattr(model, "score", None)
    if missing.missing_keys or not isinstance(score, nn.Linear) or score.bias is not None:
        raise CheckpointError(
            f"{type(model).__name__} has no bias-free `score` head over {type(lm.base_model).__name__}; "
            f"this architecture cannot be exported as a sequence-classification model"
        )
    with torch.no_grad():
        score.weight.copy_(weight.to(score.weight.dtype))
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(config.pad_token_id)
    return model.eval(), tokenizer


def classification_pad_id(tokenizer) -> int:
    """The pad id a sequence-classification config gets: a special token that no text or chat can
    contain. Right padding is read by the attention mask in tunesmith, by the pad id in
    transformers, so the pad id must not be a token a conversation can end with (EOS) or contain."""
    probe = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    used = {tokenizer.eos_token_id, tokenizer.bos_token_id}
    if getattr(tokenizer, "chat_template", None):
        used |= set(
            tokenizer.apply_chat_template(probe, tokenize=True, return_dict=True)["input_ids"]
        )
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in used:
        return tokenizer.pad_token_id
    for token_id in sorted(tokenizer.all_special_ids):
        if token_id not in used:
            return token_id
    raise CheckpointError(
        "the tokenizer has no special token to pad with other than the ones a conversation uses "
        f"({sorted(i for i in used if i is not None)}); add a pad token to the base model's tokenizer"
    )


class HFSequenceClassifier(nn.Module):
    """A transformers *ForSequenceClassification model behind SequenceClassifier's call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids=None, attention_mask=None) -> torch.Tensor:
        """Logits (B, num_labels), float32, pooled as transformers pools them."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()


def load_sequence_classifier(path, dtype: str = "float32", base_model=None):
    """(HFSequenceClassifier in eval mode, tokenizer) of a sequence-classification directory, or of a
    PEFT SEQ_CLS adapter directory on `base_model` (default: the base it records). Raises
    CheckpointError when the directory cannot be read as one."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    torch_dtype = torch_dtype_of(dtype)
    adapter = (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()
    source = path
    if adapter:
        recorded = json.loads((path / "adapter_config.json").read_text()).get(
            "base_model_name_or_path"
        )
        source = Path(base_model or recorded or "")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(source),
            dtype=torch_dtype,
            local_files_only=True,
            **({"num_labels": 1} if adapter else {}),
        )
        tokenizer_dir = path if (path / "tokenizer_config.json").is_file() else source
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} cannot be loaded as a sequence-classification model ({str(e).splitlines()[0]})"
        ) from None
    if adapter:
        model = _with_peft_adapter(model, path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    log.info("loaded sequence-classification model %s (%s)", path, type(model).__name__)
    return HFSequenceClassifier(model).eval(), tokenizer


def _with_peft_adapter(model, path: Path):
    try:
        from peft import PeftModel
    except ImportError:
        raise CheckpointError(
            f"{path} is a PEFT adapter on a sequence-classification model; reading it needs peft: "
            f"pip install peft (or merge it first)"
        ) from None
    return PeftModel.from_pretrained(model, str(path)).merge_and_unload()
