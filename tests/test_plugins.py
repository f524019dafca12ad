"""Plugin discovery, listing and problem reporting, through real distributions and the real CLI.

Third-party plugins here are real: ``docs/example-plugin`` is pip-installed into a temporary
folder, and small broken or clashing plugins are written as a module plus a hand-made
``.dist-info`` folder (METADATA + entry_points.txt), which ``importlib.metadata`` finds on
``PYTHONPATH`` exactly as it finds an installed wheel. The ``featureforge`` command line runs
as a subprocess, so every test sees plugin loading from a fresh interpreter.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

import featureforge
from featureforge.errors import OptionError, PluginError
from featureforge.plugins import PluginRegistry
from storehelpers import pip_install_target
from featureforge import EvaluationContext
from featureforge.roles import EvaluationResult, StepOutput

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "example-plugin"
CORE_VERSION = importlib.metadata.version("featureforge")


# -- helpers ------------------------------------------------------------------------------------
def run_cli(*args: str, path: tuple[Path, ...] = (), env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``featureforge ARGS`` in a fresh interpreter with ``path`` on PYTHONPATH."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FEATUREFORGE_") and k != "PYTHONPATH"}
    full_env["FEATUREFORGE_PROGRESS"] = "0"
    if path:
        full_env["PYTHONPATH"] = os.pathsep.join(str(p) for p in path)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "featureforge.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


def plugins_json(*, path: tuple[Path, ...] = (), env: dict[str, str] | None = None) -> tuple[dict, str]:
    result = run_cli("plugins", "--json", path=path, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def find(rows: list[dict], name: str, kind: str = "source") -> dict | None:
    matches = [r for r in rows if r["name"] == name and r["kind"] == kind]
    assert len(matches) <= 1, matches
    return matches[0] if matches else None


def stderr_lines_naming(stderr: str, text: str) -> list[str]:
    return [line for line in stderr.splitlines() if text in line]


def make_dist(site: Path, dist: str, module: str, code: str, *, version: str = "1.0", entry_point: str | None = None) -> None:
    """A real (if minimal) installed distribution: a module and a hand-written dist-info folder."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(code))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[featureforge]\n{entry_point or module} = {module}\n")


def wave_plugin(source_name: str = "wave", note: str = "") -> str:
    """Source code of a tiny plugin registering a random-access source called ``source_name``."""
    return f'''
        import dataclasses
        import numpy as np
        import featureforge

        @dataclasses.dataclass
        class WaveOptions:
            d_in: int = 4
            """Width of a row."""

        class Wave(featureforge.ActivationSource):
            name = {source_name!r}
            description = "wave source {note}"
            Options = WaveOptions

            @property
            def d_in(self):
                return self.options.d_in

            def rows(self, start, stop):
                return {{"acts": np.ones((stop - start, self.d_in), np.float32)}}

        @featureforge.hookimpl
        def featureforge_register_sources(register):
            register(Wave)
    '''


BROKEN_PLUGIN = '''
    raise RuntimeError("boom: this plugin cannot be imported\\nsecond line of the message")
'''


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    """docs/example-plugin pip-installed (no deps, no network) into a folder for PYTHONPATH."""
    site = pip_install_target(EXAMPLE, tmp_path_factory.mktemp("example-plugin"))
    assert list(site.glob("featureforge_sine-0.1.0.dist-info")), sorted(p.name for p in site.iterdir())
    return site


@pytest.fixture
def fresh_registry(monkeypatch) -> PluginRegistry:
    """A new registry with the built-ins loaded and no entry-point plugins."""
    monkeypatch.setenv("FEATUREFORGE_PLUGINS", "")
    monkeypatch.delenv("FEATUREFORGE_STRICT_PLUGINS", raising=False)
    registry = PluginRegistry()
    registry.load()
    return registry


# -- the example plugin, installed for real -------------------------------------------------------
def test_example_plugin_is_listed_with_distribution_version_and_options(example_site):
    data, stderr = plugins_json(path=(example_site,))
    sine = find(data["plugins"], "sine")
    assert sine is not None, data["plugins"]
    assert sine["distribution"] == "featureforge-sine"
    assert sine["version"] == "0.1.0"
    assert sine["description"] == "Sine (or square) waves of different frequencies, one per dimension"
    options = {o["name"]: o for o in sine["options"]}
    assert list(options) == ["d_in", "period", "waveform", "n_rows", "seed"]
    assert options["d_in"] == {"name": "d_in", "type": "int", "default": 16,
                               "help": "Width of each activation row: one wave per dimension."}
    assert options["waveform"]["type"] == "sine|square" and options["waveform"]["default"] == "sine"
    assert options["n_rows"]["type"] == "int or None" and options["n_rows"]["default"] is None
    assert {"name": "sine-peek", "description": "Print the first rows of the sine source.",
            "distribution": "featureforge-sine", "version": "0.1.0"} in data["commands"]
    dist = [d for d in data["distributions"] if d["distribution"] == "featureforge-sine"]
    assert len(dist) == 1 and dist[0]["hooks"] == ["featureforge_register_commands", "featureforge_register_sources"]
    assert not [p for p in data["problems"] if p["distribution"] == "featureforge-sine"]
    assert not stderr_lines_naming(stderr, "featureforge-sine")
    # Built-ins are still there next to it.
    assert find(data["plugins"], "synthetic")["distribution"] == "featureforge"


def test_example_plugin_in_text_listing(example_site):
    result = run_cli("plugins", path=(example_site,), env={"FEATUREFORGE_PLUGINS": "featureforge-sine"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    source_line = next(line for line in lines if line.split()[:2] == ["source", "sine"])
    assert "featureforge-sine 0.1.0" in source_line and "one per dimension" in source_line
    assert any("-o waveform=sine" in line and "(sine|square)" in line and "Shape of every wave." in line for line in lines)
    assert any(line.split()[:2] == ["command", "sine-peek"] and "featureforge-sine 0.1.0" in line for line in lines)


def test_example_plugin_caches_a_store(example_site, tmp_path, monkeypatch):
    store = tmp_path / "sine.zarr"
    result = run_cli("cache", "--source", "sine", "-o", "d_in=8", "-o", "waveform=square", "-o", "period=50",
                     "--store", str(store), "--rows", "300", "--rows-per-chunk", "128", path=(example_site,), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Wrote 300 rows × 8" in result.stdout
    info = run_cli("info", str(store), "--json", path=(example_site,))
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["rows"] == 300 and data["d_in"] == 8 and data["complete"]
    assert data["source"]["name"] == "sine"
    assert data["source"]["distribution"] == "featureforge-sine" and data["source"]["version"] == "0.1.0"
    assert data["source"]["options"]["waveform"] == "square" and data["source"]["options"]["period"] == 50.0

    # The stored rows are the plugin's rows.
    import zarr

    monkeypatch.syspath_prepend(str(example_site))
    module = importlib.import_module("featureforge_sine")
    expected = module.SineSource(d_in=8, waveform="square", period=50.0).rows(0, 300)["acts"]
    stored = np.asarray(zarr.open_group(str(store), mode="r")["acts"][:300])
    np.testing.assert_array_equal(stored, expected)


def test_example_plugin_command_runs(example_site):
    result = run_cli("sine-peek", "--rows", "2", "-o", "d_in=3", path=(example_site,))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["0", "1"]
    assert all(len(line.split()) == 4 for line in lines)  # "t:" and three values


def test_example_plugin_command_reports_bad_options_in_one_line(example_site):
    result = run_cli("sine-peek", "-o", "d_in=0", path=(example_site,))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["Error: sine: d_in must be positive, got 0; pass e.g. -o d_in=16"]
    result = run_cli("sine-peek", "-o", "waveform=triangle", path=(example_site,))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "waveform='triangle' must be one of: sine, square" in result.stderr


def test_example_source_rows_are_random_access(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    module = importlib.import_module("featureforge_sine")
    source = module.SineSource(["d_in=5", "seed=3"])
    assert source.random_access
    whole = source.rows(10, 40)["acts"]
    parts = np.concatenate([source.rows(10, 17)["acts"], source.rows(17, 40)["acts"]])
    np.testing.assert_array_equal(whole, parts)
    assert whole.shape == (30, 5) and whole.dtype == np.float32


# -- built-ins ------------------------------------------------------------------------------------
def test_builtins_listed_in_json():
    data, _ = plugins_json(env={"FEATUREFORGE_PLUGINS": ""})
    for name in ("synthetic", "array"):
        row = find(data["plugins"], name)
        assert row is not None
        assert row["kind"] == "source"
        assert row["distribution"] == "featureforge"
        assert row["version"] == CORE_VERSION
        assert row["description"]
    synthetic = {o["name"]: o for o in find(data["plugins"], "synthetic")["options"]}
    assert synthetic["d_in"] == {"name": "d_in", "type": "int", "default": 64, "help": "Width of each activation row."}
    assert synthetic["mean_active"]["type"] == "float" and synthetic["mean_active"]["default"] == 5.0
    array = {o["name"]: o for o in find(data["plugins"], "array")["options"]}
    assert array["path"]["default"] == "" and array["path"]["type"] == "str" and ".npy" in array["path"]["help"]
    assert data["problems"] == []
    builtin = [d for d in data["distributions"] if d["distribution"] == "featureforge"]
    assert {d["plugin"] for d in builtin} >= {"featureforge.builtin.synthetic", "featureforge.builtin.array"}


def test_builtins_listed_in_text():
    result = run_cli("plugins", env={"FEATUREFORGE_PLUGINS": ""})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in ("synthetic", "array"):
        line = next(line for line in lines if line.split()[:2] == ["source", name])
        assert f"featureforge {CORE_VERSION}" in line
    assert any("-o d_in=64" in line and "(int) Width of each activation row." in line for line in lines)
    assert any("-o seed=0" in line for line in lines)


# -- selecting plugins ----------------------------------------------------------------------------
def test_empty_FEATUREFORGE_PLUGINS_loads_no_entry_point_plugins(example_site, tmp_path):
    site = tmp_path / "site"
    make_dist(site, "wave-plugin", "wave_plugin", wave_plugin())
    data, stderr = plugins_json(path=(example_site, site), env={"FEATUREFORGE_PLUGINS": ""})
    assert {row["distribution"] for row in data["plugins"]} == {"featureforge"}
    assert {"synthetic", "array"} <= {row["name"] for row in data["plugins"]}
    assert data["commands"] == [] and data["problems"] == []
    assert {d["distribution"] for d in data["distributions"]} == {"featureforge"}
    result = run_cli("sine-peek", path=(example_site, site), env={"FEATUREFORGE_PLUGINS": ""})
    assert result.returncode == 2 and "no command 'sine-peek'; plugins add commands" in result.stderr


def test_FEATUREFORGE_PLUGINS_loads_only_the_named_distribution(example_site, tmp_path):
    site = tmp_path / "site"
    make_dist(site, "wave-plugin", "wave_plugin", wave_plugin())
    # Distribution names compare as pip compares them: featureforge_sine is featureforge-sine.
    data, _ = plugins_json(path=(example_site, site), env={"FEATUREFORGE_PLUGINS": "featureforge_sine"})
    names = {row["name"] for row in data["plugins"]}
    assert "sine" in names and "wave" not in names and "synthetic" in names


def test_FEATUREFORGE_PLUGINS_takes_entry_point_names_and_comma_lists(example_site, tmp_path):
    site = tmp_path / "site"
    make_dist(site, "wave-plugin", "wave_plugin", wave_plugin())
    data, _ = plugins_json(path=(example_site, site), env={"FEATUREFORGE_PLUGINS": "wave_plugin"})
    names = {row["name"] for row in data["plugins"]}
    assert "wave" in names and "sine" not in names
    data, _ = plugins_json(path=(example_site, site), env={"FEATUREFORGE_PLUGINS": " wave-plugin , featureforge-sine "})
    assert {"wave", "sine"} <= {row["name"] for row in data["plugins"]}


# -- problems -------------------------------------------------------------------------------------
def test_plugin_that_fails_to_import_is_one_line_and_others_keep_working(tmp_path):
    site = tmp_path / "site"
    make_dist(site, "broken-plugin", "broken_plugin", BROKEN_PLUGIN, version="2.3")
    make_dist(site, "wave-plugin", "wave_plugin", wave_plugin())
    env = {"FEATUREFORGE_PLUGINS": "broken-plugin,wave-plugin"}
    data, stderr = plugins_json(path=(site,), env=env)
    lines = stderr_lines_naming(stderr, "broken-plugin")
    assert lines == ["featureforge: plugin broken-plugin 2.3 skipped: import of 'broken_plugin' failed: "
                     "RuntimeError: boom: this plugin cannot be imported second line of the message"]
    assert "Traceback" not in stderr
    assert find(data["plugins"], "wave")["distribution"] == "wave-plugin"
    assert find(data["plugins"], "synthetic") is not None
    assert [p["distribution"] for p in data["problems"]] == ["broken-plugin"]


def test_plugin_that_fails_to_import_leaves_other_commands_working(tmp_path):
    site = tmp_path / "site"
    make_dist(site, "broken-plugin", "broken_plugin", BROKEN_PLUGIN, version="2.3")
    make_dist(site, "wave-plugin", "wave_plugin", wave_plugin())
    env = {"FEATUREFORGE_PLUGINS": "broken-plugin,wave-plugin"}
    result = run_cli("cache", "--source", "wave", "--store", str(tmp_path / "w.zarr"), "--rows", "10", path=(site,), env=env)
    assert result.returncode == 0, result.stderr
    assert len(stderr_lines_naming(result.stderr, "broken-plugin")) == 1
    text = run_cli("plugins", path=(site,), env=env)
    assert any(line.startswith("problem   broken-plugin 2.3: import of 'broken_plugin' failed") for line in text.stdout.splitlines())


def test_strict_plugins_reraises_an_import_failure(tmp_path):
    site = tmp_path / "site"
    make_dist(site, "broken-plugin", "broken_plugin", BROKEN_PLUGIN)
    result = run_cli("plugins", path=(site,), env={"FEATUREFORGE_PLUGINS": "broken-plugin", "FEATUREFORGE_STRICT_PLUGINS": "1"})
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "RuntimeError: boom: this plugin cannot be imported" in result.stderr


def test_strict_plugins_turns_a_duplicate_name_into_an_error(tmp_path):
    site = tmp_path / "site"
    make_dist(site, "alpha-waves", "alpha_waves", wave_plugin(note="alpha"))
    make_dist(site, "beta-waves", "beta_waves", wave_plugin(note="beta"))
    result = run_cli("plugins", path=(site,), env={"FEATUREFORGE_PLUGINS": "alpha-waves,beta-waves", "FEATUREFORGE_STRICT_PLUGINS": "1"})
    assert result.returncode == 1
    assert "plugins alpha-waves 1.0 and beta-waves 1.0 both register source 'wave'" in result.stderr


WAVES_ENV = {"FEATUREFORGE_PLUGINS": "alpha-waves,beta-waves"}


@pytest.fixture
def two_waves(tmp_path) -> Path:
    """Two distributions registering the same source name ``wave``."""
    site = tmp_path / "site"
    # The entry-point names sort the other way round from the distributions: neither order decides.
    make_dist(site, "alpha-waves", "alpha_waves", wave_plugin(note="alpha"), entry_point="zzz")
    make_dist(site, "beta-waves", "beta_waves", wave_plugin(note="beta"), entry_point="aaa")
    return site


def test_a_name_two_distributions_register_is_neither_s_in_one_line_naming_both(two_waves):
    data, stderr = plugins_json(path=(two_waves,), env=WAVES_ENV)
    assert find(data["plugins"], "wave") is None
    alpha, beta = find(data["plugins"], "alpha-waves:wave"), find(data["plugins"], "beta-waves:wave")
    assert alpha["description"] == "wave source alpha" and beta["description"] == "wave source beta"
    assert alpha["distribution"] == "alpha-waves" and alpha["qualified"] == "alpha-waves:wave"
    assert stderr_lines_naming(stderr, "wave") == [
        "featureforge: plugins alpha-waves 1.0 and beta-waves 1.0 both register source 'wave', so none of them gets "
        "that name; choose one with --source alpha-waves:wave or --source beta-waves:wave, or set FEATUREFORGE_PREFER=alpha-waves"
    ]
    assert [p["distribution"] for p in data["problems"]] == ["alpha-waves, beta-waves"]


def test_the_bare_name_is_refused_and_the_qualified_name_chooses(two_waves, tmp_path):
    store = tmp_path / "w.zarr"
    refused = run_cli("cache", "--source", "wave", "--store", str(store), "--rows", "10", path=(two_waves,), env=WAVES_ENV)
    assert refused.returncode == 1 and not store.exists()
    assert refused.stderr.strip().splitlines()[-1] == (
        "Error: source 'wave' is registered by alpha-waves and beta-waves; choose one with --source alpha-waves:wave "
        "or --source beta-waves:wave, or set FEATUREFORGE_PREFER to one of them")
    chosen = run_cli("cache", "--source", "beta-waves:wave", "-o", "d_in=3", "--store", str(store), "--rows", "10",
                     path=(two_waves,), env=WAVES_ENV)
    assert chosen.returncode == 0, chosen.stderr
    assert featureforge.open_store(store).source["distribution"] == "beta-waves"


def test_FEATUREFORGE_PREFER_gives_the_name_to_the_chosen_distribution(two_waves):
    data, stderr = plugins_json(path=(two_waves,), env={**WAVES_ENV, "FEATUREFORGE_PREFER": "Beta_Waves"})
    wave = find(data["plugins"], "wave")
    assert wave["distribution"] == "beta-waves" and wave["description"] == "wave source beta"
    assert find(data["plugins"], "alpha-waves:wave") is None and not data["problems"] and "wave" not in stderr


def test_a_plugin_named_to_load_first_cannot_take_topk_from_featureforge_sae(tmp_path):
    pytest.importorskip("featureforge_sae")
    site = tmp_path / "site"
    make_dist(site, "aaa-hijack", "aaa_hijack", '''
        import featureforge
        from featureforge_sae import TopKTrainer

        class Hijack(TopKTrainer):
            description = "not the real topk"

        @featureforge.hookimpl
        def featureforge_register_trainers(register):
            register(Hijack)
    ''')
    env = {"FEATUREFORGE_PLUGINS": "aaa-hijack,featureforge-sae"}
    data, stderr = plugins_json(path=(site,), env=env)
    assert find(data["plugins"], "topk", "trainer") is None
    assert find(data["plugins"], "featureforge-sae:topk", "trainer")["description"] != "not the real topk"
    assert stderr_lines_naming(stderr, "topk") == [
        "featureforge: plugins aaa-hijack 1.0 and featureforge-sae "
        f"{importlib.metadata.version('featureforge-sae')} both register trainer 'topk', so none of them gets that name; "
        "choose one with --trainer aaa-hijack:topk or --trainer featureforge-sae:topk, or set FEATUREFORGE_PREFER=aaa-hijack"
    ]
    store = tmp_path / "s.zarr"
    assert run_cli("cache", "--source", "synthetic", "-o", "d_in=8", "--store", str(store), "--rows", "2048",
                   "--rows-per-chunk", "512", path=(site,), env=env).returncode == 0
    refused = run_cli("train", "--trainer", "topk", "--store", str(store), "--out", str(tmp_path / "r"), path=(site,), env=env)
    assert refused.returncode == 1 and "choose one with --trainer aaa-hijack:topk or --trainer featureforge-sae:topk" in refused.stderr
    assert not (tmp_path / "r").exists()
    code = ("import featureforge as ff; import featureforge_sae as sae; "
            "print(ff.get_registry().get('trainer', 'featureforge-sae:topk') is sae.TopKTrainer)")
    check = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(site), **env})
    assert check.stdout.strip() == "True", check.stderr


def test_plugin_cannot_take_a_builtin_name(tmp_path):
    site = tmp_path / "site"
    make_dist(site, "aaa-impostor", "aaa_impostor", wave_plugin(source_name="synthetic", note="impostor"))
    data, stderr = plugins_json(path=(site,), env={"FEATUREFORGE_PLUGINS": "aaa-impostor", "FEATUREFORGE_PREFER": "aaa-impostor"})
    synthetic = find(data["plugins"], "synthetic")
    assert synthetic["distribution"] == "featureforge" and "impostor" not in synthetic["description"]
    assert find(data["plugins"], "aaa-impostor:synthetic") is None
    assert stderr_lines_naming(stderr, "aaa-impostor") == [
        "featureforge: plugin aaa-impostor 1.0 skipped: source name 'synthetic' is featureforge's own; rename it"
    ]


def test_partly_loaded_plugin_says_what_was_and_was_not_loaded(tmp_path):
    site = tmp_path / "site"
    make_dist(site, "half-plugin", "half_plugin", wave_plugin() + '''
        class Impostor(Wave):
            name = "synthetic"

        @featureforge.hookimpl
        def featureforge_register_trainers(register):
            raise ValueError("no trainers today")

        @featureforge.hookimpl
        def featureforge_register_evaluators(register):
            pass

        @featureforge.hookimpl(specname="featureforge_register_sources")
        def more_sources(register):
            register(Impostor)
    ''')
    data, stderr = plugins_json(path=(site,), env={"FEATUREFORGE_PLUGINS": "half-plugin"})
    assert find(data["plugins"], "wave")["distribution"] == "half-plugin"
    assert stderr_lines_naming(stderr, "half-plugin") == [
        "featureforge: plugin half-plugin 1.0 partly loaded: loaded source 'wave'; not loaded: source 'synthetic' "
        "(source name 'synthetic' is featureforge's own; rename it); its trainers "
        "(featureforge_register_trainers raised ValueError: no trainers today)"
    ]
    assert "skipped" not in stderr
    assert [(p["distribution"], p["status"]) for p in data["problems"]] == [("half-plugin", "partly loaded")]


OPTION_TYPES_PLUGIN = wave_plugin() + '''
        class Color:
            pass

        @dataclasses.dataclass
        class OddOptions:
            weights: dict[str, float] = dataclasses.field(default_factory=dict)
            color: Color = None
            k: int = 4

        class Odd(Wave):
            name = "odd"
            Options = OddOptions

        @featureforge.hookimpl(specname="featureforge_register_sources")
        def more_sources(register):
            register(Odd)
'''


def test_unsupported_option_types_are_that_plugins_error_at_registration(tmp_path):
    site = tmp_path / "site"
    make_dist(site, "odd-options", "odd_options", OPTION_TYPES_PLUGIN)
    data, stderr = plugins_json(path=(site,), env={"FEATUREFORGE_PLUGINS": "odd-options"})
    assert find(data["plugins"], "odd") is None and find(data["plugins"], "wave") is not None
    assert stderr_lines_naming(stderr, "odd-options") == [
        "featureforge: plugin odd-options 1.0 partly loaded: loaded source 'wave'; not loaded: source 'odd' (source 'odd': "
        "option type not supported (weights: dict[str, float], color: Color); supported types: bool, int, float, str, "
        "Path, Any, a Literal of choices, X | None, list[X] or tuple[X, ...] of those)"
    ]
    strict = run_cli("plugins", path=(site,), env={"FEATUREFORGE_PLUGINS": "odd-options", "FEATUREFORGE_STRICT_PLUGINS": "1"})
    assert strict.returncode == 1 and "option type not supported (weights: dict[str, float]" in strict.stderr


def test_plugin_command_cannot_replace_a_core_command(tmp_path):
    site = tmp_path / "site"
    make_dist(site, "hijack-plugin", "hijack_plugin", '''
        import click
        import featureforge

        @featureforge.hookimpl
        def featureforge_register_commands(cli):
            @cli.command(name="plugins")
            def plugins():
                click.echo("hijacked")
    ''')
    result = run_cli("plugins", "--json", path=(site,), env={"FEATUREFORGE_PLUGINS": "hijack-plugin"})
    assert result.returncode == 0, result.stderr
    assert "hijacked" not in result.stdout and find(json.loads(result.stdout)["plugins"], "synthetic")
    assert stderr_lines_naming(result.stderr, "hijack-plugin") == [
        "featureforge: plugin hijack-plugin 1.0 skipped: command 'plugins' is already provided by featureforge; rename one of them"
    ]


def test_unknown_source_name_is_one_line_listing_known_names(example_site, tmp_path):
    store = tmp_path / "x.zarr"
    result = run_cli("cache", "--source", "nope", "--store", str(store), "--rows", "10", path=(example_site,),
                     env={"FEATUREFORGE_PLUGINS": "featureforge-sine"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: unknown source 'nope'; known sources: array, sine, synthetic (see `featureforge plugins`)"
    ]
    assert not store.exists()


def test_registering_a_non_subclass_is_a_clear_one_line_error(tmp_path):
    site = tmp_path / "site"
    make_dist(site, "odd-plugin", "odd_plugin", '''
        import featureforge

        class NotASource:
            name = "odd"

        @featureforge.hookimpl
        def featureforge_register_sources(register):
            register(NotASource)
    ''')
    data, stderr = plugins_json(path=(site,), env={"FEATUREFORGE_PLUGINS": "odd-plugin"})
    assert stderr_lines_naming(stderr, "odd-plugin") == [
        "featureforge: plugin odd-plugin 1.0 skipped: featureforge_register_sources raised TypeError: "
        "<class 'odd_plugin.NotASource'> is not a subclass of featureforge.ActivationSource"
    ]
    assert find(data["plugins"], "odd") is None and find(data["plugins"], "synthetic") is not None


def test_register_checks_base_class_name_and_options(fresh_registry, monkeypatch):
    class Trainer(featureforge.DictionaryTrainer):
        name = "t"

    class Nameless(featureforge.ActivationSource):
        pass

    class BadOptions(featureforge.ActivationSource):
        name = "bad-options"
        Options = dict

    registered: list[type] = []

    class Plugin:
        @featureforge.hookimpl
        def featureforge_register_sources(self, register):
            register(registered.pop(0))

    monkeypatch.setenv("FEATUREFORGE_STRICT_PLUGINS", "1")
    expected = {
        Trainer: "is not a subclass of featureforge.ActivationSource",
        Nameless: "Nameless has no name; set the class attribute name = '...'",
        BadOptions: "BadOptions.Options must be a dataclass",
    }
    plugin = Plugin()
    fresh_registry.register_plugin(plugin, "test-dist", "1.0")
    for cls, message in expected.items():
        registered[:] = [cls]
        fresh_registry._tables = None
        with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            fresh_registry.tables()


def test_unknown_name_lookup_raises_plugin_error(fresh_registry):
    with pytest.raises(PluginError, match=r"unknown trainer 'nope'; known trainers: .* \(see `featureforge plugins`\)"):
        fresh_registry.get("trainer", "nope")
    assert isinstance(PluginError("x"), LookupError)


# -- one test per hook, in-process against a fresh registry ----------------------------------------
def test_hook_featureforge_register_sources(fresh_registry):
    @dataclasses.dataclass
    class CountOptions:
        d_in: int = 2
        """Width."""

    class Count(featureforge.ActivationSource):
        name = "count"
        description = "Row t is t everywhere"
        Options = CountOptions

        @property
        def d_in(self):
            return self.options.d_in

        def rows(self, start, stop):
            return {"acts": np.repeat(np.arange(start, stop, dtype=np.float32)[:, None], self.d_in, axis=1)}

    class Plugin:
        @featureforge.hookimpl
        def featureforge_register_sources(self, register):
            register(Count)

    fresh_registry.register_plugin(Plugin(), "count-dist", "0.3")
    assert fresh_registry.get("source", "count") is Count
    reg = fresh_registry.registration("source", "count")
    assert (reg.distribution, reg.version, reg.kind) == ("count-dist", "0.3", "source")
    assert {"array", "count", "synthetic"} <= set(fresh_registry.names("source"))
    row = find(fresh_registry.describe()["plugins"], "count")
    assert row["options"] == [{"name": "d_in", "type": "int", "default": 2, "help": "Width."}]
    source = fresh_registry.get("source", "count")(["d_in=3"])
    assert source.rows(4, 6)["acts"].tolist() == [[4.0] * 3, [5.0] * 3]


def test_hook_featureforge_register_trainers(fresh_registry):
    @dataclasses.dataclass
    class MeanOptions:
        shrink: float = 0.5
        """How far to pull reconstructions to zero."""

    class MeanTrainer(featureforge.DictionaryTrainer):
        name = "mean"
        description = "Reconstructs every row as a shrunk copy of itself"
        Options = MeanOptions

        def loss(self, dictionary, batch, state):
            x_hat = batch["acts"] * self.options.shrink
            return StepOutput(loss=float(((batch["acts"] - x_hat) ** 2).mean()), x_hat=x_hat)

    class Plugin:
        @featureforge.hookimpl
        def featureforge_register_trainers(self, register):
            register(MeanTrainer)

    fresh_registry.register_plugin(Plugin(), "mean-dist", "1.1")
    cls = fresh_registry.get("trainer", "mean")
    assert cls is MeanTrainer and "mean" in fresh_registry.names("trainer")
    row = find(fresh_registry.describe()["plugins"], "mean", kind="trainer")
    assert row["distribution"] == "mean-dist" and row["options"][0]["help"] == "How far to pull reconstructions to zero."
    out = cls(["shrink=0.25"]).loss(None, {"acts": np.ones((2, 2))}, None)
    assert out.loss == pytest.approx(0.5625)


def test_hook_featureforge_register_evaluators(fresh_registry, tmp_path):
    class Counter(featureforge.Evaluator):
        name = "counter"
        description = "Counts output files"

        def evaluate(self, dictionary, context):
            path = context.out_dir / "note.txt"
            path.write_text("hello")
            return EvaluationResult(metrics={"files": 1}, artifacts={"note": str(path)})

    class Plugin:
        @featureforge.hookimpl
        def featureforge_register_evaluators(self, register):
            register(Counter)

    fresh_registry.register_plugin(Plugin(), "counter-dist", "2.0")
    evaluator = fresh_registry.get("evaluator", "counter")()
    result = evaluator.evaluate(None, EvaluationContext(store=None, out_dir=tmp_path))
    assert result.metrics == {"files": 1} and Path(result.artifacts["note"]).read_text() == "hello"
    row = find(fresh_registry.describe()["plugins"], "counter", kind="evaluator")
    assert row["distribution"] == "counter-dist" and row["options"] == []


def test_hook_featureforge_register_commands(fresh_registry):
    @click.group()
    def cli():
        pass

    @cli.command()
    def cache():
        click.echo("core cache")

    class Plugin:
        @featureforge.hookimpl
        def featureforge_register_commands(self, cli):
            @cli.command(name="greet")
            @click.argument("who")
            def greet(who):
                """Greet someone."""
                click.echo(f"hello {who}")

            @cli.command(name="cache")
            def cache():
                click.echo("plugin cache")

    fresh_registry.register_plugin(Plugin(), "greet-dist", "0.1")
    fresh_registry.add_commands(cli)
    fresh_registry.add_commands(cli)  # building the CLI twice adds nothing twice
    runner = CliRunner()
    assert runner.invoke(cli, ["greet", "you"]).output == "hello you\n"
    assert runner.invoke(cli, ["cache"]).output == "core cache\n"
    described = fresh_registry.describe()
    assert described["commands"] == [{"name": "greet", "description": "Greet someone.", "distribution": "greet-dist", "version": "0.1"}]
    assert [p["message"] for p in described["problems"]] == [
        "command 'cache' is already provided by featureforge; rename one of them"
    ]


def test_plugin_errors_subclass_featureforge_error():
    assert issubclass(PluginError, featureforge.FeatureforgeError)
    assert issubclass(OptionError, featureforge.FeatureforgeError)


def test_one_distribution_registering_a_name_twice_keeps_the_first(fresh_registry, capsys):
    class First(featureforge.ActivationSource):
        name = "twice"
        description = "first"

    class Second(First):
        description = "second"

    class Plugin:
        @featureforge.hookimpl
        def featureforge_register_sources(self, register):
            register(First)
            register(Second)

    fresh_registry.register_plugin(Plugin(), "twice-dist", "1.0")
    assert fresh_registry.get("source", "twice") is First
    assert fresh_registry.get("source", "twice-dist:twice") is First
    assert capsys.readouterr().err.splitlines() == [
        "featureforge: plugin twice-dist 1.0 partly loaded: loaded source 'twice'; not loaded: source 'twice' "
        "(source name 'twice' is registered twice by twice-dist)"
    ]
