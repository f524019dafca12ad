"""Facets recover planted truth: union latents over known features of a synthetic store, scored by ARI."""

from __future__ import annotations

import numpy as np
import pytest

import featureforge
from featureforge_testbeds.planted import planted_ari

UNIONS = [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9], [10]]


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("planted") / "planted.zarr"
    options = {"d_in": 64, "n_features": 128, "mean_active": 2.0, "zipf_exponent": 0.0, "noise_std": 0.01, "seed": 3}
    return featureforge.cache("synthetic", options, store=str(path), rows=32768, rows_per_chunk=8192, progress=False)


def test_facets_of_union_latents_match_the_planted_features(planted_store):
    results = planted_ari(planted_store, UNIONS, top_n=300)
    by_size = {len(r.members): [] for r in results}
    for r in results:
        by_size[len(r.members)].append(r)
    print({r.latent: (r.members, r.facets, round(r.ari_single, 3), round(r.ari_all, 3)) for r in results})
    assert np.mean([r.ari_single for r in results]) >= 0.9
    assert np.mean([r.ari_all for r in results]) >= 0.9
    assert all(r.facets == 2 for r in by_size[2])  # two planted features, two facets
    assert all(r.facets >= 3 for r in by_size[3])
    assert [r.facets for r in by_size[1]] == [1]  # a plain feature is not split
