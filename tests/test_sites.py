"""Stores of several sites (one column per site) and the loop's roles: acts, target, sites.

A test-only transcoder-shaped trainer (``acts`` -> ``target``) and crosscoder-shaped one (stacked
``sites``) drive the loop, the run's config.json and the ``reconstruction`` evaluator; the real
transcoder and crosscoder trainers live in their plugin.
"""

from __future__ import annotations

import dataclasses
import json
import types

import numpy as np
import pytest
import torch
from storehelpers import run_cli

import featureforge as ff
from featureforge.dictionary import Dictionary
from featureforge.plugins import get_registry
from featureforge.roles import StepOutput

PLANTED = {"d_in": 16, "n_features": 12, "transcoder": True, "d_out": 8, "mean_active": 3.0}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A planted-transcoder store: sites ``in`` (16 wide) and ``out`` (8 wide) from the same codes."""
    return ff.cache("synthetic", PLANTED, store=tmp_path_factory.mktemp("planted") / "s", rows=8192, rows_per_chunk=512, progress=False)


# -- the store -----------------------------------------------------------------------------------
def test_a_store_of_two_sites_has_a_column_and_statistics_per_site(planted):
    assert planted.sites == ["in", "out"]
    assert planted.columns == {"acts": "float32", "acts_1": "float32"}
    assert [r["d_in"] for r in planted.site_records] == [16, 8] and planted.d_in == 16
    out = planted.site("out")
    assert out.d_in == 8 and out.columns == {"acts": "float32"} and out.sites == ["out"]
    rows = out.read(0, planted.rows)
    assert np.array_equal(rows, planted.read(0, planted.rows, "acts_1"))
    # each site's normalisation is its own rows', and finalize recorded it
    for name, column in (("in", "acts"), ("out", "acts_1")):
        x = planted.read(0, planted.rows, column).astype(np.float64)
        norm = planted.site(name).normalisation()
        assert norm["mean_squared_norm"] == pytest.approx(float((x**2).sum(1).mean()), rel=1e-9)
        assert planted.attrs["summary"]["site_normalisation"][name]["scale"] == norm["scale"]
    assert planted.site("in").normalisation() == planted.normalisation()
    # a reader of a view yields that site's rows as acts
    batch = next(iter(out.loader(batch_size=64)))
    assert tuple(batch["acts"].shape) == (64, 8)
    assert planted.verify() == [] and out.verify() == []
    # a site's ground truth is features_<site>, seen by its view as features
    assert planted.ground_truth()["features"].shape == (12, 16)
    assert out.ground_truth()["features"].shape == (12, 8)
    assert np.array_equal(out.ground_truth()["features"], planted.ground_truth()["features_out"])


def test_views_for_a_dictionarys_roles_read_its_source_or_its_sites_side_by_side(tmp_path, planted):
    """``for_roles``: what a transcoder (its acts site) or a crosscoder (its sites stacked) encodes."""
    from writeshuffle_source import Sequences

    assert planted.for_roles({"acts": "in", "target": "out"}).sites == ["in"]
    assert planted.site("out").for_roles({"acts": "in"}).d_in == 16  # from a view: the whole store's site
    assert planted.for_roles({}) is planted
    store = ff.cache(Sequences(rows=1024, sites=3, width=4), store=tmp_path / "three", rows_per_chunk=256, progress=False)
    stacked = store.for_roles({"sites": ["second", "acts"]})
    assert stacked.d_in == 8 and stacked.stacked_sites == ["second", "acts"]
    rows = stacked.read(100, 140)
    assert np.array_equal(rows, np.concatenate([store.site("second").read(100, 140), store.read(100, 140)], 1))
    assert np.array_equal(stacked.read(100, 140, "positions"), store.read(100, 140, "positions"))
    with pytest.raises(ff.BadInputError, match="widths"):
        planted.stacked(["in", "out"])


def test_a_one_site_store_names_one_site_and_refuses_unknown_ones(tmp_path):
    store = ff.cache("synthetic", {"d_in": 8}, store=tmp_path / "one", rows=1024, rows_per_chunk=256, progress=False)
    assert store.sites == ["acts"] and "sites" not in store.attrs
    assert store.site("acts").read(0, 10).tobytes() == store.read(0, 10).tobytes()
    with pytest.raises(ff.BadInputError, match=r"has no site 'mlp'; its sites are: acts"):
        store.site("mlp")


def test_info_lists_the_sites(planted):
    result = run_cli("info", planted.url)
    assert "sites        2, rows aligned" in result.stdout
    assert "out" in result.stdout and "column acts_1" in result.stdout and "d_in 8" in result.stdout
    data = json.loads(run_cli("info", planted.url, "--json").stdout)
    assert [s["name"] for s in data["sites"]] == ["in", "out"] and data["sites"][1]["normalisation"]["rows"] == 8192


def test_planted_transcoder_target_is_a_linear_map_of_the_input_row_for_row(planted):
    """With fewer features than input dimensions, least squares recovers out from in; shuffled rows cannot."""
    x, y = planted.read(0, 8192), planted.site("out").read(0, 8192)
    design = np.c_[x, np.ones(len(x))]

    def fvu(target: np.ndarray) -> float:
        coef, *_ = np.linalg.lstsq(design[:6000], target[:6000], rcond=None)
        err = target[6000:] - design[6000:] @ coef
        return float((err**2).sum() / ((target[6000:] - target[6000:].mean(0)) ** 2).sum())

    assert fvu(y) < 0.01
    assert fvu(y[np.random.default_rng(0).permutation(len(y))]) > 0.95
    # the true map in -> codes -> out: the codes through F_in, decoded with F_out (the ground truth)
    truth = planted.ground_truth()
    src = ff.make_source("synthetic", PLANTED)
    codes = src.codes(0, 8192)
    assert np.allclose(codes @ truth["features_out"], y, atol=0.06)


def test_transcoder_and_downstream_are_refused_together():
    with pytest.raises(ff.OptionError, match="pass only one of them"):
        ff.make_source("synthetic", {"transcoder": True, "downstream": True})


# -- a streaming source of two sites (kill / resume: tests/test_write_shuffle.py, tests/test_cache_cli.py) --
def test_a_source_site_missing_from_a_batch_is_named(tmp_path):
    from writeshuffle_source import Sequences

    class Forgetful(Sequences):
        def stream(self, *args, **kwargs):
            for batch in super().stream(*args, **kwargs):
                batch.pop("second")
                yield batch

    with pytest.raises(ff.BadInputError, match=r"gave no site 'second' for rows"):
        ff.cache(Forgetful(rows=600, sites=2), store=tmp_path / "s", rows_per_chunk=128, progress=False)


# -- the loop: one dictionary per site, and the roles ------------------------------------------------
class Linear(Dictionary):
    """TopK codes of ``acts`` decoded to rows of width ``d_out`` (an estimate of the target), or
    stacked sites [n, S, d] encoded together and decoded per site."""

    def __init__(self, d_in: int, d_dict: int, k: int, d_out: int, sites: int = 0, scales: "dict | None" = None):
        super().__init__(d_in, d_dict)
        self.k, self.sites = k, sites
        width = sites * d_in if sites else d_in
        self.W_enc = torch.nn.Parameter(torch.randn(d_dict, width) / width**0.5)
        self.W_dec = torch.nn.Parameter(torch.randn(d_dict, sites * d_in if sites else d_out) / d_dict**0.5)
        # forward works on the store's own rows: the target's (or each stacked site's) scale undone
        scales = scales or {}
        self.register_buffer("target_scale", torch.tensor(float(scales.get("target", scales.get("acts", 1.0)))))
        self.register_buffer("site_scales", torch.tensor([float(v) for v in scales.get("sites", [1.0] * max(sites, 1))]).view(1, -1, 1))

    def encode(self, x):
        return self.encode_normalised(x.float() * (self.site_scales if self.sites else self.input_scale))

    def decode(self, codes):
        return self.decode_normalised(codes) / (self.site_scales if self.sites else self.target_scale)

    def encode_normalised(self, x):
        z = torch.relu(x.reshape(len(x), -1) @ self.W_enc.T)
        values, idx = z.topk(self.k, dim=-1)
        return torch.zeros_like(z).scatter(-1, idx, values)

    def decode_normalised(self, codes):
        out = codes @ self.W_dec
        return out.reshape(len(codes), self.sites, self.d_in) if self.sites else out

    @property
    def decoder_directions(self):
        return self.W_dec


@dataclasses.dataclass
class MapOptions:
    d_dict: int = 32
    """Latents."""
    k: int = 4
    """Active latents per row."""
    source: str = ""
    """Site of acts (default: the first)."""
    target: str = ""
    """Site of the target; empty: a plain autoencoder of acts (the default sites_for)."""
    stack: bool = False
    """Read every site stacked (the sites role) instead of acts -> target."""
    fail_at_step: int = -1
    """Raise at this step (a crash)."""


class Crash(RuntimeError):
    pass


class MapTrainer(ff.DictionaryTrainer):
    name = "test-site-map"
    description = "test-only: topk codes of one site decoded to another, or of stacked sites"
    Options = MapOptions

    def sites_for(self, store_sites, site):
        if self.options.stack:
            return {"sites": tuple(store_sites)}
        if not self.options.target:
            return super().sites_for(store_sites, site)
        return {"acts": self.options.source or site or store_sites[0], "target": self.options.target}

    def build(self, d_in):
        w = self.role_widths
        if "sites" in w:
            return Linear(d_in, self.options.d_dict, self.options.k, 0, sites=w["sites"][0], scales=self.role_scales)
        return Linear(d_in, self.options.d_dict, self.options.k, w.get("target", d_in), scales=self.role_scales)

    def learning_rate(self, dictionary, steps=None):
        return 3e-3

    def loss(self, dictionary, batch, state):
        if state.step == self.options.fail_at_step:
            raise Crash(f"simulated crash at step {state.step}")
        x = batch["sites"] if "sites" in batch else batch["acts"]
        y = batch["sites"] if "sites" in batch else batch.get("target", x)
        z = dictionary.encode_normalised(x)
        y_hat = dictionary.decode_normalised(z)
        return StepOutput(loss=(y - y_hat).pow(2).sum(-1).mean(), x_hat=y_hat, active=(z != 0).any(0), l0=(z != 0).float().sum(-1).mean())


@pytest.fixture(scope="module")
def map_trainer():
    plugin = types.SimpleNamespace(featureforge_register_trainers=ff.hookimpl(lambda register: register(MapTrainer)))
    registry = get_registry()
    registry.register_plugin(plugin, "test-site-map-plugin", "0")
    try:
        yield MapTrainer
    finally:
        registry.unregister_plugin(plugin)


def _train(store, out, options=None, **kw):
    kw = {"batch_size": 256, "progress": False, "log_every": 8, **kw}
    return ff.train("test-site-map", options or {"k": 4, "d_dict": 32}, store=store, out=out, **kw)


def test_sites_all_trains_one_dictionary_per_site_in_one_pass_like_separate_runs(planted, map_trainer, tmp_path):
    runs = _train(planted, tmp_path / "all", sites="all")
    assert [r.name for r in runs] == ["in", "out"]
    configs = [json.loads((r / "config.json").read_text()) for r in runs]
    assert [c["sites"] for c in configs] == [{"acts": "in"}, {"acts": "out"}]
    assert [c["d_in"] for c in configs] == [16, 8]
    assert configs[1]["store"]["site"]["name"] == "out" and configs[1]["store"]["site"]["column"] == "acts_1"
    assert configs[1]["normalisation"]["scale"] == planted.site("out").normalisation()["scale"]
    [alone] = _train(planted, tmp_path / "alone", site="out")
    assert (alone / "weights.safetensors").read_bytes() == (runs[1] / "weights.safetensors").read_bytes()
    summary = ff.evaluate(tmp_path / "all", store=planted, progress=False)
    by_member = {m["member"]: m for m in summary["members"]}
    assert set(by_member) == {"in", "out"} and all(np.isfinite(m["fvu"]) for m in by_member.values())
    assert by_member["out"]["mmcs"] is not None  # scored against the out site's own true features
    assert (tmp_path / "all" / "sweep.json").exists()


def test_train_sites_from_the_cli(planted, map_trainer, tmp_path):
    from click.testing import CliRunner

    from featureforge.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--trainer", "test-site-map", "-o", "k=4", "--store", planted.url, "--out", str(tmp_path / "cli"),
                                 "--sites", "out,in", "--batch-size", "256"])
    assert result.exit_code == 0, result.output
    assert "Trained test-site-map into" in result.output
    assert sorted(p.name for p in (tmp_path / "cli").iterdir() if (p / "config.json").exists()) == ["in", "out"]
    bad = runner.invoke(cli, ["train", "--trainer", "test-site-map", "--store", planted.url, "--out", str(tmp_path / "bad"), "--site", "mlp"])
    assert bad.exit_code != 0 and "has no site 'mlp'; its sites are: in, out" in bad.output


def test_a_target_role_is_filled_from_its_site_and_scored_as_the_target(planted, map_trainer, tmp_path):
    [run] = _train(planted, tmp_path / "map", options={"k": 4, "target": "out"}, epochs=3)
    config = json.loads((run / "config.json").read_text())
    assert config["sites"] == {"acts": "in", "target": "out"} and config["d_in"] == 16
    assert set(config["normalisation"]["sites"]) == {"in", "out"}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["fvu"] < lines[0]["fvu"]
    metrics = ff.evaluate(run, store=planted, evaluators=["reconstruction"], progress=False)["evaluators"]["reconstruction"]["metrics"]
    assert metrics["fvu_of"] == "target" and metrics["target_site"] == "out"
    assert 0 < metrics["fvu"] < 0.6  # the target is a sparse map of the input: far better than predicting its mean


def test_a_run_with_a_target_resumes_bit_identically(planted, map_trainer, tmp_path):
    [reference] = _train(planted, tmp_path / "ref", options={"k": 4, "target": "out"}, sites="in", checkpoint_every=2048)
    with pytest.raises(Crash):
        _train(planted, tmp_path / "crashed", options={"k": 4, "target": "out", "fail_at_step": 20}, sites="in", checkpoint_every=2048)
    cfg_path = tmp_path / "crashed" / "config.json"
    assert not cfg_path.exists()
    member = tmp_path / "crashed" / "in" / "config.json"
    cfg = json.loads(member.read_text())
    cfg["options"]["fail_at_step"] = -1
    member.write_text(json.dumps(cfg))
    [resumed] = _train(planted, tmp_path / "crashed", options={"k": 4, "target": "out"}, sites="in", checkpoint_every=2048, resume=True)
    assert (resumed / "weights.safetensors").read_bytes() == (reference / "weights.safetensors").read_bytes()


def test_stacked_sites_of_one_width_are_scored_per_site(tmp_path, map_trainer):
    from writeshuffle_source import Sequences

    store = ff.cache(Sequences(rows=4096, sites=3, width=4), store=tmp_path / "three", rows_per_chunk=256, progress=False)
    [run] = _train(store, tmp_path / "stack", options={"k": 4, "stack": True})
    config = json.loads((run / "config.json").read_text())
    assert config["sites"] == {"sites": ["acts", "second", "third"]}
    metrics = ff.evaluate(run, store=store, evaluators=["reconstruction"], progress=False)["evaluators"]["reconstruction"]["metrics"]
    assert metrics["fvu_of"] == "sites" and set(metrics["fvu_per_site"]) == {"acts", "second", "third"}
    assert all(np.isfinite(v) for v in metrics["fvu_per_site"].values())


def test_stacking_sites_of_different_widths_is_refused(planted, map_trainer, tmp_path):
    with pytest.raises(ff.BadInputError, match=r"stacks sites of different widths: in \(16\), out \(8\)"):
        _train(planted, tmp_path / "bad", options={"stack": True})


def test_a_damaged_chunk_of_a_later_site_is_named_and_repaired(tmp_path):
    options = {**PLANTED, "n_features": 8}
    store = ff.cache("synthetic", options, store=tmp_path / "s", rows=3000, rows_per_chunk=512, progress=False)
    before = store.site("out").read(0, 3000).copy()
    path = store.location.key_path(store.chunk_key("acts_1", 2))
    damaged = bytearray(open(path, "rb").read())
    damaged[10] ^= 0xFF
    open(path, "wb").write(bytes(damaged))
    assert ff.open_store(tmp_path / "s").verify() == ["chunk acts_1/c/2/0 (rows 1024–1535) fails its checksum (its bytes changed after they were written)"]
    with pytest.raises(ff.CorruptStoreError, match=r"chunk acts_1/c/2/0 .* --repair"):
        ff.open_store(tmp_path / "s").site("out").read(0, 3000)
    repaired = ff.cache("synthetic", options, store=tmp_path / "s", rows=3000, rows_per_chunk=512, progress=False, repair=True)
    assert repaired.verify() == [] and np.array_equal(repaired.site("out").read(0, 3000), before)
