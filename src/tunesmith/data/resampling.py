"""Re-sampling an imbalanced training split through imbalanced-learn (`data.balance`).

Each entry of RESAMPLERS names an imblearn sampler built with imblearn's defaults (the minority
classes brought to the majority's count, or the majority cut to the minority's) and the run's seed.
`feature_space` says what it needs:

  False  it only picks examples (random over/under-sampling): it applies to the texts themselves,
         so every classification mode can use it (`resample_examples`)
  True   it makes new points between neighbours or measures distances (ROSE, SMOTE, ADASYN,
         cluster centroids, Tomek links, ENN, RENN): it needs a feature vector per example, so it
         applies only where the mode trains on feature vectors (`resample_features`; the modes
         with `ModeSpec.feature_space`, i.e. task.mode=features)

The older values `undersample` (before splitting) and `oversample` (after) are in
data/classification.py and need no imblearn.
"""

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class Resampler:
    make: Callable  # make(imblearn modules, seed) -> an imblearn sampler
    feature_space: bool
    help: str


def _over(m, seed, **kw):
    return m.over_sampling.RandomOverSampler(random_state=seed, **kw)


RESAMPLERS: dict[str, Resampler] = {
    "random_oversample": Resampler(
        lambda m, seed: _over(m, seed), False, "repeat minority examples at random (imblearn)"
    ),
    "random_undersample": Resampler(
        lambda m, seed: m.under_sampling.RandomUnderSampler(random_state=seed),
        False,
        "drop majority training examples at random (imblearn)",
    ),
    "rose": Resampler(
        lambda m, seed: _over(m, seed, shrinkage=1.0),
        True,
        "ROSE: minority copies plus Gaussian noise (RandomOverSampler, shrinkage=1)",
    ),
    "smote": Resampler(
        lambda m, seed: m.over_sampling.SMOTE(random_state=seed),
        True,
        "SMOTE: new minority points between a point and one of its 5 nearest neighbours",
    ),
    "adasyn": Resampler(
        lambda m, seed: m.over_sampling.ADASYN(random_state=seed),
        True,
        "ADASYN: like SMOTE, more new points where the minority is hard to learn",
    ),
    "cluster_centroids": Resampler(
        lambda m, seed: m.under_sampling.ClusterCentroids(random_state=seed),
        True,
        "prototype generation: the majority replaced by k-means centroids",
    ),
    "tomek": Resampler(
        lambda m, seed: m.under_sampling.TomekLinks(),
        True,
        "Tomek links: drop majority points in cross-class nearest-neighbour pairs",
    ),
    "enn": Resampler(
        lambda m, seed: m.under_sampling.EditedNearestNeighbours(),
        True,
        "ENN: drop majority points whose 3 nearest neighbours disagree with them",
    ),
    "renn": Resampler(
        lambda m, seed: m.under_sampling.RepeatedEditedNearestNeighbours(),
        True,
        "RENN: ENN repeated until nothing changes",
    ),
}


def needs_features(name: str) -> bool:
    """Whether data.balance=name works on feature vectors only (False for non-imblearn values)."""
    return name in RESAMPLERS and RESAMPLERS[name].feature_space


def resample_features(name: str, x: np.ndarray, y: np.ndarray, seed: int):
    """(x, y) after imblearn sampler `name`: x (N, F) features, y (N,) class ids."""
    sampler = RESAMPLERS[name].make(_imblearn(), seed)
    try:
        return sampler.fit_resample(x, y)
    except ValueError as e:  # e.g. fewer minority examples than SMOTE's neighbours
        raise ConfigError(
            f"data.balance={name} cannot re-sample this training split ({_counts(y)}): {e}"
        ) from None


def resample_examples(name: str, examples: list, seed: int) -> list:
    """The examples an index-picking sampler keeps (with repeats), in the sampler's order."""
    if RESAMPLERS[name].feature_space:
        raise ConfigError(f"data.balance={name} needs feature vectors, not texts")
    sampler = RESAMPLERS[name].make(_imblearn(), seed)
    index = np.arange(len(examples)).reshape(-1, 1)  # (N, 1): the sampler picks rows
    picked, _ = sampler.fit_resample(index, np.array([e.label for e in examples]))
    return [examples[i] for i in picked[:, 0]]


def _imblearn():
    try:
        import imblearn.over_sampling
        import imblearn.under_sampling
    except ImportError:
        raise ConfigError(
            "data.balance with an imbalanced-learn sampler needs imbalanced-learn: "
            "pip install 'tunesmith[classify]' (or pip install imbalanced-learn)"
        ) from None
    return imblearn


def _counts(y) -> str:
    return ", ".join(f"class {k}: {n}" for k, n in sorted(Counter(y.tolist()).items()))
