"""Event contracts: the versioned envelope, per-domain payloads, validation and encoding.

A contract is one explicit list of typed fields. The same list validates a parsed message,
builds the generator's fast byte encoder and describes the Spark schema (as the JSON that
``pyspark.sql.types.StructType.fromJson`` reads), so producers, the stream job and the docs
cannot drift apart. Nothing here imports pyspark.

Wire format (schema_version 1), UTF-8 JSON, Kafka key = entity_id::

    {"event_id": ..., "domain": ..., "entity_id": ..., "event_time": <UTC epoch ms>,
     "schema_version": 1, "payload": {<domain fields>}}
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from patternalarm.settings import DOMAINS

SCHEMA_VERSION = 1
# Event times outside this window are typos (seconds instead of ms, or a year 2400 timestamp).
MIN_EVENT_TIME_MS = 946_684_800_000      # 2000-01-01
MAX_EVENT_TIME_MS = 4_102_444_800_000    # 2100-01-01
# A valid event is a few hundred bytes; a replayed file's attributes add a few KB at most.
# Anything larger is refused before it is decoded, so no message costs more than this to judge.
MAX_MESSAGE_BYTES = 64 * 1024
# The contract nests three levels (envelope, payload, attributes) and the field types refuse
# anything deeper; this is only the decoder's own bound, reported instead of a RecursionError.
MAX_NESTING = 3
INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_FLOAT_MAX = 1.7976931348623157e308

FieldType = Literal["string", "int", "long", "double", "boolean", "array<string>",
                    "map<string,double>"]

_SPARK_TYPES: dict[str, Any] = {
    "string": "string", "int": "integer", "long": "long", "double": "double",
    "boolean": "boolean",
    "array<string>": {"type": "array", "elementType": "string", "containsNull": False},
    "map<string,double>": {"type": "map", "keyType": "string", "valueType": "double",
                           "valueContainsNull": False},
}


class InvalidEvent(ValueError):
    """A message that does not satisfy its contract; the message lists every problem."""


@dataclass(frozen=True)
class Field:
    name: str
    type: FieldType
    required: bool = True
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    max_len: int | None = None
    decimals: int = 3  # digits the fast encoder writes for a double
    doc: str = ""

    def problems(self, value: object) -> list[str]:
        if value is None:
            return [f"{self.name}: required"] if self.required else []
        if not _has_type(value, self.type):
            return [f"{self.name}: {_type_problem(value, self.type)}"]
        found = []
        if self.min is not None and value < self.min:
            found.append(f"{self.name}: {value!r} below {self.min}")
        if self.max is not None and value > self.max:
            found.append(f"{self.name}: {value!r} above {self.max}")
        if self.choices is not None and value not in self.choices:
            found.append(f"{self.name}: {value!r} not one of {', '.join(self.choices)}")
        if self.max_len is not None and len(value) > self.max_len:
            found.append(f"{self.name}: longer than {self.max_len}")
        return found

    def spark(self) -> dict[str, Any]:
        return {"name": self.name, "type": _SPARK_TYPES[self.type], "nullable": not self.required,
                "metadata": {"comment": self.doc} if self.doc else {}}


def _has_type(value: object, kind: str) -> bool:
    # bool is an int subclass in Python, but true is not a number in the contract.
    if isinstance(value, bool):
        return kind == "boolean"
    if kind == "string":
        return _is_text(value) and value != ""
    if kind in ("int", "long"):
        low, high = INT_RANGE[kind]
        return isinstance(value, int) and low <= value <= high
    if kind == "double":
        # Compared, not converted: math.isfinite(10**400) raises OverflowError.
        return (isinstance(value, float) and math.isfinite(value)) or (
            isinstance(value, int) and -_FLOAT_MAX <= value <= _FLOAT_MAX)
    if kind == "array<string>":
        return isinstance(value, list) and all(_is_text(v) for v in value)
    if kind == "map<string,double>":
        return isinstance(value, dict) and all(
            _is_text(k) and _has_type(v, "double") for k, v in value.items())
    return False


def _is_text(value: object) -> bool:
    """A string that every sink stores: UTF-8 encodable (JSON may carry a lone surrogate,
    which Arrow refuses) and free of NUL (which PostgreSQL text and jsonb refuse)."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _type_problem(value: object, kind: str) -> str:
    if kind in ("int", "long", "double") and isinstance(value, int | float) \
            and not isinstance(value, bool):
        return "not a finite number" if isinstance(value, float) else f"number out of {kind} range"
    if isinstance(value, str) and kind == "string":
        return "empty" if value == "" else "text with NUL or invalid Unicode"
    if kind in ("array<string>", "map<string,double>") and isinstance(value, list | dict):
        return f"{kind} holding a value of another type, NUL or invalid Unicode"
    return f"expected {kind}, got {type(value).__name__}"


def _shown(text: str, limit: int = 64) -> str:
    """A name from the message, safe to put in a reason: escaped and short."""
    return (text[:limit] + "…" if len(text) > limit else text).encode(
        "utf-8", "backslashreplace").decode().replace("\x00", "\\x00")


def future_event_time(event_time_ms: int, broker_time_ms: int, max_skew_ms: int) -> str | None:
    """Why an event may not pass the watermark, or None: one global watermark serves every
    producer, so an event dated ahead of its own broker timestamp (a wrong or hostile clock)
    would make every later event late for everyone."""
    ahead = event_time_ms - broker_time_ms
    if ahead > max_skew_ms:
        return (f"future_event_time: event_time is {ahead / 1000:.0f}s ahead of its broker "
                f"timestamp (the limit is {max_skew_ms / 1000:.0f}s)")
    return None


ENVELOPE: tuple[Field, ...] = (
    Field("event_id", "string", max_len=128, doc="unique id of the event"),
    Field("domain", "string", choices=DOMAINS, doc="payments | gaming | iot"),
    Field("entity_id", "string", max_len=128, doc="card, player or device; the Kafka key"),
    Field("event_time", "long", min=MIN_EVENT_TIME_MS, max=MAX_EVENT_TIME_MS,
          doc="when it happened, UTC epoch milliseconds"),
    Field("schema_version", "int", min=SCHEMA_VERSION, max=SCHEMA_VERSION,
          doc="contract version"),
)
# Extra numeric features a replayed file carries beyond the domain's own fields.
ATTRIBUTES = Field("attributes", "map<string,double>", required=False,
                   doc="extra numeric features (replayed files)")


@dataclass(frozen=True)
class Contract:
    """Envelope plus one domain's payload fields."""

    domain: str
    payload: tuple[Field, ...]

    @property
    def payload_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.payload)

    def problems(self, event: object) -> list[str]:
        if not isinstance(event, Mapping):
            return [f"not a JSON object (a JSON {_json_kind(event)})"]
        found = _check(ENVELOPE, event, extra=("payload",))
        if event.get("domain") not in (None, self.domain):
            found.append(f"domain: {event['domain']!r} sent to the {self.domain} contract")
        payload = event.get("payload")
        if not isinstance(payload, Mapping):
            return found + ["payload: required object"]
        return found + [f"payload.{p}" for p in _check(self.payload + (ATTRIBUTES,), payload)]

    def validate(self, event: object) -> None:
        found = self.problems(event)
        if found:
            raise InvalidEvent("; ".join(found))

    def parse(self, raw: bytes | str | None) -> dict[str, Any]:
        """Decode and validate one message; raises InvalidEvent naming every problem.

        Any content, size or encoding ends here as InvalidEvent, never as another exception:
        the stream dead-letters what this refuses and must not die on a message."""
        if raw is None:
            raise InvalidEvent("empty message (null value, a tombstone)")
        if len(raw) > MAX_MESSAGE_BYTES:
            raise InvalidEvent(f"too large: {len(raw)} bytes (the limit is {MAX_MESSAGE_BYTES})")
        try:
            event = json.loads(raw)
        except RecursionError:
            raise InvalidEvent(f"nesting: deeper than the decoder allows (the contract nests "
                               f"{MAX_NESTING} levels)") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidEvent(f"not JSON: {exc}") from None
        self.validate(event)
        return event

    def encode(self, event: Mapping[str, Any]) -> bytes:
        """Validated, compact JSON bytes of an event (the general, slower path)."""
        self.validate(event)
        return json.dumps(event, separators=(",", ":")).encode()

    def fast_encoder(self) -> Callable[[tuple], bytes]:
        """Encoder of the hot path: (event_id, entity_id, event_time, *payload values in
        contract order) -> bytes, by one %-format. Callers pass strings that need no JSON
        escaping and finite doubles (the generator's ids and values are built that way; a unit
        test decodes its output with this contract)."""
        parts = []
        for f in self.payload:
            spec = {"string": '"%s"', "int": "%d", "long": "%d",
                    "double": f"%.{f.decimals}f", "boolean": "%s"}[f.type]
            parts.append(f'"{f.name}":{spec}')
        template = (f'{{"event_id":"%s","domain":"{self.domain}","entity_id":"%s",'
                    f'"event_time":%d,"schema_version":{SCHEMA_VERSION},'
                    f'"payload":{{{",".join(parts)}}}}}')
        bools = [i + 3 for i, f in enumerate(self.payload) if f.type == "boolean"]

        if not bools:
            def encode(values: tuple) -> bytes:
                return (template % values).encode()
        else:
            def encode(values: tuple) -> bytes:
                items = list(values)
                for i in bools:
                    items[i] = "true" if items[i] else "false"
                return (template % tuple(items)).encode()
        return encode

    def spark_schema(self) -> dict[str, Any]:
        """StructType JSON of the message (``StructType.fromJson`` reads it)."""
        payload = {"type": "struct",
                   "fields": [f.spark() for f in self.payload + (ATTRIBUTES,)]}
        return {"type": "struct", "fields": [f.spark() for f in ENVELOPE] + [
            {"name": "payload", "type": payload, "nullable": False, "metadata": {}}]}


def _check(fields: Sequence[Field], obj: Mapping[str, Any],
           extra: Sequence[str] = ()) -> list[str]:
    found = [p for f in fields for p in f.problems(obj.get(f.name))]
    known = {f.name for f in fields} | set(extra)
    found += [f"{_shown(name)}: unknown field" for name in obj if name not in known]
    return found


def _json_kind(value: object) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


# Labels: one message per anomaly episode on the labels topic, keyed by entity_id.
LABEL_FIELDS: tuple[Field, ...] = (
    Field("episode_id", "string", max_len=128),
    Field("run_id", "string", max_len=64),
    Field("domain", "string", choices=DOMAINS),
    Field("entity_id", "string", max_len=128),
    Field("kind", "string", max_len=64, doc="anomaly kind, e.g. card_testing"),
    Field("start_time", "long", min=MIN_EVENT_TIME_MS, max=MAX_EVENT_TIME_MS),
    Field("end_time", "long", min=MIN_EVENT_TIME_MS, max=MAX_EVENT_TIME_MS),
    Field("event_ids", "array<string>", doc="exactly the events of the episode"),
    Field("truncated", "boolean", required=False,
          doc="cut short by the end of its run: fewer events than the kind plans"),
    Field("schema_version", "int", min=SCHEMA_VERSION, max=SCHEMA_VERSION),
)


def label_problems(label: object) -> list[str]:
    if not isinstance(label, Mapping):
        return ["not a JSON object"]
    found = _check(LABEL_FIELDS, label)
    if not found and label["end_time"] < label["start_time"]:
        found.append("end_time: before start_time")
    return found


def encode_label(label: Mapping[str, Any]) -> bytes:
    found = label_problems(label)
    if found:
        raise InvalidEvent("; ".join(found))
    return json.dumps(label, separators=(",", ":")).encode()


def label_spark_schema() -> dict[str, Any]:
    return {"type": "struct", "fields": [f.spark() for f in LABEL_FIELDS]}
