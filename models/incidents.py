"""Incidents: what an analyst sees, one row per (domain, entity, detector, window).

The streaming sink and the offline detector (``models.offline``) build incidents here, so a
replay evaluated offline merges detections exactly as the stream does. Keys are deterministic
in (domain, entity, detector, window start): retriggers and alert storms merge into one row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("low", "medium", "high", "critical")
# A model's hits on one entity within this span are one incident.
MODEL_WINDOW_S = 900
MODEL_DETECTOR = "model"


def incident_key(domain: str, entity_id: str, detector: str, window_start_ms: int) -> str:
    """Stable key: the same detection in the same window always maps to the same row."""
    digest = hashlib.sha1(f"{domain}\x1f{entity_id}\x1f{detector}\x1f{window_start_ms}".encode())
    return f"{domain}:{detector}:{digest.hexdigest()[:20]}"


def window_start_ms(anchor_ms: int, window_s: int) -> int:
    span = window_s * 1000
    return anchor_ms // span * span


@dataclass(frozen=True)
class Incident:
    domain: str
    entity_id: str
    detector: str
    detector_kind: str  # rule | model
    window_start_ms: int
    severity: str
    first_event_ms: int
    last_event_ms: int
    event_count: int = 1
    score: float | None = None
    model_name: str | None = None
    model_version: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return incident_key(self.domain, self.entity_id, self.detector, self.window_start_ms)


def model_incident(domain: str, entity_id: str, event_id: str | None, event_time_ms: int,
                   score: float, model_name: str, model_version: str | None) -> Incident:
    """One event the champion labelled positive."""
    return Incident(domain, entity_id, MODEL_DETECTOR, "model",
                    window_start_ms(event_time_ms, MODEL_WINDOW_S),
                    "high" if score >= 0.9 else "medium", event_time_ms, event_time_ms,
                    score=score, model_name=model_name, model_version=model_version,
                    evidence={"score": score, "event_id": event_id})


def merge_same_key(incidents: Sequence[Incident]) -> list[Incident]:
    """One incident per key: counts add up, times widen, the worst severity and the highest
    score win (the sink also needs it: ON CONFLICT cannot touch a row twice in one statement)."""
    by_key: dict[str, Incident] = {}
    for incident in incidents:
        seen = by_key.get(incident.key)
        if seen is None:
            by_key[incident.key] = incident
            continue
        worse = max(seen, incident, key=lambda i: SEVERITIES.index(i.severity))
        scores = [s for s in (seen.score, incident.score) if s is not None]
        by_key[incident.key] = Incident(**{
            **asdict(worse),
            "first_event_ms": min(seen.first_event_ms, incident.first_event_ms),
            "last_event_ms": max(seen.last_event_ms, incident.last_event_ms),
            "event_count": seen.event_count + incident.event_count,
            "score": max(scores) if scores else None,
            "evidence": {**seen.evidence, **incident.evidence},
        })
    return list(by_key.values())
