"""Streamed training (issue 24): the streamed reader's mixing and exact cursor, the run it makes
(held-out store, recorded source), --resume from the recorded row, and the refusals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import featureforge as ff
from featureforge.errors import BadInputError, FeatureforgeError, OptionError
from featureforge.training._stream import HeldOutSlice, StreamedReader, StreamPlan

sys.path.insert(0, str(Path(__file__).parent))
from test_training import _Plugin  # noqa: E402  (the in-test trainer "tiny-topk")
from writeshuffle_source import Sequences  # noqa: E402

SYNTH = {"d_in": 16, "n_features": 64, "mean_active": 3.0}
TRAINER = {"d_dict": 64, "k": 4}
TINY = "tiny-topk"


@pytest.fixture(scope="module", autouse=True)
def tiny_trainer():
    plugin = _Plugin()
    ff.get_registry().register_plugin(plugin, "test-plugin", "0")
    yield TINY
    ff.get_registry().unregister_plugin(plugin)


def _rows_of(batches):
    return np.concatenate([b["acts"][:, 0].numpy() for b in batches]).astype(np.int64)


def _plan(src, shards=1, held=256, buffer=1024):
    return StreamPlan.make(src, shards, held, buffer)


# -- the reader ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shards", [1, 2])
def test_streamed_reader_yields_each_training_row_once_and_never_a_held_out_one(shards):
    src = Sequences({"rows": 6000, "seq_len": 50, "batch_rows": 37})
    plan = _plan(src, shards)
    seen = []
    for shard in range(shards):
        reader = StreamedReader(plan, src, 100, rank=shard, world_size=shards, seed=3)
        seen.append(_rows_of(list(reader)))
        assert reader.epoch == 1 and reader.row == 0
    everything = np.concatenate(seen)
    assert len(set(everything.tolist())) == len(everything)  # disjoint shards, no row twice
    held = set(_rows_of([{"acts": torch.from_numpy(b["acts"])} for b in HeldOutSlice(src, plan).stream()]).tolist())
    assert len(held) == plan.heldout_rows and not held & set(everything.tolist())
    # all rows but the held-out ones and each shard's last partial batch
    assert 6000 - plan.heldout_rows - len(everything) < 100 * shards
    # rows are mixed: a batch spans many sequences, not two
    first = seen[0][:100]
    assert len(set((first // 50).tolist())) > 10


def test_streamed_reader_cursor_resumes_bit_exactly_mid_window():
    src = ff.get_registry().get("source", "synthetic")(SYNTH)
    plan = _plan(src, 1, held=512, buffer=1000)  # windows of 1000 rows: batches of 96 span two
    whole = StreamedReader(plan, src, 96, seed=1)
    it = iter(whole)
    batches = [next(it) for _ in range(25)]
    it.close()
    first = StreamedReader(plan, src, 96, seed=1)
    it = iter(first)
    for _ in range(13):
        next(it)
    cursor = json.loads(json.dumps(first.state_dict()))
    it.close()
    again = StreamedReader(plan, src, 96, seed=1)
    again.load_state_dict(cursor)
    it = iter(again)
    rest = [next(it) for _ in range(12)]
    it.close()
    for a, b in zip(batches[13:], rest):
        assert torch.equal(a["acts"], b["acts"])
    other = StreamedReader(plan, src, 96, seed=2, buffer_rows=2000)
    with pytest.raises(BadInputError, match="resume with the same settings"):
        other.load_state_dict(cursor)


def test_bigger_windows_mix_more_sequences_per_batch():
    src = Sequences({"rows": 20000, "seq_len": 100, "batch_rows": 100})
    distinct = {}
    for window in (512, 8192):
        reader = StreamedReader(_plan(src, 1, held=100, buffer=window), src, 256, seed=0, columns=("acts", "seq_ids"))
        distinct[window] = np.mean([len(set(b["seq_ids"].tolist())) for b in reader])
    assert distinct[512] < 10 and distinct[8192] > 60


# -- the run ---------------------------------------------------------------------------------------
def _train_streamed(out, **kw):
    settings = dict(rows=4096, batch_size=256, seed=0, lr=1e-3, holdout_rows=1024, buffer_rows=2048, progress=False,
                    log_every=4, checkpoint_every=1024)
    settings.update(kw)
    settings.setdefault("source_options", SYNTH)
    return ff.train(TINY, TRAINER, source="synthetic", out=out, **settings)


def test_a_streamed_run_records_its_source_holds_out_rows_and_evaluates(tmp_path):
    [run] = _train_streamed(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    stream = config["stream"]
    assert stream["source"] == "synthetic" and stream["options"]["d_in"] == 16 and stream["heldout_rows"] == 1024
    assert stream["heldout_store"] == "heldout" and config["status"] == "complete"
    held = ff.open_store(run / "heldout")
    assert held.rows == 1024
    src = ff.get_registry().get("source", "synthetic")(SYNTH)
    assert np.array_equal(held.read(0, 1024), src.rows(0, 1024)["acts"])  # source rows [0, H): never trained on
    assert config["normalisation"]["scale"] == pytest.approx(held.normalisation()["scale"])
    report = ff.evaluate(run)  # no store named: the run's held-out store
    assert report["eval_rows"]["selection"] == "holdout" and report["eval_rows"]["rows"] == 1024
    fvu = report["evaluators"]["reconstruction"]["metrics"]["fvu"]
    assert 0 < fvu < 1
    assert report["evaluators"]["ground-truth"]["metrics"]["mmcs"] > 0  # the synthetic source's true codes line up with the rows


def test_streamed_and_stored_training_see_the_same_rows_in_a_window_order(tmp_path):
    """With one window covering the training rows, a streamed run trains on exactly the rows a
    store of the same source holds after its held-out part: FVUs agree closely."""
    [streamed] = _train_streamed(tmp_path / "s", rows=8192)
    store = ff.cache("synthetic", SYNTH, store=tmp_path / "store", rows=1024 + 8192, rows_per_chunk=1024, progress=False)
    [stored] = ff.train(TINY, TRAINER, store=store, out=tmp_path / "c", rows=8192, batch_size=256, seed=0, lr=1e-3,
                        holdout_rows=1024, progress=False, log_every=4)
    a = ff.evaluate(streamed)["evaluators"]["reconstruction"]["metrics"]["fvu"]
    b = ff.evaluate(stored)["evaluators"]["reconstruction"]["metrics"]["fvu"]
    assert abs(a - b) < 0.05 * max(a, b)


class Crash(Exception):
    pass


@contextlib.contextmanager
def _crash_after_checkpoint(n):
    """The run raises right after writing its n-th checkpoint (the block must raise it)."""
    import featureforge.training._loop as loop

    real, calls = loop._Run._checkpoint, []

    def checkpoint_then_crash(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == n:
            raise Crash()

    loop._Run._checkpoint = checkpoint_then_crash
    try:
        with pytest.raises(Crash):
            yield
    finally:
        loop._Run._checkpoint = real


def test_resume_of_a_streamed_run_continues_from_the_recorded_row(tmp_path):
    [whole] = _train_streamed(tmp_path / "whole")
    with _crash_after_checkpoint(2):
        _train_streamed(tmp_path / "cut")
    [cut] = _train_streamed(tmp_path / "cut", resume=True)
    a, b = load_file(str(whole / "weights.safetensors")), load_file(str(cut / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_source_option_is_refused(tmp_path):
    _train_streamed(tmp_path / "run", rows=1024)
    with pytest.raises(FeatureforgeError, match="other settings"):
        ff.train(TINY, TRAINER, source="synthetic", source_options={**SYNTH, "seed": 5}, out=tmp_path / "run", rows=1024,
                 batch_size=256, lr=1e-3, holdout_rows=1024, buffer_rows=2048, progress=False, resume=True)


class _LiveFeed(Sequences):
    """A stream that cannot restart at a row (a live feed)."""

    seekable = False


def test_a_source_that_cannot_seek_trains_but_its_resume_is_refused_in_one_line(tmp_path):
    feed = _LiveFeed({"rows": 6000, "seq_len": 50})
    settings = dict(rows=2048, batch_size=256, lr=1e-3, holdout_rows=256, buffer_rows=1024, progress=False, checkpoint_every=512)
    ff.train(TINY, {"d_dict": 16, "k": 2}, source=feed, out=tmp_path / "run", **settings)
    (tmp_path / "run" / "config.json").unlink()  # as if killed before the end: only the checkpoint is left
    with pytest.raises(BadInputError, match="cannot restart at a row") as info:
        ff.train(TINY, {"d_dict": 16, "k": 2}, source=feed, out=tmp_path / "run", resume=True, **settings)
    assert "\n" not in str(info.value)


def test_train_needs_a_store_or_a_source_and_an_unbounded_source_needs_rows(tmp_path):
    with pytest.raises(OptionError, match="train needs store"):
        ff.train(TINY, TRAINER, out=tmp_path / "a")
    with pytest.raises(BadInputError, match="unbounded.*--rows"):
        ff.train(TINY, TRAINER, source="synthetic", source_options=SYNTH, out=tmp_path / "b", holdout_rows=256, progress=False)
    with pytest.raises(OptionError, match="held-out rows"):
        ff.train(TINY, TRAINER, source="synthetic", source_options=SYNTH, out=tmp_path / "c", rows=512, holdout_rows=0, progress=False)


# -- the command line, and kill -9 ------------------------------------------------------------------
def _cli_args(out, rows=24576):
    synth = [x for k, v in SYNTH.items() for x in ("-o", f"{k}={v}")]  # source keys given with -o: routed to the source
    return ["train", "--source", "synthetic", *synth, "--trainer", TINY, "-o", "d_dict=64", "-o", "k=4", "--rows", rows,
            "--batch-size", 256, "--lr", 1e-3, "--threads", 1, "-t", "holdout_rows=1024", "-t", "buffer_rows=2048",
            "-t", "checkpoint_every=2048", "--out", out]


CLI_SCRIPT = r"""
import sys
sys.path.insert(0, {tests!r})
from test_training import _Plugin
from featureforge.plugins import get_registry
from featureforge.cli import main
get_registry().register_plugin(_Plugin(), "test-plugin", "0")
sys.argv = ["featureforge", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_kill_9_during_a_streamed_run_then_resume_gives_the_uninterrupted_weights(tmp_path):
    from storehelpers import cli_env

    script = tmp_path / "cli.py"
    script.write_text(CLI_SCRIPT.format(tests=str(Path(__file__).parent)))

    def popen_cli(*args):
        return subprocess.Popen([sys.executable, str(script), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=cli_env())

    def run_cli(*args):
        proc = popen_cli(*args)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        return subprocess.CompletedProcess(args, 0, out, err)

    run_cli(*_cli_args(tmp_path / "whole"))
    cut = tmp_path / "cut"
    proc = popen_cli(*_cli_args(cut))
    deadline = time.time() + 120
    while not (cut / "checkpoint").exists():
        assert proc.poll() is None, f"training ended before it could be killed: {proc.communicate()}"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert json.loads((cut / "config.json").read_text())["status"] == "training"  # killed mid-run, not after the end
    resumed = run_cli(*_cli_args(cut), "--resume")
    assert f"Trained {TINY}" in resumed.stdout
    a, b = load_file(str(tmp_path / "whole" / "weights.safetensors")), load_file(str(cut / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((cut / "config.json").read_text())
    assert config["stream"]["source"] == "synthetic" and config["training_result"]["rows"] == 24576


# -- --tee -----------------------------------------------------------------------------------------
def _train_tee(out, tee, **kw):
    src = Sequences({"rows": 12000, "seq_len": 50, "batch_rows": 64})
    settings = dict(rows=4096, batch_size=256, lr=1e-3, holdout_rows=512, buffer_rows=1024, progress=False, checkpoint_every=1024, tee=str(tee))
    return ff.train(TINY, {"d_dict": 16, "k": 2}, source=src, out=out, **(settings | kw))


def test_tee_writes_the_streamed_training_rows_into_a_store_and_a_crash_resumes_it_exactly(tmp_path):
    _train_tee(tmp_path / "whole", tmp_path / "whole.zarr")
    whole = ff.open_store(tmp_path / "whole.zarr")
    assert whole.rows == 4096 and whole.info()["complete"]
    ids = whole.read(0, whole.rows)[:, 0].astype(np.int64)
    assert sorted(ids.tolist()) == list(range(512, 512 + 4096))  # exactly the rows trained on, none held out
    assert whole.source["name"] == "test-sequences"
    with _crash_after_checkpoint(3):
        _train_tee(tmp_path / "cut", tmp_path / "cut.zarr")
    _train_tee(tmp_path / "cut", tmp_path / "cut.zarr", resume=True)
    cut = ff.open_store(tmp_path / "cut.zarr")
    for column in ("acts", "seq_ids", "positions"):
        assert np.array_equal(cut.read(0, cut.rows, column), whole.read(0, whole.rows, column)), column
    w1, w2 = load_file(str(tmp_path / "whole" / "weights.safetensors")), load_file(str(tmp_path / "cut" / "weights.safetensors"))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_tee_is_refused_for_a_store_backed_run(tmp_path):
    store = ff.cache("synthetic", SYNTH, store=tmp_path / "s", rows=4096, rows_per_chunk=1024, progress=False)
    with pytest.raises(OptionError, match="--tee writes what a streamed run streams"):
        ff.train(TINY, TRAINER, store=store, out=tmp_path / "r", batch_size=256, tee=str(tmp_path / "t"), progress=False)


# -- torchrun ----------------------------------------------------------------------------------------
DDP_STREAM_SCRIPT = r"""
import sys, featureforge as ff
sys.path.insert(0, {tests!r})
from test_training import _Plugin
from featureforge.plugins import get_registry
get_registry().register_plugin(_Plugin(), "test-plugin", "0")
ff.train("tiny-topk", {{"d_dict": 64, "k": 4}}, source="synthetic", source_options={synth!r}, out={out!r}, rows=8192,
         batch_size=256, lr=1e-3, holdout_rows=1024, buffer_rows=2048, log_every=4, checkpoint_every=2048, progress=False, threads=1)
"""


@pytest.mark.slow
def test_torchrun_two_processes_streamed_match_one_process_reading_both_shards(tmp_path):
    """Each rank streams its own shard of the source (disjoint rows); gradients are all-reduced, so
    the run equals one process reading both shards (-t data_shards=2)."""
    script = tmp_path / "ddp_stream.py"
    script.write_text(DDP_STREAM_SCRIPT.format(tests=str(Path(__file__).parent), synth=SYNTH, out=str(tmp_path / "ddp")))
    env = {**os.environ, "FEATUREFORGE_PROGRESS": "0", "OMP_NUM_THREADS": "1", "FEATUREFORGE_PLUGINS": ""}
    with socket.socket() as free:  # a port no other job on this machine holds (fixed ports collide between test runs)
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port), str(script)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [single] = ff.train(TINY, TRAINER, source="synthetic", source_options=SYNTH, out=tmp_path / "single", rows=8192, batch_size=256,
                        lr=1e-3, holdout_rows=1024, buffer_rows=2048, log_every=4, checkpoint_every=2048, progress=False, threads=1,
                        data_shards=2)
    a, b = load_file(str(tmp_path / "ddp" / "weights.safetensors")), load_file(str(single / "weights.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["stream"]["shards"] == 2


def test_cli_routes_source_options_and_refuses_a_source_option_without_a_source(tmp_path):
    from click.testing import CliRunner

    from featureforge.cli import build_cli

    env = {"FEATUREFORGE_PROGRESS": "0"}
    args = ["train", "--source", "synthetic", "-s", "d_in=16", "-o", "n_features=64", "--trainer", TINY, "-o", "k=4",
            "--rows", "1024", "--batch-size", "256", "-t", "holdout_rows=256", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(build_cli(), args, env=env)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["stream"]["options"]["d_in"] == 16 and config["stream"]["options"]["n_features"] == 64
    assert config["options"]["k"] == 4 and config["d_in"] == 16
    bad = CliRunner().invoke(build_cli(), ["train", "--store", "x", "-s", "d_in=16", "--trainer", TINY, "--out", str(tmp_path / "b")], env=env)
    assert bad.exit_code != 0 and "-s/--source-option needs --source" in bad.output


# -- several sites from one pass of the source ------------------------------------------------------
PLANTED = {**SYNTH, "transcoder": True}


def test_sites_all_streamed_trains_one_dictionary_per_site_from_one_pass_and_resumes_exactly(tmp_path):
    """A two-site source (the planted transcoder) streamed with ``sites="all"``: one member per site,
    each reading its own site's rows of the same source batches; the held-out store holds both sites;
    a crash and --resume give both members' uninterrupted weights."""
    runs = _train_streamed(tmp_path / "all", source_options=PLANTED, sites="all")
    assert [r.name for r in runs] == ["in", "out"]
    held = ff.open_store(tmp_path / "all" / "heldout")
    assert held.sites == ["in", "out"]
    src = ff.get_registry().get("source", "synthetic")(PLANTED)
    first = src.rows(0, 1024)
    assert np.array_equal(held.site("out").read(0, 1024), first["out"])  # the second site under its own name
    configs = [json.loads((r / "config.json").read_text()) for r in runs]
    assert [c["sites"] for c in configs] == [{"acts": "in"}, {"acts": "out"}]
    assert configs[1]["stream"]["heldout_store"] == "../heldout"
    a = ff.evaluate(runs[0])["evaluators"]["reconstruction"]["metrics"]["fvu"]
    b = ff.evaluate(runs[1])["evaluators"]["reconstruction"]["metrics"]["fvu"]
    assert 0 < a < 1 and 0 < b < 1
    # the out site alone, streamed: the same weights as its member of the one-pass run
    [alone] = _train_streamed(tmp_path / "alone", source_options=PLANTED, site="out")
    w1, w2 = load_file(str(alone / "weights.safetensors")), load_file(str(runs[1] / "weights.safetensors"))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    with _crash_after_checkpoint(2):
        _train_streamed(tmp_path / "cut", source_options=PLANTED, sites="all")
    resumed = _train_streamed(tmp_path / "cut", source_options=PLANTED, sites="all", resume=True)
    for whole, cut in zip(runs, resumed):
        x, y = load_file(str(whole / "weights.safetensors")), load_file(str(cut / "weights.safetensors"))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)

