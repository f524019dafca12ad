"""ShuffledReader on real Zarr stores: every committed row once per epoch, rank splits, exact cursor
resume (across epochs too), seeds and epochs, dtypes, small buffers and partial stores."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from storehelpers import read_epoch, row_counter

import featureforge as ff

ROWS, RPC = 5000, 256  # 20 chunks, the last one holding 136 rows
SYNTH = {"d_in": 16, "n_features": 64, "seed": 1}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("reader") / "s.zarr"
    return ff.cache("synthetic", SYNTH, store=path, rows=ROWS, rows_per_chunk=RPC, progress=False)


@pytest.fixture(scope="module")
def all_rows(store):
    return store.read(0, ROWS)


def test_each_row_once_per_epoch(store, all_rows):
    reader = store.loader(batch_size=300, buffer_rows=1024)
    assert len(reader) == 17
    for epoch in range(2):
        batches = list(reader)
        assert [len(b["acts"]) for b in batches] == [300] * 16 + [200]
        assert all(b["acts"].dtype == torch.float32 and b["acts"].shape[1] == 16 for b in batches)
        got = np.concatenate([b["acts"].numpy() for b in batches])
        assert row_counter(got) == row_counter(all_rows)
        assert reader.state_dict()["epoch"] == epoch + 1


def test_rows_are_shuffled_across_chunks(store, all_rows):
    got = read_epoch(store.loader(batch_size=500, buffer_rows=2048))
    position = {row.tobytes(): i for i, row in enumerate(all_rows)}
    first_batch_chunks = {position[row.tobytes()] // RPC for row in got[:500]}
    assert len(first_batch_chunks) > 2  # one batch mixes rows of several chunks
    assert not np.array_equal(got, all_rows)


def test_drop_last(store):
    reader = store.loader(batch_size=300, drop_last=True)
    assert len(reader) == 16
    assert [len(b["acts"]) for b in reader] == [300] * 16


def test_ranks_are_disjoint_and_complete(store, all_rows):
    for epoch in (0, 1):
        parts = []
        for rank in (0, 1):
            reader = store.loader(batch_size=256, rank=rank, world_size=2, buffer_rows=512, seed=5)
            reader.set_epoch(epoch)
            parts.append(row_counter(read_epoch(reader)))
        assert not (parts[0] & parts[1]), "a row was given to both ranks"
        assert parts[0] + parts[1] == row_counter(all_rows)
        assert abs(sum(parts[0].values()) - sum(parts[1].values())) <= RPC  # whole chunks each


def _forever(reader):
    while True:
        yield from reader


def _raw(batch):
    return batch["acts"].numpy().tobytes()


@pytest.mark.parametrize("k", [0, 3, 15, 16, 17, 18, 30])
def test_restored_cursor_continues_the_identical_sequence(store, k):
    """17 batches per epoch: k=16 stops before the short last batch, 17 right after it (on the
    epoch boundary), 18 and 30 inside epoch 1."""
    settings = dict(batch_size=300, buffer_rows=768, seed=11)
    reference = [_raw(b) for b in itertools.islice(_forever(store.loader(**settings)), 45)]
    first = store.loader(**settings)
    stream = _forever(first)
    head = [_raw(b) for b in itertools.islice(stream, k)]
    assert head == reference[:k]
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint keeps
    resumed = store.loader(**settings)
    resumed.load_state_dict(state)
    tail = [_raw(b) for b in itertools.islice(_forever(resumed), 45 - k)]
    assert tail == reference[k:]


def test_cursor_from_another_seed_is_refused(store):
    reader = store.loader(batch_size=300, seed=1)
    with pytest.raises(ff.BadInputError, match="another seed or world size"):
        reader.load_state_dict(store.loader(batch_size=300, seed=2).state_dict())


def test_seeds_and_epochs_change_the_order(store, all_rows):
    def order(seed, epoch):
        reader = store.loader(batch_size=1000, seed=seed, buffer_rows=1024)
        reader.set_epoch(epoch)
        return read_epoch(reader)

    a, b, c = order(0, 0), order(1, 0), order(0, 1)
    assert not np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(b, c)
    for x in (a, b, c):
        assert row_counter(x) == row_counter(all_rows)
    np.testing.assert_array_equal(a, order(0, 0))  # deterministic


@pytest.mark.parametrize("dtype,torch_dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_half_precision_stores_yield_their_dtype(tmp_path, dtype, torch_dtype):
    store = ff.cache("synthetic", SYNTH, store=tmp_path / "h.zarr", rows=1500, rows_per_chunk=256, dtype=dtype, progress=False)
    batches = list(store.loader(batch_size=400, buffer_rows=512))
    assert all(b["acts"].dtype == torch_dtype for b in batches)
    got = torch.cat([b["acts"] for b in batches])
    exact = torch.from_numpy(ff.make_source("synthetic", SYNTH).rows(0, 1500)["acts"])
    expected = exact.to(torch_dtype)
    view = torch.int16
    assert row_counter(got.view(view).numpy()) == row_counter(expected.view(view).numpy())


def test_buffer_smaller_than_a_chunk(store, all_rows):
    reader = store.loader(batch_size=64, buffer_rows=100, prefetch=2, io_threads=1)
    got = read_epoch(reader)
    assert row_counter(got) == row_counter(all_rows)


def test_batch_larger_than_the_store(store, all_rows):
    batches = list(store.loader(batch_size=100_000, buffer_rows=512))
    assert len(batches) == 1 and row_counter(batches[0]["acts"].numpy()) == row_counter(all_rows)


class _Counting(ff.ActivationSource):
    """Rows whose first value is the row index, with matching token ids."""

    name = "counting"

    def __init__(self, n_rows=2000, fail_at=None, stream_rows=None):
        super().__init__()
        self._n, self._fail_at, self._stream_rows = n_rows, fail_at, stream_rows

    @property
    def d_in(self):
        return 4

    @property
    def n_rows(self):
        return self._n

    @property
    def columns(self):
        return {"token_ids": "int64"}

    def _make(self, start, stop):
        idx = np.arange(start, stop)
        acts = np.stack([idx, idx * 2, -idx, np.ones_like(idx)], axis=1).astype(np.float32)
        return {"acts": acts, "token_ids": idx.astype(np.int64) + 10_000}

    def rows(self, start, stop):
        if self._fail_at is not None and stop > self._fail_at:
            raise RuntimeError("source crashed")
        return self._make(start, stop)


class _Stream(_Counting):
    name = "counting-stream"
    rows = ff.ActivationSource.rows  # no random access: the writer streams

    def stream(self, rank=0, world_size=1, skip_rows=0, max_rows=None):
        assert world_size == 1
        for start in range(skip_rows, self._stream_rows, 300):
            yield self._make(start, min(start + 300, self._stream_rows))


def test_extra_columns_stay_aligned_with_rows(tmp_path):
    store = ff.cache(_Counting(), store=tmp_path / "c.zarr", rows_per_chunk=256, progress=False)
    reader = store.loader(batch_size=333, columns=("acts", "token_ids"), buffer_rows=512)
    seen = []
    for batch in reader:
        assert batch["token_ids"].dtype == torch.int64
        idx = batch["acts"][:, 0].long()
        assert torch.equal(batch["token_ids"], idx + 10_000)
        seen.append(idx)
    assert sorted(torch.cat(seen).tolist()) == list(range(2000))


def test_store_from_a_stream_that_ended_early_yields_only_its_rows(tmp_path):
    source = _Stream(n_rows=None, stream_rows=1100)
    store = ff.cache(source, store=tmp_path / "s.zarr", rows=2000, rows_per_chunk=256, progress=False)
    assert store.complete and store.rows == 1100 and store.rows_allocated == 2000
    assert store.committed_chunks()[-1].rows == 1100 - 4 * 256
    batches = list(store.loader(batch_size=128, columns=("acts", "token_ids"), buffer_rows=512))
    idx = torch.cat([b["acts"][:, 0] for b in batches]).long()
    assert sorted(idx.tolist()) == list(range(1100))  # no zero-filled row of the unwritten tail
    assert torch.equal(torch.cat([b["token_ids"] for b in batches]), idx + 10_000)
    assert store.normalisation()["rows"] == 1100


def test_store_of_a_crashed_writer_yields_only_committed_rows(tmp_path):
    path = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError, match="source crashed"):
        ff.cache(_Counting(fail_at=1500), store=path, rows_per_chunk=256, progress=False)
    store = ff.open_store(path)
    assert store.rows == 5 * 256 and not store.complete
    idx = torch.cat([b["acts"][:, 0] for b in store.loader(batch_size=100, buffer_rows=256)]).long()
    assert sorted(idx.tolist()) == list(range(5 * 256))
    # Rerunning with a working source finishes the store.
    done = ff.cache(_Counting(), store=path, rows_per_chunk=256, progress=False)
    assert done.complete and done.rows == 2000
    idx = torch.cat([b["acts"][:, 0] for b in done.loader(batch_size=100)]).long()
    assert sorted(idx.tolist()) == list(range(2000))
