-- SQLite twin of migrations/postgres/0009_due_dates.sql. A bill is due at `due_at`
-- (`billing.grace_days` after `issued_at`), written with the bill. The bills issued
-- before this migration were due when issued: they get due_at = issued_at here, the one
-- time a bill row is filled in (the no-update trigger is dropped for this statement and
-- recreated, all inside the migration's transaction). SQLite cannot add a NOT NULL
-- column without a default, so a trigger refuses a new bill without a due date.
ALTER TABLE bills ADD COLUMN due_at BIGINT;
DROP TRIGGER bills_no_update;
UPDATE bills SET due_at = issued_at;
CREATE TRIGGER bills_no_update BEFORE UPDATE ON bills
BEGIN SELECT RAISE(ABORT, 'UPDATE on bills is not allowed: the table is append-only'); END;
CREATE TRIGGER bills_due_after_issue BEFORE INSERT ON bills
    WHEN NEW.due_at IS NULL OR NEW.due_at < NEW.issued_at
BEGIN SELECT RAISE(ABORT, 'a bill needs a due date, not before its issue'); END;
-- The due sweep looks for bills whose due date (or reminder day) has come.
CREATE INDEX bills_due ON bills (due_at);
