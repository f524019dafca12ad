"""Weakly clustered examples keep one facet; prototypes follow the paper (planted truth: featureforge-testbeds)."""

from __future__ import annotations

import numpy as np

from featureforge_multifaceted.facets import FacetSettings, find_facets, layout, token_stats


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
