//! The operators' JSON API under `/v1/` on the admin listener: accounts, activation,
//! suspension, rate limits, credentials and the audit log. Every change goes the one
//! write path: billing store first (with its audit entry, in the same transaction),
//! then the `StatePublisher`, which makes every gateway enforce it. Must not touch
//! the mirror directly and must never return a stored secret: SecretKeys and API keys
//! are shown once, at creation.

use super::{ApiError, json};
use crate::accounts::{self, Change};
use crate::app::App;
use crate::billing::job::{BillingError, RunRequest};
use crate::billing::ledger::views::bill_json;
use crate::billing::ledger::{BillStatus, balance, bill_statuses};
use crate::billing::pricing::{format_amount, parse_amount};
use crate::crypto;
use crate::meter::Month;
use crate::store::StoreError;
use crate::store::billing::{LedgerEntry, Movement, TopupOutcome};
use crate::store::records::{AccountRecord, AuditEntry, CredentialRecord, CredentialStatus};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::{Value, json as j};
use std::sync::Arc;

pub type Reply = Result<http::Response<Full<Bytes>>, ApiError>;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
            }
            StoreError::Conflict(what) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", format!("{what} already exists"))
            }
            StoreError::Invalid(why) => ApiError::bad_request(why),
            other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", other.to_string()),
        }
    }
}

pub use crate::clock::rfc3339;

/// The account as the API shows it.
pub fn account_view(account: &AccountRecord) -> Value {
    account.view()
}

fn credential_view(credential: &CredentialRecord) -> Value {
    credential.view()
}

fn audit_view(entry: &AuditEntry) -> Value {
    j!({
        "id": entry.id,
        "at": rfc3339(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "before": entry.before,
        "after": entry.after,
    })
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

pub fn valid_account_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAccount {
    id: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspendBody {
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopupBody {
    amount: String,
    idempotency_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditBody {
    amount: String,
    reason: String,
    idempotency_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    month: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// After a top-up or credit (committed with its audit entry and the account's arrears
/// flag in one transaction): publishes the flag's change and answers with the status,
/// the entry, whether it was a repeat, the balance and the account.
async fn settle(app: &Arc<App>, movement: Movement) -> (StatusCode, LedgerEntry, bool, i64, AccountRecord) {
    let (status, entry, duplicate) = match movement.outcome {
        TopupOutcome::Recorded(entry) => (StatusCode::CREATED, entry, false),
        TopupOutcome::Duplicate(entry) => (StatusCode::OK, entry, true),
    };
    // A repeat publishes too: the first attempt may have died between commit and publish.
    if movement.account.changed || duplicate {
        accounts::propagate(app, Change::Account(movement.account.after.clone())).await;
    }
    (status, entry, duplicate, movement.balance, movement.account.after)
}

/// The month before `month`.
pub fn previous_month(month: Month) -> Month {
    Month(month.0.saturating_sub(1))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitBody {
    qps: Option<u32>,
}

#[derive(Deserialize)]
struct CreditLimitBody {
    /// A decimal amount ("0.00" is prepaid), or null for the configured default.
    credit_limit: Option<String>,
}

pub async fn route(app: &Arc<App>, actor: &str, method: &Method, segments: &[&str], query: &str, body: &[u8]) -> Reply {
    let now = app.clock.now_unix();
    match (method, segments) {
        (&Method::POST, ["accounts"]) => {
            let request: CreateAccount = parse(body)?;
            if !valid_account_id(&request.id) {
                return Err(ApiError::bad_request(
                    "id must be 1-64 characters: lower-case letters, digits, '-' or '_'",
                ));
            }
            let name = request.name.trim();
            if name.is_empty() || name.len() > 200 {
                return Err(ApiError::bad_request("name must be 1-200 characters"));
            }
            let account = AccountRecord::new(&request.id, name, now);
            app.store.create_account(&account, actor, now).await?;
            let propagation = accounts::propagate(app, Change::Account(account.clone())).await;
            let mut view = account_view(&account);
            view["propagation"] = propagation.into();
            Ok(json(StatusCode::CREATED, view))
        }
        (&Method::GET, ["accounts"]) => {
            let search = query_param(query, "search");
            let limit = query_param(query, "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100i64)
                .clamp(1, 1000);
            let offset = query_param(query, "offset")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0i64)
                .max(0);
            let accounts = app.store.list_accounts(search.as_deref(), limit, offset).await?;
            let views: Vec<Value> = accounts.iter().map(account_view).collect();
            Ok(json(
                StatusCode::OK,
                j!({"accounts": views, "limit": limit, "offset": offset}),
            ))
        }
        (&Method::GET, ["accounts", id]) => {
            let account = app
                .store
                .get_account(id)
                .await?
                .ok_or_else(|| ApiError::from(StoreError::NotFound(format!("account {id}"))))?;
            Ok(json(StatusCode::OK, account_view(&account)))
        }
        (&Method::POST, ["accounts", id, "activate"]) => {
            let account = accounts::activate(app, id, actor).await?;
            Ok(json(StatusCode::OK, account_view(&account)))
        }
        (&Method::POST, ["accounts", id, "suspend"]) => {
            let request: SuspendBody = parse(body)?;
            let reason = request.reason.trim().to_string();
            if reason.is_empty() || reason.len() > 500 {
                return Err(ApiError::bad_request("reason must be 1-500 characters"));
            }
            let account = accounts::suspend(app, id, actor, &reason).await?;
            Ok(json(StatusCode::OK, account_view(&account)))
        }
        (&Method::POST, ["accounts", id, "resume"]) => {
            // Lifts the operator's suspension only: arrears are lifted by payment.
            let account = accounts::resume(app, id, actor).await?;
            Ok(json(StatusCode::OK, account_view(&account)))
        }
        (&Method::PUT, ["accounts", id, "rate-limit"]) => {
            let request: RateLimitBody = parse(body)?;
            if request.qps == Some(0) || request.qps.is_some_and(|q| q > 1_000_000) {
                return Err(ApiError::bad_request("qps must be 1-1000000, or null for the default"));
            }
            let account = accounts::set_rate_limit(app, id, actor, request.qps).await?;
            Ok(json(StatusCode::OK, account_view(&account)))
        }
        (&Method::PUT, ["accounts", id, "credit-limit"]) => {
            let request: CreditLimitBody = parse(body)?;
            let limit = match request.credit_limit {
                None => None,
                Some(text) => Some(parse_amount(&text).filter(|micros| *micros >= 0).ok_or_else(|| {
                    ApiError::bad_request(
                        "credit_limit must be a decimal string like \"100.00\" (0 is prepaid), or null",
                    )
                })?),
            };
            let account = accounts::set_credit_limit(app, id, actor, limit).await?;
            Ok(json(StatusCode::OK, account_view(&account)))
        }
        (&Method::POST, ["accounts", id, "credentials"]) => {
            if app.store.get_account(id).await?.is_none() {
                return Err(StoreError::NotFound(format!("account {id}")).into());
            }
            let (secret_id, secret_key, api_key) =
                (crypto::new_secret_id(), crypto::new_secret_key(), crypto::new_api_key());
            let record = CredentialRecord {
                secret_id: secret_id.clone(),
                account_id: id.to_string(),
                secret_key_sealed: app.config.master_key.seal(&secret_key, id),
                api_key_hash: hex::encode(crypto::api_key_hash(&api_key)),
                status: CredentialStatus::Active,
                created_at: now,
                revoked_at: None,
                version: 1,
            };
            app.store.create_credential(&record, actor, now).await?;
            let propagation = accounts::propagate(app, Change::Credential(record.clone())).await;
            Ok(json(
                StatusCode::CREATED,
                j!({
                    "account": id,
                    "secret_id": secret_id,
                    "secret_key": secret_key,
                    "api_key": api_key,
                    "propagation": propagation,
                    "note": "the secret_key and api_key are shown only now: store them safely",
                }),
            ))
        }
        (&Method::GET, ["accounts", id, "credentials"]) => {
            if app.store.get_account(id).await?.is_none() {
                return Err(StoreError::NotFound(format!("account {id}")).into());
            }
            let credentials = app.store.list_credentials(id).await?;
            let views: Vec<Value> = credentials.iter().map(credential_view).collect();
            Ok(json(StatusCode::OK, j!({"account": id, "credentials": views})))
        }
        (&Method::DELETE, ["credentials", secret_id]) => {
            let record = app.store.revoke_credential(secret_id, actor, now).await?;
            let propagation = accounts::propagate(app, Change::Credential(record.clone())).await;
            let mut view = credential_view(&record);
            view["propagation"] = propagation.into();
            Ok(json(StatusCode::OK, view))
        }
        (&Method::GET, ["accounts", id, "usage"]) => {
            if app.store.get_account(id).await?.is_none() {
                return Err(StoreError::NotFound(format!("account {id}")).into());
            }
            let month = match query_param(query, "month") {
                Some(text) => Month::parse(&text).ok_or_else(|| ApiError::bad_request("month must be YYYY-MM"))?,
                None => current_month(app),
            };
            let usage = app.store.usage(id, &month.to_string()).await?;
            let total: u64 = usage.iter().map(|(_, calls)| calls).sum();
            let actions: serde_json::Map<String, Value> = usage.into_iter().map(|(a, c)| (a, c.into())).collect();
            // So a page can offer the months that have something to show.
            let months_with_calls = app.store.usage_months(id, 24).await?;
            Ok(json(
                StatusCode::OK,
                j!({"account": id, "month": month.to_string(), "current_month": current_month(app).to_string(),
                    "actions": actions, "total": total, "months_with_calls": months_with_calls}),
            ))
        }
        (&Method::GET, ["accounts", id, "daily"]) => {
            if app.store.get_account(id).await?.is_none() {
                return Err(StoreError::NotFound(format!("account {id}")).into());
            }
            let count: i64 = query_param(query, "days")
                .and_then(|d| d.parse().ok())
                .unwrap_or(30i64)
                .clamp(1, 366);
            let offset = app.config.meter.billing_utc_offset_seconds;
            let today = time::OffsetDateTime::from_unix_timestamp(app.clock.now_unix() + i64::from(offset))
                .map_err(|_| ApiError::bad_request("the clock is out of range"))?
                .date();
            let day_text = |d: time::Date| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day());
            let days: Vec<String> = (0..count)
                .rev()
                .filter_map(|back| today.checked_sub(time::Duration::days(back)))
                .map(day_text)
                .collect();
            let counted: std::collections::HashMap<String, u64> = app
                .store
                .daily_usage(id, &days[0], &days[days.len() - 1])
                .await?
                .into_iter()
                .collect();
            let rows: Vec<Value> = days
                .iter()
                .map(|day| j!({"day": day, "calls": counted.get(day).copied().unwrap_or(0)}))
                .collect();
            Ok(json(StatusCode::OK, j!({"account": id, "days": rows})))
        }
        (&Method::POST, ["accounts", id, "topups"]) => {
            let request: TopupBody = parse(body)?;
            let amount = parse_amount(&request.amount)
                .filter(|a| *a > 0)
                .ok_or_else(|| ApiError::bad_request("amount must be a positive decimal string like \"12.50\""))?;
            let key = request.idempotency_key.trim();
            if key.is_empty() || key.len() > 200 {
                return Err(ApiError::bad_request("idempotency_key must be 1-200 characters"));
            }
            let movement = app.store.record_topup(id, amount, key, actor, now).await?;
            let (status, entry, duplicate, balance, account) = settle(app, movement).await;
            Ok(json(
                status,
                j!({
                    "account": id,
                    "ledger_id": entry.id,
                    "amount": format_amount(entry.amount),
                    "idempotency_key": key,
                    "duplicate": duplicate,
                    "balance": format_amount(balance),
                    "currency": app.config.prices.currency,
                    "state": account_view(&account),
                }),
            ))
        }
        (&Method::POST, ["accounts", id, "credits"]) => {
            let request: CreditBody = parse(body)?;
            let amount = parse_amount(&request.amount)
                .ok_or_else(|| ApiError::bad_request("amount must be a positive decimal string like \"12.50\""))?;
            if amount <= 0 {
                return Err(ApiError::bad_request(
                    "a credit must be positive: money only moves toward the platform (top-ups, charges, credits); \
                     there are no refunds or debits",
                ));
            }
            let (key, reason) = (request.idempotency_key.trim(), request.reason.trim());
            if key.is_empty() || key.len() > 200 || reason.is_empty() || reason.len() > 500 {
                return Err(ApiError::bad_request(
                    "idempotency_key (1-200 characters) and reason (1-500) are required",
                ));
            }
            let movement = app.store.record_credit(id, amount, reason, key, actor, now).await?;
            let (status, entry, duplicate, balance, account) = settle(app, movement).await;
            Ok(json(
                status,
                j!({"account": id, "ledger_id": entry.id, "amount": format_amount(entry.amount), "reason": reason,
                    "idempotency_key": key, "duplicate": duplicate, "balance": format_amount(balance),
                    "currency": app.config.prices.currency, "state": account_view(&account)}),
            ))
        }
        (&Method::GET, ["accounts", id, "balance"]) => {
            if app.store.get_account(id).await?.is_none() {
                return Err(StoreError::NotFound(format!("account {id}")).into());
            }
            let ledger = app.store.ledger(id).await?;
            let bills = app.store.bills(id).await?;
            let statuses = bill_statuses(&bills, &ledger, now);
            let overdue = statuses.iter().filter(|s| **s == BillStatus::Overdue).count();
            let open = statuses.iter().filter(|s| **s == BillStatus::Open).count();
            let entries: Vec<Value> = ledger
                .iter()
                .rev()
                .take(100)
                .map(|e| {
                    j!({"id": e.id, "at": rfc3339(e.at), "kind": e.kind, "amount": format_amount(e.amount),
                        "bill_id": e.bill_id, "actor": e.actor, "note": e.note})
                })
                .collect();
            Ok(json(
                StatusCode::OK,
                j!({"account": id, "balance": format_amount(balance(&ledger)), "currency": app.config.prices.currency,
                    "overdue_bills": overdue, "open_bills": open, "ledger": entries}),
            ))
        }
        (&Method::GET, ["accounts", id, "bills"]) => {
            if app.store.get_account(id).await?.is_none() {
                return Err(StoreError::NotFound(format!("account {id}")).into());
            }
            let ledger = app.store.ledger(id).await?;
            let bills = app.store.bills(id).await?;
            let views: Vec<Value> = bills
                .iter()
                .zip(bill_statuses(&bills, &ledger, now))
                .map(|(b, s)| bill_json(b, s))
                .collect();
            Ok(json(
                StatusCode::OK,
                j!({"account": id, "balance": format_amount(balance(&ledger)), "bills": views}),
            ))
        }
        (&Method::GET, ["bills", bill_id]) => {
            let bill = app
                .store
                .bill(bill_id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("bill {bill_id}")))?;
            let ledger = app.store.ledger(&bill.account_id).await?;
            let bills = app.store.bills(&bill.account_id).await?;
            let status = bills
                .iter()
                .zip(bill_statuses(&bills, &ledger, now))
                .find(|(b, _)| b.id == bill.id)
                .map_or(BillStatus::Overdue, |(_, s)| s);
            Ok(json(StatusCode::OK, bill_json(&bill, status)))
        }
        (&Method::POST, ["billing", "run"]) => {
            let request: RunBody = parse(body)?;
            let month = match request.month.as_deref() {
                Some(text) => Month::parse(text).ok_or_else(|| ApiError::bad_request("month must be YYYY-MM"))?,
                None => previous_month(current_month(app)),
            };
            let run = RunRequest {
                month,
                now,
                dry_run: request.dry_run,
                actor: actor.to_string(),
                grace_seconds: app.config.due.grace_seconds,
            };
            let summary = crate::billing::job::run(
                &app.store,
                &app.config.prices,
                app.publisher.as_ref(),
                app.config.meter.billing_utc_offset_seconds,
                run,
                &mut |_, _| {},
            )
            .await
            .map_err(|e| match e {
                BillingError::Store(e) => ApiError::from(e),
                BillingError::Locked | BillingError::LeaseLost => ApiError {
                    status: StatusCode::CONFLICT,
                    code: "conflict",
                    message: e.to_string(),
                },
                other => ApiError::bad_request(other.to_string()),
            })?;
            Ok(json(
                StatusCode::OK,
                serde_json::to_value(&summary).unwrap_or(Value::Null),
            ))
        }
        (&Method::GET, ["audit"]) => {
            let account = query_param(query, "account");
            let limit = query_param(query, "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100i64)
                .clamp(1, 1000);
            let entries = app.store.list_audit(account.as_deref(), limit).await?;
            let views: Vec<Value> = entries.iter().map(audit_view).collect();
            Ok(json(StatusCode::OK, j!({"entries": views})))
        }
        (_, ["webhooks", rest @ ..]) => super::webhooks::route(app, method, rest, query).await,
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such admin endpoint",
        )),
    }
}

/// This month in the billing time zone.
pub fn current_month(app: &App) -> Month {
    Month::of(app.clock.now_unix(), app.config.meter.billing_utc_offset_seconds).unwrap_or(Month(0))
}

pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}
