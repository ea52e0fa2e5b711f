"""The stream's parse step against the contract: every hostile class becomes a dead letter with
its reason, valid events pass typed, and the frame converts to Arrow (as Spark will)."""

from __future__ import annotations

import hashlib
import json
import random

import pandas as pd
import pytest

from patternalarm import domains
from patternalarm.events import ENVELOPE, InvalidEvent
from patternalarm.settings import DOMAINS
from streaming import parse
from streaming.parse import DLQ_BUCKET, DLQ_RAW_BYTES, EventParser
from tests.hostile import hostile_messages
from tests.unit.test_events import generated

NOW = pd.Timestamp.now(tz="UTC")


def parsed(domain: str, values: list, broker_ms: list[int] | None = None) -> pd.DataFrame:
    """The parse step's rows, in the order of the records (offsets 0, 1, ...)."""
    topic = f"t.events.{domain}"
    size = len(values)
    batch = EventParser({topic: domain}, buckets=8, max_future_skew_s=300).parse(
        [topic] * size, [0] * size, list(range(size)),
        broker_ms or [int(NOW.timestamp() * 1000)] * size, values)
    return batch.to_pandas().sort_values("offset", ignore_index=True)


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_hostile_class_is_a_dead_letter_with_its_reason(domain):
    valid = generated(domain, 1)[0]
    cases = hostile_messages(valid)
    values = [valid, *(raw for raw, _ in cases.values()), valid]
    out = parsed(domain, values)
    assert len(out) == len(values)
    for (name, (raw, reason)), row in zip(cases.items(), out.iloc[1:-1].itertuples(),
                                          strict=True):
        assert row.bucket == DLQ_BUCKET, name
        assert reason in row.reason, (name, row.reason)
        assert pd.isna(row.event_ts) and pd.isna(row.event_time), name
        if raw is not None:
            assert row.raw == raw[:DLQ_RAW_BYTES] and row.raw_length == len(raw), name
            assert row.raw_sha256 == hashlib.sha256(raw).hexdigest(), name
    # The stream goes on: the valid events around them are typed rows.
    assert (out.iloc[[0, -1]]["bucket"] >= 0).all() and out.iloc[[0, -1]]["reason"].isna().all()


@pytest.mark.parametrize("domain", DOMAINS)
def test_the_parse_step_agrees_with_the_contract(domain):
    """Same verdict as contract(domain).parse on valid and invalid messages of every kind."""
    contract = domains.contract(domain)
    values = [*generated(domain, 50), *(raw for raw, _ in hostile_messages(
        generated(domain, 1)[0]).values())]
    out = parsed(domain, values)
    for raw, row in zip(values, out.itertuples(), strict=True):
        try:
            contract.parse(raw)
            accepted = True
        except InvalidEvent:
            accepted = False
        future = pd.notna(row.reason) and "future_event_time" in row.reason
        assert accepted == (row.bucket != DLQ_BUCKET) or future, (raw[:80], row.reason)


def test_an_event_ahead_of_its_broker_timestamp_is_a_dead_letter():
    valid = generated("iot", 1)[0]
    event_ms = int(domains.contract("iot").parse(valid)["event_time"])
    out = parsed("iot", [valid, valid], broker_ms=[event_ms - 301_000, event_ms - 299_000])
    assert out["bucket"].tolist()[0] == DLQ_BUCKET and "301s ahead" in out["reason"][0]
    assert out["bucket"].tolist()[1] >= 0


def mutations(valid: bytes, of) -> list[bytes]:
    """Each field of the envelope and payload broken, bent or dressed up one way at a time."""
    event = json.loads(valid)

    def encoded(changed: dict, **dumps) -> bytes:
        return json.dumps(changed, **dumps).encode()

    out = []
    for path, rule in [*((("",), f) for f in ENVELOPE), *((("payload",), f) for f in of.payload)]:
        for value in (None, "", "x" * 200, 0, -1, 5.0, 1e2, 2**31, -0.0, 1e308, True, "5",
                      [1], {"a": 1}, "ünï", *(rule.choices or ())[:1],
                      *(v for v in (rule.min, rule.max) if v is not None),
                      *(v + d for v in (rule.min, rule.max) if v is not None for d in (-1, 1))):
            changed = json.loads(valid)
            target = changed if path == ("",) else changed["payload"]
            target[rule.name] = value
            out.append(encoded(changed))
        changed = json.loads(valid)
        (changed if path == ("",) else changed["payload"]).pop(rule.name)
        out.append(encoded(changed))
    text = valid.decode()
    out += [
        b"", b"  ", valid + valid, valid + b" ", b" " + valid, valid.replace(b",", b", "),
        encoded(event, indent=1),                                     # newlines inside
        encoded({**event, "domain": next(d for d in DOMAINS if d != of.domain)}),
        encoded({**event, "schema_version": 2}), encoded({**event, "extra": 1}),
        encoded({**event, "payload": {**event["payload"], "extra": 1}}),
        encoded({**event, "payload": None}), encoded({**event, "payload": []}),
        encoded({**event, "payload": {**event["payload"], "attributes": {"a": 1.5}}}),
        encoded({**event, "entity_id": "caf\u00e9"}, ensure_ascii=False),
        encoded({**event, "entity_id": "caf\u00e9"}),                 # an escape
        encoded({**event, "entity_id": "a{b"}),
        text.replace('"event_id"', '"event_id":"dup","event_id"', 1).encode(),
        text.replace(f'"event_time":{event["event_time"]}',
                     f'"event_time":{event["event_time"]}.0').encode(),
        text.replace(f'"event_time":{event["event_time"]}',
                     f'"event_time":{event["event_time"] / 1000}e3').encode(),
    ]
    return out


@pytest.mark.parametrize("smallest_block", [parse._SMALLEST_BLOCK, 1])
@pytest.mark.parametrize("domain", DOMAINS)
def test_the_columnar_path_gives_what_the_contract_path_gives(domain, smallest_block,
                                                              monkeypatch):
    """Block reading with Arrow and the per-message contract parse: the same rows, typed the
    same, and the same dead letters with the same reasons, whatever the mix. With blocks halved
    down to single messages, every variant that reads as JSON lines meets the columnar rules."""
    monkeypatch.setattr(parse, "_SMALLEST_BLOCK", smallest_block)
    of = domains.contract(domain)
    good = generated(domain, 300)
    bad = [*mutations(good[0], of), *(raw for raw, _ in hostile_messages(good[1]).values())]
    rng = random.Random(7)
    values = good + bad
    rng.shuffle(values)
    topic = f"t.events.{domain}"
    parser = EventParser({topic: domain}, buckets=8, max_future_skew_s=300)
    size = len(values)
    args = ([topic] * size, [0] * size, list(range(size)),
            [int(NOW.timestamp() * 1000)] * size, values)
    columnar = parser.parse(*args).to_pandas().sort_values("offset", ignore_index=True)
    each = parser._each(list(range(size)), *args, int(NOW.timestamp() * 1000)).to_pandas()
    pd.testing.assert_frame_equal(columnar, each.sort_values("offset", ignore_index=True))
    assert (columnar["bucket"] >= 0).sum() >= 300  # the valid events, and some valid variants
    assert (columnar["bucket"] == DLQ_BUCKET).sum() >= len(hostile_messages(good[1]))


@pytest.mark.parametrize("domain", DOMAINS)
def test_randomly_damaged_events_get_one_verdict_from_both_paths(domain, monkeypatch):
    """Bytes replaced, dropped and inserted from JSON's own characters (and a NUL, a backslash,
    a stray UTF-8 lead byte): whatever the damage, the columnar path agrees with the contract."""
    monkeypatch.setattr(parse, "_SMALLEST_BLOCK", 1)
    rng = random.Random(domain)
    alphabet = b'{}[]",:0123456789.-+eEtrufalsn \\x\xc3\x00'
    topic = f"t.events.{domain}"
    parser = EventParser({topic: domain}, buckets=8, max_future_skew_s=300)
    values = []
    for raw in generated(domain, 100) * 5:
        damaged = bytearray(raw)
        for _ in range(rng.randint(0, 3)):
            at, roll = rng.randrange(len(damaged)), rng.random()
            if roll < 0.4:
                damaged[at] = rng.choice(alphabet)
            elif roll < 0.7:
                del damaged[at]
            else:
                damaged.insert(at, rng.choice(alphabet))
        values.append(bytes(damaged))
    size = len(values)
    now_ms = int(NOW.timestamp() * 1000)
    args = ([topic] * size, [0] * size, list(range(size)), [now_ms] * size, values)
    columnar = parser.parse(*args).to_pandas().sort_values("offset", ignore_index=True)
    each = parser._each(list(range(size)), *args, now_ms).to_pandas()
    pd.testing.assert_frame_equal(columnar, each.sort_values("offset", ignore_index=True))
    assert 0 < (columnar["bucket"] == DLQ_BUCKET).sum() < size
