-- Accounts, their credentials and the operators' audit log.
-- Times are Unix seconds (BIGINT); flags are 0/1 BIGINT so the same queries run on SQLite.
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
    id       BIGSERIAL PRIMARY KEY,
    at       BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    before   TEXT,
    after    TEXT
);

-- The audit log is append-only: history is never edited.
CREATE FUNCTION ekyc_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % is not allowed: the table is append-only', TG_OP, TG_TABLE_NAME;
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION ekyc_refuse_change();
