"""Fixtures of the featureforge-multifaceted tests: real stores on disk, real trained dictionaries.

Nothing is downloaded: synthetic stores come from the core's ``synthetic`` source, text from a
tiny GPT-2 made here by ``featureforge_hf.tiny`` over standard-library text.
"""

from __future__ import annotations

import itertools
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from mf_helpers import SYNTHETIC  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the test machine is small and shared, and spinning worker threads slow it 10x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FEATUREFORGE_DEBUG", None)
    env.update({"FEATUREFORGE_PROGRESS": "0", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return env


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory):
    """32k rows of 32-wide activations, sums of about 2 of 64 known unit features."""
    import featureforge

    path = tmp_path_factory.mktemp("mf-store") / "synthetic.zarr"
    return featureforge.cache("synthetic", SYNTHETIC, store=str(path), rows=32768, rows_per_chunk=4096, progress=False)


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory, synthetic_store):
    """A small TopK dictionary (32 latents, k=4) trained on ``synthetic_store``."""
    import featureforge

    pytest.importorskip("featureforge_sae", reason="the topk trainer comes from featureforge-sae (pip install -e plugins/featureforge-sae)")

    out = tmp_path_factory.mktemp("mf-run") / "topk32"
    featureforge.train("topk", {"k": 4, "d_dict": 32}, store=synthetic_store.url, out=str(out), epochs=1, batch_size=1024, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory):
    """(store, run): a tiny GPT-2's block-1 output over stdlib text (token ids kept), and a TopK run on it."""
    import featureforge

    pytest.importorskip("featureforge_hf", reason="text stores come from featureforge-hf (pip install -e plugins/featureforge-hf)")
    pytest.importorskip("featureforge_sae", reason="the topk trainer comes from featureforge-sae (pip install -e plugins/featureforge-sae)")
    from featureforge_hf import stdlib_documents
    from featureforge_hf.tiny import make_gpt2

    root = tmp_path_factory.mktemp("mf-text")
    docs = list(itertools.islice(stdlib_documents(), 200))
    make_gpt2(root / "gpt2", docs, n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=300)
    store = featureforge.cache("hf", {"model": str(root / "gpt2"), "hook": "transformer.h.1", "context_size": 64, "max_docs": 120, "batch_size": 16},
                               store=str(root / "text.zarr"), rows=8192, rows_per_chunk=2048, progress=False)
    run = root / "run"
    featureforge.train("topk", {"k": 4, "d_dict": 48}, store=store.url, out=str(run), epochs=1, batch_size=512, progress=False)
    return store, run
