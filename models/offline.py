"""The stream's detection, offline: features, rules, model scoring and incident merging over a
table of events, without Spark or a broker.

It runs the stream's own pieces (``models.features.fold``, ``models.rules.hits``,
``models.incidents``, a :class:`~models.local_scorer.LocalScorer` with the version's threshold),
so what it finds is what the streaming job would commit for the same events in event-time order.
One deliberate difference: the stream raises ``silence`` from a timer when the watermark passes
an entity's last event by ``ABSENCE_AFTER_S``; offline, the watermark is the event time, so a
gap that long (or :meth:`OfflineDetector.close` at the end of a stream) raises it.

Used by training (a held-out stream at the live anomaly rate: per-detector precision/recall,
the incident-level threshold, promotion), by tests, and by verdicts that need "what should have
been detected" for a given set of events.

    replay = generate("iot", seed=7, minutes=30, entities=2000, anomaly_rate=0.001)
    detector = OfflineDetector("iot", scorer)          # scorer: None for rules only
    found = detector.detect(replay.events) + detector.close()
    quality = score("iot", found, replay.episodes, replay.start_ms, replay.end_ms)
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from models.features import ENGINES, FEATURES, State, fold, new_state
from models.incidents import (
    MODEL_WINDOW_S,
    Incident,
    merge_same_key,
    model_incident,
)
from models.rules import ABSENCE_AFTER_S, absence_rule, hits, window_start
from patternalarm.quality import AFTER_S, BEFORE_S, Quality
from patternalarm.settings import model_name

ALL = "all"  # the detector name under which every detector of a domain is scored together
# The replays training runs: the live shape (about one event per entity per minute, from a cold
# start, as a fresh stream or the demo sees it), long enough for ~100 episodes at 0.001.
REPLAY_MINUTES = 30
REPLAY_ENTITIES = 4000
# The evaluation replay is the same for every model, so a challenger and the champion are
# compared on the same events; the threshold is calibrated on another one (seed + 1).
REPLAY_SEED = 2718
CONFIDENCE_Z = 1.2816  # one-sided 90 %


# --- a generated stream with its ground truth ------------------------------------------------

@dataclass(frozen=True)
class Episode:
    entity_id: str
    kind: str
    start_ms: int
    end_ms: int
    event_ids: tuple[str, ...]
    truncated: bool


@dataclass(frozen=True)
class Replay:
    domain: str
    events: pd.DataFrame        # event_id, entity_id, event_time and the payload fields
    episodes: list[Episode]
    start_ms: int
    end_ms: int


def generate(domain: str, seed: int, minutes: float, entities: int, anomaly_rate: float,
             start_ms: int = 1_700_000_000_000) -> Replay:
    """The generator's stream for a fresh system, in process: ``entities`` entities at about one
    event per entity per minute (the live shape), episodes started at ``anomaly_rate`` per
    event, every event and episode kept."""
    from patternalarm.generator import DomainStream, RateProfile, StreamSpec

    count = int(minutes * entities)
    stream = DomainStream(StreamSpec(domain, seed, f"offline-{seed}", start_ms, entities,
                                     anomaly_rate), RateProfile.build(entities, count=count))
    rows, seen = [], {}
    for _ in range(count):
        _, value, episode, _ = next(stream)
        event = json.loads(value)
        rows.append({**event.pop("payload"), **event})
        if episode is not None:
            seen[episode.episode_id] = episode
    stream.close()  # marks the episodes the end cut short
    episodes = [Episode(e.entity_id, e.kind, e.start_ms, max(t for _, t in e.events),
                        tuple(i for i, _ in e.events), e.truncated) for e in seen.values()]
    events = pd.DataFrame(rows)
    return Replay(domain, events, episodes, start_ms, int(events["event_time"].max()))


# --- detection --------------------------------------------------------------------------------

@dataclass
class Detection:
    incidents: list[Incident]   # merged by key, as the sink commits them
    # entity_id, event_id, event_time, score (NaN without a model), hit (the model's decision)
    scored: pd.DataFrame


@dataclass
class OfflineDetector:
    """Per-entity state across calls: feed a stream in event-time chunks, then :meth:`close`."""

    domain: str
    scorer: object | None = None            # LocalScorer with the version's threshold
    model_name: str | None = None           # default: the domain's registered model
    model_version: str | None = None
    state: State | None = None              # the features' per-entity state (default: empty)
    silent: dict = field(default_factory=dict)  # entity -> last event time already reported

    def __post_init__(self) -> None:
        if self.state is None:
            self.state = new_state(self.domain)

    def detect(self, events: pd.DataFrame) -> Detection:
        engine = ENGINES[self.domain]
        ordered = events.sort_values(["entity_id", "event_time"], kind="stable",
                                     ignore_index=True)
        entities = ordered["entity_id"].to_numpy()
        times = ordered["event_time"].to_numpy(dtype=np.int64)
        first = np.r_[True, entities[1:] != entities[:-1]] if len(entities) else []
        before = self.state.last_t_of(entities[first])
        matrix = fold(self.domain, self.state, entities, times,
                      [ordered[c].to_numpy() if c in ordered else [None] * len(ordered)
                       for c in engine.inputs])
        event_ids = ordered["event_id"].to_numpy()
        found = [Incident(self.domain, entities[row], rule.detector, "rule", window,
                          rule.severity, int(times[row]), int(times[row]),
                          evidence={"values": values, "event_id": event_ids[row]})
                 for row, rule, window, values in hits(self.domain, times, matrix)]
        found += self._gaps(entities, times, first, before)
        scores = np.full(len(ordered), np.nan)
        label = np.zeros(len(ordered), dtype=bool)
        if self.scorer is not None and len(ordered):
            scores, label = self.scorer.score(pd.DataFrame(matrix,
                                                           columns=list(FEATURES[self.domain])))
            found += [model_incident(self.domain, entities[i], event_ids[i], int(times[i]),
                                     float(scores[i]), self.model_name or model_name(self.domain),
                                     self.model_version)
                      for i in np.flatnonzero(label)]
        scored = ordered[["entity_id", "event_id", "event_time"]].assign(score=scores, hit=label)
        return Detection(merge_same_key(found), scored)

    def _gaps(self, entities: np.ndarray, times: np.ndarray, first: np.ndarray,
              before: np.ndarray) -> list[Incident]:
        """Silences closed by a later event: what the stream's timer raises once the watermark
        passes the last event before the gap."""
        if self.domain not in ABSENCE_AFTER_S or not len(times):
            return []
        absence_ms = int(ABSENCE_AFTER_S[self.domain] * 1000)
        previous = np.empty(len(times), dtype=np.float64)
        previous[1:] = times[:-1]
        previous[first] = before  # each entity's newest time before these events, or NaN
        quiet = np.flatnonzero(times - previous >= absence_ms)
        return [self._silence(entities[i], int(previous[i]), absence_ms) for i in quiet
                if self.silent.get(entities[i]) != int(previous[i])]

    def _silence(self, entity: str, last: int, absence_ms: int) -> Incident:
        self.silent[entity] = last  # one incident per silence, as the stream's timer
        rule = absence_rule(self.domain)
        return Incident(self.domain, entity, rule.detector, "rule", window_start(rule, last, last),
                        rule.severity, last + absence_ms, last + absence_ms,
                        evidence={"values": {"last_event_ms": last}})

    def close(self, watermark_ms: int | None = None) -> list[Incident]:
        """Silences still open at the end: entities whose last event is ``ABSENCE_AFTER_S``
        older than the watermark (default: the newest event seen)."""
        if self.domain not in ABSENCE_AFTER_S or not len(self.state):
            return []
        lasts = dict(zip(self.state.entity_ids.tolist(), self.state.last_t.tolist(),
                         strict=True))
        watermark = max(lasts.values()) if watermark_ms is None else watermark_ms
        absence_ms = int(ABSENCE_AFTER_S[self.domain] * 1000)
        return [self._silence(e, last, absence_ms) for e, last in lasts.items()
                if last + absence_ms <= watermark and self.silent.get(e) != last]


def replay_incidents(domain: str, events: pd.DataFrame, scorer=None,
                     model_version: str | None = None) -> Detection:
    """A whole stream at once: its incidents, the silences open at its end included."""
    detector = OfflineDetector(domain, scorer, model_version=model_version)
    detection = detector.detect(events)
    detection.incidents = merge_same_key(detection.incidents + detector.close())
    return detection


# --- quality against ground truth -------------------------------------------------------------

def _widened(episodes: Iterable[Episode]) -> dict[str, list[tuple[int, int, int]]]:
    """Per entity: (index, start − BEFORE_S, end + AFTER_S) of its episodes."""
    spans = defaultdict(list)
    for i, e in enumerate(episodes):
        spans[e.entity_id].append((i, e.start_ms - int(BEFORE_S * 1000),
                                   e.end_ms + int(AFTER_S * 1000)))
    return spans


def score(domain: str, incidents: Sequence[Incident], episodes: Sequence[Episode],
          since_ms: int, until_ms: int) -> dict[str, Quality]:
    """Precision and recall per detector and for all of them (``ALL``), matched as
    ``patternalarm.quality`` matches the stream's incidents in Postgres: same entity, incident
    span overlapping the episode widened by BEFORE_S/AFTER_S; recall over the complete
    episodes starting in [since, until]; precision over the incidents in that range."""
    spans = _widened(episodes)
    scored = {i for i, e in enumerate(episodes)
              if since_ms <= e.start_ms <= until_ms and not e.truncated}
    counted = [i for i in incidents if i.last_event_ms >= since_ms and i.first_event_ms <= until_ms]
    per: dict[str, list] = defaultdict(lambda: [set(), 0, 0])  # detected, incidents, true
    for incident in counted:
        matched = {i for i, lo, hi in spans.get(incident.entity_id, ())
                   if incident.last_event_ms >= lo and incident.first_event_ms <= hi}
        for name in (incident.detector, ALL):
            entry = per[name]
            entry[0] |= matched & scored
            entry[1] += 1
            entry[2] += bool(matched)
    per.setdefault(ALL, [set(), 0, 0])
    return {name: Quality(domain, len(scored), len(detected), n, true, name)
            for name, (detected, n, true) in per.items()}


# --- the model's threshold, for incidents ------------------------------------------------------

@dataclass(frozen=True)
class IncidentCurve:
    """The model detector's incident-level precision and recall at each threshold (a score
    ``> threshold`` is a hit), thresholds descending."""

    thresholds: np.ndarray
    precision: np.ndarray   # NaN where the model raises no incident
    recall: np.ndarray
    incidents: np.ndarray


def incident_curve(scored: pd.DataFrame, episodes: Sequence[Episode], since_ms: int,
                   until_ms: int) -> IncidentCurve:
    """From one scoring pass (``Detection.scored``) instead of a detection per threshold.

    A model incident is a (entity, 900 s window) with an event over the threshold; it is true
    when such an event lies inside an episode's widened span. (``score`` also counts an
    incident whose first and last events straddle a whole episode: rare, and only ever in the
    model's favour, so the threshold chosen here is at worst conservative.)
    """
    rows = scored[(scored["event_time"] >= since_ms) & (scored["event_time"] <= until_ms)]
    spans = pd.DataFrame([(entity, i, lo, hi) for entity, s in _widened(episodes).items()
                          for i, lo, hi in s], columns=["entity_id", "episode", "lo", "hi"])
    near = rows.reset_index(drop=True).merge(spans, on="entity_id")
    near = near[(near["event_time"] >= near["lo"]) & (near["event_time"] <= near["hi"])]
    window = MODEL_WINDOW_S * 1000
    key_all = rows.groupby([rows["entity_id"], rows["event_time"] // window])["score"].max()
    key_near = near.groupby([near["entity_id"], near["event_time"] // window])["score"].max()
    complete = {i for i, e in enumerate(episodes)
                if since_ms <= e.start_ms <= until_ms and not e.truncated}
    per_episode = near[near["episode"].isin(complete)].groupby("episode")["score"].max()
    values = np.unique(np.r_[key_all.to_numpy(), key_near.to_numpy()])[::-1]
    thresholds = np.r_[(values[:-1] + values[1:]) / 2, np.nextafter(values[-1], -np.inf)] \
        if len(values) else np.array([0.5])

    def above(x: pd.Series) -> np.ndarray:
        ordered = np.sort(x.to_numpy())
        return len(ordered) - np.searchsorted(ordered, thresholds, side="right")

    incidents, true = above(key_all), above(key_near)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(incidents > 0, true / incidents, np.nan)
    recall = above(per_episode) / max(len(complete), 1)
    return IncidentCurve(thresholds, precision, recall, incidents)


@dataclass(frozen=True)
class IncidentThreshold:
    threshold: float
    target_precision: float
    target_met: bool    # False: no threshold reaches it; the most precise one was taken
    precision: float
    recall: float


def precision_lower_bound(true: np.ndarray, n: np.ndarray, z: float) -> np.ndarray:
    """Wilson score lower bound of true/n: a precision measured on 20 incidents is worth less
    than the same one on 200."""
    n = np.asarray(n, dtype=float)
    safe = np.maximum(n, 1.0)
    p = np.asarray(true, dtype=float) / safe
    centre = p + z * z / (2 * safe)
    spread = z * np.sqrt(p * (1 - p) / safe + z * z / (4 * safe * safe))
    return np.where(n > 0, (centre - spread) / (1 + z * z / safe), np.nan)


def choose_incident_threshold(curve: IncidentCurve, target_precision: float,
                              z: float = CONFIDENCE_Z) -> IncidentThreshold:
    """The highest-recall threshold whose incident precision reaches the target with
    confidence (its Wilson lower bound at ``z``; the highest such threshold among equal
    recalls: same detections, fewer alerts); otherwise the most precise one. The margin is what
    lets the figure hold on another stream: a threshold picked at exactly the target measures
    below it about half the time on new data."""
    precision = np.nan_to_num(curve.precision, nan=-1.0)
    bound = np.nan_to_num(precision_lower_bound(np.nan_to_num(curve.precision) * curve.incidents,
                                                curve.incidents, z), nan=-1.0)
    eligible = np.flatnonzero(bound >= target_precision)
    if eligible.size:
        best = curve.recall[eligible].max()
        index = int(eligible[np.argmax(curve.recall[eligible] == best)])
    else:
        index = int(np.argmax(precision))
    return IncidentThreshold(float(curve.thresholds[index]), target_precision,
                             bool(eligible.size), float(max(precision[index], 0.0)),
                             float(curve.recall[index]))


# --- a model judged on the live shape ----------------------------------------------------------

def live_replay(domain: str, anomaly_rate: float, seed: int = REPLAY_SEED) -> Replay:
    return generate(domain, seed, REPLAY_MINUTES, REPLAY_ENTITIES, anomaly_rate)


def calibrate(domain: str, scorer, replay: Replay, target_precision: float
              ) -> IncidentThreshold:
    """The model's threshold for incident-level precision on ``replay``."""
    scored = replay_incidents(domain, replay.events, scorer).scored
    return choose_incident_threshold(
        incident_curve(scored, replay.episodes, replay.start_ms, replay.end_ms),
        target_precision)


@dataclass(frozen=True)
class ReplayEvaluation:
    quality: dict[str, Quality]     # per detector and ALL
    scores: np.ndarray              # per event of the replay
    labels: np.ndarray              # 1: the event belongs to an episode
    predicted: np.ndarray           # the model's per-event decision

    def metrics(self) -> dict[str, float]:
        """Flat figures for MLflow: replay_<detector>_{precision,recall,incidents}, and the
        model's per-event precision and recall at the live rate."""
        out = {}
        for name, q in self.quality.items():
            out[f"replay_{name}_incidents"] = float(q.incidents)
            out[f"replay_{name}_recall"] = float(q.recall or 0.0)
            if q.precision is not None:
                out[f"replay_{name}_precision"] = q.precision
        tp = float(np.sum(self.predicted & (self.labels == 1)))
        out["live_event_precision"] = tp / max(float(np.sum(self.predicted)), 1.0)
        out["live_event_recall"] = tp / max(float(np.sum(self.labels)), 1.0)
        out["live_event_positive_rate"] = float(np.mean(self.labels))
        return out


def evaluate(domain: str, scorer, replay: Replay, version: str | None = None
             ) -> ReplayEvaluation:
    """Rules and the model (with its threshold) over ``replay``, scored against its episodes."""
    detection = replay_incidents(domain, replay.events, scorer, version)
    positives = {i for e in replay.episodes for i in e.event_ids}
    scored = detection.scored
    return ReplayEvaluation(
        score(domain, detection.incidents, replay.episodes, replay.start_ms, replay.end_ms),
        scored["score"].to_numpy(), scored["event_id"].isin(positives).to_numpy().astype(int),
        scored["hit"].to_numpy(dtype=bool))
