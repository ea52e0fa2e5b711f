"""IoT features: a device's reading against its own level and noise, stuck values, gaps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.features.base import Engine, floats, kernel
from models.features.state import NO_TIME, State

_NAMES = ("value", "spike_z", "drift_z", "repeat_run", "secs_since_last", "gap_ratio",
          "battery_pct", "history_len")


@kernel
def _fold(starts, rows, times, value, battery,
          last_t, last_value, fast, slow, noise, seen, run, diffs, typical_gap, out):
    # NaN stands for "no value yet" in the carried scalars.
    for g in range(len(rows)):
        r = rows[g]
        for j in range(starts[g], starts[g + 1]):
            t = max(times[j], last_t[r])
            v = value[j]
            has_last = last_t[r] != NO_TIME
            gap_s = (t - last_t[r]) / 1000.0 if has_last else 0.0
            gap = typical_gap[r]
            gap_ratio = gap_s / gap if not np.isnan(gap) and gap != 0.0 else 1.0
            f, s, nz, n, previous = fast[r], slow[r], noise[r], seen[r], last_value[r]
            scale = max(0.0 if np.isnan(nz) else nz, 1e-9)
            ready = n >= 5 and not np.isnan(nz)
            spike_z = abs(v - f) / scale if ready else 0.0
            drift_z = abs(f - s) / scale if ready else 0.0
            run[r] = run[r] + 1 if v == previous else 1

            if not np.isnan(previous) and v != previous:
                # A repeated value says nothing about the noise; counting it would shrink the
                # scale during a stuck episode and make the next honest reading look like a
                # spike.
                diffs[r] += 1
                # A plain mean until the EWMA has enough samples: an EWMA seeded with its
                # first sample keeps most of that one sample's weight for dozens of readings.
                step = abs(v - previous)
                noise[r] = step if np.isnan(nz) else nz + max(1.0 / diffs[r], 0.05) * (step - nz)
            if spike_z < 6.0:  # one wild reading must not drag the baselines
                fast[r] = v if np.isnan(f) else f + 0.3 * (v - f)
                slow[r] = v if np.isnan(s) else s + max(1.0 / (n + 1), 0.01) * (v - s)
            if has_last and gap_s > 0:
                clipped = min(gap_s, 3_600.0)
                typical_gap[r] = clipped if np.isnan(gap) else gap + 0.1 * (clipped - gap)
            last_t[r], last_value[r], seen[r] = t, v, n + 1

            out[j, 0] = v
            out[j, 1] = spike_z
            out[j, 2] = drift_z
            out[j, 3] = run[r]
            out[j, 4] = min(gap_s, 86_400.0)
            out[j, 5] = gap_ratio
            out[j, 6] = -1.0 if np.isnan(battery[j]) else battery[j]
            out[j, 7] = min(n, 1_000)


def _prepare(columns: list[Sequence]) -> tuple[np.ndarray, ...]:
    value, battery = columns
    return floats(value), floats(battery)


def _run(state: State, rows: np.ndarray, starts: np.ndarray, times: np.ndarray,
         value: np.ndarray, battery: np.ndarray) -> np.ndarray:
    out = np.empty((len(times), len(_NAMES)), dtype=np.float64)
    s = state.scalars
    _fold(starts, rows, times, value, battery, s["last_t"], s["last_value"], s["fast"],
          s["slow"], s["noise"], s["seen"], s["run"], s["diffs"], s["typical_gap"], out)
    return out


ENGINE = Engine(
    "iot", ("value", "battery_pct"), _NAMES,
    scalars={"last_t": (np.int64, NO_TIME), "last_value": (np.float64, np.nan),
             "fast": (np.float64, np.nan), "slow": (np.float64, np.nan),   # EWMA levels
             "noise": (np.float64, np.nan),   # EWMA of |change| between differing readings
             "seen": (np.int64, 0), "run": (np.int64, 0), "diffs": (np.int64, 0),
             "typical_gap": (np.float64, np.nan)},
    prepare=_prepare, run=_run, tails={})
