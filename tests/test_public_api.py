"""The public API is a decision recorded here: ``featureforge.__all__`` (as simonw/llm pins its
exports), the full signatures of the verbs, and that the plugins in ``plugins/`` import only it."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import featureforge

ROOT = Path(__file__).resolve().parents[1]

EXPECTED_EXPORTS = {
    # the roles a plugin subclasses, what they exchange, and how they register
    "ActivationSource", "DictionaryTrainer", "Evaluator", "Dictionary", "StepOutput", "TrainState",
    "EvaluationContext", "EvaluationResult", "hookimpl", "progress_bar",
    # a source's declared sites (several hook points in one pass: one store, a column per site)
    "Site",
    # the plugin registry: every registered class by kind and name
    "get_registry",
    # the verbs (the CLI's commands) and the store they open
    "cache", "train", "evaluate", "compare", "ablate", "load", "export", "import_run", "open_store", "ActivationStore", "steer", "steered",
    # steering vectors: made from two prompt sets, expressed in a dictionary's latents
    "vector", "decompose",
    # building a registered source by name (what `--source NAME -o ...` does), or a store's own again
    "make_source", "rebuild_source",
    # errors
    "FeatureforgeError", "BadInputError", "OptionError", "PluginError", "StoreError", "StoreMismatchError",
    "CorruptStoreError", "CorruptRunError",
}

#: Modules whose public names are part of the contract besides the top level (docs/plugins.md).
PUBLIC_MODULES = {"featureforge", "featureforge.store", "featureforge.training", "featureforge.evaluation",
                  "featureforge.evaluation.metrics", "featureforge.plots", "featureforge.dictionary", "featureforge.testing",
                  # the one intervention model (add/clamp/ablate at a hook) that sources' splices and steering pages share
                  "featureforge.interventions", "featureforge.steering",
                  # steering vectors (directions from prompt sets) and their decomposition in latents
                  "featureforge.vectors", "featureforge.decomposition",
                  # process and device settings: the one device rule, the CLI's opt-in OpenMP spin
                  "featureforge.runtime",
                  # the run folder: its file names, RunConfig and the readers of metrics.jsonl and report.json
                  "featureforge.run",
                  # the live model a source's splice yields, and the torch hook sites sources and visualisers hook
                  "featureforge.live", "featureforge.sites",
                  # comparing dictionaries (featureforge compare) and reading a written comparison back (best_matches)
                  "featureforge.comparison"}


def test_default_exports():
    assert set(featureforge.__all__) == EXPECTED_EXPORTS
    assert len(featureforge.__all__) == len(EXPECTED_EXPORTS), "a name is listed twice in __all__"
    for name in featureforge.__all__:
        assert getattr(featureforge, name) is not None


def test_public_modules_list_their_names():
    import featureforge.evaluation.metrics
    import featureforge.plots

    for module in (featureforge.evaluation.metrics, featureforge.plots):
        for name in module.__all__:
            assert name.isupper() or getattr(module, name).__module__ == module.__name__, f"{module.__name__}.{name}"
    assert {"fvu", "mmcs", "mcc", "l0", "explained_variance"} <= set(featureforge.evaluation.metrics.__all__)


def test_the_live_model_seam_is_declared():
    """What ``splice`` yields is one public class; a member a model lacks is a one-line error, not AttributeError."""
    import torch

    from featureforge.live import LiveModel
    from featureforge.sites import HookSite

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))

    class Bare(LiveModel):
        def forward(self, input_ids, attention_mask):
            return self.model(input_ids)

    live = Bare(model, HookSite.find(model, "0"), None)
    x = torch.randn(1, 4, 3)
    assert torch.equal(live(x, torch.ones(1, 4), replace="none"), model(x).detach())
    assert not torch.allclose(live(x, torch.ones(1, 4), replace="zero"), model(x))
    for member, args in (("prompt_ids", ("hi",)), ("decode", ([1],)), ("token_texts", ([1],)), ("batches", ())):
        with pytest.raises(featureforge.BadInputError, match=rf"Bare \(the store's live model\) cannot .*: it has no {member}\(\)") as info:
            getattr(live, member)(*args)
        assert "\n" not in str(info.value)
    live.close()
    assert not featureforge.ActivationSource.can_splice
    with pytest.raises(featureforge.OptionError, match=r"^hook '2' is not a module of the model; nearest: .*; pass -o hook=NAME"):
        HookSite.find(model, "2")


def test_import_featureforge_does_not_import_torch():
    """``Dictionary`` is exported lazily: plugins and ``featureforge --help`` stay free of torch."""
    code = "import sys, featureforge; assert 'torch' not in sys.modules; featureforge.Dictionary; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_train_takes_every_loop_setting_by_name_with_its_default():
    from featureforge.training import TrainConfig

    params = inspect.signature(featureforge.train).parameters
    for field in dataclasses.fields(TrainConfig):
        assert field.name in params, f"featureforge.train lacks the loop setting {field.name!r}"
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        assert params[field.name].default == default, f"featureforge.train's default of {field.name} differs from TrainConfig's"
        assert params[field.name].kind is inspect.Parameter.KEYWORD_ONLY
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def test_evaluate_has_the_full_signature_of_the_command():
    from featureforge.evaluation import _evaluate as evaluation

    assert featureforge.evaluate is evaluation.evaluate
    params = inspect.signature(featureforge.evaluate).parameters
    assert {"run", "store", "evaluators", "out_dir", "rows", "storage_options", "device", "progress"} == set(params)
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def test_compare_has_the_full_signature_of_the_command():
    from featureforge.comparison import _compare

    assert featureforge.compare is _compare.compare
    params = inspect.signature(featureforge.compare).parameters
    assert {"runs", "store", "out", "rows", "thresholds", "rule_threshold", "excess_threshold", "baseline"} <= set(params)
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def test_ablate_has_the_full_signature_of_the_command_and_the_impact_is_public():
    from featureforge.comparison import _ablate, _impact

    assert featureforge.ablate is _ablate.ablate
    params = inspect.signature(featureforge.ablate).parameters
    assert {"run", "units", "compare", "top", "above", "by", "store", "mode", "random_sets", "max_sequences", "seed", "out"} == set(params)
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    import featureforge.comparison as comparison

    assert {"ablate", "ablation_impact", "frequency_matched", "select_units"} <= set(comparison.__all__)
    assert comparison.ablation_impact is _impact.ablation_impact


def _featureforge_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from featureforge... import name`` and ``featureforge.name`` use in a file."""
    tree = ast.parse(path.read_text(), str(path))
    aliases = {"featureforge"} | {a.asname for node in ast.walk(tree) if isinstance(node, ast.Import)
                                  for a in node.names if a.name == "featureforge" and a.asname}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "featureforge":
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            found.append(("featureforge", node.attr))
    return found


#: Known exceptions, each a decision (none today).
ALLOWED: set[tuple[str, str]] = set()


def test_plugins_use_only_the_public_api():
    sources = [*ROOT.glob("plugins/*/featureforge_*/**/*.py"), ROOT / "tests" / "guide_plugin" / "featureforge_guide.py"]
    assert sources, "no plugin sources found"
    bad = []
    for path in sources:
        for module, name in _featureforge_imports(path):
            if module == "featureforge":
                if name not in featureforge.__all__ and name not in PUBLIC_MODULES_SHORT and name != "__version__":
                    if (f"{path.parent.name}/{path.name}", f"featureforge.{name}") not in ALLOWED:
                        bad.append(f"{path.relative_to(ROOT)}: featureforge.{name}")
            elif module not in PUBLIC_MODULES and (f"{path.parent.name}/{path.name}", f"{module}.{name}") not in ALLOWED:
                bad.append(f"{path.relative_to(ROOT)}: {module}.{name}")
    assert not bad, "plugins reach past the public API:\n" + "\n".join(bad)


PUBLIC_MODULES_SHORT = {m.split(".", 1)[1] for m in PUBLIC_MODULES if "." in m}
