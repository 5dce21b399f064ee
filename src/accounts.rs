//! Account changes, the one write path for operators (admin API, CLI, consoles) and
//! tenants (`ActivateService`): each change is committed to the billing store with its
//! audit entry in one transaction, then told to every gateway through the state
//! publisher (Redis, or the local mirror), retried in the background while the cache
//! is unreachable. Must not decide who may make a change (the callers authorize) nor
//! answer HTTP.

use crate::app::App;
use crate::store::StoreError;
use crate::store::records::{AccountRecord, CredentialRecord, Suspension};
use std::sync::Arc;
use std::time::Duration;

/// A committed change every gateway must learn about.
#[derive(Clone)]
pub enum Change {
    Account(AccountRecord),
    Credential(CredentialRecord),
}

impl Change {
    async fn publish(&self, app: &App) -> anyhow::Result<()> {
        match self {
            Change::Account(record) => app.publisher.account_changed(record).await,
            Change::Credential(record) => app.publisher.credential_changed(record).await,
        }
    }
}

/// Tells every gateway about a committed change: `"done"`, or `"pending"` when the
/// cache is unreachable, in which case the change stays committed and is retried in the
/// background until it gets through.
pub async fn propagate(app: &Arc<App>, change: Change) -> &'static str {
    // A second try at once: after a Redis restart the first command only finds the
    // old connection broken, and the connection manager has reconnected by now.
    let first = change.publish(app).await;
    let result = match first {
        Ok(()) => Ok(()),
        Err(_) => change.publish(app).await,
    };
    match result {
        Ok(()) => "done",
        Err(e) => {
            tracing::warn!(error = %e, "state cache unreachable; will retry propagating the change");
            let app = app.clone();
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(200);
                while change.publish(&app).await.is_err() {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            });
            "pending"
        }
    }
}

/// Applies `change` to account `id` as `actor` (the audit log's who) under the audit
/// action `action`, and answers with the account as committed. The named operations
/// below are the ones the API offers; this is their common path.
pub async fn change(
    app: &Arc<App>,
    id: &str,
    actor: &str,
    action: &str,
    change: impl Fn(&mut AccountRecord) -> Result<(), StoreError>,
) -> Result<AccountRecord, StoreError> {
    let now = app.clock.now_unix();
    let result = app.store.update_account(id, actor, action, now, change).await?;
    if result.changed {
        propagate(app, Change::Account(result.after.clone())).await;
    }
    Ok(result.after)
}

/// Activates the service ("Activate Now"); an account already active keeps its date.
pub async fn activate(app: &Arc<App>, id: &str, actor: &str) -> Result<AccountRecord, StoreError> {
    let now = app.clock.now_unix();
    change(app, id, actor, "account.activate", |a| {
        if !a.activated {
            a.activated = true;
            a.activated_at = Some(now);
        }
        Ok(())
    })
    .await
}

/// The operator's suspension (`OperationDenied` on every gateway); a repeated one with
/// the same reason changes nothing, and a new reason keeps the first date.
pub async fn suspend(app: &Arc<App>, id: &str, actor: &str, reason: &str) -> Result<AccountRecord, StoreError> {
    let now = app.clock.now_unix();
    change(app, id, actor, "account.suspend", |a| {
        if a.manual.as_ref().map(|m| m.reason.as_str()) != Some(reason) {
            a.manual = Some(Suspension {
                reason: reason.to_string(),
                since: a.manual.as_ref().map_or(now, |m| m.since),
            });
        }
        Ok(())
    })
    .await
}

/// Lifts the operator's suspension only: arrears are lifted by payment.
pub async fn resume(app: &Arc<App>, id: &str, actor: &str) -> Result<AccountRecord, StoreError> {
    change(app, id, actor, "account.resume", |a| {
        a.manual = None;
        Ok(())
    })
    .await
}

/// The account's own rate limit, `None` for the configured default.
pub async fn set_rate_limit(
    app: &Arc<App>,
    id: &str,
    actor: &str,
    qps: Option<u32>,
) -> Result<AccountRecord, StoreError> {
    change(app, id, actor, "account.rate_limit", |a| {
        a.rate_limit_qps = qps;
        Ok(())
    })
    .await
}

/// The account's own credit limit in micro-units (0: prepaid), `None` for the
/// configured default.
pub async fn set_credit_limit(
    app: &Arc<App>,
    id: &str,
    actor: &str,
    limit: Option<i64>,
) -> Result<AccountRecord, StoreError> {
    change(app, id, actor, "account.credit_limit", |a| {
        a.credit_limit = limit;
        Ok(())
    })
    .await
}
