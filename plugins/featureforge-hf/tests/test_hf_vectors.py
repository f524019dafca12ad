"""Steering vectors end to end on a tiny random GPT-2: ``featureforge vector``, steering with a vector
(α 0 is the identity, several layers, a subspace), its decomposition in a trained TopK's latents,
and the ``steering`` evaluator scoring a vector beside latents.

Real parts: the hf source and its live model, a TopK dictionary trained (featureforge-sae) on a
store cached from the same model, the CLI as a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import featureforge as ff
from featureforge.interventions import DirectionEdit, direction_replacement
from featureforge.steering import store_typical
from featureforge.vectors import SteeringVector, load_vector

CODE = ["def read(self, path):\n    return open(path)", "for i in range(10):\n    print(i)", "import os\nx = os.path.join(a, b)",
        "class Reader:\n    pass"]
PROSE = ["The quick brown fox jumps over the lazy dog.", "This module provides a simple way to read files.",
         "It was a dark and stormy night.", "Please see the documentation for more details."]


@pytest.fixture(scope="module")
def options(tiny_gpt2):
    return {"model": tiny_gpt2, "hook": "transformer.h.0", "context_size": 48, "batch_size": 4, "max_docs": 20}


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts")
    (root / "code.txt").write_text("\n\n".join(CODE) + "\n")
    (root / "prose.txt").write_text("\n".join(PROSE) + "\n")
    return str(root / "code.txt"), str(root / "prose.txt")


@pytest.fixture(scope="module")
def code_vector(tmp_path_factory, options):
    return ff.vector("hf", options, positive=CODE, negative=PROSE, out=str(tmp_path_factory.mktemp("vec") / "code"))


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory, options):
    root = tmp_path_factory.mktemp("vec-gpt2")
    store = ff.cache("hf", options, store=str(root / "store.zarr"), rows=1200, rows_per_chunk=400, progress=False)
    (run,) = ff.train("topk", {"d_dict": 64, "k": 4}, store=store, out=str(root / "run"), progress=False, batch_size=200, threads=1)
    return str(run), store


def _rows(source, text):
    loaded = source.loaded
    ids = torch.tensor([list(loaded.prefix) + loaded.encode([text])[0]])
    return loaded.capture(source.site, ids, torch.ones_like(ids))[0].float()


def test_the_vector_is_the_mean_difference_and_its_folder_rebuilds_it(code_vector, options):
    from featureforge_hf import HFSource

    source = HFSource(options)
    keep_bos = source.loaded.prefix  # stored rows skip the BOS token
    pos = torch.stack([_rows(source, t)[len(keep_bos):].mean(0) for t in CODE])
    neg = torch.stack([_rows(source, t)[len(keep_bos):].mean(0) for t in PROSE])
    diff = pos.mean(0) - neg.mean(0)
    assert torch.allclose(code_vector.direction, diff / diff.norm(), atol=1e-5)
    assert code_vector.typical == pytest.approx(float(diff.norm()), rel=1e-5)
    again = load_vector(code_vector.path)
    assert torch.equal(again.direction, code_vector.direction) and again.typical == code_vector.typical
    assert again.hook == "transformer.h.0" and again.source["name"] == "hf" and again.source["options"]["model"] == options["model"]
    assert again.stats["positive_prompts"] == 4 and again.provenance["causal_lm"] is True
    pca = ff.vector("hf", options, positive=CODE, negative=PROSE, method="pca")
    assert float(pca.direction @ code_vector.direction) > 0 and 0 < pca.stats["explained_by_top"] <= 1


def test_vector_cli_writes_the_folder_and_refuses_identical_sets(prompt_files, options, cli_env, tmp_path):
    code, prose = prompt_files
    base = [sys.executable, "-m", "featureforge.cli", "vector", "--source", "hf", *[a for k, v in options.items() for a in ("-o", f"{k}={v}")]]
    out = subprocess.run(base + ["--positive", code, "--negative", prose, "--out", str(tmp_path / "v")], capture_output=True, text=True,
                         env=cli_env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "mean difference of 4 positive and 4 negative prompts at transformer.h.0" in out.stdout
    cfg = json.loads((tmp_path / "v" / "config.json").read_text())
    assert cfg["kind"] == "steering-vector" and cfg["d_in"] == 32 and (tmp_path / "v" / "weights.safetensors").stat().st_size > 0
    same = subprocess.run(base + ["--positive", code, "--negative", code, "--out", str(tmp_path / "zero")], capture_output=True, text=True,
                          env=cli_env, timeout=600)
    assert same.returncode == 1 and same.stderr.count("\n") == 1 and "would be zero" in same.stderr
    assert not (tmp_path / "zero" / "config.json").exists()
    again = subprocess.run(base + ["--positive", code, "--negative", prose, "--out", str(tmp_path / "v")], capture_output=True, text=True,
                           env=cli_env, timeout=600)
    assert again.returncode == 1 and "--overwrite" in again.stderr


def test_alpha_zero_changes_nothing_and_add_moves_the_hook_by_alpha_typical(code_vector, options):
    from featureforge_hf import HFSource

    with HFSource(options).splice(None) as live:
        ids = torch.tensor([live.prompt_ids(CODE[0])], device=live.device)
        mask = torch.ones_like(ids)
        keep = live.token_mask(ids, mask)
        clean = live(ids, mask, replace="none")
        edit = DirectionEdit(code_vector.direction, "add", 0.0, torch.tensor([code_vector.typical]))
        assert torch.equal(live(ids, mask, replace=direction_replacement(edit), token_mask=keep), clean), "α = 0: bit for bit"
        pushed = live(ids, mask, replace=direction_replacement(DirectionEdit(code_vector.direction, "add", 4.0, torch.tensor([code_vector.typical]))),
                      token_mask=keep)
        assert (pushed - clean).abs().max() > 1e-4
    rows = torch.randn(6, 32)
    fn = direction_replacement(DirectionEdit(code_vector.direction, "add", 3.0, torch.tensor([code_vector.typical])))
    assert torch.allclose(fn(rows) - rows, 3.0 * code_vector.typical * code_vector.direction.expand(6, -1), atol=1e-6)
    result = ff.steer(vector=code_vector.path, prompt="The file", alphas=[0, 8], max_new_tokens=4)
    zero, strong = result.outcomes
    assert result.handle == "directions" and result.labels == ["vector:code"] and zero.text == result.clean_text and zero.kl == 0.0
    assert strong.kl > 0


def test_a_subspace_is_projected_out_or_clamped(code_vector, options):
    other = ff.vector("hf", options, positive=PROSE[:2], negative=PROSE[2:])
    rows = torch.randn(8, 32)
    both = torch.stack([code_vector.direction, other.direction])
    scales = torch.tensor([code_vector.typical, other.typical])
    q = DirectionEdit(both, "ablate").basis()
    ablated = direction_replacement(DirectionEdit(both, "ablate"))(rows)
    assert q.shape == (32, 2) and (ablated @ both.T).abs().max() < 1e-5, "no component left in the span"
    assert torch.allclose(ablated + (rows @ q) @ q.T, rows, atol=1e-5), "only the span's component is removed"
    clamp = DirectionEdit(both, "clamp", 2.0, scales)
    clamped = direction_replacement(clamp)(rows)
    target = (2.0 * clamp.push) @ q
    assert torch.allclose(clamped @ q, target.expand(8, -1), atol=1e-5), "the span's component is set, whatever the row"
    result = ff.steer(vector=[code_vector, other], prompt="The file", mode="ablate", max_new_tokens=3)
    assert result.labels == ["vector:code", "vector:"] and result.typical == pytest.approx([code_vector.typical, other.typical])
    assert len(result.outcomes) == 1 and result.outcomes[0].kl >= 0


def test_several_layers_and_the_steered_block(code_vector, options):
    one = ff.steer(vector=code_vector, prompt="The file", alphas=[8], max_new_tokens=0)
    two = ff.steer(vector=code_vector, prompt="The file", alphas=[8], max_new_tokens=0, hooks=["transformer.h.0", "transformer.h.1"])
    assert two.hooks == ["transformer.h.0", "transformer.h.1"] and two.outcomes[0].kl != pytest.approx(one.outcomes[0].kl)
    with pytest.raises(ff.BadInputError, match="not a module"):
        ff.steer(vector=code_vector, prompt="The file", hooks=["transformer.h.0", "transformer.h.9"], max_new_tokens=0)
    with ff.steered(vector=code_vector, alpha=0.0) as live:
        ids = torch.tensor([live.prompt_ids("The file")], device=live.device)
        inside = live.model(input_ids=ids).logits
        clean = live(ids, replace="none")
    assert torch.equal(inside, clean), "α = 0 inside steered(): the model's own forward is unchanged bit for bit"


def _planted_vector(run, store, latents, weights, tmp_path):
    from featureforge.decomposition import decoder_rows

    dictionary = ff.load(run)
    unit = decoder_rows(dictionary)
    unit = unit / unit.norm(dim=-1, keepdim=True)
    v = sum(w * unit[i] for i, w in zip(latents, weights))
    vec = SteeringVector(direction=v / v.norm(), typical=float(v.norm()), hook="transformer.h.0", source=dict(store.source), name="planted")
    vec.save(tmp_path / "planted")
    return str(tmp_path / "planted"), float(v.norm())


def test_decomposition_recovers_a_planted_nonnegative_combination(gpt2_run, tmp_path):
    run, store = gpt2_run
    typical = store_typical(ff.load(run), store)
    live = torch.nonzero(typical > 0).flatten().tolist()
    planted = live[:3]
    path, norm = _planted_vector(run, store, planted, [0.6, 0.3, 0.15], tmp_path)
    result = ff.decompose(path, run, store=store, k=6, contexts=2)
    assert {f["latent"] for f in result.fit} == set(planted)
    assert [f["weight"] * norm for f in result.fit] == pytest.approx([0.6, 0.3, 0.15], abs=1e-4)
    assert result.explained == pytest.approx(1.0, abs=1e-6) and result.fit_cosine == pytest.approx(1.0, abs=1e-6)
    assert result.cosine[0]["latent"] == planted[0]
    first = result.fit[0]
    assert first["contexts"] and first["contexts"][0]["activation"] > 0 and first["contexts"][0]["token"]


def test_decompose_cli_prints_the_fit_and_contexts(gpt2_run, tmp_path, cli_env):
    run, store = gpt2_run
    typical = store_typical(ff.load(run), store)
    planted = torch.nonzero(typical > 0).flatten().tolist()[:2]
    path, _ = _planted_vector(run, store, planted, [1.0, 0.5], tmp_path)
    env = {**cli_env, "FEATUREFORGE_PLUGINS": "featureforge-hf,featureforge-sae"}
    out = subprocess.run([sys.executable, "-m", "featureforge.cli", "decompose", path, run, "--store", store.url, "--k", "4"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "non-negative fit of 2 latents explains 1.000" in out.stdout and "by cosine:" in out.stdout
    wrong = subprocess.run([sys.executable, "-m", "featureforge.cli", "decompose", run, run, "--store", store.url], capture_output=True,
                           text=True, env=env, timeout=600)
    assert wrong.returncode == 1 and "not a steering vector" in wrong.stderr and wrong.stderr.count("\n") == 1


def test_steering_evaluator_scores_a_vector_beside_latents(gpt2_run, code_vector, tmp_path):
    from featureforge import EvaluationContext

    run, store = gpt2_run
    dictionary = ff.load(run)
    latent = int(store_typical(dictionary, store).argmax())
    evaluator = ff.get_registry().get("evaluator", "steering")({"latents": 0, "latent_ids": str(latent), "vectors": code_vector.path,
                                                                "contexts": 12, "context_tokens": 8, "alphas": "0,8"})
    m = evaluator.evaluate(dictionary, EvaluationContext(store, tmp_path, progress=False)).metrics
    for prefix in ("vector_code_", "vector_code_control_"):
        assert m[f"{prefix}kl_rest_a0"] == 0 and m[f"{prefix}ce_increase_a0"] == 0
        assert m[f"{prefix}kl_rest_a8"] > 0 and -1 <= m[f"{prefix}stability_a8"] <= 1
    assert m["vector_code_push_norm"] == pytest.approx(code_vector.typical)
    table = json.loads((tmp_path / "steering.json").read_text())
    assert [r["name"] for r in table["vectors"]] == ["code"] and table["vectors"][0]["contexts"] == 12
    assert [r["latent"] for r in table["latents"]] in ([latent], []), "the asked latent, unless it fires nearly everywhere"


def test_steer_cli_with_a_vector_needs_no_store(code_vector, cli_env):
    base = [sys.executable, "-m", "featureforge.cli", "steer", "--vector", code_vector.path, "--prompt", "The file", "--max-new-tokens", "3"]
    out = subprocess.run(base + ["--alpha", "0,2", "--json"], capture_output=True, text=True, env=cli_env, timeout=600)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["handle"] == "directions" and data["labels"] == ["vector:code"] and data["hooks"] == ["transformer.h.0"]
    assert data["outcomes"][0]["text"] == data["clean_text"] and data["outcomes"][0]["kl"] == 0 and data["outcomes"][1]["kl"] > 0
    text = subprocess.run(base + ["--alpha", "2", "--hook", "transformer.h.0", "--hook", "transformer.h.1", "--positions", "-1"],
                          capture_output=True, text=True, env=cli_env, timeout=600)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("add the direction vector:code at transformer.h.0, transformer.h.1") and "α=2 × typical" in text.stdout
    bad = subprocess.run(base + ["--hook", "transformer.h.7"], capture_output=True, text=True, env=cli_env, timeout=600)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "transformer.h.7" in bad.stderr
    nothing = subprocess.run(base[:4] + ["--prompt", "x"], capture_output=True, text=True, env=cli_env, timeout=600)
    assert nothing.returncode == 1 and "nothing to steer with" in nothing.stderr


def test_latents_as_directions_match_the_code_edit_and_span_a_subspace(gpt2_run, code_vector):
    run, store = gpt2_run
    typical = store_typical(ff.load(run), store)
    a, b = torch.nonzero(typical > 0).flatten().tolist()[:2]
    codes = ff.steer(run, store=store, latents=[a], prompt=CODE[0], alphas=[4], max_new_tokens=0)
    rows = ff.steer(run, store=store, latents=[a], prompt=CODE[0], alphas=[4], max_new_tokens=0, as_directions=True)
    assert rows.handle == "directions" and rows.outcomes[0].kl == pytest.approx(codes.outcomes[0].kl, rel=1e-3), "a linear decoder: the same edit"
    both = ff.steer(run, store=store, latents=[a, b], vector=code_vector, prompt=CODE[0], mode="ablate", max_new_tokens=0)
    assert both.labels == ["vector:code", f"latent:{a}", f"latent:{b}"] and both.outcomes[0].kl > 0
    with pytest.raises(ff.BadInputError, match="belongs to its own site"):
        ff.steer(run, store=store, latents=[a], prompt=CODE[0], hooks=["transformer.h.1"])
