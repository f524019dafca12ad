"""Creating a store, continuing one, and the rules that keep a user's files safe while doing so.

* Creation is atomic on local disks: the group is built in a hidden sibling folder and renamed
  into place, so two ``cache`` processes started at once on a new store cannot wipe each other's
  attributes; the loser of the rename joins the winner's store.
* One process per writer rank: a local writer holds an exclusive ``flock`` on its
  ``writers/<rank>`` folder while it writes, so a second process for the same rank is refused.
* ``--overwrite`` deletes only a store's own members, and refuses a folder holding anything else.
* ``--repair`` rebuilds a missing root or array ``zarr.json`` from the command's options.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import CorruptStoreError, OptionError, StoreError, StoreMismatchError
from ._location import Location
from ._view import ActivationStore, open_store
from ._format import ACT_COLUMNS, FORMAT_NAME, FORMAT_VERSION, STORAGE_DTYPES, STORE_MEMBERS, WRITE_CONFIG, array_codecs, site_column, site_members, site_stats

LAYOUT_TEXT = (
    "rows are cut into chunks of rows_per_chunk; chunk c is written by writer c % writers, whose "
    "commit marker writers/<rank>.attrs counts its committed chunks (chunks rank, rank+writers, ...); "
    "rows of uncommitted chunks are not data. bfloat16 is stored as uint16 (the high half of float32). "
    "Each chunk file ends in the crc32c of its bytes (zarr's crc32c codec). With write_shuffle_rows W > 0, "
    "each writer's stream of rows is cut into windows of W rows (its own rows, in the order of its chunks) "
    "and the rows of each window are stored in a seeded permutation (seed: rank, window index), all columns alike. "
    "A store of several sites (attribute sites) holds site 0 in acts and site i in acts_<i>, each with its own "
    "chunk_stats(_<i>); a chunk's every column and statistics row is written before its commit marker."
)


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
    write_shuffle_rows: int = 0
    #: Several sites (``{name, column, stats, d_in, hook, io}`` each, site 0's column ``acts``), or
    #: None for a store of one site (laid out as before sites existed).
    sites: list[dict[str, Any]] | None = None

    def width(self, name: str) -> int | None:
        """Row width of an activation column (``None``: a per-row scalar column)."""
        if name in ACT_COLUMNS:
            return self.d_in
        return next((int(s["d_in"]) for s in self.sites or [] if s["column"] == name), None)

    def stats_arrays(self) -> dict[str, int]:
        """Each statistics array and the width of the site it describes."""
        return {s["stats"]: int(s["d_in"]) for s in self.sites} if self.sites else {"chunk_stats": self.d_in}

    def identity(self) -> dict[str, Any]:
        sites = {"sites": self.sites} if self.sites else {}  # one-site stores keep their old identity
        return sites | {
            "d_in": self.d_in,
            "dtype": self.dtype,
            "rows_allocated": self.rows,
            "rows_per_chunk": self.rows_per_chunk,
            "writers": self.writers,
            "write_shuffle_rows": self.write_shuffle_rows,
            "columns": self.columns,
            "source": {"name": self.source["name"], "options": self.source["options"]},
        }


def source_sites(src: Any) -> list[dict[str, Any]] | None:
    """The store's ``sites`` attribute for a source's declared sites (None: one site, the classic layout)."""
    from ..roles import RESERVED_SITE_NAMES

    declared = list(src.sites)
    if len(declared) <= 1:
        return None
    names = [s.name for s in declared]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise OptionError(f"source {src.name!r} names site(s) {', '.join(repeated)} more than once; give each hook point once")
    reserved = [n for n in names[1:] if n in RESERVED_SITE_NAMES or not n]  # further sites are batch keys
    if reserved:
        raise OptionError(f"source {src.name!r} declares a site named {reserved[0]!r}, a name a store's columns use; name the site otherwise")
    if int(declared[0].d_in) != int(src.d_in):
        raise OptionError(f"source {src.name!r}: its first site {declared[0].name!r} is {declared[0].d_in} wide but d_in is {src.d_in}; they must agree")
    if "grads" in src.columns:
        raise OptionError(f"source {src.name!r}: gradients are cached for one site only; cache grads with a single hook")
    return [{"name": s.name, "column": site_column(i), "stats": site_stats(i), "d_in": int(s.d_in), "hook": s.hook, "io": s.io}
            for i, s in enumerate(declared)]


def _existing_identity(attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        "d_in": attrs.get("d_in"),
        "dtype": attrs.get("dtype"),
        "rows_allocated": attrs.get("rows_allocated"),
        "rows_per_chunk": attrs.get("rows_per_chunk"),
        "writers": attrs.get("writers"),
        "write_shuffle_rows": attrs.get("write_shuffle_rows", 0),  # stores from before the write shuffle: none
        "columns": attrs.get("columns"),
        "sites": attrs.get("sites"),
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


def _root_attrs(spec: StoreSpec, format_version: int = FORMAT_VERSION) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "format_version": format_version,
        **spec.identity(),
        "storage_dtype": STORAGE_DTYPES[spec.dtype],
        "source": spec.source,
        "provenance": spec.provenance,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "layout": LAYOUT_TEXT,
        "summary": None,
    }


def _array_args(spec: StoreSpec, name: str, checksum: bool = True) -> dict[str, Any]:
    """``create_array`` arguments of one of the store's row arrays."""
    n, r = spec.rows, spec.rows_per_chunk
    codecs = array_codecs(checksum)
    stats = spec.stats_arrays()
    if name in stats:
        n_chunks, d = -(-n // r), stats[name]
        return dict(shape=(n_chunks, 2 * d + 1), chunks=(1, 2 * d + 1), dtype="float64", fill_value=0, config=WRITE_CONFIG, **codecs)
    logical = spec.columns[name]
    d = spec.width(name)
    shape, chunks = ((n, d), (r, d)) if d is not None else ((n,), (r,))
    return dict(shape=shape, chunks=chunks, dtype=STORAGE_DTYPES.get(logical, logical), fill_value=0, config=WRITE_CONFIG,
                attributes={"logical_dtype": logical, "row_axis": 0}, **codecs)


def _build(zarr_store: Any, spec: StoreSpec, ground_truth: dict[str, np.ndarray] | None) -> Any:
    import zarr

    group = zarr.open_group(zarr_store, mode="w")
    for name in list(spec.columns) + list(spec.stats_arrays()):
        group.create_array(name, **_array_args(spec, name))
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
    group.attrs.put(_root_attrs(spec))
    return group


def create_store(location: Location, spec: StoreSpec, ground_truth: dict[str, np.ndarray] | None = None) -> ActivationStore | None:
    """Create an empty, preallocated store for ``spec``; None when another process created it first."""
    location.check_writable()
    if location.occupied():
        raise StoreError(f"{location} exists and is not an activation store; choose an empty or new --store path")
    try:
        if location.remote:
            _build(location.zarr_store(), spec, ground_truth)
            return open_store(location)
        parent, name = os.path.split(location.root)
        os.makedirs(parent, exist_ok=True)
        _remove_stale_staging(parent, name)
        staging = tempfile.mkdtemp(prefix=f".{name}.creating-{os.getpid()}-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it 0700; a store's folder follows the umask
        try:
            _build(Location(staging).zarr_store(), spec, ground_truth)
            try:
                os.rename(staging, location.root)  # atomic; replaces only a missing or empty folder
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    return None  # another process's store is there now: join it
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except PermissionError as exc:
        raise StoreError(f"cannot write a store at {location}: permission denied ({exc.filename or exc}); choose a writable --store path") from None
    except OSError as exc:
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"cannot write a store at {location}: {exc.strerror or exc}; choose a writable --store path") from None
    return open_store(location)


def finalize(store: ActivationStore) -> ActivationStore:
    """Once every writer is done, record the row count and normalisation in the root attributes (once)."""
    store = store.refresh()
    if store.complete and not (store.attrs.get("summary") or {}).get("complete"):
        summary = {"complete": True, "rows": store.rows, "normalisation": store._compute_normalisation()}
        if len(store.sites) > 1:  # each site's own statistics, by site name (site 0's is "normalisation" too)
            summary["site_normalisation"] = {name: store.site(name)._compute_normalisation() for name in store.sites}
        store.group.attrs.update({"summary": summary})
        store = store.refresh()
    return store


def _remove_stale_staging(parent: str, name: str) -> None:
    """Staging folders of creations killed before their rename (their process is gone) hold no data."""
    prefix = f".{name}.creating-"
    for entry in os.listdir(parent):
        if entry.startswith(prefix):
            pid = entry[len(prefix) :].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_store(
    location: Location,
    spec: StoreSpec,
    *,
    rank: int,
    overwrite: bool,
    ground_truth: Callable[[], dict[str, np.ndarray] | None],
    repair: bool = False,
    wait_timeout: float = 600.0,
) -> ActivationStore:
    """Create the store (rank 0) or check that an existing one matches ``spec`` and continue it."""
    if rank == 0:
        if location.exists() and (overwrite or _unfinished_creation(location, spec)):
            location.remove_members(STORE_MEMBERS | set(spec.columns) | set(spec.stats_arrays()) | _existing_columns(location))
        if repair:
            _rebuild_metadata(location, spec)
        if not location.exists():
            created = create_store(location, spec, ground_truth())
            if created is not None:
                return created
    else:
        if repair:
            _rebuild_metadata(location, spec)
        _wait_for_root(location, wait_timeout)
    store = _open_for_spec(location)
    diffs = _differences(_existing_identity(store.attrs), spec.identity())
    if diffs:
        raise StoreMismatchError(
            f"store {location} already holds other activations: {'; '.join(diffs)}; "
            "pass --overwrite to replace it, or choose another --store"
        )
    _check_writable_store(store)
    return store


def _existing_columns(location: Location) -> set[str]:
    try:
        attrs = json.loads(location.read_bytes("zarr.json")).get("attributes", {})
        return set(attrs.get("columns") or {}) | site_members(attrs.get("sites"))
    except Exception:
        return set()


def _check_writable_store(store: ActivationStore) -> None:
    """A store that cannot be continued says so in one line before any work (local stores)."""
    loc = store.location
    if loc.remote:
        return
    for key in [""] + list(store.columns) + store.stats_arrays + ["writers"]:
        path = loc.key_path(key) if key else loc.root
        if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
            raise StoreError(
                f"store {loc} is read-only ({path} is not writable), so this cache cannot continue it; "
                f"make it writable (chmod -R u+w {loc.root}) or cache into another --store"
            )


@contextlib.contextmanager
def writer_lock(store: ActivationStore, rank: int) -> Iterator[None]:
    """Hold writer ``rank`` of a local store exclusively: a second process for it is refused."""
    if store.location.remote:
        yield
        return
    import fcntl

    path = store.location.key_path(f"writers/{rank}")
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"another process is writing rank {rank} of store {store.url} right now; wait for it to finish "
                "(rerun the same command then to continue), or give each process its own --rank"
            ) from None
        yield
    finally:
        os.close(fd)


def _rebuild_metadata(location: Location, spec: StoreSpec) -> None:
    """``--repair``: write back a missing root or array ``zarr.json`` (chunk files are left as they are)."""
    if location.remote or not os.path.isdir(location.root):
        return
    names = list(spec.columns) + list(spec.stats_arrays())
    present = [n for n in names if location.exists(f"{n}/zarr.json")]
    checksum = True
    if present:
        meta = json.loads(location.read_bytes(f"{present[0]}/zarr.json"))
        checksum = any(c.get("name") == "crc32c" for c in meta.get("codecs", []))
    for name in names:
        if name not in present and os.path.isdir(location.key_path(name)):
            _write_array_metadata(location, name, _array_args(spec, name, checksum))
    for rank in range(spec.writers):
        if os.path.isdir(location.key_path(f"writers/{rank}")):
            _repair_marker(location, rank)
    if not location.exists() and present:
        attrs = _root_attrs(spec, FORMAT_VERSION if checksum else 1)
        attrs["recovered"] = "root zarr.json rewritten by --repair from the cache command's options"
        _write_json_atomic(location.key_path("zarr.json"), {"attributes": attrs, "zarr_format": 3, "consolidated_metadata": None, "node_type": "group"})


def _write_array_metadata(location: Location, name: str, args: dict[str, Any]) -> None:
    import zarr

    with tempfile.TemporaryDirectory(dir=location.root) as tmp:
        zarr.open_group(Location(tmp).zarr_store(), mode="w").create_array(name, **args)
        os.replace(os.path.join(tmp, name, "zarr.json"), location.key_path(f"{name}/zarr.json"))


def _repair_marker(location: Location, rank: int) -> None:
    """A damaged marker becomes one that commits nothing: the repair then rewrites that writer's chunks."""
    key = f"writers/{rank}/zarr.json"
    try:
        int(json.loads(location.read_bytes(key))["attributes"]["chunks"])
        return
    except Exception:  # missing, not JSON, or no count: rebuilt below
        pass
    marker = {"chunks": 0, "last_chunk_rows": None, "done": False}
    _write_json_atomic(location.key_path(key), {"attributes": marker, "zarr_format": 3, "consolidated_metadata": None, "node_type": "group"})


def _write_json_atomic(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.repair-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


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
        if not names <= set(spec.columns) | set(spec.stats_arrays()) | {"chunk_stats", "ground_truth", "writers"}:
            return False
        markers = [dict(w.attrs) for _, w in group["writers"].groups()] if "writers" in names else []
    except Exception:  # not a zarr group at all: not ours to remove
        return False
    return all(not m.get("chunks") for m in markers)  # committed chunks: damage, not an unfinished creation


def _open_for_spec(location: Location) -> ActivationStore:
    """Open a store to continue it; only damage that no repair can mend suggests starting again."""
    try:
        return open_store(location)
    except CorruptStoreError as exc:
        if "--repair" in str(exc) or "do not pass --overwrite" in str(exc):
            raise
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
