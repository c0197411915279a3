"""`default` in bfloat16 loads from a bf16 copy of the embedded model, equal to the cast weights."""

import torch

from tests.tiny import save_tiny_model
from tunesmith.models import loading


def test_default_bf16_loads_the_cast_weights_from_a_stored_copy(tmp_path, monkeypatch, cache_dir):
    fp32_dir = save_tiny_model(tmp_path / "tiny")
    monkeypatch.setattr(loading, "default_model_dir", lambda: fp32_dir)
    bf16, _ = loading.load_base_model("default", dtype="bfloat16")
    assert (loading.default_bf16_dir() / "model.safetensors").is_file()
    again, _ = loading.load_base_model("default", dtype="bfloat16")  # now from the stored copy
    ref, _ = loading.load_base_model(str(fp32_dir), dtype="float32")
    for (name, p), q, r in zip(bf16.named_parameters(), again.parameters(), ref.parameters()):
        assert p.dtype == torch.bfloat16, name
        assert torch.equal(p, r.to(torch.bfloat16)) and torch.equal(q, p), name
