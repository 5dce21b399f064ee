-- Money only moves toward the platform or is a credit: top-ups and credits are
-- positive, a bill's charge is negative, a bill's total is never negative. `adjustment`
-- rows written before this migration (of either sign) stay as history; no new ones.
-- NOT VALID: the constraints hold for every new row without rejecting that history.
ALTER TABLE ledger DROP CONSTRAINT ledger_kind_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_kind_check
    CHECK (kind IN ('topup', 'charge', 'credit', 'adjustment'));
ALTER TABLE ledger ADD CONSTRAINT ledger_money_only_in
    CHECK ((kind IN ('topup', 'credit') AND amount > 0) OR (kind = 'charge' AND amount < 0)) NOT VALID;
ALTER TABLE bills ADD CONSTRAINT bills_not_negative
    CHECK (subtotal >= 0 AND total >= 0) NOT VALID;
