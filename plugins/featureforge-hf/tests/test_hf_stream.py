"""Streamed training from the hf source (issue 24): no store, a real model's forward passes feed
the shuffle buffer; --resume restarts the stream at the recorded row (the source seeks by
skipping documents' rows without running the model on them)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import featureforge as ff


def _train(out, model, **kw):
    source = {"model": model, "hook": "transformer.h.0", "context_size": 32, "batch_size": 8}
    settings = dict(rows=3072, batch_size=256, lr=1e-3, holdout_rows=256, buffer_rows=1536, checkpoint_every=1024,  # the resume lands mid-window
                    log_every=2, progress=False, threads=1)
    return ff.train("topk", {"d_dict": 64, "k": 4}, source="hf", source_options=source, out=out, **(settings | kw))


def test_streamed_hf_run_resumes_to_the_uninterrupted_weights_and_evaluates_downstream(tiny_gpt2, tmp_path):
    [whole] = _train(tmp_path / "whole", tiny_gpt2)
    config = json.loads((whole / "config.json").read_text())
    assert config["stream"]["source"] == "hf" and not config["stream"]["random_access"] and config["stream"]["seekable"]
    held = ff.open_store(whole / "heldout")
    assert held.rows == 256 and {"token_ids", "seq_ids"} <= set(held.columns)

    import featureforge.training._loop as loop

    class Crash(Exception):
        pass

    real, calls = loop._Run._checkpoint, []

    def checkpoint_then_crash(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise Crash()

    loop._Run._checkpoint = checkpoint_then_crash
    try:
        with pytest.raises(Crash):
            _train(tmp_path / "cut", tiny_gpt2)
    finally:
        loop._Run._checkpoint = real
    [cut] = _train(tmp_path / "cut", tiny_gpt2, resume=True)
    a, b = load_file(str(whole / "weights.safetensors")), load_file(str(cut / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # held-out text for the live model starts after every document the run streamed for training
    next_doc = json.loads((whole / "config.json").read_text())["stream"]["next_doc_id"]
    assert next_doc > int(held.read(0, held.rows, "doc_ids").max()) + 1
    assert json.loads((cut / "config.json").read_text())["stream"]["next_doc_id"] == next_doc
    report = ff.evaluate(whole, evaluators={"downstream": {"max_sequences": 4}}, progress=False)
    metrics = report["evaluators"]["downstream"]["metrics"]
    assert report["store"].endswith("heldout") and metrics["ce_loss_score"] == metrics["ce_loss_score"]  # a number, not NaN
    assert f"document {next_doc} on" in json.dumps(report["evaluators"]["downstream"])
