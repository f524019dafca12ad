"""Which store sites fill each batch role of a member, and training one dictionary per site.

A trainer names the roles its ``loss`` reads (``acts``, ``target``, ``sites``, ``grads``) and
``DictionaryTrainer.sites_for`` maps them to the store's sites; :class:`MemberSites` turns that
mapping into store columns to read, each site's normalisation scale, and the batch a member sees:
``acts`` [n, d] one site's rows, ``target`` [n, d_tgt] another's, ``sites`` [n, S, d] several stacked,
each site in its own training units. ``--sites all`` (``member_specs``) makes one member per site,
trained in the same pass over the data as a sweep's members (docs/store.md, "Several sites").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from ..errors import BadInputError, OptionError
from ..roles import DictionaryTrainer

if TYPE_CHECKING:  # pragma: no cover
    from ..store._view import ActivationStore

__all__ = ["MemberSites", "chosen_sites", "column_scales", "member_specs"]


def column_scales(store: "ActivationStore", columns: Sequence[str], normalise: bool) -> dict[str, float]:
    """Each activation column's normalisation scale: its site's (``grads``: the first site's), 1.0 without normalising."""
    by_column = {r["column"]: r["name"] for r in store.site_records}
    scales: dict[str, float] = {}
    for column in columns:
        if store.width(column) is None:
            continue
        if not normalise:
            scales[column] = 1.0
            continue
        site = by_column.get(column, store.site_records[0]["name"])  # grads belong to the first site
        view = store if site == store.site_records[0]["name"] else store.site(site)
        scales[column] = float(view.normalisation().get("scale", 1.0))
    return scales


class MemberSites:
    """One member's role -> site mapping, checked against the store, and the batches it implies."""

    def __init__(self, store: "ActivationStore", roles: Mapping[str, Any], trainer: DictionaryTrainer):
        self.store = store
        records = {r["name"]: r for r in store.site_records}
        unknown = [role for role in roles if role not in DictionaryTrainer.SITE_ROLES]
        if unknown:
            raise OptionError(f"trainer {trainer.name!r} maps role(s) {', '.join(unknown)} to sites; the loop fills only "
                              f"{', '.join(DictionaryTrainer.SITE_ROLES)}")
        if "sites" in roles and ("acts" in roles or "target" in roles):
            raise OptionError(f"trainer {trainer.name!r} maps both sites and acts/target; a crosscoder reads sites alone")
        if "acts" not in roles and "sites" not in roles:
            raise OptionError(f"trainer {trainer.name!r} maps neither acts nor sites to a store site; sites_for must name one")
        self.roles: dict[str, Any] = {}
        for role, value in roles.items():
            names = (value,) if isinstance(value, str) else tuple(value)
            if role != "sites" and len(names) != 1:
                raise OptionError(f"trainer {trainer.name!r} maps role {role!r} to {len(names)} sites; only sites takes several")
            missing = [n for n in names if n not in records]
            if missing:
                raise BadInputError(f"store {store.url} has no site {missing[0]!r}; its sites are: {', '.join(store.sites)}; "
                                    "pick one with --site NAME or the trainer's site options")
            self.roles[role] = names if role == "sites" else names[0]
        if "grads" in self.roles and self.roles["grads"] != store.site_records[0]["name"]:
            raise BadInputError(f"store {store.url} holds gradients for its first site {store.sites[0]!r} only, not "
                                f"{self.roles['grads']!r}; train on --site {store.sites[0]}")
        self.records = records
        if "sites" in self.roles:
            widths = {int(records[n]["d_in"]) for n in self.roles["sites"]}
            if len(widths) != 1:
                shown = ", ".join(f"{n} ({records[n]['d_in']})" for n in self.roles["sites"])
                raise BadInputError(f"trainer {trainer.name!r} stacks sites of different widths: {shown}; pick sites of one width")
        self.extra = [c for c in trainer.columns if c not in DictionaryTrainer.SITE_ROLES]
        self.reference = "target" if "target" in self.roles else "sites" if "sites" in self.roles else "acts"
        self.reference_key = (self.reference, self.roles[self.reference])

    def column(self, site: str) -> str:
        return self.records[site]["column"]

    def store_columns(self) -> list[str]:
        """The store columns this member reads, in role order, then the trainer's other columns."""
        cols: list[str] = []
        for role, value in self.roles.items():
            if role == "grads":
                cols.append("grads")
            elif role == "sites":
                cols += [self.column(n) for n in value]
            else:
                cols.append(self.column(value))
        return list(dict.fromkeys(cols + self.extra))

    @property
    def d_in(self) -> int:
        """What ``build`` gets: the ``acts`` width, or the common width of the stacked sites."""
        first = self.roles["acts"] if "acts" in self.roles else self.roles["sites"][0]
        return int(self.records[first]["d_in"])

    def widths(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for role, value in self.roles.items():
            if role == "sites":
                out[role] = (len(value), self.d_in)
            elif role != "grads":
                out[role] = int(self.records[value]["d_in"])
        return out

    def scales(self, scales: Mapping[str, float]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for role, value in self.roles.items():
            if role == "sites":
                out[role] = tuple(scales[self.column(n)] for n in value)
            elif role != "grads":
                out[role] = scales[self.column(value)]
        return out

    def input_scale(self, scales: Mapping[str, float]) -> float:
        """The scale of ``acts`` (what ``Dictionary.input_scale`` holds); 1.0 for stacked sites, whose
        per-site scales are in ``role_scales`` and config.json's ``normalisation.sites``."""
        return scales[self.column(self.roles["acts"])] if "acts" in self.roles else 1.0

    def site_scales(self, scales: Mapping[str, float]) -> dict[str, float]:
        names = [n for role, v in self.roles.items() if role != "grads" for n in ((v,) if isinstance(v, str) else v)]
        return {n: scales[self.column(n)] for n in dict.fromkeys(names)}

    def recorded(self) -> dict[str, Any] | None:
        """config.json's ``sites``: the mapping, or None for a plain run on a one-site store (recorded as before)."""
        if len(self.store.site_records) == 1 and set(self.roles) <= {"acts", "grads"}:
            return None
        return {role: list(v) if isinstance(v, tuple) else v for role, v in self.roles.items()}

    def store_identity(self, identity: dict[str, Any]) -> dict[str, Any]:
        """config.json's ``store`` for this member: the whole store's, plus ``site`` (the record of the
        site ``acts`` come from) with the provenance's hook point (``hook``, ``hook_name``, ``site``)
        that site's, so exports name where the dictionary reads (SAELens ``hook_name``)."""
        if "acts" not in self.roles or not self.recorded():
            return identity
        record = self.records[self.roles["acts"]]
        provenance = dict(identity.get("provenance") or {})
        if record.get("hook") and "hook" in provenance:
            provenance.update({"hook": record["hook"], "hook_name": record["hook"], "site": record.get("io", "output")})
        return identity | {"site": record, "provenance": provenance}

    def sample(self, columns: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The initialisation sample ``initialize`` gets: the ``acts`` rows, or the stacked sites [n, S, d]."""
        if "acts" in self.roles:
            return columns[self.column(self.roles["acts"])]
        return torch.stack([columns[self.column(n)] for n in self.roles["sites"]], dim=1)

    def batch(self, part: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The member's batch (roles, then the trainer's other columns) from the shard's columns on the device."""
        out: dict[str, torch.Tensor] = {}
        for role, value in self.roles.items():
            if role == "grads":
                out[role] = part["grads"]
            elif role == "sites":
                out[role] = torch.stack([part[self.column(n)] for n in value], dim=1)
            else:
                out[role] = part[self.column(value)]
        for column in self.extra:
            out[column] = part[column]
        return out


def chosen_sites(store: "ActivationStore", site: str | None, sites: str | Sequence[str] | None) -> list[str | None]:
    """The sites to train on: ``[site]``, every site (``sites="all"``) or the listed ones; ``[None]``: the trainer's choice."""
    if sites is None:
        if site is not None and site not in store.sites:
            raise BadInputError(f"store {store.url} has no site {site!r}; its sites are: {', '.join(store.sites)}")
        return [site]
    names = [s.strip() for s in sites.split(",")] if isinstance(sites, str) else [str(s) for s in sites]
    if names == ["all"]:
        return list(store.sites)
    missing = [n for n in names if n not in store.sites]
    if missing or not names:
        raise BadInputError(f"store {store.url} has no site {(missing or [''])[0]!r}; its sites are: {', '.join(store.sites)}; "
                            "pass --sites all or a comma list of them")
    return list(dict.fromkeys(names))


def site_folder(site: str) -> str:
    """A site's member folder name (its name; ``/`` cannot be in a folder name)."""
    return site.replace("/", "_")


def member_specs(trainer_cls: type[DictionaryTrainer], variants: list[tuple[str, dict[str, Any]]], store: "ActivationStore",
                 site: str | None, sites: str | Sequence[str] | None) -> list[tuple[str, DictionaryTrainer, MemberSites]]:
    """(label, trainer, sites) per member: each swept variant, on each chosen site."""
    chosen = chosen_sites(store, site, sites)
    specs = []
    for name in chosen:
        for label, opts in variants:
            trainer = trainer_cls(opts)
            member = MemberSites(store, trainer.sites_for(store.sites, name), trainer)
            if sites is not None:
                label = site_folder(str(name)) + (f",{label}" if label else "")
            specs.append((label, trainer, member))
    return specs
