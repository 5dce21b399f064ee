-- Bills, what each bill charged per usage month, the ledger, and the billing-run lock.
-- Bills, billed usage and the ledger are append-only (no refunds, no edits):
-- corrections are new rows.

-- One bill per account and month; `lines` (JSON) records the calls, tier breakdown,
-- prices used and adjustments. Amounts are micro-units of `currency`.
CREATE TABLE bills (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL,
    month       TEXT NOT NULL,
    currency    TEXT NOT NULL,
    subtotal    BIGINT NOT NULL,
    total       BIGINT NOT NULL,
    lines       TEXT NOT NULL,
    issued_at   BIGINT NOT NULL,
    UNIQUE (account_id, month)
);

-- Calls charged per (account, usage month, action) by each bill; usage minus the sum of
-- this is what is still to bill (late usage).
CREATE TABLE billed_usage (
    bill_id     TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    month       TEXT NOT NULL,
    action      TEXT NOT NULL,
    calls       BIGINT NOT NULL CHECK (calls > 0),
    PRIMARY KEY (bill_id, month, action)
);
CREATE INDEX billed_usage_key ON billed_usage (account_id, month, action);

-- Signed micro-units: credits (top-ups) > 0, debits (bill charges) < 0. The balance is
-- the sum.
CREATE TABLE ledger (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id       TEXT NOT NULL,
    at               BIGINT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('topup', 'charge', 'adjustment')),
    amount           BIGINT NOT NULL,
    bill_id          TEXT,
    idempotency_key  TEXT NOT NULL UNIQUE,
    actor            TEXT NOT NULL,
    note             TEXT
);
CREATE INDEX ledger_account ON ledger (account_id, id);

CREATE TABLE billing_locks (
    name         TEXT PRIMARY KEY,
    holder       TEXT NOT NULL,
    acquired_at  BIGINT NOT NULL
);

CREATE TRIGGER bills_no_update BEFORE UPDATE ON bills
BEGIN SELECT RAISE(ABORT, 'UPDATE on bills is not allowed: the table is append-only'); END;
CREATE TRIGGER bills_no_delete BEFORE DELETE ON bills
BEGIN SELECT RAISE(ABORT, 'DELETE on bills is not allowed: the table is append-only'); END;
CREATE TRIGGER billed_usage_no_update BEFORE UPDATE ON billed_usage
BEGIN SELECT RAISE(ABORT, 'UPDATE on billed_usage is not allowed: the table is append-only'); END;
CREATE TRIGGER billed_usage_no_delete BEFORE DELETE ON billed_usage
BEGIN SELECT RAISE(ABORT, 'DELETE on billed_usage is not allowed: the table is append-only'); END;
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'UPDATE on ledger is not allowed: the table is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'DELETE on ledger is not allowed: the table is append-only'); END;
