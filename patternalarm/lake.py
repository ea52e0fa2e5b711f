"""The stream's lake as readers see it: one directory of feature rows per micro-batch id
(streaming/sinks.py writes it; a replayed batch rewrites its directory, never adds one)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from patternalarm.settings import Settings


def batch_dir(cfg: Settings, batch_id: int) -> Path:
    return cfg.lake_dir / "features" / f"batch_id={batch_id}"


def event_ids(cfg: Settings, batch_ids: Iterable[int], prefixes: tuple[str, ...]
              ) -> Counter[str]:
    """How many of the batches committed each event id starting with one of `prefixes` (a
    generator run's event ids start with its run id): 1 when exactly once."""
    import pyarrow.parquet as pq

    seen: Counter[str] = Counter()
    for batch_id in batch_ids:
        path = batch_dir(cfg, batch_id)
        if not path.is_dir():  # a batch of dead letters only writes no feature rows
            continue
        ids = pq.read_table(path, columns=["event_id"])["event_id"].to_pylist()
        seen.update(i for i in ids if i.startswith(prefixes))
    return seen
