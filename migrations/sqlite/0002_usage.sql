-- SQLite twin of migrations/postgres/0002_usage.sql.
-- Billable calls per account, action and billing month ("YYYY-MM"), and the flush
-- batches already applied: a batch id is inserted in the same transaction as its
-- counts, so a retried batch is a no-op.
CREATE TABLE usage (
    account_id  TEXT NOT NULL,
    action      TEXT NOT NULL,
    month       TEXT NOT NULL,
    calls       BIGINT NOT NULL CHECK (calls >= 0),
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (account_id, month, action)
);

CREATE TABLE usage_batches (
    instance_id  TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    rows         BIGINT NOT NULL,
    calls        BIGINT NOT NULL,
    applied_at   BIGINT NOT NULL,
    PRIMARY KEY (instance_id, seq)
);
