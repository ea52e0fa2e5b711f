"""Payments features: a card's velocity, small test charges, amount against its own history,
spread over countries and merchants, and impossible travel."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from models.features.base import Engine, codes, floats, hashes, kernel
from models.features.state import NO_TIME, State, copy_runs

SMALL_CHARGE = 3.0      # card-testing charges stay under a few units
_HOUR_MS = 3_600_000
_RECENT = 300           # at most this many of the last hour's payments are kept
_NAMES = ("count_1m", "count_10m", "count_1h", "small_charges_5m", "amount", "amount_ratio",
          "amount_z", "countries_1h", "merchants_10m", "secs_since_last", "travel_kmh",
          "is_ecom", "is_small_charge", "secs_since_small_charge", "history_len")


@kernel
def _km(lat1, lon1, lat2, lon2):
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 12_742.0 * math.asin(min(1.0, math.sqrt(h)))


@kernel
def _slots(hashes, lo, hi, keys, used, slots):
    """slots[k] for k in [lo, hi): one slot of the open-addressing table `keys` (its size a
    power of two, at least twice the entries it will hold) per distinct hash."""
    mask = len(keys) - 1
    for k in range(lo, hi):
        h = hashes[k]
        i = h & mask
        while used[i] and keys[i] != h:
            i = (i + 1) & mask
        used[i] = True
        keys[i] = h
        slots[k] = i


@kernel
def _fold(starts, rows, times, amount, lat, lon, ecom,
          last_t, seen, n_amounts, mean, m2, typical, small_t, geo_lat, geo_lon, geo_t,
          recent_t, country_hash, offsets, tail_lengths,
          merchant_hash, recent_small, ten_offsets, ten_tail_lengths,
          out, window_start, ten_window_start):
    # The last hour's payments (at most _RECENT) are `recent`; the shorter windows are its
    # suffixes. Times never decrease within an entity (late events are folded at the newest
    # time), so every window is a range [lo, p) whose ends only move forward; distinct
    # countries and merchants are kept as counts per slot of a hash table local to the entity.
    # Merchants and small flags are only read in the last ten minutes, so only that suffix of
    # `recent` keeps them (in arrays of their own: `recent` index k is their index k - shift).
    longest = 1
    for g in range(len(rows)):
        longest = max(longest, offsets[g + 1] - offsets[g])
    size = 4
    while size < 4 * longest:  # an entity's countries and merchants share one table
        size <<= 1
    keys = np.empty(size, np.int64)
    used = np.zeros(size, np.bool_)
    country = np.empty(len(recent_t), np.int64)
    merchant = np.empty(len(merchant_hash), np.int64)
    country_count = np.zeros(size, np.int64)
    merchant_count = np.zeros(size, np.int64)
    for g in range(len(rows)):
        r = rows[g]
        lo = offsets[g]
        p = lo + tail_lengths[g]
        lo10 = lo5 = lo1 = p - ten_tail_lengths[g]
        shift = lo10 - ten_offsets[g]
        _slots(country_hash, lo, offsets[g + 1], keys, used, country)
        _slots(merchant_hash, ten_offsets[g], ten_offsets[g + 1], keys, used, merchant)
        countries = merchants = small_5m = 0
        for k in range(lo, p):
            country_count[country[k]] += 1
            countries += country_count[country[k]] == 1
        for k in range(lo10 - shift, p - shift):
            merchant_count[merchant[k]] += 1
            merchants += merchant_count[merchant[k]] == 1
            small_5m += recent_small[k]
        for j in range(starts[g], starts[g + 1]):
            t = max(times[j], last_t[r])
            gap_s = (t - last_t[r]) / 1000.0 if last_t[r] != NO_TIME else 86_400.0
            a = amount[j]
            log_amount = math.log1p(a)
            n_am, mu, m2_r, typ = n_amounts[r], mean[r], m2[r], typical[r]
            std = math.sqrt(m2_r / (n_am - 1)) if n_am > 1 else 0.0
            amount_z = (log_amount - mu) / max(std, 0.25) if n_am >= 3 else 0.0
            has_typical = not math.isnan(typ)
            amount_ratio = a / typ if has_typical and typ != 0.0 else 1.0
            has_geo = not (math.isnan(lat[j]) or math.isnan(lon[j]))
            travel_kmh = 0.0
            if has_geo and geo_t[r] != NO_TIME:
                hours = max((t - geo_t[r]) / 3_600_000.0, 1 / 60)  # a minute at least
                travel_kmh = _km(geo_lat[r], geo_lon[r], lat[j], lon[j]) / hours
            # Small for this card: a card that always spends little is not testing itself.
            small = a < SMALL_CHARGE and (not has_typical or a < 0.3 * typ)

            recent_t[p] = t
            recent_small[p - shift] = small
            country_count[country[p]] += 1
            countries += country_count[country[p]] == 1
            merchant_count[merchant[p - shift]] += 1
            merchants += merchant_count[merchant[p - shift]] == 1
            small_5m += small
            p += 1
            while lo < p - _RECENT or recent_t[lo] < t - _HOUR_MS:
                country_count[country[lo]] -= 1
                countries -= country_count[country[lo]] == 0
                lo += 1
            while lo10 < lo or recent_t[lo10] < t - 600_000:
                merchant_count[merchant[lo10 - shift]] -= 1
                merchants -= merchant_count[merchant[lo10 - shift]] == 0
                lo10 += 1
            while lo5 < lo or recent_t[lo5] < t - 300_000:
                small_5m -= recent_small[lo5 - shift]
                lo5 += 1
            while lo1 < lo or recent_t[lo1] < t - 60_000:
                lo1 += 1
            secs_since_small = (t - small_t[r]) / 1000.0 if small_t[r] != NO_TIME else 86_400.0
            history = seen[r]

            # Update after computing, so an event's features describe it against its past.
            seen[r] = history + 1
            last_t[r] = t
            if small:
                # Test charges are not the card's spending: keep them out of its baseline.
                small_t[r] = t
            else:
                delta = log_amount - mu
                n_am += 1
                mu += delta / n_am
                n_amounts[r], mean[r], m2[r] = n_am, mu, m2_r + delta * (log_amount - mu)
                typical[r] = typ + 0.1 * (a - typ) if has_typical else a
            if has_geo:
                geo_lat[r], geo_lon[r], geo_t[r] = lat[j], lon[j], t
            out[j, 0] = p - lo1
            out[j, 1] = p - lo10
            out[j, 2] = p - lo
            out[j, 3] = small_5m
            out[j, 4] = a
            out[j, 5] = amount_ratio
            out[j, 6] = amount_z
            out[j, 7] = countries
            out[j, 8] = merchants
            out[j, 9] = min(gap_s, 86_400.0)
            out[j, 10] = travel_kmh
            out[j, 11] = ecom[j]
            out[j, 12] = 1.0 if small else 0.0
            out[j, 13] = min(secs_since_small, 86_400.0)
            out[j, 14] = min(history, 1_000)
        window_start[g], ten_window_start[g] = lo, lo10 - shift
        for k in range(lo, p):
            country_count[country[k]] -= 1
        for k in range(lo10 - shift, p - shift):
            merchant_count[merchant[k]] -= 1
        for k in range(offsets[g], p):
            used[country[k]] = False
        for k in range(ten_offsets[g], p - shift):
            used[merchant[k]] = False


def _prepare(columns: list[Sequence]) -> tuple[np.ndarray, ...]:
    amount, country, merchant, lat, lon, channel = columns
    return (floats(amount), floats(lat), floats(lon),
            codes(channel, {"ecom": 1}).astype(np.float64), hashes(country), hashes(merchant))


def _run(state: State, rows: np.ndarray, starts: np.ndarray, times: np.ndarray,
         amount: np.ndarray, lat: np.ndarray, lon: np.ndarray, ecom: np.ndarray,
         country: np.ndarray, merchant: np.ndarray) -> np.ndarray:
    events = np.diff(starts)
    s = state.scalars
    hour, offsets, tail_lengths = state.tails["recent"].gather(rows, events, s["last_t"])
    ten, ten_offsets, ten_tail_lengths = state.tails["recent_10m"].gather(rows, events,
                                                                           s["last_t"])
    copy_runs(country, starts, hour["country"], offsets[:-1] + tail_lengths, events)
    copy_runs(merchant, starts, ten["merchant"], ten_offsets[:-1] + ten_tail_lengths, events)
    out = np.empty((len(times), len(_NAMES)), dtype=np.float64)
    window_start = np.empty(len(rows), dtype=np.int64)
    ten_window_start = np.empty(len(rows), dtype=np.int64)
    _fold(starts, rows, times, amount, lat, lon, ecom, s["last_t"], s["seen"], s["n_amounts"],
          s["mean"], s["m2"], s["typical"], s["small_t"], s["geo_lat"], s["geo_lon"],
          s["geo_t"], hour["t"], hour["country"], offsets, tail_lengths, ten["merchant"],
          ten["small"], ten_offsets, ten_tail_lengths, out, window_start, ten_window_start)
    state.tails["recent"].put(rows, hour, window_start, offsets[1:], s["last_t"])
    state.tails["recent_10m"].put(rows, ten, ten_window_start, ten_offsets[1:], s["last_t"])
    return out


ENGINE = Engine(
    "payments", ("amount", "country", "merchant_id", "lat", "lon", "channel"), _NAMES,
    scalars={"last_t": (np.int64, NO_TIME), "seen": (np.int64, 0),
             # Welford's running mean and M2 of log1p(amount), test charges left out
             "n_amounts": (np.int64, 0), "mean": (np.float64, 0.0), "m2": (np.float64, 0.0),
             "typical": (np.float64, np.nan),        # EWMA of the amount; NaN until one
             "small_t": (np.int64, NO_TIME),         # the last small charge
             "geo_lat": (np.float64, np.nan), "geo_lon": (np.float64, np.nan),
             "geo_t": (np.int64, NO_TIME)},          # the last located payment
    tails={"recent": {"t": np.int32, "country": np.int64},
           # the last ten minutes of `recent`, aligned with its end
           "recent_10m": {"merchant": np.int64, "small": np.int8}},
    prepare=_prepare, run=_run)
