"""Facets of one unit: cluster its top-activating examples and keep a prototype set per cluster.

Following Nguyen, Yosinski & Clune 2016 ("Multifaceted Feature Visualization", arXiv 1602.03616):
a unit often fires for several distinct kinds of input, so its top examples are embedded, reduced
with PCA and clustered with k-means; each cluster is a facet. The paper fixes the number of
clusters; here it is chosen per unit by the mean silhouette over k = 2..max_facets, and a unit
keeps one facet unless its best silhouette exceeds both ``min_silhouette`` and, by ``null_margin``,
the best silhouette of as many points drawn from one Gaussian with the same mean and covariance
(k-means finds "groups" in any cloud; on 64 real MiniLM examples per latent a fixed 0.2 alone let
46% of such group-free Gaussian clouds through). A facet's prototype set is the member nearest the centroid plus its 15 nearest members,
the set the paper averages to start each facet's synthesis.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Sequence

import numpy as np


@dataclasses.dataclass
class FacetSettings:
    """How facets are found (shared by the text evaluator and the vision tools)."""

    max_facets: int = 4
    """Largest number of facets tried per unit (k = 1..max_facets)."""
    min_silhouette: float = 0.2
    """Below this best silhouette a unit keeps a single facet."""
    pca_dims: int = 16
    """PCA components the examples are reduced to before k-means."""
    neighbours: int = 15
    """Nearest members added to each facet's prototype (the paper uses 15)."""
    normalise: bool = True
    """Scale each example embedding to unit length first (cluster by direction, not magnitude)."""
    null_margin: float | None = 0.05
    """More than one facet only if the best silhouette beats, by this margin, the best silhouette of
    points drawn from one Gaussian with the examples' mean and covariance (None: no null check)."""
    min_examples: int = 8
    """Units with fewer examples than this keep a single facet."""
    seed: int = 0
    """Seed of k-means."""


@dataclasses.dataclass
class Facets:
    """The facets of one unit's examples (indices refer to the rows of the embedding given)."""

    #: Int [n]: facet of each example; facets are numbered by size, largest first.
    labels: np.ndarray
    #: Float [k, d]: mean of each facet's examples in the original (un-normalised) embedding.
    centroids: np.ndarray
    #: Per facet: example indices of the prototype set, the one nearest the centroid first.
    prototypes: list[list[int]]
    #: Mean silhouette of each k tried (k >= 2); empty when too few examples.
    silhouettes: dict[int, float]
    #: Float [n, dims]: the examples in the reduced (normalised, PCA) space k-means worked in.
    reduced: np.ndarray | None = None
    #: Best silhouette of the same clustering on the Gaussian null (None when not computed).
    null_silhouette: float | None = None

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def sizes(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.k).tolist()


def _reduce(x: np.ndarray, settings: FacetSettings) -> np.ndarray:
    from sklearn.decomposition import PCA

    if settings.normalise:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    dims = min(settings.pca_dims, x.shape[0] - 1, x.shape[1])
    if dims < 1:
        return x - x.mean(0)
    return PCA(n_components=dims, random_state=settings.seed).fit_transform(x)


def _kmeans(z: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(z)


def find_facets(embedding: Any, settings: FacetSettings | None = None) -> Facets:
    """Facets of one unit from the embeddings [n, d] of its top examples."""
    from threadpoolctl import threadpool_limits

    # One thread: on a few hundred points OpenMP start-up costs 100x the clustering itself.
    with threadpool_limits(1):
        return _find_facets(embedding, settings or FacetSettings())


def _find_facets(embedding: Any, settings: FacetSettings) -> Facets:
    x = np.asarray(embedding, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        return Facets(np.zeros(0, np.int64), np.zeros((0, x.shape[1] if x.ndim == 2 else 0)), [], {})
    z = _reduce(x, settings)
    labels = np.zeros(n, dtype=np.int64)
    scores: dict[int, float] = {}
    null_score = None
    if n >= settings.min_examples and settings.max_facets >= 2:
        scores, fits = _silhouettes(z, settings)
        bar = settings.min_silhouette
        if settings.null_margin is not None and scores:
            null_score = max(_silhouettes(_gaussian_null(z, settings.seed), settings)[0].values(), default=-1.0)
            bar = max(bar, null_score + settings.null_margin)
        passing = [k for k in scores if scores[k] > bar]
        if passing:
            labels = fits[max(passing, key=lambda k: scores[k])]
    # Number facets by size, largest first (ties by first appearance), so facet 0 is the main one.
    sizes = np.bincount(labels)
    order = sorted(range(len(sizes)), key=lambda c: (-sizes[c], int(np.argmax(labels == c))))
    labels = np.argsort(order)[labels]
    centroids = np.stack([x[labels == c].mean(0) for c in range(len(order))])
    prototypes = [_prototype(z, np.flatnonzero(labels == c), settings.neighbours) for c in range(len(order))]
    return Facets(labels, centroids, prototypes, scores, z, null_score)


def _silhouettes(z: np.ndarray, settings: FacetSettings) -> tuple[dict[int, float], dict[int, np.ndarray]]:
    """Mean silhouette and k-means labels for each k = 2..max_facets that splits the points."""
    from sklearn.metrics import silhouette_score

    scores, fits = {}, {}
    for k in range(2, min(settings.max_facets, z.shape[0] - 1) + 1):
        found = _kmeans(z, k, settings.seed)
        if len(np.unique(found)) >= 2:
            scores[k], fits[k] = float(silhouette_score(z, found)), found
    return scores, fits


def _gaussian_null(z: np.ndarray, seed: int) -> np.ndarray:
    """As many points from one Gaussian with ``z``'s mean and covariance: the same spread, no groups."""
    rng = np.random.default_rng(seed)
    centred = z - z.mean(0)
    return z.mean(0) + rng.standard_normal((z.shape[0], z.shape[0])) @ centred / np.sqrt(max(z.shape[0] - 1, 1))


def _prototype(z: np.ndarray, members: np.ndarray, neighbours: int) -> list[int]:
    """The member nearest the facet's centroid (in the reduced space) and its nearest members."""
    pts = z[members]
    centre = members[np.argmin(((pts - pts.mean(0)) ** 2).sum(1))]
    dist = ((z[members] - z[centre]) ** 2).sum(1)
    return [int(i) for i in members[np.argsort(dist, kind="stable")[: neighbours + 1]]]


def layout(facets: Facets, method: str = "pca", seed: int = 0) -> np.ndarray:
    """2-D map of the examples for display: the first two PCA components, or t-SNE of the reduced space.

    The paper lays out a unit's top images with t-SNE; it is slow (about a second per unit here),
    so PCA is the default and ``tsne`` is asked for.
    """
    z = facets.reduced if facets.reduced is not None else np.zeros((len(facets.labels), 0))
    if z.shape[0] < 3 or z.shape[1] == 0:
        return np.zeros((z.shape[0], 2))
    if method == "tsne" and z.shape[0] > 5:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            perplexity = float(min(30.0, (z.shape[0] - 1) / 3))
            return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(z)
    return np.pad(z[:, :2], ((0, 0), (0, max(0, 2 - z.shape[1]))))


def token_stats(labels: np.ndarray, tokens: Sequence[str], top: int = 5) -> list[list[dict[str, Any]]]:
    """Per facet, its most frequent activating tokens with counts and share of the facet."""
    out = []
    for c in range(int(labels.max()) + 1 if len(labels) else 0):
        members = [tokens[i] for i in np.flatnonzero(labels == c)]
        counts = collections.Counter(members).most_common(top)
        out.append([{"token": t, "count": n, "share": round(n / len(members), 4)} for t, n in counts])
    return out
