"""Plug & Play Generative Networks on scikit-learn's digits: the prior, the sampler, the command."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

import featureforge
from featureforge_multifaceted.ppgn import PPGNSettings, codes, dae_error, load_ppgn, train_ppgn, untrained_like
from featureforge_multifaceted.ppgn_facets import ppgn_facets
from featureforge_multifaceted.ppgn_sampler import SamplerSettings, condition_function, sample
from featureforge_multifaceted.vision import Unit
from featureforge_testbeds.planted import UnionDictionary
from tb_helpers import FEATUREFORGE

#: Small enough for the default suite (about half a minute on one thread), big enough to work.
SMALL = PPGNSettings(epochs=8, dae_epochs=20)


@pytest.fixture(scope="module")
def digits_ppgn(digits_cnn):
    """(model, images, merged labels, PPGN): a small PPGN trained on the digits CNN's fc codes."""
    model, x, merged, _ = digits_cnn
    torch.set_num_threads(1)
    return model, x, merged, train_ppgn(model, x, SMALL)


def test_dae_lowers_the_error_of_noised_codes(digits_ppgn):
    model, x, _, ppgn = digits_ppgn
    noised, denoised = dae_error(ppgn.prior, codes(model, x, "fc"), seed=7)
    assert denoised < 0.8 * noised
    assert ppgn.info["dae_denoised_mse"] < ppgn.info["dae_noised_mse"]
    # The prior's score points back toward the clean code: a step along it shrinks the error.
    h = codes(model, x[:200], "fc")
    noisy = h + ppgn.prior.sigma * torch.randn(h.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        stepped = noisy + 0.5 * ppgn.prior.sigma**2 * ppgn.prior.score(noisy)
    assert ((stepped - h) ** 2).mean() < ((noisy - h) ** 2).mean()


def test_generator_inverts_the_encoder_better_than_its_random_init(digits_ppgn):
    model, x, _, ppgn = digits_ppgn
    h = codes(model, x[:300], "fc")
    with torch.no_grad():
        trained = float(((ppgn.decode(h) - x[:300]) ** 2).mean())
        control = float(((untrained_like(ppgn).decode(h) - x[:300]) ** 2).mean())
    assert trained < 0.5 * control


@pytest.mark.parametrize("target", [0, 2, 4])
def test_a_class_chain_raises_that_class_probability_and_moves(digits_ppgn, target):
    model, x, _, ppgn = digits_ppgn
    objective = condition_function(model, Unit("head", target), log_softmax=True)
    chains = sample(ppgn, objective, chains=3, settings=SamplerSettings(steps=60, every=10, seed=target))
    start = sample(ppgn, objective, chains=3, settings=SamplerSettings(steps=1, every=1, eps1=0, eps2=0, eps3=0, seed=target))
    with torch.no_grad():
        p_start = torch.softmax(model(start.flat()), 1)[:, target]
        p_chain = torch.softmax(model(chains.flat()), 1)[:, target].view(3, -1)
    print(target, p_start.numpy().round(3), p_chain.mean(0).numpy().round(3))
    # After a burn-in of 30 steps every kept sample is confidently the class; the starts are not.
    assert float(p_chain[:, 3:].min()) > 0.9 and float(p_start.mean()) < 0.6
    # Samples differ along each chain: it keeps moving (ε3 noise) instead of freezing at one image.
    per_chain = chains.samples.flatten(2)
    steps = (per_chain[:, 1:] - per_chain[:, :-1]).pow(2).mean(2).sqrt()
    assert float(steps.min()) > 0.005 and float((per_chain[:, 0] - per_chain[:, -1]).pow(2).mean(1).sqrt().min()) > 0.02


def test_without_the_condition_the_class_is_not_raised(digits_ppgn):
    """The control for the test above: the same chains with ε2 = 0 stay near the data's class mix."""
    model, _, merged, ppgn = digits_ppgn
    objective = condition_function(model, Unit("head", 2), log_softmax=True)
    free = sample(ppgn, objective, chains=3, settings=SamplerSettings(steps=60, every=10, eps2=0.0, seed=2))
    with torch.no_grad():
        p_free = float(torch.softmax(model(free.flat()), 1)[:, 2].mean())
    assert p_free < 0.9


def test_a_dictionary_latent_is_a_condition(digits_ppgn):
    model, x, _, ppgn = digits_ppgn
    encoder = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    unit = Unit("fc", 3, UnionDictionary(encoder, bias=0.0))
    result = ppgn_facets(model, x, unit, "fc", ppgn, top_n=48, chains=2, sampler=SamplerSettings(steps=40, every=10, init="top"))
    s = result.summary()
    assert result.chains.samples.shape == (2, 4, 1, 16, 16) and s["real_facets"] >= 1
    assert s["mean_activation_fraction"] > 0.5  # the chains stay where the latent fires strongly
    assert all(-1 <= f < s["real_facets"] for row in s["facet_of_sample"] for f in row)


def test_save_and_load_give_the_same_ppgn(digits_ppgn, tmp_path):
    model, x, _, ppgn = digits_ppgn
    ppgn.save(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["generator.safetensors", "ppgn.json", "prior.safetensors"]
    again = load_ppgn(tmp_path / "p")
    h = codes(model, x[:16], "fc")
    with torch.no_grad():
        assert torch.equal(again.decode(h), ppgn.decode(h)) and torch.equal(again.prior(h), ppgn.prior(h))
    assert json.loads((tmp_path / "p" / "ppgn.json").read_text())["feature_layer"] == "fc"
    with pytest.raises(featureforge.BadInputError, match="holds no ppgn.json"):
        load_ppgn(tmp_path)


@pytest.fixture(scope="module")
def digit_folder(digits_ppgn, tmp_path_factory):
    from PIL import Image
    from safetensors.torch import save_file

    model, x, merged, _ = digits_ppgn
    root = tmp_path_factory.mktemp("ppgn-cli")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "cnn.safetensors"))
    (root / "digits").mkdir()
    for i in range(0, len(x), 2):
        Image.fromarray((x[i, 0].numpy() * 255).astype(np.uint8), mode="L").save(root / "digits" / f"d{i:04d}_{int(merged[i])}.png")
    return root


def _cli(root, out, *extra, env):
    return subprocess.run([FEATUREFORGE, "facets-vision", "--model", "featureforge_testbeds.digits:SmallCNN",
                           "--weights", str(root / "cnn.safetensors"), "--images", str(root / "digits"), "--size", "16x16", "--mode", "L",
                           "--layer", "head", "--unit", "2", "--embed-layer", "fc", "--top-n", "48", "--steps", "10", "--out", str(out), *extra],
                          capture_output=True, text=True, env=env)


def test_facets_vision_method_both_trains_then_reuses_a_ppgn(digit_folder, tmp_path, cli_env):
    """The command as a user runs it: trains the PPGN into --ppgn, writes both grids and the feature page."""
    ppgn_dir = tmp_path / "ppgn"
    done = _cli(digit_folder, tmp_path / "out", "--method", "both", "--ppgn", str(ppgn_dir), "--ppgn-epochs", "6",
                "--condition", "log-softmax", "--chains", "3", "--chain-steps", "40", "--every", "10", env=cli_env)
    assert done.returncode == 0, done.stderr
    s = json.loads((tmp_path / "out" / "facets.json").read_text())
    p = s["ppgn"]
    assert p["trained_now"] and p["chains"] == 3 and p["kept_steps"] == [10, 20, 30, 40]
    assert np.array(p["sample_activations"]).shape == (3, 4) and p["dae_denoised_mse"] < p["dae_noised_mse"]
    assert "PPGN trained into" in done.stdout and (tmp_path / "out" / "ppgn.png").stat().st_size > 500
    page = (tmp_path / "out" / "feature.html").read_text()
    assert 'id="pixel"' in page and 'id="ppgn"' in page and f'data-value="{p["mean_activation_fraction"]}"' in page
    assert f'data-value="{s["best_real_activation"]}"' in page
    again = _cli(digit_folder, tmp_path / "out2", "--method", "ppgn", "--ppgn", str(ppgn_dir), "--chains", "2",
                 "--chain-steps", "20", "--every", "10", env=cli_env)
    assert again.returncode == 0, again.stderr
    assert not json.loads((tmp_path / "out2" / "facets.json").read_text())["ppgn"]["trained_now"]
    assert not (tmp_path / "out2" / "facets.png").exists()


def test_ppgn_without_a_folder_is_refused_in_one_line(digit_folder, tmp_path, cli_env):
    done = _cli(digit_folder, tmp_path / "out", "--method", "ppgn", env=cli_env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--method ppgn needs --ppgn DIR" in lines[0], done.stderr


def test_facets_vision_ppgn_on_a_dictionary_latent_of_a_trained_run(digits_ppgn, digit_folder, tmp_path, cli_env):
    """--dictionary RUN: the condition is a latent of a TopK run trained by featureforge on the fc codes."""
    model, x, _, ppgn = digits_ppgn
    ppgn.save(tmp_path / "ppgn")
    np.save(tmp_path / "fc.npy", np.repeat(codes(model, x, "fc").numpy(), 4, axis=0))
    store = featureforge.cache("array", {"path": str(tmp_path / "fc.npy")}, store=str(tmp_path / "fc.zarr"), rows_per_chunk=1024, progress=False)
    featureforge.train("topk", {"k": 8, "d_dict": 32}, store=store.url, out=str(tmp_path / "run"), epochs=1, batch_size=256, progress=False)
    dictionary = featureforge.load(tmp_path / "run")
    with torch.no_grad():
        latent = int((dictionary.encode(codes(model, x, "fc")) > 0).float().mean(0).argmax())
    done = subprocess.run([FEATUREFORGE, "facets-vision", "--model", "featureforge_testbeds.digits:SmallCNN",
                           "--weights", str(digit_folder / "cnn.safetensors"), "--images", str(digit_folder / "digits"), "--size", "16x16",
                           "--mode", "L", "--layer", "fc", "--unit", str(latent), "--dictionary", str(tmp_path / "run"), "--embed-layer", "fc",
                           "--top-n", "32", "--out", str(tmp_path / "out"), "--method", "ppgn", "--ppgn", str(tmp_path / "ppgn"),
                           "--chains", "2", "--chain-steps", "40", "--every", "20"], capture_output=True, text=True, env=cli_env)
    assert done.returncode == 0, done.stderr
    s = json.loads((tmp_path / "out" / "facets.json").read_text())
    assert s["unit"]["dictionary"] == str(tmp_path / "run") and not s["ppgn"]["trained_now"]
    assert s["ppgn"]["mean_activation_fraction"] > 0.3  # the chains find where the latent fires
