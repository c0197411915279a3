"""Work other than generation, run on the engine thread: embeddings, classification, scores."""

from contextlib import nullcontext

import torch

from ..data.classification import LabelledExample
from ..methods.lora import mixed_adapters
from .engine import Target


@torch.inference_mode()
def embed(target: Target, tokenizer, texts: list[str]) -> tuple[list[list[float]], int]:
    """(mean-pooled last hidden state of each text, prompt tokens): the feature-based approach."""
    enc = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    mask = enc["attention_mask"]  # (B, T)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    rows = [target.row] * len(texts)
    with mixed_adapters(target.model, rows) if target.mixed else nullcontext():
        out = target.model(
            input_ids=enc["input_ids"],
            attention_mask=mask,
            position_ids=positions,
            output_hidden_states=True,
        )
    h = out.hidden_states[-1].float()  # (B, T, C)
    m = mask[..., None].to(h.dtype)
    pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)  # (B, C)
    return pooled.tolist(), int(mask.sum())


def classify(predictor, texts: list[str]) -> list[dict]:
    """Per text: the label, its probability and every class's probability."""
    probs = predictor.predict_proba([LabelledExample(t, "") for t in texts])  # (N, K)
    out = []
    for row in probs:
        best = int(row.argmax())
        out.append(
            {
                "label": predictor.labels[best],
                "probability": float(row[best]),
                "probabilities": {lab: float(p) for lab, p in zip(predictor.labels, row)},
            }
        )
    return out


def score(scorer, prompts: list[str], responses: list[str]) -> list[float]:
    from ..recipes.reward import score as reward_score

    model, tokenizer = scorer
    return reward_score(model, tokenizer, prompts, responses)
