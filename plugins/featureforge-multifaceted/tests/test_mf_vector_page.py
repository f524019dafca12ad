"""`featureforge vector-page`: a steering vector's decomposition page, as a user runs it on a text store."""

from __future__ import annotations

import re
import subprocess

import torch

from mf_helpers import FEATUREFORGE


def test_vector_page_shows_the_fit_and_shaded_contexts(tiny_text, tmp_path, cli_env):
    import featureforge
    from featureforge.decomposition import decoder_rows
    from featureforge.steering import store_typical
    from featureforge.vectors import SteeringVector

    store, run = tiny_text
    dictionary = featureforge.load(run)
    live = torch.nonzero(store_typical(dictionary, store) > 0).flatten().tolist()[:2]
    unit = decoder_rows(dictionary)
    unit = unit / unit.norm(dim=-1, keepdim=True)
    v = unit[live[0]] + 0.5 * unit[live[1]]
    SteeringVector(direction=v / v.norm(), typical=float(v.norm()), hook="transformer.h.1", source=dict(store.source), name="planted").save(tmp_path / "vec")
    env = {**cli_env, "FEATUREFORGE_PLUGINS": "featureforge-multifaceted,featureforge-hf,featureforge-sae"}
    done = subprocess.run([FEATUREFORGE, "vector-page", str(tmp_path / "vec"), str(run), "--store", store.url, "--out", str(tmp_path / "site"),
                           "--contexts", "2"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "site" / "vector_planted.html").read_text()
    assert f"Wrote {tmp_path / 'site' / 'vector_planted.html'}" in done.stdout
    assert float(re.search(r'id=explained data-value="([^"]+)"', page).group(1)) > 0.999
    linked = re.findall(r'href="feature.html\?id=(\d+)"', page)
    assert {str(i) for i in live} <= set(linked) and page.count('class="tok hit"') >= 2
