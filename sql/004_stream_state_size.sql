-- The stateful step's size after each micro-batch (Spark reports it only after the batch):
-- rows are state groups (entity buckets), bytes the state store's files on disk.
ALTER TABLE stream_metrics ADD COLUMN state_rows bigint, ADD COLUMN state_bytes bigint;
