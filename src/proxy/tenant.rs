//! Tenant actions: API 3.0 actions on the data listener that the gateway answers
//! itself, so tenants use the same credentials and SDK (`CommonClient`) as for eKYC
//! calls. `ActivateService` is the "Activate Now" button (works while not activated);
//! `DescribeServiceStatus` tells whether and why the account is refused (works while
//! suspended). Never forwarded, never billed. Changes go the operators' write path
//! (store, audit, publisher), recorded as the tenant's own.

use crate::admin::api::{current_month, rfc3339};
use crate::app::App;
use crate::meter::Month;
use crate::proxy::body::ProxyBody;
use crate::proxy::errors::GatewayError;
use crate::store::records::SuspensionFlag;
use crate::tencent;
use http::Response;
use serde_json::{Map, Value, json};
use std::sync::Arc;

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
}

impl TenantAction {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ActivateService" => Some(TenantAction::ActivateService),
            "DescribeServiceStatus" => Some(TenantAction::DescribeServiceStatus),
            "DescribeCallUsage" => Some(TenantAction::DescribeCallUsage),
            "DescribeBills" => Some(TenantAction::DescribeBills),
            _ => None,
        }
    }
}

pub async fn handle(
    app: &Arc<App>,
    account_id: &str,
    action: TenantAction,
    params: Params<'_>,
) -> Result<Response<ProxyBody>, GatewayError> {
    match action {
        TenantAction::DescribeCallUsage => return call_usage(app, account_id, params).await,
        TenantAction::DescribeBills => return describe_bills(app, account_id).await,
        _ => {}
    }
    let account = match action {
        TenantAction::ActivateService => crate::accounts::activate(app, account_id, &format!("tenant:{account_id}"))
            .await
            .map_err(|e| GatewayError::Store(e.to_string()))?,
        TenantAction::DescribeServiceStatus | TenantAction::DescribeCallUsage | TenantAction::DescribeBills => app
            .store
            .get_account(account_id)
            .await
            .map_err(|e| GatewayError::Store(e.to_string()))?
            .ok_or_else(|| GatewayError::Store(format!("account {account_id} is not in the billing store")))?,
    };
    let mut fields = Map::new();
    fields.insert("AccountId".into(), account.id.clone().into());
    fields.insert("Activated".into(), account.activated.into());
    fields.insert("ActivatedAt".into(), account.activated_at.map_or(Value::Null, rfc3339));
    if action == TenantAction::DescribeServiceStatus {
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
        fields.insert(
            "RateLimitQps".into(),
            account
                .rate_limit_qps
                .unwrap_or(app.config.default_rate_limit_qps)
                .into(),
        );
    }
    Ok(tencent::json_response(tencent::success_body(
        fields,
        &tencent::new_request_id(),
    )))
}

/// `DescribeCallUsage {"Month":"YYYY-MM"}` (default: this billing month): the calls
/// counted for the tenant, as flushed to the billing store (at most one flush
/// interval behind).
async fn call_usage(app: &Arc<App>, account_id: &str, params: Params<'_>) -> Result<Response<ProxyBody>, GatewayError> {
    let month = match params.text("Month")? {
        None => current_month(app),
        Some(text) => Month::parse(&text).ok_or(GatewayError::InvalidParameter("Month must be YYYY-MM"))?,
    };
    let usage = app
        .store
        .usage(account_id, &month.to_string())
        .await
        .map_err(|e| GatewayError::Store(e.to_string()))?;
    let total: u64 = usage.iter().map(|(_, calls)| calls).sum();
    let mut fields = Map::new();
    let month_text = month.to_string();
    fields.insert("Month".into(), month_text.clone().into());
    // What the month's calls cost at the prices in force for it, as configured now:
    // an estimate until the bill is issued (late calls, a changed catalog).
    let prices = &app.config.prices;
    let mut subtotal = Some(0i64);
    let rows: Vec<Value> = usage
        .into_iter()
        .map(|(action, calls)| {
            let amount = prices
                .price(&action, &month_text)
                .and_then(|price| price.charge(calls))
                .map(|(micros, _)| micros);
            subtotal = subtotal.zip(amount).and_then(|(sum, micros)| sum.checked_add(micros));
            let amount = amount.map_or(Value::Null, |m| crate::billing::pricing::format_amount(m).into());
            json!({"Action": action, "Calls": calls, "Amount": amount})
        })
        .collect();
    fields.insert("Usage".into(), rows.into());
    fields.insert("TotalCalls".into(), total.into());
    fields.insert("Currency".into(), prices.currency.clone().into());
    fields.insert(
        "EstimatedAmount".into(),
        subtotal.map_or(Value::Null, |s| {
            crate::billing::pricing::format_amount(prices.round_total(s)).into()
        }),
    );
    Ok(tencent::json_response(tencent::success_body(
        fields,
        &tencent::new_request_id(),
    )))
}

/// `DescribeBills`: the tenant's bills, newest first, with their status, and the
/// balance. Answered while suspended: a tenant in arrears must see what it owes.
async fn describe_bills(app: &Arc<App>, account_id: &str) -> Result<Response<ProxyBody>, GatewayError> {
    let store_error = |e: crate::store::StoreError| GatewayError::Store(e.to_string());
    let bills = app.store.bills(account_id).await.map_err(store_error)?;
    let ledger = app.store.ledger(account_id).await.map_err(store_error)?;
    let statuses = crate::billing::ledger::bill_statuses(&bills, &ledger);
    let mut rows: Vec<Value> = bills
        .iter()
        .zip(statuses)
        .map(|(bill, status)| crate::billing::ledger::views::bill_api3(bill, status))
        .collect();
    rows.reverse();
    let mut fields = Map::new();
    fields.insert("Currency".into(), app.config.prices.currency.clone().into());
    fields.insert(
        "Balance".into(),
        crate::billing::pricing::format_amount(crate::billing::ledger::balance(&ledger)).into(),
    );
    fields.insert("TotalCount".into(), rows.len().into());
    fields.insert("Bills".into(), rows.into());
    Ok(tencent::json_response(tencent::success_body(
        fields,
        &tencent::new_request_id(),
    )))
}
