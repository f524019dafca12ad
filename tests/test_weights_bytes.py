"""``weights.safetensors`` bytes depend only on the dictionary (issue #12).

safetensors keeps a file's metadata in a hash map whose order changes from one map (and one
process) to the next, so equal runs used to write files that ``cmp`` told apart.
"""

from __future__ import annotations

import json

import torch
from safetensors import safe_open

from featureforge.dictionary import WEIGHTS_FILE, Dictionary


class Linear(Dictionary):
    def __init__(self, d_in: int = 6, d_dict: int = 10):
        super().__init__(d_in, d_dict)
        gen = torch.Generator().manual_seed(0)
        self.W_enc = torch.nn.Parameter(torch.randn(d_in, d_dict, generator=gen))
        self.b_enc = torch.nn.Parameter(torch.randn(d_dict, generator=gen))
        self.W_dec = torch.nn.Parameter(torch.randn(d_dict, d_in, dtype=torch.float64, generator=gen))


CONFIG = {"trainer": "linear", "options": {"k": 4}, "extra": "ü"}

def test_saving_the_same_dictionary_twice_gives_equal_bytes(tmp_path):
    files = []
    for i in range(16):  # each save's hash map has its own seed: the old writer differed in about half
        Linear().save(tmp_path / f"run{i}", CONFIG)
        files.append((tmp_path / f"run{i}" / WEIGHTS_FILE).read_bytes())
    assert all(f == files[0] for f in files), [i for i, f in enumerate(files) if f != files[0]]


def test_the_written_file_is_ordinary_safetensors(tmp_path):
    dictionary = Linear()
    dictionary.save(tmp_path, CONFIG)
    path = tmp_path / WEIGHTS_FILE
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    assert length % 8 == 0
    header = json.loads(raw[8 : 8 + length])
    assert list(header)[0] == "__metadata__" and list(header["__metadata__"]) == ["format", "trainer"]
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"format": "featureforge", "trainer": "linear"}
        assert sorted(handle.keys()) == ["W_dec", "W_enc", "b_enc", "input_scale"]
        for key, value in dictionary.state_dict().items():
            assert torch.equal(handle.get_tensor(key), value), key
