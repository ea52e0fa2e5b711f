"""Event contracts: what is accepted, what is refused and why, and the Spark schema."""

import json

import pytest

from patternalarm import domains
from patternalarm.events import (
    ENVELOPE,
    SCHEMA_VERSION,
    InvalidEvent,
    encode_label,
    label_problems,
    label_spark_schema,
)
from patternalarm.generator import DomainStream, RateProfile, StreamSpec
from patternalarm.settings import DOMAINS

START_MS = 1_700_000_000_000


def generated(domain: str, n: int = 300) -> list[bytes]:
    stream = DomainStream(StreamSpec(domain, 7, "gtest", START_MS, entities=100,
                                     anomaly_rate=0.05),
                          RateProfile.build(60_000, count=n))
    return [next(stream)[1] for _ in range(n)]


@pytest.mark.parametrize("domain", DOMAINS)
def test_generated_events_round_trip_through_the_contract(domain):
    contract = domains.contract(domain)
    for raw in generated(domain):
        event = contract.parse(raw)
        assert set(event) == {f.name for f in ENVELOPE} | {"payload"}
        assert set(event["payload"]) == set(contract.payload_names)
        assert event["domain"] == domain and event["schema_version"] == SCHEMA_VERSION
        assert contract.parse(contract.encode(event)) == event


def valid_payment() -> dict:
    return json.loads(generated("payments", 1)[0])


@pytest.mark.parametrize(("change", "named"), [
    (lambda e: e.pop("event_time"), "event_time: required"),
    (lambda e: e.update(event_time="1700000000000"), "event_time: expected long"),
    (lambda e: e.update(event_time=1_700_000_000), "event_time: 1700000000 below"),
    (lambda e: e.update(schema_version=2), "schema_version: 2 above"),
    (lambda e: e.update(domain="iot"), "domain: 'iot' sent to the payments contract"),
    (lambda e: e.update(entity_id=""), "entity_id: empty"),
    (lambda e: e.update(extra=1), "extra: unknown field"),
    (lambda e: e.pop("payload"), "payload: required object"),
    (lambda e: e["payload"].pop("amount"), "payload.amount: required"),
    (lambda e: e["payload"].update(amount=-5.0), "payload.amount: -5.0 below"),
    (lambda e: e["payload"].update(amount=True), "payload.amount: expected double"),
    (lambda e: e["payload"].update(amount=float("nan")), "payload.amount: not a finite"),
    (lambda e: e["payload"].update(channel="fax"), "payload.channel: 'fax' not one of"),
    (lambda e: e["payload"].update(card_present=1), "payload.card_present: expected boolean"),
    (lambda e: e["payload"].update(attributes={"v1": "x"}),
     "payload.attributes: map<string,double> holding"),
])
def test_contract_violations_are_refused_naming_the_field(change, named):
    event = valid_payment()
    change(event)
    with pytest.raises(InvalidEvent, match=named.replace(".", r"\.").replace("(", r"\(")):
        domains.contract("payments").validate(event)


def test_optional_fields_may_be_absent_and_attributes_carry_numbers():
    event = valid_payment()
    event["payload"] = {"amount": 12.5, "attributes": {"v1": -1.25, "v2": 3}}
    domains.contract("payments").validate(event)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe{}", b"[]", b'"event"'])
def test_undecodable_messages_are_invalid(raw):
    with pytest.raises(InvalidEvent):
        domains.contract("iot").parse(raw)


@pytest.mark.parametrize("domain", DOMAINS)
def test_spark_schema_is_a_struct_type_with_every_field(domain):
    from pyspark.sql.types import MapType, StructType

    contract = domains.contract(domain)
    schema = StructType.fromJson(contract.spark_schema())
    assert schema.fieldNames() == [f.name for f in ENVELOPE] + ["payload"]
    payload = schema["payload"].dataType
    assert payload.fieldNames() == list(contract.payload_names) + ["attributes"]
    assert isinstance(payload["attributes"].dataType, MapType)
    assert not schema["event_time"].nullable
    assert payload[contract.payload[0].name].nullable == (not contract.payload[0].required)


def test_labels_validate_and_have_a_spark_schema():
    from pyspark.sql.types import StructType

    label = {"episode_id": "e1", "run_id": "r1", "domain": "iot", "entity_id": "device-000001",
             "kind": "stuck", "start_time": START_MS, "end_time": START_MS + 5,
             "event_ids": ["a", "b"], "truncated": False, "schema_version": SCHEMA_VERSION}
    assert json.loads(encode_label(label)) == label
    assert label_problems({**label, "end_time": START_MS - 1}) == ["end_time: before start_time"]
    assert label_problems({**label, "event_ids": "a"}) == [
        "event_ids: expected array<string>, got str"]
    assert StructType.fromJson(label_spark_schema()).fieldNames() == list(label)
