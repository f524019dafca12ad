"""``array``: import existing activations from ``.npy``, ``.safetensors`` or a Zarr array.

Files are read lazily (``.npy`` memory-mapped with ``allow_pickle=False``, safetensors sliced,
Zarr indexed), so importing a file larger than memory works. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np

from ..errors import BadInputError, OptionError
from ..hookspecs import hookimpl
from ..roles import ActivationSource


@dataclasses.dataclass
class ArrayOptions:
    path: str = ""
    """A .npy file, a .safetensors file, or a Zarr array (or group with `key`); local or fsspec URL for Zarr."""
    key: str = ""
    """Tensor name inside a .safetensors file, or array path inside a Zarr group."""


class ArraySource(ActivationSource):
    name = "array"
    description = "Existing activations [rows, d] from a .npy, .safetensors or Zarr array"
    Options = ArrayOptions

    def __post_init__(self) -> None:
        if not self.options.path:
            raise OptionError("array: no file given; pass -o path=acts.npy (or .safetensors, or a Zarr array)")
        shape = self._shape
        if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
            raise BadInputError(f"array: {self.options.path} holds an array of shape {tuple(shape)}; expected 2-D [rows, d] activations")

    @functools.cached_property
    def _kind(self) -> str:
        path = self.options.path
        lower = path.rstrip("/").lower()
        if lower.endswith(".npy"):
            return "npy"
        if lower.endswith(".safetensors"):
            return "safetensors"
        if lower.endswith(".zarr") or "://" in path or os.path.isdir(path):
            return "zarr"
        raise BadInputError(f"array: cannot read {path}: unsupported file type; give a .npy, .safetensors or Zarr array")

    @functools.cached_property
    def _data(self) -> Any:
        path, kind = self.options.path, self._kind
        if kind != "zarr" and not os.path.exists(path):
            raise BadInputError(f"array: {path} does not exist; check -o path=...")
        if kind == "npy":
            try:
                data = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as exc:
                if any(text in str(exc) for text in ("allow_pickle", "Object arrays", "Python objects")):
                    raise BadInputError(f"array: {path} holds Python objects, which featureforge never unpickles; save a numeric array (e.g. float32)") from None
                raise BadInputError(f"array: {path} is not a readable .npy file ({exc})") from None
            if not np.issubdtype(data.dtype, np.number):
                raise BadInputError(f"array: {path} holds {data.dtype} values; save a numeric array (e.g. float32)")
            return data
        if kind == "safetensors":
            from safetensors import safe_open

            try:
                handle = safe_open(path, framework="pt")
            except Exception as exc:
                raise BadInputError(f"array: {path} is not a readable safetensors file ({exc})") from None
            keys = list(handle.keys())
            key = self.options.key or (keys[0] if len(keys) == 1 else "")
            if key not in keys:
                raise BadInputError(f"array: {path} holds tensors {', '.join(keys)}; choose one with -o key=NAME")
            return handle.get_slice(key)
        import zarr

        try:
            node = zarr.open(self.options.path, mode="r")
        except Exception as exc:
            raise BadInputError(f"array: cannot open {path} as Zarr ({type(exc).__name__}: {exc}); give a .npy, .safetensors or Zarr array") from None
        if isinstance(node, zarr.Group):
            names = [name for name, _ in node.arrays()]
            key = self.options.key or (names[0] if len(names) == 1 else "")
            if not key or key not in node:
                raise BadInputError(f"array: {path} is a Zarr group with arrays {', '.join(names) or 'none'}; choose one with -o key=NAME")
            node = node[key]
        return node

    @functools.cached_property
    def _shape(self) -> tuple[int, ...]:
        data = self._data
        return tuple(data.get_shape()) if hasattr(data, "get_shape") else tuple(data.shape)

    @property
    def d_in(self) -> int:
        return int(self._shape[1])

    @property
    def n_rows(self) -> int:
        return int(self._shape[0])

    def provenance(self) -> dict[str, Any]:
        path = self.options.path
        return {"file": path if "://" in path else os.path.abspath(path), "format": self._kind, "key": self.options.key, "shape": list(self._shape)}

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        data = self._data[start:stop]
        if hasattr(data, "float"):  # a torch tensor from safetensors (any dtype, bf16 included)
            data = data.float().numpy()
        return {"acts": np.asarray(data, dtype=np.float32)}


@hookimpl
def featureforge_register_sources(register):
    register(ArraySource)
