"""Generator logic without a broker: rates, pacing on a fake clock, determinism, episodes,
late and malformed fractions, delivery accounting."""

import json
from collections import Counter, defaultdict

import pytest

from patternalarm import domains
from patternalarm.domains import gaming, iot, payments
from patternalarm.events import InvalidEvent
from patternalarm.generator import (
    MODES,
    DomainStream,
    Pacer,
    RateProfile,
    Sender,
    Spike,
    StreamSpec,
    pump,
)
from patternalarm.settings import DOMAINS

START_MS = 1_700_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> float:
        return START_MS / 1000 + self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


class Msg:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value


class FakeProducer:
    """Acknowledges on poll, like librdkafka; `fails` picks the messages the broker refuses."""

    def __init__(self, fails=lambda value: False) -> None:
        self.fails = fails
        self.pending: list = []
        self.delivered: list[tuple[bytes, bytes]] = []

    def produce(self, topic, value, key, on_delivery):
        self.pending.append((key, value, on_delivery))

    def poll(self, timeout=0):
        pending, self.pending = self.pending, []
        for key, value, callback in pending:
            failed = self.fails(value)
            if not failed:
                self.delivered.append((key, value))
            callback("broker said no" if failed else None, Msg(value))

    def flush(self, timeout=0):
        self.poll()
        return 0


def stream(domain="payments", seed=1, n=5_000, per_min=1_200, **spec) -> DomainStream:
    spec = {"entities": 500, "anomaly_rate": 0.01, **spec}
    return DomainStream(StreamSpec(domain, seed, "gtest", START_MS, **spec),
                        RateProfile.build(per_min, count=n))


# --- rates and pacing -----------------------------------------------------------------------

def test_modes_are_the_documented_rates():
    assert MODES == {"MINI": 5, "NORMAL": 10_000, "PEAK": 50_000, "CRISIS": 100_000}


def test_mini_for_a_minute_is_five_evenly_spaced_events():
    profile = RateProfile.build(MODES["MINI"], duration_s=60)
    assert profile.total == 5
    assert [profile.time_of(i) for i in range(5)] == pytest.approx([0, 12, 24, 36, 48])


@pytest.mark.parametrize("mode", MODES)
def test_a_duration_holds_rate_times_duration_events(mode):
    assert RateProfile.build(MODES[mode], duration_s=90).total == pytest.approx(
        MODES[mode] * 1.5, abs=1)


def test_burst_multiplies_the_rate_inside_its_window_only():
    profile = RateProfile.build(600, duration_s=60, spike=Spike.parse("burst:20:10"))
    per_second = Counter(int(profile.time_of(i)) for i in range(profile.total))
    assert all(per_second[s] == 100 for s in range(20, 30))
    assert all(per_second[s] == 10 for s in list(range(0, 20)) + list(range(30, 60)))
    assert profile.total == 50 * 10 + 10 * 100


def test_ramp_climbs_to_the_rate_then_holds_it():
    profile = RateProfile.build(6000, duration_s=40, spike=Spike.parse("ramp:20"))
    rates = [profile.rate_at(t) for t in range(40)]
    assert rates[0] == pytest.approx(10.0)
    assert all(a < b for a, b in zip(rates[:20], rates[1:21], strict=True))
    assert rates[20:] == [100.0] * 20


@pytest.mark.parametrize("text", ["ramp", "ramp:-1", "burst:10", "burst:x:5", "wave:3",
                                  "burst:5:5:0"])
def test_bad_spike_profiles_are_refused(text):
    with pytest.raises(ValueError, match="spike profile"):
        Spike.parse(text)


def test_pacer_releases_exactly_the_schedule_on_a_fake_clock():
    clock = FakeClock()
    pacer = Pacer(RateProfile.build(600, duration_s=10), clock)  # 10/s, 100 events
    assert pacer.take(1_000) == 1                      # event 0 is due at t=0
    assert pacer.take(1_000) == 0
    clock.t += 0.95
    assert pacer.take(1_000) == 9                      # events at 0.1 .. 0.9
    clock.t += 0.05
    assert pacer.take(1_000) == 1                      # event at 1.0
    assert pacer.take(3) == 0
    clock.t += 5.0
    assert pacer.take(20) == 20                        # behind: caught up in batches
    assert pacer.take(1_000) == 30
    clock.t += 100.0
    assert pacer.take(1_000) == 39 and pacer.done       # never more than the total


def drain(pacer: Pacer, longest: float) -> int:
    sent = 0
    while not pacer.done:
        n = pacer.take(100_000)
        sent += n
        if not n:
            pacer.wait(longest)
    return sent


def test_pacer_sleeps_only_until_the_next_token():
    clock = FakeClock()
    assert drain(Pacer(RateProfile.build(600, duration_s=10), clock), longest=1.0) == 100
    assert clock.t - 100.0 == pytest.approx(9.9)       # the last event is due at 9.9 s
    assert clock.sleeps == pytest.approx([0.1] * 99)


def test_at_high_rates_the_pacer_releases_batches_not_single_events():
    clock = FakeClock()
    assert drain(Pacer(RateProfile.build(600_000, duration_s=10), clock), 0.05) == 100_000
    assert clock.t - 100.0 == pytest.approx(10.0, abs=0.01)
    assert len(clock.sleeps) < 2_100                    # ~one per 5 ms, not 100,000


def test_pump_sends_everything_paced_and_counts_only_acknowledged():
    clock = FakeClock()
    producer = FakeProducer(fails=lambda value: json.loads(value)["event_id"].endswith("7"))
    episodes = []
    sender = Sender(producer, "t", episodes.append)
    source = stream(n=5_000, anomaly_rate=0.02)
    pump(source, sender, Pacer(source.timeline, clock), lambda stats: None, batch=100)
    for episode in source.close():
        sender.settle(episode)
    producer.flush()
    assert sender.produced == 5_000
    assert sender.errors == 500 and sender.sent == len(producer.delivered) == 4_500
    assert clock.t - 100.0 == pytest.approx(source.timeline.time_of(4_999), abs=0.01)
    delivered = {json.loads(v)["event_id"] for _, v in producer.delivered}
    partly = [ep for ep in episodes if ep.failed]
    assert partly and len(episodes) == sender.episodes
    for episode in episodes:
        label = episode.label("gtest")
        assert set(label["event_ids"]) == {e for e, _ in episode.events} & delivered
        assert len(label["event_ids"]) == len(episode.events) - episode.failed


# --- the stream -----------------------------------------------------------------------------

@pytest.mark.parametrize("domain", DOMAINS)
def test_same_seed_same_events_other_seed_other_events(domain):
    a, b, c = stream(domain), stream(domain), stream(domain, seed=2)
    first = [next(a)[:2] for _ in range(3_000)]
    assert first == [next(b)[:2] for _ in range(3_000)]
    assert first != [next(c)[:2] for _ in range(3_000)]


def test_an_entity_keeps_its_profile_whatever_the_run():
    small, large = stream(entities=10), stream(entities=10_000, seed=1)
    a, b = small.entity(7)[0], large.entity(7)[0]
    assert (a.country, a.mean_amount, a.merchants) == (b.country, b.mean_amount, b.merchants)
    assert small.entity(7)[1] == b"card-000007"
    assert small.entity(8)[0].merchants != a.merchants


def test_first_entity_names_entities_no_other_run_used():
    moved = stream(entities=10, first_entity=5_000_000)
    assert moved.entity(7)[1] == b"card-5000007"
    events = [json.loads(next(moved)[1]) for _ in range(50)]
    assert all(int(e["entity_id"].split("-")[1]) >= 5_000_000 for e in events)


def run_stream(domain: str, n: int = 20_000, **spec):
    source = stream(domain, n=n, **spec)
    out = [next(source) for _ in range(n)]
    cut = source.close()
    return out, cut


@pytest.mark.parametrize("domain", DOMAINS)
def test_episodes_label_exactly_their_events(domain):
    out, cut = run_stream(domain)
    contract = domains.contract(domain)
    by_episode = defaultdict(list)
    for key, value, episode, _ in out:
        event = contract.parse(value)
        assert key.decode() == event["entity_id"]
        if episode is not None:
            by_episode[id(episode)].append((episode, event))
    episodes = {id(ep): ep for ep, _ in (pairs[0] for pairs in by_episode.values())}
    assert len(episodes) >= 30
    assert {ep.kind for ep in episodes.values()} == set(domains.MODELS[domain].ANOMALIES)
    for key, pairs in by_episode.items():
        episode = episodes[key]
        events = [e for _, e in pairs]
        assert episode.events == [(e["event_id"], e["event_time"]) for e in events]
        assert {e["entity_id"] for e in events} == {episode.entity_id}
        assert episode.closed and (episode.remaining == 0)
        assert all(e["event_time"] >= episode.start_ms for e in events)
    assert all(id(ep) in episodes for ep in cut)


def test_while_in_an_episode_an_entity_sends_nothing_else():
    out, _ = run_stream("iot")
    inside: dict[str, object] = {}
    for key, _, episode, _ in out:
        if episode is not None:
            inside[key] = None if episode.closed else episode
        else:
            assert inside.get(key) is None


def kind_events(domain: str):
    out, _ = run_stream(domain)
    contract = domains.contract(domain)
    kinds = defaultdict(list)
    for _, value, episode, _ in out:
        if episode is not None:
            kinds[episode.kind].append(contract.parse(value)["payload"])
    return kinds


def test_payment_anomalies_look_like_what_they_claim():
    kinds = kind_events("payments")
    assert all(p["amount"] < 3 and p["channel"] == "ecom" for p in kinds["card_testing"])
    assert all(p["category"] in ("electronics", "jewelry") for p in kinds["amount_spike"])
    travel = {p["country"] for p in kinds["impossible_travel"]}
    assert len(travel) > 1 and all(p["card_present"] for p in kinds["impossible_travel"])
    assert len(kinds["velocity_burst"]) >= 8


def test_gaming_anomalies_look_like_what_they_claim():
    kinds = kind_events("gaming")
    assert all(p["speed"] > gaming.MAX_LEGIT_SPEED for p in kinds["speed_hack"])
    assert all(p["reaction_ms"] < 100 for p in kinds["inhuman_reaction"])
    shots = kinds["aimbot"]
    assert sum(p["hit"] for p in shots) / len(shots) > 0.9
    assert all(p["resource_gain"] >= 200 for p in kinds["resource_farming"])


def test_iot_stuck_sensor_repeats_one_value_and_silence_leaves_a_gap():
    source = stream("iot", n=20_000)
    out = [next(source) for _ in range(20_000)]
    stuck = defaultdict(set)
    last_seen: dict[bytes, int] = {}
    gaps = []
    for key, value, episode, _ in out:
        event = iot.CONTRACT.parse(value)
        if episode is not None and episode.kind == "stuck":
            stuck[episode.episode_id].add(event["payload"]["value"])
        if episode is not None and episode.kind == "silence":
            gaps.append(event["event_time"] - last_seen.get(key, episode.start_ms))
            assert event["event_time"] - episode.start_ms >= 180_000
        last_seen[key] = event["event_time"]
    assert stuck and all(len(values) == 1 for values in stuck.values())
    assert gaps and min(gaps) >= 180_000


def test_late_and_malformed_fractions():
    n = 40_000
    source = stream("payments", n=n, late_fraction=0.05, malformed_fraction=0.02,
                    late_max_s=60)
    flags = Counter()
    for i in range(n):
        _, value, episode, flag = next(source)
        flags[flag] += 1
        scheduled = START_MS + int(source.timeline.time_of(i) * 1000)
        if flag == "malformed":
            with pytest.raises(InvalidEvent):
                payments.CONTRACT.parse(value)
            continue
        event = payments.CONTRACT.parse(value)
        if flag == "late":
            assert scheduled - 60_000 <= event["event_time"] <= scheduled - 1_000
            assert episode is None
        else:
            assert event["event_time"] == scheduled
    # Binomial: 5 standard deviations either side.
    assert abs(flags["late"] - 0.05 * 0.98 * n) < 5 * (n * 0.05) ** 0.5
    assert abs(flags["malformed"] - 0.02 * n) < 5 * (n * 0.02) ** 0.5


def test_episodes_never_take_more_than_half_the_entities():
    source = stream("gaming", entities=4, anomaly_rate=0.5, n=20_000)
    for _ in range(20_000):
        next(source)
        assert len(source.busy) <= 2
    assert source.episodes > 10


def test_episodes_cut_by_the_end_of_the_run_are_marked_truncated():
    s = stream("iot", n=3_000, anomaly_rate=0.01)
    finished = {ep.episode_id: ep for _, _, ep, _ in (next(s) for _ in range(3_000)) if ep}
    cut = s.close()
    assert cut and all(ep.truncated for ep in cut)
    cut[0].acked = list(cut[0].events)  # as if the broker acknowledged them
    assert cut[0].label("r")["truncated"] is True
    whole = [ep for ep in finished.values() if ep not in cut]
    assert whole and not any(ep.truncated for ep in whole)


def test_devices_report_in_turn_so_a_silence_stands_out():
    s = stream("iot", n=1_200, per_min=600, anomaly_rate=0.0, entities=600)
    keys = [next(s)[0] for _ in range(1_200)]
    # 600 devices, each heard from exactly twice in 1,200 events, in the same order.
    assert keys[:600] == keys[600:] and len(set(keys)) == 600
