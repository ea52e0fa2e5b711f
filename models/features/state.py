"""Per-entity feature state as arrays: what the stream carries from one micro-batch to the next.

A State holds one domain's entities: a sorted entity index (entity id -> row), one array per
carried scalar (row-aligned) and each window's tails. Pickling it copies a few flat arrays, so
the stream can keep it in Spark state and rewrite it every batch; idle entities are evicted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.features.base import kernel

NO_TIME = np.iinfo(np.int64).min  # "never": max(t, NO_TIME) == t, so no branch is needed
TIME = "t"  # a tail's time column: ms before the entity's newest event (int32 is enough)
_MIN_ROWS = 64


@kernel
def copy_runs(src, src_starts, dst, dst_starts, lengths):
    """dst[dst_starts[g]:][:lengths[g]] = src[src_starts[g]:][:lengths[g]] for every g."""
    for g in range(len(lengths)):
        s, d = src_starts[g], dst_starts[g]
        for k in range(lengths[g]):
            dst[d + k] = src[s + k]


@kernel
def _copy_times(src, src_starts, dst, dst_starts, lengths, shift):
    """copy_runs, adding shift[g] to run g's values."""
    for g in range(len(lengths)):
        s, d = src_starts[g], dst_starts[g]
        for k in range(lengths[g]):
            dst[d + k] = src[s + k] + shift[g]


class Tails:
    """Each entity's window tail (its newest entries, oldest first), in flat columns.

    A row's tail is columns[start[row]:start[row] + length[row]]. A new tail is written after
    the others and the old one becomes garbage until `compact`, so an update costs the size of
    the tails it replaces, not of the whole state. Times (column TIME) are stored relative to
    the entity's newest event (`newest`, the state's last_t), which windows of at most an hour
    keep within int32; gather and put convert them to and from absolute ms.
    """

    def __init__(self, columns: dict[str, Any]):
        self.start = np.zeros(0, dtype=np.int64)
        self.length = np.zeros(0, dtype=np.int64)
        self.columns = {name: np.empty(0, dtype=dtype) for name, dtype in columns.items()}
        self.used = 0   # entries written, live or garbage
        self.live = 0

    def resize(self, rows: int, keep: int) -> None:
        for name in ("start", "length"):
            grown = np.zeros(rows, dtype=np.int64)
            grown[:keep] = getattr(self, name)[:keep]
            setattr(self, name, grown)

    def gather(self, rows: np.ndarray, room: np.ndarray, newest: np.ndarray
               ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Per group g (state row rows[g]): its tail followed by room[g] free slots.

        Returns the combined columns, the groups' offsets into them (len(rows) + 1) and the
        tails' lengths.
        """
        lengths = self.length[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths + room, out=offsets[1:])
        starts = self.start[rows]
        combined = {}
        for name, column in self.columns.items():
            if name == TIME:
                combined[name] = np.empty(offsets[-1], dtype=np.int64)
                _copy_times(column, starts, combined[name], offsets, lengths, newest[rows])
            else:
                combined[name] = np.empty(offsets[-1], dtype=column.dtype)
                copy_runs(column, starts, combined[name], offsets, lengths)
        return combined, offsets, lengths

    def put(self, rows: np.ndarray, combined: dict[str, np.ndarray], lo: np.ndarray,
            hi: np.ndarray, newest: np.ndarray) -> None:
        """Rows' new tails: combined[lo[g]:hi[g]]."""
        lengths = hi - lo
        starts = self.used + np.cumsum(lengths) - lengths
        end = self.used + int(lengths.sum())
        if end > len(next(iter(self.columns.values()))):
            self._reserve(max(end, 2 * self.used))
        for name, column in self.columns.items():
            if name == TIME:
                _copy_times(combined[name], lo, column, starts, lengths, -newest[rows])
            else:
                copy_runs(combined[name], lo, column, starts, lengths)
        self.live += int(lengths.sum() - self.length[rows].sum())
        self.start[rows] = starts
        self.length[rows] = lengths
        self.used = end
        if self.used > 2 * self.live + 4096:
            self.compact(len(self.start))

    def _reserve(self, size: int) -> None:
        for name, column in self.columns.items():
            grown = np.empty(size, dtype=column.dtype)
            grown[:self.used] = column[:self.used]
            self.columns[name] = grown

    def compact(self, rows: int) -> None:
        """Live tails only, in row order (the first `rows` rows)."""
        lengths = self.length[:rows]
        starts = np.cumsum(lengths) - lengths
        self.used = self.live = int(lengths.sum())
        for name, column in self.columns.items():
            self.columns[name] = np.empty(self.used, dtype=column.dtype)
            copy_runs(column, self.start[:rows], self.columns[name], starts, lengths)
        self.start[:rows] = starts

    def keep_rows(self, keep: np.ndarray) -> None:
        """Drop the tails of rows not in `keep` (a mask over the rows in use); rows renumber."""
        kept = int(keep.sum())
        self.start[:kept] = self.start[:len(keep)][keep]
        self.length[:kept] = self.length[:len(keep)][keep]
        self.length[kept:] = 0  # rows past those in use hold no tail: compact relies on it
        self.live = int(self.length[:kept].sum())
        self.compact(kept)

    def nbytes(self) -> int:
        return sum(c[:self.used].nbytes for c in self.columns.values()) \
            + self.start.nbytes + self.length.nbytes

    def __getstate__(self) -> dict:
        if self.used > self.live or len(next(iter(self.columns.values()))) > self.used:
            self.compact(len(self.start))
        return self.__dict__


class State:
    """One domain's carried per-entity state (see module docstring)."""

    def __init__(self, domain: str, scalars: dict[str, tuple[Any, Any]],
                 tails: dict[str, dict[str, Any]]):
        self.domain = domain
        self.keys = np.empty(0, dtype="<U1")        # entity ids, sorted
        self.key_rows = np.empty(0, dtype=np.int64)  # row of each key
        self.rows_used = 0
        self.initial = {name: init for name, (_, init) in scalars.items()}
        self.scalars = {name: np.empty(0, dtype=dtype) for name, (dtype, _) in scalars.items()}
        self.tails = {name: Tails(columns) for name, columns in tails.items()}

    def __len__(self) -> int:
        return self.rows_used

    @property
    def entity_ids(self) -> np.ndarray:
        """Ids of the entities held (sorted); aligned with `last_t`."""
        return self.keys

    @property
    def last_t(self) -> np.ndarray:
        """Each entity's newest event time (ms), aligned with `entity_ids`."""
        return self.scalars["last_t"][self.key_rows]

    def last_t_of(self, entity_ids: np.ndarray) -> np.ndarray:
        """Newest event time of each given entity, NaN for one not held (floats)."""
        ids = np.asarray(entity_ids).astype(str)
        pos = np.minimum(np.searchsorted(self.keys, ids), max(len(self.keys) - 1, 0))
        out = np.full(len(ids), np.nan)
        if len(self.keys):
            found = self.keys[pos] == ids
            out[found] = self.scalars["last_t"][self.key_rows[pos[found]]]
        return out

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of distinct entity ids ('U' array), adding the entities not held yet."""
        pos = np.searchsorted(self.keys, ids)
        found = pos < len(self.keys)
        found[found] = self.keys[pos[found]] == ids[found]
        rows = np.empty(len(ids), dtype=np.int64)
        rows[found] = self.key_rows[pos[found]]
        new = np.flatnonzero(~found)
        if len(new):
            new = new[np.argsort(ids[new], kind="stable")]
            rows[new] = np.arange(self.rows_used, self.rows_used + len(new))
            self._add_rows(len(new))
            keys = self.keys.astype(np.result_type(self.keys, ids))  # np.insert truncates
            self.keys = np.insert(keys, pos[new], ids[new])
            self.key_rows = np.insert(self.key_rows, pos[new], rows[new])
        return rows

    def _add_rows(self, count: int) -> None:
        used, need = self.rows_used, self.rows_used + count
        capacity = len(self.scalars["last_t"])
        if need > capacity:
            self._resize(max(need, 2 * capacity, _MIN_ROWS))
        for name, column in self.scalars.items():
            column[used:need] = self.initial[name]
        for tails in self.tails.values():
            tails.length[used:need] = 0
        self.rows_used = need

    def _resize(self, capacity: int) -> None:
        used = self.rows_used
        for name, column in self.scalars.items():
            resized = np.empty(capacity, dtype=column.dtype)
            resized[:used] = column[:used]
            self.scalars[name] = resized
        for tails in self.tails.values():
            tails.resize(capacity, used)

    def evict(self, idle_before_ms: int) -> np.ndarray:
        """Forget entities whose newest event is older than `idle_before_ms`; their ids."""
        used = self.rows_used
        keep = self.scalars["last_t"][:used] >= idle_before_ms
        kept = int(keep.sum())
        if kept == used:
            return self.keys[:0]
        renumber = np.cumsum(keep) - 1
        held = keep[self.key_rows]
        evicted = self.keys[~held]
        self.keys = self.keys[held]
        self.key_rows = renumber[self.key_rows[held]]
        for column in self.scalars.values():
            column[:kept] = column[:used][keep]
        for tails in self.tails.values():
            tails.keep_rows(keep)
        self.rows_used = kept
        return evicted

    @property
    def nbytes(self) -> int:
        """Approximate memory held (arrays), for metrics."""
        return self.keys.nbytes + self.key_rows.nbytes \
            + sum(c.nbytes for c in self.scalars.values()) \
            + sum(t.nbytes() for t in self.tails.values())

    def __getstate__(self) -> dict:
        self._resize(self.rows_used)  # spare capacity is not worth pickling
        return self.__dict__
