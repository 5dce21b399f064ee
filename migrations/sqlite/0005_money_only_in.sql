-- SQLite twin of migrations/postgres/0005_money_only_in.sql. SQLite cannot change a
-- column's CHECK in place, so the ledger is copied into a table with the new checks
-- (DROP TABLE fires no DELETE trigger; the append-only triggers are recreated).
-- `adjustment` rows written before this migration stay as history; no new ones.
CREATE TABLE ledger_next (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id       TEXT NOT NULL,
    at               BIGINT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('topup', 'charge', 'credit', 'adjustment')),
    amount           BIGINT NOT NULL,
    bill_id          TEXT,
    idempotency_key  TEXT NOT NULL UNIQUE,
    actor            TEXT NOT NULL,
    note             TEXT,
    CHECK ((kind IN ('topup', 'credit') AND amount > 0) OR (kind = 'charge' AND amount < 0) OR kind = 'adjustment')
);
INSERT INTO ledger_next (id, account_id, at, kind, amount, bill_id, idempotency_key, actor, note)
    SELECT id, account_id, at, kind, amount, bill_id, idempotency_key, actor, note FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_next RENAME TO ledger;
CREATE INDEX ledger_account ON ledger (account_id, id);

CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'UPDATE on ledger is not allowed: the table is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'DELETE on ledger is not allowed: the table is append-only'); END;
CREATE TRIGGER ledger_no_new_adjustment BEFORE INSERT ON ledger WHEN NEW.kind = 'adjustment'
BEGIN SELECT RAISE(ABORT, 'adjustment entries are history: record a credit (positive) instead'); END;

CREATE TRIGGER bills_not_negative BEFORE INSERT ON bills WHEN NEW.subtotal < 0 OR NEW.total < 0
BEGIN SELECT RAISE(ABORT, 'a bill total cannot be negative'); END;
