"""The built-in sources: `synthetic` (deterministic, ground truth, hierarchy, correlated pairs) and
`array` (.npy memory-mapped, .safetensors incl. bfloat16, Zarr arrays)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from storehelpers import assert_one_line_error, run_cli, zarr_arrays

import featureforge as ff
from featureforge.builtin.synthetic import BLOCK_ROWS

SMALL = {"d_in": 16, "n_features": 64}


# -- synthetic -----------------------------------------------------------------------------------
def test_any_row_range_regenerates_alone():
    big = ff.make_source("synthetic", SMALL).rows(0, 3 * BLOCK_ROWS)["acts"]
    for start, stop in [(0, 1), (123, 124), (BLOCK_ROWS - 5, BLOCK_ROWS + 5), (2 * BLOCK_ROWS - 1, 3 * BLOCK_ROWS), (5000, 11000)]:
        alone = ff.make_source("synthetic", SMALL).rows(start, stop)["acts"]  # a fresh instance, as another writer has
        assert alone.dtype == np.float32 and alone.shape == (stop - start, 16)
        np.testing.assert_array_equal(alone, big[start:stop])


def test_seeds_differ():
    a = ff.make_source("synthetic", dict(SMALL, seed=0))
    b = ff.make_source("synthetic", dict(SMALL, seed=1))
    assert not np.allclose(a.rows(0, 100)["acts"], b.rows(0, 100)["acts"])
    assert not np.allclose(a.ground_truth()["features"], b.ground_truth()["features"])


def test_synthetic_rows_follow_the_model():
    src = ff.make_source("synthetic", dict(SMALL, zipf_exponent=0.0, mean_active=5.0, noise_std=0.0))
    codes = src.codes(0, 8192)
    acts = src.rows(0, 8192)["acts"]
    features = src.ground_truth()["features"]
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(acts, codes @ features, atol=1e-5)  # noise off: exactly the sparse combination
    assert (codes >= 0).all()
    assert (codes > 0).sum(1).mean() == pytest.approx(5.0, rel=0.05)


def test_ground_truth_is_saved_in_the_store(tmp_path):
    options = dict(SMALL, hierarchy_parents=2, correlated_pairs=2, seed=4)
    path = tmp_path / "s.zarr"
    run_cli("cache", "--source", "synthetic", *[f"-o{k}={v}" for k, v in options.items()], "--store", path, "--rows", 1000, "--rows-per-chunk", 256)
    truth = ff.make_source("synthetic", options).ground_truth()
    on_disk = zarr_arrays(path, [f"ground_truth/{k}" for k in ("features", "frequencies", "parents", "partners")])
    saved = ff.open_store(path).ground_truth()
    assert sorted(saved) == ["features", "frequencies", "parents", "partners"]
    for key, value in truth.items():
        np.testing.assert_array_equal(saved[key], value)
        np.testing.assert_array_equal(on_disk[f"ground_truth/{key}"], value)
    np.testing.assert_array_equal(ff.open_store(path).read(0, 1000), ff.make_source("synthetic", options).rows(0, 1000)["acts"])


def test_hierarchy_children_never_fire_without_their_parent():
    src = ff.make_source("synthetic", dict(SMALL, hierarchy_parents=4, children_per_parent=3, child_probability=0.5))
    parents = src.ground_truth()["parents"]
    children = np.flatnonzero(parents >= 0)
    assert len(children) == 12
    active = src.codes(0, 3 * BLOCK_ROWS) > 0
    for child in children:
        parent = parents[child]
        assert active[:, child].any(), f"child {child} never fires"
        assert not (active[:, child] & ~active[:, parent]).any(), f"child {child} fired without parent {parent}"
        rate = active[active[:, parent], child].mean()
        assert rate == pytest.approx(0.5, abs=0.05)


def test_correlated_pairs_fire_together():
    src = ff.make_source("synthetic", dict(SMALL, correlated_pairs=3, correlation=0.8, zipf_exponent=0.0))
    partners = src.ground_truth()["partners"]
    pairs = [(int(partners[b]), int(b)) for b in np.flatnonzero(partners >= 0)]
    assert len(pairs) == 3
    active = src.codes(0, 3 * BLOCK_ROWS) > 0
    for a, b in pairs:
        with_a = active[active[:, a], b].mean()
        without_a = active[~active[:, a], b].mean()
        assert with_a >= 0.78 and without_a < 0.2, (a, b, with_a, without_a)


def test_synthetic_bad_options_are_one_line(tmp_path):
    result = run_cli("cache", "--source", "synthetic", "-o", "mean_active=0", "--store", tmp_path / "s.zarr", "--rows", 10, ok=False)
    assert_one_line_error(result, "mean_active=0.0", "(0, n_features=512]")
    result = run_cli("cache", "--source", "synthetic", "-o", "colour=red", "--store", tmp_path / "s.zarr", "--rows", 10, ok=False)
    assert_one_line_error(result, "colour", "n_features")
    assert not (tmp_path / "s.zarr").exists()


# -- array ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(7).standard_normal((2000, 24)).astype(np.float32)


def test_npy_is_memory_mapped_and_cached_exactly(tmp_path, data):
    path = tmp_path / "acts.npy"
    np.save(path, data)
    src = ff.make_source("array", {"path": str(path)})
    assert isinstance(src._data, np.memmap)  # never loaded whole
    assert (src.d_in, src.n_rows) == (24, 2000)
    store_path = tmp_path / "s.zarr"
    run_cli("cache", "--source", "array", "-o", f"path={path}", "--store", store_path, "--rows-per-chunk", 256)
    store = ff.open_store(store_path)
    assert store.complete and store.rows == 2000 and store.d_in == 24
    np.testing.assert_array_equal(store.read(0, 2000), data)
    assert store.provenance == {"file": str(path), "format": "npy", "key": "", "shape": [2000, 24]}


def test_npy_of_float64_is_cached_as_float32(tmp_path, data):
    path = tmp_path / "acts64.npy"
    np.save(path, data.astype(np.float64) / 3)
    store = ff.cache("array", {"path": str(path)}, store=tmp_path / "s.zarr", rows_per_chunk=512, progress=False)
    np.testing.assert_array_equal(store.read(0, 2000), (data.astype(np.float64) / 3).astype(np.float32))


def test_safetensors_float32_and_bfloat16(tmp_path, data):
    from safetensors.torch import save_file

    path = tmp_path / "acts.safetensors"
    t = torch.from_numpy(data)
    save_file({"fp32": t, "bf16": t.to(torch.bfloat16)}, str(path))
    # Two tensors: the user must pick one.
    result = run_cli("cache", "--source", "array", "-o", f"path={path}", "--store", tmp_path / "x.zarr", ok=False)
    assert_one_line_error(result, "bf16", "fp32", "-o key=NAME")
    assert not (tmp_path / "x.zarr").exists()
    # float32 tensor into a float32 store: exact.
    store = ff.cache("array", {"path": str(path), "key": "fp32"}, store=tmp_path / "f.zarr", rows_per_chunk=512, progress=False)
    np.testing.assert_array_equal(store.read(0, 2000), data)
    # bfloat16 tensor into a bfloat16 store: the very same bits.
    store = ff.cache("array", {"path": str(path), "key": "bf16"}, store=tmp_path / "b.zarr", dtype="bfloat16", rows_per_chunk=512, progress=False)
    stored = zarr_arrays(tmp_path / "b.zarr", ["acts"])["acts"]
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))
    assert store.provenance["format"] == "safetensors" and store.provenance["key"] == "bf16"


def test_zarr_array_and_group_with_key(tmp_path, data):
    import zarr

    arr_path = tmp_path / "acts.zarr"
    zarr.create_array(str(arr_path), shape=data.shape, chunks=(300, 24), dtype="float32")[...] = data
    store = ff.cache("array", {"path": str(arr_path)}, store=tmp_path / "a.zarr", rows_per_chunk=256, progress=False)
    np.testing.assert_array_equal(store.read(0, 2000), data)
    assert store.provenance["format"] == "zarr"

    group_path = tmp_path / "group.zarr"
    group = zarr.open_group(str(group_path), mode="w")
    group.create_array("layer3", shape=data.shape, dtype="float32")[...] = data
    group.create_array("layer4", shape=data.shape, dtype="float32")[...] = -data
    result = run_cli("cache", "--source", "array", "-o", f"path={group_path}", "--store", tmp_path / "x.zarr", ok=False)
    assert_one_line_error(result, "Zarr group with arrays", "layer3", "layer4", "-o key=NAME")
    store = ff.cache("array", {"path": str(group_path), "key": "layer4"}, store=tmp_path / "g.zarr", rows_per_chunk=512, progress=False)
    np.testing.assert_array_equal(store.read(0, 2000), -data)


def test_array_bad_files_are_one_line(tmp_path):
    csv = tmp_path / "acts.csv"
    csv.write_text("1,2,3\n")
    result = run_cli("cache", "--source", "array", "-o", f"path={csv}", "--store", tmp_path / "s.zarr", ok=False)
    assert_one_line_error(result, str(csv), "unsupported file type", ".npy, .safetensors or Zarr")
    one_d = tmp_path / "flat.npy"
    np.save(one_d, np.zeros(10, dtype=np.float32))
    missing = tmp_path / "missing.npy"
    with pytest.raises(ff.BadInputError, match="expected 2-D"):
        ff.make_source("array", {"path": str(one_d)})
    with pytest.raises(ff.BadInputError, match="does not exist"):
        ff.make_source("array", {"path": str(missing)})
    with pytest.raises(ff.OptionError, match="-o path="):
        ff.make_source("array", {})
    assert not (tmp_path / "s.zarr").exists()
