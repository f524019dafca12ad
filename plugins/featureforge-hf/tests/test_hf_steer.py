"""Interventions on latents through the splice seam: ``add``/``clamp``/``ablate``, ``featureforge.steer``,
the ``steered`` context manager and ``featureforge steer`` run as a user runs it.

Real parts: a TopK dictionary trained (featureforge-sae) on a store cached from a tiny random
GPT-2 and from MiniLM; the live models rebuilt from the stores' recorded sources.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import featureforge as ff
from featureforge.interventions import Intervention, replacement
from featureforge.steering import live_source, store_typical


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory, tiny_gpt2):
    root = tmp_path_factory.mktemp("steer-gpt2")
    options = {"model": tiny_gpt2, "hook": "transformer.h.0", "context_size": 48, "batch_size": 4, "max_docs": 20}
    store = ff.cache("hf", options, store=str(root / "store.zarr"), rows=1200, rows_per_chunk=400, progress=False)
    (run,) = ff.train("topk", {"d_dict": 64, "k": 4}, store=store, out=str(root / "run"), progress=False, batch_size=200, threads=1)
    return str(run), store


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("steer-minilm")
    store = ff.cache("hf", {"max_docs": 8, "context_size": 64, "batch_size": 8}, store=str(root / "store.zarr"), rows=1000, rows_per_chunk=500, progress=False)
    (run,) = ff.train("topk", {"d_dict": 128, "k": 4}, store=store, out=str(root / "run"), progress=False, batch_size=250, threads=1)
    return str(run), store


def _prompt_batch(live, text):
    ids = torch.tensor([live.prompt_ids(text)], device=live.device)
    mask = torch.ones_like(ids)
    return ids, mask, live.token_mask(ids, mask)


def _codes_at_hook(live, dictionary, ids, mask):
    with torch.no_grad():
        return dictionary.encode(live.loaded.capture(live.site, ids, mask)[0].float())


PROMPT = "def read(self, path):\n    return open(path)"


def test_identity_interventions_change_nothing(gpt2_run):
    run, store = gpt2_run
    dictionary = ff.load(run)
    typical = store_typical(dictionary, store)
    with live_source(store).splice(dictionary) as live:
        ids, mask, keep = _prompt_batch(live, PROMPT)
        codes = _codes_at_hook(live, dictionary, ids, mask)
        clean = live(ids, mask, replace="none")
        silent = int((codes != 0).any(0).logical_not().nonzero()[0])
        firing_pos, firing = (int(v) for v in (codes != 0).nonzero()[0])
        # ablate a latent that fires nowhere in the prompt: bit for bit the clean logits
        ablated = live(ids, mask, replace=replacement(dictionary, [Intervention((silent,), "ablate")], typical), token_mask=keep)
        assert torch.equal(ablated, clean)
        # add with α = 0: the identity, bit for bit
        added = live(ids, mask, replace=replacement(dictionary, [Intervention((firing,), "add", 0.0)], typical), token_mask=keep)
        assert torch.equal(added, clean)
        # clamp a firing latent to its own value at that position: the identity up to float tolerance
        own = float(codes[firing_pos, firing])
        only_there = torch.zeros_like(keep)
        only_there[0, firing_pos] = True
        clamp = replacement(dictionary, [Intervention((firing,), "clamp", own, "absolute")], typical)
        assert torch.allclose(live(ids, mask, replace=clamp, token_mask=only_there), clean, atol=1e-5)
        # ... while real interventions do change the output, and only through that latent
        ablate_firing = live(ids, mask, replace=replacement(dictionary, [Intervention((firing,), "ablate")], typical), token_mask=only_there)
        assert not torch.allclose(ablate_firing, clean, atol=1e-4)
        assert torch.equal(ablate_firing[0, :firing_pos], clean[0, :firing_pos]), "causal: positions before the edit keep their logits"
        pushed = live(ids, mask, replace=replacement(dictionary, [Intervention((firing, silent), "add", 8.0)], typical), token_mask=keep)
        assert (pushed - clean).abs().max() > 1e-2


def test_add_moves_the_hook_by_alpha_times_the_typical_decoder_row(gpt2_run):
    run, store = gpt2_run
    dictionary = ff.load(run)
    typical = store_typical(dictionary, store)
    latent = int(typical.argmax())
    rows = torch.randn(5, 32)
    fn = replacement(dictionary, [Intervention((latent,), "add", 3.0)], typical)
    direction = (dictionary.decode(torch.eye(64)[latent : latent + 1]) - dictionary.decode(torch.zeros(1, 64)))[0]
    assert torch.allclose(fn(rows) - rows, 3.0 * float(typical[latent]) * direction.expand(5, -1), atol=1e-5)
    with pytest.raises(ff.BadInputError, match="outside the dictionary"):
        replacement(dictionary, [Intervention((64,), "add", 1.0)], typical)


def test_steer_api_generates_with_and_without_and_reports_the_shift(gpt2_run):
    run, store = gpt2_run
    result = ff.steer(run, store=store, latents=[int(store_typical(ff.load(run), store).argmax())], prompt=PROMPT, alphas=[0, 8], max_new_tokens=6)
    assert result.kind == "causal-lm" and result.hook == "transformer.h.0" and len(result.outcomes) == 2
    zero, strong = result.outcomes
    assert zero.text == result.clean_text and zero.kl == pytest.approx(0.0, abs=1e-9)
    assert strong.kl > 1e-4 and len(strong.promoted) == 10
    assert strong.promoted[0].logprob_steered > strong.promoted[0].logprob_clean
    assert strong.suppressed[0].logprob_steered < strong.suppressed[0].logprob_clean
    again = ff.steer(run, store=store, latents=result.latents, prompt=PROMPT, alphas=[8], max_new_tokens=6)
    assert again.outcomes[0].text == strong.text, "greedy: same continuation every time"
    json.dumps(result.to_dict())


def test_steered_context_manager_patches_only_inside_the_block(gpt2_run):
    run, store = gpt2_run
    latent = int(store_typical(ff.load(run), store).argmax())
    with ff.steered(run, store=store, latents=[latent], alpha=8) as live:
        ids, mask, _ = _prompt_batch(live, PROMPT)
        inside = live.model(input_ids=ids, attention_mask=mask).logits
        clean = live(ids, mask, replace="none")
        model = live.model
    after = model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(inside, clean, atol=1e-4)
    assert torch.allclose(after, clean, atol=1e-6)


def test_encoder_steering_reports_pooled_embedding_change(minilm_run):
    run, store = minilm_run
    dictionary = ff.load(run)
    latent = int(store_typical(dictionary, store).argmax())
    result = ff.steer(run, store=store, latents=[latent], prompt="The cat sat on the mat.", alphas=[0, 4, 16])
    assert result.kind == "encoder" and result.clean_text is None
    d0, d4, d16 = (o.embedding_distance for o in result.outcomes)
    assert d0 == pytest.approx(0.0, abs=1e-6) and 0 < d4 < d16
    ablate = ff.steer(run, store=store, latents=[latent], prompt="The cat sat on the mat.", mode="ablate")
    assert len(ablate.outcomes) == 1 and ablate.outcomes[0].embedding_distance >= -1e-6


def test_steer_cli_sweep_json_and_text(gpt2_run, cli_env):
    run, store = gpt2_run
    env = {**cli_env, "FEATUREFORGE_PLUGINS": "featureforge-hf,featureforge-sae"}
    latent = str(int(store_typical(ff.load(run), store).argmax()))
    base = [sys.executable, "-m", "featureforge.cli", "steer", run, "--store", store.url, "--latent", latent, "--prompt", PROMPT, "--max-new-tokens", "4"]
    out = subprocess.run(base + ["--alpha", "0,2,8", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [o["alpha"] for o in data["outcomes"]] == [0, 2, 8] and data["outcomes"][0]["text"] == data["clean_text"]
    text = subprocess.run(base + ["--alpha", "8", "--mode", "clamp", "--positions", "-1"], capture_output=True, text=True, env=env, timeout=600)
    assert text.returncode == 0, text.stderr
    assert "clean" in text.stdout and "promoted" in text.stdout and "α=8" in text.stdout
    bad = subprocess.run(base + ["--latent", "999"], capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "outside the dictionary" in bad.stderr


def test_steering_evaluator_measures_latents_and_the_random_control(gpt2_run, tmp_path):
    from featureforge import EvaluationContext

    run, store = gpt2_run
    evaluator = ff.get_registry().get("evaluator", "steering")({"latents": 4, "contexts": 16, "context_tokens": 8, "alphas": "0,8"})
    result = evaluator.evaluate(ff.load(run), EvaluationContext(store, tmp_path, progress=False))
    m = result.metrics
    assert m["kind"] == "causal-lm" and 1 <= m["latents_steered"] <= 4
    for prefix in ("", "control_"):
        assert m[f"{prefix}kl_rest_a0"] == 0 and m[f"{prefix}ce_increase_a0"] == 0 and m[f"{prefix}output_score_gain_a0"] == 0
        assert m[f"{prefix}kl_rest_a8"] > 0 and -1 <= m[f"{prefix}stability_a8"] <= 1
    table = json.loads((tmp_path / "steering.json").read_text())
    assert len(table["latents"]) == m["latents_steered"] and all(r["contexts"] >= 4 for r in table["latents"])
    assert (tmp_path / "steering.png").stat().st_size > 1000


def test_steering_evaluator_from_the_cli(gpt2_run, cli_env):
    run, store = gpt2_run
    env = {**cli_env, "FEATUREFORGE_PLUGINS": "featureforge-hf,featureforge-sae"}
    out = subprocess.run([sys.executable, "-m", "featureforge.cli", "evaluate", run, "--store", store.url, "--evaluator", "steering",
                          "-o", "steering.latents=2", "-o", "steering.contexts=12", "-o", "steering.context_tokens=8", "--json"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout)["evaluators"]["steering"]["metrics"]
    assert m["latents_steered"] >= 1 and "output_score_gain_a4" in m and "control_output_score_gain_a4" in m
    bad = subprocess.run([sys.executable, "-m", "featureforge.cli", "evaluate", run, "--store", store.url, "--evaluator", "steering",
                          "-o", "steering.alphas=x"], capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 1 and "alphas" in bad.stderr and bad.stderr.count("\n") == 1


def test_steer_cli_on_minilm_reports_the_embedding_change(minilm_run, cli_env):
    run, store = minilm_run
    env = {**cli_env, "FEATUREFORGE_PLUGINS": "featureforge-hf,featureforge-sae"}
    latent = str(int(store_typical(ff.load(run), store).argmax()))
    out = subprocess.run([sys.executable, "-m", "featureforge.cli", "steer", run, "--store", store.url, "--latent", latent,
                          "--alpha", "0,8", "--prompt", "The cat sat on the mat."], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if "pooled embedding" in line]
    assert len(lines) == 2 and float(lines[1].split("=")[-1]) > 0
