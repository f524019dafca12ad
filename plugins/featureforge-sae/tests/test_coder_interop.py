"""Transcoders in SAELens' and sparsify's transcoder layouts: round trips give the same target
estimates, what a layout cannot hold is refused in one line, foreign folders import, and (slow)
the real libraries load our exports and reproduce our codes and outputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import featureforge
from featureforge import BadInputError, OptionError
from featureforge.dictionary import load as load_run
from featureforge.testing import planted_roles, train_steps
from featureforge_sae import TranscoderTrainer
from test_sae_interop import _peer_outputs

#: Provenance as a store of the hf source records it.
PROVENANCE = {"model_name": "gpt2", "hook_name": "transformer.h.1.mlp", "context_size": 64}

CASES = [
    ({"activation": "topk"}, "sparsify"),
    ({"activation": "topk", "skip": True}, "sparsify"),
    ({"activation": "batchtopk"}, "saelens"),
    ({"activation": "batchtopk", "skip": True}, "saelens"),
    ({"activation": "jumprelu", "l0_warmup_rows": 0}, "saelens"),
    ({"activation": "jumprelu", "l0_warmup_rows": 0, "skip": True}, "saelens"),
]


def _trained(options, scales=(2.0, 0.5), d=16):
    """A transcoder trained on planted rows, then given distinct source/target scales."""
    trainer = TranscoderTrainer({"k": 4, "d_dict": 48, **options})
    trainer.sites_for(["transformer.h.1.mlp.in", "transformer.h.1.mlp.out"], None)
    torch.manual_seed(1)
    dictionary = trainer.build(d)
    data = planted_roles(20 * 256, d=d, seed=2)
    batches = [{r: torch.from_numpy(data[r][i * 256:(i + 1) * 256]) for r in ("acts", "target")} for i in range(20)]
    with torch.no_grad():
        trainer.initialize(dictionary, batches[0])
    train_steps(trainer, dictionary, batches, lr=5e-3)
    with torch.no_grad():
        if dictionary.skip:  # a skip term well away from zero, so the checks see it
            dictionary.W_skip.add_(torch.randn(dictionary.W_skip.shape, generator=torch.Generator().manual_seed(4)) * 0.1)
        if options.get("activation") == "jumprelu":  # thresholds far apart: per-latent thresholds matter
            dictionary.log_threshold.copy_(torch.empty(48).uniform_(0.05, 1.0, generator=torch.Generator().manual_seed(3)).log())
    dictionary.set_role_scales({"acts": scales[0], "target": scales[1]})
    dictionary.config = {"store": {"provenance": dict(PROVENANCE)}}
    return trainer, dictionary.eval()


def _rows(n=200, d=16):
    return torch.from_numpy(planted_roles(n, d=d, seed=2)["acts"]) / 2.0  # original units


def _same(a, b, x):
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert torch.equal(ya.codes > 0, yb.codes > 0)
    torch.testing.assert_close(ya.codes, yb.codes, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ya.x_hat, yb.x_hat, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options, fmt", CASES, ids=lambda v: str(v))
def test_round_trip_gives_the_same_codes_and_target_estimates(tmp_path, options, fmt):
    trainer, d = _trained(options)
    out = trainer.export(d, fmt, tmp_path / "exported")
    featureforge.import_run(out, fmt, tmp_path / "back")
    back = load_run(tmp_path / "back")
    assert back.config["trainer"] == "transcoder"
    assert back.config["options"]["activation"] == options["activation"] and back.config["options"]["skip"] == bool(options.get("skip"))
    _same(d, back, _rows())


def test_saelens_config_names_both_hooks_and_the_output_width(tmp_path):
    trainer, d = _trained({"activation": "jumprelu", "l0_warmup_rows": 0, "skip": True})
    trainer.export(d, "saelens", tmp_path / "sl")
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["d_out"], cfg["apply_b_dec_to_input"]) == ("jumprelu_skip_transcoder", 16, False)
    assert (cfg["metadata"]["hook_name"], cfg["metadata"]["hook_name_out"]) == ("transformer.h.1.mlp.in", "transformer.h.1.mlp.out")
    tensors = load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))
    assert tuple(tensors["W_skip"].shape) == (16, 16) and tuple(tensors["W_enc"].shape) == (16, 48)
    # the scales are folded: W_skip' = W_skip * s / t
    torch.testing.assert_close(tensors["W_skip"], d.W_skip.detach() * 2.0 / 0.5)


def test_layouts_refuse_what_they_cannot_hold(tmp_path):
    trainer, d = _trained({"activation": "topk"})
    with pytest.raises(OptionError, match="SAELens has no TopK transcoder"):
        trainer.export(d, "saelens", tmp_path / "sl")
    trainer, d = _trained({"activation": "jumprelu", "l0_warmup_rows": 0})
    with pytest.raises(OptionError, match="sparsify's transcoders are TopK"):
        trainer.export(d, "sparsify", tmp_path / "sp")
    wide = TranscoderTrainer({"k": 2, "d_dict": 16, "d_target": 12})
    with pytest.raises(OptionError, match="as many dimensions"):
        wide.export(wide.build(8), "sparsify", tmp_path / "sp2")


def test_a_foreign_saelens_relu_transcoder_imports(tmp_path):
    """A SAELens ReLU skip transcoder (no featureforge block, no threshold) imports as JumpReLU
    with the smallest positive thresholds: the same codes on rows whose pre-activations are not tiny."""
    trainer, d = _trained({"activation": "jumprelu", "l0_warmup_rows": 0, "skip": True})
    out = trainer.export(d, "saelens", tmp_path / "sl")
    cfg = json.loads((out / "cfg.json").read_text())
    cfg["architecture"] = "skip_transcoder"
    del cfg["metadata"]["featureforge"]
    (out / "cfg.json").write_text(json.dumps(cfg))
    tensors = load_file(str(out / "sae_weights.safetensors"))
    del tensors["threshold"]
    from safetensors.torch import save_file

    save_file(tensors, str(out / "sae_weights.safetensors"))
    featureforge.import_run(out, "saelens", tmp_path / "back")
    back = load_run(tmp_path / "back")
    assert back.config["options"]["source"] == "transformer.h.1.mlp.in" and back.config["options"]["target"] == "transformer.h.1.mlp.out"
    x = _rows()
    with torch.no_grad():
        w = tensors["W_enc"]
        relu = torch.relu(x @ w + tensors["b_enc"])
        expect = relu @ tensors["W_dec"] + tensors["b_dec"] + x @ tensors["W_skip"].T
        torch.testing.assert_close(back(x).x_hat, expect, rtol=1e-5, atol=1e-5)


def test_a_corrupt_export_fails_in_one_line(tmp_path):
    trainer, d = _trained({"activation": "topk", "skip": True})
    out = trainer.export(d, "sparsify", tmp_path / "sp")
    tensors = load_file(str(out / "sae.safetensors"))
    del tensors["W_skip"]
    from safetensors.torch import save_file

    save_file(tensors, str(out / "sae.safetensors"))
    with pytest.raises(BadInputError, match=r"missing \['W_skip'\]") as info:
        featureforge.import_run(out, "sparsify", tmp_path / "back")
    assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("options, fmt", CASES, ids=lambda v: str(v))
def test_peer_library_reproduces_our_transcoder(tmp_path, options, fmt):
    """SAELens' SAE.load_from_disk (Transcoder classes) and sparsify's SparseCoder.load_from_disk
    (transcode=True) on our exports give our codes and target estimates, skip term included."""
    trainer, d = _trained(options)
    out = trainer.export(d, fmt, tmp_path / "exported")
    x = _rows()
    peer, meta = _peer_outputs(tmp_path, fmt, out, x)
    with torch.no_grad():
        ours = d(x)
    assert torch.equal(peer["codes"] > 0, ours.codes > 0)
    torch.testing.assert_close(peer["codes"], ours.codes, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(peer["forward"], ours.x_hat, atol=1e-4, rtol=1e-4)
    if fmt == "saelens":
        expected = "JumpReLUSkipTranscoder" if options.get("skip") else "JumpReLUTranscoder"
        assert meta["class"] == expected
        assert (meta["hook_name"], meta["hook_name_out"]) == ("transformer.h.1.mlp.in", "transformer.h.1.mlp.out")
    else:
        assert meta["class"] == "SparseCoder"
