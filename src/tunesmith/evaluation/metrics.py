"""Generation metrics: exact match and contains on normalised text; ROUGE-1/2/L as the `rouge-score`
package computes them; BLEU and chrF through sacrebleu (the optional `metrics` extra).

GENERATION_METRICS maps each name `eval.metrics` accepts to a function (predictions, references)
-> {metrics.json key: value}. Exact match, contains and ROUGE are fractions in [0, 1]; BLEU and
chrF are on sacrebleu's 0-100 scale, corpus-level, one reference per prediction.
"""

import re
from collections import Counter

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def normalize(text: str) -> str:
    """Lower-case, trim and collapse whitespace (so trailing newlines do not count as errors)."""
    return re.sub(r"\s+", " ", text.strip().lower())


def exact_match(predictions: list[str], references: list[str]) -> float:
    pairs = list(zip(predictions, references, strict=True))
    return sum(normalize(p) == normalize(r) for p, r in pairs) / max(len(pairs), 1)


def contains_match(predictions: list[str], references: list[str]) -> float:
    pairs = list(zip(predictions, references, strict=True))
    return sum(normalize(r) in normalize(p) for p, r in pairs) / max(len(pairs), 1)


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's tokenizer without stemming: lower-case, runs of [a-z0-9] are the tokens."""
    return [t for t in _NON_ALNUM.sub(" ", text.lower()).split() if t]


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 over the pairs, equal to rouge_score's
    RougeScorer(["rouge1", "rouge2", "rougeL"]) fmeasure (no stemmer) averaged over pairs."""
    pairs = list(zip(predictions, references, strict=True))
    totals = Counter()
    for p, r in pairs:
        pred, ref = rouge_tokens(p), rouge_tokens(r)
        totals["rouge1"] += _ngram_f1(pred, ref, 1)
        totals["rouge2"] += _ngram_f1(pred, ref, 2)
        totals["rouge_l"] += _lcs_f1(pred, ref)
    n = max(len(pairs), 1)
    return {k: totals[k] / n for k in ("rouge1", "rouge2", "rouge_l")}


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 (longest common subsequence, Lin 2004) as rouge_score computes it."""
    return rouge(predictions, references)["rouge_l"]


def _f1(hits: int, n_pred: int, n_ref: int) -> float:
    precision, recall = hits / max(n_pred, 1), hits / max(n_ref, 1)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _ngram_f1(pred: list[str], ref: list[str], n: int) -> float:
    grams_p = Counter(tuple(pred[i : i + n]) for i in range(len(pred) - n + 1))
    grams_r = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
    hits = sum(min(c, grams_p[g]) for g, c in grams_r.items())
    return _f1(hits, sum(grams_p.values()), sum(grams_r.values()))


def _lcs_f1(pred: list[str], ref: list[str]) -> float:
    if not pred or not ref:
        return 0.0
    return _f1(_lcs_length(pred, ref), len(pred), len(ref))


def _lcs_length(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)  # one DP row: row[j] = LCS of a[:i], b[:j]
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenizer, exponential smoothing), 0-100."""
    return _sacrebleu().corpus_bleu(predictions, [references]).score


def chrf(predictions: list[str], references: list[str]) -> float:
    """Corpus chrF (sacrebleu defaults: character 6-grams, beta 2), 0-100."""
    return _sacrebleu().corpus_chrf(predictions, [references]).score


def _sacrebleu():
    from ..errors import ConfigError

    try:
        import sacrebleu
    except ImportError:
        raise ConfigError(
            "eval.metrics bleu and chrf need sacrebleu: pip install 'tunesmith[metrics]' "
            "(or pip install sacrebleu)"
        ) from None
    return sacrebleu


GENERATION_METRICS = {
    "exact_match": lambda p, r: {"exact_match": exact_match(p, r)},
    "contains": lambda p, r: {"contains": contains_match(p, r)},
    "rouge": rouge,
    "bleu": lambda p, r: {"bleu": bleu(p, r)},
    "chrf": lambda p, r: {"chrf": chrf(p, r)},
}


def check_available(names) -> None:
    """Raise ConfigError (with the pip command) when a metric in names lacks its package."""
    if {"bleu", "chrf"} & set(names):
        _sacrebleu()


def generation_metrics(names, predictions: list[str], references: list[str]) -> dict:
    """The metrics `names` (GENERATION_METRICS keys) of predictions against references."""
    scores = {}
    for name in names:
        scores.update(GENERATION_METRICS[name](predictions, references))
    return scores
