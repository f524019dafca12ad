"""ActivationStore: the read view of a store of activations as chunked Zarr v3 arrays.

Layout (a Zarr group; every array shares the row axis and is chunked by whole rows)::

    zarr.json                 attributes: format, d_in, dtype, layout, source, provenance, summary
    acts        (N, d)        float32 | float16 | uint16 holding bfloat16 (attrs: logical_dtype)
    grads       (N, d)        optional, like acts
    token_ids / doc_ids / seq_ids / positions (N,)   optional integer columns
    chunk_stats (C, 2d+1)     per-chunk float64 sum, sum of squares, sum of squared row norms
    acts_<i>, chunk_stats_<i> a store of several sites: site i > 0's rows and statistics (attribute sites)
    writers/<rank>            group per writer; its attributes are the commit marker
    ground_truth/...          optional arrays a synthetic source knows (true features, ...)

Chunk ``c`` (rows ``c*R .. (c+1)*R``) belongs to writer ``c % world_size``. A writer writes whole
chunks it owns, then its chunk statistics, then advances its marker (an atomic file replace), so a
killed writer resumes at its marker and readers only ever see committed chunks. Every chunk file
ends in its crc32c (format 2, see ``_format``); creating a store is ``_creation``'s job,
filling it ``_writer``'s.
"""

from __future__ import annotations

import json
import math
import shlex
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import BadInputError, CorruptStoreError, StoreError
from ._location import Location
from ._format import (  # noqa: F401  (re-exported: the store's public constants)
    ACT_COLUMNS,
    CHECKSUM_BYTES,
    FORMAT_NAME,
    FORMAT_VERSION,
    STORAGE_DTYPES,
    STORE_MEMBERS,
    ChunkRef,
    chunk_checksum_ok,
    default_rows_per_chunk,
    default_write_shuffle_rows,
    has_checksum,
    site_column,
    site_stats,
    read_only_bytes,
    to_float32,
    to_storage,
)

if TYPE_CHECKING:  # pragma: no cover
    from ._reader import ShuffledReader


class ActivationStore:
    """An opened store. Use :func:`open_store` to open one and ``creation.create_store`` to make one."""

    def __init__(self, location: Location, group: Any):
        self.location = location
        self.group = group
        self.attrs: dict[str, Any] = dict(group.attrs)
        if self.attrs.get("format") != FORMAT_NAME:
            raise CorruptStoreError(
                f"{location} is a Zarr group but not a featureforge activation store (no 'format' attribute); "
                "point --store at a store written by `featureforge cache`"
            )
        if self.attrs.get("format_version", 0) > FORMAT_VERSION:
            raise StoreError(f"store {location} has format version {self.attrs['format_version']}; upgrade featureforge to read it")
        self._arrays: dict[str, Any] = {}
        self._check_layout()

    # -- static layout ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return str(self.location)

    @property
    def d_in(self) -> int:
        return int(self.attrs["d_in"])

    @property
    def dtype(self) -> str:
        """Logical dtype of ``acts``: float32, float16 or bfloat16."""
        return str(self.attrs["dtype"])

    @property
    def rows_per_chunk(self) -> int:
        return int(self.attrs["rows_per_chunk"])

    @property
    def rows_allocated(self) -> int:
        return int(self.attrs["rows_allocated"])

    @property
    def n_chunks(self) -> int:
        return -(-self.rows_allocated // self.rows_per_chunk)

    @property
    def world_size(self) -> int:
        return int(self.attrs["writers"])

    @property
    def write_shuffle_rows(self) -> int:
        """Rows of each writer's write-side shuffle window (0: rows stored in the source's order)."""
        return int(self.attrs.get("write_shuffle_rows") or 0)

    def write_window(self, row: int, committed: list[ChunkRef] | None = None) -> np.ndarray:
        """Committed store rows of the write-shuffle window holding ``row`` (sorted; the row alone when unshuffled).

        A window is ``write_shuffle_rows`` consecutive rows of one writer's share: its chunks
        ``rank, rank + writers, ...`` taken in order (every one full but the store's last).
        ``committed`` (``committed_chunks()``) saves reading the commit markers again per call.
        """
        w, rpc, writers = self.write_shuffle_rows, self.rows_per_chunk, self.world_size
        if not w:
            return np.array([row], dtype=np.int64)
        chunk = row // rpc
        rank, local = chunk % writers, (chunk // writers) * rpc + row % rpc
        mine = np.arange((local // w) * w, (local // w + 1) * w, dtype=np.int64)
        rows = (rank + (mine // rpc) * writers) * rpc + mine % rpc
        filled = np.zeros(self.n_chunks + 1, dtype=np.int64)  # rows of uncommitted chunks are not data
        for ref in self.committed_chunks() if committed is None else committed:
            filled[ref.index] = ref.rows
        rows = rows[rows < self.rows_allocated]
        return rows[filled[rows // rpc] > rows % rpc]

    @property
    def columns(self) -> dict[str, str]:
        """Stored columns and their logical dtypes (``acts`` first)."""
        return dict(self.attrs["columns"])

    @property
    def source(self) -> dict[str, Any]:
        return dict(self.attrs["source"])

    # -- sites --------------------------------------------------------------------------------
    @property
    def site_records(self) -> list[dict[str, Any]]:
        """Each site's ``{name, column, stats, d_in, hook, io}`` in order (a one-site store: its hook, or "acts")."""
        recorded = self.attrs.get("sites")
        if recorded:
            return [dict(site) for site in recorded]
        prov = self.attrs.get("provenance") or {}
        hook = prov.get("hook") or ""
        return [{"name": hook or "acts", "column": "acts", "stats": "chunk_stats", "d_in": int(self.attrs["d_in"]),
                 "hook": hook, "io": prov.get("site") or "output"}]

    @property
    def sites(self) -> list[str]:
        """The store's site names in order; a one-site store has one."""
        return [site["name"] for site in self.site_records]

    def site(self, name: str) -> "ActivationStore":
        """A view of site ``name`` (or of its column, e.g. ``acts_1``) in which ``acts``, ``d_in``, the chunk
        statistics and the normalisation are that site's, so every reader and evaluator works on it."""
        records = self.site_records
        found = next((r for r in records if name in (r["name"], r["column"])), None)
        if found is None:
            raise BadInputError(f"store {self.url} has no site {name!r}; its sites are: {', '.join(self.sites)}")
        return SiteView(self, found, first=found is records[0])

    def stacked(self, names: "Sequence[str]") -> "ActivationStore":
        """A view whose ``acts`` are the rows of sites ``names`` side by side (``[n, S*d]``, site after
        site): what a crosscoder over them encodes, for readers that take one ``acts`` column."""
        return StackedView(self, [self.site(n) for n in names])

    def for_roles(self, roles: "Mapping[str, Any] | None") -> "ActivationStore":
        """The view whose ``acts`` a dictionary with these batch roles encodes (config.json ``sites``):
        its ``acts`` site (a transcoder's source), its ``sites`` side by side (a crosscoder), else this
        store itself (a run on a one-site store)."""
        roles = dict(roles or {})
        whole = getattr(self, "base", self)
        if roles.get("acts"):
            return whole.site(roles["acts"])
        if roles.get("sites"):
            return whole.stacked(list(roles["sites"]))
        return self

    @property
    def site_name(self) -> str:
        """The name of the site whose rows ``acts`` holds (the first site of a whole store)."""
        return self.site_records[0]["name"]

    @property
    def stats_arrays(self) -> list[str]:
        """Every statistics array of the store (``chunk_stats``, then each further site's)."""
        return [site["stats"] for site in self.site_records]

    def width(self, column: str) -> int | None:
        """Row width of an activation column (``None``: a per-row scalar column such as ``token_ids``)."""
        if column in ACT_COLUMNS:
            return self.d_in
        return next((int(s["d_in"]) for s in self.site_records if s["column"] == column), None)

    def array_name(self, name: str) -> str:
        """The stored array behind a name this view reads (a site view reads its own column as ``acts``)."""
        return name

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.attrs.get("provenance", {}))

    @property
    def checksummed(self) -> bool:
        """Whether chunk files end in a crc32c (stores of format version 1 have none)."""
        return has_checksum(self.array("acts"))

    def chunk_rows(self, index: int) -> int:
        return min(self.rows_per_chunk, self.rows_allocated - index * self.rows_per_chunk)

    def owner(self, index: int) -> int:
        return index % self.world_size

    def array(self, name: str) -> Any:
        """A stored array, or a one-line error naming its missing or damaged metadata file."""
        name = self.array_name(name)
        if name not in self._arrays:
            try:
                self._arrays[name] = self.group[name]
            except Exception as exc:
                problem = "is missing" if isinstance(exc, KeyError) else f"is damaged ({type(exc).__name__})"
                raise CorruptStoreError(
                    f"store {self.url}: {name}/zarr.json (the metadata of array {name!r}) {problem}; "
                    f"rebuild it from the store's attributes with `{self.repair_command()}`"
                ) from None
        return self._arrays[name]

    def _check_layout(self) -> None:
        """Root attributes that disagree with the arrays are damaged attributes, not damaged chunks."""
        acts = self.array("acts")
        want = {"d_in": acts.shape[1], "rows_allocated": acts.shape[0], "rows_per_chunk": acts.chunks[0]}
        for key, actual in want.items():
            if self.attrs.get(key) != actual:
                raise CorruptStoreError(
                    f"store {self.url}: zarr.json says {key}={self.attrs.get(key)!r} but acts/zarr.json holds {key}={actual}; "
                    f"the root attributes are damaged, the data is not: set \"{key}\": {actual} in {self.location.key_path('zarr.json')} "
                    "(do not pass --overwrite, which would delete the data)"
                )

    # -- chunk files --------------------------------------------------------------------------
    def chunk_key(self, name: str, index: int) -> str:
        arr = self.array(name)
        return f"{self.array_name(name)}/{arr.metadata.encode_chunk_key((index,) + (0,) * (arr.ndim - 1))}"

    def chunk_payload_bytes(self, name: str) -> int:
        """Bytes of one chunk's data in a chunk file (edge chunks are padded to full size)."""
        arr = self.array(name)
        return int(np.prod(arr.chunks)) * arr.dtype.itemsize

    def chunk_file_bytes(self, name: str) -> int:
        return self.chunk_payload_bytes(name) + (CHECKSUM_BYTES if has_checksum(self.array(name)) else 0)

    def rows_text(self, index: int) -> str:
        start = index * self.rows_per_chunk
        return f"rows {start}–{start + self.chunk_rows(index) - 1}"

    def chunk_problem(self, name: str, index: int) -> str | None:
        """What is wrong with one chunk file (missing, wrong size, failed checksum), or None."""
        key = self.chunk_key(name, index)
        want = self.chunk_file_bytes(name)
        try:
            data = self.location.read_bytes(key)
        except FileNotFoundError:
            return "is missing"
        if len(data) != want:
            return f"is truncated or damaged ({len(data)} bytes, expected {want})"
        if has_checksum(self.array(name)):
            payload = read_only_bytes(np.frombuffer(data, dtype=np.uint8, count=want - CHECKSUM_BYTES))
            if not chunk_checksum_ok(payload, data[-CHECKSUM_BYTES:]):
                return "fails its checksum (its bytes changed after they were written)"
        return None

    def damage_error(self, key: str, what: str, problem: str, index: int | None = None) -> CorruptStoreError:
        rank = None if index is None else self.owner(index)
        return CorruptStoreError(f"store {self.url}: chunk {key} ({what}) {problem}; repair it with `{self.repair_command(rank)}`")

    def verify(self, progress: Callable[[int], None] | None = None) -> list[str]:
        """Check every committed chunk of every array (size and checksum); returns one line per damaged chunk.

        ``progress`` is called with the rows checked after each chunk.
        """
        damaged = []
        names = list(self.columns) + self.stats_arrays
        for ref in self.committed_chunks():
            for name in names:
                problem = self.chunk_problem(name, ref.index)
                if problem:
                    damaged.append(f"chunk {self.chunk_key(name, ref.index)} ({self.rows_text(ref.index)}) {problem}")
            if progress is not None:
                progress(ref.rows)
        return damaged

    def repair_command(self, rank: int | None = None) -> str:
        """The `featureforge cache` command that made this store, with ``--repair``."""
        source = self.attrs.get("source") or {}
        words = ["featureforge", "cache", "--source", str(source.get("name", "SOURCE"))]
        for key, value in (source.get("options") or {}).items():
            words += ["-o", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
        words += ["--rows", str(self.attrs.get("rows_allocated")), "--rows-per-chunk", str(self.attrs.get("rows_per_chunk"))]
        if self.attrs.get("dtype", "float32") != "float32":
            words += ["--dtype", str(self.attrs["dtype"])]
        if self.write_shuffle_rows or "write_shuffle_rows" not in self.attrs:  # stores from before it: no shuffle
            words += ["--write-shuffle-rows", str(self.write_shuffle_rows)]
        if int(self.attrs.get("writers", 1)) > 1:
            words += ["--world-size", str(self.attrs["writers"]), "--rank", "RANK" if rank is None else str(rank)]
        words += ["--store", self.url, "--repair"]
        return " ".join(shlex.quote(w) for w in words)

    # -- commit state -------------------------------------------------------------------------
    def marker(self, rank: int) -> dict[str, Any]:
        """Writer ``rank``'s commit marker, read fresh from the store."""
        try:
            return dict(self.group[f"writers/{rank}"].attrs)
        except KeyError:
            return {"chunks": 0, "last_chunk_rows": None, "done": False}
        except Exception as exc:
            raise CorruptStoreError(
                f"store {self.url}: writers/{rank}/zarr.json (writer {rank}'s commit marker) is damaged ({type(exc).__name__}); "
                f"rebuild it with `{self.repair_command(rank)}`"
            ) from None

    def markers(self) -> list[dict[str, Any]]:
        """Each writer's commit marker, read fresh from the store."""
        return [self.marker(rank) for rank in range(self.world_size)]

    def committed_chunks(self) -> list[ChunkRef]:
        """Every committed chunk in index order; uncommitted ones are never read."""
        refs = []
        for rank, marker in enumerate(self.markers()):
            n = int(marker.get("chunks", 0))
            for i in range(n):
                index = rank + i * self.world_size
                rows = self.chunk_rows(index)
                if i == n - 1 and marker.get("last_chunk_rows") is not None:
                    rows = int(marker["last_chunk_rows"])
                refs.append(ChunkRef(index, rows))
        return sorted(refs, key=lambda r: r.index)

    @property
    def rows(self) -> int:
        """Committed rows: what a reader will see."""
        return sum(ref.rows for ref in self.committed_chunks())

    @property
    def complete(self) -> bool:
        return all(m.get("done") for m in self.markers())

    # -- statistics ---------------------------------------------------------------------------
    def normalisation(self) -> dict[str, Any]:
        """Mean, std and mean squared norm over committed rows, merged from per-chunk sums.

        ``scale`` = sqrt(d_in / E‖x‖²) maps rows to mean squared norm d_in, the convention
        of SAELens' ``normalize_activations="expected_average_only_in"``.
        """
        summary = self.attrs.get("summary")
        if summary and summary.get("rows") == self.rows and "normalisation" in summary:
            return self._summary_normalisation(summary)
        return self._compute_normalisation()

    def _summary_normalisation(self, summary: dict[str, Any]) -> dict[str, Any]:
        return summary["normalisation"]

    def _compute_normalisation(self) -> dict[str, Any]:
        refs = self.committed_chunks()
        d = self.d_in
        if not refs:
            return {"rows": 0}
        stats = self.array("chunk_stats")
        total = np.zeros(2 * d + 1, dtype=np.float64)
        for ref in refs:
            try:
                total += stats[ref.index]
            except Exception:
                raise self._named_damage("chunk_stats", ref.index, ref.index + 1) from None
        n = sum(ref.rows for ref in refs)
        mean = total[:d] / n
        var = np.maximum(total[d : 2 * d] / n - mean**2, 0.0)
        mean_sq_norm = float(total[2 * d] / n)
        return {
            "rows": n,
            "mean": mean.tolist(),
            "std": np.sqrt(var).tolist(),
            "mean_squared_norm": mean_sq_norm,
            "scale": math.sqrt(d / mean_sq_norm) if mean_sq_norm > 0 else 1.0,
        }

    # -- reading ------------------------------------------------------------------------------
    def loader(self, batch_size: int = 4096, **kwargs: Any) -> "ShuffledReader":
        """A chunk-shuffled, buffered, prefetching reader of committed rows (see ``_reader``)."""
        from ._reader import ShuffledReader

        return ShuffledReader(self, batch_size=batch_size, **kwargs)

    def read(self, start: int, stop: int, column: str = "acts") -> np.ndarray:
        """Rows ``start:stop`` of a column in storage order, as float32 for activation columns."""
        if column not in self.columns:
            raise BadInputError(f"store {self.url} has no column {column!r}; it has: {', '.join(self.columns)}")
        rpc = self.rows_per_chunk
        try:
            data = self.array(column)[start:stop]
        except CorruptStoreError:
            raise
        except Exception:  # zarr cannot decode a chunk (bad size or checksum): name it
            raise self._named_damage(column, start // rpc, -(-stop // rpc)) from None
        return to_float32(data, self.columns[column]) if self.width(column) is not None else data

    def _named_damage(self, name: str, first: int, stop: int) -> CorruptStoreError:
        for index in range(first, stop):
            problem = self.chunk_problem(name, index)
            if problem:
                return self.damage_error(self.chunk_key(name, index), self.rows_text(index), problem, index)
        return CorruptStoreError(f"store {self.url}: cannot decode {name} chunks {first}–{stop - 1}; check them with `featureforge info {self.url} --verify`")

    def ground_truth(self) -> dict[str, np.ndarray] | None:
        if "ground_truth" not in self.group:
            return None
        gt = self.group["ground_truth"]
        return {name: arr[...] for name, arr in gt.arrays()}

    def info(self) -> dict[str, Any]:
        """What ``featureforge info`` prints."""
        refs = self.committed_chunks()
        rows = sum(r.rows for r in refs)
        norm = self.normalisation()
        return {
            "store": self.url,
            "format_version": self.attrs.get("format_version"),
            "checksums": "crc32c" if self.checksummed else None,
            "rows": rows,
            "rows_allocated": self.rows_allocated,
            "complete": self.complete,
            "d_in": self.d_in,
            "dtype": self.dtype,
            "columns": self.columns,
            "rows_per_chunk": self.rows_per_chunk,
            "write_shuffle_rows": self.write_shuffle_rows,
            "chunks_committed": len(refs),
            "chunks": self.n_chunks,
            "writers": self.world_size,
            "source": self.source,
            "provenance": self.provenance,
            "normalisation": {k: norm[k] for k in ("rows", "mean_squared_norm", "scale") if k in norm}
            | ({"mean_abs_mean": float(np.mean(np.abs(norm["mean"]))), "mean_std": float(np.mean(norm["std"]))} if "mean" in norm else {}),
            "ground_truth": sorted(self.ground_truth() or {}),
        } | ({"sites": self._sites_info()} if len(self.site_records) > 1 else {})

    def _sites_info(self) -> list[dict[str, Any]]:
        """Each site's layout and normalisation, as ``featureforge info`` shows them."""
        out = []
        for record in self.site_records:
            norm = self.site(record["name"]).normalisation()
            out.append(record | {"normalisation": {k: norm[k] for k in ("rows", "mean_squared_norm", "scale") if k in norm}})
        return out

    def refresh(self) -> "ActivationStore":
        return open_store(self.location)


class SiteView(ActivationStore):
    """One site of a store seen as a store of its own: ``acts`` are the site's rows, ``d_in`` its width,
    ``chunk_stats`` and the normalisation its own; the per-row columns (token ids, ...) are shared, and
    ``grads`` belong to the first site only. Writing goes through the whole store, never a view."""

    def __init__(self, base: ActivationStore, record: dict[str, Any], first: bool):
        self.location = base.location
        self.group = base.group
        self.attrs = base.attrs
        self._arrays = {}
        self._record = dict(record)
        self._first = first
        self.base = base

    @property
    def d_in(self) -> int:
        return int(self._record["d_in"])

    @property
    def site_records(self) -> list[dict[str, Any]]:
        return [dict(self._record)]

    @property
    def columns(self) -> dict[str, str]:
        whole = dict(self.attrs["columns"])
        others = {s["column"] for s in self.base.site_records} | ({"grads"} if not self._first else set())
        return {"acts": whole[self._record["column"]]} | {k: v for k, v in whole.items() if k not in others}

    def site(self, name: str) -> "ActivationStore":
        return self.base.site(name)

    @property
    def provenance(self) -> dict[str, Any]:
        """The store's provenance as a one-site store of this site would record it (its hook and io), so
        a source rebuilt for this site matches and exports name this site's hook."""
        prov = {k: v for k, v in self.base.provenance.items() if k != "hooks"}
        if prov and self._record.get("hook"):
            prov.update(hook=self._record["hook"], hook_name=self._record["hook"], site=self._record.get("io") or prov.get("site"))
        return prov

    def array_name(self, name: str) -> str:
        return {"acts": self._record["column"], "chunk_stats": self._record["stats"]}.get(name, name)

    def _summary_normalisation(self, summary: dict[str, Any]) -> dict[str, Any]:
        by_site = summary.get("site_normalisation") or {}
        if self._record["name"] in by_site:
            return by_site[self._record["name"]]
        return summary["normalisation"] if self._first else self._compute_normalisation()

    def ground_truth(self) -> dict[str, np.ndarray] | None:
        """The store's ground truth, with ``features`` this site's: ``features_<site>`` for a site after the
        first (none when the source stored none for it), so the ground-truth evaluator scores a view."""
        truth = self.base.ground_truth()
        if truth is None or self._first:
            return truth
        own = truth.get(f"features_{self._record['name']}")
        truth = {k: v for k, v in truth.items() if k != "features"}
        return truth | ({"features": own} if own is not None else {})

    def info(self) -> dict[str, Any]:
        return self.base.info() | {"site": self._record["name"], "d_in": self.d_in}

    def refresh(self) -> "ActivationStore":
        return self.base.refresh().site(self._record["name"])


class StackedView(SiteView):
    """Several sites of one width side by side: ``acts`` rows are ``[n, S*d]`` (each site's own rows,
    in order), the per-row columns are the store's; statistics and writing belong to the sites."""

    def __init__(self, base: ActivationStore, views: "list[ActivationStore]"):
        widths = {v.d_in for v in views}
        if not views or len(widths) != 1:
            raise BadInputError(f"sites {', '.join(v.site_name for v in views)} of store {base.url} have widths "
                                f"{sorted(widths)}; stack sites of one width")
        first = views[0]
        super().__init__(base, first.site_records[0], first.site_records[0] is base.site_records[0])
        self.views = list(views)

    @property
    def d_in(self) -> int:
        return sum(v.d_in for v in self.views)

    @property
    def stacked_sites(self) -> list[str]:
        """The stacked sites' names, in order."""
        return [v.site_name for v in self.views]

    def read(self, start: int, stop: int, column: str = "acts") -> np.ndarray:
        if column != "acts":
            return super().read(start, stop, column)
        return np.concatenate([v.read(start, stop) for v in self.views], axis=1)

    def normalisation(self) -> dict[str, Any]:
        raise BadInputError(f"stacked sites {', '.join(self.stacked_sites)} have one normalisation each; read it from store.site(NAME)")

    def info(self) -> dict[str, Any]:
        return self.base.info() | {"stacked_sites": self.stacked_sites, "d_in": self.d_in}

    def refresh(self) -> "ActivationStore":
        return self.base.refresh().stacked(self.stacked_sites)


# -- opening and creating -------------------------------------------------------------------------
def open_store(location: str | Any, storage_options: dict[str, Any] | None = None) -> ActivationStore:
    """Open an existing store at a path or fsspec URL."""
    import zarr

    loc = location if isinstance(location, Location) else Location(location, storage_options)
    if not loc.exists():
        if loc.exists("acts/zarr.json") or loc.exists("writers/0/zarr.json"):
            raise CorruptStoreError(
                f"{loc} holds a store's arrays but its root zarr.json is missing; recover it by rerunning the "
                f"`featureforge cache` command that made the store with --repair (it rewrites zarr.json from that command's options)"
            )
        raise StoreError(f"no activation store at {loc}; create one with `featureforge cache --store {loc} ...`")
    try:
        group = zarr.open_group(loc.zarr_store(), mode="r+" if not loc.remote else "a")
    except Exception as exc:
        raise CorruptStoreError(f"cannot open store {loc}: {type(exc).__name__}: {exc}; the store's zarr.json is damaged") from None
    return ActivationStore(loc, group)
