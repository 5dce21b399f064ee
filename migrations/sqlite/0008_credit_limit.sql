-- Credit control: an account's own credit limit in micro-units (NULL: the configured
-- default, billing.credit_limit). Calls are refused once the balance minus the unbilled
-- running amount would fall below minus the limit; 0 is prepaid.
ALTER TABLE accounts ADD COLUMN credit_limit BIGINT;
