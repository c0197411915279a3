"""Multitask prompt tuning through the data path and the loop: records' `task_ids` field
(data.task_field) reaches the model, so only the factors of the tasks present train."""

import pytest
import torch

from tests.tiny import tiny_llama, tiny_tokenizer
from tunesmith.config.schema import TrainConfig
from tunesmith.data import encode_records
from tunesmith.data.collate import collate
from tunesmith.data.packing import collate_packed
from tunesmith.errors import DataError
from tunesmith.methods import apply_method
from tunesmith.methods.multitask_prompt_tuning import MultitaskPromptTuningConfig
from tunesmith.training import sft_objective, train


def _examples(tasks):
    recs = [
        {"instruction": f"count {i}", "output": "x" * (1 + i % 3), "_source": f"t:{i}", **t}
        for i, t in enumerate(tasks)
    ]
    return encode_records(recs, tiny_tokenizer(), "auto", 64, task_field="task_ids")[0]


def test_records_task_ids_reach_the_batch_and_missing_ones_are_task_0():
    ex = _examples([{"task_ids": 2}, {}, {"task_ids": 1}])
    assert [e.task_id for e in ex] == [2, None, 1]
    assert collate(ex, pad_id=0)["task_ids"].tolist() == [2, 0, 1]
    assert "task_ids" not in collate(_examples([{}, {}]), pad_id=0)
    with pytest.raises(DataError, match="task_ids='a' is not a task id"):
        _examples([{"task_ids": "a"}])
    with pytest.raises(DataError, match="data.packing=false"):
        collate_packed(ex, pad_id=0, max_length=64)


def test_training_moves_only_the_factors_of_the_tasks_in_the_data(tmp_path):
    model = apply_method(
        tiny_llama(), MultitaskPromptTuningConfig(num_virtual_tokens=3, num_tasks=3)
    )
    enc = model.base_model.prompt_encoder.encoders["default"]
    before = {k: p.detach().clone() for k, p in enc.named_parameters()}
    ex = _examples([{"task_ids": i % 2} for i in range(8)])  # tasks 0 and 1 only
    cfg = TrainConfig(max_steps=3, batch_size=4, lr=1e-2, weight_decay=0.0, log_every=1, seed=1)
    train(model, ex, cfg, tmp_path, sft_objective(pad_id=0))
    for key in ("prefix_task_cols", "prefix_task_rows"):
        moved = (getattr(enc, key) - before[key]).flatten(1).abs().amax(1)  # per task
        assert moved[0] > 0 and moved[1] > 0 and moved[2] == 0, key
    assert not torch.equal(enc.prompt_embeddings, before["prompt_embeddings"])
