"""Fixtures of the featureforge-testbeds tests: one torch thread, a seeded start, a user's CLI environment.

Nothing is downloaded: the hub is switched off for the session (the tiny GPT-2 and its tokenizer
are trained here on standard-library text; the digits ship with scikit-learn).
"""

from __future__ import annotations

import os

# Before transformers/huggingface_hub are imported anywhere: never reach for the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """One torch thread: the test machine is small and shared, and spinning worker threads slow it down."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cli_env() -> dict[str, str]:
    """Environment of a CLI subprocess: every installed plugin (as a user has them), no bars, no hub."""
    env = {k: v for k, v in os.environ.items() if k not in ("FEATUREFORGE_PLUGINS", "FEATUREFORGE_DEBUG")}
    env.update({"FEATUREFORGE_PROGRESS": "0", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return env


@pytest.fixture(scope="session")
def digits_cnn():
    """(model, images, merged labels, digits): the digits testbed's CNN, trained once for the session (seconds)."""
    import torch

    from featureforge_testbeds.digits import merged_digits, train_cnn

    torch.set_num_threads(1)
    x, merged, digit = merged_digits()
    model, accuracy = train_cnn(x, merged, epochs=5)
    assert accuracy > 0.8
    return model, x, merged, digit
