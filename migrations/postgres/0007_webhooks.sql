-- The webhook outbox: one row per event, written in the transaction of the change that
-- causes it (a bill issued or paid, a suspension set or lifted), so an event exists
-- exactly when its change committed. Delivery workers in every gateway claim due rows
-- with a lease (`locked_until`), POST them and record the outcome here.
CREATE TABLE webhook_events (
    id               TEXT PRIMARY KEY,
    type             TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    -- The exact JSON body every attempt sends (and signs).
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    -- Retries stop once an attempt fails `webhooks.retry_for_hours` after this (the
    -- creation, or an operator's retry).
    retry_from       BIGINT NOT NULL,
    last_attempt_at  BIGINT,
    last_error       TEXT,
    delivered_at     BIGINT,
    -- Endpoints that accepted it (newline-separated URLs): a retry skips them.
    delivered_to     TEXT NOT NULL DEFAULT '',
    locked_until     BIGINT NOT NULL DEFAULT 0,
    locked_by        TEXT
);
CREATE INDEX webhook_events_due ON webhook_events (status, next_attempt_at);
CREATE INDEX webhook_events_created ON webhook_events (created_at);
