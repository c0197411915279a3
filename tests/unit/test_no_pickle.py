"""No code under src/ may unpickle: a checkpoint or model file from elsewhere must never run code."""

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
# Unpickling entry points: pickle itself, torch.load's pickle mode, numpy's pickle mode.
FORBIDDEN = re.compile(r"pickle\.loads?\b|weights_only\s*=\s*False|allow_pickle\s*=\s*True")


def test_no_unpickling_under_src():
    hits = [
        f"{path.relative_to(SRC.parent)}:{n}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert SRC.is_dir() and not hits, (
        "unpickling found (use safetensors/JSON instead):\n" + "\n".join(hits)
    )
