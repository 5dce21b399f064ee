-- Sums kept beside the append-only tables, so that the checks that run every few
-- seconds (credit control, the due sweep) read a row per account and per usage row still
-- to bill, instead of summing every account's history (a year of 100,000 accounts:
-- 4.9 s a check). Triggers write them in the transaction that appends the rows they
-- sum, and those rows are never changed or deleted, so they cannot drift.

-- usage.billed: the calls billed under the row's key (the sum of billed_usage's).
ALTER TABLE usage ADD COLUMN billed BIGINT NOT NULL DEFAULT 0 CHECK (billed >= 0);
UPDATE usage u SET billed = b.calls
    FROM (SELECT account_id, month, action, SUM(calls) AS calls
          FROM billed_usage GROUP BY account_id, month, action) b
    WHERE u.account_id = b.account_id AND u.month = b.month AND u.action = b.action;

-- What is still to bill is a row never billed (found by this index) or a billed row
-- that got calls afterwards (listed in usage_late). Neither index covers `calls`, so the
-- flush's updates stay heap-only (HOT) where a page has room: hence the fill factor.
CREATE INDEX usage_never_billed ON usage (month) WHERE billed = 0;
ALTER TABLE usage SET (fillfactor = 80);

-- Keys with billed > 0 and calls > billed (a key may stay after it is billed in full).
CREATE TABLE usage_late (
    account_id  TEXT NOT NULL,
    month       TEXT NOT NULL,
    action      TEXT NOT NULL,
    PRIMARY KEY (account_id, month, action)
);
INSERT INTO usage_late SELECT account_id, month, action FROM usage WHERE billed > 0 AND calls > billed;

CREATE FUNCTION ekyc_count_billed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    left_to_bill BIGINT;
BEGIN
    UPDATE usage SET billed = billed + NEW.calls
        WHERE account_id = NEW.account_id AND month = NEW.month AND action = NEW.action
        RETURNING calls - billed INTO left_to_bill;
    IF left_to_bill > 0 THEN
        INSERT INTO usage_late VALUES (NEW.account_id, NEW.month, NEW.action) ON CONFLICT DO NOTHING;
    ELSE
        DELETE FROM usage_late
            WHERE account_id = NEW.account_id AND month = NEW.month AND action = NEW.action;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER billed_usage_counts AFTER INSERT ON billed_usage
    FOR EACH ROW EXECUTE FUNCTION ekyc_count_billed();

CREATE FUNCTION ekyc_note_late_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_late VALUES (NEW.account_id, NEW.month, NEW.action) ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER usage_late_calls AFTER UPDATE OF calls ON usage
    FOR EACH ROW WHEN (NEW.billed > 0 AND NEW.calls > NEW.billed)
    EXECUTE FUNCTION ekyc_note_late_usage();

-- balance: the sum of amounts; funds: of amounts other than charges; latest_funding:
-- the id of the latest top-up or credit (NULL: never funded).
CREATE TABLE account_balances (
    account_id      TEXT PRIMARY KEY,
    balance         BIGINT NOT NULL,
    funds           BIGINT NOT NULL,
    latest_funding  BIGINT
);
INSERT INTO account_balances
    SELECT account_id, SUM(amount), SUM(CASE WHEN kind = 'charge' THEN 0 ELSE amount END),
           MAX(CASE WHEN kind IN ('topup', 'credit') THEN id END)
    FROM ledger GROUP BY account_id;

-- Ledger rows of one account are written under its account's row lock, so ids arrive
-- in order per account and the newest funding is the latest.
CREATE FUNCTION ekyc_sum_ledger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO account_balances AS a (account_id, balance, funds, latest_funding)
        VALUES (NEW.account_id, NEW.amount,
                CASE WHEN NEW.kind = 'charge' THEN 0 ELSE NEW.amount END,
                CASE WHEN NEW.kind IN ('topup', 'credit') THEN NEW.id END)
        ON CONFLICT (account_id) DO UPDATE SET
            balance = a.balance + EXCLUDED.balance,
            funds = a.funds + EXCLUDED.funds,
            latest_funding = COALESCE(EXCLUDED.latest_funding, a.latest_funding);
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_sums AFTER INSERT ON ledger
    FOR EACH ROW EXECUTE FUNCTION ekyc_sum_ledger();
