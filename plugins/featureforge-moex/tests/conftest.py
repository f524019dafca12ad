"""Shared fixtures of the featureforge-moex tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # One intra-op thread: these tests are small, and two threads on a busy 2-core machine spin.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def moex_synthetic_store(tmp_path_factory):
    """16k rows of 32-wide activations from 128 known features, about 4 active per row, 2k-row chunks."""
    import featureforge

    path = tmp_path_factory.mktemp("moex-store") / "synthetic.zarr"
    return featureforge.cache(
        "synthetic",
        {"d_in": 32, "n_features": 128, "mean_active": 4.0, "zipf_exponent": 0.0, "noise_std": 0.01, "seed": 3},
        store=str(path),
        rows=16384,
        rows_per_chunk=2048,
        progress=False,
    )
