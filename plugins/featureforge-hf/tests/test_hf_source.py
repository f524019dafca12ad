"""The ``hf`` source in-process: hook capture, early stop, gradients, sharding, resuming, data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import featureforge as ff
from featureforge_hf import HFSource


def collect(batches) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {}
    for batch in batches:
        for key, value in batch.items():
            parts.setdefault(key, []).append(value.float().numpy() if value.is_floating_point() else value.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def test_default_source_is_minilm_at_its_middle_block_on_stdlib_text(minilm):
    assert minilm.hook_name == "encoder.layer.3" and minilm.d_in == 384
    rows = collect(minilm.stream())
    assert rows["acts"].shape[1] == 384 and len(rows["acts"]) == len(rows["token_ids"]) > 50
    assert not np.isin(rows["token_ids"], [0, 101, 102]).any()
    assert set(rows["doc_ids"].tolist()) == {0, 1, 2, 3}
    assert "python-stdlib" in minilm.provenance()["data"]


@pytest.mark.parametrize("site,index", [("output", 4), ("input", 3)])
def test_early_stop_gives_the_acts_of_a_full_forward(minilm, site, index):
    source = HFSource(site=site, max_docs=4, context_size=64)
    windows = list(source.windows(source.documents()))[:6]
    ids, mask = source.loaded.pad([w.ids for w in windows])
    assert (mask == 0).any()  # padding in the batch
    with torch.inference_mode():
        early = source.loaded.capture(source.site, ids, mask)
        full = source.loaded.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[index]
    assert torch.equal(early, full)


def test_early_stop_does_not_run_later_layers(minilm):
    ran = []
    handle = minilm.loaded.model.encoder.layer[4].register_forward_hook(lambda *a: ran.append(1))
    try:
        next(iter(minilm.stream()))
    finally:
        handle.remove()
    assert ran == []


def test_include_special_tokens_keeps_cls_and_sep_but_never_padding(minilm):
    source = HFSource(max_docs=4, context_size=64, batch_size=4, include_special_tokens=True)
    assert source.options_dict() != minilm.options_dict()
    rows = collect(source.stream())
    plain = collect(minilm.stream())
    assert np.isin(rows["token_ids"], [101, 102]).any() and not np.isin(rows["token_ids"], [0]).any()
    assert len(rows["acts"]) == len(plain["acts"]) + 2 * int((rows["token_ids"] == 101).sum())


def test_grads_equal_autograd_of_the_next_token_loss(tiny_gpt2, short_docs_jsonl):
    """grads=true on a causal LM: d(summed next-token CE)/d(block output), against plain autograd."""
    from transformers import AutoModelForCausalLM

    source = HFSource(model=tiny_gpt2, data=short_docs_jsonl, hook="transformer.h.0", grads=True, max_docs=3, context_size=48, batch_size=3)
    assert source.columns["grads"] == "float32"
    rows = collect(source.stream())
    assert rows["grads"].shape == rows["acts"].shape
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    windows = list(source.windows(source.documents()))
    checked = 0
    for window in windows:
        ids = torch.tensor([window.ids])
        out = model(ids, output_hidden_states=True)
        hidden = out.hidden_states[1]  # output of transformer.h.0
        hidden.retain_grad()
        loss = torch.nn.functional.cross_entropy(out.logits[0, :-1], ids[0, 1:], reduction="sum")
        loss.backward()
        keep = torch.tensor(window.keep)
        # Rows of this window: same doc, and the token ids at the kept positions, in order.
        mine = np.flatnonzero(rows["doc_ids"] == window.doc_id)
        want_tokens = ids[0][keep].numpy()
        for start in range(0, len(mine) - len(want_tokens) + 1):
            span = mine[start : start + len(want_tokens)]
            if np.array_equal(rows["token_ids"][span], want_tokens) and np.array_equal(rows["positions"][span], np.flatnonzero(keep.numpy())):
                np.testing.assert_allclose(rows["acts"][span], hidden[0][keep].detach().numpy(), rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(rows["grads"][span], hidden.grad[0][keep].numpy(), rtol=1e-4, atol=1e-6)
                checked += 1
                break
    assert checked == len(windows) > 1


def test_bos_of_a_causal_lm_is_not_stored(tiny_gpt2):
    source = HFSource(model=tiny_gpt2, max_docs=2, context_size=32)
    assert source.loaded.prefix == (source.loaded.tokenizer.bos_token_id,)
    assert source.hook_name == "transformer.h.1"
    rows = collect(source.stream())
    assert rows["positions"].min() == 1 and source.loaded.tokenizer.bos_token_id not in set(rows["token_ids"].tolist())


def test_hook_relative_to_the_base_model_is_accepted(tiny_gpt2):
    assert HFSource(model=tiny_gpt2, hook="h.0", context_size=32).hook_name == "transformer.h.0"


def test_skip_rows_resumes_exactly_where_the_rows_left_off(tiny_gpt2, short_docs_jsonl):
    source = HFSource(model=tiny_gpt2, data=short_docs_jsonl, context_size=24, batch_size=2)
    full = collect(source.stream())
    assert len(full["acts"]) > 200  # several groups of 16 windows
    for skip in (0, 1, 37, 150, len(full["acts"]) - 5):
        rest = collect(source.stream(skip_rows=skip))
        for key in full:
            np.testing.assert_array_equal(rest[key], full[key][skip:], err_msg=f"{key} after skipping {skip}")


def test_max_rows_stops_the_stream_and_cuts_its_last_forward_pass(tiny_gpt2, short_docs_jsonl):
    source = HFSource(model=tiny_gpt2, data=short_docs_jsonl, context_size=24, batch_size=8)
    full = collect(source.stream())
    seen: list[int] = []
    handle = source.loaded.model.register_forward_pre_hook(lambda m, a, k: seen.append(k["input_ids"].shape[0]), with_kwargs=True)
    try:
        for skip, limit in ((0, 9), (0, 100), (37, 50), (5, len(full["acts"]))):
            seen.clear()
            part = collect(source.stream(skip_rows=skip, max_rows=limit))
            assert len(part["acts"]) >= min(limit, len(full["acts"]) - skip)
            assert len(part["acts"]) < limit + 24  # at most one window past the limit
            for key in full:  # the same values as the uncut stream's, bit for bit
                np.testing.assert_array_equal(part[key], full[key][skip : skip + len(part[key])], err_msg=f"{key} skip {skip} max {limit}")
            if limit == 9:
                assert seen == [1], seen  # one window of the first batch of 8, not the whole batch
    finally:
        handle.remove()


def test_cache_asks_the_source_for_no_more_rows_than_it_stores(tiny_gpt2, short_docs_jsonl, tmp_path):
    opts = {"model": tiny_gpt2, "data": short_docs_jsonl, "context_size": 24, "batch_size": 8}
    cut = ff.cache("hf", opts, store=tmp_path / "cut.zarr", rows=50, rows_per_chunk=16, progress=False)
    whole = collect(HFSource(**opts).stream())
    assert cut.rows == 50
    # The stored rows are the stream's first 50 in the write-shuffled order: match them by their values.
    stored = np.lexsort(cut.read(0, 50, "acts").T)
    first = np.lexsort(whole["acts"][:50].T)
    np.testing.assert_array_equal(cut.read(0, 50, "acts")[stored], whole["acts"][:50][first])
    np.testing.assert_array_equal(cut.read(0, 50, "token_ids")[stored], whole["token_ids"][:50][first])


def test_documents_are_sharded_round_robin_across_writers(tiny_gpt2, short_docs_jsonl):
    source = HFSource(model=tiny_gpt2, data=short_docs_jsonl, context_size=32)
    shards = [collect(source.stream(rank, 3)) for rank in range(3)]
    for rank, rows in enumerate(shards):
        assert set(rows["doc_ids"].tolist()) == {i for i in range(6) if i % 3 == rank}
    assert sum(len(r["acts"]) for r in shards) == len(collect(source.stream())["acts"])


def test_cache_api_writes_grads_with_the_token_columns(tiny_gpt2, short_docs_jsonl, tmp_path):
    opts = {"model": tiny_gpt2, "data": short_docs_jsonl, "grads": True, "context_size": 32, "batch_size": 4}
    store = ff.cache("hf", opts, store=tmp_path / "s.zarr", rows=400, rows_per_chunk=64, progress=False)
    assert set(store.columns) == {"acts", "grads", "token_ids", "doc_ids", "seq_ids", "positions"}
    assert store.rows == 400
    np.testing.assert_array_equal(store.read(0, 400, "grads").shape, (400, 32))


def test_bfloat16_forward(minilm):
    source = HFSource(max_docs=2, context_size=32, dtype="bfloat16")
    batch = next(iter(source.stream()))
    assert batch["acts"].dtype == torch.bfloat16 and torch.isfinite(batch["acts"].float()).all()


# -- data -------------------------------------------------------------------------------------
def texts(source: HFSource) -> list[str]:
    return [t for _, t in source.documents()]


def test_txt_jsonl_parquet_folder_and_glob_inputs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("first paragraph\nstill first\n\nsecond paragraph\n")
    (folder / "b.jsonl").write_text(json.dumps({"body": "from jsonl"}) + "\n\n" + json.dumps({"body": "  "}) + "\n")
    pq.write_table(pa.table({"body": ["from parquet", None]}), folder / "c.parquet")
    (folder / "ignored.csv").write_text("x,y\n")
    assert texts(HFSource(data=str(folder / "a.txt"), seed=None)) == ["first paragraph\nstill first", "second paragraph"]
    assert texts(HFSource(data=str(folder / "b.jsonl"), text_field="body", seed=None)) == ["from jsonl"]
    assert texts(HFSource(data=str(folder / "c.parquet"), text_field="body", seed=None)) == ["from parquet"]
    both = texts(HFSource(data=str(folder), text_field="body", seed=None))
    assert both == ["first paragraph\nstill first", "second paragraph", "from jsonl", "from parquet"]
    assert texts(HFSource(data=str(folder / "*.txt"), seed=None)) == both[:2]
    assert sorted(texts(HFSource(data=str(folder), text_field="body", seed=1))) == sorted(both)
    assert texts(HFSource(data=str(folder), text_field="body", seed=None, max_docs=3)) == both[:3]


def test_unreadable_data_is_refused_in_one_line(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ff.BadInputError, match="not UTF-8"):
        texts(HFSource(data=str(latin)))
    table = tmp_path / "t.parquet"
    table.write_bytes(b"not parquet at all")
    with pytest.raises(ff.BadInputError, match="not a readable parquet"):
        texts(HFSource(data=str(table)))
    with pytest.raises(ff.BadInputError, match="matches no"):
        HFSource(data=str(tmp_path / "*.jsonl"))
    with pytest.raises(ff.BadInputError, match="does not exist"):
        HFSource(data=str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(ff.BadInputError, match="line 2 is not JSON"):
        texts(HFSource(data=str(bad)))
    with pytest.raises(ff.BadInputError, match="no text field 'body'"):
        texts(HFSource(data=str(bad), text_field="body"))


def test_stdlib_text_is_deterministic_and_splits_top_level_definitions():
    from featureforge_hf._data import split_python_source

    parts = split_python_source('"""Doc."""\nimport os\n\n\ndef f():\n    pass\n\n@dec\nclass C:\n\n    def m(self):\n        pass\n')
    assert parts == ['"""Doc."""\nimport os', "def f():\n    pass", "@dec\nclass C:\n\n    def m(self):\n        pass"]
    a = HFSource(max_docs=50)
    assert texts(a) == texts(HFSource(max_docs=50)) and len(texts(a)) == 50


def test_datasets_saved_to_disk_and_an_unreachable_dataset_name(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": ["one doc", "", "two doc"]})})
    ds.save_to_disk(str(tmp_path / "ds"))
    assert texts(HFSource(data=str(tmp_path / "ds"), text_field="content", seed=None)) == ["one doc", "two doc"]
    with pytest.raises(ff.BadInputError, match="no split 'test'"):
        texts(HFSource(data=str(tmp_path / "ds"), text_field="content", split="test"))
    with pytest.raises(ff.BadInputError, match="could not be loaded"):
        texts(HFSource(data="nobody/no-such-dataset"))


def test_interrupted_cache_resumes_to_the_same_store(tiny_gpt2, short_docs_jsonl, tmp_path, monkeypatch):
    """A writer killed after some chunks continues at its marker; the result equals an uninterrupted run."""
    opts = {"model": tiny_gpt2, "data": short_docs_jsonl, "context_size": 24, "batch_size": 2}
    # write-shuffle windows of 160 rows: 2.5 chunks, so windows and chunks cross
    whole = ff.cache("hf", opts, store=tmp_path / "whole.zarr", rows=600, rows_per_chunk=64, write_shuffle_rows=160, progress=False)
    calls = {"n": 0}
    real = HFSource._run_batch

    def crash_after_some_batches(self, batch):
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt("killed")
        return real(self, batch)

    monkeypatch.setattr(HFSource, "_run_batch", crash_after_some_batches)
    with pytest.raises(KeyboardInterrupt):
        ff.cache("hf", opts, store=tmp_path / "resumed.zarr", rows=600, rows_per_chunk=64, write_shuffle_rows=160, progress=False)
    partial = ff.open_store(tmp_path / "resumed.zarr")
    assert 0 < partial.rows < 600
    monkeypatch.setattr(HFSource, "_run_batch", real)
    resumed = ff.cache("hf", opts, store=tmp_path / "resumed.zarr", rows=600, rows_per_chunk=64, write_shuffle_rows=160, progress=False)
    assert resumed.rows == whole.rows == 600
    for column in ("acts", "token_ids", "doc_ids", "seq_ids", "positions"):
        np.testing.assert_array_equal(resumed.read(0, 600, column), whole.read(0, 600, column))
