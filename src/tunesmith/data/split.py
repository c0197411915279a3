"""Seeded train/validation/test split of one record list (stratified when a label key is given)."""

import random
from collections import defaultdict
from typing import Optional


def split_records(
    records: list, fractions, seed: int, label_key: Optional[str] = None
) -> tuple[list, list, list]:
    """Shuffle with `seed` and cut into (train, val, test) by `fractions` (e.g. 0.7, 0.1, 0.2).

    With label_key, each label is split separately so every part keeps the class balance.
    """
    if label_key is None:
        groups = {None: list(records)}
    else:
        groups = defaultdict(list)
        for r in records:
            groups[r[label_key]].append(r)
    rng = random.Random(seed)
    parts = ([], [], [])
    for key in sorted(groups, key=str):
        items = groups[key]
        rng.shuffle(items)
        n_train = round(len(items) * fractions[0])
        n_val = round(len(items) * fractions[1])
        parts[0].extend(items[:n_train])
        parts[1].extend(items[n_train : n_train + n_val])
        parts[2].extend(items[n_train + n_val :])
    for part in parts:
        rng.shuffle(part)
    return parts
