"""Conformance tests for plugin authors: subclass a suite, name your plugin, get the tests.

::

    from featureforge.testing import SourceTests, TrainerTests

    class TestMySource(SourceTests):
        source = "my-source"
        options = {"d_in": 16}
        distribution = "my-plugin"        # optional: `featureforge plugins --json` must say it

    class TestMyTrainer(TrainerTests):
        trainer = "my-trainer"
        options = {"k": 4, "d_dict": 64}

Each suite runs the plugin through the public API exactly as a user would (real Zarr stores on
disk under pytest's ``tmp_path``, real training, saving, loading and export). Options that need
other fixtures (a model path, say) come from overriding the ``plugin_options`` fixture. The module
is also a pytest plugin (entry point ``featureforge`` in group ``pytest11``): ``ff_synthetic_store``
is available to every test suite where featureforge is installed, and ``synthetic_store``,
``fresh_state`` and ``train_steps`` build a store or run a few steps of the loop's own step contract
for a trainer's unit tests. Nothing heavy is imported until a test runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import pytest

def _registry() -> Any:
    """The plugin registry, imported when a test runs (the suites' own look-ups, not public API)."""
    from featureforge.plugins import get_registry

    return get_registry()


#: Small synthetic store the trainer and evaluator suites train and evaluate on.
SYNTHETIC_OPTIONS: dict[str, Any] = {"d_in": 16, "n_features": 48, "mean_active": 3.0, "seed": 0}


def _listed(kind: str, name: str, distribution: str | None) -> None:
    rows = [r for r in _registry().describe()["plugins"] if r["kind"] == kind and r["name"] == name]
    assert rows, f"{kind} {name!r} is not listed by `featureforge plugins --json`; check the entry point and its hook"
    if distribution:
        assert rows[0]["distribution"] == distribution, f"{kind} {name!r} is registered by {rows[0]['distribution']}, not {distribution}"
    json.dumps(rows[0])


def synthetic_store(path: str | Path, rows: int = 16384, **options: Any) -> Any:
    """A real synthetic store on disk (with ground truth) in eight or more chunks; options of ``synthetic``."""
    import featureforge

    return featureforge.cache("synthetic", {**SYNTHETIC_OPTIONS, **options}, store=str(path), rows=rows,
                              rows_per_chunk=max(rows // 8, 256), progress=False)


def fresh_state(d_dict: int, rows_since_fired: int = 0, **fields: Any) -> Any:
    """A ``TrainState`` at step 0 in which every latent last fired ``rows_since_fired`` rows ago."""
    from featureforge.training import fresh_state as _fresh_state

    return _fresh_state(d_dict, rows_since_fired, **fields)


def train_steps(trainer: Any, dictionary: Any, batches: Any, lr: float | None = None, state: Any = None) -> tuple[Any, Any]:
    """Train ``dictionary`` on ``batches`` with the loop's own step contract and Adam.

    A batch is a tensor of rows (the ``acts`` role) or a mapping role -> rows (``{"acts": x,
    "target": y}`` for a transcoder, ``{"sites": [n, S, d]}`` for a crosscoder), as the loop
    passes them. Returns the last ``StepOutput`` and the ``TrainState``: for trainer tests that
    need a few steps without a store (the whole loop is ``featureforge.train``).
    """
    import torch

    from featureforge.training import apply_update, mark_fired

    optimizer = torch.optim.Adam(dictionary.parameters(), lr=lr or trainer.learning_rate(dictionary))
    state = state or fresh_state(dictionary.d_dict)
    out = None
    for x in batches:
        batch = dict(x) if isinstance(x, dict) else {"acts": x}
        n = len(next(iter(batch.values())))
        out = trainer.loss(dictionary, batch, state)
        out.loss.backward()
        apply_update(trainer, dictionary, optimizer, state)
        state.step += 1
        state.rows_seen += n
        mark_fired(state, [out.active], n)
    return out, state


def planted_roles(rows: int, d: int = 16, n_features: int = 48, mean_active: float = 3.0, noise: float = 0.01,
                  seed: int = 0) -> dict[str, Any]:
    """Rows of two sites from one planted sparse code (numpy, float32), scaled as the loop scales
    training rows (mean squared norm ``d``): ``in = codes @ F_in + noise``, ``out = codes @ F_out
    + noise``, so ``out`` is a sparse map of ``in`` (what a transcoder recovers, the synthetic
    source's transcoder truth of issue #23 written in memory).

    Returns ``acts`` (the ``in`` rows), ``target`` (``out``), ``sites`` (both stacked, [n, 2, d]),
    ``codes`` and the unit-norm feature directions ``F_in``, ``F_out`` [n_features, d].
    """
    import numpy as np

    rng = np.random.default_rng(seed)

    def directions() -> Any:
        f = rng.standard_normal((n_features, d))
        return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)

    f_in, f_out = directions(), directions()
    fires = rng.random((rows, n_features)) < mean_active / n_features
    codes = (fires * rng.exponential(1.0, (rows, n_features))).astype(np.float32)
    x = codes @ f_in + noise * rng.standard_normal((rows, d)).astype(np.float32)
    y = codes @ f_out + noise * rng.standard_normal((rows, d)).astype(np.float32)
    x *= np.sqrt(d / np.mean(np.sum(x * x, axis=1)))
    y *= np.sqrt(d / np.mean(np.sum(y * y, axis=1)))
    x, y = x.astype(np.float32), y.astype(np.float32)
    return {"acts": x, "target": y, "sites": np.stack([x, y], axis=1), "codes": codes, "F_in": f_in, "F_out": f_out}


@pytest.fixture(scope="session")
def ff_synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A 16k-row synthetic store (d_in 16) with ground truth, shared by a whole test session."""
    return synthetic_store(tmp_path_factory.mktemp("ff-synthetic") / "store.zarr")


class _Suite:
    distribution: ClassVar[str | None] = None
    options: ClassVar[dict[str, Any]] = {}

    @pytest.fixture
    def plugin_options(self) -> dict[str, Any]:
        """The options every test of the suite uses; override to build them from other fixtures."""
        return dict(self.options)


class SourceTests(_Suite):
    """An activation source: listed, rows of the declared shape and columns, deterministic
    row ranges (random-access sources), JSON provenance, a cache round trip, unknown options
    refused, and (sources declaring ``can_splice``) a live model that replaces its hook point."""

    source: ClassVar[str] = ""
    #: Rows read by each test (keep small: the source may run a model).
    rows: ClassVar[int] = 64

    def _make(self, options: dict[str, Any]) -> Any:
        return _registry().get("source", self.source)(options)

    def test_listed_by_plugins(self) -> None:
        _listed("source", self.source, self.distribution)

    def test_rows_have_the_declared_width_and_columns(self, plugin_options: dict[str, Any]) -> None:
        import numpy as np

        src = self._make(plugin_options)
        batch = next(iter(src.stream())) if not src.random_access else src.rows(0, self.rows)
        acts = np.asarray(batch["acts"])
        assert acts.ndim == 2 and acts.shape[1] == src.d_in, f"acts {acts.shape} do not have d_in={src.d_in} columns"
        assert np.isfinite(acts).all(), "acts hold NaN or inf"
        for column in src.columns:
            assert column in batch and len(batch[column]) == len(acts), f"declared column {column!r} missing or of another length"

    def test_row_ranges_are_deterministic(self, plugin_options: dict[str, Any]) -> None:
        import numpy as np

        src = self._make(plugin_options)
        if not src.random_access:
            pytest.skip(f"source {self.source!r} is a stream (no random access)")
        n = self.rows
        whole = src.rows(0, n)
        parts = [self._make(plugin_options).rows(0, n // 3), self._make(plugin_options).rows(n // 3, n)]
        for key, value in whole.items():
            np.testing.assert_array_equal(np.asarray(value), np.concatenate([np.asarray(p[key]) for p in parts]))

    def test_provenance_is_json(self, plugin_options: dict[str, Any]) -> None:
        provenance = self._make(plugin_options).provenance()
        assert isinstance(provenance, dict), f"provenance() returned {type(provenance).__name__}, not a dict"
        assert json.loads(json.dumps(provenance)) == provenance, "provenance() does not survive a JSON round trip (tuples, numpy numbers or NaN in it?)"

    def test_cache_round_trip(self, plugin_options: dict[str, Any], tmp_path: Path) -> None:
        import numpy as np

        import featureforge

        n = self.rows
        store = featureforge.cache(self.source, plugin_options, store=str(tmp_path / "store.zarr"), rows=n,
                                   rows_per_chunk=max(n // 2, 1), progress=False)
        assert store.rows == n and store.d_in == self._make(plugin_options).d_in
        src = self._make(plugin_options)
        if src.random_access:
            np.testing.assert_allclose(store.read(0, n), np.asarray(src.rows(0, n)["acts"]), rtol=1e-6, atol=1e-6)

    def test_unknown_option_is_refused(self, plugin_options: dict[str, Any]) -> None:
        from featureforge import OptionError

        with pytest.raises(OptionError, match="no_such_option"):
            self._make({**plugin_options, "no_such_option": 1})

    def test_splice_yields_a_live_model_that_replaces_the_hook(self, plugin_options: dict[str, Any]) -> None:
        """Sources declaring ``can_splice``: the live model is a ``LiveModel``; without replacement
        (and with an identity dictionary) it is the plain forward; a replacement changes it."""
        import torch

        from featureforge.live import KINDS, LiveModel

        src = self._make(plugin_options)
        if not src.can_splice:
            pytest.skip(f"source {self.source!r} does not declare can_splice")
        seen: list[tuple[int, ...]] = []

        def zero(rows: Any) -> Any:
            seen.append(tuple(rows.shape))
            return torch.zeros_like(rows)

        with src.splice(_identity(src.d_in)) as live:
            assert isinstance(live, LiveModel), f"splice() yielded {type(live).__name__}, not a featureforge.live.LiveModel"
            assert live.kind in KINDS, f"live model kind {live.kind!r} is not one of {KINDS}"
            batch = next(iter(live.batches(max_sequences=2, batch_size=2)))
            ids, mask, keep = batch.input_ids.to(live.device), batch.attention_mask.to(live.device), batch.token_mask.to(live.device)
            clean = live(ids, mask, replace="none", token_mask=keep)
            identity = live(ids, mask, token_mask=keep)
            zeroed = live(ids, mask, replace=zero, token_mask=keep)
        with torch.no_grad():
            plain = live.forward(ids, mask)  # the splice has closed: its hook must be gone
        torch.testing.assert_close(clean, plain, msg="live(..., replace='none') differs from the model's plain forward")
        torch.testing.assert_close(identity, plain, rtol=1e-4, atol=1e-4, msg="splicing an identity dictionary changed the output")
        assert seen == [(int(keep.sum()), src.d_in)], f"the replacement saw rows {seen}, not the {int(keep.sum())} kept rows of width {src.d_in}"
        assert not torch.allclose(zeroed, plain, atol=1e-4), "zeroing the hook point's rows did not change the output"


def _identity(d_in: int) -> Any:
    """A dictionary whose reconstruction is its input (codes = rows)."""
    from featureforge.dictionary import Dictionary

    class _Identity(Dictionary):
        def encode_normalised(self, x: Any) -> Any:
            return x

        def decode_normalised(self, codes: Any) -> Any:
            return codes

    return _Identity(d_in, d_in)


class TrainerTests(_Suite):
    """A dictionary trainer: listed, trains through the generic loop to FVU < 1, deterministic
    for a seed, saves and loads, evaluates, and exports/imports every format it declares."""

    trainer: ClassVar[str] = ""
    #: Training rows (steps = rows / batch_size).
    train_rows: ClassVar[int] = 8192
    batch_size: ClassVar[int] = 512
    #: Extra synthetic-source options for the training store (``downstream=True`` for gradient trainers).
    store_options: ClassVar[dict[str, Any]] = {}
    #: Extra keyword arguments of ``featureforge.train`` (``lr``, ``warmup_steps``, ...).
    train_kwargs: ClassVar[dict[str, Any]] = {}

    @pytest.fixture(scope="class")
    @classmethod
    def training_store(cls, tmp_path_factory: pytest.TempPathFactory) -> Any:
        import featureforge

        columns = _registry().get("trainer", cls.trainer).columns
        extra = {"downstream": True, "important_features": 8} if "grads" in columns else {}
        return synthetic_store(tmp_path_factory.mktemp("ff-trainer") / "store.zarr", **extra, **cls.store_options)

    @pytest.fixture(scope="class")
    @classmethod
    def trained(cls, training_store: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return cls._train(training_store, tmp_path_factory.mktemp("ff-run") / "run", dict(cls.options))

    @classmethod
    def _train(cls, store: Any, out: Path, options: dict[str, Any]) -> Path:
        import featureforge

        [run] = featureforge.train(cls.trainer, options, store=store, out=str(out), rows=cls.train_rows,
                                   batch_size=cls.batch_size, threads=1, progress=False, **cls.train_kwargs)
        return Path(run)

    def test_listed_by_plugins(self) -> None:
        _listed("trainer", self.trainer, self.distribution)

    def test_training_lowers_fvu_and_the_run_loads(self, trained: Path, training_store: Any) -> None:
        import torch

        import featureforge

        from featureforge.run import read_metrics
        lines = read_metrics(trained)
        assert lines and all(math.isfinite(line["fvu"]) for line in lines)
        assert lines[-1]["fvu"] < 1.0, f"FVU {lines[-1]['fvu']} after {self.train_rows} rows: no better than the mean"
        d = featureforge.load(trained)
        x = torch.from_numpy(training_store.read(0, 32))
        x_hat, codes = d(x)
        assert x_hat.shape == x.shape and codes.shape == (32, d.d_dict)

    def test_same_seed_gives_the_same_weights(self, training_store: Any, trained: Path, tmp_path: Path) -> None:
        import torch

        import featureforge

        again = self._train(training_store, tmp_path / "again", dict(self.options))
        a, b = featureforge.load(trained).state_dict(), featureforge.load(again).state_dict()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{key} differs between two runs with one seed")

    def test_reconstruction_evaluation(self, trained: Path, training_store: Any) -> None:
        import featureforge

        report = featureforge.evaluate(trained, training_store, ["reconstruction"])
        metrics = report["evaluators"]["reconstruction"]["metrics"]
        assert 0 <= metrics["fvu"] < 1 and metrics["l0"] > 0

    def test_declared_formats_export_and_import(self, trained: Path, tmp_path: Path) -> None:
        import torch

        import featureforge

        cls = _registry().get("trainer", self.trainer)
        if not cls.formats:
            pytest.skip(f"trainer {self.trainer!r} declares no export formats")
        for fmt in cls.formats:
            out = tmp_path / fmt
            featureforge.export(trained, fmt, out)
            assert any(out.iterdir()), f"export to {fmt} wrote nothing"
            back = featureforge.import_run(out, fmt, tmp_path / f"{fmt}-run")
            x = torch.randn(8, featureforge.load(trained).d_in)
            torch.testing.assert_close(featureforge.load(back)(x).x_hat, featureforge.load(trained)(x).x_hat, rtol=1e-4, atol=1e-5)


#: Runs of :class:`RoleTrainerTests`, trained once per suite and options (the tests only read them).
_ROLE_RUNS: dict[tuple[str, str], Any] = {}


class RoleTrainerTests(_Suite):
    """A trainer whose batches carry other roles than ``acts`` (``target``: transcoders, ``sites``:
    crosscoders; contract of issue #23): listed, maps its roles to a store's sites, trains on
    planted rows of two sites (:func:`planted_roles`, through :func:`train_steps`) to FVU < 1,
    deterministic for a seed, saves and loads, exports and imports the formats it declares, and
    (once the installed core caches several sites) trains through ``featureforge.train``."""

    trainer: ClassVar[str] = ""
    #: Site names the suite's planted store has, in order (the source's ``in`` and ``out``).
    store_sites: ClassVar[tuple[str, ...]] = ("in", "out")
    steps: ClassVar[int] = 30
    batch_size: ClassVar[int] = 256
    lr: ClassVar[float | None] = None

    def _trainer(self, options: dict[str, Any]) -> Any:
        trainer = _registry().get("trainer", self.trainer)(options)
        trainer.sites_for(self.store_sites, None)
        return trainer

    def _batches(self, trainer: Any, held_out: bool = False) -> list[dict[str, Any]]:
        """The training batches of one planted map, or (``held_out``) one more batch of it."""
        import torch

        data = planted_roles((self.steps + 1) * self.batch_size)
        roles = [c for c in trainer.columns if c != "grads"]
        out = []
        for i in [self.steps] if held_out else range(self.steps):
            part = slice(i * self.batch_size, (i + 1) * self.batch_size)
            out.append({role: torch.from_numpy(data[role][part]) for role in roles})
        return out

    def _trained(self, options: dict[str, Any], fresh: bool = False) -> tuple[Any, Any, Any]:
        """(trainer, dictionary, last StepOutput) of a seeded run, trained once per suite and options."""
        key = (type(self).__qualname__, json.dumps(options, sort_keys=True, default=str))
        if fresh or key not in _ROLE_RUNS:
            run = self._train_once(options)
            if fresh:
                return run
            _ROLE_RUNS[key] = run
        return _ROLE_RUNS[key]

    def _train_once(self, options: dict[str, Any]) -> tuple[Any, Any, Any]:
        import torch

        trainer = self._trainer(options)
        torch.manual_seed(0)
        d = trainer.build(16)
        batches = self._batches(trainer)
        with torch.no_grad():
            trainer.initialize(d, batches[0])
        out, _ = train_steps(trainer, d, batches, lr=self.lr)
        return trainer, d.eval(), out

    def _reconstruct(self, d: Any, batch: dict[str, Any]) -> Any:
        return d(batch["sites"] if "sites" in batch else batch["acts"]).x_hat

    def test_listed_by_plugins(self) -> None:
        _listed("trainer", self.trainer, self.distribution)

    def test_roles_map_to_the_store_sites(self, plugin_options: dict[str, Any]) -> None:
        trainer = _registry().get("trainer", self.trainer)(plugin_options)
        roles = trainer.sites_for(self.store_sites, None)
        wanted = {c for c in trainer.columns if c != "grads"}
        assert set(roles) == wanted, f"sites_for gives roles {sorted(roles)}, the trainer's columns are {sorted(wanted)}"
        for role, sites in roles.items():
            for site in (sites,) if isinstance(sites, str) else sites:
                assert site in self.store_sites, f"role {role!r} names {site!r}, not a site of {self.store_sites}"

    def test_training_on_planted_rows_lowers_fvu(self, plugin_options: dict[str, Any]) -> None:
        import torch

        trainer, d, out = self._trained(plugin_options)
        batch = self._batches(trainer, held_out=True)[0]
        truth = batch["sites"] if "sites" in batch else batch["target"]
        with torch.no_grad():
            y_hat = self._reconstruct(d, batch)
        assert y_hat.shape == truth.shape, f"the dictionary gives {tuple(y_hat.shape)} for targets {tuple(truth.shape)}"
        flat, est = truth.reshape(len(truth), -1), y_hat.reshape(len(truth), -1)
        fvu = float((flat - est).pow(2).sum() / (flat - flat.mean(0)).pow(2).sum())
        assert fvu < 0.9, f"held-out FVU {fvu:.3f} after {self.steps} steps: the trainer does not learn the map"

    def test_same_seed_gives_the_same_weights(self, plugin_options: dict[str, Any]) -> None:
        import torch

        _, a, _ = self._trained(plugin_options)
        _, b, _ = self._trained(plugin_options, fresh=True)
        for key, value in a.state_dict().items():
            torch.testing.assert_close(value, b.state_dict()[key], rtol=0, atol=0, msg=f"{key} differs between two runs with one seed")

    def test_saves_and_loads(self, plugin_options: dict[str, Any], tmp_path: Path) -> None:
        import torch

        import featureforge

        trainer, d, _ = self._trained(plugin_options)
        d.save(tmp_path / "run", {"trainer": self.trainer, "options": trainer.options_dict(), "status": "complete"})
        back = featureforge.load(tmp_path / "run")
        batch = self._batches(trainer, held_out=True)[0]
        with torch.no_grad():
            torch.testing.assert_close(self._reconstruct(back, batch), self._reconstruct(d, batch), rtol=1e-5, atol=1e-5)

    def test_declared_formats_export_and_import(self, plugin_options: dict[str, Any], tmp_path: Path) -> None:
        import torch

        import featureforge
        from featureforge import OptionError

        trainer, d, _ = self._trained(plugin_options)
        if not trainer.formats:
            pytest.skip(f"trainer {self.trainer!r} declares no export formats")
        d.save(tmp_path / "run", {"trainer": self.trainer, "options": trainer.options_dict(), "status": "complete"})
        batch = self._batches(trainer, held_out=True)[0]
        done = []
        for fmt in trainer.formats:
            try:
                featureforge.export(tmp_path / "run", fmt, tmp_path / fmt)
            except OptionError:
                continue  # a format that cannot hold these options says so in one line
            back = featureforge.load(featureforge.import_run(tmp_path / fmt, fmt, tmp_path / f"{fmt}-run"))
            with torch.no_grad():
                torch.testing.assert_close(self._reconstruct(back, batch), self._reconstruct(d, batch), rtol=1e-4, atol=1e-4)
            done.append(fmt)
        assert done, f"no declared format ({', '.join(trainer.formats)}) could hold options {plugin_options}"

    def test_trains_through_the_loop_on_a_store_of_sites(self, plugin_options: dict[str, Any], tmp_path: Path) -> None:
        """Through ``featureforge.train`` on the synthetic source's planted transcoder store (two
        sites, ``in`` and ``out``), once the core caches several sites."""
        import featureforge

        synthetic = _registry().get("source", "synthetic")
        if "transcoder" not in getattr(synthetic.Options, "__dataclass_fields__", {}):
            pytest.skip("the installed synthetic source writes one site (multi-site stores of issue #23 not installed)")
        store = synthetic_store(tmp_path / "store.zarr", rows=8192, transcoder=True)
        [run] = featureforge.train(self.trainer, plugin_options, store=store, out=str(tmp_path / "run"), rows=8192,
                                   batch_size=512, threads=1, progress=False)
        report = featureforge.evaluate(run, store, ["reconstruction"])
        assert 0 <= report["evaluators"]["reconstruction"]["metrics"]["fvu"] < 1


class EvaluatorTests(_Suite):
    """An evaluator: listed, JSON metrics and existing artifacts for a real dictionary on a real
    store, unknown options refused."""

    evaluator: ClassVar[str] = ""

    @pytest.fixture
    def evaluation_store(self, ff_synthetic_store: Any) -> Any:
        """The store evaluated on; override for evaluators that need another (a model's, say)."""
        return ff_synthetic_store

    @pytest.fixture
    def dictionary(self, evaluation_store: Any) -> Any:
        """A dictionary to evaluate: by default PCA-like directions of the store, ReLU codes."""
        import torch

        from featureforge.dictionary import Dictionary

        x = torch.from_numpy(evaluation_store.read(0, 2048)).float()
        _, _, v = torch.linalg.svd(x - x.mean(0), full_matrices=False)

        class _Signed(Dictionary):
            def __init__(self) -> None:
                super().__init__(x.shape[1], 2 * v.shape[0])
                self.directions = torch.cat([v, -v])
                self.mean = x.mean(0)

            def encode_normalised(self, rows: Any) -> Any:
                return torch.relu((rows - self.mean) @ self.directions.T)

            def decode_normalised(self, codes: Any) -> Any:
                return codes @ self.directions + self.mean

            @property
            def decoder_directions(self) -> Any:
                return self.directions

        return _Signed()

    def _make(self, options: dict[str, Any]) -> Any:
        return _registry().get("evaluator", self.evaluator)(options)

    def test_listed_by_plugins(self) -> None:
        _listed("evaluator", self.evaluator, self.distribution)

    def test_metrics_are_json_and_artifacts_exist(self, plugin_options: dict[str, Any], evaluation_store: Any, dictionary: Any,
                                                  tmp_path: Path) -> None:
        from featureforge import EvaluationContext

        context = EvaluationContext(evaluation_store, tmp_path, progress=False)
        result = self._make(plugin_options).evaluate(dictionary, context)
        assert result.metrics, "no metrics"
        json.dumps(result.metrics, allow_nan=True)
        for name, path in result.artifacts.items():
            assert Path(path).exists(), f"artifact {name} ({path}) was not written"

    def test_unknown_option_is_refused(self, plugin_options: dict[str, Any]) -> None:
        from featureforge import OptionError

        with pytest.raises(OptionError, match="no_such_option"):
            self._make({**plugin_options, "no_such_option": 1})
