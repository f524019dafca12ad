"""Evaluation: metric functions against hand-computed values, ground-truth metrics on an oracle vs a
random dictionary, the ``evaluate`` API (held-out chunks, report.json, plots) and the CLI command.

The dictionaries come from a tiny test trainer plugin, written to a file so that the same code is
registered in-process (``register_plugin``) and, for the CLI subprocess, through a real entry
point (a hand-written ``dist-info`` folder on ``PYTHONPATH``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import featureforge as ff
from featureforge.evaluation import _accumulators as accumulators
from featureforge.store import _holdout as evalrows
from featureforge.evaluation import metrics as ev
from featureforge.api import make_source
from featureforge.plugins import get_registry

PLUGIN_MODULE = "ff_eval_testplugin"
PLUGIN_SOURCE = textwrap.dedent(
    '''
    """Test-only trainer: a linear encoder with a fixed threshold and a linear decoder."""
    import dataclasses

    import torch

    import featureforge as ff
    from featureforge.dictionary import Dictionary
    from featureforge.roles import StepOutput


    class ThresholdDictionary(Dictionary):
        def __init__(self, d_in, d_dict, threshold):
            super().__init__(d_in, d_dict)
            self.threshold = threshold
            self.W_enc = torch.nn.Parameter(torch.randn(d_in, d_dict) / d_in**0.5)
            self.W_dec = torch.nn.Parameter(self.W_enc.data.T.clone())

        def encode_normalised(self, x):
            pre = x @ self.W_enc
            return pre * (pre > self.threshold)

        def decode_normalised(self, codes):
            return codes @ self.W_dec

        @property
        def decoder_directions(self):
            return self.W_dec


    @dataclasses.dataclass
    class ThresholdOptions:
        d_dict: int = 16
        """Latents."""
        threshold: float = 0.3
        """A latent is active where its pre-activation exceeds this."""


    class ThresholdTrainer(ff.DictionaryTrainer):
        name = "eval-test"
        description = "test-only thresholded linear dictionary"
        Options = ThresholdOptions

        def build(self, d_in):
            return ThresholdDictionary(d_in, self.options.d_dict, self.options.threshold)

        def loss(self, dictionary, batch, state):
            x = batch["acts"]
            z = dictionary.encode_normalised(x)
            x_hat = dictionary.decode_normalised(z)
            return StepOutput(loss=(x - x_hat).pow(2).sum(-1).mean(), x_hat=x_hat, active=(z != 0).any(0))


    @ff.hookimpl
    def featureforge_register_trainers(register):
        register(ThresholdTrainer)
    '''
)
SYNTH = {"d_in": 32, "n_features": 16, "mean_active": 3.0, "seed": 3}
ROWS, RPC = 8192, 1024


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    """A folder with the test plugin module and a dist-info declaring its entry point."""
    site = tmp_path_factory.mktemp("site")
    (site / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE)
    info = site / f"{PLUGIN_MODULE}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PLUGIN_MODULE}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[featureforge]\neval_test = {PLUGIN_MODULE}\n")
    return site


@pytest.fixture(scope="module")
def plugin(plugin_dir):
    """The test trainer registered in this process."""
    spec = importlib.util.spec_from_file_location(PLUGIN_MODULE, plugin_dir / f"{PLUGIN_MODULE}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    registry = get_registry()
    registry.register_plugin(module, "eval-test-plugin", "0.1")
    try:
        yield module
    finally:
        registry.unregister_plugin(module)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("stores") / "synth.zarr"
    return ff.cache("synthetic", SYNTH, store=str(path), rows=ROWS, rows_per_chunk=RPC, progress=False)


@pytest.fixture(scope="module")
def features(store) -> np.ndarray:
    return store.ground_truth()["features"]


def oracle(module, features: np.ndarray):
    """Decoder rows = true features, encoder = their pseudo-inverse thresholded at 0.3: codes ≈ true codes."""
    k, d = features.shape
    dictionary = module.ThresholdDictionary(d, k, 0.3)
    with torch.no_grad():
        f = torch.from_numpy(features).double()
        dictionary.W_dec.copy_(f.float())
        dictionary.W_enc.copy_(torch.linalg.pinv(f).float())
    return dictionary.eval()


def random_dictionary(module, d_in: int, d_dict: int):
    gen = torch.Generator().manual_seed(0)
    dictionary = module.ThresholdDictionary(d_in, d_dict, 0.0)
    with torch.no_grad():
        w = torch.randn(d_dict, d_in, generator=gen)
        w /= w.norm(dim=1, keepdim=True)
        dictionary.W_dec.copy_(w)
        dictionary.W_enc.copy_(w.T)
    return dictionary.eval()


def save_run(dictionary, run: Path, **config) -> Path:
    options = {"d_dict": dictionary.d_dict, "threshold": dictionary.threshold}
    dictionary.save(run, {"trainer": "eval-test", "options": options, **config})
    return run


# ------------------------------------------------------------------------------------------------
# metric functions, hand-computed
# ------------------------------------------------------------------------------------------------
def test_fvu_mse_and_explained_variance_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # mean (2, 3): Σ‖x − x̄‖² = 4
    off = x + torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # Σ‖x − x̂‖² = 1
    assert ev.fvu(x, x) == 0.0
    assert ev.fvu(x, x.mean(0).expand_as(x)) == pytest.approx(1.0)
    assert ev.fvu(x, off) == pytest.approx(0.25)
    assert ev.explained_variance(x, off) == pytest.approx(0.75)
    assert ev.mse(x, off) == pytest.approx(0.25)
    assert ev.fvu(x, torch.zeros_like(x)) == pytest.approx((1 + 4 + 9 + 16) / 4)
    assert math.isnan(ev.fvu(torch.ones(3, 2), torch.zeros(3, 2)))


def test_l0_dead_dense_and_density_histogram_by_hand():
    codes = torch.tensor([[1.0, 0.0, 2.0, -0.5], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    assert ev.l0(codes) == pytest.approx((3 + 1 + 1 + 1) / 4)
    counts = ev.firing_counts(codes)
    assert counts.tolist() == [1, 0, 4, 1]
    assert ev.dead_latents(counts).tolist() == [False, True, False, False]
    assert ev.dense_latents(counts, 4, threshold=0.3).tolist() == [False, False, True, False]
    assert ev.dense_latents(counts, 4, threshold=0.25).tolist() == [False, False, True, False]  # strictly more than
    hist = ev.density_histogram(counts, 4, bins=4)
    assert hist["dead"] == 1 and sum(hist["counts"]) == 3
    assert hist["bin_edges"][0] == pytest.approx(math.log10(1 / 4)) and hist["bin_edges"][-1] == 0.0
    assert hist["counts"][0] == 2 and hist["counts"][-1] == 1  # two latents at 1/4, one at 4/4


def test_mmcs_and_recovered_by_hand():
    true = torch.eye(3)[:2]  # e1, e2
    decoder = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])  # e1 (scaled), (e2+e3)/√2, e3
    assert ev.mmcs(true, decoder) == pytest.approx((1 + 2**-0.5) / 2)
    assert ev.recovered_fraction(true, decoder, threshold=0.9) == pytest.approx(0.5)
    assert ev.recovered_fraction(true, decoder, match=np.array([2, 1]), threshold=0.5) == pytest.approx(0.5)
    assert ev.recovered_fraction(true, decoder, match=np.array([0, -1]), threshold=0.5) == pytest.approx(0.5)


def test_pearson_hungarian_mcc_and_f1_by_hand():
    t = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]])
    # Latent 0 is noise-free copy of feature 1 (scaled), latent 2 of feature 0, latent 1 is constant.
    z = torch.stack([3 * t[:, 1], torch.ones(4), 0.5 * t[:, 0]], dim=1)
    corr = ev.pearson_matrix(t, z)
    assert corr[0, 2] == pytest.approx(1.0) and corr[1, 0] == pytest.approx(1.0)
    assert corr[:, 1].abs().max() == 0.0  # constant column: defined as 0
    value, match = ev.mcc(t, z)
    assert value == pytest.approx(1.0) and match.tolist() == [2, 0]
    value, match = ev.mcc(t, -z)  # sign does not matter: |ρ|
    assert value == pytest.approx(1.0)
    rows, cols = ev.hungarian_match(torch.tensor([[0.9, 0.8], [0.85, 0.1]]))  # greedy would take 0.9 + 0.1
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    assert ev.firing_f1(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 1, 0])) == pytest.approx(0.5)
    assert ev.firing_f1(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 1, 0, 0])) == pytest.approx(1.0)
    assert math.isnan(ev.firing_f1(torch.zeros(4), torch.zeros(4)))


def test_streaming_accumulators_match_whole_tensor_functions():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 8, generator=gen) * 3 + 100.0  # a large offset must not cancel the variance
    x_hat = x + 0.5 * torch.randn(1000, 8, generator=gen)
    codes = torch.relu(torch.randn(1000, 12, generator=gen) - 1.0)
    codes[:, 3] = 0
    stats = accumulators.ReconstructionStats(8, 12)
    for i in range(0, 1000, 300):
        stats.update(x[i : i + 300], x_hat[i : i + 300], codes[i : i + 300])
    got = stats.result(dense_threshold=0.1)
    assert got["fvu"] == pytest.approx(ev.fvu(x, x_hat), rel=1e-9)
    assert got["mse"] == pytest.approx(ev.mse(x, x_hat), rel=1e-9)
    assert got["l0"] == pytest.approx(ev.l0(codes))
    assert got["dead"] == 1 and got["dead_fraction"] == pytest.approx(1 / 12)
    assert got["dense"] == int(ev.dense_latents(ev.firing_counts(codes), 1000, 0.1).sum())

    t = torch.relu(torch.randn(1000, 5, generator=gen))
    match_stats = accumulators.CodeMatchStats(5, 12)
    for i in range(0, 1000, 300):
        match_stats.update(t[i : i + 300], codes[i : i + 300])
    assert torch.allclose(match_stats.correlation(), ev.pearson_matrix(t, codes), atol=1e-6)  # float32 batch matmuls
    match, _ = match_stats.match()
    f1 = match_stats.f1(match)
    for i, j in enumerate(match):
        assert f1[i] == pytest.approx(ev.firing_f1(t[:, i] > 0, codes[:, j] != 0))


# ------------------------------------------------------------------------------------------------
# evaluators through the API
# ------------------------------------------------------------------------------------------------
def test_oracle_dictionary_recovers_the_truth_and_a_random_one_does_not(plugin, store, features, tmp_path):
    good = ff.evaluate(save_run(oracle(plugin, features), tmp_path / "oracle"), store=store.url)
    bad = ff.evaluate(save_run(random_dictionary(plugin, 32, 16), tmp_path / "random"), store=store.url)
    g, b = good["evaluators"]["ground-truth"]["metrics"], bad["evaluators"]["ground-truth"]["metrics"]
    assert g["mmcs"] > 0.999 and g["recovered"] == 1.0 and g["recovered_best"] == 1.0
    assert g["mcc"] > 0.98 and g["f1_mean"] > 0.98
    assert b["mmcs"] < 0.8 and b["recovered"] < 0.2 and b["mcc"] < 0.8 and b["f1_mean"] < 0.8
    assert g["true_features"] == 16 and g["rows"] == ROWS
    gr, br = good["evaluators"]["reconstruction"]["metrics"], bad["evaluators"]["reconstruction"]["metrics"]
    assert gr["fvu"] < 0.01 and gr["explained_variance"] > 0.99
    assert br["fvu"] > 0.2
    assert gr["l0"] == pytest.approx(3.0, rel=0.1)  # the synthetic source's mean_active


def test_ground_truth_codes_follow_global_row_indices(plugin, store, features, tmp_path):
    """Held-out chunks 6 and 7: true codes must be regenerated for rows 6144.., not 0.."""
    run = save_run(oracle(plugin, features), tmp_path / "run",
                   store={"url": store.url, "source": store.source}, holdout={"chunks": [6, 7]})
    report = ff.evaluate(run, store=store.url, evaluators=["ground-truth"])
    assert report["eval_rows"] == {"rows": 2 * RPC, "selection": "holdout", "chunks": [6, 7]}
    assert report["evaluators"]["ground-truth"]["metrics"]["mcc"] > 0.98
    # The same rows read directly agree with the source's rows 6144..8192.
    src = make_source("synthetic", SYNTH)
    np.testing.assert_allclose(store.read(6 * RPC, 8 * RPC), src.rows(6 * RPC, 8 * RPC)["acts"], rtol=1e-6)


def test_report_json_and_plots_are_written(plugin, store, features, tmp_path):
    run = save_run(oracle(plugin, features), tmp_path / "run")
    report = ff.evaluate(run, store=store.url, rows=3000)
    on_disk = json.loads((run / "report.json").read_text())
    assert on_disk == report
    assert {"run", "store", "eval_rows", "evaluators", "d_in", "d_dict", "trainer"} <= set(report)
    assert report["eval_rows"]["selection"] == "first_rows" and report["eval_rows"]["rows"] == 3000
    assert set(report["evaluators"]) == {"reconstruction", "ground-truth"}
    rec = report["evaluators"]["reconstruction"]
    assert {"fvu", "explained_variance", "mse", "l0", "dead", "dead_fraction", "dense", "dense_fraction", "density_histogram"} <= set(rec["metrics"])
    gt = report["evaluators"]["ground-truth"]["metrics"]
    assert {"mmcs", "mcc", "recovered", "f1_mean", "f1_quantiles", "f1_histogram"} <= set(gt)
    for result in report["evaluators"].values():
        for path in result["artifacts"].values():
            png = run / path
            assert png.parent == run / "plots" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trained_run_is_evaluated_on_its_held_out_chunks(plugin, store, tmp_path):
    [run] = ff.train("eval-test", {"d_dict": 16}, store=store.url, out=str(tmp_path / "run"), batch_size=256, epochs=1,
                     holdout_rows=2048, progress=False)
    held = json.loads((run / "config.json").read_text())["holdout"]["chunks"]
    report = ff.evaluate(run, store=store.url, evaluators=["reconstruction"])
    assert report["eval_rows"]["selection"] == "holdout" and report["eval_rows"]["chunks"] == held
    auto = ff.evaluate(run, store=store.url, evaluators=["reconstruction"], device="auto")  # the loop's default, one rule
    assert auto["evaluators"]["reconstruction"]["metrics"]["fvu"] == report["evaluators"]["reconstruction"]["metrics"]["fvu"]
    other = ff.cache("synthetic", {**SYNTH, "seed": 4}, store=str(tmp_path / "other.zarr"), rows=2048, rows_per_chunk=RPC, progress=False)
    report = ff.evaluate(run, store=other.url, evaluators=["reconstruction"])
    assert report["eval_rows"]["selection"] == "first_rows" and report["eval_rows"]["rows"] == 2048


def test_same_store_compares_url_then_source_and_layout(store):
    source = store.source
    assert evalrows.same_store({"store": {"url": store.url, "source": source}}, store)
    assert evalrows.same_store({"store": store.url}, store)
    # Moved or given relative to another folder: the source and recorded facts decide.
    assert evalrows.same_store({"store": {"url": "/elsewhere/x.zarr", "source": source, "rows": ROWS, "d_in": 32}}, store)
    assert not evalrows.same_store({"store": {"url": "/elsewhere/x.zarr", "source": source, "rows": ROWS + 1}}, store)
    other = {**source, "options": {**source["options"], "seed": 99}}
    assert not evalrows.same_store({"store": {"url": store.url, "source": other}}, store)  # overwritten with other data
    assert not evalrows.same_store({"store": {"url": "/elsewhere/x.zarr"}}, store)
    assert not evalrows.same_store({}, store)


def test_bad_inputs_raise_one_line_errors(plugin, store, features, tmp_path):
    run = save_run(oracle(plugin, features), tmp_path / "run")
    wide = ff.cache("synthetic", {**SYNTH, "d_in": 48}, store=str(tmp_path / "wide.zarr"), rows=1024, progress=False)
    with pytest.raises(ff.BadInputError, match=r"d_in=32 .* d_in=48"):
        ff.evaluate(run, store=wide.url)
    acts = np.random.default_rng(0).standard_normal((1024, 32)).astype(np.float32)
    np.save(tmp_path / "acts.npy", acts)
    plain = ff.cache("array", {"path": str(tmp_path / "acts.npy")}, store=str(tmp_path / "plain.zarr"), progress=False)
    with pytest.raises(ff.BadInputError, match="has no ground truth"):
        ff.evaluate(run, store=plain.url, evaluators=["ground-truth"])
    report = ff.evaluate(run, store=plain.url)  # default: only the applicable evaluators
    assert set(report["evaluators"]) == {"reconstruction"}
    with pytest.raises(ff.PluginError, match="unknown evaluator 'nope'"):
        ff.evaluate(run, store=store.url, evaluators=["nope"])


# ------------------------------------------------------------------------------------------------
# the command line, as a subprocess, with the trainer registered through a real entry point
# ------------------------------------------------------------------------------------------------
def _cli(args, plugin_dir, cwd):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_dir), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["FEATUREFORGE_PLUGINS"] = PLUGIN_MODULE  # only this entry point: other installed plugins cannot add noise
    env.pop("FEATUREFORGE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "featureforge.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _error_line(proc) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def cli_setup(plugin_dir, tmp_path_factory):
    """A store written by `featureforge cache --source synthetic` and an oracle run saved beside it."""
    root = tmp_path_factory.mktemp("cli")
    options = [arg for key, value in SYNTH.items() for arg in ("-o", f"{key}={value}")]
    proc = _cli(["cache", "--source", "synthetic", *options, "--store", "synth.zarr", "--rows", "4096", "--rows-per-chunk", "1024"], plugin_dir, root)
    assert proc.returncode == 0, proc.stderr
    spec = importlib.util.spec_from_file_location(PLUGIN_MODULE + "_cli", plugin_dir / f"{PLUGIN_MODULE}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    features = ff.open_store(root / "synth.zarr").ground_truth()["features"]
    save_run(oracle(module, features), root / "run")
    return root


def test_cli_evaluate_names_a_truncated_chunk_in_its_rows(plugin_dir, cli_setup, tmp_path):
    """A truncated chunk inside the eval rows: one line naming the chunk and the repair command."""
    shutil.copytree(cli_setup / "synth.zarr", tmp_path / "synth.zarr")
    shutil.copytree(cli_setup / "run", tmp_path / "run")
    chunk = tmp_path / "synth.zarr" / "acts" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:1000])
    line = _error_line(_cli(["evaluate", "run", "--store", "synth.zarr", "--evaluator", "reconstruction"], plugin_dir, tmp_path))
    assert "chunk acts/c/1/0 (rows 1024–2047) is truncated or damaged" in line and "--repair`" in line, line


def test_cli_evaluate_writes_report_and_plots(plugin_dir, cli_setup):
    proc = _cli(["evaluate", "run", "--store", "synth.zarr", "--json"], plugin_dir, cli_setup)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert "report.json" in proc.stderr  # where it wrote, off stdout so stdout stays one JSON object
    assert report == json.loads((cli_setup / "run" / "report.json").read_text())
    assert report["evaluators"]["ground-truth"]["metrics"]["mmcs"] > 0.999
    assert report["evaluators"]["ground-truth"]["metrics"]["recovered"] == 1.0
    assert (cli_setup / "run" / "plots" / "latent_density.png").stat().st_size > 1000
    assert (cli_setup / "run" / "plots" / "ground_truth.png").stat().st_size > 1000

    proc = _cli(["evaluate", "run", "--store", "synth.zarr", "--evaluator", "reconstruction", "--rows", "1000"], plugin_dir, cli_setup)
    assert proc.returncode == 0, proc.stderr
    assert "fvu" in proc.stdout and "1,000" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == f"Wrote {Path('run') / 'report.json'}"
    assert set(json.loads((cli_setup / "run" / "report.json").read_text())["evaluators"]) == {"reconstruction"}

    proc = _cli(["evaluate", "run", "--store", "synth.zarr", "--evaluator", "ground-truth", "-o", "reconstruction.bins=7", "--json"],
                plugin_dir, cli_setup)
    assert proc.returncode == 0, proc.stderr
    evaluators = json.loads(proc.stdout)["evaluators"]
    assert set(evaluators) == {"ground-truth", "reconstruction"}, "-o names its evaluator"
    assert evaluators["reconstruction"]["options"]["bins"] == 7
    assert len(evaluators["reconstruction"]["metrics"]["density_histogram"]["counts"]) == 7


def test_cli_evaluate_bad_input_is_one_error_line(plugin_dir, cli_setup):
    proc = _cli(["cache", "--source", "synthetic", "-o", "d_in=8", "--store", "narrow.zarr", "--rows", "512"], plugin_dir, cli_setup)
    assert proc.returncode == 0, proc.stderr
    line = _error_line(_cli(["evaluate", "run", "--store", "narrow.zarr"], plugin_dir, cli_setup))
    assert "d_in=32" in line and "d_in=8" in line

    np.save(cli_setup / "acts.npy", np.zeros((512, 32), dtype=np.float32) + np.arange(32, dtype=np.float32))
    proc = _cli(["cache", "--source", "array", "-o", "path=acts.npy", "--store", "plain.zarr"], plugin_dir, cli_setup)
    assert proc.returncode == 0, proc.stderr
    line = _error_line(_cli(["evaluate", "run", "--store", "plain.zarr", "--evaluator", "ground-truth"], plugin_dir, cli_setup))
    assert "no ground truth" in line

    line = _error_line(_cli(["evaluate", "run", "--store", "synth.zarr", "--evaluator", "nope"], plugin_dir, cli_setup))
    assert "unknown evaluator 'nope'" in line and "reconstruction" in line
    line = _error_line(_cli(["evaluate", "run", "--store", "synth.zarr", "-o", "bins=7"], plugin_dir, cli_setup))
    assert "EVALUATOR.KEY=VALUE" in line


# ------------------------------------------------------------------------------------------------
# the evaluation context
# ------------------------------------------------------------------------------------------------
class _Recorder(ff.Evaluator):
    """Test evaluator: keeps the context it was given and what it saw through it."""

    name = "context-recorder"
    seen: list = []

    def evaluate(self, dictionary, context):
        _Recorder.seen.append((context, context.eval_rows, context.source))
        return ff.EvaluationResult({"rows": context.eval_rows.rows})


class _RecorderPlugin:
    @staticmethod
    @ff.hookimpl
    def featureforge_register_evaluators(register):
        register(_Recorder)


@pytest.fixture
def recorder():
    registry = get_registry()
    registry.register_plugin(_RecorderPlugin, "context-recorder-plugin", "0")
    _Recorder.seen = []
    try:
        yield _Recorder
    finally:
        registry.unregister_plugin(_RecorderPlugin)


def test_evaluate_fills_every_field_of_the_context(plugin, recorder, store, features, tmp_path):
    run = save_run(oracle(plugin, features), tmp_path / "run",
                   store={"url": store.url, "source": store.source}, holdout={"chunks": [7]})
    ff.evaluate(run, store.url, ["context-recorder", "reconstruction"], device="cpu", progress=False)
    [(context, rows, source)] = recorder.seen
    assert context.store.url == store.url and context.run_dir == run and context.out_dir == run / "plots"
    assert context.run_config["trainer"] == "eval-test" and context.run_config["holdout"] == {"chunks": [7]}
    assert context.device == "cpu" and context.progress is False
    assert rows.selection == "holdout" and rows.chunks == [7]
    assert source.name == "synthetic" and source.options_dict() == store.source["options"]
    assert context.given_source is None


def test_the_store_source_is_rebuilt_once_and_shared_with_derived_contexts(store, tmp_path):
    context = ff.EvaluationContext(store, tmp_path)
    first = context.source
    assert context.source is first
    derived = context.derive(out_dir=tmp_path / "member", run_dir=tmp_path / "member")
    assert derived.source is first and derived.out_dir == tmp_path / "member"
    assert context.rebuilt_source(seed=9) is not first and context.rebuilt_source(seed=9).options.seed == 9
    given = make_source("synthetic", SYNTH)
    assert ff.EvaluationContext(store, tmp_path, source=given).source is given


def test_a_store_whose_source_is_not_installed_gives_one_line(store, tmp_path):
    import shutil

    import zarr

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store.url if "://" not in store.url else store.url.split("://", 1)[1], copy)
    group = zarr.open_group(str(copy), mode="r+")
    group.attrs["source"] = {**dict(group.attrs["source"]), "name": "no-such-source"}
    context = ff.EvaluationContext(ff.open_store(str(copy)), tmp_path)
    with pytest.raises(ff.BadInputError, match="made by source 'no-such-source', which is not installed") as info:
        context.source
    assert "\n" not in str(info.value)
    # Evaluators that need no source still work on it.
    assert context.eval_rows.rows > 0


def test_the_old_extra_mapping_still_fills_the_typed_fields(store, tmp_path):
    context = ff.EvaluationContext(store, tmp_path, extra={"progress": False, "device": "cpu", "run_config": {"trainer": "x"}})
    assert context.progress is False and context.device == "cpu" and context.run_config == {"trainer": "x"}
    with pytest.raises(TypeError, match="unknown extra keys"):
        ff.EvaluationContext(store, tmp_path, extra={"nope": 1})


def test_gradient_selection_is_a_declared_capability_of_the_dictionary(plugin):
    plain = plugin.ThresholdDictionary(4, 8, 0.0)
    assert plain.uses_gradients is False
    with pytest.raises(NotImplementedError, match="cannot select latents with gradients"):
        plain.reconstruct_with_grads(torch.zeros(2, 4), torch.zeros(2, 4))

    class WithGrads(plugin.ThresholdDictionary):
        def reconstruct_with_grads(self, x, grads):
            return x - grads

    assert WithGrads(4, 8, 0.0).uses_gradients is True


# ------------------------------------------------------------------------------------------------
# report.json across calls, and sweeps
# ------------------------------------------------------------------------------------------------
def test_report_keeps_earlier_evaluators_of_the_same_weights_and_rows(plugin, store, features, tmp_path):
    run = save_run(oracle(plugin, features), tmp_path / "run")
    ff.evaluate(run, store.url, ["ground-truth"], rows=2048)
    report = ff.evaluate(run, store.url, ["reconstruction"], rows=2048)
    assert set(report["evaluators"]) == {"ground-truth", "reconstruction"}, "evaluating reconstruction lost ground-truth"
    assert json.loads((run / "report.json").read_text()) == report
    # Other rows, or retrained weights: the earlier results no longer describe this evaluation.
    assert set(ff.evaluate(run, store.url, ["reconstruction"], rows=1024)["evaluators"]) == {"reconstruction"}
    ff.evaluate(run, store.url, ["ground-truth"], rows=1024)
    save_run(random_dictionary(plugin, 32, 16), run)
    assert set(ff.evaluate(run, store.url, ["reconstruction"], rows=1024)["evaluators"]) == {"reconstruction"}


def test_pareto_front_keeps_the_members_no_other_beats_on_both_axes():
    from featureforge.evaluation import pareto_front

    points = [(4.0, 0.5), (8.0, 0.3), (8.0, 0.6), (16.0, 0.35), (32.0, 0.1), (None, 0.0)]
    assert pareto_front(points) == [0, 1, 4]
    assert pareto_front([(4.0, 0.5), (8.0, 0.9), (16.0, 0.7)], maximise_y=True) == [0, 1]


def test_cli_evaluate_a_sweep_folder_writes_every_report_and_the_summary(plugin_dir, cli_setup):
    proc = _cli(["train", "--trainer", "eval-test", "-o", "d_dict=8,16,32", "--store", "synth.zarr", "--out", "sweep",
                 "--batch-size", "256"], plugin_dir, cli_setup)
    assert proc.returncode == 0, proc.stderr
    proc = _cli(["evaluate", "sweep", "--store", "synth.zarr", "--evaluator", "reconstruction"], plugin_dir, cli_setup)
    assert proc.returncode == 0, proc.stderr
    sweep = cli_setup / "sweep"
    summary = json.loads((sweep / "sweep.json").read_text())
    members = sorted(p.name for p in sweep.iterdir() if (p / "config.json").exists())
    assert [m["member"] for m in summary["members"]] == members and len(members) == 3
    for row in summary["members"]:
        report = json.loads((sweep / row["report"]).read_text())
        assert row["fvu"] == report["evaluators"]["reconstruction"]["metrics"]["fvu"] and row["l0"] > 0
        assert row["options"]["d_dict"] in (8, 16, 32)
    assert summary["pareto_fvu"] and set(summary["pareto_fvu"]) <= set(members)
    assert (sweep / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("sweep sweep on ") and all(any(m in line for line in lines) for m in members)
    assert lines[-1] == f"Wrote {Path('sweep') / 'sweep.json'}, {Path('sweep') / 'sweep.png'}"

    proc = _cli(["evaluate", "sweep", "--store", "synth.zarr", "--evaluator", "reconstruction", "--json"], plugin_dir, cli_setup)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["members"] == json.loads((sweep / "sweep.json").read_text())["members"]
