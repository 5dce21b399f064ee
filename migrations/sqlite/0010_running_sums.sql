-- Sums kept beside the append-only tables, so that the checks that run every few
-- seconds (credit control, the due sweep) read a row per account and per usage row still
-- to bill, instead of summing every account's history. Triggers write them in the
-- transaction that appends the rows they sum, and those rows are never changed or
-- deleted, so they cannot drift. (As migrations/postgres/0010, without the fill factor.)

-- usage.billed: the calls billed under the row's key (the sum of billed_usage's).
ALTER TABLE usage ADD COLUMN billed INTEGER NOT NULL DEFAULT 0 CHECK (billed >= 0);
UPDATE usage SET billed = COALESCE((SELECT SUM(b.calls) FROM billed_usage b
    WHERE b.account_id = usage.account_id AND b.month = usage.month AND b.action = usage.action), 0);

-- What is still to bill is a row never billed (found by this index) or a billed row
-- that got calls afterwards (listed in usage_late).
CREATE INDEX usage_never_billed ON usage (month) WHERE billed = 0;

-- Keys with billed > 0 and calls > billed (a key may stay after it is billed in full).
CREATE TABLE usage_late (
    account_id  TEXT NOT NULL,
    month       TEXT NOT NULL,
    action      TEXT NOT NULL,
    PRIMARY KEY (account_id, month, action)
);
INSERT INTO usage_late SELECT account_id, month, action FROM usage WHERE billed > 0 AND calls > billed;

CREATE TRIGGER billed_usage_counts AFTER INSERT ON billed_usage
BEGIN
    UPDATE usage SET billed = billed + NEW.calls
        WHERE account_id = NEW.account_id AND month = NEW.month AND action = NEW.action;
    INSERT OR IGNORE INTO usage_late
        SELECT account_id, month, action FROM usage
        WHERE account_id = NEW.account_id AND month = NEW.month AND action = NEW.action AND calls > billed;
    DELETE FROM usage_late
        WHERE account_id = NEW.account_id AND month = NEW.month AND action = NEW.action
          AND NOT EXISTS (SELECT 1 FROM usage u WHERE u.account_id = NEW.account_id
                          AND u.month = NEW.month AND u.action = NEW.action AND u.calls > u.billed);
END;

CREATE TRIGGER usage_late_calls AFTER UPDATE OF calls ON usage
    FOR EACH ROW WHEN NEW.billed > 0 AND NEW.calls > NEW.billed
BEGIN
    INSERT OR IGNORE INTO usage_late VALUES (NEW.account_id, NEW.month, NEW.action);
END;

-- balance: the sum of amounts; funds: of amounts other than charges; latest_funding:
-- the id of the latest top-up or credit (NULL: never funded).
CREATE TABLE account_balances (
    account_id      TEXT PRIMARY KEY,
    balance         INTEGER NOT NULL,
    funds           INTEGER NOT NULL,
    latest_funding  INTEGER
);
INSERT INTO account_balances
    SELECT account_id, SUM(amount), SUM(CASE WHEN kind = 'charge' THEN 0 ELSE amount END),
           MAX(CASE WHEN kind IN ('topup', 'credit') THEN id END)
    FROM ledger GROUP BY account_id;

-- One writer at a time (SQLite), so ids arrive in order and the newest funding is the latest.
CREATE TRIGGER ledger_sums AFTER INSERT ON ledger
BEGIN
    INSERT INTO account_balances (account_id, balance, funds, latest_funding)
        VALUES (NEW.account_id, NEW.amount,
                CASE WHEN NEW.kind = 'charge' THEN 0 ELSE NEW.amount END,
                CASE WHEN NEW.kind IN ('topup', 'credit') THEN NEW.id END)
        ON CONFLICT (account_id) DO UPDATE SET
            balance = balance + excluded.balance,
            funds = funds + excluded.funds,
            latest_funding = COALESCE(excluded.latest_funding, latest_funding);
END;
