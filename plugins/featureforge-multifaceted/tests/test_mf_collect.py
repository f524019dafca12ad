"""The streaming pass keeps exactly what a dense in-memory computation would."""

from __future__ import annotations

import numpy as np
import torch

import featureforge
from featureforge_multifaceted.collect import HIST_BINS, collect
from featureforge_multifaceted.gather import read_rows


def _dense(dictionary, store):
    acts = torch.from_numpy(store.read(0, store.rows))
    with torch.no_grad():
        return dictionary.encode(acts).numpy()


def test_top_rows_counts_and_histogram_match_a_dense_pass(synthetic_store, synthetic_run):
    dictionary = featureforge.load(synthetic_run)
    found = collect(dictionary, synthetic_store, top_n=16, sample=32, batch_rows=1000)  # batches straddle chunks
    codes = _dense(dictionary, synthetic_store)
    assert found.rows == synthetic_store.rows == codes.shape[0]
    np.testing.assert_array_equal(found.counts.numpy(), (codes > 0).sum(0))
    np.testing.assert_allclose(found.sums.numpy(), np.where(codes > 0, codes, 0).sum(0, dtype=np.float64), rtol=1e-4)
    assert found.histogram.shape == (dictionary.d_dict, HIST_BINS)
    np.testing.assert_array_equal(found.histogram.sum(1).numpy(), found.counts.numpy())
    for latent in range(dictionary.d_dict):
        values, rows = found.top(latent)
        expected = np.sort(codes[:, latent])[::-1][: len(values)]
        np.testing.assert_allclose(values, expected, rtol=1e-5)
        np.testing.assert_allclose(codes[rows, latent], values, rtol=1e-5)  # rows are global store rows


def test_sample_is_uniform_over_firing_rows(synthetic_store, synthetic_run):
    dictionary = featureforge.load(synthetic_run)
    found = collect(dictionary, synthetic_store, top_n=4, sample=400, seed=3)
    codes = _dense(dictionary, synthetic_store)
    latent = int(np.argmax((codes > 0).sum(0)))
    values, rows = found.sampled(latent)
    assert len(set(rows.tolist())) == len(rows) == min(400, int((codes[:, latent] > 0).sum()))
    np.testing.assert_allclose(codes[rows, latent], values, rtol=1e-5)
    firing = codes[codes[:, latent] > 0, latent]
    # A uniform sample's median sits near the population median (not near the top, unlike top rows).
    lo, hi = np.quantile(firing, [0.35, 0.65])
    assert lo <= np.median(values) <= hi
    # Rows come from the whole store, not only its first chunks.
    assert rows.max() > synthetic_store.rows * 0.75 and rows.min() < synthetic_store.rows * 0.25


def test_memory_is_fixed_by_the_dictionary_not_the_rows(synthetic_store, synthetic_run):
    dictionary = featureforge.load(synthetic_run)
    small = collect(dictionary, synthetic_store, top_n=8, sample=8, max_rows=5000)
    full = collect(dictionary, synthetic_store, top_n=8, sample=8)
    assert small.rows == 5000 and full.rows == synthetic_store.rows
    for a, b in [(small.top_values, full.top_values), (small.sample_rows, full.sample_rows), (small.histogram, full.histogram)]:
        assert a.shape == b.shape


def test_read_rows_returns_rows_in_the_order_asked(synthetic_store):
    rows = np.array([30000, 5, 4096, 5, 12345])
    got = read_rows(synthetic_store, rows)["acts"]
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(got[i], synthetic_store.read(int(r), int(r) + 1)[0])
