//! Tenant actions: API 3.0 actions on the data listener that the gateway answers
//! itself, so tenants use the same credentials and SDK (`CommonClient`) as for eKYC
//! calls. `ActivateService` is the "Activate Now" button (works while not activated);
//! `DescribeServiceStatus` tells whether and why the account is refused (works while
//! suspended); `DescribeCallUsage` and `DescribeBills` show the month's calls and the
//! bills with their lines; `DescribePriceList` the prices in force for a month. Never
//! forwarded, never billed.
//!
//! This module reads the parameters and writes the answers; what they say comes from
//! the control plane through a `TenantDesk` (implemented by `crate::tenant_desk`), the
//! data plane's only way to what the billing store holds, except the price list, which
//! is configuration the plane holds itself. Must not reach the store.

use crate::admin::api::rfc3339;
use crate::billing::ledger::BillStatus;
use crate::meter::Month;
use crate::proxy::body::ProxyBody;
use crate::proxy::errors::GatewayError;
use crate::proxy::plane::DataPlane;
use crate::store::billing::BillRecord;
use crate::store::records::{AccountRecord, SuspensionFlag};
use crate::tencent;
use http::Response;
use serde_json::{Map, Value, json};
use std::future::Future;
use std::pin::Pin;

/// What a tenant action asks the control plane, as a boxed future (the trait is used as
/// an object so the data plane names no control-plane type).
pub type DeskAnswer<'a, T> = Pin<Box<dyn Future<Output = Result<T, GatewayError>> + Send + 'a>>;

/// The control plane's answers to tenant actions. An implementation bounds how much
/// of the store the data plane's callers can make it read (see `crate::tenant_desk`).
pub trait TenantDesk: Send + Sync {
    /// Activates the account (as the tenant's own change) and tells how it stands.
    fn activate<'a>(&'a self, account_id: &'a str) -> DeskAnswer<'a, AccountStatus>;
    /// How the account stands.
    fn status<'a>(&'a self, account_id: &'a str) -> DeskAnswer<'a, AccountStatus>;
    /// The account's counted calls of `month`, priced at the prices in force for it.
    fn usage<'a>(&'a self, account_id: &'a str, month: Month) -> DeskAnswer<'a, PricedUsage>;
    /// The account's bills, oldest first, with their status, and its balance.
    fn bills<'a>(&'a self, account_id: &'a str) -> DeskAnswer<'a, BillsView>;
}

pub struct AccountStatus {
    pub account: AccountRecord,
    /// The limit in force: the account's own, or the configured default.
    pub rate_limit_qps: u32,
    /// The credit limit in force (micro-units; 0: prepaid), `None`: no limit.
    pub credit_limit: Option<i64>,
}

pub struct PricedUsage {
    /// By action name: calls, and their amount (micro-units) where a price applies.
    pub rows: Vec<(String, u64, Option<i64>)>,
    pub currency: String,
    /// The rounded sum of the rows' amounts; `None` when a row has no price.
    pub estimated_amount: Option<i64>,
}

pub struct BillsView {
    pub bills: Vec<(BillRecord, BillStatus)>,
    pub balance: i64,
    pub currency: String,
}

/// A tenant action's parameters, where the call's signature put them.
#[derive(Debug, Clone, Copy)]
pub enum Params<'a> {
    /// A POST's JSON body (TC3, API key).
    Json(&'a [u8]),
    /// A v1 POST's form, already parsed (its signature fields among the parameters).
    Form(&'a crate::sigv1::Params),
    /// A GET's query string, form-encoded (TC3 and v1 alike).
    Query(&'a str),
}

impl Params<'_> {
    /// The text parameter `name`, if given; `Err` when it is given but not as text,
    /// or more than once.
    fn text(&self, name: &str) -> Result<Option<String>, GatewayError> {
        let invalid = GatewayError::InvalidParameter;
        match self {
            Params::Json(body) => {
                if body.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                let params: Value =
                    serde_json::from_slice(body).map_err(|_| invalid("the body must be a JSON object"))?;
                let Value::Object(params) = params else {
                    return Err(invalid("the body must be a JSON object"));
                };
                match params.get(name) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(text)) => Ok(Some(text.clone())),
                    Some(_) => Err(invalid("a parameter has the wrong type")),
                }
            }
            Params::Form(params) => params
                .get(name)
                .map(|value| value.map(str::to_string))
                .map_err(|_| invalid("a parameter is repeated")),
            Params::Query(query) => {
                let mut found = None;
                for (key, value) in form_urlencoded::parse(query.as_bytes()) {
                    if key == name && found.replace(value.into_owned()).is_some() {
                        return Err(invalid("a parameter is repeated"));
                    }
                }
                Ok(found)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantAction {
    ActivateService,
    DescribeServiceStatus,
    DescribeCallUsage,
    DescribeBills,
    DescribePriceList,
}

impl TenantAction {
    pub const ALL: [TenantAction; 5] = [
        TenantAction::ActivateService,
        TenantAction::DescribeServiceStatus,
        TenantAction::DescribeCallUsage,
        TenantAction::DescribeBills,
        TenantAction::DescribePriceList,
    ];

    /// On every call's path: a `match`, which compares lengths before bytes.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ActivateService" => Some(TenantAction::ActivateService),
            "DescribeServiceStatus" => Some(TenantAction::DescribeServiceStatus),
            "DescribeCallUsage" => Some(TenantAction::DescribeCallUsage),
            "DescribeBills" => Some(TenantAction::DescribeBills),
            "DescribePriceList" => Some(TenantAction::DescribePriceList),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TenantAction::ActivateService => "ActivateService",
            TenantAction::DescribeServiceStatus => "DescribeServiceStatus",
            TenantAction::DescribeCallUsage => "DescribeCallUsage",
            TenantAction::DescribeBills => "DescribeBills",
            TenantAction::DescribePriceList => "DescribePriceList",
        }
    }

    /// The position in `ALL`, for per-action tables (metrics).
    pub fn index(self) -> usize {
        self as usize
    }
}

pub async fn handle(
    plane: &DataPlane,
    account_id: &str,
    action: TenantAction,
    params: Params<'_>,
) -> Result<Response<ProxyBody>, GatewayError> {
    let desk = &*plane.tenants;
    let fields = match action {
        TenantAction::DescribeCallUsage => {
            let month = month_param(plane, params)?;
            call_usage(month, desk.usage(account_id, month).await?)
        }
        // From the plane's own configuration: no turn at the desk.
        TenantAction::DescribePriceList => price_list(plane, month_param(plane, params)?),
        TenantAction::DescribeBills => {
            describe_bills(desk.bills(account_id).await?, plane.settings.billing_utc_offset_seconds)
        }
        TenantAction::ActivateService => account_fields(desk.activate(account_id).await?, false),
        TenantAction::DescribeServiceStatus => account_fields(desk.status(account_id).await?, true),
    };
    Ok(tencent::json_response(tencent::success_body(
        fields,
        &tencent::new_request_id(),
    )))
}

/// The `Month` parameter ("YYYY-MM"), by default this month in the billing time zone.
fn month_param(plane: &DataPlane, params: Params<'_>) -> Result<Month, GatewayError> {
    match params.text("Month")? {
        None => Month::of(plane.clock.now_unix(), plane.settings.billing_utc_offset_seconds)
            .ok_or(GatewayError::ClockOutOfRange),
        Some(text) => Month::parse(&text).ok_or(GatewayError::InvalidParameter("Month must be YYYY-MM")),
    }
}

/// `DescribePriceList {"Month":"YYYY-MM"}` (default: this billing month): per action of
/// the catalog, the price in force for the month, the month it took effect (`null`:
/// always, or the default price), its mode and tiers. A free action says so; a
/// billable one without a price that month has `PricingMode` null (its calls of that
/// month cannot be billed).
fn price_list(plane: &DataPlane, month: Month) -> Map<String, Value> {
    use crate::billing::ledger::views::{effective_from, price_api3};
    let month_text = month.to_string();
    let rows: Vec<Value> = plane
        .catalog
        .names()
        .zip(&plane.billable)
        .map(|(action, billable)| {
            let (mode, from, tiers) = match plane.prices.price_in_force(action, &month_text) {
                _ if !billable => (Value::from("Free"), Value::Null, Vec::new()),
                None => (Value::Null, Value::Null, Vec::new()),
                Some((from, price)) => {
                    let (mode, tiers) = price_api3(price);
                    (mode.into(), effective_from(from), tiers)
                }
            };
            json!({"Action": action, "Billable": billable, "PricingMode": mode, "EffectiveFrom": from, "Tiers": tiers})
        })
        .collect();
    let mut fields = Map::new();
    fields.insert("Month".into(), month.to_string().into());
    fields.insert("Currency".into(), plane.prices.currency.clone().into());
    fields.insert(
        "TotalRounding".into(),
        crate::billing::pricing::format_amount(plane.prices.total_rounding).into(),
    );
    fields.insert("TotalCount".into(), rows.len().into());
    fields.insert("PriceList".into(), rows.into());
    fields
}

/// `ActivateService` and `DescribeServiceStatus` (`with_standing`: also whether and why
/// the account is refused, and its rate limit).
fn account_fields(status: AccountStatus, with_standing: bool) -> Map<String, Value> {
    let account = status.account;
    let mut fields = Map::new();
    fields.insert("AccountId".into(), account.id.clone().into());
    fields.insert("Activated".into(), account.activated.into());
    fields.insert("ActivatedAt".into(), account.activated_at.map_or(Value::Null, rfc3339));
    if with_standing {
        let suspensions: Vec<Value> = [SuspensionFlag::Manual, SuspensionFlag::Arrears]
            .into_iter()
            .filter_map(|flag| {
                account.suspension(flag).map(|s| {
                    let (name, what_to_do) = match flag {
                        SuspensionFlag::Manual => ("Manual", "contact the operator"),
                        SuspensionFlag::Arrears => ("Arrears", "pay the amount due; the suspension lifts by itself"),
                    };
                    json!({"Flag": name, "Reason": s.reason, "Since": rfc3339(s.since), "Resolution": what_to_do})
                })
            })
            .collect();
        fields.insert("Enabled".into(), account.enabled().into());
        fields.insert("Suspensions".into(), suspensions.into());
        fields.insert("RateLimitQps".into(), status.rate_limit_qps.into());
        fields.insert(
            "CreditLimit".into(),
            status.credit_limit.map_or(Value::Null, |micros| {
                crate::billing::pricing::format_amount(micros).into()
            }),
        );
    }
    fields
}

/// `DescribeCallUsage {"Month":"YYYY-MM"}` (default: this billing month): the calls
/// counted for the tenant, as flushed to the billing store (at most one flush
/// interval behind), and what they cost at the prices in force for the month, as
/// configured now: an estimate until the bill is issued (late calls, a changed catalog).
fn call_usage(month: Month, usage: PricedUsage) -> Map<String, Value> {
    let format_amount = |micros: i64| Value::from(crate::billing::pricing::format_amount(micros));
    let total: u64 = usage.rows.iter().map(|(_, calls, _)| calls).sum();
    let rows: Vec<Value> = usage
        .rows
        .into_iter()
        .map(|(action, calls, amount)| {
            json!({"Action": action, "Calls": calls, "Amount": amount.map_or(Value::Null, format_amount)})
        })
        .collect();
    let mut fields = Map::new();
    fields.insert("Month".into(), month.to_string().into());
    fields.insert("Usage".into(), rows.into());
    fields.insert("TotalCalls".into(), total.into());
    fields.insert("Currency".into(), usage.currency.into());
    fields.insert(
        "EstimatedAmount".into(),
        usage.estimated_amount.map_or(Value::Null, format_amount),
    );
    fields
}

/// `DescribeBills`: the tenant's bills, newest first, with their status, and the
/// balance. Answered while suspended: a tenant in arrears must see what it owes. With
/// the billing time zone, in which months (and so an invoice's dates) are reckoned.
fn describe_bills(view: BillsView, utc_offset_seconds: i32) -> Map<String, Value> {
    let rows: Vec<Value> = view
        .bills
        .iter()
        .rev()
        .map(|(bill, status)| crate::billing::ledger::views::bill_api3(bill, *status))
        .collect();
    let mut fields = Map::new();
    fields.insert("Currency".into(), view.currency.into());
    fields.insert(
        "Balance".into(),
        crate::billing::pricing::format_amount(view.balance).into(),
    );
    fields.insert("BillingUtcOffset".into(), utc_offset(utc_offset_seconds).into());
    fields.insert("TotalCount".into(), rows.len().into());
    fields.insert("Bills".into(), rows.into());
    fields
}

/// Seconds east of UTC as `+08:00` / `-05:30`, as `meter.billing_utc_offset` is written.
fn utc_offset(seconds: i32) -> String {
    let sign = if seconds < 0 { '-' } else { '+' };
    let minutes = seconds.unsigned_abs() / 60;
    format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn offsets_are_written_as_the_config_writes_them() {
        assert_eq!(super::utc_offset(8 * 3600), "+08:00");
        assert_eq!(super::utc_offset(-(5 * 3600 + 1800)), "-05:30");
        assert_eq!(super::utc_offset(0), "+00:00");
    }
}
