"""Synthetic event generator: rate profiles, exact pacing, labelled anomaly episodes, delivery.

Shape of a run: one process per domain builds a deterministic stream of events (the same seed
and start time give byte-identical messages), paces it against a clock and produces it keyed by
entity id. Episodes (the injected anomalies) go back to the parent once every one of their
events is acknowledged; the parent writes them to Postgres (ground_truth) and publishes each to
the labels topic once it is `label_delay_s` old, the way chargebacks arrive late. Only events
that the broker acknowledged are counted as sent.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import heapq
import json
import logging
import math
import multiprocessing
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from random import Random
from typing import Any, Protocol

from patternalarm import domains
from patternalarm.events import SCHEMA_VERSION, encode_label
from patternalarm.settings import Settings

MODES = {"MINI": 5.0, "NORMAL": 10_000.0, "PEAK": 50_000.0, "CRISIS": 100_000.0}  # events/min
RAMP_START = 0.1   # a ramp starts at this fraction of the target rate
BURST_FACTOR = 10.0
STARTUP_LEAD_S = 3.0  # the schedule of a run starts this long after the command
MALFORMED_KINDS = ("truncated", "not_json", "missing_field", "wrong_type", "out_of_range")

_log = logging.getLogger("patternalarm.generator")


# --- rate profiles and pacing ---------------------------------------------------------------

class Timeline(Protocol):
    """When each event of a run is due, in seconds after the run starts."""

    total: int

    def count_at(self, t: float) -> int:
        """Events due at or before t."""

    def time_of(self, i: int) -> float:
        """When event i (0-based) is due."""


@dataclass(frozen=True)
class Spike:
    kind: str              # "ramp" or "burst"
    seconds: float         # ramp length, or burst length
    at_s: float = 0.0      # burst start
    factor: float = BURST_FACTOR

    @classmethod
    def parse(cls, text: str) -> Spike:
        """`ramp:SECONDS` or `burst:START_S:SECONDS[:FACTOR]`."""
        kind, _, rest = text.partition(":")
        try:
            nums = [float(x) for x in rest.split(":")] if rest else []
        except ValueError:
            nums = []
        if kind == "ramp" and len(nums) == 1 and nums[0] > 0:
            return cls("ramp", nums[0])
        if kind == "burst" and len(nums) in (2, 3) and nums[0] >= 0 and nums[1] > 0 and (
                len(nums) == 2 or nums[2] > 0):
            return cls("burst", nums[1], at_s=nums[0], factor=nums[2] if len(nums) == 3
                       else BURST_FACTOR)
        raise ValueError(f"spike profile {text!r}: expected ramp:SECONDS or "
                         "burst:START_S:SECONDS[:FACTOR]")


class RateProfile:
    """Piecewise-constant rate: event i is due when the integral of the rate reaches i."""

    def __init__(self, steps: list[tuple[float, float]], total: int) -> None:
        # steps: (start second, events per second), first at 0, rates > 0.
        self.starts = [s for s, _ in steps]
        self.rates = [r for _, r in steps]
        self.counts = [0.0]  # integral of the rate at each step's start
        for k in range(1, len(steps)):
            self.counts.append(self.counts[-1] + (self.starts[k] - self.starts[k - 1])
                               * self.rates[k - 1])
        self.total = total

    @classmethod
    def build(cls, per_min: float, duration_s: float | None = None, count: int | None = None,
              spike: Spike | None = None) -> RateProfile:
        base = per_min / 60.0
        steps = [(0.0, base)]
        if spike and spike.kind == "ramp":
            # One-second steps from RAMP_START x rate up to the rate.
            n = max(int(spike.seconds), 1)
            steps = [(float(k), base * (RAMP_START + (1 - RAMP_START) * k / n))
                     for k in range(n)] + [(float(n), base)]
        elif spike and spike.kind == "burst":
            steps = [(0.0, base), (spike.at_s, base * spike.factor),
                     (spike.at_s + spike.seconds, base)]
            steps = [s for k, s in enumerate(steps) if k == 0 or s[0] > steps[k - 1][0]]
        profile = cls(steps, 0)
        if count is not None:
            profile.total = count
        else:
            # Events due strictly before the end: i < integral(duration).
            profile.total = math.ceil(profile._integral(duration_s) - 1e-9)
        return profile

    def _integral(self, t: float) -> float:
        k = bisect.bisect_right(self.starts, t) - 1
        return self.counts[k] + (t - self.starts[k]) * self.rates[k]

    def count_at(self, t: float) -> int:
        if t < 0:
            return 0
        return min(self.total, math.floor(self._integral(t) + 1e-9) + 1)

    def time_of(self, i: int) -> float:
        k = bisect.bisect_right(self.counts, i) - 1
        return self.starts[k] + (i - self.counts[k]) / self.rates[k]

    def rate_at(self, t: float) -> float:
        return self.rates[bisect.bisect_right(self.starts, max(t, 0.0)) - 1]


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def wall(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)
    sleep = staticmethod(time.sleep)


class Pacer:
    """Token bucket whose fill is the timeline: by time t, count_at(t) tokens have dripped in.

    A sender takes tokens in batches and sleeps only when the bucket is empty, so pacing is
    exact over time and costs nothing per event. Falling behind leaves tokens in the bucket:
    the sender catches up, and the run's achieved rate says so.
    """

    def __init__(self, timeline: Timeline, clock: Clock, origin: float | None = None) -> None:
        self.timeline = timeline
        self.clock = clock
        self.origin = clock.monotonic() if origin is None else origin
        self.taken = 0

    @property
    def done(self) -> bool:
        return self.taken >= self.timeline.total

    def elapsed(self) -> float:
        return self.clock.monotonic() - self.origin

    def take(self, limit: int) -> int:
        n = min(self.timeline.count_at(self.elapsed()) - self.taken, limit)
        if n <= 0:
            return 0
        self.taken += n
        return n

    def wait(self, longest: float, shortest: float = 0.005) -> None:
        """Sleep until the next token: at least `shortest`, so that at high rates tokens pile
        up and go out in batches, at most `longest`, so the caller can serve callbacks."""
        if not self.done:
            ahead = self.timeline.time_of(self.taken) - self.elapsed()
            if ahead > 0:
                self.clock.sleep(min(max(ahead, shortest), longest))


# --- the deterministic event stream ---------------------------------------------------------

@dataclass
class Episode:
    episode_id: str
    domain: str
    entity_id: str
    kind: str
    start_ms: int
    remaining: int                       # steps not yet emitted
    events: list[tuple[str, int]] = field(default_factory=list)  # (event_id, event_time)
    acked: list[tuple[str, int]] = field(default_factory=list)
    failed: int = 0
    # Cut short by the end of the run: its label lists only the events that were sent.
    truncated: bool = False

    @property
    def closed(self) -> bool:
        return self.remaining == 0

    @property
    def settled(self) -> bool:
        return self.closed and len(self.acked) + self.failed == len(self.events)

    def label(self, run_id: str) -> dict[str, Any]:
        """The ground truth of what was delivered."""
        ids = [e for e, _ in sorted(self.acked, key=lambda a: (a[1], a[0]))]
        return {"episode_id": self.episode_id, "run_id": run_id, "domain": self.domain,
                "entity_id": self.entity_id, "kind": self.kind, "start_time": self.start_ms,
                "end_time": max(t for _, t in self.acked), "event_ids": ids,
                "truncated": self.truncated, "schema_version": SCHEMA_VERSION}


@dataclass(frozen=True)
class StreamSpec:
    domain: str
    seed: int
    run_id: str
    start_ms: int
    entities: int
    anomaly_rate: float = 0.001       # episodes started per event
    late_fraction: float = 0.0
    late_max_s: float = 120.0
    malformed_fraction: float = 0.0
    # Entity i is named <prefix>-<first_entity + i>: a run that must start from entities the
    # stream has never seen (a chaos scenario judged against an offline reference) moves it.
    first_entity: int = 0


class DomainStream:
    """Infinite, deterministic stream of (key, value, episode | None, flag) for one domain.

    flag is "" for an ordinary event, "late" for one whose event time was moved back (it
    arrives out of order), "malformed" for a message that breaks the contract. Late and
    malformed messages are drawn among ordinary traffic so episodes stay exact.
    """

    def __init__(self, spec: StreamSpec, timeline: Timeline) -> None:
        self.spec = spec
        self.model = domains.MODELS[spec.domain]
        self.contract = self.model.CONTRACT
        self.encode = self.contract.fast_encoder()
        self.timeline = timeline
        self.rng = Random(f"{spec.seed}:{spec.domain}:events")
        self.kinds = tuple(self.model.ANOMALIES)
        self.entities: list[tuple[Any, bytes] | None] = [None] * spec.entities
        self.busy: set[int] = set()     # entities inside an episode: no ordinary traffic
        self.due: list[tuple[float, int, int, Episode, tuple]] = []  # heap of episode steps
        self.open: list[Episode] = []
        self.event_prefix = f"{spec.run_id}-{spec.domain[0]}"
        self.i = 0
        self.turn = 0
        self.steps = 0
        self.episodes = 0

    def entity(self, idx: int) -> tuple[Any, bytes]:
        known = self.entities[idx]
        if known is None:
            # Each entity's profile has its own seed: stable whatever else the run does.
            entity_id = f"{self.model.ENTITY_PREFIX}-{self.spec.first_entity + idx:06d}"
            profile = self.model.make_profile(
                Random(f"{self.spec.seed}:{self.spec.domain}:{entity_id}"), entity_id)
            known = self.entities[idx] = (profile, entity_id.encode())
        return known

    def _free_entity(self) -> int:
        n, rng, busy = self.spec.entities, self.rng, self.busy
        idx = int(rng.random() * n)
        while idx in busy:
            idx = int(rng.random() * n)
        return idx

    def _ordinary_entity(self) -> int:
        """Who sends the next ordinary event: anyone at random (cards, players: Poisson-like
        gaps), or, for domains whose entities report on a schedule (IoT devices), the next in
        turn, so each reports about every entities/rate minutes and a silence stands out."""
        if not self.model.PERIODIC:
            return self._free_entity()
        n = self.spec.entities
        while True:
            idx = self.turn % n
            self.turn += 1
            if idx not in self.busy:
                return idx

    def _start_episode(self, t: float, t_ms: int) -> None:
        idx = self._free_entity()
        profile, _ = self.entity(idx)
        kind = self.kinds[int(self.rng.random() * len(self.kinds))]
        plan = self.model.ANOMALIES[kind](profile, t_ms / 1000.0, self.rng)
        episode = Episode(f"{self.spec.run_id}-{self.spec.domain}-ep{self.episodes}",
                          self.spec.domain, profile.entity_id, kind, t_ms, len(plan))
        self.episodes += 1
        self.busy.add(idx)
        self.open.append(episode)
        for offset, values in plan:
            heapq.heappush(self.due, (t + offset, self.steps, idx, episode, values))
            self.steps += 1

    def __iter__(self) -> Iterator[tuple[bytes, bytes, Episode | None, str]]:
        return self

    def __next__(self) -> tuple[bytes, bytes, Episode | None, str]:
        i = self.i
        self.i += 1
        t = self.timeline.time_of(i)
        t_ms = self.spec.start_ms + int(t * 1000.0)
        due, rng, spec = self.due, self.rng, self.spec
        # At most half the entities inside episodes: ordinary traffic always has an entity.
        if (not (due and due[0][0] <= t) and rng.random() < spec.anomaly_rate
                and 2 * (len(self.busy) + 1) <= spec.entities):
            self._start_episode(t, t_ms)
        event_id = f"{self.event_prefix}{i}"
        if due and due[0][0] <= t:
            _, _, idx, episode, values = heapq.heappop(due)
            profile, key = self.entity(idx)
            episode.events.append((event_id, t_ms))
            episode.remaining -= 1
            if episode.closed:
                self.busy.discard(idx)
                self.open.remove(episode)
            return key, self.encode((event_id, profile.entity_id, t_ms) + values), episode, ""
        profile, key = self.entity(self._ordinary_entity())
        values = self.model.normal(profile, t_ms / 1000.0, rng)
        flag = ""
        if spec.late_fraction and rng.random() < spec.late_fraction:
            t_ms -= int(rng.uniform(1.0, spec.late_max_s) * 1000.0)
            flag = "late"
        value = self.encode((event_id, profile.entity_id, t_ms) + values)
        if spec.malformed_fraction and rng.random() < spec.malformed_fraction:
            return key, self._malform(value), None, "malformed"
        return key, value, None, flag

    def _malform(self, value: bytes) -> bytes:
        kind = MALFORMED_KINDS[int(self.rng.random() * len(MALFORMED_KINDS))]
        if kind == "truncated":
            return value[: len(value) // 2]
        if kind == "not_json":
            return b"\xff\xfe" + value[::-1]
        event = json.loads(value)
        if kind == "missing_field":
            del event["event_time"]
        elif kind == "wrong_type":
            event["event_time"] = str(event["event_time"])
        else:
            event["schema_version"] = SCHEMA_VERSION + 98
        return json.dumps(event, separators=(",", ":")).encode()

    def close(self) -> list[Episode]:
        """End of run: episodes cut short keep the events they have; returns those now closed
        (the ones with no event at all are dropped)."""
        cut = self.open
        self.open, self.due = [], []
        for episode in cut:
            episode.remaining = 0
            episode.truncated = True
        return [e for e in cut if e.events]


# --- delivery -------------------------------------------------------------------------------

class Sender:
    """Produces to one topic and counts what the broker acknowledged, by kind."""

    def __init__(self, producer: Any, topic: str,
                 on_episode: Callable[[Episode], None]) -> None:
        self.producer = producer
        self.topic = topic
        self.on_episode = on_episode
        self.produced = 0
        self.acked = {"events": 0, "late": 0, "malformed": 0, "anomalous": 0}
        self.errors = 0
        self.last_error = ""
        self.episodes = 0
        self._callbacks = {flag: functools.partial(self._ack, kind)
                           for flag, kind in (("", "events"), ("late", "late"),
                                              ("malformed", "malformed"))}

    def _ack(self, kind: str, err: Any, msg: Any) -> None:
        if err is None:
            self.acked[kind] += 1
            if kind == "late":
                self.acked["events"] += 1
        else:
            self.errors += 1
            self.last_error = str(err)

    def _ack_episode(self, episode: Episode, event: tuple[str, int], err: Any, msg: Any) -> None:
        if err is None:
            episode.acked.append(event)
            self.acked["events"] += 1
            self.acked["anomalous"] += 1
        else:
            episode.failed += 1
            self.errors += 1
            self.last_error = str(err)
        self.settle(episode)

    def settle(self, episode: Episode) -> None:
        if episode.settled and episode.acked:
            self.episodes += 1
            self.on_episode(episode)

    def send(self, key: bytes, value: bytes, episode: Episode | None, flag: str) -> None:
        callback = (self._callbacks[flag] if episode is None else
                    functools.partial(self._ack_episode, episode, episode.events[-1]))
        while True:
            try:
                self.producer.produce(self.topic, value, key, on_delivery=callback)
                break
            except BufferError:
                # Local queue full: serve delivery reports, which frees room.
                self.producer.poll(0.05)
        self.produced += 1
        if episode is not None and episode.closed:
            self.settle(episode)

    @property
    def sent(self) -> int:
        return self.acked["events"] + self.acked["malformed"]

    def stats(self) -> dict[str, int]:
        return {"produced": self.produced, "sent": self.sent, "errors": self.errors,
                "episodes": self.episodes, **self.acked}


def pump(stream: Iterator[tuple[bytes, bytes, Episode | None, str]], sender: Sender,
         pacer: Pacer, report: Callable[[dict[str, Any]], None], batch: int = 2_000,
         report_every_s: float = 0.5) -> None:
    """Send the stream as the pacer allows until the timeline is exhausted."""
    next_report = pacer.clock.monotonic()
    poll = sender.producer.poll
    while not pacer.done:
        n = pacer.take(batch)
        if n:
            send = sender.send
            for _ in range(n):
                send(*next(stream))
        else:
            pacer.wait(0.05)
        poll(0)
        now = pacer.clock.monotonic()
        if now >= next_report:
            report(sender.stats())
            next_report = now + report_every_s


# --- one domain, in its own process ---------------------------------------------------------

@dataclass(frozen=True)
class WorkerSpec:
    stream: StreamSpec
    per_min: float
    duration_s: float | None
    count: int | None
    spike: Spike | None
    bootstrap_servers: str
    topic: str
    delivery_timeout_s: float


def producer_config(bootstrap_servers: str, delivery_timeout_s: float) -> dict[str, Any]:
    # Large batches: the broker sees few, full requests (measured with benchmarks/generator.py).
    # The linger is what fills them at live rates: at NORMAL a partition gets ~42 events/s, so
    # 20 ms sent one-record batches, and the embedded broker's fetches slow with the number of
    # batches a partition holds (a probe at the log end: 0.4 s at 40K batches, 13 s at 80K,
    # benchmarks/RESULTS.md) — reached after half an hour. 200 ms puts ~8 events in a batch,
    # hours of headroom, for at most 0.2 s more latency. message.timeout.ms bounds librdkafka's
    # retries with backoff.
    return {"bootstrap.servers": bootstrap_servers, "linger.ms": 200,
            "batch.size": 1_000_000, "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000, "compression.type": "none",
            "message.timeout.ms": int(delivery_timeout_s * 1000), "retry.backoff.ms": 100,
            "retry.backoff.max.ms": 2_000, "logger": _log}


def run_worker(spec: WorkerSpec, inbox: Any) -> None:
    """Entry of a domain's process."""
    try:
        timeline = RateProfile.build(spec.per_min, spec.duration_s, spec.count, spec.spike)
        stream = DomainStream(spec.stream, timeline)
    except Exception:  # the parent reports it: a worker must not die silently
        inbox.put(("failed", spec.stream.domain, traceback.format_exc()))
        return
    drive(spec.stream.domain, stream, timeline, spec.bootstrap_servers, spec.topic,
          spec.delivery_timeout_s, spec.stream.start_ms, spec.stream.run_id, inbox)


def drive(domain: str, stream: Any, timeline: Timeline, bootstrap_servers: str, topic: str,
          delivery_timeout_s: float, start_ms: int, run_id: str, inbox: Any,
          clock: Clock | None = None) -> None:
    """Pace `stream` onto `topic` and report progress, episodes and the final counts to
    `inbox` (a queue), as ("progress" | "episode" | "done" | "failed", domain, body)."""
    from confluent_kafka import Producer

    try:
        clock = clock or SystemClock()
        producer = Producer(producer_config(bootstrap_servers, delivery_timeout_s))
        sender = Sender(producer, topic,
                        lambda ep: inbox.put(("episode", domain, ep.label(run_id))))
        # Schedule second 0 is the run's start time on the wall clock, for every domain.
        origin = clock.monotonic() - (clock.wall() - start_ms / 1000.0)
        pacer = Pacer(timeline, clock, origin)
        started = clock.monotonic()
        pump(stream, sender, pacer, lambda stats: inbox.put(("progress", domain, stats)))
        for episode in stream.close():
            sender.settle(episode)
        producer.flush(delivery_timeout_s + 5.0)
        stats = sender.stats()
        stats["elapsed_s"] = clock.monotonic() - started
        stats["last_error"] = sender.last_error
        inbox.put(("done", domain, stats))
    except Exception:  # the parent reports it: a worker must not die silently
        inbox.put(("failed", domain, traceback.format_exc()))


# --- ground truth and delayed labels --------------------------------------------------------

class GroundTruth:
    """ground_truth rows in Postgres: inserted when an episode is delivered, stamped with
    labels_published_at when its label is acknowledged on the labels topic."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def record(self, labels: list[dict[str, Any]]) -> None:
        from psycopg2.extras import execute_values

        with self.conn, self.conn.cursor() as cur:
            execute_values(cur, """
                INSERT INTO ground_truth (episode_id, run_id, domain, entity_id, kind,
                                          start_time, end_time, event_ids, truncated)
                VALUES %s ON CONFLICT (episode_id) DO NOTHING""",
                [(lb["episode_id"], lb["run_id"], lb["domain"], lb["entity_id"], lb["kind"],
                  lb["start_time"] / 1000.0, lb["end_time"] / 1000.0, lb["event_ids"],
                  lb.get("truncated", False)) for lb in labels],
                template="(%s, %s, %s, %s, %s, to_timestamp(%s), to_timestamp(%s), %s, %s)")

    def published(self, episode_ids: list[str]) -> None:
        with self.conn, self.conn.cursor() as cur:
            cur.execute("UPDATE ground_truth SET labels_published_at = now() "
                        "WHERE episode_id = ANY(%s)", (episode_ids,))


class LabelDesk:
    """Holds delivered episodes until they are `delay_s` old, then publishes their labels."""

    def __init__(self, producer: Any, topic: str, store: GroundTruth | None,
                 delay_s: float, clock: Clock) -> None:
        self.producer = producer
        self.topic = topic
        self.store = store
        self.delay_s = delay_s
        self.clock = clock
        self.waiting: list[tuple[float, str, dict[str, Any]]] = []
        self.recorded: list[dict[str, Any]] = []
        self.acked: list[str] = []
        self.published = 0
        self.errors = 0

    def add(self, label: dict[str, Any]) -> None:
        self.recorded.append(label)
        due = label["end_time"] / 1000.0 + self.delay_s
        heapq.heappush(self.waiting, (due, label["episode_id"], label))

    def _ack(self, episode_id: str, err: Any, msg: Any) -> None:
        if err is None:
            self.acked.append(episode_id)
        else:
            self.errors += 1

    def step(self) -> None:
        """Record new episodes, publish the labels that are due, stamp the acknowledged."""
        if self.store and self.recorded:
            self.store.record(self.recorded)
        self.recorded = []
        now = self.clock.wall()
        while self.waiting and self.waiting[0][0] <= now:
            _, episode_id, label = heapq.heappop(self.waiting)
            self.producer.produce(self.topic, encode_label(label), label["entity_id"].encode(),
                                  on_delivery=functools.partial(self._ack, episode_id))
        self.producer.poll(0)
        if self.acked:
            if self.store:
                self.store.published(self.acked)
            self.published += len(self.acked)
            self.acked = []

    def next_due_in(self) -> float | None:
        return self.waiting[0][0] - self.clock.wall() if self.waiting else None


# --- a whole run ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RunPlan:
    domains: tuple[str, ...]
    per_min: float
    mode: str
    duration_s: float | None = None
    count: int | None = None
    spike: Spike | None = None
    seed: int = 42
    start_ms: int | None = None
    entities: int | None = None
    anomaly_rate: float = 0.001
    late_fraction: float = 0.0
    late_max_s: float = 120.0
    malformed_fraction: float = 0.0
    first_entity: int = 0
    label_delay_s: float = 10.0
    ground_truth: bool = True
    delivery_timeout_s: float = 30.0
    connect_attempts: int = 5

    def run_id(self, start_ms: int) -> str:
        digest = hashlib.sha1(f"{self.seed}:{start_ms}".encode()).hexdigest()[:10]
        return f"g{digest}"

    def default_entities(self) -> int:
        # About one event per entity per minute: enough history per entity to matter.
        return self.entities or int(min(max(self.per_min, 50), 100_000))

    def stream_spec(self, domain: str, run_id: str, start_ms: int) -> StreamSpec:
        return StreamSpec(domain, self.seed, run_id, start_ms, self.default_entities(),
                          self.anomaly_rate, self.late_fraction, self.late_max_s,
                          self.malformed_fraction, self.first_entity)

    def timeline(self) -> RateProfile:
        return RateProfile.build(self.per_min, self.duration_s, self.count, self.spike)


class BrokerUnreachable(ConnectionError):
    pass


def wait_for_broker(cfg: Settings, attempts: int, clock: Clock,
                    first_backoff_s: float = 0.5) -> None:
    """Bounded retries with exponential backoff; raises BrokerUnreachable."""
    from patternalarm import kafka

    backoff = first_backoff_s
    for attempt in range(1, attempts + 1):
        if kafka.broker_reachable(cfg, timeout_s=2.0):
            return
        if attempt < attempts:
            clock.sleep(backoff)
            backoff = min(backoff * 2, 8.0)
    raise BrokerUnreachable(f"broker at {cfg.bootstrap_servers} unreachable after "
                            f"{attempts} attempts")


def _summary(plan: RunPlan, run_id: str, start_ms: int, targets: dict[str, int],
             stats: dict[str, dict[str, Any]], desk: LabelDesk | None,
             failures: dict[str, str], elapsed: float) -> dict[str, Any]:
    per_domain = {}
    for d in plan.domains:
        s = stats.get(d, {})
        sent = s.get("sent", 0)
        took = s.get("elapsed_s") or elapsed
        per_domain[d] = {
            "target": targets[d], "sent": sent, "events": s.get("events", 0),
            "malformed": s.get("malformed", 0), "late": s.get("late", 0),
            "anomalous_events": s.get("anomalous", 0), "episodes": s.get("episodes", 0),
            "delivery_errors": s.get("errors", 0), "undelivered": targets[d] - sent,
            "elapsed_s": round(took, 3),
            "events_per_s": round(sent / took, 1) if took > 0 else 0.0,
        }
        if d in failures:
            per_domain[d]["failure"] = failures[d]
    total_sent = sum(v["sent"] for v in per_domain.values())
    return {
        "run_id": run_id, "mode": plan.mode, "rate_per_min": plan.per_min,
        "domains": list(plan.domains), "seed": plan.seed, "start_ms": start_ms,
        "duration_s": plan.duration_s, "count": plan.count,
        "spike": asdict(plan.spike) if plan.spike else None,
        "elapsed_s": round(elapsed, 3),
        "sent": total_sent, "undelivered": sum(v["undelivered"] for v in per_domain.values()),
        "delivery_errors": sum(v["delivery_errors"] for v in per_domain.values()),
        "events_per_s": round(total_sent / elapsed, 1) if elapsed > 0 else 0.0,
        "episodes": sum(v["episodes"] for v in per_domain.values()),
        "labels_published": desk.published if desk else 0,
        "label_errors": desk.errors if desk else 0,
        "ground_truth_written": plan.ground_truth,
        "per_domain": per_domain,
    }


ProgressFn = Callable[[dict[str, Any]], None]


def execute(cfg: Settings, plan: RunPlan, workers: dict[str, Callable[[Any], Any]],
            targets: dict[str, int], run_id: str, start_ms: int,
            progress: ProgressFn | None = None, clock: Clock | None = None) -> dict[str, Any]:
    """Run `workers` (domain -> start(inbox) returning a joinable handle), collect their
    episodes into ground truth and delayed labels, and return the run's summary."""
    import contextlib

    from patternalarm import db, kafka

    clock = clock or SystemClock()
    began = clock.monotonic()
    try:
        wait_for_broker(cfg, plan.connect_attempts, clock)
        kafka.ensure_topics(cfg, [cfg.events_topic(d) for d in plan.domains]
                            + [cfg.labels_topic, cfg.dlq_topic], cfg.topic_partitions)
    except BrokerUnreachable as exc:
        return _summary(plan, run_id, start_ms, targets, {}, None,
                        dict.fromkeys(plan.domains, str(exc)), clock.monotonic() - began)
    conn = db.connect(cfg) if plan.ground_truth else None
    with contextlib.ExitStack() as cleanup:
        if conn is not None:
            cleanup.callback(conn.close)
        labels = kafka.producer(cfg, **{"linger.ms": 50, "logger": _log,
                                        "message.timeout.ms": int(plan.delivery_timeout_s
                                                                  * 1000)})
        desk = LabelDesk(labels, cfg.labels_topic, GroundTruth(conn) if conn else None,
                         plan.label_delay_s, clock)
        inbox = multiprocessing.get_context("spawn").Queue()
        handles = [start(inbox) for start in workers.values()]
        stats: dict[str, dict[str, Any]] = {}
        failures: dict[str, str] = {}
        finished: set[str] = set()
        while len(finished) < len(workers):
            try:
                what, domain, body = inbox.get(timeout=0.2)
            except queue.Empty:
                if not any(h.is_alive() for h in handles):
                    for d in set(workers) - finished:
                        failures[d] = "worker exited without a report"
                    break
            else:
                if what == "episode":
                    desk.add(body)
                elif what in ("progress", "done"):
                    stats[domain] = body
                    finished.update([domain] if what == "done" else [])
                else:
                    failures[domain] = body
                    finished.add(domain)
            desk.step()
            if progress:
                # Seconds since the schedule began (negative while the workers start).
                progress({"elapsed_s": clock.wall() - start_ms / 1000.0, "stats": stats,
                          "targets": targets, "episodes": len(desk.waiting) + desk.published})
        for handle in handles:
            handle.join()
        # The last labels are due label_delay_s after their episode ended.
        while (wait := desk.next_due_in()) is not None:
            clock.sleep(min(max(wait, 0.0), 0.5))
            desk.step()
        labels.flush(plan.delivery_timeout_s + 5.0)
        desk.step()
    return _summary(plan, run_id, start_ms, targets, stats, desk, failures,
                    clock.monotonic() - began)


def run(cfg: Settings, plan: RunPlan, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Generate `plan` with one process per domain; returns the summary."""
    clock = SystemClock()
    if plan.start_ms is not None:
        start_ms = plan.start_ms
    else:
        # Processes take a moment to start: a schedule that began already would open with a
        # catch-up burst instead of the profile asked for.
        start_ms = int((clock.wall() + STARTUP_LEAD_S) * 1000)
    run_id = plan.run_id(start_ms)
    workers = {}
    targets = {}
    for domain in plan.domains:
        spec = WorkerSpec(
            plan.stream_spec(domain, run_id, start_ms), plan.per_min, plan.duration_s,
            plan.count, plan.spike, cfg.bootstrap_servers, cfg.events_topic(domain),
            plan.delivery_timeout_s)
        targets[domain] = plan.timeline().total
        workers[domain] = functools.partial(_spawn, spec)
    return execute(cfg, plan, workers, targets, run_id, start_ms, progress, clock)


def _spawn(spec: WorkerSpec, inbox: Any) -> Any:
    proc = multiprocessing.get_context("spawn").Process(
        target=run_worker, args=(spec, inbox), name=f"generate-{spec.stream.domain}",
        daemon=True)
    proc.start()
    return proc


def start_thread(target: Callable[[Any], None], name: str) -> Callable[[Any], Any]:
    """A worker run in this process (replay): same protocol as a domain process."""
    def start(inbox: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=(inbox,), name=name, daemon=True)
        thread.start()
        return thread
    return start
