"""Gaming features: a player's accuracy and reactions over recent shots, movement speed, loot."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.features.base import Engine, codes, floats, kernel, or_zero, truthy
from models.features.state import NO_TIME, State

# Two minutes of shots: long enough for a burst of aimed shots, short enough that an episode's
# shots stop colouring the player's ordinary play soon after it ends.
_SHOTS_MS, _SHOTS = 120_000, 20
_MOVES_MS, _MOVES = 60_000, 30
_LOOT_MS, _LOOT = 60_000, 100
_SHOOT, _MOVE, _TAKE_LOOT = 1, 2, 3
_ACTIONS = {"shoot": _SHOOT, "move": _MOVE, "loot": _TAKE_LOOT}
_NAMES = ("is_shot", "is_move", "is_loot", "shots_window", "hit_rate", "headshot_rate",
          "fast_reactions_10", "mean_reaction_10", "reaction_ms", "speed", "max_speed_1m",
          "speed_ratio", "loot_gain_1m", "loot_count_1m", "secs_since_last")


@kernel
def _trim(times, lo, p, t, span, cap):
    lo = max(lo, p - cap)
    while lo < p and times[lo] < t - span:
        lo += 1
    return lo


@kernel
def _fold(starts, rows, times, action, speed, has_speed, reaction, hit, headshot, gain,
          last_t, typical_speed,
          shot_t, shot_hit, shot_head, shot_reaction, shot_offsets, shot_tails,
          move_t, move_speed, move_offsets, move_tails,
          loot_t, loot_gain, loot_offsets, loot_tails,
          out, shot_lo, move_lo, loot_lo):
    # Each window is a range [lo, p) of its combined tail + batch entries; times never
    # decrease within an entity (late events are folded at the newest time).
    for g in range(len(rows)):
        r = rows[g]
        s_lo, m_lo, l_lo = shot_offsets[g], move_offsets[g], loot_offsets[g]
        s_p, m_p, l_p = s_lo + shot_tails[g], m_lo + move_tails[g], l_lo + loot_tails[g]
        for j in range(starts[g], starts[g + 1]):
            t = max(times[j], last_t[r])
            gap_s = (t - last_t[r]) / 1000.0 if last_t[r] != NO_TIME else 86_400.0
            a = action[j]
            if a == _SHOOT:
                shot_t[s_p], shot_hit[s_p], shot_head[s_p] = t, hit[j], headshot[j]
                shot_reaction[s_p] = reaction[j]
                s_p += 1
            elif a == _MOVE:
                move_t[m_p], move_speed[m_p] = t, speed[j]
                m_p += 1
            elif a == _TAKE_LOOT:
                loot_t[l_p], loot_gain[l_p] = t, gain[j]
                l_p += 1
            s_lo = _trim(shot_t, s_lo, s_p, t, _SHOTS_MS, _SHOTS)
            m_lo = _trim(move_t, m_lo, m_p, t, _MOVES_MS, _MOVES)
            l_lo = _trim(loot_t, l_lo, l_p, t, _LOOT_MS, _LOOT)

            hits = headshots = 0.0
            for k in range(s_lo, s_p):
                hits += shot_hit[k]
                headshots += shot_head[k]
            n_shots = s_p - s_lo
            fast = 0
            reactions = 0.0
            for k in range(max(s_lo, s_p - 10), s_p):
                fast += shot_reaction[k] < 100.0
                reactions += shot_reaction[k]
            n_reactions = s_p - max(s_lo, s_p - 10)
            max_speed = move_speed[m_lo] if m_p > m_lo else 0.0
            for k in range(m_lo + 1, m_p):
                max_speed = max(max_speed, move_speed[k])
            gains = 0.0
            for k in range(l_lo, l_p):
                gains += loot_gain[k]
            typical = typical_speed[r]
            known = not np.isnan(typical) and typical != 0.0
            speed_ratio = speed[j] / typical if known and a == _MOVE else 1.0
            if a == _MOVE and has_speed[j]:
                typical_speed[r] = speed[j] if np.isnan(typical) \
                    else typical + 0.05 * (speed[j] - typical)
            last_t[r] = t

            out[j, 0] = 1.0 if a == _SHOOT else 0.0
            out[j, 1] = 1.0 if a == _MOVE else 0.0
            out[j, 2] = 1.0 if a == _TAKE_LOOT else 0.0
            out[j, 3] = n_shots
            out[j, 4] = hits / n_shots if n_shots else 0.0
            out[j, 5] = headshots / hits if hits else 0.0
            out[j, 6] = fast
            out[j, 7] = reactions / n_reactions if n_reactions else 0.0
            out[j, 8] = reaction[j]
            out[j, 9] = speed[j]
            out[j, 10] = max_speed
            out[j, 11] = speed_ratio
            out[j, 12] = gains
            out[j, 13] = l_p - l_lo
            out[j, 14] = min(gap_s, 86_400.0)
        shot_lo[g], move_lo[g], loot_lo[g] = s_lo, m_lo, l_lo


def _prepare(columns: list[Sequence]) -> tuple[np.ndarray, ...]:
    action, speed, reaction, hit, headshot, gain = columns
    speeds = floats(speed)
    return (codes(action, _ACTIONS), or_zero(speeds), (~np.isnan(speeds)).astype(np.int64),
            or_zero(reaction), truthy(hit), truthy(headshot), or_zero(gain))


def _run(state: State, rows: np.ndarray, starts: np.ndarray, times: np.ndarray,
         action: np.ndarray, *values: np.ndarray) -> np.ndarray:
    windows = {}
    for name, code in (("shots", _SHOOT), ("moves", _MOVE), ("loot", _TAKE_LOOT)):
        room = np.add.reduceat((action == code).astype(np.int64), starts[:-1])
        windows[name] = state.tails[name].gather(rows, room, state.scalars["last_t"])
    (shots, s_off, s_tail), (moves, m_off, m_tail), (loot, l_off, l_tail) = windows.values()
    out = np.empty((len(times), len(_NAMES)), dtype=np.float64)
    lo = {name: np.empty(len(rows), dtype=np.int64) for name in windows}
    s = state.scalars
    _fold(starts, rows, times, action, *values, s["last_t"], s["typical_speed"],
          shots["t"], shots["hit"], shots["headshot"], shots["reaction"], s_off, s_tail,
          moves["t"], moves["speed"], m_off, m_tail, loot["t"], loot["gain"], l_off, l_tail,
          out, lo["shots"], lo["moves"], lo["loot"])
    for name, (combined, offsets, _) in windows.items():
        state.tails[name].put(rows, combined, lo[name], offsets[1:], s["last_t"])
    return out


ENGINE = Engine(
    "gaming", ("action", "speed", "reaction_ms", "hit", "headshot", "resource_gain"), _NAMES,
    scalars={"last_t": (np.int64, NO_TIME),
             "typical_speed": (np.float64, np.nan)},   # EWMA of move speeds; NaN until one
    tails={"shots": {"t": np.int32, "hit": np.int8, "headshot": np.int8,
                     "reaction": np.float64},
           "moves": {"t": np.int32, "speed": np.float64},
           "loot": {"t": np.int32, "gain": np.float64}},
    prepare=_prepare, run=_run)
