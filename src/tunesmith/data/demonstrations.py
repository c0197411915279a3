"""Choosing demonstrations for in-context learning (and LM-BFF prompts), on embedding matrices.

  random   k pool examples drawn at random (per input, seeded by the input text)
  similar  the k pool examples closest to the input (cosine), the closest one last, next to the input
  vote_k   Su et al. 2022 (selective annotation): a diverse, representative subset of the pool picked
           by votes on a k-NN graph; each input then takes its k closest examples from that subset
  mdl      Wu et al. 2023 (self-adaptive ICL): several candidate demonstration sets per input; the one
           whose prediction has the shortest expected code length (lowest label entropy) is used
Everything here is model-free: the LM-dependent part of MDL (the label probabilities of each
candidate) is passed in.
"""

import random
from typing import Optional, Sequence

import numpy as np


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(Na, Nb) cosine similarities."""
    return normalise(a) @ normalise(b).T


def text_rng(seed: int, text: str) -> random.Random:
    """An RNG seeded by the input itself, so an input gets the same random demonstrations in any order."""
    return random.Random(f"{seed}:{text}")


def random_demos(
    n_pool: int, k: int, rng: random.Random, exclude: Optional[int] = None
) -> list[int]:
    candidates = [i for i in range(n_pool) if i != exclude]
    return rng.sample(candidates, min(k, len(candidates)))


def similar_demos(
    sims: np.ndarray, k: int, exclude: Optional[int] = None, among: Optional[Sequence[int]] = None
) -> list[int]:
    """Indices of the k most similar pool entries (sims: (n_pool,)), least similar first."""
    allowed = np.array(list(among) if among is not None else range(len(sims)))
    allowed = allowed[allowed != exclude] if exclude is not None else allowed
    top = allowed[np.argsort(-sims[allowed], kind="stable")[:k]]
    return top[::-1].tolist()


def one_per_class(
    pool_labels: Sequence[int],
    n_classes: int,
    sims: Optional[np.ndarray],
    rng: random.Random,
    exclude: Optional[int] = None,
) -> list[tuple[int, int]]:
    """LM-BFF demonstrations: one (pool index, class) per class, the most similar of that class when
    sims is given, else a random one. Classes without a pool example are skipped."""
    demos = []
    for c in range(n_classes):
        members = [i for i, y in enumerate(pool_labels) if y == c and i != exclude]
        if not members:
            continue
        pick = similar_demos(sims, 1, among=members)[0] if sims is not None else rng.choice(members)
        demos.append((pick, c))
    return demos


def vote_k(embeddings: np.ndarray, budget: int, k: int = 10, rho: float = 10.0) -> list[int]:
    """Vote-k selection of `budget` indices (Su et al. 2022, graph stage only).

    Each example links to its k nearest neighbours. A candidate u collects a vote from every
    unselected v that has u among its neighbours, worth rho ** -(number of selected examples among
    v's neighbours); the top-voted u is selected, so dense regions are covered once, then others.
    """
    n = len(embeddings)
    budget = min(budget, n)
    sims = cosine(embeddings, embeddings)
    np.fill_diagonal(sims, -np.inf)
    neighbours = np.argsort(-sims, axis=1)[:, : min(k, n - 1)]  # (n, k): v -> its neighbours
    links = np.zeros((n, n), dtype=bool)
    links[np.repeat(np.arange(n), neighbours.shape[1]), neighbours.ravel()] = (
        True  # links[v, u]: u in N(v)
    )
    selected: list[int] = []
    covered = np.zeros(n)  # per v: selected examples among its neighbours
    for _ in range(budget):
        weight = rho**-covered
        weight[selected] = 0.0  # selected examples no longer vote
        votes = weight @ links  # (n,) votes for each u
        votes[selected] = -np.inf
        u = int(np.argmax(votes))
        selected.append(u)
        covered += links[:, u]
    return selected


def mdl_candidates(
    sims: np.ndarray, k: int, n_candidates: int, rng: random.Random, exclude: Optional[int] = None
) -> list[list[int]]:
    """Candidate demonstration sets for one input: the top-k most similar first, then random k-subsets
    of the 2k most similar (each ordered least similar first)."""
    near = similar_demos(sims, 2 * k, exclude)[::-1]  # most similar first
    candidates = [similar_demos(sims, k, exclude)]
    for _ in range(n_candidates - 1):
        subset = rng.sample(near, min(k, len(near)))
        candidates.append(sorted(subset, key=lambda i: sims[i]))
    return candidates


def mdl_choice(candidate_probs: np.ndarray) -> int:
    """Index of the candidate with the lowest label entropy (minimum description length).

    candidate_probs: (C, K) label distributions of one input under each candidate.
    """
    p = np.clip(candidate_probs, 1e-12, 1.0)
    return int(np.argmin(-(p * np.log(p)).sum(-1)))
