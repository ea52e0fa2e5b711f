"""IoT: one entity per device, a sensor with its own baseline, daily cycle and noise."""

from __future__ import annotations

import math
from random import Random

from patternalarm.events import Contract, Field

ENTITY_PREFIX = "device"
# Devices report on a schedule; a silence is an anomaly.
PERIODIC = True
# sensor type: (unit, baseline mean, baseline spread, daily amplitude, noise)
SENSORS = {
    "temperature": ("C", 21.0, 3.0, 3.0, 0.3),
    "humidity": ("%", 45.0, 10.0, 8.0, 1.5),
    "pressure": ("hPa", 1013.0, 5.0, 2.0, 0.5),
    "vibration": ("mm/s", 2.0, 0.5, 0.3, 0.2),
}
FIRMWARE = ("1.4.2", "1.5.0", "2.0.1")
DAY_S = 86_400.0

CONTRACT = Contract("iot", (
    Field("sensor_type", "string", choices=tuple(SENSORS)),
    Field("value", "double", min=-1e6, max=1e6, decimals=3),
    Field("unit", "string", required=False, choices=tuple(s[0] for s in SENSORS.values())),
    Field("battery_pct", "double", required=False, min=0, max=100, decimals=1),
    Field("firmware", "string", required=False, max_len=32),
    Field("site_id", "string", required=False, max_len=64),
))


class Profile:
    __slots__ = ("entity_id", "sensor", "unit", "baseline", "amplitude", "noise", "phase",
                 "battery", "firmware", "site")

    def __init__(self, entity_id: str, sensor: str, baseline: float, phase: float,
                 battery: float, firmware: str, site: str) -> None:
        self.entity_id = entity_id
        self.sensor = sensor
        self.unit, _, _, self.amplitude, self.noise = SENSORS[sensor]
        self.baseline = baseline
        self.phase = phase
        self.battery = battery
        self.firmware = firmware
        self.site = site

    def expected(self, t_s: float) -> float:
        return self.baseline + self.amplitude * math.sin(2 * math.pi * (t_s / DAY_S + self.phase))


def make_profile(rng: Random, entity_id: str) -> Profile:
    sensor = rng.choice(tuple(SENSORS))
    _, mean, spread, _, _ = SENSORS[sensor]
    return Profile(entity_id, sensor, baseline=rng.gauss(mean, spread), phase=rng.random(),
                   battery=rng.uniform(20.0, 100.0), firmware=rng.choice(FIRMWARE),
                   site=f"site-{rng.randrange(200):03d}")


def _reading(p: Profile, value: float) -> tuple:
    return (p.sensor, value, p.unit, p.battery, p.firmware, p.site)


def normal(p: Profile, t_s: float, rng: Random) -> tuple:
    return _reading(p, p.expected(t_s) + rng.gauss(0.0, p.noise))


def _every(rng: Random, n: int, gap: tuple[float, float]) -> list[float]:
    times, at = [], 0.0
    for _ in range(n):
        times.append(at)
        at += rng.uniform(*gap)
    return times


def stuck(p: Profile, t_s: float, rng: Random) -> list[tuple[float, tuple]]:
    """The sensor repeats one value exactly: no noise, no daily cycle."""
    frozen = round(p.expected(t_s), 3)
    return [(at, _reading(p, frozen)) for at in _every(rng, rng.randint(20, 60), (15.0, 60.0))]


def spike(p: Profile, t_s: float, rng: Random) -> list[tuple[float, tuple]]:
    """A jump of many noise widths, for one to three readings."""
    sign = rng.choice((-1.0, 1.0))
    return [(at, _reading(p, p.expected(t_s + at) + sign * rng.uniform(10, 20) * p.noise))
            for at in _every(rng, rng.randint(1, 3), (5.0, 30.0))]


def drift(p: Profile, t_s: float, rng: Random) -> list[tuple[float, tuple]]:
    """A slow calibration drift that ends many noise widths away from the baseline."""
    times = _every(rng, rng.randint(30, 80), (10.0, 40.0))
    total = rng.choice((-1.0, 1.0)) * rng.uniform(8.0, 15.0) * p.noise
    return [(at, _reading(p, p.expected(t_s + at) + total * (i + 1) / len(times)
                          + rng.gauss(0.0, p.noise)))
            for i, at in enumerate(times)]


def silence(p: Profile, t_s: float, rng: Random) -> list[tuple[float, tuple]]:
    """The device goes quiet for minutes; the labelled event is the reading that ends the
    gap (the episode starts when the device went quiet)."""
    gap = rng.uniform(180.0, 480.0)
    return [(gap, normal(p, t_s + gap, rng))]


ANOMALIES = {"stuck": stuck, "spike": spike, "drift": drift, "silence": silence}
