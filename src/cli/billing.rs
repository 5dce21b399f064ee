//! `ekyc-gateway billing run|export`: the monthly job and the finance export, run
//! against the billing store named by `--config` (the same file as `serve`), or the
//! embedded store the demo keeps under `./data/`. Must not serve calls.

use crate::billing::job::{self, RunRequest};
use crate::billing::pricing::format_amount;
use crate::clock::{Clock, SystemClock, rfc3339_text};
use crate::config::{Config, ProcessEnv};
use crate::meter::Month;
use crate::state::mirror::StateMirror;
use crate::state::redis::RedisPublisher;
use crate::state::{StatePublisher, StoreOnlyPublisher};
use crate::store::Store;
use clap::{Args, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct BillingArgs {
    /// The gateway's configuration (store, prices, Redis); default: the demo's embedded
    /// store under ./data/ with the demo's prices.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: BillingCommand,
}

#[derive(Subcommand)]
enum BillingCommand {
    /// Bill a closed month (default: the previous month in the billing time zone).
    Run {
        /// YYYY-MM
        #[arg(long, value_parser = parse_month)]
        month: Option<Month>,
        /// Compute and print the summary; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every bill line of a month, for finance.
    Export {
        /// YYYY-MM
        #[arg(long, value_parser = parse_month)]
        month: Month,
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    Csv,
}

/// `--month`: a bad one is a usage error before anything is opened.
fn parse_month(text: &str) -> Result<Month, String> {
    Month::parse(text).ok_or_else(|| "must be YYYY-MM".to_string())
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(path) => {
            let config = Config::load_for_batch(path, &ProcessEnv)?;
            config.check_prices()?;
            Ok(config)
        }
        None => {
            let env = [
                ("EKYC_UPSTREAM_SECRET_ID", "unused-by-billing"),
                ("EKYC_UPSTREAM_SECRET_KEY", "unused-by-billing"),
                ("EKYC_MASTER_KEY", crate::demo::DEMO_MASTER_KEY),
                ("EKYC_STORE_URL", "sqlite://./data/billing.db"),
            ];
            Ok(Config::from_toml(crate::demo::DEMO_CONFIG, &env)?)
        }
    }
}

pub async fn run(args: BillingArgs) -> anyhow::Result<()> {
    let config = load_config(args.config.as_ref())?;
    let store = Store::open(&config.store_url, config.store_migrate_url.as_deref()).await?;
    let now = SystemClock.now_unix();
    match args.command {
        BillingCommand::Run { month, dry_run, json } => {
            let month = match month {
                Some(month) => month,
                None => {
                    let current = Month::of(now, config.meter.billing_utc_offset_seconds)
                        .ok_or_else(|| anyhow::anyhow!("the clock is outside the years 0-9999"))?;
                    crate::admin::api::previous_month(current)
                }
            };
            let publisher: Box<dyn StatePublisher> = match &config.state.redis {
                Some(target) => Box::new(RedisPublisher::new(
                    target,
                    Arc::new(StateMirror::new(config.master_key.clone())),
                )?),
                None => Box::new(StoreOnlyPublisher),
            };
            let on_terminal = std::io::stderr().is_terminal();
            let mut progress = move |done: u64, total: u64| {
                if on_terminal && total > 0 {
                    let width = 30;
                    let filled = (done * width / total) as usize;
                    eprint!(
                        "\r[{}{}] {done}/{total} accounts",
                        "#".repeat(filled),
                        " ".repeat(width as usize - filled)
                    );
                    if done == total {
                        eprintln!();
                    }
                }
            };
            let request = RunRequest {
                month,
                now,
                dry_run,
                actor: "billing-job".into(),
                grace_seconds: config.due.grace_seconds,
            };
            let summary = job::run(
                &store,
                &config.prices,
                publisher.as_ref(),
                config.meter.billing_utc_offset_seconds,
                request,
                &mut progress,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{summary}");
            }
            Ok(())
        }
        BillingCommand::Export { month, format } => {
            let ExportFormat::Csv = format;
            let mut out = std::io::stdout().lock();
            use std::io::Write;
            writeln!(
                out,
                "bill_id,account,bill_month,currency,line_kind,usage_month,action,calls,amount,bill_total,issued_at,due_at"
            )?;
            for bill in store.bills_of_month(&month.to_string()).await? {
                let lines: Vec<job::BillLine> = serde_json::from_str(&bill.lines)?;
                for line in lines {
                    writeln!(
                        out,
                        "{},{},{},{},{},{},{},{},{},{},{},{}",
                        bill.id,
                        bill.account_id,
                        bill.month,
                        bill.currency,
                        match line.kind {
                            job::LineKind::Usage => "usage",
                            job::LineKind::LateUsage => "late_usage",
                        },
                        line.month,
                        line.action,
                        line.calls,
                        format_amount(line.amount),
                        format_amount(bill.total),
                        rfc3339_text(bill.issued_at).unwrap_or_default(),
                        rfc3339_text(bill.due_at).unwrap_or_default()
                    )?;
                }
            }
            Ok(())
        }
    }
}
