"""Text documents for the ``hf`` source: the standard library's own source, local files, datasets.

Every reader yields plain strings in a deterministic order; ``documents(spec)`` picks the reader
from the ``data`` option and raises one-line ``BadInputError``/``OptionError`` for unusable input.
Nothing here imports torch or transformers.
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from featureforge import BadInputError

#: Suffixes read from a folder or glob.
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
#: Standard-library folders left out of the default text: tests (full of odd encodings and
#: generated data), IDLE, vendored or installed third-party code.
STDLIB_SKIP = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "lib2to3", "turtledemo"}
#: Documents kept in the seeded shuffle buffer (memory stays bounded whatever the data's size).
SHUFFLE_BUFFER = 1024

# A blank line followed by a top-level def/class/decorator starts a new standard-library document.
_TOP_LEVEL = re.compile(r"\n[ \t]*\n(?=(?:@|def |class |async def )\S)")


@dataclass(frozen=True)
class DataSpec:
    """Where documents come from, as resolved from the ``data`` option."""

    #: "stdlib", "files" or "datasets".
    kind: str
    #: What the provenance records.
    description: str
    #: Local files in reading order (kind "files").
    files: tuple[Path, ...] = ()
    #: Dataset name or path (kind "datasets").
    name: str = ""


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """Every ``.py`` file of the standard library, in sorted order, less ``STDLIB_SKIP``."""
    root = root or stdlib_root()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_SKIP and not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return found


def split_python_source(text: str) -> list[str]:
    """A module's header (docstring, imports) and each top-level definition, as documents."""
    return [part.strip("\n") for part in _TOP_LEVEL.split(text) if part.strip()]


def stdlib_documents(root: Path | None = None) -> Iterator[str]:
    """The standard library's source (code and docstrings), one top-level block per document."""
    for path in stdlib_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        yield from split_python_source(text)


def resolve(data: str) -> DataSpec:
    """Turn the ``data`` option into a ``DataSpec``; refuse what cannot be read, in one line."""
    if not data:
        root = stdlib_root()
        return DataSpec("stdlib", f"python-stdlib {sys.version.split()[0]} ({root})")
    path = Path(data).expanduser()
    if any(ch in data for ch in "*?["):
        files = tuple(Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file())
        files = tuple(p for p in files if p.suffix in TEXT_SUFFIXES)
        if not files:
            raise BadInputError(f"data glob {data!r} matches no {'/'.join(TEXT_SUFFIXES)} files; check the pattern (quote it in the shell)")
        return DataSpec("files", f"files {data} ({len(files)})", files=files)
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return DataSpec("datasets", f"datasets folder {path}", name=str(path))
        files = tuple(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES))
        if not files:
            raise BadInputError(f"data folder {data} holds no {'/'.join(TEXT_SUFFIXES)} files; put text files there or pass -o data=FILE")
        return DataSpec("files", f"folder {path} ({len(files)} files)", files=files)
    if path.is_file():
        if path.suffix not in TEXT_SUFFIXES:
            raise BadInputError(f"data file {data} is not {', '.join(TEXT_SUFFIXES)}; convert it, or pass a datasets name")
        return DataSpec("files", f"file {path}", files=(path,))
    if path.suffix in TEXT_SUFFIXES or os.sep in data and not _looks_like_hub_name(data):
        raise BadInputError(f"data {data!r} does not exist; pass an existing file, folder or glob (or leave data unset for the standard library's text)")
    return DataSpec("datasets", f"datasets {data}", name=data)


def _looks_like_hub_name(text: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text))


def read_documents(spec: DataSpec, text_field: str = "text", split: str = "train") -> Iterator[str]:
    """Non-empty documents of ``spec`` in their stored order."""
    if spec.kind == "stdlib":
        yield from stdlib_documents()
    elif spec.kind == "files":
        for path in spec.files:
            yield from _file_documents(path, text_field)
    else:
        yield from _dataset_documents(spec.name, text_field, split)


def _file_documents(path: Path, text_field: str) -> Iterator[str]:
    if path.suffix == ".txt":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise BadInputError(f"data file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8") from None
        except OSError as exc:
            raise BadInputError(f"data file {path} cannot be read ({exc.strerror or exc}); check its permissions") from None
        # Documents are paragraphs: separated by one or more blank lines.
        for part in re.split(r"\n[ \t]*\n", text):
            if part.strip():
                yield part.strip("\n")
    elif path.suffix == ".jsonl":
        yield from _jsonl_documents(path, text_field)
    elif path.suffix == ".parquet":
        yield from _parquet_documents(path, text_field)


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"data file {path} cannot be read ({exc.strerror or exc}); check its permissions") from None
    with handle:
        try:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BadInputError(f"data file {path} line {lineno} is not JSON ({exc.msg}); each line must be one JSON object") from None
                if isinstance(record, str):
                    text = record
                elif isinstance(record, dict) and isinstance(record.get(text_field), str):
                    text = record[text_field]
                else:
                    keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                    raise BadInputError(f"data file {path} line {lineno} has no text field {text_field!r} (found: {keys}); pass -o text_field=NAME")
                if text.strip():
                    yield text
        except UnicodeDecodeError as exc:
            raise BadInputError(f"data file {path} is not UTF-8 text ({exc.reason}); convert it to UTF-8") from None


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BadInputError(f"reading {path} needs pyarrow; pip install 'featureforge-hf[parquet]'") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid/OSError family
        raise BadInputError(f"data file {path} is not a readable parquet file ({type(exc).__name__}: {exc}); check the file") from None
    names = parquet.schema_arrow.names
    if text_field not in names:
        raise BadInputError(f"data file {path} has no column {text_field!r} (columns: {', '.join(names)}); pass -o text_field=NAME")
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield text


def _dataset_documents(name: str, text_field: str, split: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise BadInputError(
            f"data {name!r} is not a local file, folder or glob, and reading a Hugging Face dataset needs the datasets "
            "package; pip install 'featureforge-hf[datasets]', or pass -o data=FILE.txt|.jsonl|.parquet"
        ) from None
    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise BadInputError(f"dataset {name} has no split {split!r} (splits: {', '.join(ds)}); pass -o split=NAME")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, split=split, streaming=True)
    except FileNotFoundError as exc:
        raise BadInputError(f"dataset {name!r} could not be found ({exc}); pass a local file or folder, or a dataset name reachable offline") from None
    except BadInputError:
        raise
    except Exception as exc:
        message = " ".join(str(exc).split())[:200]
        raise BadInputError(f"dataset {name!r} could not be loaded ({type(exc).__name__}: {message}); pass -o data=FILE, or a dataset saved with save_to_disk") from None
    try:
        for record in ds:
            text = record.get(text_field) if isinstance(record, dict) else None
            if text is None:
                keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise BadInputError(f"dataset {name!r} has no text field {text_field!r} (found: {keys}); pass -o text_field=NAME")
            if isinstance(text, str) and text.strip():
                yield text
    except BadInputError:
        raise
    except Exception as exc:
        message = " ".join(str(exc).split())[:200]
        raise BadInputError(f"dataset {name!r} could not be read ({type(exc).__name__}: {message}); check the dataset or pass -o data=FILE") from None


def shuffled(docs: Iterable[str], seed: int | None, buffer: int = SHUFFLE_BUFFER) -> Iterator[str]:
    """Documents in a seeded, bounded-buffer shuffled order (``seed=None``: the stored order)."""
    if seed is None:
        yield from docs
        return
    rng = random.Random(seed)
    pool: list[str] = []
    for doc in docs:
        if len(pool) < buffer:
            pool.append(doc)
            continue
        j = rng.randrange(buffer)
        yield pool[j]
        pool[j] = doc
    rng.shuffle(pool)
    yield from pool


def numbered_documents(
    spec: DataSpec, *, text_field: str, split: str, seed: int | None, max_docs: int | None,
    keep: Callable[[int], bool] = lambda i: True,
) -> Iterator[tuple[int, str]]:
    """``(doc_id, text)`` in the source's order, for the ids ``keep`` accepts; refuses empty data."""
    seen = 0
    for doc_id, text in enumerate(shuffled(read_documents(spec, text_field, split), seed)):
        if max_docs is not None and doc_id >= max_docs:
            break
        seen += 1
        if keep(doc_id):
            yield doc_id, text
    if seen == 0:
        raise BadInputError(f"data {spec.description} holds no text; pass -o data=FILE|FOLDER|GLOB with non-empty documents")

