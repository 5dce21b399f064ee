//! The billing scheduler: the background task in every `serve` process that bills each
//! closed month without an operator. The previous month is due on the 1st at
//! `billing.run_at` (billing time zone); months a run was missed for (every gateway
//! down over the 1st) are due at once, oldest first, so each month's calls land on that
//! month's bill. Of N gateways one runs a month: the job's lease in the store lets one
//! in, and the run record it writes under the lease turns the others away. A failed run
//! is retried with backoff until it is done. A closed month still not billed after the
//! 3rd of the next month raises `ekyc_gateway_billing_month_late` and logs an error.
//!
//! Reads the time from `app.clock` only. Must not bill an open month, and must not hold
//! the lease outside `billing::job` (the job takes, renews and frees it).

use crate::app::App;
use crate::billing::job::{self, BillingError, RunRequest};
use crate::meter::Month;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Days into the next month by whose end a month must be billed (the 1st-3rd promise).
const BILLING_DAYS: i64 = 3;
/// The longest wait between retries of a failing run.
const MAX_BACKOFF: Duration = Duration::from_secs(900);

pub struct Scheduler {
    app: Arc<App>,
    /// Actor of this gateway's runs in the audit log and the ledger, and the lease
    /// holder's prefix: names the gateway by its meter instance id.
    actor: String,
    /// Months found needing a run, and the month they were looked for in: the usage
    /// table is read once per process and month, the run records at every check.
    plan: Option<Plan>,
    /// Months already reported late by this process (one error log and event each).
    reported_late: HashSet<Month>,
}

/// The months still to run, as read at the start of `current`.
struct Plan {
    current: Month,
    /// Oldest first; the previous month always, with or without calls.
    months: BTreeSet<Month>,
    /// Of those, the months with calls: only these can be late. An empty month is run
    /// for its record, but a gateway installed mid-month has nothing to bill for the
    /// month before and no alarm to raise for it.
    with_usage: BTreeSet<Month>,
}

/// What one look at the clock and the store found.
#[derive(Debug, Default)]
struct Check {
    /// Months to run now, oldest first.
    due: Vec<Month>,
    late: Vec<Month>,
}

impl Scheduler {
    pub fn new(app: Arc<App>) -> Self {
        let actor = format!("billing-scheduler@{}", app.plane.counters.journal().instance_id());
        Self {
            app,
            actor,
            plan: None,
            reported_late: HashSet::new(),
        }
    }

    /// Checks every `billing.scheduler_interval_ms` until `shutdown`, backing off while
    /// runs fail.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let interval = self.app.config.scheduler.interval;
        let mut delay = Duration::ZERO;
        let mut backoff = interval;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
            delay = match self.tick().await {
                Ok(()) => {
                    backoff = interval;
                    interval
                }
                Err(e) => {
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF.max(interval));
                    tracing::warn!(error = %e, retry_in = ?wait, "scheduled billing run failed; retrying");
                    wait
                }
            };
        }
    }

    /// One look: update the alarms, then run whatever is due, oldest first. A run that
    /// another gateway holds the lease for is left to it.
    async fn tick(&mut self) -> Result<(), BillingError> {
        let now = self.app.clock.now_unix();
        let check = self.check(now).await?;
        self.raise_alarms(&check.late, now).await;
        let mut ran = false;
        for month in check.due {
            let request = RunRequest {
                month,
                now,
                dry_run: false,
                actor: self.actor.clone(),
                grace_seconds: self.app.config.due.grace_seconds,
            };
            let outcome = job::run_unless_done(
                &self.app.store,
                &self.app.config.prices,
                self.app.publisher.as_ref(),
                self.app.config.meter.billing_utc_offset_seconds,
                request,
            )
            .await;
            match outcome {
                Ok(Some(summary)) => {
                    self.app.plane.metrics.billing_scheduled_runs_ok.inc();
                    tracing::info!(%summary, "scheduled billing run finished");
                    ran = true;
                }
                Ok(None) => {
                    tracing::debug!(%month, "another gateway billed the month");
                    ran = true;
                }
                Err(BillingError::Locked) => {
                    tracing::debug!(%month, "another gateway holds the billing lease");
                    return Ok(());
                }
                Err(e) => {
                    self.app.plane.metrics.billing_scheduled_runs_failed.inc();
                    return Err(e);
                }
            }
        }
        if ran {
            // The gauges follow the runs at once, not a check later.
            let check = self.check(now).await?;
            self.raise_alarms(&check.late, now).await;
        }
        Ok(())
    }

    /// Reads which closed months still need a run, sets the gauges, and says which
    /// months are due and which are late at `now`.
    async fn check(&mut self, now: i64) -> Result<Check, BillingError> {
        let offset = self.app.config.meter.billing_utc_offset_seconds;
        let current = Month::of(now, offset).ok_or_else(|| {
            BillingError::Store(crate::store::StoreError::Invalid(
                "the clock is outside the years 0-9999".into(),
            ))
        })?;
        let previous = Month(current.0.saturating_sub(1));
        let store = &self.app.store;
        if self.plan.as_ref().is_none_or(|plan| plan.current != current) {
            let with_usage: BTreeSet<Month> = store
                .months_missing_a_run(&current.to_string())
                .await?
                .iter()
                .filter_map(|m| Month::parse(m))
                .collect();
            let mut months = with_usage.clone();
            months.insert(previous);
            self.plan = Some(Plan {
                current,
                months,
                with_usage,
            });
        }
        let runs = store.billing_runs().await?;
        let done: HashSet<Month> = runs.iter().filter_map(|r| Month::parse(&r.month)).collect();
        let metrics = &self.app.plane.metrics;
        let last = done.iter().max().map_or(0, |m| i64::from(m.year() * 100 + m.number()));
        metrics.billing_last_month_billed.set(last);
        let plan = self.plan.as_mut().expect("set above");
        plan.months.retain(|m| !done.contains(m));
        let mut check = Check::default();
        for &month in plan.months.iter() {
            if now >= deadline(month, offset) && plan.with_usage.contains(&month) {
                check.late.push(month);
            }
            let run_at = current.start_unix(offset) + i64::from(self.app.config.scheduler.run_at_seconds);
            if month < previous || now >= run_at {
                check.due.push(month);
            }
        }
        metrics.billing_month_late.set(i64::from(!check.late.is_empty()));
        Ok(check)
    }

    async fn raise_alarms(&mut self, late: &[Month], now: i64) {
        for &month in late {
            if !self.reported_late.contains(&month) {
                let deadline = deadline(month, self.app.config.meter.billing_utc_offset_seconds);
                tracing::error!(
                    %month,
                    deadline,
                    "billing run late: the month is not billed by the end of the 3rd (billing time zone); see ekyc_gateway_billing_month_late"
                );
                // The event id is the month's: a late month is told once, by whichever
                // gateway sees it first. Reported only once it is in the outbox.
                let detail = format!("not billed by the end of the 3rd (deadline {deadline})");
                match crate::webhooks::billing_run_late(&self.app.store, &month.to_string(), now, &detail).await {
                    Ok(_) => {
                        self.reported_late.insert(month);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, %month, "could not record the billing.run_late event; retried at the next check")
                    }
                }
            }
        }
    }
}

/// When `month` is late: the end of the 3rd of the next month, billing time zone.
fn deadline(month: Month, offset_seconds: i32) -> i64 {
    Month(month.0 + 1).start_unix(offset_seconds) + BILLING_DAYS * 86_400
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_is_late_from_the_4th_of_the_next_month_in_the_billing_zone() {
        let october = Month::parse("2026-10").unwrap();
        let offset = 8 * 3600;
        // 2026-11-04 00:00 at UTC+8.
        let fourth = 1_793_462_400 + 3 * 86_400;
        assert_eq!(deadline(october, offset), fourth);
        assert_eq!(Month::day_of(fourth - 1, offset).unwrap(), "2026-11-03");
        assert_eq!(Month::day_of(fourth, offset).unwrap(), "2026-11-04");
        let december = Month::parse("2026-12").unwrap();
        assert_eq!(Month::day_of(deadline(december, 0), 0).unwrap(), "2027-01-04");
    }
}
