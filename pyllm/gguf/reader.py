"""Reading GGUF files from Python: a thin wrapper over the C++ reader `_core.GGUFReader`, which
maps the file, validates it and raises `pyllm.GGUFError` on any malformed field. The writer is pyllm.gguf.writer."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from pyllm import _core
from pyllm.errors import UnsupportedModelError

# Tensor types pyllm computes with (weights), from the C++ type-traits table; a file's other ggml
# types (IQ2_XXS, TQ1_0, ...) are read and listed but not run. Q8_1 and Q8_K are activation types.
WEIGHT_TYPES = tuple(_core.type_info(t)["name"] for t in _core.known_types() if _core.type_info(t)["is_weight"])


def unsupported_type_message(name: str, type_name: str) -> str:
    return (f"tensor {name!r} has type {type_name}, which pyllm does not run; "
            f"supported: {', '.join(WEIGHT_TYPES)}")


class GGUFFile:
    """A validated, memory-mapped GGUF file.

    `metadata` maps keys to int | float | bool | str | bytes (strings that are not UTF-8) | list
    (arrays, nested arrays as nested lists) | numpy array (numeric arrays of more than 1024
    elements, read-only copies: a list of Python numbers would take ~9x the file's bytes). `tensors` maps names to dicts with `type`,
    `type_name`, `supported` (False for a ggml type pyllm reads but does not run, such as IQ2_XXS),
    `shape` (ne order: the row length first, like the `gguf` package), `n_elements`, `nbytes` and
    `offset` (absolute in the file).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._reader = _core.GGUFReader(self.path)
        self.tensors = {t["name"]: t for t in self._reader.tensors}

    @property
    def metadata(self) -> dict[str, Any]:
        return self._reader.metadata

    @property
    def metadata_types(self) -> dict[str, str]:
        return self._reader.metadata_types

    @property
    def version(self) -> int:
        return self._reader.version

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The tensor's raw bytes: a read-only uint8 view into the mapping (zero copy)."""
        return self._reader.tensor_data(name)

    def tensor_array(self, name: str) -> np.ndarray:
        """The tensor dequantized to float32, in numpy order (shape = ne reversed)."""
        info = self.tensors[name]
        if not info["supported"]:
            raise UnsupportedModelError(unsupported_type_message(name, info["type_name"]))
        row_length = info["shape"][0]
        rows = info["n_elements"] // row_length
        raw = self.tensor_bytes(name).reshape(rows, info["nbytes"] // rows)
        return _core.dequantize(info["type"], raw, row_length).reshape(tuple(reversed(info["shape"])))

    def check_tensor_types(self) -> None:
        """Raises UnsupportedModelError naming the first tensor whose type pyllm does not run."""
        for name, info in self.tensors.items():
            if not info["supported"] or info["type_name"] not in WEIGHT_TYPES:
                raise UnsupportedModelError(unsupported_type_message(name, info["type_name"]))

    def nonfinite_tensors(self) -> list[tuple[str, int]]:
        """Names of tensors holding NaN or inf, with how many such values (dequantizes each;
        tensors of types pyllm does not decode, `supported` false, are skipped)."""
        bad = []
        for name, info in self.tensors.items():
            if not info["supported"]:
                continue
            x = self.tensor_array(name)
            n = int(x.size - np.count_nonzero(np.isfinite(x)))
            if n:
                bad.append((name, n))
        return bad

    def nonfinite_sample(self, full_below: int = 1 << 16, rows: int = 16) -> list[tuple[str, int]]:
        """A cheap NaN/inf check for load time: tensors of fewer than `full_below` elements (norms,
        biases: a bad value there reaches every token) are checked whole, larger ones at `rows`
        evenly spaced rows (a NaN block scale spoils its whole block, a bad conversion whole
        tensors). Returns (name, non-finite values seen). ~50 ms for SmolLM2-135M, where the full
        check (nonfinite_tensors) takes 0.6 s."""
        bad = []
        for name, info in self.tensors.items():
            if not info["supported"] or info["n_elements"] == 0:
                continue
            row_length = info["shape"][0]
            n_rows = info["n_elements"] // row_length
            raw = self.tensor_bytes(name).reshape(n_rows, info["nbytes"] // n_rows)
            if info["n_elements"] >= full_below and n_rows > rows:
                raw = raw[np.linspace(0, n_rows - 1, rows).astype(np.int64)]
            x = _core.dequantize(info["type"], np.ascontiguousarray(raw), row_length)
            n = int(x.size - np.count_nonzero(np.isfinite(x)))
            if n:
                bad.append((name, n))
        return bad

    def close(self) -> None:
        """Drops the reader's hold on the mapping; arrays from tensor_bytes() stay valid."""
        self._reader.close()

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._reader.closed:
            return f"GGUFFile({self.path!r}, closed)"
        return (f"GGUFFile({self.path!r}, version={self.version}, architecture={self.architecture!r}, "
                f"{len(self.metadata_types)} metadata keys, {len(self.tensors)} tensors)")
