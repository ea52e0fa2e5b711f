-- Whether a streaming query's source can read the broker's end offsets. While it cannot, the
-- query plans no batch and writes no stream_metrics row: this row says so instead.
CREATE TABLE stream_health (
    query_name  text        PRIMARY KEY,
    end_offsets text        NOT NULL CHECK (end_offsets IN ('ok', 'unavailable')),
    since       timestamptz NOT NULL DEFAULT now(),
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb
);
