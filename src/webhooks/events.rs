//! The webhook events as values: their types, ids and JSON bodies, built from the
//! changes that cause them. The store writes what these functions return into the
//! outbox in the transaction of the change. Pure: must not do I/O or read the clock.

use crate::billing::pricing::format_amount;
use crate::clock::rfc3339;
use crate::store::billing::BillRecord;
use crate::store::records::{AccountRecord, SuspensionFlag};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const BILL_ISSUED: &str = "bill.issued";
pub const BILL_PAID: &str = "bill.paid";
pub const BILL_OVERDUE: &str = "bill.overdue";
pub const ACCOUNT_SUSPENDED: &str = "account.suspended";
pub const ACCOUNT_REACTIVATED: &str = "account.reactivated";
pub const BILLING_RUN_LATE: &str = "billing.run_late";
pub const BILL_REMINDER: &str = "bill.reminder";
pub const BALANCE_LOW: &str = "balance.low";

/// An event to put in the outbox: `payload` is the exact body every attempt sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub id: String,
    pub kind: &'static str,
    pub created_at: i64,
    pub payload: String,
}

impl NewEvent {
    fn new(id: String, kind: &'static str, created_at: i64, data: Value) -> Self {
        let payload = json!({"id": id, "type": kind, "created": rfc3339(created_at), "data": data}).to_string();
        Self {
            id,
            kind,
            created_at,
            payload,
        }
    }
}

/// A fresh id, for events a change can cause more than once (suspensions).
pub fn random_id() -> String {
    format!("evt_{}", uuid::Uuid::new_v4().simple())
}

/// The same id for the same cause, for events that happen once per thing (a bill is
/// issued once, paid once): the outbox keeps the first, so a repeat is no second event.
pub fn stable_id(cause: &str) -> String {
    let digest = Sha256::digest(cause.as_bytes());
    format!("evt_{}", &hex::encode(digest)[..32])
}

fn bill_data(bill: &BillRecord) -> Value {
    json!({
        "bill_id": bill.id,
        "account": bill.account_id,
        "month": bill.month,
        "currency": bill.currency,
        "subtotal": format_amount(bill.subtotal),
        "total": format_amount(bill.total),
        "issued_at": rfc3339(bill.issued_at),
        "due_at": rfc3339(bill.due_at),
    })
}

/// What a new bill causes: `bill.issued`, then `bill.paid` when the account's balance
/// after the charge (`balance`, micro-units) covers it; else, when the bill is due at
/// issue (no grace), `bill.overdue`. An unpaid bill with a later due date is `open`:
/// its `bill.overdue` comes from the due sweep if the date passes unpaid.
pub fn bill_issued(bill: &BillRecord, balance: i64) -> Vec<NewEvent> {
    let paid = balance >= 0;
    let overdue = !paid && bill.due_at <= bill.issued_at;
    let mut issued = bill_data(bill);
    issued["status"] = (if paid {
        "paid"
    } else if overdue {
        "overdue"
    } else {
        "open"
    })
    .into();
    let mut events = vec![NewEvent::new(
        stable_id(&format!("{BILL_ISSUED}:{}", bill.id)),
        BILL_ISSUED,
        bill.issued_at,
        issued,
    )];
    if paid {
        events.push(bill_paid(bill, bill.issued_at));
    } else if overdue {
        // At issue the whole bill is unpaid: balances settle older bills first.
        events.push(bill_overdue(bill, balance, bill.total, bill.issued_at));
    }
    events
}

/// `bill.overdue`: `bill` is past its due date at `now` and still lacks `amount_due`
/// (micro-units); `balance` is the account's. Once per bill, whoever notices it first
/// (the bill's insert when it is due at issue, else a gateway's due sweep).
pub fn bill_overdue(bill: &BillRecord, balance: i64, amount_due: i64, now: i64) -> NewEvent {
    let mut data = bill_data(bill);
    data["balance"] = format_amount(balance).into();
    data["amount_due"] = format_amount(amount_due).into();
    NewEvent::new(
        stable_id(&format!("{BILL_OVERDUE}:{}", bill.id)),
        BILL_OVERDUE,
        now,
        data,
    )
}

/// `bill.reminder`: `bill` is unpaid and due in `days_before` days (`billing.reminder_days`).
/// Once per bill and number of days, whichever gateway's sweep raises it.
pub fn bill_reminder(bill: &BillRecord, days_before: u32, balance: i64, amount_due: i64, now: i64) -> NewEvent {
    let mut data = bill_data(bill);
    data["days_before"] = days_before.into();
    data["balance"] = format_amount(balance).into();
    data["amount_due"] = format_amount(amount_due).into();
    NewEvent::new(
        stable_id(&format!("{BILL_REMINDER}:{}:{days_before}", bill.id)),
        BILL_REMINDER,
        now,
        data,
    )
}

/// The figures of a `balance.low` event (micro-units).
pub struct LowBalance<'a> {
    pub account: &'a str,
    /// Balance minus the unbilled running amount.
    pub available: i64,
    pub balance: i64,
    pub running: i64,
    pub threshold: i64,
    /// The id of the account's latest top-up or credit (0: none yet): the crossing this
    /// event is about. A new top-up re-arms the notice.
    pub funded_by: i64,
    pub currency: &'a str,
}

/// `balance.low`: the account's available funds are below `billing.balance_low_threshold`.
/// Its id is (account, latest top-up or credit), so it is sent once per crossing by N
/// gateways without any state of its own, and again only after the account is funded.
pub fn balance_low(low: &LowBalance<'_>, now: i64) -> NewEvent {
    NewEvent::new(
        stable_id(&format!("{BALANCE_LOW}:{}:{}", low.account, low.funded_by)),
        BALANCE_LOW,
        now,
        json!({
            "account": low.account,
            "currency": low.currency,
            "available": format_amount(low.available),
            "balance": format_amount(low.balance),
            "unbilled": format_amount(low.running),
            "threshold": format_amount(low.threshold),
            "funded_by": low.funded_by,
        }),
    )
}

/// `bill.paid`: once per bill, whether paid at issue or by a later credit.
pub fn bill_paid(bill: &BillRecord, paid_at: i64) -> NewEvent {
    let mut data = bill_data(bill);
    data["paid_at"] = rfc3339(paid_at);
    NewEvent::new(stable_id(&format!("{BILL_PAID}:{}", bill.id)), BILL_PAID, paid_at, data)
}

/// What an account change causes: `account.suspended` for each suspension flag set,
/// `account.reactivated` when the last flag is lifted (the account may call again if
/// it is activated). A changed reason of a flag already set causes nothing.
pub fn account_changed(before: &AccountRecord, after: &AccountRecord, actor: &str, now: i64) -> Vec<NewEvent> {
    let mut events = Vec::new();
    for flag in [SuspensionFlag::Manual, SuspensionFlag::Arrears] {
        if let (None, Some(suspension)) = (before.suspension(flag), after.suspension(flag)) {
            events.push(NewEvent::new(
                random_id(),
                ACCOUNT_SUSPENDED,
                now,
                json!({
                    "account": after.id,
                    "flag": flag,
                    "reason": suspension.reason,
                    "since": rfc3339(suspension.since),
                    "actor": actor,
                }),
            ));
        }
    }
    let suspended = |a: &AccountRecord| a.manual.is_some() || a.arrears.is_some();
    if suspended(before) && !suspended(after) {
        let lifted: Vec<SuspensionFlag> = [SuspensionFlag::Manual, SuspensionFlag::Arrears]
            .into_iter()
            .filter(|flag| before.suspension(*flag).is_some())
            .collect();
        events.push(NewEvent::new(
            random_id(),
            ACCOUNT_REACTIVATED,
            now,
            json!({
                "account": after.id,
                "lifted": lifted,
                "enabled": after.enabled(),
                "actor": actor,
            }),
        ));
    }
    events
}

/// `billing.run_late`: `month` is still not billed at `now` although it should be. One
/// event per month, however often it is raised.
pub fn billing_run_late(month: &str, now: i64, detail: &str) -> NewEvent {
    NewEvent::new(
        stable_id(&format!("{BILLING_RUN_LATE}:{month}")),
        BILLING_RUN_LATE,
        now,
        json!({"month": month, "detail": detail}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::Suspension;

    fn bill(total: i64) -> BillRecord {
        BillRecord {
            id: "B202610-a".into(),
            account_id: "a".into(),
            month: "2026-10".into(),
            currency: "USD".into(),
            subtotal: total,
            total,
            lines: "[]".into(),
            issued_at: 100,
            due_at: 100,
        }
    }

    fn kinds(events: &[NewEvent]) -> Vec<&str> {
        events.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn a_bill_is_issued_then_paid_or_overdue_with_stable_ids() {
        let covered = bill_issued(&bill(1_000_000), 0);
        assert_eq!(kinds(&covered), [BILL_ISSUED, BILL_PAID]);
        let short = bill_issued(&bill(1_000_000), -1);
        assert_eq!(kinds(&short), [BILL_ISSUED, BILL_OVERDUE]);
        assert_eq!(covered[0].id, short[0].id, "one bill.issued per bill");
        assert_eq!(bill_paid(&bill(1), 500).id, covered[1].id, "one bill.paid per bill");
        let body: Value = serde_json::from_str(&short[1].payload).unwrap();
        assert_eq!(
            (&body["type"], &body["data"]["total"], &body["data"]["balance"]),
            (&json!("bill.overdue"), &json!("1.00"), &json!("-0.000001"))
        );
        assert_eq!(body["id"], short[1].id.as_str());
    }

    #[test]
    fn with_grace_an_unpaid_bill_is_open_at_issue_and_told_overdue_later() {
        let graced = BillRecord {
            due_at: 100 + 3 * 86_400,
            ..bill(1_000_000)
        };
        let issued = bill_issued(&graced, -1_000_000);
        assert_eq!(kinds(&issued), [BILL_ISSUED], "no bill.overdue before the due date");
        let body: Value = serde_json::from_str(&issued[0].payload).unwrap();
        assert_eq!(
            (&body["data"]["status"], &body["data"]["due_at"]),
            (&json!("open"), &rfc3339(259_300))
        );
        let later = bill_overdue(&graced, -1_000_000, 1_000_000, 300_000);
        assert_eq!(
            later.id,
            bill_issued(&bill(1_000_000), -1)[1].id,
            "one bill.overdue per bill"
        );
        let reminders = [3, 1].map(|days| bill_reminder(&graced, days, -1, 1, 5));
        assert_ne!(reminders[0].id, reminders[1].id);
        assert_eq!(
            reminders[0].id,
            bill_reminder(&graced, 3, -2, 2, 6).id,
            "one per bill and day"
        );
    }

    #[test]
    fn balance_low_is_once_per_funding() {
        let low = |funded_by, available| LowBalance {
            account: "a",
            available,
            balance: 0,
            running: 0,
            threshold: 10,
            funded_by,
            currency: "USD",
        };
        assert_eq!(balance_low(&low(7, 5), 1).id, balance_low(&low(7, 2), 9).id);
        assert_ne!(balance_low(&low(7, 5), 1).id, balance_low(&low(8, 5), 1).id);
    }

    #[test]
    fn suspensions_follow_the_flags() {
        let open = AccountRecord::new("a", "A", 0);
        let mut arrears = open.clone();
        arrears.arrears = Some(Suspension {
            reason: "owes".into(),
            since: 5,
        });
        let mut both = arrears.clone();
        both.manual = Some(Suspension {
            reason: "fraud".into(),
            since: 6,
        });
        assert_eq!(
            kinds(&account_changed(&open, &arrears, "billing", 5)),
            [ACCOUNT_SUSPENDED]
        );
        assert_eq!(kinds(&account_changed(&arrears, &both, "op", 6)), [ACCOUNT_SUSPENDED]);
        assert!(
            account_changed(&both, &arrears, "op", 7).is_empty(),
            "still in arrears: not reactivated"
        );
        let lifted = account_changed(&arrears, &open, "op", 8);
        assert_eq!(kinds(&lifted), [ACCOUNT_REACTIVATED]);
        let body: Value = serde_json::from_str(&lifted[0].payload).unwrap();
        assert_eq!(body["data"]["lifted"], json!(["arrears"]));
        let mut renamed = arrears.clone();
        renamed.arrears.as_mut().unwrap().reason = "owes more".into();
        assert!(account_changed(&arrears, &renamed, "billing", 9).is_empty());
    }

    #[test]
    fn a_late_run_is_one_event_per_month() {
        assert_eq!(
            billing_run_late("2026-10", 1, "x").id,
            billing_run_late("2026-10", 2, "y").id
        );
        assert_ne!(
            billing_run_late("2026-10", 1, "x").id,
            billing_run_late("2026-11", 1, "x").id
        );
    }
}
