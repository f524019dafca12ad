"""Facets recover planted truth; weakly clustered examples keep one facet; prototypes follow the paper."""

from __future__ import annotations

import numpy as np
import pytest

import featureforge
from featureforge_multifaceted.facets import FacetSettings, find_facets, layout, token_stats
from featureforge_multifaceted.planted import planted_ari

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


def test_one_gaussian_blob_keeps_one_facet():
    x = np.random.default_rng(0).normal(size=(200, 16)) + 5.0
    assert find_facets(x).k == 1


def test_elongated_gaussian_is_not_split_thanks_to_the_null_check():
    """k-means splits any elongated cloud with a fair silhouette; the Gaussian null check refuses that."""
    clouds = [np.random.default_rng(s).normal(size=(64, 16)) * np.r_[4.0, 2.0, np.ones(14)] + 10 for s in range(10)]
    assert sum(find_facets(x, FacetSettings(null_margin=None)).k > 1 for x in clouds) >= 8
    assert all(find_facets(x).k == 1 for x in clouds)


def test_prototype_is_centre_example_plus_its_15_nearest_members():
    rng = np.random.default_rng(1)
    centres = np.eye(8)[:3] * 10
    x = np.concatenate([c + rng.normal(size=(60, 8)) for c in centres])
    f = find_facets(x, FacetSettings(normalise=False))
    assert f.k == 3 and sorted(f.sizes()) == [60, 60, 60]
    for c, proto in enumerate(f.prototypes):
        assert len(proto) == len(set(proto)) == 16
        assert all(f.labels[i] == c for i in proto)
    # Facets are numbered by size and centroids live in the input space.
    assert np.allclose(np.sort(np.linalg.norm(f.centroids, axis=1)), 10, atol=1.0)


def test_token_stats_count_each_facet_tokens():
    labels = np.array([0, 0, 0, 1, 1])
    stats = token_stats(labels, [" a", " a", " b", " c", " c"])
    assert stats[0][0] == {"token": " a", "count": 2, "share": round(2 / 3, 4)}
    assert stats[1] == [{"token": " c", "count": 2, "share": 1.0}]


def test_layouts_place_facets_apart():
    rng = np.random.default_rng(2)
    x = np.concatenate([c + rng.normal(size=(30, 8)) for c in np.eye(8)[:2] * 10])
    f = find_facets(x, FacetSettings(normalise=False))
    for method in ("pca", "tsne"):
        xy = layout(f, method)
        assert xy.shape == (60, 2)
        a, b = xy[f.labels == 0].mean(0), xy[f.labels == 1].mean(0)
        spread = max(xy[f.labels == 0].std(0).max(), xy[f.labels == 1].std(0).max())
        assert np.linalg.norm(a - b) > 2 * spread, method
