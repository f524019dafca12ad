"""Steering transcoder and crosscoder latents in a tiny random GPT-2 (issue #23).

A transcoder's latent is read at the MLP's input and written at the MLP's output: adding it moves
the MLP's output by exactly α·d_j (its decoder row in raw units), clamping it to its current value
or adding α = 0 changes nothing, ablating it moves the output by −a_j·d_j, and the MLP's input is
never touched. A crosscoder's latent moves each of its sites by that site's decoder row. Real parts:
an MLP input/output store and a block store cached from the model, runs trained through ff.train,
``featureforge steer`` through click's CliRunner and the ``steering`` evaluator.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import featureforge as ff
from featureforge.cli import cli
from featureforge.interventions import Intervention, replacement
from featureforge.sites import first_tensor
from featureforge.steering import live_source, store_typical

pytest.importorskip("featureforge_sae")

PROMPT = "def read(self, path):\n    return open(path)"
COMMON = {"context_size": 48, "batch_size": 4, "max_docs": 20}


@pytest.fixture(scope="module")
def tc_run(tmp_path_factory, tiny_gpt2):
    root = tmp_path_factory.mktemp("tc-steer")
    store = ff.cache("hf", {"model": tiny_gpt2, "hook": "transformer.h.0", "site": "mlp-io", **COMMON}, store=str(root / "io.zarr"),
                     rows=1200, rows_per_chunk=400, progress=False)
    [run] = ff.train("transcoder", {"k": 8, "d_dict": 128}, store=store, out=str(root / "tc"), rows=2400, batch_size=128, threads=1,
                     progress=False, lr=1e-2)
    return str(run), store


@pytest.fixture(scope="module")
def cc_run(tmp_path_factory, tiny_gpt2):
    root = tmp_path_factory.mktemp("cc-steer")
    store = ff.cache("hf", {"model": tiny_gpt2, "hook": "transformer.h.0,transformer.h.1", **COMMON}, store=str(root / "blocks.zarr"),
                     rows=1200, rows_per_chunk=400, progress=False)
    [run] = ff.train("crosscoder", {"k": 8, "d_dict": 128}, store=store, out=str(root / "cc"), rows=2400, batch_size=128, threads=1,
                     progress=False, lr=1e-2)
    return str(run), store


def _row(dictionary, j):
    """Latent ``j``'s decoder row in raw units: decode(e_j) - decode(0)."""
    eye = torch.zeros(1, int(dictionary.d_dict))
    eye[0, j] = 1
    with torch.no_grad():
        return (dictionary.decode(eye) - dictionary.decode(torch.zeros_like(eye)))[0]


class Spy:
    """The MLP's input and output of the last forward pass (hooks added after the splice's: they see its edit)."""

    def __init__(self, mlp):
        self.handles = [mlp.register_forward_pre_hook(lambda m, a: setattr(self, "input", a[0].detach().clone())),
                        mlp.register_forward_hook(lambda m, a, out: setattr(self, "output", out.detach().clone()))]

    def close(self):
        for h in self.handles:
            h.remove()


def test_transcoder_latent_edits_read_the_mlp_input_and_move_its_output_by_the_decoder_row(tc_run):
    run, store = tc_run
    tc = ff.load(run)
    typical = store_typical(tc, store)
    with live_source(store).splice(tc) as live:
        assert (live.reads.name, live.reads.where, live.site.name) == ("transformer.h.0.mlp", "input", "transformer.h.0.mlp")
        spy = Spy(live.model.transformer.h[0].mlp)
        ids = torch.tensor([live.prompt_ids(PROMPT)])
        mask = torch.ones_like(ids)
        keep = live.token_mask(ids, mask)

        def run_with(ivs, token_mask=keep):
            logits = live(ids, mask, replace=replacement(tc, ivs, typical), token_mask=token_mask)
            return logits, spy.input[0], spy.output[0]

        clean = live(ids, mask, replace="none")
        x, y = spy.input[0].clone(), spy.output[0].clone()
        with torch.no_grad():
            codes = tc.encode(x[keep[0]])
        # the latent that fires most on this prompt, at the position where it fires most
        pos, j = divmod(int(codes.argmax()), codes.shape[1])
        position = int(torch.nonzero(keep[0])[pos])
        d_j = _row(tc, j)
        assert float(codes[pos, j]) > 0 and float(d_j.norm()) > 0

        logits, x_add, y_add = run_with([Intervention((j,), "add", 3.0, "absolute")])
        assert torch.equal(x_add, x), "steering a transcoder latent changed the MLP's input (its source site)"
        torch.testing.assert_close(y_add[keep[0]] - y[keep[0]], (3.0 * d_j).expand(int(keep.sum()), -1), rtol=1e-4, atol=1e-6)
        assert not torch.allclose(logits, clean)

        logits, _, y_zero = run_with([Intervention((j,), "add", 0.0, "absolute")])
        assert torch.equal(y_zero, y) and torch.equal(logits, clean)

        only = torch.zeros_like(keep)
        only[0, position] = True
        with torch.no_grad():
            a_j = float(tc.encode(x[position : position + 1])[0, j])
        logits, _, y_clamp = run_with([Intervention((j,), "clamp", a_j, "absolute")], only)
        assert torch.equal(y_clamp, y) and torch.equal(logits, clean), "clamping a latent to its own value changed the model"

        _, _, y_ablate = run_with([Intervention((j,), "ablate")])
        expected = -codes[:, j:j + 1] * d_j
        torch.testing.assert_close(y_ablate[keep[0]] - y[keep[0]], expected, rtol=1e-4, atol=1e-6)
        assert float(expected.abs().max()) > 0
        spy.close()


def test_steered_patches_a_transcoder_and_refuses_a_crosscoder(tc_run, cc_run):
    run, store = tc_run
    tc = ff.load(run)
    d_5 = _row(tc, 5)
    with ff.steered(run, store=store, latents=[5], alpha=2.0, units="absolute") as live:
        spy = Spy(live.model.transformer.h[0].mlp)
        ids = torch.tensor([live.prompt_ids(PROMPT)])
        with torch.no_grad():
            live.model(input_ids=ids)
        spy.close()
        y_steered = spy.output[0]
    with torch.no_grad():
        live.model(input_ids=ids)  # nothing stays patched after the block
    # the clean MLP output from the model itself, outside the block
    spy = Spy(live.model.transformer.h[0].mlp)
    with torch.no_grad():
        live.model(input_ids=ids)
    spy.close()
    torch.testing.assert_close(y_steered - spy.output[0], (2.0 * d_5).expand_as(y_steered), rtol=1e-4, atol=1e-6)
    run, store = cc_run
    with pytest.raises(ff.BadInputError, match="clean pass"):
        with ff.steered(run, store=store, latents=[5], alpha=2.0, units="absolute"):
            pass


def test_crosscoder_latent_moves_every_site_by_its_own_decoder_row(cc_run):
    run, store = cc_run
    cc = ff.load(run)
    rows = _row(cc, 7)  # [S, d]
    with live_source(store).splice(cc) as live:
        blocks = live.model.transformer.h
        held = {}
        handles = [blocks[i].register_forward_hook(lambda m, a, out, i=i: held.__setitem__(i, first_tensor(out).detach().clone())) for i in (0, 1)]
        ids = torch.tensor([live.prompt_ids(PROMPT)])
        mask = torch.ones_like(ids)
        keep = live.token_mask(ids, mask)
        live(ids, mask, replace="none")
        clean = dict(held)
        live(ids, mask, replace=replacement(cc, [Intervention((7,), "add", 2.0, "absolute")]), token_mask=keep)
        for h in handles:
            h.remove()
    for i in (0, 1):
        torch.testing.assert_close(held[i][0][keep[0]] - clean[i][0][keep[0]], (2.0 * rows[i]).expand(int(keep.sum()), -1), rtol=1e-4, atol=1e-6)
    with pytest.raises(ff.BadInputError, match="spans all its sites"):
        ff.steer(run, store=store, latents=[7], prompt=PROMPT, as_directions=True, max_new_tokens=0)


def test_cli_steers_a_transcoder_latent_reading_one_site_and_writing_another(tc_run):
    run, store = tc_run
    result = CliRunner().invoke(cli, ["steer", run, "--store", store.url, "--latent", "3", "--prompt", PROMPT, "--alpha", "0,8",
                                      "--max-new-tokens", "3", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["reads"] == ["transformer.h.0.mlp:input"] and out["hooks"] == ["transformer.h.0.mlp"]
    zero, eight = out["outcomes"]
    assert zero["kl"] == 0 and eight["kl"] > 0
    text = CliRunner().invoke(cli, ["steer", run, "--store", store.url, "--latent", "3", "--prompt", PROMPT, "--max-new-tokens", "2"])
    assert text.exit_code == 0 and "read at transformer.h.0.mlp:input, written at transformer.h.0.mlp" in text.output


def test_steering_evaluator_scores_transcoder_latents_at_the_mlp_output(tc_run):
    run, store = tc_run
    report = ff.evaluate(run, store, {"steering": {"latents": 3, "contexts": 8, "context_tokens": 16, "alphas": "4"}}, progress=False)
    result = report["evaluators"]["steering"]
    m = result["metrics"]
    assert m["latents_steered"] >= 1 and m["kl_rest_a4"] > 0, m
    tc = ff.load(run)
    typical = store_typical(tc, store)
    for row in json.loads((Path(run) / result["artifacts"]["steering_table"]).read_text())["latents"]:
        # the α = 1 push is u_j·|d_j| with d_j the decoder row in the MLP output's units
        assert row["push_norm"] == pytest.approx(float(typical[row["latent"]]) * float(_row(tc, row["latent"]).norm()), rel=1e-5)
