"""Steering vectors' pure parts: prompt files, the contrast arithmetic, the vector folder, direction
edits and the non-negative pursuit (the live-model paths are tested in featureforge-hf)."""

from __future__ import annotations

import json

import pytest
import torch

from featureforge import BadInputError, FeatureforgeError
from featureforge.decomposition import nonnegative_pursuit
from featureforge.interventions import DirectionEdit, direction_replacement
from featureforge.vectors import SteeringVector, contrast, is_vector, load_vector, read_prompts


def test_prompt_files_lines_blocks_and_jsonl(tmp_path):
    (tmp_path / "lines.txt").write_text("first prompt\nsecond prompt\n")
    (tmp_path / "blocks.txt").write_text("def f():\n    pass\n\nclass A:\n    x = 1\n")
    (tmp_path / "p.jsonl").write_text(json.dumps({"text": "one"}) + "\n" + json.dumps("two") + "\n\n")
    assert read_prompts(tmp_path / "lines.txt") == ["first prompt", "second prompt"]
    assert read_prompts(str(tmp_path / "blocks.txt")) == ["def f():\n    pass", "class A:\n    x = 1"]
    assert read_prompts(tmp_path / "p.jsonl") == ["one", "two"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(BadInputError, match="empty"):
        read_prompts(tmp_path / "empty.txt", "positive prompts")
    with pytest.raises(BadInputError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")


def test_contrast_is_the_mean_difference_and_refuses_identical_sets():
    gen = torch.Generator().manual_seed(0)
    neg = torch.randn(10, 8, generator=gen)
    shift = torch.zeros(8)
    shift[2] = 3.0
    pos = torch.randn(10, 8, generator=gen) + shift
    direction, typical, stats = contrast(pos, neg)
    diff = pos.mean(0) - neg.mean(0)
    assert torch.allclose(direction, diff / diff.norm(), atol=1e-6) and typical == pytest.approx(float(diff.norm()), rel=1e-6)
    assert stats["projection_positive"] - stats["projection_negative"] == pytest.approx(typical, rel=1e-6)
    with pytest.raises(BadInputError, match="would be zero"):
        contrast(pos, pos.clone())
    pca, pca_typical, pca_stats = contrast(pos, neg, "pca")
    assert float(pca @ direction) > 0.5 and pca_typical > 0 and 0 < pca_stats["explained_by_top"] <= 1
    with pytest.raises(BadInputError, match="pairs the prompts"):
        contrast(pos[:4], neg, "pca")


def test_the_vector_folder_round_trips_and_is_told_from_a_run(tmp_path):
    v = SteeringVector(direction=torch.tensor([0.6, 0.8, 0.0]), typical=2.5, hook="h.1", source={"name": "hf", "options": {}}, name="x",
                       mean_positive=torch.ones(3), mean_negative=torch.zeros(3))
    v.save(tmp_path / "v")
    assert is_vector(tmp_path / "v") and not is_vector(tmp_path)
    back = load_vector(tmp_path / "v")
    assert torch.equal(back.direction, v.direction) and back.typical == 2.5 and back.hook == "h.1" and torch.equal(back.mean_positive, torch.ones(3))
    with pytest.raises(FeatureforgeError, match="--overwrite"):
        v.save(tmp_path / "v")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"trainer": "topk", "d_in": 3, "d_dict": 4}))
    with pytest.raises(BadInputError, match="dictionary run, not a steering vector"):
        load_vector(tmp_path / "run")
    with pytest.raises(BadInputError, match="not a steering vector"):
        load_vector(tmp_path / "nothing")


def test_direction_edits_add_clamp_and_ablate():
    gen = torch.Generator().manual_seed(1)
    rows = torch.randn(5, 6, generator=gen)
    v = torch.randn(2, 6, generator=gen)
    unit = v / v.norm(dim=-1, keepdim=True)
    add = direction_replacement(DirectionEdit(v, "add", 2.0, torch.tensor([1.5, 0.5])))
    assert torch.allclose(add(rows), rows + 2.0 * (1.5 * unit[0] + 0.5 * unit[1]), atol=1e-6)
    assert torch.equal(direction_replacement(DirectionEdit(v, "add", 0.0, torch.tensor([1.5, 0.5])))(rows), rows)
    gone = direction_replacement(DirectionEdit(v, "ablate"))(rows)
    assert (gone @ unit.T).abs().max() < 1e-5
    one = direction_replacement(DirectionEdit(v[0], "clamp", 3.0, torch.tensor([2.0])))(rows)
    assert torch.allclose(one @ unit[0], torch.full((5,), 6.0), atol=1e-5), "clamp sets the projection to α·s"
    with pytest.raises(BadInputError, match="zero"):
        DirectionEdit(torch.zeros(6), "add", 1.0, torch.ones(1))
    with pytest.raises(BadInputError, match="typical"):
        DirectionEdit(v, "add", 1.0)
    with pytest.raises(BadInputError, match="width 6 but the hook gives rows of width 4"):
        add(torch.zeros(2, 4))


def test_nonnegative_pursuit_recovers_a_planted_combination():
    gen = torch.Generator().manual_seed(2)
    atoms = torch.randn(512, 64, generator=gen)
    atoms = atoms / atoms.norm(dim=-1, keepdim=True)
    planted = [7, 100, 333, 480]
    weights = [0.9, 0.5, 0.3, 0.2]
    target = sum(w * atoms[i] for i, w in zip(planted, weights))
    chosen, found, residual = nonnegative_pursuit(target, atoms, k=8)
    assert chosen == planted and found.tolist() == pytest.approx(weights, abs=1e-6) and float(residual.norm()) < 1e-5
    capped, _, rest = nonnegative_pursuit(target, atoms, k=2)
    assert capped == planted[:2] and float(rest.norm()) > 0.1, "the sparsity cap holds"
    against, w, _ = nonnegative_pursuit(-atoms[5], atoms[[5]], k=3)
    assert against == [] and len(w) == 0, "no negative weights: a row pointing away is not used"
