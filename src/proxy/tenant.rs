//! Tenant actions: API 3.0 actions on the data listener that the gateway answers
//! itself, so tenants use the same credentials and SDK (`CommonClient`) as for eKYC
//! calls. `ActivateService` is the "Activate Now" button (works while not activated);
//! `DescribeServiceStatus` tells whether and why the account is refused (works while
//! suspended). Never forwarded, never billed. Changes go the operators' write path
//! (store, audit, publisher), recorded as the tenant's own.

use crate::admin::api::{change_account, rfc3339};
use crate::app::App;
use crate::proxy::body::ProxyBody;
use crate::proxy::errors::GatewayError;
use crate::store::records::SuspensionFlag;
use crate::tencent;
use http::Response;
use serde_json::{Map, Value, json};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantAction {
    ActivateService,
    DescribeServiceStatus,
}

impl TenantAction {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ActivateService" => Some(TenantAction::ActivateService),
            "DescribeServiceStatus" => Some(TenantAction::DescribeServiceStatus),
            _ => None,
        }
    }
}

pub async fn handle(
    app: &Arc<App>,
    account_id: &str,
    action: TenantAction,
) -> Result<Response<ProxyBody>, GatewayError> {
    let account = match action {
        TenantAction::ActivateService => {
            let now = app.clock.now_unix();
            change_account(
                app,
                account_id,
                &format!("tenant:{account_id}"),
                "account.activate",
                |a| {
                    if !a.activated {
                        a.activated = true;
                        a.activated_at = Some(now);
                    }
                    Ok(())
                },
            )
            .await
            .map_err(|e| GatewayError::Store(e.message))?
        }
        TenantAction::DescribeServiceStatus => app
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
