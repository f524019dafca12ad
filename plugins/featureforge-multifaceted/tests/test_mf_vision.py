"""Facet synthesis on real images without downloads: scikit-learn's two photos, any torch image model;
the digits testbed's checks live in featureforge-testbeds."""

from __future__ import annotations

import pytest
import torch

import featureforge
from featureforge_multifaceted.vision import Unit, facet_synthesis, load_image_folder, top_images


def _small_net() -> torch.nn.Module:
    """A random image model with named layers: ``fc`` (64 wide) and ``head`` (5 units)."""
    from collections import OrderedDict

    torch.manual_seed(0)
    return torch.nn.Sequential(OrderedDict(flat=torch.nn.Flatten(), fc=torch.nn.Linear(256, 64), head=torch.nn.Linear(64, 5)))


def test_unit_out_of_range_is_one_line():
    model, x = _small_net(), torch.rand(4, 1, 16, 16)
    with pytest.raises(featureforge.BadInputError, match=r"unit index 5 is out of range: there are 5 units in 'head'; pick 0..4"):
        top_images(model, x, Unit("head", 5), "fc")
    with pytest.raises(featureforge.BadInputError, match="hook 'fc9' is not a module of the model; nearest: fc"):
        top_images(model, x, Unit("fc9", 0), "fc")


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


def test_model_spec_and_weights_are_checked(tmp_path):
    from safetensors.torch import save_file

    from featureforge_multifaceted.vision_run import build_model

    with pytest.raises(featureforge.BadInputError, match="is not MODULE:CALLABLE"):
        build_model("torch.nn.Identity", None)
    with pytest.raises(featureforge.BadInputError, match="cannot be imported"):
        build_model("no_such_package_here:Net", None)
    save_file({"other.weight": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(featureforge.BadInputError, match="does not fit"):
        build_model("torch.nn:Identity", str(tmp_path / "w.safetensors"))
