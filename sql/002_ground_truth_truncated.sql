-- Episodes cut short by the end of their generator run carry fewer events than their kind
-- plans (an impossible_travel with only the home transaction): detection quality is scored on
-- complete episodes.
ALTER TABLE ground_truth ADD COLUMN truncated boolean NOT NULL DEFAULT false;
