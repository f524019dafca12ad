"""Facet synthesis (featureforge-multifaceted's vision tools) on the digits testbed: a CNN whose
output units each merge two digits, so each unit has two known facets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import featureforge
from featureforge_multifaceted.vision import Unit, facet_synthesis, save_grid, top_images
from featureforge_testbeds.planted import UnionDictionary


def test_each_synthetic_facet_beats_the_best_real_image_and_facets_differ(digits_cnn, tmp_path):
    model, x, _, digit = digits_cnn
    model.train()
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    result = facet_synthesis(model, x, Unit("head", 2), "fc", top_n=120)  # merged class of digits 2 and 5
    assert model.training  # the caller's model is left as it was: mode, and no gradient accumulated
    assert all((g is None and p.grad is None) or torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    model.eval()
    s = result.summary()
    print(s)
    assert s["facets"] >= 2
    assert min(s["synthetic_activations"]) > s["best_real_activation"]
    k = s["facets"]
    off_diagonal = [s["pixel_distances"][i][j] for i in range(k) for j in range(k) if i != j]
    assert min(off_diagonal) > 0.05  # RMS over pixels in [0, 1]: visibly different images
    # The facets split the unit's top images by the digit behind them.
    purity = [np.bincount(digit[result.top_indices[result.labels == f]].numpy()).max() / (result.labels == f).sum() for f in range(k)]
    assert np.mean(purity) > 0.8
    grid = save_grid(result, x, tmp_path / "facets.png")
    from PIL import Image

    with Image.open(grid) as im:
        assert im.size[1] > k * 64
    print(f"grid: {grid}")


def test_dictionary_latent_over_a_layer_is_a_unit(digits_cnn):
    model, x, _, _ = digits_cnn
    encoder = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    dictionary = UnionDictionary(encoder, bias=0.0)
    dataset = torch.utils.data.TensorDataset(x, torch.zeros(len(x)))  # a dataset of (image, label) works too
    idx, values, emb = top_images(model, dataset, Unit("fc", 5, dictionary), "fc", top_n=10)
    with torch.no_grad():
        expected = torch.relu(model.fc(model.conv2(model.conv1(x[idx]))) @ torch.from_numpy(encoder[5]))
    np.testing.assert_allclose(values, expected.numpy(), rtol=1e-4, atol=1e-4)
    assert emb.shape == (10, 64)


def test_facets_vision_command_on_a_folder_of_digit_images(digits_cnn, tmp_path, cli_env):
    """The CLI as a user runs it: model as code + safetensors weights, images from a folder."""
    import json
    import subprocess

    from PIL import Image
    from safetensors.torch import save_file

    from tb_helpers import FEATUREFORGE

    model, x, _, digit = digits_cnn
    weights = tmp_path / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(0, len(x), 3):
        Image.fromarray((x[i, 0].numpy() * 255).astype(np.uint8), mode="L").save(folder / f"d{i:04d}_{int(digit[i])}.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    done = subprocess.run([FEATUREFORGE, "facets-vision", "--model", "featureforge_testbeds.digits:SmallCNN", "--weights", str(weights),
                           "--images", str(folder), "--size", "16x16", "--mode", "L", "--layer", "head", "--unit", "2",
                           "--embed-layer", "fc", "--top-n", "48", "--steps", "10", "--out", str(out)], capture_output=True, text=True, env=cli_env)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "facets.json").read_text())
    assert summary["skipped_unreadable"] == 1 and summary["images"] == len(range(0, len(x), 3))
    assert min(summary["synthetic_activations"]) > summary["best_real_activation"]
    assert (out / "facets.png").stat().st_size > 1000 and "1 unreadable skipped" in done.stdout
    digits_of = [{int(n.split("_")[1][0]) for n in names} for names in summary["facet_images"]]
    assert all(d <= {2, 5} for d in digits_of)  # the unit's top images are its two digits