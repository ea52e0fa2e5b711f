"""Gaming: one entity per player, with a skill level that sets accuracy, reactions and speed."""

from __future__ import annotations

from random import Random

from patternalarm.events import Contract, Field

ENTITY_PREFIX = "player"
# Entities act when they like: gaps between their events vary freely.
PERIODIC = False
ACTIONS = ("move", "shoot", "loot")
WEAPONS = ("rifle", "smg", "shotgun", "sniper", "pistol")
MAP_SIZE = 1000.0
MAX_LEGIT_SPEED = 9.5  # m/s, sprinting; anything faster is not possible in the game

CONTRACT = Contract("gaming", (
    Field("match_id", "string", required=False, max_len=64),
    Field("action", "string", choices=ACTIONS),
    Field("x", "double", required=False, min=0, max=MAP_SIZE, decimals=2),
    Field("y", "double", required=False, min=0, max=MAP_SIZE, decimals=2),
    Field("speed", "double", required=False, min=0, max=200, decimals=2, doc="m/s"),
    Field("reaction_ms", "double", required=False, min=0, max=10_000, decimals=1,
          doc="stimulus (target, item) to action"),
    Field("hit", "boolean", required=False),
    Field("headshot", "boolean", required=False),
    Field("weapon", "string", required=False, choices=WEAPONS),
    Field("resource_gain", "int", required=False, min=0, max=1_000_000,
          doc="items or currency gained by the action"),
))


class Profile:
    __slots__ = ("entity_id", "skill", "speed", "reaction_ms", "hit_p", "headshot_p", "weapon",
                 "match_shift", "x", "y")

    def __init__(self, entity_id: str, skill: float, weapon: str, match_shift: int,
                 x: float, y: float) -> None:
        self.entity_id = entity_id
        self.skill = skill
        self.speed = 4.5 + 3.0 * skill
        self.reaction_ms = 420.0 - 200.0 * skill
        self.hit_p = 0.15 + 0.4 * skill
        self.headshot_p = 0.05 + 0.25 * skill
        self.weapon = weapon
        self.match_shift = match_shift
        self.x, self.y = x, y  # where the player is; normal events move it


def make_profile(rng: Random, entity_id: str) -> Profile:
    return Profile(entity_id, skill=rng.betavariate(2.0, 3.0), weapon=rng.choice(WEAPONS),
                   match_shift=rng.randrange(600), x=rng.uniform(0, MAP_SIZE),
                   y=rng.uniform(0, MAP_SIZE))


def _clamp(v: float, lo: float, hi: float) -> float:
    return lo if v < lo else hi if v > hi else v


def _match(p: Profile, t_s: float) -> str:
    # Ten-minute matches, staggered per player.
    return f"match-{int(t_s + p.match_shift) // 600}"


def _event(p: Profile, t_s: float, action: str, speed: float, reaction: float, hit: bool,
           headshot: bool, gain: int) -> tuple:
    return (_match(p, t_s), action, p.x, p.y, speed, reaction, hit, headshot, p.weapon, gain)


def normal(p: Profile, t_s: float, rng: Random) -> tuple:
    r = rng.random()
    reaction = _clamp(rng.gauss(p.reaction_ms, 60.0), 150.0, 2_000.0)
    if r < 0.6:
        speed = _clamp(rng.gauss(p.speed, 1.0), 0.0, MAX_LEGIT_SPEED)
        p.x = _clamp(p.x + rng.uniform(-speed, speed), 0.0, MAP_SIZE)
        p.y = _clamp(p.y + rng.uniform(-speed, speed), 0.0, MAP_SIZE)
        return _event(p, t_s, "move", speed, reaction, False, False, 0)
    if r < 0.9:
        hit = rng.random() < p.hit_p
        return _event(p, t_s, "shoot", 0.0, reaction, hit, hit and rng.random() < p.headshot_p, 0)
    return _event(p, t_s, "loot", 0.0, reaction, False, False, rng.randint(1, 40))


def _shots(p: Profile, t_s: float, rng: Random, n: int, gap: tuple[float, float],
           hit_p: float, headshot_p: float, reaction: tuple[float, float]
           ) -> list[tuple[float, tuple]]:
    steps, at = [], 0.0
    for _ in range(n):
        hit = rng.random() < hit_p
        steps.append((at, _event(p, t_s + at, "shoot", 0.0, rng.uniform(*reaction), hit,
                                 hit and rng.random() < headshot_p, 0)))
        at += rng.uniform(*gap)
    return steps


def aimbot(p: Profile, t_s: float, rng: Random) -> list[tuple[float, tuple]]:
    """Near-perfect accuracy and headshot rate at a human reaction time."""
    return _shots(p, t_s, rng, rng.randint(15, 40), (0.5, 3.0), 0.97, 0.75,
                  (p.reaction_ms * 0.8, p.reaction_ms * 1.1))


def inhuman_reaction(p: Profile, t_s: float, rng: Random) -> list[tuple[float, tuple]]:
    """Shots fired faster than a human can react (< 100 ms)."""
    return _shots(p, t_s, rng, rng.randint(10, 25), (1.0, 4.0), 0.8, 0.4, (20.0, 80.0))


def speed_hack(p: Profile, t_s: float, rng: Random) -> list[tuple[float, tuple]]:
    """Moving several times faster than sprinting allows."""
    steps, at = [], 0.0
    for _ in range(rng.randint(10, 30)):
        speed = rng.uniform(2.0, 5.0) * MAX_LEGIT_SPEED
        p.x = _clamp(p.x + rng.uniform(-speed, speed), 0.0, MAP_SIZE)
        p.y = _clamp(p.y + rng.uniform(-speed, speed), 0.0, MAP_SIZE)
        steps.append((at, _event(p, t_s + at, "move", speed, p.reaction_ms, False, False, 0)))
        at += rng.uniform(0.5, 2.0)
    return steps


def resource_farming(p: Profile, t_s: float, rng: Random) -> list[tuple[float, tuple]]:
    """A bot looting the same spot over and over for far more than normal play yields."""
    steps, at = [], 0.0
    for _ in range(rng.randint(20, 50)):
        steps.append((at, _event(p, t_s + at, "loot", 0.0, rng.uniform(150.0, 250.0), False,
                                 False, rng.randint(200, 500))))
        at += rng.uniform(1.0, 3.0)
    return steps


ANOMALIES = {"aimbot": aimbot, "speed_hack": speed_hack, "inhuman_reaction": inhuman_reaction,
             "resource_farming": resource_farming}
