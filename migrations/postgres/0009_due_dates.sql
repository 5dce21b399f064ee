-- Due dates: a bill is issued at `issued_at` and due at `due_at` (`billing.grace_days`
-- later; 0: due when issued). Arrears are set only once a bill is past its due date and
-- still unpaid. Bills are append-only, so the due date is written with the bill; the
-- bills issued before this migration were due when issued, and get due_at = issued_at
-- here, the one time a bill row is filled in (the append-only trigger is off for this
-- statement only, inside the migration's transaction).
ALTER TABLE bills ADD COLUMN due_at BIGINT;
ALTER TABLE bills DISABLE TRIGGER bills_append_only;
UPDATE bills SET due_at = issued_at;
ALTER TABLE bills ENABLE TRIGGER bills_append_only;
-- A writer that does not name a due date (a gateway of the previous version during a
-- rolling upgrade) bills as it always did: due when issued.
CREATE FUNCTION ekyc_bill_due_default() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.due_at := COALESCE(NEW.due_at, NEW.issued_at);
    RETURN NEW;
END $$;
CREATE TRIGGER bills_due_default BEFORE INSERT ON bills
    FOR EACH ROW EXECUTE FUNCTION ekyc_bill_due_default();
ALTER TABLE bills ALTER COLUMN due_at SET NOT NULL;
ALTER TABLE bills ADD CONSTRAINT bills_due_after_issue CHECK (due_at >= issued_at);
-- The due sweep looks for bills whose due date (or reminder day) has come.
CREATE INDEX bills_due ON bills (due_at);
