"""One module per domain: its payload contract, entity profiles and anomaly kinds.

Every domain module exposes the same names, which the generator uses without knowing the
domain:

- ``CONTRACT``: the :class:`~patternalarm.events.Contract` of its events.
- ``ENTITY_PREFIX``: entity ids are ``<prefix>-<6 digits>``.
- ``PERIODIC``: whether entities report on a schedule (in turn) rather than at random.
- ``make_profile(rng, entity_id)``: the entity's stable habits, drawn from its own seeded rng.
- ``normal(profile, t_s, rng)``: payload values (contract order) of an ordinary event at epoch
  second ``t_s``.
- ``ANOMALIES``: kind -> ``plan(profile, t_s, rng)`` returning the episode's events as
  ``(seconds after the episode starts, payload values)``, in time order.
"""

from __future__ import annotations

from types import ModuleType

from patternalarm.domains import gaming, iot, payments
from patternalarm.events import Contract

MODELS: dict[str, ModuleType] = {"payments": payments, "gaming": gaming, "iot": iot}


def contract(domain: str) -> Contract:
    return MODELS[domain].CONTRACT
