"""The write-side shuffle of streaming sources: rows permuted within windows, exact resume, mixed batches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import featureforge as ff
from storehelpers import cli_env, zarr_arrays
from writeshuffle_source import Sequences

TESTS = Path(__file__).resolve().parent


def _rows(store: ff.ActivationStore) -> np.ndarray:
    return store.read(0, store.rows, "acts")[:, 0].astype(np.int64)


def test_each_row_once_a_permutation_within_each_window(tmp_path):
    src = Sequences(rows=3000)
    store = ff.cache(src, store=tmp_path / "s", rows_per_chunk=128, write_shuffle_rows=512, progress=False)
    assert store.write_shuffle_rows == 512 and store.attrs["write_shuffle_rows"] == 512
    assert "--write-shuffle-rows 512" in store.repair_command() and store.info()["write_shuffle_rows"] == 512
    got = _rows(store)
    assert sorted(got.tolist()) == list(range(3000))
    for start in range(0, 3000, 512):  # the last window (440 rows) is permuted over its own rows
        window = got[start : start + 512]
        assert sorted(window.tolist()) == list(range(start, min(start + 512, 3000)))
        assert not np.array_equal(window, np.sort(window))
    # every column moved with its row
    seq = store.read(0, 3000, "seq_ids")
    pos = store.read(0, 3000, "positions")
    assert np.array_equal(seq, got // 64) and np.array_equal(pos, got % 64)


def test_bytes_do_not_depend_on_chunk_size_and_off_means_source_order(tmp_path):
    a = ff.cache(Sequences(rows=2000), store=tmp_path / "a", rows_per_chunk=128, write_shuffle_rows=512, progress=False)
    b = ff.cache(Sequences(rows=2000), store=tmp_path / "b", rows_per_chunk=96, write_shuffle_rows=512, progress=False)
    assert np.array_equal(_rows(a), _rows(b))
    off = ff.cache(Sequences(rows=2000), store=tmp_path / "off", rows_per_chunk=128, write_shuffle_rows=0, progress=False)
    assert np.array_equal(_rows(off), np.arange(2000))


def test_default_window_on_for_streams_off_for_random_access(tmp_path):
    store = ff.cache(Sequences(rows=600), store=tmp_path / "s", progress=False)
    assert store.write_shuffle_rows == ff.store.default_write_shuffle_rows(4, "float32") > 0
    assert sorted(_rows(store).tolist()) == list(range(600)) and not np.array_equal(_rows(store), np.arange(600))
    synthetic = ff.cache("synthetic", {"d_in": 8}, store=tmp_path / "syn", rows=256, progress=False)
    assert synthetic.write_shuffle_rows == 0
    with pytest.raises(ff.OptionError, match="produces rows by index"):
        ff.cache("synthetic", {"d_in": 8}, store=tmp_path / "syn2", rows=256, write_shuffle_rows=512, progress=False)


CACHE = (
    "import sys; sys.path.insert(0, {tests!r}); import featureforge as ff; from writeshuffle_source import Sequences; "
    "ff.cache(Sequences(rows=3000, batch_rows=70, sites={sites}), store={store!r}, rows_per_chunk=128, write_shuffle_rows=512, "
    "world_size=2, rank={rank}, progress=False)"
)


@pytest.mark.parametrize("exit_after, committed, sites", [(3, False, 1), (11, True, 1), (19, True, 1), (11, True, 2), (19, True, 2)])
def test_resume_after_kill_gives_identical_bytes(tmp_path, exit_after, committed, sites):
    """A writer killed mid-window continues from the start of the window its marker is in.

    Each writer has 1,500 rows in batches of 70 and windows of 512: killed after 3 batches nothing
    is committed; after 11 the first window is, after 19 the first two (the kill is mid-window).
    With two sites (a column per site, docs/store.md "Several sites") every column and each site's
    statistics come back identical, and the shuffle moved every site's row with it.
    """

    def cache(store: Path, rank: int, env: dict[str, str]) -> int:
        code = CACHE.format(tests=str(TESTS), store=str(store), rank=rank, sites=sites)
        return subprocess.run([sys.executable, "-c", code], env=cli_env(**env), capture_output=True, text=True, timeout=120).returncode

    for rank in (0, 1):
        assert cache(tmp_path / "whole", rank, {}) == 0
        assert cache(tmp_path / "killed", rank, {"FF_TEST_EXIT_AFTER": str(exit_after)}) == 3
    killed = ff.open_store(tmp_path / "killed")
    assert bool(killed.committed_chunks()) == committed and not killed.complete
    for rank in (0, 1):
        assert cache(tmp_path / "killed", rank, {}) == 0
    whole, killed = ff.open_store(tmp_path / "whole"), ff.open_store(tmp_path / "killed")
    assert killed.complete
    for column in ("acts", "seq_ids", "positions") + (("acts_1",) if sites == 2 else ()):
        assert np.array_equal(whole.read(0, 3000, column), killed.read(0, 3000, column))
    if sites == 2:
        names = ["acts", "acts_1", "chunk_stats", "chunk_stats_1"]
        a, b = zarr_arrays(tmp_path / "whole", names), zarr_arrays(tmp_path / "killed", names)
        assert all(a[n].tobytes() == b[n].tobytes() for n in names)
        # site "second" holds -row index where acts hold the index: the rows moved together
        assert np.array_equal(whole.site("second").read(0, 3000)[:, 0], -whole.read(0, 3000)[:, 0])
    stored = np.concatenate([whole.read(c.index * 128, c.index * 128 + c.rows, "acts")[:, 0] for c in whole.committed_chunks()])
    assert len(np.unique(stored)) == len(stored) == whole.rows  # no row twice (a writer's share may end short of its chunks)


def _distinct(store: ff.ActivationStore, batch: int, buffer_rows: int) -> float:
    reader = store.loader(batch_size=batch, columns=("acts", "seq_ids"), seed=0, drop_last=True, buffer_rows=buffer_rows)
    return float(np.mean([len(np.unique(b["seq_ids"].numpy())) for b in reader]))


def test_batches_hold_about_as_many_sequences_as_uniform_sampling(tmp_path):
    """Issue #14: 64-row sequences, a reader window of 8 chunks; uniform sampling is the yardstick."""
    rows, seq_len, batch = 32768, 64, 256
    src = dict(rows=rows, seq_len=seq_len, batch_rows=1000)
    shuffled = ff.cache(Sequences(**src), store=tmp_path / "on", rows_per_chunk=256, write_shuffle_rows=8192, progress=False)
    ordered = ff.cache(Sequences(**src), store=tmp_path / "off", rows_per_chunk=256, write_shuffle_rows=0, progress=False)
    rng = np.random.default_rng(0)
    uniform = np.mean([len(np.unique(rng.choice(rows, batch, replace=False) // seq_len)) for _ in range(200)])
    on, off = _distinct(shuffled, batch, 2048), _distinct(ordered, batch, 2048)
    assert off <= 2048 // seq_len  # a window of 2,048 rows holds 32 sequences
    assert on >= 0.9 * uniform, (on, uniform)


def test_write_window_names_the_rows_of_a_window_with_several_writers(tmp_path):
    for rank in (0, 1):
        store = ff.cache(Sequences(rows=3000), store=tmp_path / "s", rows_per_chunk=128, write_shuffle_rows=512,
                         rank=rank, world_size=2, progress=False)
    values = store.read(0, store.rows_allocated, "acts")[:, 0].astype(np.int64)
    committed = store.committed_chunks()
    for row in (0, 130, 1000, 2000, 2950):
        rank = (row // 128) % 2
        local = (row // 128 // 2) * 128 + row % 128
        k = local // 512
        share = sum(store.chunk_rows(c) for c in range(rank, store.n_chunks, 2))  # rows this writer stores
        want = {rank + 2 * l for l in range(k * 512, min((k + 1) * 512, share))}  # window k of the writer's shard
        got = store.write_window(row, committed)
        assert row in got and set(values[got].tolist()) == want
    assert np.array_equal(ff.open_store(tmp_path / "s").write_window(5), store.write_window(5, committed))
