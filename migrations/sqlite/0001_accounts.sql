-- Accounts, their credentials and the operators' audit log (SQLite twin of
-- migrations/postgres/0001_accounts.sql: same columns, same queries).
CREATE TABLE accounts (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    activated       BIGINT NOT NULL DEFAULT 0,
    activated_at    BIGINT,
    manual_reason   TEXT,
    manual_since    BIGINT,
    arrears_reason  TEXT,
    arrears_since   BIGINT,
    rate_limit_qps  BIGINT,
    created_at      BIGINT NOT NULL,
    version         BIGINT NOT NULL DEFAULT 1
);

CREATE TABLE credentials (
    secret_id          TEXT PRIMARY KEY,
    account_id         TEXT NOT NULL REFERENCES accounts(id),
    secret_key_sealed  TEXT NOT NULL,
    api_key_hash       TEXT NOT NULL UNIQUE,
    status             TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    created_at         BIGINT NOT NULL,
    revoked_at         BIGINT,
    version            BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX credentials_account ON credentials (account_id);

CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    before   TEXT,
    after    TEXT
);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'UPDATE on audit_log is not allowed: the table is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'DELETE on audit_log is not allowed: the table is append-only'); END;
