"""Feature engines: the plain per-event fold (tests/feature_reference.py, what models/features
was before issue 14) against the columnar engine, side by side in one process.

    .venv/bin/python benchmarks/features.py [--entities 1000] [--minutes 70] [--big 100000]

Per domain, a generated stream at the live shape (about one event per entity per minute) is
folded in micro-batches of `--batch-s` of event time (each sorted by entity and time, as the
stream does) and as one batch (training's `compute`); µs per event is the best of `--repeat`
runs; the pickled state at the end of the stream (windows full: over an hour of history) is
given in bytes per entity, both ways. Then the state of `--big` entities (the stream's first
`--big-minutes` repeated under new entity ids) is pickled and unpickled both ways: a dict per
entity before, arrays after.
Finally the numba compile time: the first fold in a fresh process with an empty cache, and
with a warm one.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.features import ENGINES, fold, new_state  # noqa: E402
from models.offline import generate  # noqa: E402
from tests import feature_reference  # noqa: E402

_FIRST_FOLD = """
import sys, time
sys.path.insert(0, {root!r})
started = time.perf_counter()
from models.features import warm_up
imported = time.perf_counter()
warm_up()
print(round(imported - started, 2), round(time.perf_counter() - imported, 2))
"""


def batches(events: pd.DataFrame, batch_s: float) -> list[pd.DataFrame]:
    cut = (events["event_time"] - events["event_time"].min()) // int(batch_s * 1000)
    return [b.sort_values(["entity_id", "event_time"], kind="stable")
            for _, b in events.groupby(cut, sort=True)]


def arguments(domain: str, batch: pd.DataFrame, as_lists: bool) -> tuple:
    columns = [batch[c] if c in batch else pd.Series([None] * len(batch))
               for c in ENGINES[domain].inputs]
    if as_lists:  # the reference's callers passed lists
        return (batch["entity_id"].tolist(), batch["event_time"].tolist(),
                [c.tolist() for c in columns])
    return (batch["entity_id"].to_numpy(), batch["event_time"].to_numpy(),
            [c.to_numpy() for c in columns])


def time_folds(domain: str, parts: list[pd.DataFrame], repeat: int) -> tuple[float, float]:
    """Best µs/event over `repeat` runs: (reference, engine)."""
    reference = [arguments(domain, b, True) for b in parts]
    engine = [arguments(domain, b, False) for b in parts]
    events = sum(len(b) for b in parts)
    fold(domain, new_state(domain), *engine[0])  # compiled (or loaded) before it is timed
    best = []
    for run in (lambda: _run(feature_reference.fold, {}, domain, reference),
                lambda: _run(fold, new_state(domain), domain, engine)):
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        best.append(min(times) / events * 1e6)
    return best[0], best[1]


def _run(fold_fn, state, domain: str, parts: list[tuple]) -> None:
    for ids, times, columns in parts:
        fold_fn(domain, state, ids, times, columns)


def pickled(state) -> tuple[float, float, float]:
    """(MB, ms to pickle, ms to unpickle)."""
    started = time.perf_counter()
    blob = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    dumped = time.perf_counter()
    pickle.loads(blob)
    return len(blob) / 1e6, (dumped - started) * 1e3, (time.perf_counter() - dumped) * 1e3


def big_states(domain: str, events: pd.DataFrame, entities: int) -> tuple:
    copies = -(-entities // events["entity_id"].nunique())
    many = pd.concat([events.assign(entity_id=events["entity_id"] + f"#{k}")
                      for k in range(copies)], ignore_index=True)
    many = many.sort_values(["entity_id", "event_time"], kind="stable")
    states, state = {}, new_state(domain)
    feature_reference.fold(domain, states, *arguments(domain, many, True))
    fold(domain, state, *arguments(domain, many, False))
    return states, state


def first_fold_seconds(cache_dir: str) -> str:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    return subprocess.run([sys.executable, "-c", _FIRST_FOLD.format(root=str(ROOT))], env=env,
                          check=True, capture_output=True, text=True).stdout.split()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=1_000)
    parser.add_argument("--minutes", type=float, default=70)
    parser.add_argument("--batch-s", type=float, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--big-minutes", type=float, default=10)
    args = parser.parse_args(argv)

    print(f"{'domain':9} {'events':>7} {'batches':>7} | µs/event micro-batches: reference  "
          "engine  ratio | one batch: reference  engine  ratio | state B/entity: dicts arrays")
    streams = {}
    for domain in ENGINES:
        events = generate(domain, seed=1, minutes=args.minutes, entities=args.entities,
                          anomaly_rate=0.001).events
        streams[domain] = events
        parts = batches(events, args.batch_s)
        ref_small, eng_small = time_folds(domain, parts, args.repeat)
        ref_one, eng_one = time_folds(domain, batches(events, 1e9), args.repeat)
        states, state = {}, new_state(domain)
        _run(feature_reference.fold, states, domain, [arguments(domain, b, True) for b in parts])
        _run(fold, state, domain, [arguments(domain, b, False) for b in parts])
        print(f"{domain:9} {len(events):>7} {len(parts):>7} | {ref_small:28.2f} "
              f"{eng_small:7.2f} {ref_small / eng_small:6.0f}x | {ref_one:20.2f} "
              f"{eng_one:7.2f} {ref_one / eng_one:6.0f}x | "
              f"{pickled(states)[0] * 1e6 / len(states):19.0f} "
              f"{pickled(state)[0] * 1e6 / len(state):6.0f}")

    print(f"\nstate of {args.big:,} entities after {args.big_minutes:g} min: "
          "MB / pickle ms / unpickle ms")
    for domain, events in streams.items():
        start = events["event_time"].min()
        head = events[events["event_time"] < start + args.big_minutes * 60_000]
        states, state = big_states(domain, head, args.big)
        before, after = pickled(states), pickled(state)
        print(f"{domain:9} {len(state):>7} entities | dicts {before[0]:6.1f} MB "
              f"{before[1]:7.0f} ms {before[2]:7.0f} ms | arrays {after[0]:6.1f} MB "
              f"{after[1]:5.0f} ms {after[2]:5.0f} ms | nbytes {state.nbytes / 1e6:.1f} MB")

    with tempfile.TemporaryDirectory() as cache:
        cold, warm = first_fold_seconds(cache), first_fold_seconds(cache)
    print(f"\nnew process, import + first fold of each domain (s): empty numba cache "
          f"{cold[0]} + {cold[1]}, warm cache {warm[0]} + {warm[1]}")


if __name__ == "__main__":
    main()
