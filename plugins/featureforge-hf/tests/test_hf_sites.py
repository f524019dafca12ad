"""Several hook points from one forward pass: ``-o hook=a,b``, ``-o hook=all-blocks``, ``-o site=mlp-io``."""

from __future__ import annotations

import numpy as np
import pytest

import featureforge as ff


def _opts(tiny_gpt2, **more):
    return {"model": tiny_gpt2, "context_size": 32, "max_docs": 30, **more}


def test_two_hooks_in_one_pass_equal_two_separate_caches(tiny_gpt2, tmp_path):
    both = ff.cache("hf", _opts(tiny_gpt2), hook=["transformer.h.0", "h.1"], store=tmp_path / "both", rows=1200, rows_per_chunk=256, progress=False)
    assert both.sites == ["transformer.h.0", "transformer.h.1"]
    assert [r["hook"] for r in both.site_records] == ["transformer.h.0", "transformer.h.1"]
    for i, hook in enumerate(("transformer.h.0", "transformer.h.1")):
        alone = ff.cache("hf", _opts(tiny_gpt2, hook=hook), store=tmp_path / f"alone{i}", rows=1200, rows_per_chunk=256, progress=False)
        assert np.array_equal(both.site(hook).read(0, 1200), alone.read(0, 1200)), hook
        assert np.array_equal(both.read(0, 1200, "token_ids"), alone.read(0, 1200, "token_ids"))
    assert both.provenance["hooks"] == both.sites and both.provenance["hook"] == "transformer.h.0"
    # a run on one site is spliced at that site: the rebuilt source reads it alone, with the same model
    src = ff.rebuild_source(both)
    one = src.for_site("transformer.h.1")
    assert one.site.name == "transformer.h.1" and one.sites[0].name == "transformer.h.1" and one.loaded is src.loaded
    context = ff.EvaluationContext(both.site("transformer.h.1"), tmp_path / "eval")
    assert context.source.hook_name == "transformer.h.1"


def test_all_blocks_and_mlp_io_name_their_sites(tiny_gpt2, tmp_path):
    blocks = ff.cache("hf", _opts(tiny_gpt2, hook="all-blocks"), store=tmp_path / "blocks", rows=300, progress=False)
    assert blocks.sites == ["transformer.h.0", "transformer.h.1"]
    mlp = ff.cache("hf", _opts(tiny_gpt2, hook="transformer.h.1", site="mlp-io"), store=tmp_path / "mlp", rows=300, progress=False)
    assert mlp.sites == ["transformer.h.1.mlp:input", "transformer.h.1.mlp"]
    assert [r["io"] for r in mlp.site_records] == ["input", "output"]
    # the MLP's input is ln_2 of the block's residual; its output is what the block adds to it
    ln = ff.cache("hf", _opts(tiny_gpt2, hook="transformer.h.1.ln_2"), store=tmp_path / "ln", rows=300, progress=False)
    assert np.allclose(mlp.read(0, 300), ln.read(0, 300), atol=1e-6)


def test_several_sites_with_grads_or_a_repeated_hook_are_refused(tiny_gpt2):
    with pytest.raises(ff.OptionError, match="grads=true caches gradients at one site"):
        ff.make_source("hf", _opts(tiny_gpt2, hook="h.0,h.1", grads=True))
    with pytest.raises(ff.OptionError, match="more than once"):
        _ = ff.make_source("hf", _opts(tiny_gpt2, hook="h.0,transformer.h.0")).sites
    with pytest.raises(ff.OptionError, match="empty name"):
        ff.make_source("hf", _opts(tiny_gpt2, hook="h.0,,h.1"))
