"""Replay of a labelled CSV/Parquet file as events on a domain topic, its labels as ground truth.

Columns whose names match the domain's payload fields (case-insensitive) fill those fields;
other numeric columns go to ``payload.attributes``; the label column never reaches the event.
Event times keep the file's own spacing, shifted so the first row happens at the start of the
run: features, rules and incident windows see the series as it happened. ``speedup`` only paces
sending (rows go out at their spacing divided by it), so a sped-up replay runs ahead of the
clock: replay it into topics and a query of its own (README, "Replaying a file"). A numeric
time column is in seconds (absolute or relative, as in the public credit-card fraud table);
text is parsed as timestamps.
Each row with a positive label becomes a one-event episode of kind ``<label col>=<value>``.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patternalarm import domains
from patternalarm.events import SCHEMA_VERSION, Field, InvalidEvent
from patternalarm.generator import (
    Episode,
    ProgressFn,
    RunPlan,
    SystemClock,
    drive,
    execute,
    start_thread,
)
from patternalarm.settings import Settings

# The value type of payload.attributes, to judge one cell of an extra numeric column.
_ATTRIBUTE_VALUE = Field("attributes", "double")
_NEGATIVE = {"", "0", "0.0", "false", "no", "n", "none", "nan"}


class ReplayError(ValueError):
    """The file or its columns cannot be replayed; the message names what is wrong."""


def _bad_cell(path: Path, row: int, column: Any, what: str) -> ReplayError:
    # Rows count from 1 after the header, as a spreadsheet shows them below it.
    return ReplayError(f"{path}: row {row + 1}, column {str(column)!r}: {what}")


@dataclass(frozen=True)
class ReplayOptions:
    path: Path
    domain: str
    entity_col: str
    time_col: str
    label_col: str | None = None
    speedup: float = 1.0


class ReplayTimeline:
    """Each row is due at its own (scaled) offset from the first row."""

    def __init__(self, offsets: list[float]) -> None:
        self.offsets = offsets
        self.total = len(offsets)

    def count_at(self, t: float) -> int:
        return bisect.bisect_right(self.offsets, t)

    def time_of(self, i: int) -> float:
        return self.offsets[i]


def load(path: Path) -> Any:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ReplayError(f"cannot read {path}: {exc}") from None
    raise ReplayError(f"{path}: expected a .csv or .parquet file")


def _seconds(column: Any, path: Path) -> list[float]:
    import numpy as np
    import pandas as pd

    empty = column.isna()
    if empty.any():
        raise _bad_cell(path, int(np.argmax(empty)), column.name,
                        f"empty time ({int(empty.sum())} empty in the column)")
    # What cannot be read becomes NaN, so the first bad cell can be named. A column of text
    # that is mostly numbers is seconds with a few bad cells, not timestamps.
    seconds = pd.to_numeric(column, errors="coerce").astype("float64")
    if not pd.api.types.is_numeric_dtype(column) and seconds.notna().sum() * 2 < len(column):
        stamps = pd.to_datetime(column, utc=True, errors="coerce")
        seconds = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    bad = ~np.isfinite(seconds.to_numpy())
    if bad.any():
        row = int(np.argmax(bad))
        raise _bad_cell(path, row, column.name,
                        f"{column.tolist()[row]!r} is neither seconds nor a timestamp")
    return seconds.tolist()


def _entity(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _positive(value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return str(value).strip().lower() not in _NEGATIVE


def _cast(kind: str, value: Any) -> Any:
    if kind == "double":
        return float(value)
    if kind in ("int", "long"):
        return int(value)
    if kind == "boolean":
        return _positive(value)
    return _entity(value)


def _cell(path: Path, row: dict[str, Any], row_number: int, column: Any, kind: str) -> Any:
    try:
        return _cast(kind, row[column])
    except (ValueError, OverflowError):  # text in a number column; int() of inf
        raise _bad_cell(path, row_number, column, f"{row[column]!r} is not a {kind}") from None


def _row_error(path: Path, row_number: int, problem: str, columns: dict[str, Any],
               attributes: dict[str, float]) -> ReplayError:
    """A contract problem of a row's event, put back on the file's column it came from."""
    field, _, what = problem.partition(": ")
    if field in columns:
        return _bad_cell(path, row_number, columns[field], what)
    if field == "payload.attributes":  # the contract judges the map: find the cell
        for column, value in attributes.items():
            cell = _ATTRIBUTE_VALUE.problems(value)
            if cell:
                return _bad_cell(path, row_number, column, cell[0].partition(": ")[2])
    return ReplayError(f"{path}: row {row_number + 1}: {problem}")


class ReplaySource:
    """The file's rows as validated messages, ready to stream."""

    def __init__(self, options: ReplayOptions, run_id: str, start_ms: int) -> None:
        import pandas as pd

        if not options.speedup > 0:
            raise ReplayError(f"--speedup must be > 0 (got {options.speedup})")
        frame = load(options.path)
        wanted = [options.entity_col, options.time_col] + (
            [options.label_col] if options.label_col else [])
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            raise ReplayError(f"{options.path}: no column {', '.join(map(repr, missing))} "
                              f"(columns: {', '.join(map(str, frame.columns))})")
        if frame.empty:
            raise ReplayError(f"{options.path}: no rows")
        contract = domains.contract(options.domain)
        fields = {f.name.lower(): f for f in contract.payload}
        special = set(wanted)
        mapped = {c: fields[str(c).lower()] for c in frame.columns
                  if c not in special and str(c).lower() in fields}
        absent = [f.name for f in contract.payload if f.required and f not in mapped.values()]
        if absent:
            raise ReplayError(f"{options.path}: the {options.domain} contract needs column(s) "
                              f"{', '.join(absent)}")
        extra = [c for c in frame.columns if c not in special and c not in mapped
                 and pd.api.types.is_numeric_dtype(frame[c])]
        self.ignored = [str(c) for c in frame.columns
                        if c not in special and c not in mapped and c not in extra]

        seconds = _seconds(frame[options.time_col], options.path)
        order = sorted(range(len(seconds)), key=seconds.__getitem__)
        first = seconds[order[0]]
        # When each row is sent (scaled) and when it happened (not scaled).
        self.timeline = ReplayTimeline([(seconds[r] - first) / options.speedup for r in order])
        # (key, value, event_id, event_time, episode kind or None), in time order
        self.messages: list[tuple[bytes, bytes, str, int, str | None]] = []
        self.positives = 0
        # Where each contract field comes from, so a problem names the file's column.
        columns = {"entity_id": options.entity_col, "event_time": options.time_col,
                   **{f"payload.{f.name}": c for c, f in mapped.items()}}
        records = frame.to_dict("records")
        for row_number in order:
            row = records[row_number]
            if _missing(row[options.entity_col]):
                raise _bad_cell(options.path, row_number, options.entity_col, "empty entity")
            entity = _entity(row[options.entity_col])
            payload = {f.name: _cell(options.path, row, row_number, c, f.type)
                       for c, f in mapped.items() if not _missing(row[c])}
            attributes = {str(c): float(row[c]) for c in extra if not _missing(row[c])}
            if attributes:
                payload["attributes"] = attributes
            event_id = f"{run_id}-r{row_number}"
            event_time = start_ms + int((seconds[row_number] - first) * 1000.0)
            event = {"event_id": event_id, "domain": options.domain, "entity_id": entity,
                     "event_time": event_time, "schema_version": SCHEMA_VERSION,
                     "payload": payload}
            try:
                value = contract.encode(event)
            except InvalidEvent:
                raise _row_error(options.path, row_number, contract.problems(event)[0],
                                 columns, attributes) from None
            kind = None
            if options.label_col and _positive(row[options.label_col]):
                kind = f"{options.label_col}={row[options.label_col]}"
                self.positives += 1
            self.messages.append((entity.encode(), value, event_id, event_time, kind))
        self.options = options
        self.run_id = run_id
        self.next = 0

    def __iter__(self) -> Iterator[tuple[bytes, bytes, Episode | None, str]]:
        return self

    def __next__(self) -> tuple[bytes, bytes, Episode | None, str]:
        i = self.next
        self.next += 1
        key, value, event_id, event_time, kind = self.messages[i]
        episode = None
        if kind is not None:
            episode = Episode(f"{self.run_id}-{self.options.domain}-ep{i}", self.options.domain,
                              key.decode(), kind, event_time, remaining=0,
                              events=[(event_id, event_time)])
        return key, value, episode, ""

    def close(self) -> list[Episode]:
        """Nothing is cut short: every episode is one event."""
        return []


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def run(cfg: Settings, plan: RunPlan, options: ReplayOptions,
        progress: ProgressFn | None = None) -> dict[str, Any]:
    """Replay the file in this process (a thread sends, this one records labels)."""
    clock = SystemClock()
    start_ms = int(clock.wall() * 1000)
    run_id = plan.run_id(start_ms)
    source = ReplaySource(options, run_id, start_ms)
    send = functools.partial(drive, options.domain, source, source.timeline,
                             cfg.bootstrap_servers, cfg.events_topic(options.domain),
                             plan.delivery_timeout_s, start_ms, run_id)
    summary = execute(cfg, plan, {options.domain: start_thread(send, "replay")},
                      {options.domain: source.timeline.total}, run_id, start_ms, progress,
                      clock)
    summary["replay"] = {"file": str(options.path), "rows": source.timeline.total,
                         "labelled_rows": source.positives, "speedup": options.speedup,
                         "ignored_columns": source.ignored}
    return summary
