//! What the ledger says, derived and never stored: an account's balance and the status
//! of each bill. Credits settle bills oldest first: a bill is paid once the account's
//! credits cover every charge up to and including it. Pure: must not do I/O.

use crate::store::billing::{BillRecord, LedgerEntry};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "status")]
pub enum BillStatus {
    /// Settled at `paid_at` (Unix seconds): at issue when the balance covered it, or by
    /// the top-up that did.
    Paid {
        paid_at: i64,
    },
    Overdue,
}

pub fn balance(ledger: &[LedgerEntry]) -> i64 {
    ledger.iter().map(|e| e.amount).sum()
}

/// The status of each bill (`bills` oldest first), from the ledger (oldest first).
pub fn bill_statuses(bills: &[BillRecord], ledger: &[LedgerEntry]) -> Vec<BillStatus> {
    // Credits over time: (when, cumulative amount).
    let mut credits = Vec::new();
    let mut cumulative = 0i64;
    for entry in ledger.iter().filter(|e| e.amount > 0) {
        cumulative += entry.amount;
        credits.push((entry.at, cumulative));
    }
    let mut needed = 0i64;
    bills
        .iter()
        .map(|bill| {
            needed += bill.total;
            if needed <= 0 {
                return BillStatus::Paid {
                    paid_at: bill.issued_at,
                };
            }
            match credits.iter().find(|(_, sum)| *sum >= needed) {
                Some((at, _)) => BillStatus::Paid {
                    paid_at: (*at).max(bill.issued_at),
                },
                None => BillStatus::Overdue,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
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
            bill_statuses(&bills, &ledger),
            [
                BillStatus::Paid { paid_at: 10 },
                BillStatus::Overdue,
                BillStatus::Overdue
            ]
        );
        assert_eq!(balance(&ledger), -30);
        ledger.push(entry(30, 40));
        assert_eq!(
            bill_statuses(&bills, &ledger),
            [
                BillStatus::Paid { paid_at: 10 },
                BillStatus::Paid { paid_at: 40 },
                BillStatus::Paid { paid_at: 40 }
            ]
        );
        assert_eq!(balance(&ledger), 0);
    }
}

/// An account's bills with their status, as the admin API and the tenants see them.
pub mod views {
    use super::*;
    use crate::billing::job::BillLine;
    use crate::billing::pricing::format_amount;
    use serde_json::{Value, json};

    pub fn bill_json(bill: &BillRecord, status: BillStatus) -> Value {
        let lines: Vec<BillLine> = serde_json::from_str(&bill.lines).unwrap_or_default();
        let lines: Vec<Value> = lines
            .iter()
            .map(|line| {
                let mut value = serde_json::to_value(line).unwrap_or(Value::Null);
                value["amount_text"] = format_amount(line.amount).into();
                value
            })
            .collect();
        let (status_name, paid_at) = match status {
            BillStatus::Paid { paid_at } => ("paid", Some(paid_at)),
            BillStatus::Overdue => ("overdue", None),
        };
        json!({
            "id": bill.id,
            "account": bill.account_id,
            "month": bill.month,
            "currency": bill.currency,
            "subtotal": format_amount(bill.subtotal),
            "total": format_amount(bill.total),
            "total_micros": bill.total,
            "status": status_name,
            "paid_at": paid_at,
            "issued_at": bill.issued_at,
            "lines": lines,
        })
    }

    /// The tenant's view (API 3.0 style field names).
    pub fn bill_api3(bill: &BillRecord, status: BillStatus) -> Value {
        let lines: Vec<BillLine> = serde_json::from_str(&bill.lines).unwrap_or_default();
        let (status_name, paid_at) = match status {
            BillStatus::Paid { paid_at } => ("Paid", Some(paid_at)),
            BillStatus::Overdue => ("Overdue", None),
        };
        json!({
            "BillId": bill.id,
            "Month": bill.month,
            "Currency": bill.currency,
            "Total": format_amount(bill.total),
            "Status": status_name,
            "PaidAt": paid_at,
            "IssuedAt": bill.issued_at,
            "Lines": lines.iter().map(|l| json!({
                "Action": l.action,
                "Month": l.month,
                "Kind": if l.kind == crate::billing::job::LineKind::Usage { "Usage" } else { "LateUsage" },
                "Calls": l.calls,
                "Amount": format_amount(l.amount),
            })).collect::<Vec<_>>(),
        })
    }
}
