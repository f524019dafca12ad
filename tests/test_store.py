"""The store's on-disk format: readable by plain zarr, self-describing, exact dtypes and statistics,
atomic metadata writes, and fsspec URLs (memory://, S3 through moto)."""

from __future__ import annotations

import json
import logging
import uuid

import numpy as np
import pytest
import torch
from storehelpers import row_counter, run_cli, run_python

import featureforge as ff
from featureforge.store import FORMAT_NAME, FORMAT_VERSION

SYNTH = {"d_in": 24, "n_features": 96, "seed": 3}


@pytest.fixture(scope="module")
def bf16_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "bf16.zarr"
    ff.cache("synthetic", SYNTH, store=path, rows=2500, rows_per_chunk=512, dtype="bfloat16", progress=False)
    return path


def test_plain_zarr_opens_the_store_without_featureforge(bf16_store, tmp_path):
    out = tmp_path / "acts.npy"
    code = f"""
import json, sys
import numpy as np, zarr
group = zarr.open_group({str(bf16_store)!r}, mode="r")
acts = group["acts"]
np.save({str(out)!r}, acts[...])
print(json.dumps({{
    "featureforge_imported": any(m == "featureforge" or m.startswith("featureforge.") for m in sys.modules),
    "root": dict(group.attrs),
    "acts": {{"dtype": str(acts.dtype), "shape": list(acts.shape), "chunks": list(acts.chunks), "attrs": dict(acts.attrs)}},
    "members": sorted(name for name, _ in group.members(max_depth=None)),
    "marker": dict(group["writers/0"].attrs),
    "features_shape": list(group["ground_truth/features"].shape),
}}))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["featureforge_imported"] is False
    root = info["root"]
    assert root["format"] == FORMAT_NAME and root["format_version"] == FORMAT_VERSION
    assert root["d_in"] == 24 and root["dtype"] == "bfloat16" and root["storage_dtype"] == "uint16"
    assert root["rows_per_chunk"] == 512 and root["rows_allocated"] == 2500 and root["writers"] == 1
    assert root["columns"] == {"acts": "bfloat16"}
    assert root["source"]["name"] == "synthetic" and root["source"]["options"]["seed"] == 3
    assert root["source"]["distribution"] == "featureforge"
    assert root["provenance"] == {"generator": "featureforge synthetic", "seed": 3, "n_features": 96}
    for words in ("rows_per_chunk", "writers/<rank>", "commit marker", "uncommitted", "bfloat16 is stored as uint16"):
        assert words in root["layout"]
    assert root["summary"]["complete"] is True and root["summary"]["rows"] == 2500
    assert info["acts"] == {"dtype": "uint16", "shape": [2500, 24], "chunks": [512, 24],
                            "attrs": {"logical_dtype": "bfloat16", "row_axis": 0}}
    assert {"acts", "chunk_stats", "writers", "writers/0", "ground_truth", "ground_truth/features"} <= set(info["members"])
    assert info["marker"] == {"chunks": 5, "last_chunk_rows": None, "done": True}
    assert info["features_shape"] == [96, 24]
    # The uint16 values are exactly torch's bfloat16 rounding of the source's float32 rows.
    stored = np.load(out)
    exact = ff.make_source("synthetic", SYNTH).rows(0, 2500)["acts"]
    expected = torch.from_numpy(exact).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, expected)
    widened = ff.open_store(bf16_store).read(0, 2500)
    np.testing.assert_array_equal(widened, torch.from_numpy(exact).to(torch.bfloat16).float().numpy())


def test_float16_store_holds_float16(tmp_path):
    path = tmp_path / "f16.zarr"
    store = ff.cache("synthetic", SYNTH, store=path, rows=1000, rows_per_chunk=256, dtype="float16", progress=False)
    import zarr

    acts = zarr.open_group(str(path), mode="r")["acts"]
    assert acts.dtype == np.float16 and acts.attrs["logical_dtype"] == "float16"
    exact = ff.make_source("synthetic", SYNTH).rows(0, 1000)["acts"]
    np.testing.assert_array_equal(acts[...], exact.astype(np.float16))
    assert store.dtype == "float16"


def _numpy_stats(x: np.ndarray) -> dict[str, float]:
    x = x.astype(np.float64)
    mean = x.mean(0)
    msn = float((x * x).sum(1).mean())
    return {"mean": mean, "std": x.std(0), "mean_squared_norm": msn, "scale": float(np.sqrt(x.shape[1] / msn))}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_info_json_normalisation_matches_numpy(tmp_path, dtype):
    path = tmp_path / f"{dtype}.zarr"
    # Uneven last chunk (2900 = 5 x 512 + 340) and a non-zero mean from the non-negative codes.
    ff.cache("synthetic", SYNTH, store=path, rows=2900, rows_per_chunk=512, dtype=dtype, progress=False)
    if dtype == "bfloat16":  # what the user sees
        info = json.loads(run_cli("info", path, "--json").stdout)
    else:  # the same dictionary, in this process
        info = json.loads(json.dumps(ff.open_store(path).info()))
    data = ff.open_store(path).read(0, 2900)  # the rows as stored (bf16-rounded for bfloat16)
    want = _numpy_stats(data)
    norm = info["normalisation"]
    assert norm["rows"] == 2900
    assert norm["mean_squared_norm"] == pytest.approx(want["mean_squared_norm"], rel=1e-12)
    assert norm["scale"] == pytest.approx(want["scale"], rel=1e-12)
    assert norm["mean_abs_mean"] == pytest.approx(float(np.abs(want["mean"]).mean()), rel=1e-10)
    assert norm["mean_std"] == pytest.approx(float(want["std"].mean()), rel=1e-10)
    # The full vectors behind them (what training uses).
    full = ff.open_store(path).normalisation()
    np.testing.assert_allclose(full["mean"], want["mean"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(full["std"], want["std"], rtol=1e-8, atol=1e-10)
    # Scaling by `scale` gives mean squared norm d_in.
    scaled = data.astype(np.float64) * norm["scale"]
    assert float((scaled**2).sum(1).mean()) == pytest.approx(24.0, rel=1e-9)


def test_partial_store_statistics_cover_committed_rows_only(tmp_path):
    class Failing(ff.ActivationSource):
        name = "failing-after-3-chunks"

        @property
        def d_in(self):
            return 8

        @property
        def n_rows(self):
            return 2048

        def rows(self, start, stop):
            if start >= 768:
                raise RuntimeError("model crashed")
            return {"acts": np.arange(start * 8, stop * 8, dtype=np.float32).reshape(-1, 8) / 1000}

    path = tmp_path / "p.zarr"
    with pytest.raises(RuntimeError, match="model crashed"):
        ff.cache(Failing(), store=path, rows_per_chunk=256, progress=False)
    store = ff.open_store(path)
    assert store.rows == 768 and not store.complete
    want = _numpy_stats(np.arange(768 * 8, dtype=np.float32).reshape(-1, 8) / 1000)
    norm = store.normalisation()
    assert norm["rows"] == 768
    assert norm["mean_squared_norm"] == pytest.approx(want["mean_squared_norm"], rel=1e-12)


def test_metadata_is_written_whole(tmp_path, monkeypatch):
    """Each zarr.json write of the root or a commit marker carries all its keys: a concurrent
    reader (another writer rank waiting for the root) or a kill -9 never sees half of them."""
    from zarr.storage import LocalStore

    writes: list[tuple[str, dict]] = []
    original = LocalStore.set

    async def spy(self, key, value):
        if key in ("zarr.json", "writers/0/zarr.json"):
            writes.append((key, json.loads(value.to_bytes())["attributes"]))
        return await original(self, key, value)

    monkeypatch.setattr(LocalStore, "set", spy)
    ff.cache("synthetic", SYNTH, store=tmp_path / "s.zarr", rows=1000, rows_per_chunk=256, progress=False)
    root = [attrs for key, attrs in writes if key == "zarr.json" and attrs]
    markers = [attrs for key, attrs in writes if key == "writers/0/zarr.json"]
    assert root and all(attrs.get("format") == FORMAT_NAME and {"d_in", "writers", "columns", "source", "layout"} <= set(attrs) for attrs in root)
    assert [m["chunks"] for m in markers] == [0, 1, 2, 3, 4]
    assert all(set(m) == {"chunks", "last_chunk_rows", "done"} for m in markers)


def test_memory_url_round_trip():
    url = f"memory://featureforge-test-{uuid.uuid4().hex}/store.zarr"
    src = ff.make_source("synthetic", SYNTH)
    store = ff.cache(src, store=url, rows=2000, rows_per_chunk=256, progress=False)
    assert store.complete and store.rows == 2000 and store.url == url
    opened = ff.open_store(url)
    got = np.concatenate([b["acts"].numpy() for b in opened.loader(batch_size=300, buffer_rows=512)])
    assert row_counter(got) == row_counter(src.rows(0, 2000)["acts"])
    assert opened.info()["normalisation"] == store.info()["normalisation"]
    np.testing.assert_array_equal(opened.ground_truth()["features"], src.ground_truth()["features"])
    # A lost chunk on a remote store: the reader names it, and rerunning `cache` rewrites it.
    opened.location.fs.rm(opened.location.key_path("acts/c/2/0"))
    with pytest.raises(ff.CorruptStoreError, match="chunk acts/c/2/0"):
        for _ in ff.open_store(url).loader(batch_size=300):
            pass
    ff.cache(ff.make_source("synthetic", SYNTH), store=url, rows=2000, rows_per_chunk=256, progress=False)
    np.testing.assert_array_equal(ff.open_store(url).read(0, 2000), src.rows(0, 2000)["acts"])
    opened.location.fs.rm(opened.location.root, recursive=True)


@pytest.mark.slow
def test_s3_round_trip_through_moto():
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1").create_bucket(Bucket="ff-test")
        options = {"endpoint_url": endpoint, "key": "x", "secret": "x"}
        src = ff.make_source("synthetic", SYNTH)
        url = "s3://ff-test/stores/synthetic.zarr"
        store = ff.cache(src, store=url, rows=2000, rows_per_chunk=512, progress=False, storage_options=options)
        assert store.complete and store.rows == 2000
        opened = ff.open_store(url, storage_options=options)
        got = np.concatenate([b["acts"].numpy() for b in opened.loader(batch_size=300)])
        assert row_counter(got) == row_counter(src.rows(0, 2000)["acts"])
        np.testing.assert_array_equal(opened.read(0, 2000), src.rows(0, 2000)["acts"])
        assert opened.info()["normalisation"]["rows"] == 2000
        # A rerun of a complete remote store is a no-op; another d_in is refused.
        again = ff.cache(src, store=url, rows=2000, rows_per_chunk=512, progress=False, storage_options=options)
        assert again.rows == 2000
        with pytest.raises(ff.StoreMismatchError, match="--overwrite"):
            ff.cache("synthetic", dict(SYNTH, d_in=8), store=url, rows=2000, rows_per_chunk=512, progress=False, storage_options=options)
    finally:
        server.stop()
