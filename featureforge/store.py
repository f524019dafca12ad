"""ActivationStore: activations as chunked Zarr v3 arrays, written crash-safely, read out of core.

Layout (a Zarr group; every array shares the row axis and is chunked by whole rows)::

    zarr.json                 attributes: format, d_in, dtype, layout, source, provenance, summary
    acts        (N, d)        float32 | float16 | uint16 holding bfloat16 (attrs: logical_dtype)
    grads       (N, d)        optional, like acts
    token_ids / doc_ids / positions (N,)   optional integer columns
    chunk_stats (C, 2d+1)     per-chunk float64 sum, sum of squares, sum of squared row norms
    writers/<rank>            group per writer; its attributes are the commit marker
    ground_truth/...          optional arrays a synthetic source knows (true features, ...)

Chunk ``c`` (rows ``c*R .. (c+1)*R``) belongs to writer ``c % world_size``. A writer writes whole
chunks it owns, then its chunk statistics, then advances its marker (an atomic file replace), so a
killed writer resumes at its marker and readers only ever see committed chunks.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .errors import BadInputError, CorruptStoreError, StoreError, StoreMismatchError
from .storage import Location

if TYPE_CHECKING:  # pragma: no cover
    from .reader import ShuffledReader
    from .roles import ActivationSource

FORMAT_VERSION = 1
FORMAT_NAME = "featureforge-activations"
STORAGE_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}
ACT_COLUMNS = ("acts", "grads")
DEFAULT_CHUNK_BYTES = 16 * 2**20
WRITE_CONFIG = {"write_empty_chunks": True}  # the raw reader expects every committed chunk on disk


def default_rows_per_chunk(d_in: int, dtype: str) -> int:
    """About 16 MiB of activations per chunk, a power of two between 256 and 65536 rows."""
    itemsize = 4 if dtype == "float32" else 2
    rows = DEFAULT_CHUNK_BYTES / (d_in * itemsize)
    return int(min(65536, max(256, 2 ** round(math.log2(rows)))))


@dataclass(frozen=True)
class ChunkRef:
    """A committed chunk: its index and how many of its rows hold data."""

    index: int
    rows: int


class ActivationStore:
    """An opened store. Use :func:`open_store` to open one and :func:`create_store` to make one."""

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
    def columns(self) -> dict[str, str]:
        """Stored columns and their logical dtypes (``acts`` first)."""
        return dict(self.attrs["columns"])

    @property
    def source(self) -> dict[str, Any]:
        return dict(self.attrs["source"])

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.attrs.get("provenance", {}))

    def chunk_rows(self, index: int) -> int:
        return min(self.rows_per_chunk, self.rows_allocated - index * self.rows_per_chunk)

    def owner(self, index: int) -> int:
        return index % self.world_size

    # -- commit state -------------------------------------------------------------------------
    def markers(self) -> list[dict[str, Any]]:
        """Each writer's commit marker, read fresh from the store."""
        out = []
        for rank in range(self.world_size):
            try:
                out.append(dict(self.group[f"writers/{rank}"].attrs))
            except KeyError:
                out.append({"chunks": 0, "last_chunk_rows": None, "done": False})
        return out

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
            return summary["normalisation"]
        return self._compute_normalisation()

    def _compute_normalisation(self) -> dict[str, Any]:
        refs = self.committed_chunks()
        d = self.d_in
        if not refs:
            return {"rows": 0}
        stats = self.group["chunk_stats"]
        total = np.zeros(2 * d + 1, dtype=np.float64)
        for ref in refs:
            total += stats[ref.index]
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
        """A chunk-shuffled, buffered, prefetching reader of committed rows (see ``reader.py``)."""
        from .reader import ShuffledReader

        return ShuffledReader(self, batch_size=batch_size, **kwargs)

    def read(self, start: int, stop: int, column: str = "acts") -> np.ndarray:
        """Rows ``start:stop`` of a column in storage order, as float32 for activation columns."""
        if column not in self.columns:
            raise BadInputError(f"store {self.url} has no column {column!r}; it has: {', '.join(self.columns)}")
        data = self.group[column][start:stop]
        return to_float32(data, self.columns[column]) if column in ACT_COLUMNS else data

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
            "rows": rows,
            "rows_allocated": self.rows_allocated,
            "complete": self.complete,
            "d_in": self.d_in,
            "dtype": self.dtype,
            "columns": self.columns,
            "rows_per_chunk": self.rows_per_chunk,
            "chunks_committed": len(refs),
            "chunks": self.n_chunks,
            "writers": self.world_size,
            "source": self.source,
            "provenance": self.provenance,
            "normalisation": {k: norm[k] for k in ("rows", "mean_squared_norm", "scale") if k in norm}
            | ({"mean_abs_mean": float(np.mean(np.abs(norm["mean"]))), "mean_std": float(np.mean(norm["std"]))} if "mean" in norm else {}),
            "ground_truth": sorted(self.ground_truth() or {}),
        }

    def refresh(self) -> "ActivationStore":
        return open_store(self.location)


# -- dtype conversion -----------------------------------------------------------------------------
def to_storage(acts: np.ndarray, dtype: str) -> np.ndarray:
    """Cast float32 rows to the storage dtype (bfloat16 rounds to nearest even, kept as uint16)."""
    if dtype == "float32":
        return np.ascontiguousarray(acts, dtype=np.float32)
    if dtype == "float16":
        return acts.astype(np.float16)
    # Round to nearest even on the upper 16 bits of the float32 pattern: bit-identical to torch's
    # float32 -> bfloat16 cast for finite values and infinities (NaN rows are refused earlier).
    bits = np.ascontiguousarray(acts, dtype=np.float32).view(np.uint32)
    bias = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + bias) >> 16).astype(np.uint16)


def to_float32(data: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float32, copy=False)


# -- opening and creating -------------------------------------------------------------------------
def open_store(location: str | Any, storage_options: dict[str, Any] | None = None) -> ActivationStore:
    """Open an existing store at a path or fsspec URL."""
    import zarr

    loc = location if isinstance(location, Location) else Location(location, storage_options)
    if not loc.exists():
        raise StoreError(f"no activation store at {loc}; create one with `featureforge cache --store {loc} ...`")
    try:
        group = zarr.open_group(loc.zarr_store(), mode="r+" if not loc.remote else "a")
    except Exception as exc:
        raise CorruptStoreError(f"cannot open store {loc}: {type(exc).__name__}: {exc}; the store's zarr.json is damaged") from None
    return ActivationStore(loc, group)


@dataclass
class StoreSpec:
    """What fixes a store's layout and content; a rerun must ask for the same spec to continue."""

    d_in: int
    dtype: str
    rows: int
    rows_per_chunk: int
    writers: int
    columns: dict[str, str]
    source: dict[str, Any]
    provenance: dict[str, Any]

    def identity(self) -> dict[str, Any]:
        return {
            "d_in": self.d_in,
            "dtype": self.dtype,
            "rows_allocated": self.rows,
            "rows_per_chunk": self.rows_per_chunk,
            "writers": self.writers,
            "columns": self.columns,
            "source": {"name": self.source["name"], "options": self.source["options"]},
        }


def _existing_identity(attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        "d_in": attrs.get("d_in"),
        "dtype": attrs.get("dtype"),
        "rows_allocated": attrs.get("rows_allocated"),
        "rows_per_chunk": attrs.get("rows_per_chunk"),
        "writers": attrs.get("writers"),
        "columns": attrs.get("columns"),
        "source": {"name": attrs.get("source", {}).get("name"), "options": attrs.get("source", {}).get("options")},
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diffs = []
    for key in new:
        if key == "source":
            if old["source"]["name"] != new["source"]["name"]:
                diffs.append(f"source {old['source']['name']!r} (asked {new['source']['name']!r})")
            else:
                o, n = old["source"]["options"] or {}, new["source"]["options"]
                for k in sorted(set(o) | set(n)):
                    if o.get(k) != n.get(k):
                        diffs.append(f"option {k}={o.get(k)!r} (asked {n.get(k)!r})")
        elif old[key] != new[key]:
            diffs.append(f"{key}={old[key]!r} (asked {new[key]!r})")
    return diffs


def create_store(location: Location, spec: StoreSpec, ground_truth: dict[str, np.ndarray] | None = None) -> ActivationStore:
    """Create an empty, preallocated store for ``spec`` (caller has checked it is absent)."""
    import zarr

    location.check_writable()
    if location.occupied():
        raise StoreError(f"{location} exists and is not an activation store; choose an empty or new --store path")
    try:
        group = zarr.open_group(location.zarr_store(), mode="w")
        d, n, r = spec.d_in, spec.rows, spec.rows_per_chunk
        for name, logical in spec.columns.items():
            shape, chunks = ((n, d), (r, d)) if name in ACT_COLUMNS else ((n,), (r,))
            storage = STORAGE_DTYPES.get(logical, logical)
            group.create_array(name, shape=shape, chunks=chunks, dtype=storage, compressors=None, fill_value=0, config=WRITE_CONFIG,
                               attributes={"logical_dtype": logical, "row_axis": 0})
        n_chunks = -(-n // r)
        group.create_array("chunk_stats", shape=(n_chunks, 2 * d + 1), chunks=(1, 2 * d + 1), dtype="float64", compressors=None, fill_value=0, config=WRITE_CONFIG)
        if ground_truth:
            gt = group.create_group("ground_truth")
            for key, value in ground_truth.items():
                value = np.asarray(value)
                gt.create_array(key, shape=value.shape, dtype=value.dtype, fill_value=0)[...] = value
        writers = group.create_group("writers")
        for rank in range(spec.writers):
            writers.create_group(str(rank), attributes={"chunks": 0, "last_chunk_rows": None, "done": False})
        # Root attributes last: a store whose zarr.json lacks them is recognisably unfinished. `put` writes
        # zarr.json once (zarr's `attrs.update` rewrites it once per key, so a reader could see half of them).
        group.attrs.put(
            {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                **spec.identity(),
                "storage_dtype": STORAGE_DTYPES[spec.dtype],
                "source": spec.source,
                "provenance": spec.provenance,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "layout": (
                    "rows are cut into chunks of rows_per_chunk; chunk c is written by writer c % writers, whose "
                    "commit marker writers/<rank>.attrs counts its committed chunks (chunks rank, rank+writers, ...); "
                    "rows of uncommitted chunks are not data. bfloat16 is stored as uint16 (the high half of float32)."
                ),
                "summary": None,
            }
        )
    except PermissionError as exc:
        raise StoreError(f"cannot write a store at {location}: permission denied ({exc.filename or exc}); choose a writable --store path") from None
    except OSError as exc:
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"cannot write a store at {location}: {exc.strerror or exc}; choose a writable --store path") from None
    return ActivationStore(location, group)


def prepare_store(
    location: Location,
    spec: StoreSpec,
    *,
    rank: int,
    overwrite: bool,
    ground_truth: Callable[[], dict[str, np.ndarray] | None],
    wait_timeout: float = 600.0,
) -> ActivationStore:
    """Create the store (rank 0) or check that an existing one matches ``spec`` and continue it."""
    if rank == 0:
        if location.exists() and (overwrite or _unfinished_creation(location, spec)):
            location.remove_all()
        if not location.exists():
            return create_store(location, spec, ground_truth())
    else:
        _wait_for_root(location, wait_timeout)
    store = _open_for_spec(location)
    diffs = _differences(_existing_identity(store.attrs), spec.identity())
    if diffs:
        raise StoreMismatchError(
            f"store {location} already holds other activations: {'; '.join(diffs)}; "
            "pass --overwrite to replace it, or choose another --store"
        )
    return store


def _unfinished_creation(location: Location, spec: StoreSpec) -> bool:
    """What a killed ``create_store(spec)`` leaves: a group without root attributes (they are
    written last) holding only members that creation makes. Nothing in it was ever committed,
    so starting again loses no data; anything else is left for the user to decide."""
    import zarr

    try:
        group = zarr.open_group(location.zarr_store(read_only=True), mode="r")
        if dict(group.attrs):
            return False
        names = {name for name, _ in group.members()}
        if not names <= set(spec.columns) | {"chunk_stats", "ground_truth", "writers"}:
            return False
        markers = [dict(w.attrs) for _, w in group["writers"].groups()] if "writers" in names else []
    except Exception:  # not a zarr group at all: not ours to remove
        return False
    return all(not m.get("chunks") for m in markers)  # committed chunks: damage, not an unfinished creation


def _open_for_spec(location: Location) -> ActivationStore:
    try:
        return open_store(location)
    except CorruptStoreError as exc:
        raise CorruptStoreError(f"{exc} (or pass --overwrite to start it again)") from None


def _wait_for_root(location: Location, timeout: float) -> None:
    import zarr

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if location.exists():
            try:
                if zarr.open_group(location.zarr_store(read_only=True), mode="r").attrs.get("format") == FORMAT_NAME:
                    return
            except Exception:
                pass
        time.sleep(0.2)
    raise StoreError(f"writer 0 did not create {location} within {timeout:.0f}s; start rank 0 too")
