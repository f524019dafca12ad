"""The core intervention model (featureforge.interventions) on a small ReLU dictionary, no model needed."""

from __future__ import annotations

import pytest
import torch

from featureforge import BadInputError
from featureforge.dictionary import Dictionary
from featureforge.interventions import Intervention, position_mask, replacement, typical_values


class ReLUDict(Dictionary):
    def __init__(self, d_in: int = 6, d_dict: int = 10, seed: int = 0):
        super().__init__(d_in, d_dict)
        g = torch.Generator().manual_seed(seed)
        self.W_enc = torch.nn.Parameter(torch.randn(d_in, d_dict, generator=g))
        self.b_enc = torch.nn.Parameter(torch.full((d_dict,), -0.5))
        self.W_dec = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(d_dict, d_in, generator=g), dim=1))
        self.b_dec = torch.nn.Parameter(torch.randn(d_in, generator=g) * 0.1)
        self.input_scale.fill_(2.0)

    def encode_normalised(self, x):
        return torch.relu(x @ self.W_enc + self.b_enc)

    def decode_normalised(self, codes):
        return codes @ self.W_dec + self.b_dec

    @property
    def decoder_directions(self):
        return self.W_dec


@pytest.fixture
def setup():
    d = ReLUDict()
    rows = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        codes = d.encode(rows)
        typical = typical_values(d, [rows])
    return d, rows, codes, typical


def test_edits_that_change_no_code_give_the_rows_back_bit_for_bit(setup):
    d, rows, codes, typical = setup
    rows, codes = rows[:2], codes[:2]
    silent = (codes == 0).all(0)
    assert silent.any() and (~silent).any()
    i, j = int(silent.nonzero()[0]), int((~silent).nonzero()[0])
    assert torch.equal(replacement(d, [Intervention((i,), "ablate")], typical)(rows), rows)
    assert torch.equal(replacement(d, [Intervention((j,), "add", 0.0)], typical)(rows), rows)
    one = rows[codes[:, j] > 0][:1]
    own = float(d.encode(one)[0, j].detach())
    assert torch.allclose(replacement(d, [Intervention((j,), "clamp", own, "absolute")], typical)(one), one, atol=1e-6)


def test_modes_move_the_rows_along_the_decoder_row_and_keep_the_error(setup):
    d, rows, codes, typical = setup
    j = int(typical.argmax())
    direction = (d.W_dec[j] / d.input_scale).detach()
    added = replacement(d, [Intervention((j,), "add", 3.0)], typical)(rows)
    assert torch.allclose(added - rows, 3.0 * float(typical[j]) * direction.expand_as(rows), atol=1e-5)
    ablated = replacement(d, [Intervention((j,), "ablate")], typical)(rows)
    assert torch.allclose(ablated - rows, -codes[:, j : j + 1] * direction, atol=1e-5)
    with torch.no_grad():
        assert (d.encode(ablated)[:, j] < codes[:, j] + 1e-6).all()
    clamped = replacement(d, [Intervention((j,), "clamp", 2.0)], typical)(rows)
    assert torch.allclose(clamped - rows, (2.0 * float(typical[j]) - codes[:, j : j + 1]) * direction, atol=1e-5)
    both = replacement(d, [Intervention((j,), "ablate"), Intervention((0, 1), "add", 1.0, "absolute")], typical)(rows)
    expected = ablated - rows + ((d.W_dec[0] + d.W_dec[1]) / d.input_scale).detach()
    assert torch.allclose(both - rows, expected, atol=1e-5)


def test_bad_interventions_are_refused_in_one_line(setup):
    d, _, _, typical = setup
    with pytest.raises(BadInputError, match="outside the dictionary"):
        replacement(d, [Intervention((10,), "add", 1.0)], typical)
    with pytest.raises(BadInputError, match="mode"):
        Intervention((1,), "boost")  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="at least one latent"):
        Intervention(())
    dead = typical.clone()
    dead[3] = 0
    with pytest.raises(BadInputError, match="never fired"):
        replacement(d, [Intervention((3,), "add", 1.0)], dead)
    replacement(d, [Intervention((3,), "add", 1.0, "absolute")], dead)  # absolute units need no typical value


def test_position_mask_counts_negative_positions_from_each_sequence_end():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert position_mask(mask, None).tolist() == mask.bool().tolist()
    assert position_mask(mask, [-1]).tolist() == [[False, False, False, True], [False, True, False, False]]
    assert position_mask(mask, [0, 3]).tolist() == [[True, False, False, True], [True, False, False, False]]
