//! The control plane's side of tenant actions (`proxy::tenant`): it reads the billing
//! store and makes the tenant's own account changes (through `accounts`), on behalf of
//! a data plane that has no path to the store itself. Bounded: at most
//! `CONCURRENT_QUERIES` store reads run for tenants at once on a gateway, a caller
//! waits at most `QUEUE_WAIT` for one, and each account is also under its rate limit
//! (checked by the pipeline). Must not format answers (the data plane does).

use crate::app::App;
use crate::meter::Month;
use crate::proxy::errors::GatewayError;
use crate::proxy::ratelimit::RateLimited;
use crate::proxy::tenant::{AccountStatus, BillsView, DeskAnswer, PricedUsage, TenantDesk};
use crate::store::records::AccountRecord;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Store reads for tenants at once per gateway: enough for every console user, few
/// enough that tenants cannot take the pool the usage flush and billing need.
pub const CONCURRENT_QUERIES: usize = 4;
/// How long a tenant action waits for its turn before `RequestLimitExceeded`.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);

pub struct StoreDesk {
    /// Weak: the `App` owns the data plane, which owns this desk.
    app: Weak<App>,
    permits: Semaphore,
}

impl StoreDesk {
    pub fn new(app: Weak<App>) -> Self {
        StoreDesk {
            app,
            permits: Semaphore::new(CONCURRENT_QUERIES),
        }
    }

    /// The app and a turn at the store, or why not.
    async fn turn(&self) -> Result<(Arc<App>, SemaphorePermit<'_>), GatewayError> {
        let permit = tokio::time::timeout(QUEUE_WAIT, self.permits.acquire())
            .await
            .map_err(|_| GatewayError::RateLimited(RateLimited::AccountQueries))?
            .map_err(|_| GatewayError::Store("the tenant desk is closed".into()))?;
        let app = self
            .app
            .upgrade()
            .ok_or_else(|| GatewayError::Store("the gateway is shutting down".into()))?;
        Ok((app, permit))
    }
}

fn store_error(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::Store(e.to_string())
}

fn account_status(app: &App, account: AccountRecord) -> AccountStatus {
    AccountStatus {
        rate_limit_qps: account.rate_limit_qps.unwrap_or(app.config.default_rate_limit_qps),
        credit_limit: account.credit_limit.or(app.config.credit.default_limit),
        account,
    }
}

impl TenantDesk for StoreDesk {
    fn activate<'a>(&'a self, account_id: &'a str) -> DeskAnswer<'a, AccountStatus> {
        Box::pin(async move {
            let (app, _turn) = self.turn().await?;
            let account = crate::accounts::activate(&app, account_id, &format!("tenant:{account_id}"))
                .await
                .map_err(store_error)?;
            Ok(account_status(&app, account))
        })
    }

    fn status<'a>(&'a self, account_id: &'a str) -> DeskAnswer<'a, AccountStatus> {
        Box::pin(async move {
            let (app, _turn) = self.turn().await?;
            let account = app
                .store
                .get_account(account_id)
                .await
                .map_err(store_error)?
                .ok_or_else(|| GatewayError::Store(format!("account {account_id} is not in the billing store")))?;
            Ok(account_status(&app, account))
        })
    }

    fn usage<'a>(&'a self, account_id: &'a str, month: Month) -> DeskAnswer<'a, PricedUsage> {
        Box::pin(async move {
            let (app, _turn) = self.turn().await?;
            let month_text = month.to_string();
            let usage = app.store.usage(account_id, &month_text).await.map_err(store_error)?;
            let prices = &app.config.prices;
            let mut subtotal = Some(0i64);
            let rows = usage
                .into_iter()
                .map(|(action, calls)| {
                    let amount = prices
                        .price(&action, &month_text)
                        .and_then(|price| price.charge(calls))
                        .map(|(micros, _)| micros);
                    subtotal = subtotal.zip(amount).and_then(|(sum, micros)| sum.checked_add(micros));
                    (action, calls, amount)
                })
                .collect();
            Ok(PricedUsage {
                rows,
                currency: prices.currency.clone(),
                estimated_amount: subtotal.map(|s| prices.round_total(s)),
            })
        })
    }

    fn bills<'a>(&'a self, account_id: &'a str) -> DeskAnswer<'a, BillsView> {
        Box::pin(async move {
            let (app, _turn) = self.turn().await?;
            let bills = app.store.bills(account_id).await.map_err(store_error)?;
            let ledger = app.store.ledger(account_id).await.map_err(store_error)?;
            let statuses = crate::billing::ledger::bill_statuses(&bills, &ledger, app.clock.now_unix());
            Ok(BillsView {
                bills: bills.into_iter().zip(statuses).collect(),
                balance: crate::billing::ledger::balance(&ledger),
                currency: app.config.prices.currency.clone(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tenant_action_waits_its_turn_then_is_refused_as_rate_limited() {
        let desk = StoreDesk::new(Weak::new());
        let held = desk.permits.acquire_many(CONCURRENT_QUERIES as u32).await.unwrap();
        let started = tokio::time::Instant::now();
        let refused = desk
            .status("a")
            .await
            .err()
            .expect("no turn while every permit is held");
        assert!(matches!(
            refused,
            GatewayError::RateLimited(RateLimited::AccountQueries)
        ));
        assert_eq!(refused.code().as_str(), "RequestLimitExceeded");
        assert_eq!(started.elapsed(), QUEUE_WAIT);
        // A freed turn is taken; with the app gone the desk answers an internal error.
        drop(held);
        let closed = desk.bills("a").await.err().expect("no app behind the desk");
        assert!(matches!(closed, GatewayError::Store(_)), "{closed:?}");
    }
}
