"""What every domain's feature engine provides, and the input conversions they share."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

# numba caches compiled kernels next to their source; Spark workers may run the code from a
# read-only place or a zip, so the cache goes to a writable directory shared by the workers of
# a machine (compiling all three domains takes a few seconds, loading them ~0.1 s).
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "patternalarm-numba"))

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
    except (TypeError, ValueError):
        return pd.to_numeric(pd.Series(column, dtype=object), errors="coerce").to_numpy(
            dtype=np.float64)


def truthy(column: Sequence) -> np.ndarray:
    """1.0 where the value is true, else 0.0 (a missing value is false)."""
    values = floats(column)
    return ((values != 0) & ~np.isnan(values)).astype(np.float64)


def or_zero(column: Sequence) -> np.ndarray:
    """The value, 0.0 where it is missing or zero (`value or 0.0`)."""
    values = floats(column)
    return np.where(np.isnan(values), 0.0, values)


def texts(column: Sequence) -> np.ndarray:
    """Strings as objects, "" for a missing one."""
    values = pd.Series(column, dtype=object)
    return values.where(values.notna(), "").to_numpy(dtype=object)


def hashes(column: Sequence) -> np.ndarray:
    """A stable 64-bit hash of each string ("" when missing): windows keep these, not text.
    Stable across processes (pickled state moves between Spark workers); a collision between
    two of one entity's values in a window has a chance of about 2^-64."""
    return pd.util.hash_array(texts(column)).view(np.int64)
