"""Generation metrics: exact match and contains, on normalised text."""

import re


def normalize(text: str) -> str:
    """Lower-case, trim and collapse whitespace (so trailing newlines do not count as errors)."""
    return re.sub(r"\s+", " ", text.strip().lower())


def exact_match(predictions: list[str], references: list[str]) -> float:
    pairs = list(zip(predictions, references, strict=True))
    return sum(normalize(p) == normalize(r) for p, r in pairs) / max(len(pairs), 1)


def contains_match(predictions: list[str], references: list[str]) -> float:
    pairs = list(zip(predictions, references, strict=True))
    return sum(normalize(r) in normalize(p) for p, r in pairs) / max(len(pairs), 1)


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 over word tokens (longest common subsequence, Lin 2004), on normalised text."""
    pairs = list(zip(predictions, references, strict=True))
    return sum(_rouge_l_pair(normalize(p).split(), normalize(r).split()) for p, r in pairs) / max(
        len(pairs), 1
    )


def _rouge_l_pair(pred: list[str], ref: list[str]) -> float:
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)  # one DP row: row[j] = LCS of a[:i], b[:j]
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]
