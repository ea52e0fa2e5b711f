"""Payments: one entity per card, with a home country, spending level and usual merchants."""

from __future__ import annotations

import math
from random import Random

from patternalarm.events import Contract, Field

ENTITY_PREFIX = "card"
# Entities act when they like: gaps between their events vary freely.
PERIODIC = False
CATEGORIES = ("grocery", "fuel", "restaurant", "travel", "electronics", "fashion",
              "digital_goods", "jewelry", "pharmacy", "entertainment")
CHANNELS = ("pos", "ecom", "atm")

CONTRACT = Contract("payments", (
    Field("merchant_id", "string", required=False, max_len=64),
    Field("category", "string", required=False, choices=CATEGORIES),
    Field("amount", "double", min=0.01, max=1e7, decimals=2, doc="in `currency`"),
    Field("currency", "string", required=False, max_len=3, doc="ISO 4217"),
    Field("country", "string", required=False, max_len=2, doc="ISO 3166 alpha-2"),
    Field("lat", "double", required=False, min=-90, max=90, decimals=4),
    Field("lon", "double", required=False, min=-180, max=180, decimals=4),
    Field("device_id", "string", required=False, max_len=64, doc="terminal or customer device"),
    Field("channel", "string", required=False, choices=CHANNELS),
    Field("card_present", "boolean", required=False),
))

# country: (currency, lat, lon) of a representative city.
COUNTRIES = {
    "US": ("USD", 40.71, -74.01), "GB": ("GBP", 51.51, -0.13), "DE": ("EUR", 52.52, 13.40),
    "FR": ("EUR", 48.86, 2.35), "ES": ("EUR", 40.42, -3.70), "IT": ("EUR", 41.90, 12.50),
    "BR": ("BRL", -23.55, -46.63), "IN": ("INR", 19.08, 72.88), "JP": ("JPY", 35.68, 139.69),
    "AU": ("AUD", -33.87, 151.21), "CA": ("CAD", 43.65, -79.38), "MX": ("MXN", 19.43, -99.13),
    "NG": ("NGN", 6.52, 3.38), "ZA": ("ZAR", -26.20, 28.05), "SG": ("SGD", 1.35, 103.82),
}
_CODES = tuple(COUNTRIES)


class Profile:
    __slots__ = ("entity_id", "country", "currency", "lat", "lon", "mean_amount", "merchants",
                 "devices", "ecom_share")

    def __init__(self, entity_id: str, country: str, mean_amount: float,
                 merchants: tuple[tuple[str, str], ...], devices: tuple[str, ...],
                 ecom_share: float) -> None:
        self.entity_id = entity_id
        self.country = country
        self.currency, self.lat, self.lon = COUNTRIES[country]
        self.mean_amount = mean_amount
        self.merchants = merchants  # (merchant_id, category): where this card usually shops
        self.devices = devices
        self.ecom_share = ecom_share


def _merchant(rng: Random) -> tuple[str, str]:
    number = rng.randrange(100_000)
    # A merchant's category is a property of the merchant, the same for every card.
    return f"m-{number:05d}", CATEGORIES[number % len(CATEGORIES)]


def make_profile(rng: Random, entity_id: str) -> Profile:
    return Profile(
        entity_id, rng.choice(_CODES), mean_amount=round(rng.lognormvariate(3.4, 0.7), 2),
        merchants=tuple(_merchant(rng) for _ in range(rng.randint(4, 12))),
        devices=tuple(f"dev-{rng.randrange(1_000_000):06d}" for _ in range(rng.randint(1, 2))),
        ecom_share=rng.uniform(0.1, 0.6))


def _tx(p: Profile, rng: Random, merchant: tuple[str, str], amount: float, country: str,
        channel: str) -> tuple:
    currency, lat, lon = COUNTRIES[country]
    present = channel != "ecom"
    return (merchant[0], merchant[1], max(amount, 0.01), currency, country,
            lat + rng.uniform(-0.2, 0.2), lon + rng.uniform(-0.2, 0.2),
            p.devices[0] if present else rng.choice(p.devices), channel, present)


def normal(p: Profile, t_s: float, rng: Random) -> tuple:
    merchants = p.merchants
    merchant = merchants[int(rng.random() * len(merchants))]
    channel = "ecom" if rng.random() < p.ecom_share else "pos"
    return _tx(p, rng, merchant, p.mean_amount * rng.lognormvariate(0.0, 0.5), p.country,
               channel)


def card_testing(p: Profile, t_s: float, rng: Random) -> list[tuple[float, tuple]]:
    """Many tiny online charges at unfamiliar merchants, to check a stolen card works."""
    steps, at = [], 0.0
    for _ in range(rng.randint(6, 20)):
        steps.append((at, _tx(p, rng, _merchant(rng), rng.uniform(0.5, 2.99), p.country,
                              "ecom")))
        at += rng.uniform(2.0, 15.0)
    return steps


def velocity_burst(p: Profile, t_s: float, rng: Random) -> list[tuple[float, tuple]]:
    """Ordinary-looking purchases, far more of them than the card ever makes."""
    steps, at = [], 0.0
    for _ in range(rng.randint(8, 15)):
        amount = p.mean_amount * rng.lognormvariate(0.3, 0.5)
        steps.append((at, _tx(p, rng, rng.choice(p.merchants), amount, p.country,
                              rng.choice(CHANNELS))))
        at += rng.uniform(1.0, 6.0)
    return steps


def _km(a: str, b: str) -> float:
    _, lat1, lon1 = COUNTRIES[a]
    _, lat2, lon2 = COUNTRIES[b]
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 12_742 * math.asin(math.sqrt(h))


def impossible_travel(p: Profile, t_s: float, rng: Random) -> list[tuple[float, tuple]]:
    """Card present at home, then minutes later in a country thousands of km away."""
    far = [c for c in _CODES if _km(p.country, c) > 3_000]
    home = _tx(p, rng, rng.choice(p.merchants), p.mean_amount, p.country, "pos")
    steps = [(0.0, home)]
    at = 0.0
    for _ in range(rng.randint(1, 2)):
        at += rng.uniform(120.0, 900.0)
        amount = p.mean_amount * rng.uniform(1.0, 4.0)
        steps.append((at, _tx(p, rng, _merchant(rng), amount, rng.choice(far), "pos")))
    return steps


def amount_spike(p: Profile, t_s: float, rng: Random) -> list[tuple[float, tuple]]:
    """One or two charges tens of times the card's usual amount, on resellable goods."""
    steps, at = [], 0.0
    for _ in range(rng.randint(1, 2)):
        merchant = (f"m-{rng.randrange(100_000):05d}", rng.choice(("electronics", "jewelry")))
        steps.append((at, _tx(p, rng, merchant, p.mean_amount * rng.uniform(15, 60),
                              p.country, rng.choice(("pos", "ecom")))))
        at += rng.uniform(30.0, 300.0)
    return steps


ANOMALIES = {"card_testing": card_testing, "velocity_burst": velocity_burst,
             "impossible_travel": impossible_travel, "amount_spike": amount_spike}
