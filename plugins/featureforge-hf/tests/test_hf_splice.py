"""``source.splice(dictionary)``: the live model with the hook point replaced by a reconstruction."""

from __future__ import annotations

import collections

import pytest
import torch

from ffhf_dictionaries import Identity, Zero
from featureforge_hf import HFSource, summarize


@pytest.fixture(scope="module")
def held_out_texts(stdlib_sample):
    return stdlib_sample[200:206]


def test_identity_splice_leaves_encoder_outputs_unchanged_and_zero_changes_them(minilm, held_out_texts):
    with minilm.splice(Identity(384)) as live:
        assert live.kind == "encoder" and live.hook == "encoder.layer.3" and live.pooling == "mean"
        batch = next(live.batches(held_out_texts))
        clean = live(batch.input_ids, batch.attention_mask, replace="none")
        spliced = live(batch.input_ids, batch.attention_mask)
        assert torch.allclose(clean, spliced, atol=1e-6)
        sums = live.compare(batch)
    assert sums["cos_dist_dictionary"] == pytest.approx(0.0, abs=1e-5)
    assert sums["cos_dist_zero"] > 0.01
    assert summarize(sums)["embedding_score"] == pytest.approx(1.0, abs=1e-4)
    with minilm.splice(Zero(384)) as live:
        zeroed = live(batch.input_ids, batch.attention_mask)
        assert not torch.allclose(clean, zeroed, atol=1e-3)
    # The hook is gone once the block exits.
    with torch.inference_mode():
        again = minilm.loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    assert torch.allclose(again, clean, atol=1e-6)


def test_splice_replaces_only_stored_row_positions(minilm, held_out_texts):
    seen = []

    def spy(rows):
        seen.append(rows.shape[0])
        return rows

    with minilm.splice(None) as live:
        batch = next(live.batches(held_out_texts))
        live(batch.input_ids, batch.attention_mask, replace=spy)
    assert seen == [int(batch.token_mask.sum())]
    assert int(batch.token_mask.sum()) == int(batch.attention_mask.sum()) - 2 * batch.input_ids.shape[0]  # no [CLS]/[SEP]


def test_causal_lm_ce_and_kl_with_identity_and_zero(tiny_gpt2, held_out_texts):
    source = HFSource(model=tiny_gpt2, hook="transformer.h.0", context_size=48, batch_size=4)
    totals: collections.Counter = collections.Counter()
    with source.splice(Identity(32)) as live:
        assert live.kind == "causal-lm"
        for batch in live.batches(held_out_texts, max_sequences=8):
            logits = live(batch.input_ids, batch.attention_mask)
            assert logits.shape[:2] == batch.input_ids.shape
            totals.update(live.compare(batch))
    metrics = summarize(totals)
    assert metrics["tokens"] > 50
    assert metrics["ce_dictionary"] == pytest.approx(metrics["ce_clean"], abs=1e-5)
    assert metrics["kl_dictionary"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["ce_zero"] != pytest.approx(metrics["ce_clean"], abs=1e-4) and metrics["kl_zero"] > 0
    assert metrics["ce_loss_score"] == pytest.approx(1.0, abs=1e-3)


def test_held_out_batches_go_beyond_max_docs_and_refuse_an_empty_range(tiny_gpt2, short_docs_jsonl):
    from featureforge import BadInputError

    source = HFSource(model=tiny_gpt2, data=short_docs_jsonl, context_size=32, max_docs=2)
    with source.splice(None) as live:
        assert {int(d) for b in live.batches(start_doc=4) for d in b.doc_ids} == {4, 5}
        with pytest.raises(BadInputError, match="from document 6 on"):
            next(live.batches(start_doc=6))
