"""Facet synthesis on real images without downloads: scikit-learn's digits and its two photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import featureforge
from featureforge_multifaceted.digits import merged_digits, train_cnn
from featureforge_multifaceted.planted import UnionDictionary
from featureforge_multifaceted.vision import Unit, facet_synthesis, load_image_folder, save_grid, top_images


@pytest.fixture(scope="module")
def digits_cnn():
    torch.set_num_threads(1)
    x, merged, digit = merged_digits()
    model, accuracy = train_cnn(x, merged, epochs=5)
    assert accuracy > 0.8
    return model, x, digit


def test_each_synthetic_facet_beats_the_best_real_image_and_facets_differ(digits_cnn, tmp_path):
    model, x, digit = digits_cnn
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
    model, x, _ = digits_cnn
    encoder = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    dictionary = UnionDictionary(encoder, bias=0.0)
    dataset = torch.utils.data.TensorDataset(x, torch.zeros(len(x)))  # a dataset of (image, label) works too
    idx, values, emb = top_images(model, dataset, Unit("fc", 5, dictionary), "fc", top_n=10)
    with torch.no_grad():
        expected = torch.relu(model.fc(model.conv2(model.conv1(x[idx]))) @ torch.from_numpy(encoder[5]))
    np.testing.assert_allclose(values, expected.numpy(), rtol=1e-4, atol=1e-4)
    assert emb.shape == (10, 64)


def test_unit_out_of_range_is_one_line(digits_cnn):
    model, x, _ = digits_cnn
    with pytest.raises(featureforge.BadInputError, match=r"unit index 5 is out of range: there are 5 units in 'head'; pick 0..4"):
        top_images(model, x[:4], Unit("head", 5), "fc")
    with pytest.raises(featureforge.BadInputError, match="hook 'fc9' is not a module of the model; nearest: fc"):
        top_images(model, x[:4], Unit("fc9", 0), "fc")


def test_image_folder_with_unreadable_files_skips_and_counts_them(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    for p, photo in enumerate(photos):
        for i in range(6):
            y, x = 40 * i, 60 * i
            Image.fromarray(photo[y : y + 128, x : x + 128]).save(tmp_path / f"photo{p}_{i}.{'png' if i % 2 else 'jpg'}")
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "photo0_0.jpg").read_bytes()[:40])
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    images, names, skipped = load_image_folder(tmp_path, (32, 32))
    assert images.shape == (12, 3, 32, 32) and skipped == 2 and "broken.png" not in names
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    # Any torch image model works: a random conv net's channel over the photo crops.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())
    from featureforge_multifaceted.synthesis import SynthesisSettings

    result = facet_synthesis(net, images, Unit("2", 3), "3", top_n=12, synthesis=SynthesisSettings(steps=5))
    assert result.synthetic.shape[1:] == (3, 32, 32)
    with pytest.raises(featureforge.BadInputError, match="no readable image"):
        empty = tmp_path / "empty"
        empty.mkdir()
        (empty / "x.png").write_bytes(b"junk")
        load_image_folder(empty, (32, 32))


def test_facets_vision_command_on_a_folder_of_digit_images(digits_cnn, tmp_path, cli_env):
    """The CLI as a user runs it: model as code + safetensors weights, images from a folder."""
    import json
    import subprocess

    from PIL import Image
    from safetensors.torch import save_file

    from mf_helpers import FEATUREFORGE

    model, x, digit = digits_cnn
    weights = tmp_path / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(0, len(x), 3):
        Image.fromarray((x[i, 0].numpy() * 255).astype(np.uint8), mode="L").save(folder / f"d{i:04d}_{int(digit[i])}.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    done = subprocess.run([FEATUREFORGE, "facets-vision", "--model", "featureforge_multifaceted.digits:SmallCNN", "--weights", str(weights),
                           "--images", str(folder), "--size", "16x16", "--mode", "L", "--layer", "head", "--unit", "2",
                           "--embed-layer", "fc", "--top-n", "48", "--steps", "10", "--out", str(out)], capture_output=True, text=True, env=cli_env)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "facets.json").read_text())
    assert summary["skipped_unreadable"] == 1 and summary["images"] == len(range(0, len(x), 3))
    assert min(summary["synthetic_activations"]) > summary["best_real_activation"]
    assert (out / "facets.png").stat().st_size > 1000 and "1 unreadable skipped" in done.stdout
    digits_of = [{int(n.split("_")[1][0]) for n in names} for names in summary["facet_images"]]
    assert all(d <= {2, 5} for d in digits_of)  # the unit's top images are its two digits


def test_model_spec_and_weights_are_checked(tmp_path):
    from safetensors.torch import save_file

    from featureforge_multifaceted.vision_run import build_model

    with pytest.raises(featureforge.BadInputError, match="is not MODULE:CALLABLE"):
        build_model("featureforge_multifaceted.digits.SmallCNN", None)
    with pytest.raises(featureforge.BadInputError, match="cannot be imported"):
        build_model("no_such_package_here:Net", None)
    save_file({"other.weight": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(featureforge.BadInputError, match="does not fit"):
        build_model("featureforge_multifaceted.digits:SmallCNN", str(tmp_path / "w.safetensors"))
