"""Packing keeps results: packed and unpacked batches give the same loss and gradients."""

import pytest
import torch

from tests.tiny import tiny_gpt2, tiny_llama
from tunesmith.config.schema import DataConfig
from tunesmith.data import IGNORE, Example, collate
from tunesmith.data.packing import collate_packed, pack_rows
from tunesmith.data.sampling import epoch_order
from tunesmith.methods import apply_method
from tunesmith.methods.lora import LoraConfig
from tunesmith.objectives.sft import causal_lm_loss
from tunesmith.training import sft_objective


def _examples(lengths=(9, 23, 5, 14, 30, 7), prompt=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, 120, (n,), generator=gen).tolist()
        out.append(Example(ids, [IGNORE] * prompt + ids[prompt:]))
    return out


def _loss_and_grads(model, batch):
    loss, n = causal_lm_loss(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        batch["labels"],
        chunk_size=8,
        position_ids=batch.get("position_ids"),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    return loss, n, torch.autograd.grad(loss, params, allow_unused=True)


def _eager_llama():
    model = tiny_llama()
    model.set_attn_implementation(
        "eager"
    )  # transformers builds an additive float mask instead of sdpa's bool one
    return model


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2, _eager_llama])
@pytest.mark.parametrize("lora", [False, True])
def test_packed_and_unpacked_give_same_loss_and_gradients(build, lora):
    model = build()
    if lora:
        model = apply_method(model, LoraConfig(r=4, target_modules="all-linear"))
        with torch.no_grad():  # a non-zero B, so that A gets gradients too
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.1)
    examples = _examples()
    packed = collate_packed(examples, pad_id=0, max_length=40)
    assert packed["input_ids"].shape[0] < len(examples)  # really packed: several examples per row
    ref_loss, ref_n, ref_grads = _loss_and_grads(model, collate(examples, pad_id=0))
    loss, n, grads = _loss_and_grads(model, packed)
    assert n == ref_n
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        if r is not None:
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def test_packed_bf16_autocast_loss_close_to_unpacked():
    model, examples = tiny_llama(), _examples()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, _, _ = _loss_and_grads(model, collate(examples, 0))
        loss, _, _ = _loss_and_grads(model, collate_packed(examples, 0, 64))
    torch.testing.assert_close(loss, ref, atol=2e-2, rtol=2e-2)


def test_an_example_does_not_see_its_row_neighbours():
    model, examples = tiny_llama(), _examples((6, 10))
    alone = model(input_ids=torch.tensor([examples[1].input_ids])).logits[0]
    other = Example([7] * 6, [7] * 6)  # a different first neighbour
    for first in (examples[0], other):
        batch = collate_packed([first, examples[1]], 0, 16)
        logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        torch.testing.assert_close(logits[0, 6:], alone, atol=1e-5, rtol=1e-5)


def test_packed_rows_respect_capacity_and_mask_boundaries():
    examples = _examples((9, 23, 5, 14, 30, 7, 40), prompt=0)  # text-style: every token a label
    batch = collate_packed(examples, 0, 32)
    assert batch["input_ids"].shape[1] <= 40  # the 40-token example has a row of its own
    assert int(batch["attention_mask"].sum()) == sum(len(e.input_ids) for e in examples)
    starts = batch["position_ids"] == 0
    assert (batch["labels"][starts] == IGNORE).all()  # nothing predicts an example's first token
    assert int((batch["labels"] != IGNORE).sum()) == sum(len(e.input_ids) - 1 for e in examples)


def test_pack_rows_keeps_every_item_once():
    lengths = [5, 17, 3, 30, 12, 12, 1, 29]
    rows = pack_rows(lengths, 30)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 30 for row in rows)


def test_group_by_length_keeps_every_example_once_and_cuts_padding():
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(5, 300, (1000,), generator=gen).tolist()
    for seed in (0, 1):
        grouped = epoch_order(1000, 8, seed, lengths)
        assert sorted(grouped) == list(range(1000))
        assert grouped == epoch_order(1000, 8, seed, lengths)  # deterministic for a seed
    assert epoch_order(1000, 8, 0, lengths) != epoch_order(1000, 8, 1, lengths)

    def padded(order):
        return sum(8 * max(lengths[i] for i in order[s : s + 8]) for s in range(0, 1000, 8))

    assert padded(epoch_order(1000, 8, 0, lengths)) < 0.6 * padded(epoch_order(1000, 8, 0))


def test_grouping_by_length_with_strata_keeps_classes_mixed_in_every_batch():
    # Spam-like data: class 1 is always longer than class 0, so length alone sorts by class.
    gen = torch.Generator().manual_seed(2)
    strata = [i % 2 for i in range(512)]
    lengths = [
        int(n) + 100 * s for n, s in zip(torch.randint(5, 60, (512,), generator=gen), strata)
    ]
    order = epoch_order(512, 8, 0, lengths, strata)
    assert sorted(order) == list(range(512))
    assert order == epoch_order(512, 8, 0, lengths, strata)
    batches = [order[s : s + 8] for s in range(0, 512, 8)]
    # Each window of 32 batches holds the classes about half and half (a random draw).
    assert all(3 <= sum(strata[i] for i in batch) <= 5 for batch in batches)
    by_length = epoch_order(512, 8, 0, lengths)
    assert sum(len({strata[i] for i in by_length[s : s + 8]}) == 1 for s in range(0, 512, 8)) > 60

    def padding(order, stratum):  # within a class, grouped batches still carry little padding
        rows = [
            [lengths[i] for i in order[s : s + 8] if strata[i] == stratum] for s in range(0, 512, 8)
        ]
        return sum(len(r) * max(r) - sum(r) for r in rows)

    random_order = epoch_order(512, 8, 0)
    assert padding(order, 0) < 0.3 * padding(random_order, 0)


def test_packing_and_grouping_are_off_by_default():
    cfg = DataConfig()
    assert cfg.packing is False and cfg.group_by_length is False


def _train_losses(tmp_path, data_cfg, examples):
    import json

    from tunesmith.config.schema import TrainConfig
    from tunesmith.data.packing import batching
    from tunesmith.training import train

    model = apply_method(tiny_llama(), LoraConfig(r=4, target_modules="all-linear"))
    cfg = TrainConfig(max_steps=4, batch_size=4, lr=1e-2, log_every=1, seed=3)
    train(model, examples, cfg, tmp_path, sft_objective(0, **batching(data_cfg, examples, 0)))
    return [
        json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]


def test_training_with_packing_follows_the_unpacked_run(tmp_path):
    examples = _examples(tuple(5 + (7 * i) % 29 for i in range(16)))
    ref = _train_losses(tmp_path / "a", DataConfig(), examples)
    packed = _train_losses(tmp_path / "b", DataConfig(packing=True, max_length=64), examples)
    assert len(ref) == 4 and ref[-1] < ref[0]
    torch.testing.assert_close(torch.tensor(packed), torch.tensor(ref), atol=1e-4, rtol=1e-4)
    grouped = _train_losses(tmp_path / "c", DataConfig(group_by_length=True), examples)
    assert len(grouped) == 4 and all(loss == loss for loss in grouped)


def test_packing_with_a_prompt_based_method_is_an_error():
    from tunesmith.data.packing import batching
    from tunesmith.errors import ConfigError

    with pytest.raises(ConfigError, match="data.packing"):
        batching(DataConfig(packing=True), _examples(), 0, prompt_based=True)
