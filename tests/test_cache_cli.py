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
@pytest.mark.parametrize("sites", [1, 2], ids=["one-site", "two-sites"])
def test_kill_9_mid_run_then_rerun_equals_uninterrupted_run(tmp_path, sites):
    # Many small chunks, each regenerating a 4096-row synthetic block: a few seconds of work.
    args = ["cache", "--source", "synthetic", "-o", "d_in=16", "-o", "n_features=512", "--rows", "8000", "--rows-per-chunk", "256"]
    if sites == 2:  # a planted transcoder: sites in (acts) and out (acts_1), each with its statistics
        args += ["-o", "transcoder=true", "-o", "d_out=8"]
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
    if sites == 2:
        names += ["acts_1", "chunk_stats_1", "ground_truth/features_out"]
    a, b = zarr_arrays(killed, names), zarr_arrays(reference, names)
    for name in names:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), f"{name} differs after kill + resume"
    info_k, info_r = ff.open_store(killed).info(), ff.open_store(reference).info()
    assert info_k["complete"] and info_k["rows"] == 8000
    assert info_k["normalisation"] == info_r["normalisation"]
    assert info_k.get("sites") == info_r.get("sites") and len(info_k.get("sites") or [None]) == sites


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


# -- checksums, verify and repair (#12) ----------------------------------------------------------
def _scramble(chunk, seed=0):
    """Overwrite a chunk file's data with random bytes of the same size (its checksum trailer kept)."""
    size = chunk.stat().st_size
    data = bytearray(chunk.read_bytes())
    data[: size - 4] = np.random.default_rng(seed).bytes(size - 4)
    chunk.write_bytes(bytes(data))


def _repair_args(message):
    """The `featureforge cache ... --repair` command a message names, as CLI arguments."""
    command = shlex.split(message.split("`")[1])
    assert command[:2] == ["featureforge", "cache"] and command[-1] == "--repair", command
    return command[1:]


def test_same_size_random_bytes_are_caught_by_verify_reader_and_reads_and_repaired(small_store, tmp_path):
    path = copy_store(small_store, tmp_path / "s.zarr")
    original = tree_bytes(path)
    assert ff.open_store(path).info()["checksums"] == "crc32c"
    ok = run_cli("info", path, "--verify")
    assert "verified     6 committed chunks, 3,000 rows: no damage (sizes and crc32c checksums)" in ok.stderr
    _scramble(path / "acts" / "c" / "2" / "0")
    line = assert_one_line_error(run_cli("info", path, "--verify", ok=False), "chunk acts/c/2/0 (rows 1024–1535) fails its checksum", "--repair`")
    # The reader (memory-mapped path: 512×16×4 bytes is whole pages) and a plain read both name it.
    with pytest.raises(ff.CorruptStoreError, match=r"chunk acts/c/2/0 \(rows 1024–1535\) fails its checksum.*--repair`"):
        for _ in ff.open_store(path).loader(batch_size=256, buffer_rows=512):
            pass
    with pytest.raises(ff.CorruptStoreError, match=r"chunk acts/c/2/0 \(rows 1024–1535\) fails its checksum"):
        ff.open_store(path).read(0, 3000)
    # A plain rerun only checks sizes and says complete; the named repair command rewrites the chunk.
    result = run_cli(*_repair_args(line))
    assert "(complete)" in result.stdout
    assert tree_bytes(path) == original
    run_cli("info", path, "--verify")


def test_copied_chunks_are_checked_too(tmp_path):
    """Chunks that are not whole pages are read by copy (as remote ones are): the checksum is checked there."""
    path = tmp_path / "odd.zarr"
    ff.cache("synthetic", ["d_in=16", "n_features=128"], store=str(path), rows=2000, rows_per_chunk=500, progress=False)
    good = ff.open_store(path).read(0, 2000)
    _scramble(path / "acts" / "c" / "1" / "0", seed=1)
    with pytest.raises(ff.CorruptStoreError, match=r"chunk acts/c/1/0 \(rows 500–999\) fails its checksum.*--rows-per-chunk 500 .*--repair`"):
        for _ in ff.open_store(path).loader(batch_size=256, buffer_rows=1000):
            pass
    ff.cache("synthetic", ["d_in=16", "n_features=128"], store=str(path), rows=2000, rows_per_chunk=500, repair=True, progress=False)
    np.testing.assert_array_equal(ff.open_store(path).read(0, 2000), good)


def test_damaged_chunk_stats_are_named(small_store, tmp_path):
    path = copy_store(small_store, tmp_path / "s.zarr")
    _scramble(path / "chunk_stats" / "c" / "4" / "0")
    store = ff.open_store(path)
    with pytest.raises(ff.CorruptStoreError, match=r"chunk chunk_stats/c/4/0 \(rows 2048–2559\) fails its checksum"):
        store._compute_normalisation()
    line = assert_one_line_error(run_cli("info", path, "--verify", ok=False), "chunk_stats/c/4/0")
    run_cli(*_repair_args(line))
    run_cli("info", path, "--verify")


def test_a_store_without_checksums_still_opens_and_verify_says_so(tmp_path, monkeypatch):
    """Format-1 stores (written before checksums) are read as before; verify checks their sizes."""
    import zarr

    import featureforge.store._creation as creation

    path = tmp_path / "v1.zarr"
    monkeypatch.setattr(creation, "array_codecs", lambda checksum: {"compressors": None})
    ff.cache("synthetic", ["d_in=16", "n_features=128"], store=str(path), rows=3000, rows_per_chunk=512, progress=False)
    monkeypatch.undo()
    zarr.open_group(str(path), mode="r+").attrs.update({"format_version": 1})
    assert (path / "acts" / "c" / "0" / "0").stat().st_size == 512 * 16 * 4
    store = ff.open_store(path)
    assert store.info()["checksums"] is None and store.info()["format_version"] == 1
    got = np.concatenate([b["acts"].numpy() for b in store.loader(batch_size=300, buffer_rows=1024)])
    assert row_counter(got) == row_counter(zarr_arrays(path, ["acts"])["acts"])
    result = run_cli("info", path, "--verify")
    assert "sizes only: this store predates checksums (format 1)" in result.stderr
    # and it is continued in its own format
    run_cli("cache", *SMALL, "--store", path)


# -- other damage: one line naming the file and the fix (#12) ------------------------------------
def test_deleted_array_metadata_is_named_and_rebuilt(small_store, tmp_path):
    path = copy_store(small_store, tmp_path / "s.zarr")
    original = tree_bytes(path)
    (path / "acts" / "zarr.json").unlink()
    line = assert_one_line_error(run_cli("info", path, ok=False), "acts/zarr.json", "is missing", "--repair`")
    run_cli(*_repair_args(line))
    assert tree_bytes(path) == original


def test_garbage_writer_marker_is_named_and_rebuilt(small_store, tmp_path):
    path = copy_store(small_store, tmp_path / "s.zarr")
    good = zarr_arrays(path, ["acts"])["acts"]
    (path / "writers" / "0" / "zarr.json").write_text("{not json")
    line = assert_one_line_error(run_cli("info", path, ok=False), "writers/0/zarr.json", "commit marker", "is damaged", "--repair`")
    assert_one_line_error(run_cli("cache", *SMALL, "--store", path, ok=False), "writers/0/zarr.json", "--repair")
    result = run_cli(*_repair_args(line))
    assert "Wrote 3000 rows" in result.stdout and "(complete)" in result.stdout
    np.testing.assert_array_equal(ff.open_store(path).read(0, 3000), good)
    run_cli("info", path, "--verify")


def test_attributes_claiming_another_d_in_blame_the_attributes_not_the_chunks(small_store, tmp_path):
    path = copy_store(small_store, tmp_path / "s.zarr")
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["d_in"] = 32
    (path / "zarr.json").write_text(json.dumps(meta))
    before = tree_state(path)
    for args in (["info", path], ["cache", *SMALL, "--store", path]):
        line = assert_one_line_error(run_cli(*args, ok=False), "zarr.json says d_in=32", "acts/zarr.json holds d_in=16", '"d_in": 16')
        assert "--overwrite" not in line.replace("do not pass --overwrite", ""), line
    assert tree_state(path) == before


def test_deleted_root_metadata_says_how_to_recover_and_repair_recovers(small_store, tmp_path):
    path = copy_store(small_store, tmp_path / "s.zarr")
    good = ff.open_store(path).read(0, 3000)
    (path / "zarr.json").unlink()
    assert_one_line_error(run_cli("info", path, ok=False), "root zarr.json is missing", "--repair")
    # a plain rerun does not make a new store over the old arrays
    assert_one_line_error(run_cli("cache", *SMALL, "--store", path, ok=False), str(path))
    result = run_cli("cache", *SMALL, "--store", path, "--repair")
    assert "Wrote 3000 rows" in result.stdout and "(complete)" in result.stdout
    np.testing.assert_array_equal(ff.open_store(path).read(0, 3000), good)
    run_cli("info", path, "--verify")


# -- nothing lost (#12) --------------------------------------------------------------------------
def test_overwrite_refuses_a_folder_holding_other_files(small_store, tmp_path):
    path = copy_store(small_store, tmp_path / "s.zarr")
    (path / "thesis.txt").write_text("four years of work")
    before = tree_state(path)
    other = ["--source", "synthetic", "-o", "d_in=8", "--rows", "1000", "--store", path, "--overwrite"]
    assert_one_line_error(run_cli("cache", *other, ok=False), "thesis.txt", "did not write", "--overwrite deletes only")
    assert tree_state(path) == before
    (path / "thesis.txt").unlink()
    run_cli("cache", *other)
    assert ff.open_store(path).d_in == 8 and sorted(p.name for p in path.iterdir()) == ["acts", "chunk_stats", "ground_truth", "writers", "zarr.json"]


def test_two_cache_processes_started_at_once_on_a_new_store(small_store, tmp_path):
    reference = zarr_arrays(small_store, ["acts"])["acts"]
    for attempt in range(2):
        path = tmp_path / f"race{attempt}.zarr"
        procs = [popen_cli("cache", *SMALL, "--store", path) for _ in range(2)]
        results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        for rc, out, err in results:
            assert "Traceback" not in err, err
            if rc:  # refused cleanly: the other process is writing
                lines = [line for line in err.splitlines() if line.strip()]
                assert len(lines) == 1 and "another process is writing rank 0" in lines[0], err
            else:
                assert "(complete)" in out, out
        assert any(rc == 0 for rc, _, _ in results), results
        run_cli("cache", *SMALL, "--store", path)  # the store is never left in a state a rerun refuses
        np.testing.assert_array_equal(zarr_arrays(path, ["acts"])["acts"], reference)
        assert not [p for p in tmp_path.iterdir() if ".creating-" in p.name]


def test_memory_store_is_refused_on_the_command_line():
    assert_one_line_error(run_cli("cache", *SMALL, "--store", "memory://x", ok=False), "memory://x", "would vanish", "give a folder")


def test_rows_per_chunk_zero_is_refused(tmp_path):
    args = ["cache", *SYNTH, "--rows", "100", "--rows-per-chunk", "0", "--store", tmp_path / "s.zarr"]
    assert_one_line_error(run_cli(*args, ok=False), "--rows-per-chunk must be positive, got 0")
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_partial_store_on_resume(small_store, tmp_path):
    path = copy_store(small_store, tmp_path / "s.zarr")
    meta = json.loads((path / "writers" / "0" / "zarr.json").read_text())
    meta["attributes"].update({"chunks": 3, "done": False})
    (path / "writers" / "0" / "zarr.json").write_text(json.dumps(meta))
    subprocess_chmod = [p for p in path.rglob("*")] + [path]
    for p in subprocess_chmod:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        line = assert_one_line_error(run_cli("cache", *SMALL, "--store", path, ok=False), "read-only", "chmod -R u+w")
        assert ".partial" not in line
    finally:
        for p in subprocess_chmod:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_a_chunk_changed_after_the_reader_checked_it_is_checked_again(small_store, tmp_path):
    path = copy_store(small_store, tmp_path / "s.zarr")
    for _ in ff.open_store(path).loader(batch_size=256, buffer_rows=512):  # every chunk checked once here
        pass
    _scramble(path / "acts" / "c" / "5" / "0", seed=2)
    with pytest.raises(ff.CorruptStoreError, match=r"chunk acts/c/5/0 \(rows 2560–2999\) fails its checksum"):
        for _ in ff.open_store(path).loader(batch_size=256, buffer_rows=512):
            pass


class _Sequence(ff.ActivationSource):
    """A streaming source (no random access): rows i hold i, in batches of 300."""

    name = "sequence-stream"

    @property
    def d_in(self):
        return 4

    @property
    def n_rows(self):
        return 2000

    def stream(self, rank=0, world_size=1, skip_rows=0, max_rows=None):
        for start in range(skip_rows, 2000, 300):
            idx = np.arange(start, min(start + 300, 2000), dtype=np.float32)
            yield {"acts": np.repeat(idx[:, None], 4, axis=1)}


def test_repair_of_a_stream_source_rewrites_from_the_first_damaged_chunk(tmp_path):
    path = tmp_path / "stream.zarr"
    ff.cache(_Sequence(), store=str(path), rows_per_chunk=256, progress=False)
    original = tree_bytes(path)
    _scramble(path / "acts" / "c" / "3" / "0", seed=3)
    assert ff.open_store(path).verify() == ["chunk acts/c/3/0 (rows 768–1023) fails its checksum (its bytes changed after they were written)"]
    ff.cache(_Sequence(), store=str(path), rows_per_chunk=256, progress=False, repair=True)
    assert tree_bytes(path) == original


def test_a_second_process_for_a_writer_rank_being_written_is_refused(small_store, tmp_path):
    from featureforge.store import writer_lock

    path = copy_store(small_store, tmp_path / "s.zarr")
    with writer_lock(ff.open_store(path), 0):
        assert_one_line_error(run_cli("cache", *SMALL, "--store", path, ok=False), "another process is writing rank 0", "wait for it")
    assert "(complete)" in run_cli("cache", *SMALL, "--store", path).stdout
