"""What every domain's feature engine provides, and the input conversions they share."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

# numba caches compiled kernels next to their source by default; Spark workers may run the
# code from a read-only place or a zip, so the cache goes to a writable directory that every
# worker process of a machine shares: compiling the three domains takes 5-12 s once, loading
# them from the cache about a second per process (benchmarks/RESULTS.md).
os.environ.setdefault("NUMBA_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"patternalarm-numba-{os.getuid()}"))

from numba import njit  # noqa: E402  (reads NUMBA_CACHE_DIR at import)

kernel = njit(cache=True, nogil=True)


@dataclass(frozen=True)
class Engine:
    domain: str
    inputs: tuple[str, ...]            # payload fields the engine reads, in call order
    names: tuple[str, ...]             # feature names, in vector order
    scalars: dict[str, tuple[Any, Any]]   # carried per entity: name -> (dtype, initial value)
    tails: dict[str, dict[str, Any]]      # window -> its tail's columns (name -> dtype)
    # Payload columns (aligned with the events) -> typed arrays for `run`.
    prepare: Callable[[list[Sequence]], tuple[np.ndarray, ...]]
    # (state, rows, starts, times, *prepared): features of entity-contiguous events, where
    # group g is events starts[g]:starts[g + 1] of entity row rows[g]; updates the state.
    run: Callable[..., np.ndarray]


def floats(column: Sequence) -> np.ndarray:
    """Numbers with NaN for a missing value (None)."""
    try:
        return np.asarray(column, dtype=np.float64)
    except (TypeError, ValueError):  # pandas' NA in nullable columns, numbers as text
        return pd.to_numeric(pd.Series(column, dtype=object), errors="coerce").to_numpy(
            dtype=np.float64)


def truthy(column: Sequence) -> np.ndarray:
    """1 where the value is true, else 0 (a missing value is false)."""
    values = floats(column)
    return ((values != 0) & ~np.isnan(values)).astype(np.int8)


def or_zero(column: Sequence) -> np.ndarray:
    """The value, 0.0 where it is missing or zero (`value or 0.0`)."""
    values = floats(column)
    return np.where(np.isnan(values), 0.0, values)


def objects(column: Sequence) -> np.ndarray:
    # Not np.asarray(column): a list of strings would become a fixed-width unicode array, which
    # costs more to build than everything the engine does with it.
    return column if isinstance(column, np.ndarray) else np.array(column, dtype=object)


def codes(column: Sequence, known: dict[str, int]) -> np.ndarray:
    """Each string's code in `known`, 0 for any other value or a missing one."""
    values, distinct = pd.factorize(objects(column))
    table = np.array([known.get(v, 0) for v in distinct] + [0], dtype=np.int64)
    return table[values]  # a missing value's -1 picks the trailing 0


def hashes(column: Sequence) -> np.ndarray:
    """A 64-bit hash of each string ("" when missing): windows keep these, not text. The same
    in every process (pickled state moves between Spark workers); two of an entity's values in
    one window collide with a chance of about 2^-64."""
    values, distinct = pd.factorize(objects(column))
    text = np.append(np.asarray(distinct, dtype=str), "")  # a missing value's -1 picks ""
    return _fnv1a(text.view(np.uint32).reshape(len(text), -1))[values]


@kernel
def _fnv1a(code_points):
    out = np.empty(len(code_points), np.int64)
    for i in range(len(code_points)):
        h = np.uint64(14695981039346656037)
        for c in code_points[i]:
            if c == 0:  # numpy pads shorter strings with NULs
                break
            h = (h ^ np.uint64(c)) * np.uint64(1099511628211)
        # splitmix64's finaliser: FNV's low bits, which index the windows' hash tables, mix badly
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        out[i] = np.int64(h ^ (h >> np.uint64(31)))
    return out
