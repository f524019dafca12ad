"""Shared fixtures of the featureforge-sae tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory):
    """64k rows of 32-wide activations built from 64 known unit features, about 3 active per row."""
    import featureforge

    path = tmp_path_factory.mktemp("sae-store") / "synthetic.zarr"
    return featureforge.cache(
        "synthetic",
        {"d_in": 32, "n_features": 64, "mean_active": 3.0, "zipf_exponent": 0.0, "noise_std": 0.01, "seed": 1},
        store=str(path),
        rows=65536,
        rows_per_chunk=8192,
        progress=False,
    )

