"""Hostile messages, one of each class a producer can send, with the reason each must get.

Shared by the parse unit test and the end-to-end hostile-input test, so both hold the stream
to the same list.
"""

from __future__ import annotations

import json

from patternalarm.events import MAX_MESSAGE_BYTES


def hostile_messages(valid: bytes, broker_max_bytes: int = 1_000_000) -> dict[str, tuple]:
    """name -> (message bytes or None, substring its dead-letter reason must contain).

    `valid` is one valid event of the topic's domain; the variants break it one way each."""
    event = json.loads(valid)

    def variant(**changes) -> bytes:
        return json.dumps({**event, **changes}).encode()

    def payload_number(literal: str) -> bytes:
        name = next(k for k, v in event["payload"].items()
                    if isinstance(v, float) and not isinstance(v, bool))
        return json.dumps(event).replace(
            json.dumps({name: event["payload"][name]})[1:-1],
            f'"{name}": {literal}').encode()

    depth = MAX_MESSAGE_BYTES // 4
    return {
        "integer_beyond_float_range": (payload_number("1" + "0" * 400), "out of double range"),
        "float_literal_overflow": (payload_number("1e400"), "not a finite number"),
        "nan_literal": (payload_number("NaN"), "not a finite number"),
        "long_beyond_int64": (variant(event_time=10**30), "out of long range"),
        "deep_nesting_within_size": (b"[" * depth + b"]" * depth, "nesting"),
        "deep_nesting_object": (b'{"a":' * (depth // 2) + b"1" + b"}" * (depth // 2),
                                "nesting"),
        "tombstone": (None, "null value"),
        "json_array": (b"[1, 2, 3]", "not a JSON object (a JSON array)"),
        "json_string": (b'"event"', "not a JSON object (a JSON string)"),
        "json_null": (b"null", "not a JSON object (a JSON null)"),
        "not_utf8": (b"\xff\xfe\x00garbage", "not JSON"),
        "lone_surrogate_id": (variant(entity_id="\ud800x"), "invalid Unicode"),
        "nul_in_id": (variant(entity_id="dev\x00ice"), "NUL"),
        "unknown_field_with_bad_name": (variant(**{"\udfff" * 500: 1}), "unknown field"),
        "too_long_for_contract": (variant(entity_id="x" * 5000), "longer than 128"),
        "oversized_near_broker_max": (b'{"x": "' + b"a" * (broker_max_bytes - 100) + b'"}',
                                      "too large"),
        "far_future_event_time": (variant(event_time=4_000_000_000_000), "future_event_time"),
    }
