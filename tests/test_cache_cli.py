"""`featureforge cache` and `featureforge info` run as subprocesses, the way a user runs them.

Crash-safety (kill -9 and resume), several writers, and every kind of bad input: one ``Error:``
line naming the problem and the fix, a non-zero exit, no traceback, and no committed data lost.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time

import numpy as np
import pytest
from storehelpers import (
    assert_one_line_error,
    marker,
    popen_cli,
    row_counter,
    run_cli,
    run_python,
    tree_bytes,
    tree_state,
    zarr_arrays,
)

import featureforge as ff

SYNTH = ["--source", "synthetic", "-o", "d_in=16", "-o", "n_features=128"]
SMALL = SYNTH + ["--rows", "3000", "--rows-per-chunk", "512"]


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """A complete synthetic store made by the CLI (never modified: tests copy it)."""
    path = tmp_path_factory.mktemp("cli") / "small.zarr"
    result = run_cli("cache", *SMALL, "--store", path)
    assert f"Wrote 3000 rows × 16 (float32) to {path} (complete)" in result.stdout
    return path


def copy_store(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


# -- crash safety --------------------------------------------------------------------------------
def test_kill_9_mid_run_then_rerun_equals_uninterrupted_run(tmp_path):
    # Many small chunks, each regenerating a 4096-row synthetic block: a few seconds of work.
    args = ["cache", "--source", "synthetic", "-o", "d_in=16", "-o", "n_features=512", "--rows", "8000", "--rows-per-chunk", "256"]
    n_chunks = -(-8000 // 256)
    killed, reference = tmp_path / "killed.zarr", tmp_path / "reference.zarr"
    ref_proc = popen_cli(*args, "--store", reference)
    proc = popen_cli(*args, "--store", killed)
    deadline = time.monotonic() + 120
    while (marker(killed) or {}).get("chunks", 0) < 1:
        assert proc.poll() is None, f"writer ended before it could be killed: {proc.communicate()}"
        assert time.monotonic() < deadline, "writer committed nothing within 120 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    at_kill = marker(killed)
    assert not at_kill["done"] and 1 <= at_kill["chunks"] < n_chunks, at_kill

    out, err = ref_proc.communicate(timeout=180)
    assert ref_proc.returncode == 0, err

    # The killed store is partial: info says so, and a reader yields exactly its committed rows.
    info = ff.open_store(killed).info()
    assert info["complete"] is False and info["rows"] == at_kill["chunks"] * 256
    assert info["chunks_committed"] == at_kill["chunks"]
    partial = ff.open_store(killed)
    got = np.concatenate([b["acts"].numpy() for b in partial.loader(batch_size=300, buffer_rows=512)])
    ref_acts = zarr_arrays(reference, ["acts"])["acts"]
    assert row_counter(got) == row_counter(ref_acts[: info["rows"]])

    # Rerunning the same command continues at the marker and ends with the same bytes.
    result = run_cli(*args, "--store", killed)
    assert "(complete)" in result.stdout
    names = ["acts", "chunk_stats", "ground_truth/features", "ground_truth/frequencies", "ground_truth/parents", "ground_truth/partners"]
    a, b = zarr_arrays(killed, names), zarr_arrays(reference, names)
    for name in names:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), f"{name} differs after kill + resume"
    info_k, info_r = ff.open_store(killed).info(), ff.open_store(reference).info()
    assert info_k["complete"] and info_k["rows"] == 8000
    assert info_k["normalisation"] == info_r["normalisation"]


def test_two_concurrent_writers_write_the_same_bytes_as_one(tmp_path):
    args = SYNTH + ["--rows", "6000", "--rows-per-chunk", "512"]
    two, one = tmp_path / "two.zarr", tmp_path / "one.zarr"
    procs = [popen_cli("cache", *args, "--store", two, "--rank", r, "--world-size", 2) for r in (1, 0)]
    single = popen_cli("cache", *args, "--store", one, "--world-size", 1)
    for p in procs + [single]:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    for rank in (0, 1):
        assert marker(two, rank)["done"] is True
    a, b = zarr_arrays(two, ["acts", "chunk_stats"]), zarr_arrays(one, ["acts", "chunk_stats"])
    assert a["acts"].tobytes() == b["acts"].tobytes()
    assert a["chunk_stats"].tobytes() == b["chunk_stats"].tobytes()
    # World size is part of the store's identity; the data are not.
    info2, info1 = ff.open_store(two).info(), ff.open_store(one).info()
    assert (info2["writers"], info1["writers"]) == (2, 1)
    assert info2["complete"] and info2["rows"] == 6000 and info2["chunks_committed"] == 12
    assert info2["normalisation"] == info1["normalisation"]


def test_rerun_on_complete_store_is_a_no_op(small_store, tmp_path):
    path = copy_store(small_store, tmp_path / "s.zarr")
    before = tree_state(path)
    result = run_cli("cache", *SMALL, "--store", path)
    assert "Wrote 3000 rows × 16 (float32)" in result.stdout and "(complete)" in result.stdout
    assert tree_state(path) == before  # same files, same bytes, not even rewritten


# -- bad input -----------------------------------------------------------------------------------
def test_unknown_source(small_store, tmp_path):
    store = tmp_path / "s.zarr"
    result = run_cli("cache", "--source", "nope", "--store", store, "--rows", 10, ok=False)
    assert_one_line_error(result, "unknown source 'nope'", "synthetic", "featureforge plugins")
    assert not store.exists()
    # Pointed at an existing store (even with --overwrite), the store is untouched.
    existing = copy_store(small_store, tmp_path / "existing.zarr")
    before = tree_state(existing)
    result = run_cli("cache", "--source", "nope", "--store", existing, "--overwrite", ok=False)
    assert_one_line_error(result, "unknown source 'nope'")
    assert tree_state(existing) == before


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("--debug", "cache", "--source", "nope", "--store", tmp_path / "s.zarr", "--rows", 10, ok=False)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "PluginError" in result.stderr


def test_npy_of_python_objects_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([[object(), 1], [2, 3]], dtype=object), allow_pickle=True)
    store = tmp_path / "s.zarr"
    result = run_cli("cache", "--source", "array", "-o", f"path={path}", "--store", store, ok=False)
    assert_one_line_error(result, str(path), "objects", "never unpickles", "numeric array")
    assert not store.exists()


def _npy_with_bad_rows(tmp_path, bad_rows, value):
    data = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
    for r in bad_rows:
        data[r, 3] = value
    path = tmp_path / "acts.npy"
    np.save(path, data)
    return path, data


def test_nan_rows_are_named_and_committed_chunks_kept(tmp_path):
    bad_rows = (1100, 1101, 1102)
    path, data = _npy_with_bad_rows(tmp_path, bad_rows, np.nan)
    store = tmp_path / "s.zarr"
    args = ["cache", "--source", "array", "-o", f"path={path}", "--store", store, "--rows-per-chunk", 512]
    result = run_cli(*args, ok=False)
    assert_one_line_error(result, "NaN/Inf acts in rows 1100–1102 (3 rows)", "fix the source", "committed so far are kept")
    # Chunks 0 and 1 (rows 0-1023) came before the bad rows: committed and intact.
    assert marker(store)["chunks"] == 2 and not marker(store)["done"]
    opened = ff.open_store(store)
    assert opened.rows == 1024 and not opened.complete
    np.testing.assert_array_equal(opened.read(0, 1024), data[:1024])
    before = tree_bytes(store)
    assert_one_line_error(run_cli(*args, ok=False), "rows 1100–1102")
    after = tree_bytes(store)
    assert {k: v for k, v in after.items() if k in before} == before
    assert marker(store)["chunks"] == 2
    # Fixing the file and rerunning continues from the committed chunks.
    data[list(bad_rows)] = 0.0
    np.save(path, data)
    run_cli(*args)
    opened = ff.open_store(store)
    assert opened.complete
    np.testing.assert_array_equal(opened.read(0, 3000), data)


def test_inf_row_is_named(tmp_path):
    path, _ = _npy_with_bad_rows(tmp_path, (1300,), np.inf)
    result = run_cli("cache", "--source", "array", "-o", f"path={path}", "--store", tmp_path / "s.zarr", "--rows-per-chunk", 512, ok=False)
    assert_one_line_error(result, "NaN/Inf acts in row 1300;")


@pytest.mark.parametrize(
    "change,needle",
    [
        (["-o", "d_in=32"], "d_in=16 (asked 32)"),
        (["-o", "seed=7"], "option seed=0 (asked 7)"),
        (["--rows-per-chunk", "256"], "rows_per_chunk=512 (asked 256)"),
    ],
)
def test_existing_store_with_other_contents_is_refused(small_store, tmp_path, change, needle):
    path = copy_store(small_store, tmp_path / "s.zarr")
    before = tree_state(path)
    args = ["cache", *SMALL, *change, "--store", path]
    line = assert_one_line_error(run_cli(*args, ok=False), str(path), "already holds other activations", needle, "--overwrite")
    assert "choose another --store" in line
    assert tree_state(path) == before


def test_overwrite_replaces_a_store_with_other_contents(small_store, tmp_path):
    path = copy_store(small_store, tmp_path / "s.zarr")
    run_cli("cache", *SMALL, "-o", "d_in=32", "-o", "seed=7", "--store", path, "--overwrite")
    opened = ff.open_store(path)
    assert opened.complete and opened.d_in == 32 and opened.source["options"]["seed"] == 7
    expected = ff.make_source("synthetic", {"d_in": 32, "n_features": 128, "seed": 7}).rows(0, 3000)["acts"]
    np.testing.assert_array_equal(opened.read(0, 3000), expected)


def test_existing_store_from_another_source_is_refused(small_store, tmp_path):
    path = copy_store(small_store, tmp_path / "s.zarr")
    npy = tmp_path / "acts.npy"
    np.save(npy, np.ones((3000, 16), dtype=np.float32))
    before = tree_state(path)
    args = ["cache", "--source", "array", "-o", f"path={npy}", "--store", path, "--rows-per-chunk", 512]
    assert_one_line_error(run_cli(*args, ok=False), "source 'synthetic' (asked 'array')", "--overwrite")
    assert tree_state(path) == before
    run_cli(*args, "--overwrite")
    opened = ff.open_store(path)
    assert opened.source["name"] == "array" and opened.ground_truth() is None
    np.testing.assert_array_equal(opened.read(0, 3000), np.ones((3000, 16), dtype=np.float32))


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_damaged_chunk_is_named_by_the_reader_and_rewritten_by_a_rerun(small_store, tmp_path, damage):
    path = copy_store(small_store, tmp_path / "s.zarr")
    original = tree_bytes(path)
    chunk = path / "acts" / "c" / "3" / "0"
    if damage == "missing":
        chunk.unlink()
    else:
        chunk.write_bytes(chunk.read_bytes()[:1000])
    # A user's training script (a plain Python process) iterating the store gets the chunk named.
    code = (
        "import featureforge as ff\n"
        f"store = ff.open_store({str(path)!r})\n"
        "try:\n"
        "    for batch in store.loader(batch_size=256, buffer_rows=512):\n"
        "        pass\n"
        "except ff.CorruptStoreError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('no error')\n"
    )
    if damage == "missing":
        result = run_python(code)
        assert result.returncode == 0, result.stderr
        message = result.stdout.strip()
    else:  # the same, in this process
        with pytest.raises(ff.CorruptStoreError) as caught:
            for _ in ff.open_store(path).loader(batch_size=256, buffer_rows=512):
                pass
        message = str(caught.value)
    assert "chunk acts/c/3/0" in message and "rows 1536–2047" in message, message
    assert ("is missing" if damage == "missing" else "is truncated or damaged (1000 bytes, expected 32772)") in message
    # ... and the fix it names works: the repair command in the message rewrites the chunk, nothing else changes.
    assert "; repair it with `featureforge cache --source synthetic" in message and message.endswith(f"--store {path} --repair`"), message
    result = run_cli(*shlex.split(message.split("`")[1])[1:])
    assert "(complete)" in result.stdout
    assert tree_bytes(path) == original


def test_unwritable_path_under_a_regular_file(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    store = blocker / "store"
    result = run_cli("cache", *SMALL, "--store", store, ok=False)
    assert_one_line_error(result, "cannot write a store at", str(blocker), "not a writable folder", "choose another --store")
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root ignores directory permissions (covered by the regular-file case)")
def test_unwritable_path_in_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        result = run_cli("cache", *SMALL, "--store", folder / "store", ok=False)
        assert_one_line_error(result, "cannot write a store at", "not a writable folder")
    finally:
        folder.chmod(0o700)


def test_info_on_paths_that_are_not_stores(tmp_path):
    missing = tmp_path / "nothing-here"
    assert_one_line_error(run_cli("info", missing, ok=False), f"no activation store at {missing}", "featureforge cache --store")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ff.StoreError, match="no activation store at .*featureforge cache"):
        ff.open_store(empty)
    import zarr

    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w").attrs["hello"] = "world"
    assert_one_line_error(run_cli("info", other, ok=False), "not a featureforge activation store", "featureforge cache")


def test_info_prints_a_human_summary(small_store):
    out = run_cli("info", small_store).stdout
    for text in ("rows         3,000  [complete]", "d_in         16", "dtype        float32", "6/6 committed, 512 rows each",
                 "source       synthetic", "normalisation  E|x|^2=", "ground truth features, frequencies, parents, partners"):
        assert text in out, out


def test_cache_into_an_occupied_non_store_folder_is_refused(tmp_path):
    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    result = run_cli("cache", *SMALL, "--store", folder, ok=False)
    assert_one_line_error(result, "exists and is not an activation store", "choose an empty or new --store")
    assert (folder / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_rerun_after_a_kill_during_store_creation_starts_the_store_again(small_store, tmp_path):
    """A store whose root attributes were never written (killed inside create_store) held no data:
    the rerun recreates it instead of asking for --overwrite; a foreign zarr group is still refused."""
    import zarr

    damaged = copy_store(small_store, tmp_path / "damaged.zarr")
    zarr.open_group(str(damaged), mode="r+").attrs.clear()  # committed chunks but no root attributes: damage
    before = tree_state(damaged)
    assert_one_line_error(run_cli("cache", *SMALL, "--store", damaged, ok=False), "--overwrite")
    assert tree_state(damaged) == before
    path = copy_store(small_store, tmp_path / "s.zarr")
    group = zarr.open_group(str(path), mode="r+")
    group.attrs.clear()  # what a kill before the root attributes leaves: nothing committed yet
    for _, writer in group["writers"].groups():
        writer.attrs.put({"chunks": 0, "last_chunk_rows": None, "done": False})
    run_cli("cache", *SMALL, "--store", path)
    opened = ff.open_store(path)
    assert opened.complete
    np.testing.assert_array_equal(opened.read(0, 3000), ff.open_store(small_store).read(0, 3000))
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").create_array("embeddings", shape=(4,), dtype="float32")
    before = tree_state(foreign)
    assert_one_line_error(run_cli("cache", *SMALL, "--store", foreign, ok=False), str(foreign))
    assert tree_state(foreign) == before
