-- SQLite twin of migrations/postgres/0009_due_dates.sql. A bill is due at `due_at`
-- (`billing.grace_days` after `issued_at`), written with the bill. The bills issued
-- before this migration were due when issued: they get due_at = issued_at here, the one
-- time a bill row is filled in (the no-update trigger is dropped for this statement and
-- recreated, all inside the migration's transaction). SQLite cannot add a NOT NULL
-- column without a default, nor fill one in from a trigger: a bill inserted without a
-- due date (a writer of the previous version) is read as due when issued
-- (`COALESCE(due_at, issued_at)`), as it always was.
ALTER TABLE bills ADD COLUMN due_at BIGINT;
DROP TRIGGER bills_no_update;
UPDATE bills SET due_at = issued_at;
CREATE TRIGGER bills_no_update BEFORE UPDATE ON bills
BEGIN SELECT RAISE(ABORT, 'UPDATE on bills is not allowed: the table is append-only'); END;
CREATE TRIGGER bills_due_after_issue BEFORE INSERT ON bills
    WHEN NEW.due_at < NEW.issued_at
BEGIN SELECT RAISE(ABORT, 'a bill cannot be due before it is issued'); END;
-- The due sweep looks for bills whose due date (or reminder day) has come.
CREATE INDEX bills_due ON bills (due_at);
