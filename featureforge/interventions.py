"""One intervention model for a dictionary's latents at a hook point: ``add``, ``clamp``, ``ablate``.

Splicing for evaluation, ``featureforge steer``, the ``steering`` evaluator and dashboards all use
it. A source applies it through its splice seam: an intervention becomes a row replacement
(``rows [n, d] -> rows``) that the live model puts in place of the hook point's tensor at the
chosen positions, so there is one hook mechanism for splicing and steering.

Every mode edits the codes and adds the *decoded difference* to the activation, keeping the
dictionary's error term ``x - x̂`` so that only the chosen latents change::

    z = encode(x);  z' = z with the chosen latents edited;  x' = x + decode(z') - decode(z)
    add:    z'_i = z_i + α·u_i          clamp:  z'_i = α·u_i          ablate:  z'_i = 0

``u_i`` is the latent's typical firing value (``units="typical"``: the mean of its non-zero codes
on store rows) or 1 (``units="absolute"``, code units). With a linear decoder ``add`` is
``x + α·u_i·d_i`` (``d_i`` the decoder row in original units), whatever the context. An edit that
changes no code (ablating a latent that does not fire, adding α = 0) gives ``x`` back bit for bit.

Directions (:class:`DirectionEdit`): a steering vector, a latent's decoder row or several of them
(a subspace) act on the activation itself. With unit directions ``v_j`` (each with its typical
size ``s_j``, or 1 in absolute units) and ``P`` the orthogonal projector on their span::

    add:    x' = x + α·Σ_j s_j·v_j      clamp:  x' = x - P·x + α·P·Σ_j s_j·v_j      ablate:  x' = x - P·x

so ``add`` of a latent's unit decoder row with ``s = u_i·|d_i|`` is the latent ``add`` above, and
one intervention model scores latents and vectors alike. α = 0 in ``add`` gives ``x`` bit for bit.

Dictionaries that read one site and write another (issue #23): a latent edit is a
:class:`featureforge.live.ReadEdit`, so the codes come from what the dictionary reads and the
decoded difference lands where it writes. A transcoder: ``z = encode(x_source)`` and the target
site's rows (an MLP's output) become ``y + decode(z') - decode(z)``: ``add`` is ``y + α·u_i·d_i``
with ``d_i`` the decoder row in the target's raw units, clamp and ablate add ``(z'_i - z_i)·d_i``,
and the rest of the output (the transcoder's error, its skip term) is kept. A crosscoder: ``z``
from every site's clean rows at once, and each site gets its own slice of the decoded difference.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Literal, Sequence

import torch

from .errors import BadInputError
from .live import ReadEdit

Mode = Literal["add", "clamp", "ablate"]
Units = Literal["typical", "absolute"]
MODES: tuple[str, ...] = ("add", "clamp", "ablate")
DirectionMode = Mode
UNITS: tuple[str, ...] = ("typical", "absolute")


@dataclasses.dataclass(frozen=True)
class Intervention:
    """Edit of some latents' codes: ``mode`` with strength ``value`` (α) in ``units``."""

    latents: tuple[int, ...]
    mode: Mode = "add"
    #: α: the added amount (add) or the target code (clamp), in ``units``; ignored by ablate.
    value: float = 0.0
    units: Units = "typical"

    def __post_init__(self) -> None:
        latents = (self.latents,) if isinstance(self.latents, int) else tuple(int(i) for i in self.latents)
        object.__setattr__(self, "latents", latents)
        if not latents:
            raise BadInputError("an intervention needs at least one latent; pass e.g. --latent 123")
        if self.mode not in MODES:
            raise BadInputError(f"intervention mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.units not in UNITS:
            raise BadInputError(f"intervention units {self.units!r} are not one of {', '.join(UNITS)}")

    def check(self, d_dict: int, typical: torch.Tensor | None) -> None:
        """Refuse latents outside the dictionary, and typical units without a firing value."""
        bad = [i for i in self.latents if not 0 <= i < d_dict]
        if bad:
            raise BadInputError(f"latent {bad[0]} is outside the dictionary (0..{d_dict - 1}); pick a latent below d_dict={d_dict}")
        if self.mode != "ablate" and self.units == "typical":
            if typical is None:
                raise BadInputError("typical units need the latents' firing values (a store); pass units='absolute' or a store")
            silent = [i for i in self.latents if float(typical[i]) <= 0]
            if silent:
                raise BadInputError(f"latent {silent[0]} never fired on the store sample, so it has no typical value; pass --units absolute")


def edit_codes(codes: torch.Tensor, interventions: Sequence[Intervention], typical: torch.Tensor | None) -> torch.Tensor:
    """A copy of ``codes [n, d_dict]`` with every intervention applied in order."""
    out = codes.clone()
    for iv in interventions:
        idx = torch.as_tensor(iv.latents, device=codes.device)
        if iv.mode == "ablate":
            out[:, idx] = 0
            continue
        scale = typical.to(codes.device, codes.dtype)[idx] if iv.units == "typical" else torch.ones(len(idx), device=codes.device, dtype=codes.dtype)
        amount = float(iv.value) * scale
        out[:, idx] = out[:, idx] + amount if iv.mode == "add" else amount.expand(out.shape[0], -1).clone()
    return out


def replacement(dictionary: Any, interventions: Sequence[Intervention], typical: torch.Tensor | None = None) -> ReadEdit:
    """The row replacement ``x -> x + decode(z') - decode(z)`` that a live model's splice applies,
    with ``z`` the codes of what the dictionary reads (the rows themselves at a one-site hook)."""
    interventions = list(interventions)
    for iv in interventions:
        iv.check(int(dictionary.d_dict), typical)

    def apply(read: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            codes = dictionary.encode(read.float())
            delta = dictionary.decode(edit_codes(codes, interventions, typical)) - dictionary.decode(codes)
            if tuple(delta.shape) != tuple(rows.shape):
                raise BadInputError(f"the dictionary decodes rows of shape {tuple(delta.shape[1:])} but the site it edits has rows of shape "
                                    f"{tuple(rows.shape[1:])}; steer it in the model (and at the sites) it was trained on")
            return (rows.float() + delta.to(rows.device)).to(rows.dtype)

    return ReadEdit(apply)


@dataclasses.dataclass(frozen=True, eq=False)
class DirectionEdit:
    """Add along, clamp the component in, or project out the span of ``directions [k, d]`` (unit rows)."""

    directions: torch.Tensor
    mode: DirectionMode = "add"
    #: α: in units of ``scales`` (units="typical") or of the activation (absolute).
    value: float = 0.0
    #: Each direction's typical size s_j [k] (a vector's typical projection, a latent's u_i·|d_i|).
    #: ``clamp`` sets the span's component to α·P·Σ_j s_j·v_j.
    scales: torch.Tensor | None = None
    units: Units = "typical"
    #: What the directions are, for reports: ["vector:NAME", "latent:12", ...].
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        directions = torch.as_tensor(self.directions, dtype=torch.float32)
        if directions.ndim == 1:
            directions = directions[None]
        if directions.ndim != 2 or directions.shape[0] < 1:
            raise BadInputError(f"directions must be [k, d] with k >= 1, got shape {tuple(directions.shape)}")
        norms = directions.norm(dim=-1, keepdim=True)
        if bool((norms == 0).any()):
            raise BadInputError("a steering direction is zero; it cannot steer (make the vector from prompt sets that differ)")
        object.__setattr__(self, "directions", directions / norms)
        if self.mode not in MODES:
            raise BadInputError(f"direction mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.units not in UNITS:
            raise BadInputError(f"units {self.units!r} are not one of {', '.join(UNITS)}")
        if self.units == "typical" and self.mode != "ablate":
            if self.scales is None:
                raise BadInputError("typical units need each direction's typical size; pass units='absolute' or the scales")
            scales = torch.as_tensor(self.scales, dtype=torch.float32).reshape(-1)
            if scales.shape[0] != directions.shape[0]:
                raise BadInputError(f"{scales.shape[0]} typical sizes for {directions.shape[0]} directions; give one each")
            object.__setattr__(self, "scales", scales)

    @property
    def push(self) -> torch.Tensor:
        """``Σ_j s_j·v_j`` [d]: the α = 1 edit of ``add`` (and the target of ``clamp``)."""
        scales = self.scales if self.units == "typical" and self.scales is not None else torch.ones(self.directions.shape[0])
        return (scales[:, None] * self.directions).sum(0)

    def basis(self) -> torch.Tensor:
        """[d, r] orthonormal basis of the directions' span (r = rank; QR of the rows)."""
        q, r = torch.linalg.qr(self.directions.double().T)
        keep = r.diagonal().abs() > 1e-6 * float(r.diagonal().abs().max())
        return q[:, keep].float()


def direction_replacement(edit: DirectionEdit) -> Callable[[torch.Tensor], torch.Tensor]:
    """The row replacement of a :class:`DirectionEdit` (see the module docstring's formulas)."""
    shift = float(edit.value) * edit.push
    basis = edit.basis() if edit.mode != "add" else None

    width = int(edit.directions.shape[1])

    def apply(rows: torch.Tensor) -> torch.Tensor:
        if rows.shape[-1] != width:
            raise BadInputError(f"the direction has width {width} but the hook gives rows of width {rows.shape[-1]}; "
                                "apply it at a hook of the width it was made at (--hook)")
        with torch.no_grad():
            x = rows.float()
            if edit.mode == "add":
                return (x + shift.to(x.device)).to(rows.dtype)
            q = basis.to(x.device)
            out = x - (x @ q) @ q.T
            if edit.mode == "clamp":
                out = out + (shift.to(x.device) @ q) @ q.T
            return out.to(rows.dtype)

    return apply


def latent_directions(dictionary: Any, latents: Sequence[int], typical: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(unit decoder rows [k, d] in original units, their typical sizes u_i·|d_i| [k] or None).

    A decoder row in original units is ``decode(e_i) - decode(0)``, whatever the dictionary's
    normalisation, so it is the direction ``add`` moves the activation along (a transcoder's is in
    its target site; a crosscoder's is every site's row side by side, ``[k, S*d]``).
    """
    latents = [int(i) for i in latents]
    d_dict = int(dictionary.d_dict)
    bad = [i for i in latents if not 0 <= i < d_dict]
    if bad:
        raise BadInputError(f"latent {bad[0]} is outside the dictionary (0..{d_dict - 1}); pick a latent below d_dict={d_dict}")
    device = next((p.device for p in dictionary.parameters()), torch.device("cpu")) if isinstance(dictionary, torch.nn.Module) else torch.device("cpu")
    with torch.no_grad():
        eye = torch.zeros(len(latents), d_dict, device=device)
        eye[torch.arange(len(latents)), torch.as_tensor(latents)] = 1.0
        rows = (dictionary.decode(eye) - dictionary.decode(torch.zeros_like(eye[:1]))).float().cpu().reshape(len(latents), -1)
    norms = rows.norm(dim=-1)
    if bool((norms == 0).any()):
        raise BadInputError(f"latent {latents[int((norms == 0).nonzero()[0])]} has a zero decoder row; it has no direction")
    scales = None if typical is None else typical.float().cpu()[torch.as_tensor(latents)] * norms
    return rows / norms[:, None], scales


def typical_values(dictionary: Any, blocks: Iterable[Any], max_rows: int = 65_536) -> torch.Tensor:
    """Mean non-zero code of each latent over rows (zero for latents that never fire): the unit of α."""
    total = torch.zeros(int(dictionary.d_dict), dtype=torch.float64)
    count = torch.zeros(int(dictionary.d_dict), dtype=torch.float64)
    seen = 0
    device = next((p.device for p in dictionary.parameters()), torch.device("cpu")) if isinstance(dictionary, torch.nn.Module) else torch.device("cpu")
    with torch.no_grad():
        for block in blocks:
            rows = torch.as_tensor(block)[: max_rows - seen].to(device)
            codes = dictionary.encode(rows.float()).double().cpu()
            active = codes != 0
            total += (codes * active).sum(0)
            count += active.sum(0)
            seen += rows.shape[0]
            if seen >= max_rows:
                break
    return (total / count.clamp_min(1)).float()


def position_mask(attention_mask: torch.Tensor, positions: Sequence[int] | None) -> torch.Tensor:
    """Bool [b, t]: the chosen positions of each sequence (negative: from its end), all if None."""
    mask = attention_mask.bool()
    if positions is None:
        return mask
    lengths = mask.sum(1, keepdim=True)
    chosen = torch.zeros_like(mask)
    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    for p in positions:
        target = lengths + int(p) if int(p) < 0 else torch.full_like(lengths, int(p))
        chosen |= idx == target
    return chosen & mask
