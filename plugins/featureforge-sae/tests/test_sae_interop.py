"""Export to / import from SAELens and sparsify layouts: outputs survive the round trip, bad
folders fail in one line, and (slow) the peer libraries themselves reproduce our outputs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import featureforge
from featureforge import BadInputError, OptionError
from featureforge.dictionary import load as load_run
from featureforge_sae import BatchTopKTrainer, JumpReLUTrainer, MatryoshkaTrainer, ReLUTrainer, TopKTrainer
from featureforge.testing import train_steps

REPO = Path(__file__).resolve().parents[3]


def peers_python() -> Path:
    """The SAELens/sparsify venv's python: $PEERS_VENV, else .peers/venv in this repository
    (where benchmarks/install_peers.sh and `make test-slow` create it)."""
    venv = os.environ.get("PEERS_VENV")
    return (Path(venv) if venv else REPO / ".peers" / "venv") / "bin" / "python"


PEER_CHECK = Path(__file__).with_name("peer_check.py")

CASES = [
    (TopKTrainer, {"d_dict": 80, "k": 6}, "saelens"),
    (TopKTrainer, {"d_dict": 80, "k": 6}, "sparsify"),
    (BatchTopKTrainer, {"d_dict": 80, "k": 6}, "saelens"),
    (ReLUTrainer, {"d_dict": 80}, "saelens"),
    (JumpReLUTrainer, {"d_dict": 80, "l0_warmup_rows": 0}, "saelens"),
    (MatryoshkaTrainer, {"d_dict": 80, "k": 6, "prefixes": [20, 40]}, "saelens"),
]

#: Provenance as a store of the hf source records it (SAELens metadata is filled from it).
PROVENANCE = {"model": "gpt2 (local)", "model_name": "gpt2", "hook": "transformer.h.3", "hook_name": "transformer.h.3", "context_size": 64}


def _trained(cls, options, scale=2.5, d_in=24):
    """A dictionary moved away from its initialisation, trained in units scaled by ``scale``."""
    trainer = cls(options)
    torch.manual_seed(1)
    d = trainer.build(d_in)
    d.input_scale.fill_(scale)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(256, d_in, generator=g) * 1.3 + 0.4 for _ in range(20)]
    trainer.initialize(d, batches[0])
    train_steps(trainer, d, batches, lr=5e-3)
    if hasattr(d, "log_threshold"):  # thresholds far apart, so per-latent thresholds matter in the checks
        with torch.no_grad():
            d.log_threshold.copy_(torch.empty(d.d_dict).uniform_(0.05, 1.5, generator=torch.Generator().manual_seed(3)).log())
    d.config = {"store": {"provenance": dict(PROVENANCE)}}
    d.eval()
    return trainer, d


def _raw_rows(d_in=24, n=300, seed=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d_in, generator=g) * 1.3 + 0.4) / 2.5  # original units


def _assert_same_outputs(a, b, x):
    with torch.no_grad():
        ca, cb = a.encode(x), b.encode(x)
        assert torch.equal(ca > 0, cb > 0)
        assert torch.allclose(ca, cb, atol=1e-5, rtol=1e-5)
        assert torch.allclose(a.decode(ca), b.decode(cb), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls, options, fmt", CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_export_then_import_gives_the_same_outputs(tmp_path, cls, options, fmt):
    trainer, d = _trained(cls, options)
    out = trainer.export(d, fmt, tmp_path / "exported")
    found = cls.import_dictionary(out, fmt)
    assert found is not None
    opts, imported = found
    assert opts["d_dict"] == 80
    assert float(imported.input_scale) == 1.0  # the scale was folded into the weights
    _assert_same_outputs(d, imported, _raw_rows())


@pytest.mark.parametrize("cls, options, fmt", CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_round_trip_through_the_featureforge_api(tmp_path, cls, options, fmt):
    trainer, d = _trained(cls, options)
    d.save(tmp_path / "run", {"trainer": cls.name, "options": trainer.options_dict()})
    featureforge.export(tmp_path / "run", fmt, tmp_path / "exported")
    featureforge.import_run(tmp_path / "exported", fmt, tmp_path / "back")
    back = load_run(tmp_path / "back")
    assert back.config["trainer"] == cls.name
    _assert_same_outputs(d, back, _raw_rows())


def test_exported_layouts_have_the_documented_tensors(tmp_path):
    trainer, d = _trained(TopKTrainer, {"d_dict": 80, "k": 6})
    trainer.export(d, "saelens", tmp_path / "sl")
    trainer.export(d, "sparsify", tmp_path / "sp")
    sl = load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in sl.items()} == {"W_enc": (24, 80), "W_dec": (80, 24), "b_enc": (80,), "b_dec": (24,)}
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"], cfg["k"], cfg["normalize_activations"]) == ("topk", 24, 80, 6, "none")
    sp = load_file(str(tmp_path / "sp" / "sae.safetensors"))
    assert {k: tuple(v.shape) for k, v in sp.items()} == {"encoder.weight": (80, 24), "encoder.bias": (80,), "W_dec": (80, 24), "b_dec": (24,)}
    cfg = json.loads((tmp_path / "sp" / "cfg.json").read_text())
    assert (cfg["activation"], cfg["d_in"], cfg["num_latents"], cfg["k"]) == ("topk", 24, 80, 6)
    assert cfg["normalize_decoder"] is False  # input_scale 2.5 is folded: rows are not unit norm


def test_batchtopk_exports_as_jumprelu_with_one_threshold(tmp_path):
    trainer, d = _trained(BatchTopKTrainer, {"d_dict": 80, "k": 6})
    trainer.export(d, "saelens", tmp_path / "sl")
    assert json.loads((tmp_path / "sl" / "cfg.json").read_text())["architecture"] == "jumprelu"
    theta = load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))["threshold"]
    assert torch.all(theta == float(d.threshold)) and float(d.threshold) > 0
    with pytest.raises(OptionError, match="supports: saelens"):
        trainer.export(d, "sparsify", tmp_path / "sp")


def _exported(tmp_path, fmt="saelens", scale=2.5, **options):
    trainer, d = _trained(TopKTrainer, {"d_dict": 80, "k": 6, **options}, scale=scale)
    return trainer.export(d, fmt, tmp_path / "exported")


def _one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message and message
    return message


def test_import_refuses_truncated_weights(tmp_path):
    out = _exported(tmp_path)
    path = out / "sae_weights.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BadInputError) as info:
        featureforge.import_run(out, "saelens", tmp_path / "back")
    assert "not a readable safetensors" in _one_line(info)


def test_import_refuses_mis_shaped_weights(tmp_path):
    out = _exported(tmp_path, "sparsify")
    tensors = load_file(str(out / "sae.safetensors"))
    tensors["W_dec"] = torch.zeros(81, 24)
    save_file(tensors, str(out / "sae.safetensors"))
    with pytest.raises(BadInputError) as info:
        featureforge.import_run(out, "sparsify", tmp_path / "back")
    assert "W_dec has shape (81, 24)" in _one_line(info)


def test_import_refuses_nan_weights(tmp_path):
    out = _exported(tmp_path)
    tensors = load_file(str(out / "sae_weights.safetensors"))
    tensors["b_enc"][3] = float("nan")
    save_file(tensors, str(out / "sae_weights.safetensors"))
    with pytest.raises(BadInputError) as info:
        featureforge.import_run(out, "saelens", tmp_path / "back")
    assert "NaN" in _one_line(info)


def test_import_refuses_broken_config(tmp_path):
    out = _exported(tmp_path)
    (out / "cfg.json").write_text("{not json")
    with pytest.raises(BadInputError) as info:
        featureforge.import_run(out, "saelens", tmp_path / "back")
    assert "not valid JSON" in _one_line(info)


def test_import_of_a_foreign_architecture_names_the_problem(tmp_path):
    out = _exported(tmp_path)
    cfg = json.loads((out / "cfg.json").read_text())
    cfg["architecture"] = "gated"
    (out / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInputError) as info:
        featureforge.import_run(out, "saelens", tmp_path / "back")
    assert "no installed trainer recognises" in _one_line(info)


def test_import_refuses_runtime_normalisation_and_skip_autoencoders(tmp_path):
    out = _exported(tmp_path)
    cfg = json.loads((out / "cfg.json").read_text())
    cfg["normalize_activations"] = "layer_norm"
    (out / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInputError) as info:
        featureforge.import_run(out, "saelens", tmp_path / "back")
    assert "layer_norm" in _one_line(info)
    out = _exported(tmp_path / "sp", "sparsify")
    cfg = json.loads((out / "cfg.json").read_text())
    cfg["skip_connection"] = True  # (transcoders, transcode=true, are the transcoder trainer's: test_coder_interop.py)
    (out / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInputError) as info:
        featureforge.import_run(out, "sparsify", tmp_path / "back2")
    assert "skip connection" in _one_line(info)


def test_import_folds_saelens_variants(tmp_path):
    """apply_b_dec_to_input=false and rescale_acts_by_decoder_norm=true are equivalent rewrites."""
    out = _exported(tmp_path, scale=1.0, decoder="unit")  # unit decoder rows: the norm-rescaled form is exact
    _, ours = TopKTrainer.import_dictionary(out, "saelens")
    tensors = load_file(str(out / "sae_weights.safetensors"))
    cfg = json.loads((out / "cfg.json").read_text())
    # Same SAE written the other way: encoder sees raw x (bias absorbs W_enc b_dec), decoder rows
    # scaled by n_i and activations rescaled by the decoder norms.
    n = torch.linspace(0.5, 2.0, 80)
    W_enc, b_enc = tensors["W_enc"], tensors["b_enc"]
    tensors["b_enc"] = (b_enc - tensors["b_dec"] @ W_enc) / n
    tensors["W_enc"] = W_enc / n
    tensors["W_dec"] = tensors["W_dec"] * n[:, None]
    cfg.update({"apply_b_dec_to_input": False, "rescale_acts_by_decoder_norm": True})
    save_file(tensors, str(out / "sae_weights.safetensors"))
    (out / "cfg.json").write_text(json.dumps(cfg))
    _, variant = TopKTrainer.import_dictionary(out, "saelens")
    _assert_same_outputs(ours, variant, _raw_rows())


def _peer_outputs(tmp_path, fmt, folder, x):
    """Codes, reconstructions and (SAELens) metadata as the peer library loads ``folder``."""
    python = peers_python()
    if not python.exists():
        pytest.skip(f"real-loader check not run: no peers venv at {python.parent.parent}; create it with "
                    "`make test-slow` or `bash benchmarks/install_peers.sh`, or set PEERS_VENV")
    save_file({"x": x.contiguous()}, str(tmp_path / "rows.safetensors"))
    result = subprocess.run([str(python), str(PEER_CHECK), fmt, str(folder), str(tmp_path / "rows.safetensors"), str(tmp_path / "peer.safetensors")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "peer.safetensors"), "pt") as f:
        meta = f.metadata()
    return load_file(str(tmp_path / "peer.safetensors")), meta


@pytest.mark.slow
@pytest.mark.parametrize("cls, options, fmt", CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_peer_library_reproduces_our_outputs(tmp_path, cls, options, fmt):
    """SAELens' SAE.load_from_disk / sparsify's SparseCoder.load_from_disk on our exports give
    our codes and reconstructions (run benchmarks/install_peers.sh once to enable)."""
    trainer, d = _trained(cls, options)
    out = trainer.export(d, fmt, tmp_path / "exported")
    x = _raw_rows()
    peer, meta = _peer_outputs(tmp_path, fmt, out, x)
    with torch.no_grad():
        codes = d.encode(x)
        x_hat = d.decode(codes)
    assert torch.equal(peer["codes"] > 0, codes > 0)
    assert torch.allclose(peer["codes"], codes, atol=1e-4, rtol=1e-4)
    assert torch.allclose(peer["x_hat"], x_hat, atol=1e-4, rtol=1e-4)
    if fmt == "saelens":  # SAELens' own config object sees where the activations came from
        assert (meta["hook_name"], meta["model_name"]) == (PROVENANCE["hook_name"], PROVENANCE["model_name"])
        if cls is JumpReLUTrainer:
            assert meta["class"] == "JumpReLUSAE"


@pytest.mark.slow
def test_saelens_loader_sees_the_hf_stores_model_and_hook(tmp_path):
    """End to end: cache MiniLM activations with the hf source, train, export; SAELens' loader
    reads hook_name/model_name from the store's provenance and reproduces the outputs."""
    pytest.importorskip("featureforge_hf")
    store = featureforge.cache("hf", {"max_docs": 12, "context_size": 64, "batch_size": 8}, store=str(tmp_path / "s.zarr"),
                               rows=1024, rows_per_chunk=256, progress=False)
    [run] = featureforge.train("jumprelu", {"d_dict": 256}, store=store, out=str(tmp_path / "run"), rows=2048, batch_size=256,
                               threads=1, progress=False)
    featureforge.export(run, "saelens", tmp_path / "sl")
    meta = json.loads((tmp_path / "sl" / "cfg.json").read_text())["metadata"]
    assert (meta["hook_name"], meta["model_name"], meta["context_size"]) == ("encoder.layer.3", "sentence-transformers/all-MiniLM-L6-v2", 64)
    x = torch.as_tensor(store.read(0, 64)).float()
    peer, peer_meta = _peer_outputs(tmp_path, "saelens", tmp_path / "sl", x)
    assert (peer_meta["hook_name"], peer_meta["model_name"]) == ("encoder.layer.3", "sentence-transformers/all-MiniLM-L6-v2")
    d = load_run(run)
    with torch.no_grad():
        codes = d.encode(x)
        assert torch.allclose(peer["codes"], codes, atol=1e-4, rtol=1e-4)
        assert torch.allclose(peer["x_hat"], d.decode(codes), atol=1e-3, rtol=1e-4)


def test_jumprelu_exports_its_per_latent_thresholds(tmp_path):
    trainer, d = _trained(JumpReLUTrainer, {"d_dict": 80, "l0_warmup_rows": 0})
    trainer.export(d, "saelens", tmp_path / "sl")
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["apply_b_dec_to_input"]) == ("jumprelu", False)
    theta = load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))["threshold"]
    assert torch.allclose(theta, d.threshold.detach()) and theta.unique().numel() == 80


def test_saelens_metadata_names_model_and_hook_from_the_store(tmp_path):
    trainer, d = _trained(TopKTrainer, {"d_dict": 80, "k": 6})
    trainer.export(d, "saelens", tmp_path / "new")
    meta = json.loads((tmp_path / "new" / "cfg.json").read_text())["metadata"]
    assert (meta["model_name"], meta["hook_name"], meta["context_size"]) == ("gpt2", "transformer.h.3", 64)
    d.config = {"store": {"provenance": {"model": "old-model", "hook": "encoder.layer.2"}}}  # stores cached before hook_name
    trainer.export(d, "saelens", tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "cfg.json").read_text())["metadata"]
    assert (meta["model_name"], meta["hook_name"]) == ("old-model", "encoder.layer.2")


def _strip_featureforge_block(folder):
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["metadata"]["featureforge"]
    (folder / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("cls, options, expect", [
    (JumpReLUTrainer, {"d_dict": 80, "l0_warmup_rows": 0}, "jumprelu"),  # per-latent thresholds
    (BatchTopKTrainer, {"d_dict": 80, "k": 6}, "batchtopk"),  # one shared threshold
])
def test_foreign_saelens_jumprelu_files_import_by_their_thresholds(tmp_path, cls, options, expect):
    """A SAELens JumpReLU folder without featureforge's block (as SAELens or Gemma Scope write
    them) imports: per-latent thresholds as a jumprelu run, one shared threshold as batchtopk."""
    trainer, d = _trained(cls, options)
    out = trainer.export(d, "saelens", tmp_path / "exported")
    _strip_featureforge_block(out)
    featureforge.import_run(out, "saelens", tmp_path / "back")
    back = load_run(tmp_path / "back")
    assert back.config["trainer"] == expect
    _assert_same_outputs(d, back, _raw_rows())


def test_saelens_jumprelu_with_centred_input_imports(tmp_path):
    """apply_b_dec_to_input=true (the encoder sees x - b_dec) folds into the encoder bias."""
    trainer, d = _trained(JumpReLUTrainer, {"d_dict": 80, "l0_warmup_rows": 0})
    out = trainer.export(d, "saelens", tmp_path / "exported")
    _strip_featureforge_block(out)
    tensors = load_file(str(out / "sae_weights.safetensors"))
    tensors["b_enc"] = tensors["b_enc"] + tensors["b_dec"] @ tensors["W_enc"]
    save_file(tensors, str(out / "sae_weights.safetensors"))
    cfg = json.loads((out / "cfg.json").read_text())
    cfg["apply_b_dec_to_input"] = True
    (out / "cfg.json").write_text(json.dumps(cfg))
    _, back = JumpReLUTrainer.import_dictionary(out, "saelens")
    _assert_same_outputs(d, back, _raw_rows())


def test_matryoshka_export_loads_back_as_matryoshka(tmp_path):
    trainer, d = _trained(MatryoshkaTrainer, {"d_dict": 80, "k": 6, "prefixes": [20, 40]})
    assert BatchTopKTrainer.import_dictionary(trainer.export(d, "saelens", tmp_path / "sl"), "saelens") is None
    featureforge.import_run(tmp_path / "sl", "saelens", tmp_path / "back")
    back = load_run(tmp_path / "back")
    assert back.config["trainer"] == "matryoshka" and back.prefixes == (20, 40, 80)


@pytest.mark.parametrize("change, fragment", [
    ({"normalize_activations": "layer_norm"}, "layer_norm"),
    ({"rescale_acts_by_decoder_norm": True}, "rescales jumprelu activations"),
])
def test_saelens_jumprelu_refusals_give_the_reason(tmp_path, change, fragment):
    trainer, d = _trained(JumpReLUTrainer, {"d_dict": 80, "l0_warmup_rows": 0})
    out = trainer.export(d, "saelens", tmp_path / "exported")
    cfg = json.loads((out / "cfg.json").read_text())
    cfg.update(change)
    (out / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInputError) as info:
        featureforge.import_run(out, "saelens", tmp_path / "back")
    message = _one_line(info)
    assert fragment in message and "no installed trainer" not in message


def test_saelens_jumprelu_with_missing_threshold_names_the_tensor(tmp_path):
    trainer, d = _trained(JumpReLUTrainer, {"d_dict": 80, "l0_warmup_rows": 0})
    out = trainer.export(d, "saelens", tmp_path / "exported")
    tensors = load_file(str(out / "sae_weights.safetensors"))
    del tensors["threshold"]
    save_file(tensors, str(out / "sae_weights.safetensors"))
    with pytest.raises(BadInputError) as info:
        featureforge.import_run(out, "saelens", tmp_path / "back")
    assert "missing ['threshold']" in _one_line(info)
