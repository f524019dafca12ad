"""Facets of a narrow dictionary's latents line up with a wider dictionary's latents (feature splitting)."""

from __future__ import annotations

import pytest

import featureforge
from featureforge_multifaceted.splitting import facet_splitting


@pytest.mark.slow
def test_facets_of_narrow_latents_match_distinct_wide_latents(tmp_path):
    pytest.importorskip("featureforge_sae", reason="needs the featureforge-sae plugin")
    options = {"d_in": 64, "n_features": 128, "mean_active": 2.0, "zipf_exponent": 0.0, "noise_std": 0.01, "seed": 5}
    store = featureforge.cache("synthetic", options, store=str(tmp_path / "s.zarr"), rows=65536, rows_per_chunk=8192, progress=False)
    for name, d_dict in (("narrow", 48), ("wide", 256)):
        featureforge.train("topk", {"k": 2, "d_dict": d_dict}, store=store.url, out=str(tmp_path / name), epochs=3, batch_size=1024, progress=False)
    result = facet_splitting(featureforge.load(tmp_path / "narrow"), featureforge.load(tmp_path / "wide"), store)
    print({k: v for k, v in result.items() if k != "latents"})
    assert result["multi_facet_latents"] >= 10
    assert result["mean_facet_centroid_cosine"] > 0.85
    assert result["mean_facet_centroid_cosine"] > result["mean_narrow_decoder_cosine"] + 0.05
    assert result["distinct_wide_latents_fraction"] >= 0.8
    assert result["cosine_and_firing_agree"] >= 0.9
