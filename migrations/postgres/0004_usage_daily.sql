-- Billable calls per account and day ("YYYY-MM-DD" in the billing zone), for the
-- operators' calls-per-day chart. Written in the same transaction as `usage`, so it
-- never disagrees with it on what was flushed; a call is dated by the flush that
-- carried it (normally within a second of the call). Not used for billing.
CREATE TABLE usage_daily (
    account_id  TEXT NOT NULL,
    day         TEXT NOT NULL,
    calls       BIGINT NOT NULL CHECK (calls >= 0),
    PRIMARY KEY (account_id, day)
);
