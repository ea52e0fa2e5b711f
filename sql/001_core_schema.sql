-- Core schema. Never edit after it has been applied anywhere: add 002_*.sql instead.

-- One row per incident. The key is deterministic, derived from (domain, entity, detector,
-- window), so a replayed micro-batch or an alert storm updates the same row.
CREATE TABLE incidents (
    incident_key     text PRIMARY KEY,
    domain           text        NOT NULL CHECK (domain IN ('payments', 'gaming', 'iot')),
    entity_id        text        NOT NULL,
    detector         text        NOT NULL,
    detector_kind    text        NOT NULL CHECK (detector_kind IN ('rule', 'model')),
    window_start     timestamptz NOT NULL,
    severity         text        NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    score            double precision,
    model_name       text,
    model_version    text,
    first_event_time timestamptz NOT NULL,
    last_event_time  timestamptz NOT NULL,
    detected_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at     timestamptz NOT NULL DEFAULT now(),
    event_count      bigint      NOT NULL DEFAULT 1 CHECK (event_count > 0),
    trigger_count    bigint      NOT NULL DEFAULT 1 CHECK (trigger_count > 0),
    evidence         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status           text        NOT NULL DEFAULT 'open'
                                 CHECK (status IN ('open', 'acknowledged', 'resolved')),
    status_changed_at timestamptz
);
CREATE INDEX incidents_detected_idx ON incidents (detected_at DESC);
CREATE INDEX incidents_domain_detector_idx ON incidents (domain, detector, detected_at DESC);
CREATE INDEX incidents_entity_idx ON incidents (domain, entity_id);
CREATE INDEX incidents_open_idx ON incidents (status) WHERE status <> 'resolved';

-- Ledger of committed micro-batches: written in the same transaction as the batch's incidents,
-- so a batch replayed after a crash is recognised and skipped (exactly once).
CREATE TABLE stream_batches (
    query_name   text        NOT NULL,
    batch_id     bigint      NOT NULL CHECK (batch_id >= 0),
    committed_at timestamptz NOT NULL DEFAULT now(),
    input_rows   bigint      NOT NULL DEFAULT 0,
    incidents    bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (query_name, batch_id)
);

-- One row per micro-batch: what the dashboard and the load reports read.
CREATE TABLE stream_metrics (
    query_name           text        NOT NULL,
    batch_id             bigint      NOT NULL,
    recorded_at          timestamptz NOT NULL DEFAULT now(),
    input_rows           bigint      NOT NULL,
    processing_ms        double precision NOT NULL,
    event_latency_p50_ms double precision,
    event_latency_p99_ms double precision,
    broker_latency_p50_ms double precision,
    broker_latency_p99_ms double precision,
    lag_total            bigint,
    lag_by_partition     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    late_events          bigint      NOT NULL DEFAULT 0,
    dead_lettered        bigint      NOT NULL DEFAULT 0,
    incidents            bigint      NOT NULL DEFAULT 0,
    model_versions       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (query_name, batch_id)
);
CREATE INDEX stream_metrics_recorded_idx ON stream_metrics (recorded_at DESC);

-- Ground truth: one row per injected (or replayed) anomaly episode, with the exact events it
-- labels. labels_published_at is set when the label reached the labels topic (delayed, like
-- chargebacks).
CREATE TABLE ground_truth (
    episode_id          text        PRIMARY KEY,
    run_id              text        NOT NULL,
    domain              text        NOT NULL CHECK (domain IN ('payments', 'gaming', 'iot')),
    entity_id           text        NOT NULL,
    kind                text        NOT NULL,
    start_time          timestamptz NOT NULL,
    end_time            timestamptz NOT NULL CHECK (end_time >= start_time),
    event_ids           text[]      NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    labels_published_at timestamptz
);
CREATE INDEX ground_truth_run_idx ON ground_truth (run_id);
CREATE INDEX ground_truth_entity_idx ON ground_truth (domain, entity_id, start_time);

-- Load scenarios: one row per run with the figures of its verdict.
CREATE TABLE load_runs (
    run_id              text        PRIMARY KEY,
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    status              text        NOT NULL DEFAULT 'running'
                                    CHECK (status IN ('running', 'passed', 'failed')),
    mode                text        NOT NULL,
    rate_per_min        double precision NOT NULL CHECK (rate_per_min > 0),
    domains             text[]      NOT NULL,
    duration_s          double precision NOT NULL CHECK (duration_s > 0),
    spike_profile       text,
    events_sent         bigint,
    throughput_per_min  double precision,
    latency_p50_ms      double precision,
    latency_p99_ms      double precision,
    max_lag             bigint,
    drain_s             double precision,
    recall              double precision,
    precision           double precision,
    chart_path          text,
    report              jsonb       NOT NULL DEFAULT '{}'::jsonb
);

-- Chaos scenarios: one row per scenario of a run, with what was really injected and the verdict.
CREATE TABLE chaos_runs (
    run_id               text        NOT NULL,
    scenario             text        NOT NULL,
    started_at           timestamptz NOT NULL DEFAULT now(),
    finished_at          timestamptz,
    injected             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    events_sent          bigint,
    events_lost          bigint,
    incidents_duplicated bigint,
    late_events          bigint,
    dead_lettered        bigint,
    recovery_s           double precision,
    verdict              text        CHECK (verdict IN ('pass', 'fail')),
    details              jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (run_id, scenario)
);
