-- The billing lease and the record of finished runs, for the scheduler that every
-- gateway carries (billing::scheduler).
--
-- The lock row becomes a lease: its holder renews `expires_at` while the run goes on,
-- and anyone may take it over once it has passed (a holder that died). A lock taken
-- before this migration keeps the hour it was given then.
ALTER TABLE billing_locks ADD COLUMN expires_at BIGINT NOT NULL DEFAULT 0;
UPDATE billing_locks SET expires_at = acquired_at + 3600;

-- One row per month whose run finished (scheduled or manual); the first one is kept.
-- A month without a row, and every month before it with usage not yet on any bill of
-- that month, is what the scheduler still has to run.
CREATE TABLE billing_runs (
    month          TEXT PRIMARY KEY,
    finished_at    BIGINT NOT NULL,
    actor          TEXT NOT NULL,
    bills_created  BIGINT NOT NULL
);
