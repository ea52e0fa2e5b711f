"""A real headless Chromium opens the dashboard served by the stack's API process, fed by the
stream's own sink writing to the stack's Postgres, and watches it update without a reload."""

from __future__ import annotations

import contextlib
import json
import uuid

import pytest

from models.incidents import Incident
from patternalarm import db, secrets
from patternalarm.settings import PROJECT_ROOT
from streaming.sinks import BatchMetrics, commit_batch
from tests.conftest import wait_until
from tests.integration.browser import Browser
from tests.integration.test_api_predict import DOMAIN, champion  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration

SCREENSHOT = PROJECT_ROOT / "test-artifacts" / "dashboard.png"
LAYOUT_SCREENSHOT = PROJECT_ROOT / "test-artifacts" / "dashboard-1400px.png"
T0 = 1_700_000_000_000


def incident(entity: str, detector: str, domain: str = "payments") -> Incident:
    return Incident(domain=domain, entity_id=entity, detector=detector, detector_kind="rule",
                    window_start_ms=T0, severity="high", first_event_ms=T0,
                    last_event_ms=T0 + 5_000, event_count=7, evidence={"rule": detector})


def metrics(rows: int, p50: float, p99: float, lag: int) -> BatchMetrics:
    return BatchMetrics(input_rows=rows, processing_ms=400.0, event_latency_p50_ms=p50,
                        event_latency_p99_ms=p99, lag_total=lag,
                        model_versions={"payments": "3"})


@pytest.fixture
def feed(stack):
    """The stream sink's writes, under names unique to this test; removed afterwards."""
    tag = uuid.uuid4().hex[:8]
    query = f"browser-{tag}"
    with contextlib.closing(db.connect(stack)) as conn:
        yield tag, query, conn
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM incidents WHERE entity_id LIKE %s", (f"%-{tag}",))
            cur.execute("DELETE FROM stream_metrics WHERE query_name = %s", (query,))
            cur.execute("DELETE FROM stream_batches WHERE query_name = %s", (query,))
            cur.execute("DELETE FROM load_runs WHERE run_id = %s", (f"load-{tag}",))
            cur.execute("DELETE FROM chaos_runs WHERE run_id = %s", (f"chaos-{tag}",))


def test_dashboard_shows_incidents_and_figures_and_updates_live(stack, feed, tmp_path):
    tag, query, conn = feed
    first = incident(f"card-{tag}", "velocity_burst")
    commit_batch(conn, query, 0, [first, incident(f"dev-{tag}", "flatline", "iot")],
                 metrics(rows=600, p50=800.0, p99=1900.0, lag=42))
    chart = stack.var_dir / "reports" / f"load-{tag}.png"
    _draw_chart(chart)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO load_runs (run_id, status, mode, rate_per_min, domains, "
                    "duration_s, throughput_per_min, latency_p50_ms, latency_p99_ms, max_lag, "
                    "recall, chart_path) VALUES (%s, 'passed', 'NORMAL', 10000, "
                    "ARRAY['payments'], 60, 9800, 950, 2100, 120, 0.93, %s)",
                    (f"load-{tag}", str(chart)))
        cur.execute("INSERT INTO chaos_runs (run_id, scenario, injected, events_sent, "
                    "events_lost, incidents_duplicated, recovery_s, verdict) "
                    "VALUES (%s, 'kill-broker', %s, 5000, 0, 0, 12.5, 'pass')",
                    (f"chaos-{tag}", json.dumps({"signal": "SIGKILL"})))

    key = secrets.load(stack)["api_key"]
    url = f"http://{stack.bind_host}:{stack.api_port}/#key={key}&refresh=300"
    with Browser(url, tmp_path / "profile") as page:
        def shows(selector: str) -> bool:
            return page.evaluate(f"document.querySelector({json.dumps(selector)}) !== null")

        def text(selector: str) -> str:
            return page.evaluate(f"document.querySelector({json.dumps(selector)}).textContent")

        def points(chart_id: str) -> int:
            return int(page.evaluate(
                f"document.getElementById('{chart_id}').dataset.points || 0"))

        wait_until(lambda: shows(f'#feed tr[data-key="{first.key}"]'), 30)
        # The key left the address bar (and so the history) once read.
        assert "key=" not in page.evaluate("location.href")
        assert text("#events-per-s") != "–"
        assert text("#latency-p99") != "–"
        assert text("#lag") == "42"
        for chart_id in ("chart-throughput", "chart-latency", "chart-lag", "chart-domain",
                         "chart-detector"):
            wait_until(lambda c=chart_id: points(c) > 0 and shows(f"#{c} canvas"), 10)
        assert text('#models tr[data-domain="payments"]').startswith("payments3")
        assert shows(f'#load-runs tr[data-run="load-{tag}"] .verdict-passed')
        assert "kill-broker" in text("#chaos-runs")
        wait_until(lambda: page.evaluate(
            f"document.querySelector('img[data-run=\"load-{tag}\"]')?.naturalWidth || 0") > 0,
            10)

        # New rows arrive: the page picks them up without a reload.
        updates = int(page.evaluate("document.body.dataset.updates"))
        page.evaluate("window.sameDocument = true")  # a reload would lose it
        events_before = text("#events-per-s")
        second = incident(f"card2-{tag}", "card_testing")
        commit_batch(conn, query, 1, [second], metrics(rows=6000, p50=900.0, p99=2500.0,
                                                        lag=7))
        wait_until(lambda: shows(f'#feed tr[data-key="{second.key}"]'), 10)
        wait_until(lambda: text("#lag") == "7", 10)
        assert text("#events-per-s") != events_before
        assert int(page.evaluate("document.body.dataset.updates")) > updates
        assert page.evaluate("window.sameDocument") is True
        page.screenshot(SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 10_000


# Every box the page lays out side by side; a box inside another (a chart in its figure) is not
# an overlap. uPlot's legend is listed on its own: it can overflow its figure.
LAYOUT = """(() => {
  const els = [...document.querySelectorAll(
    '.tile, figure, .uplot, .u-legend, table, h2, .run-charts img')]
    .filter((el) => el.getClientRects().length);
  const box = (el) => { const r = el.getBoundingClientRect();
                        return {left: r.left, top: r.top, right: r.right, bottom: r.bottom}; };
  const name = (el) => el.id || el.querySelector('[id]')?.id || el.className || el.tagName;
  const hits = [];
  for (let i = 0; i < els.length; i++) for (let j = i + 1; j < els.length; j++) {
    const [a, b] = [els[i], els[j]];
    if (a.contains(b) || b.contains(a)) continue;
    const [p, q] = [box(a), box(b)];
    const w = Math.min(p.right, q.right) - Math.max(p.left, q.left);
    const h = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
    if (w > 0.5 && h > 0.5) hits.push(`${name(a)} overlaps ${name(b)} by ${w}x${h} px`);
  }
  return {count: els.length, width: window.innerWidth, hits};
})()"""


def test_nothing_overlaps_at_1400px_and_api_models_show_before_any_request(
        stack, feed, champion, tmp_path):  # noqa: F811 (the imported fixture)
    """Many detectors make the widest legend; the API's champion shows without a /predict."""
    tag, query, conn = feed
    detectors = ["velocity_burst", "card_testing", "impossible_travel", "amount_spike",
                 "aimbot", "speed_hack", "inhuman_reaction", "resource_farming", "flatline"]
    commit_batch(conn, query, 0, [incident(f"e{i}-{tag}", d) for i, d in enumerate(detectors)],
                 metrics(rows=900, p50=700.0, p99=1500.0, lag=3))
    _, version, _ = champion
    key = secrets.load(stack)["api_key"]
    url = f"http://{stack.bind_host}:{stack.api_port}/#key={key}&refresh=300"
    with Browser(url, tmp_path / "profile") as page:
        wait_until(lambda: page.evaluate(
            "document.querySelectorAll('#chart-detector .u-legend .u-series').length")
            >= len(detectors), 30)
        page.screenshot(LAYOUT_SCREENSHOT)
        layout = page.evaluate(LAYOUT)
        assert layout["width"] == 1400
        assert layout["count"] > 20
        assert layout["hits"] == []
        wait_until(lambda: page.evaluate(
            f"document.querySelector('#models tr[data-domain=\"{DOMAIN}\"]')"
            "?.cells[2].textContent") == version, 60)


def _draw_chart(path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 2))
    ax.plot([0, 1, 2, 3], [900, 1100, 950, 1000])
    ax.set_title("load run latency p99 (ms)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
