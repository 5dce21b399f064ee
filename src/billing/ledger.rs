//! What the ledger says, derived and never stored: an account's balance, the status of
//! each bill and whether the account is in arrears, all from one rule. A bill's charge
//! is a debit; every other entry (top-ups, credits, and `adjustment` history of either
//! sign) is funds. Funds settle bills oldest first: a bill is paid while the funds cover
//! every charge up to and including it. An unpaid bill is open until its due date
//! (`due_at`, `billing.grace_days` after issue) and overdue from then on. The account
//! belongs in arrears exactly when it owes something overdue: the unpaid part of its
//! overdue bills (plus any shortfall of the funds themselves below zero, which only an
//! `adjustment` debit of the history can cause, and which was due when written). With
//! no grace every unpaid bill is overdue at once, so that is a balance below zero.
//! Pure: must not do I/O or read the clock (`now` is the caller's).

use crate::billing::pricing::format_amount;
use crate::store::billing::{BillRecord, LedgerEntry};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "status")]
pub enum BillStatus {
    /// Settled at `paid_at` (Unix seconds): at issue when the balance covered it, or by
    /// the top-up or credit that did.
    Paid { paid_at: i64 },
    /// Unpaid, its due date not reached yet: no arrears for it.
    Open,
    /// Unpaid and past its due date: the account is in arrears.
    Overdue,
}

impl BillStatus {
    pub fn is_unpaid(self) -> bool {
        !matches!(self, BillStatus::Paid { .. })
    }

    /// The lowercase name the admin API and the webhooks use.
    pub fn name(self) -> &'static str {
        match self {
            BillStatus::Paid { .. } => "paid",
            BillStatus::Open => "open",
            BillStatus::Overdue => "overdue",
        }
    }
}

pub fn balance(ledger: &[LedgerEntry]) -> i64 {
    ledger.iter().map(|e| e.amount).sum()
}

/// Everything but the charges: what settles bills.
pub fn funds(ledger: &[LedgerEntry]) -> i64 {
    ledger.iter().filter(|e| !is_charge(e)).map(|e| e.amount).sum()
}

/// The arrears suspension's reason for `owed` (what is owed overdue, micro-units),
/// `None` when nothing is. It names the amount owed now, so it changes whenever that
/// amount does.
pub fn arrears_reason(owed: i64) -> Option<String> {
    (owed > 0).then(|| format!("overdue bills: {} owed", format_amount(owed)))
}

fn is_charge(entry: &LedgerEntry) -> bool {
    entry.kind == "charge"
}

/// Whether each bill (`bills` oldest first) is unpaid, and by how much, when `funds`
/// settle them oldest first.
fn unpaid_parts(bills: &[BillRecord], funds: i64) -> impl Iterator<Item = (&BillRecord, bool, i64)> {
    let mut needed = 0i64;
    bills.iter().map(move |bill| {
        let total = bill.total.max(0);
        let covered_before = (funds - needed).clamp(0, total);
        needed += total;
        (bill, funds < needed, total - covered_before)
    })
}

/// What the account owes overdue at `now`: the unpaid part of every bill past its due
/// date, plus the funds' own shortfall below zero. Positive: the account belongs in
/// arrears (`arrears_reason`).
pub fn overdue_owed(bills: &[BillRecord], funds: i64, now: i64) -> i64 {
    let overdue: i64 = unpaid_parts(bills, funds)
        .filter(|(bill, unpaid, _)| *unpaid && now >= bill.due_at)
        .map(|(_, _, part)| part)
        .sum();
    overdue.saturating_add((-funds).max(0))
}

/// What each unpaid bill still lacks (micro-units), `bills` oldest first; 0 for a
/// paid one.
pub fn amounts_due(bills: &[BillRecord], funds: i64) -> Vec<i64> {
    unpaid_parts(bills, funds)
        .map(|(_, unpaid, part)| if unpaid { part } else { 0 })
        .collect()
}

/// The status of each bill (`bills` oldest first) at `now`, from the ledger (oldest
/// first).
pub fn bill_statuses(bills: &[BillRecord], ledger: &[LedgerEntry], now: i64) -> Vec<BillStatus> {
    // Funds over time: (when, cumulative amount); a history debit lowers them.
    let mut history = Vec::new();
    let mut cumulative = 0i64;
    for entry in ledger.iter().filter(|e| !is_charge(e)) {
        cumulative += entry.amount;
        history.push((entry.at, cumulative));
    }
    let mut needed = 0i64;
    unpaid_parts(bills, cumulative)
        .map(|(bill, unpaid, _)| {
            needed += bill.total.max(0);
            if unpaid {
                return if now >= bill.due_at {
                    BillStatus::Overdue
                } else {
                    BillStatus::Open
                };
            }
            // Paid since the last time the funds were short of it; before the first
            // entry they were zero, short of any bill with a total (at issue if never).
            let since = match history.iter().rposition(|(_, sum)| *sum < needed) {
                Some(short) => history.get(short + 1).map_or(bill.issued_at, |(at, _)| *at),
                None if needed > 0 => history.first().map_or(bill.issued_at, |(at, _)| *at),
                None => bill.issued_at,
            };
            BillStatus::Paid {
                paid_at: since.max(bill.issued_at),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past every due date of the tests that do not move it.
    const NOW: i64 = 1_000;

    fn bill(id: &str, total: i64, issued_at: i64) -> BillRecord {
        BillRecord {
            id: id.into(),
            account_id: "a".into(),
            month: "2026-10".into(),
            currency: "USD".into(),
            subtotal: total,
            total,
            lines: "[]".into(),
            issued_at,
            due_at: issued_at,
        }
    }

    fn due(bill: BillRecord, due_at: i64) -> BillRecord {
        BillRecord { due_at, ..bill }
    }

    fn entry(amount: i64, at: i64) -> LedgerEntry {
        LedgerEntry {
            id: at,
            account_id: "a".into(),
            at,
            kind: if amount > 0 { "topup" } else { "charge" }.into(),
            amount,
            bill_id: None,
            idempotency_key: format!("k{at}"),
            actor: "t".into(),
            note: None,
        }
    }

    #[test]
    fn credits_settle_bills_oldest_first() {
        let bills = [bill("b1", 100, 10), bill("b2", 50, 20), bill("b3", 0, 30)];
        let mut ledger = vec![entry(120, 5), entry(-100, 10), entry(-50, 20)];
        assert_eq!(
            bill_statuses(&bills, &ledger, NOW),
            [
                BillStatus::Paid { paid_at: 10 },
                BillStatus::Overdue,
                BillStatus::Overdue
            ]
        );
        assert_eq!(balance(&ledger), -30);
        ledger.push(entry(30, 40));
        assert_eq!(
            bill_statuses(&bills, &ledger, NOW),
            [
                BillStatus::Paid { paid_at: 10 },
                BillStatus::Paid { paid_at: 40 },
                BillStatus::Paid { paid_at: 40 }
            ]
        );
        assert_eq!(balance(&ledger), 0);
        assert_eq!(arrears_reason(overdue_owed(&bills, funds(&ledger), NOW)), None);
    }

    /// A debit that is not a charge (an `adjustment` of the history) takes funds away:
    /// the bills it uncovers are overdue, so statuses, balance and arrears agree.
    #[test]
    fn a_history_debit_uncovers_the_newest_bills() {
        let bills = [bill("b1", 100, 10), bill("b2", 50, 20)];
        let mut ledger = vec![entry(150, 5), entry(-100, 10), entry(-50, 20)];
        ledger.push(LedgerEntry {
            kind: "adjustment".into(),
            ..entry(-30, 30)
        });
        let statuses = bill_statuses(&bills, &ledger, NOW);
        assert_eq!(statuses, [BillStatus::Paid { paid_at: 10 }, BillStatus::Overdue]);
        assert_eq!(balance(&ledger), -30);
        assert_eq!(
            arrears_reason(overdue_owed(&bills, funds(&ledger), NOW)).as_deref(),
            Some("overdue bills: 0.00003 owed")
        );
        // Paid again from the credit that covered it after the debit, not from before.
        ledger.push(entry(30, 40));
        assert_eq!(
            bill_statuses(&bills, &ledger, NOW),
            [BillStatus::Paid { paid_at: 10 }, BillStatus::Paid { paid_at: 40 }]
        );
    }

    /// Replays `amounts` as ledger entries 10 s apart, a negative one a bill and its
    /// charge, calling `check(index, at, bills, ledger)` after each.
    fn replay(amounts: &[i64], mut check: impl FnMut(usize, i64, &[BillRecord], &[LedgerEntry])) {
        let mut ledger = Vec::new();
        let mut bills = Vec::new();
        for (i, amount) in amounts.iter().enumerate() {
            let at = i as i64 * 10;
            if *amount < 0 {
                bills.push(bill(&format!("b{i}"), -amount, at));
            }
            // `entry` makes a negative amount a charge.
            ledger.push(entry(*amount, at));
            check(i, at, &bills, &ledger);
        }
    }

    /// Whatever the order of entries, a bill is unpaid exactly when the balance is
    /// below zero after it: the one rule.
    #[test]
    fn statuses_and_balance_never_disagree() {
        let amounts = [30i64, -20, 45, -5, 10, -70, 25, 60, -15];
        replay(&amounts, |i, _at, bills, ledger| {
            let unpaid = bill_statuses(bills, ledger, NOW).contains(&BillStatus::Overdue);
            assert_eq!(unpaid, balance(ledger) < 0, "after entry {i}");
            assert_eq!(
                arrears_reason(overdue_owed(bills, funds(ledger), NOW)).is_some(),
                unpaid
            );
        });
    }

    /// Grace: an unpaid bill is open until its due date, overdue from it; what is owed
    /// overdue (the arrears) counts only bills past due, oldest first.
    #[test]
    fn an_unpaid_bill_is_open_until_its_due_date() {
        let bills = [due(bill("b1", 100, 10), 50), due(bill("b2", 40, 20), 80)];
        // `entry` makes a negative amount a charge.
        let ledger = vec![entry(-100, 10), entry(30, 15), entry(-40, 20)];
        let f = funds(&ledger);
        assert_eq!(bill_statuses(&bills, &ledger, 49), [BillStatus::Open, BillStatus::Open]);
        assert_eq!(overdue_owed(&bills, f, 49), 0, "nothing past due: no arrears");
        assert_eq!(arrears_reason(overdue_owed(&bills, f, 49)), None);
        assert_eq!(
            bill_statuses(&bills, &ledger, 50),
            [BillStatus::Overdue, BillStatus::Open]
        );
        assert_eq!(overdue_owed(&bills, f, 50), 70, "b1's unpaid part only");
        assert_eq!(
            arrears_reason(overdue_owed(&bills, f, 50)).as_deref(),
            Some("overdue bills: 0.00007 owed")
        );
        assert_eq!(overdue_owed(&bills, f, 80), 110, "both past due: the balance");
        assert_eq!(overdue_owed(&bills, f, 80), -balance(&ledger));
        assert_eq!(amounts_due(&bills, f), [70, 40]);
    }

    /// A payment before the due date pays the bill: never overdue, whatever `now`.
    #[test]
    fn paid_before_the_due_date_is_never_overdue() {
        let bills = [due(bill("b1", 100, 10), 50)];
        let ledger = vec![entry(-100, 10), entry(100, 20)];
        for now in [10, 49, 50, 10_000] {
            assert_eq!(bill_statuses(&bills, &ledger, now), [BillStatus::Paid { paid_at: 20 }]);
            assert_eq!(overdue_owed(&bills, funds(&ledger), now), 0);
        }
    }

    /// No grace (due at issue): what is owed overdue is exactly minus a negative
    /// balance, as it always was.
    #[test]
    fn without_grace_the_arrears_are_the_negative_balance() {
        let amounts = [30i64, -20, 45, -5, 10, -70, 25, 60, -15, -100];
        replay(&amounts, |i, at, bills, ledger| {
            assert_eq!(
                overdue_owed(bills, funds(ledger), at),
                (-balance(ledger)).max(0),
                "after entry {i}"
            );
        });
    }
}

/// An account's bills with their status, as the admin API and the tenants see them.
pub mod views {
    use super::*;
    use crate::billing::job::{BillLine, LineKind};
    use crate::billing::pricing::{ALWAYS, Price, TierMode, format_amount};
    use crate::clock::rfc3339;
    use serde_json::{Value, json};

    pub fn bill_json(bill: &BillRecord, status: BillStatus) -> Value {
        let lines: Vec<BillLine> = serde_json::from_str(&bill.lines).unwrap_or_default();
        let lines: Vec<Value> = lines.iter().map(line_json).collect();
        let paid_at = match status {
            BillStatus::Paid { paid_at } => Some(paid_at),
            _ => None,
        };
        json!({
            "id": bill.id,
            "account": bill.account_id,
            "month": bill.month,
            "currency": bill.currency,
            "subtotal": format_amount(bill.subtotal),
            "total": format_amount(bill.total),
            "status": status.name(),
            "paid_at": paid_at.map_or(Value::Null, rfc3339),
            "issued_at": rfc3339(bill.issued_at),
            "due_at": rfc3339(bill.due_at),
            "lines": lines,
        })
    }

    /// One bill line in the admin API: what `line_api3` shows the tenant, in snake_case.
    fn line_json(line: &BillLine) -> Value {
        json!({
            "kind": if line.kind == LineKind::Usage { "usage" } else { "late_usage" },
            "action": line.action,
            "month": line.month,
            "calls": line.calls,
            "previously_billed": line.previously_billed,
            "pricing_mode": pricing_mode(&line.price),
            "effective_from": effective_from(line.price_from.as_deref()),
            "tiers": line.tiers.iter().map(|t| json!({
                "from_call": t.from,
                "to_call": t.to,
                "calls": t.calls,
                "unit_price": format_amount(t.unit),
                "amount": format_amount(t.amount),
            })).collect::<Vec<_>>(),
            "amount": format_amount(line.amount),
        })
    }

    /// The tenant's view (API 3.0 style field names).
    pub fn bill_api3(bill: &BillRecord, status: BillStatus) -> Value {
        let lines: Vec<BillLine> = serde_json::from_str(&bill.lines).unwrap_or_default();
        let (status_name, paid_at) = match status {
            BillStatus::Paid { paid_at } => ("Paid", Some(paid_at)),
            BillStatus::Open => ("Open", None),
            BillStatus::Overdue => ("Overdue", None),
        };
        json!({
            "BillId": bill.id,
            "Month": bill.month,
            "Currency": bill.currency,
            "Subtotal": format_amount(bill.subtotal),
            "Total": format_amount(bill.total),
            "Status": status_name,
            "PaidAt": paid_at.map_or(Value::Null, rfc3339),
            "IssuedAt": rfc3339(bill.issued_at),
            "DueAt": rfc3339(bill.due_at),
            "Lines": lines.iter().map(line_api3).collect::<Vec<_>>(),
        })
    }

    /// One bill line as the tenant sees it: what it charges for (calls of an action in
    /// a month), at which price (mode, tiers, the month the price took effect), the
    /// month's tier breakdown, and the amount. `Tiers` count every call of the month
    /// billed so far: on a `LateUsage` line they include the `PreviouslyBilledCalls` of
    /// an earlier bill, and `Amount` is what the line adds to what those were charged.
    pub fn line_api3(line: &BillLine) -> Value {
        let units: std::collections::BTreeSet<i64> = line.tiers.iter().map(|t| t.unit).collect();
        // One price for every call of the line: the price list's unit, else per tier.
        let unit_price = match (units.len(), &line.price) {
            (1, _) => units.first().copied(),
            (0, Price::Flat { unit }) => Some(*unit),
            _ => None,
        };
        json!({
            "Action": line.action,
            "Month": line.month,
            "Kind": if line.kind == LineKind::Usage { "Usage" } else { "LateUsage" },
            "Calls": line.calls,
            "PreviouslyBilledCalls": line.previously_billed,
            "PricingMode": pricing_mode(&line.price),
            "EffectiveFrom": effective_from(line.price_from.as_deref()),
            "UnitPrice": unit_price.map(format_amount),
            "Tiers": line.tiers.iter().map(|t| json!({
                "FromCall": t.from,
                "ToCall": t.to,
                "Calls": t.calls,
                "UnitPrice": format_amount(t.unit),
                "Amount": format_amount(t.amount),
            })).collect::<Vec<_>>(),
            "Amount": format_amount(line.amount),
        })
    }

    /// A price as the tenant sees it in the price list: its mode and its tiers, each
    /// from a call number of the month up to another (`ToCall` null: no bound). A flat
    /// price is one tier.
    pub fn price_api3(price: &Price) -> (&'static str, Vec<Value>) {
        let tier = |from: u64, to: Option<u64>, unit: i64| json!({"FromCall": from, "ToCall": to, "UnitPrice": format_amount(unit)});
        let tiers = match price {
            Price::Flat { unit } => vec![tier(1, None, *unit)],
            Price::Tiered { tiers, .. } => {
                let mut from = 1;
                tiers
                    .iter()
                    .map(|t| {
                        let row = tier(from, t.up_to, t.unit);
                        from = t.up_to.map_or(from, |bound| bound + 1);
                        row
                    })
                    .collect()
            }
        };
        (pricing_mode(price), tiers)
    }

    pub fn pricing_mode(price: &Price) -> &'static str {
        match price {
            Price::Flat { .. } => "Flat",
            Price::Tiered {
                mode: TierMode::Graduated,
                ..
            } => "Graduated",
            Price::Tiered {
                mode: TierMode::Volume, ..
            } => "Volume",
        }
    }

    /// The month a price took effect, `null` for a price without `from` (in force
    /// since always) or the default price.
    pub fn effective_from(from: Option<&str>) -> Value {
        match from {
            Some(month) if month != ALWAYS => month.into(),
            _ => Value::Null,
        }
    }
}
