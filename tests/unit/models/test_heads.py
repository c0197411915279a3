import pytest
import torch

from tests.tiny import tiny_bert, tiny_gpt2, tiny_llama
from tunesmith.methods import apply_method
from tunesmith.methods.lora import LoraConfig
from tunesmith.models.heads import SequenceClassifier, is_decoder, pool
from tunesmith.models.prefix_cache import FrozenPrefix, frozen_prefix_length, make_prefix
from tunesmith.utils.modules import freeze


def test_pool_reads_last_real_first_real_and_mean_tokens_under_any_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)  # values 0..7
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last").flatten().tolist() == [2, 7]
    assert pool(hidden, left, "last").flatten().tolist() == [3, 7]
    assert pool(hidden, left, "first").flatten().tolist() == [1, 4]
    assert pool(hidden, right, "mean").flatten().tolist() == [1, 5.5]


@pytest.mark.parametrize(
    "make, pooling", [(tiny_llama, "last"), (tiny_gpt2, "last"), (tiny_bert, "first")]
)
def test_classifier_reads_last_token_for_decoders_first_for_encoders(make, pooling):
    lm = make()
    clf = SequenceClassifier(lm, 3)
    assert clf.pooling == pooling and is_decoder(lm) == (pooling == "last")
    ids, mask = torch.randint(5, 100, (2, 6)), torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    logits = clf(ids, mask)
    assert logits.shape == (2, 3) and logits.dtype == torch.float32
    # padding does not change a decoder's prediction for the shorter row
    if pooling == "last":
        torch.testing.assert_close(clf(ids[1:, :4], mask[1:, :4]), logits[1:], atol=1e-5, rtol=1e-5)


def _train_top_block(clf):
    freeze(clf)
    for p in (
        list(clf.lm.model.layers[-1].parameters())
        + list(clf.lm.model.norm.parameters())
        + list(clf.head.parameters())
    ):
        p.requires_grad_(True)


def test_frozen_prefix_cache_is_exact_for_llama_and_refused_where_not():
    clf = SequenceClassifier(tiny_llama(), 2)
    _train_top_block(clf)
    assert frozen_prefix_length(clf, clf.backbone) == 1
    ids, mask = torch.randint(5, 100, (2, 7)), torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    prefix = make_prefix(clf, clf.backbone, (ids, mask))
    assert isinstance(prefix, FrozenPrefix) and prefix.k == 1
    clf.prefix = prefix
    torch.testing.assert_close(
        clf(hidden=prefix.capture(ids, mask), attention_mask=mask), clf(ids, mask)
    )
    gpt = SequenceClassifier(
        tiny_gpt2(), 2
    )  # GPT-2 adds position embeddings to inputs_embeds: not exact
    freeze(gpt)
    for p in gpt.lm.transformer.h[-1].parameters():
        p.requires_grad_(True)
    assert (
        frozen_prefix_length(gpt, gpt.backbone) == 1
        and make_prefix(gpt, gpt.backbone, (ids, mask)) is None
    )


def test_nothing_cached_when_anything_before_the_blocks_trains_and_whole_backbone_when_frozen():
    clf = SequenceClassifier(
        apply_method(tiny_llama(), LoraConfig(r=2, target_modules="all-linear")), 2
    )
    assert frozen_prefix_length(clf, clf.backbone) == 0
    clf = SequenceClassifier(tiny_llama(), 2)
    freeze(clf.lm)
    clf.lm.model.embed_tokens.weight.requires_grad_(True)
    assert frozen_prefix_length(clf, clf.backbone) == 0
    frozen = SequenceClassifier(tiny_gpt2(), 2)
    freeze(frozen.lm)
    prefix = make_prefix(frozen, frozen.backbone, None)
    ids, mask = torch.randint(5, 100, (1, 5)), torch.ones(1, 5, dtype=torch.long)
    assert prefix.whole
    torch.testing.assert_close(
        prefix.top(prefix.capture(ids, mask), mask),
        frozen.backbone(input_ids=ids, attention_mask=mask).last_hidden_state,
    )
