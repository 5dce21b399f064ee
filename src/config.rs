//! Configuration: the raw TOML shape (serde, every field defaulted and documented in
//! `config/gateway.toml`) validated into an immutable `Config`. Secrets come from the
//! environment only, never from the file. Must not open sockets or files other than
//! the ones it is told to read; building clients and listeners is `server`'s job.

use crate::billing::pricing::{Price, PriceBook, Tier, TierMode, parse_amount};
use crate::crypto::MasterKey;
use crate::proxy::access_log::{AccessLogConfig, AccessLogFormat, AccessLogMode, AccessLogTarget};
use crate::state::StalePolicy;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A configuration problem, naming the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("config: {key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    /// For commands that check what the parser cannot (e.g. a variable only they need).
    pub fn new_public(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::new(key, problem)
    }

    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// eKYC (FaceID, version 2018-03-01) actions known when the config lists none.
pub const DEFAULT_ACTIONS: &[&str] = &[
    "ApplyLivenessToken",
    "ApplySdkVerificationToken",
    "ApplyWebVerificationBizTokenIntl",
    "ApplyWebVerificationToken",
    "BankCard2EVerification",
    "BankCard4EVerification",
    "BankCardVerification",
    "CompareFaceLiveness",
    "DetectAuth",
    "GetCardVerificationResult",
    "GetDetectInfoEnhanced",
    "GetFaceIdResultIntl",
    "GetFaceIdTokenIntl",
    "GetLivenessResult",
    "GetSdkVerificationResult",
    "GetWebVerificationResult",
    "GetWebVerificationResultIntl",
    "IdCardOCRVerification",
    "IdCardVerification",
    "ImageRecognition",
    "LivenessCompare",
    "LivenessRecognition",
    "MobileNetworkTimeVerification",
    "MobileStatus",
    "PhoneVerification",
    "VideoLivenessCompare",
];

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    listen: RawListen,
    tls: Option<RawTls>,
    limits: RawLimits,
    upstream: RawUpstream,
    shutdown: RawShutdown,
    store: RawStore,
    state: RawState,
    rate_limit: RawRateLimit,
    meter: RawMeter,
    billing: RawBilling,
    webhooks: RawWebhooks,
    runtime: RawRuntime,
    access_log: RawAccessLog,
    actions: Option<BTreeMap<String, RawAction>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    url: String,
    migrate_url: Option<String>,
    timeout_ms: u64,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            url: "sqlite://./data/billing.db".into(),
            migrate_url: None,
            timeout_ms: 30_000,
        }
    }
}

/// The billing store's URLs, all a batch job on the store needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrls {
    /// The gateway's own connection.
    pub url: String,
    /// The schema owner's, for migrations (see `Config::store_migrate_url`).
    pub migrate_url: Option<String>,
}

impl RawStore {
    fn validate(self, env: &dyn Env) -> Result<StoreUrls, ConfigError> {
        let store_url = env.var("EKYC_STORE_URL").unwrap_or(self.url);
        if !(store_url.starts_with("sqlite://")
            || store_url.starts_with("postgres://")
            || store_url.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                "store.url",
                "must start with sqlite:// or postgres://",
            ));
        }
        let store_migrate_url = env.var("EKYC_STORE_MIGRATE_URL").or(self.migrate_url);
        if store_migrate_url.is_some() && !store_url.starts_with("postgres") {
            return Err(ConfigError::new(
                "store.migrate_url",
                "is for PostgreSQL (the schema owner's URL); a SQLite store migrates itself",
            ));
        }
        if let Some(url) = &store_migrate_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::new("store.migrate_url", "must start with postgres://"));
        }
        Ok(StoreUrls {
            url: store_url,
            migrate_url: store_migrate_url,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawState {
    redis_url: Option<String>,
    sentinel_master: Option<String>,
    sentinels: Vec<String>,
    sentinel_db: i64,
    cluster_nodes: Vec<String>,
    resync_interval_ms: u64,
    max_staleness_ms: u64,
    stale_policy: StalePolicy,
}

impl Default for RawState {
    fn default() -> Self {
        Self {
            redis_url: None,
            sentinel_master: None,
            sentinels: Vec::new(),
            sentinel_db: 0,
            cluster_nodes: Vec::new(),
            resync_interval_ms: 30_000,
            max_staleness_ms: 300_000,
            stale_policy: StalePolicy::FailClosed,
        }
    }
}

impl RawState {
    /// Which Redis deployment `[state]` names: one server (`redis_url`, or env
    /// `EKYC_REDIS_URL`), a Sentinel set (`sentinel_master` and `sentinels`) or a Cluster
    /// (`cluster_nodes`); at most one of them. The data nodes' password of a Sentinel set
    /// or a Cluster may come from env `EKYC_REDIS_PASSWORD` (and `EKYC_REDIS_USERNAME`), so
    /// it stays out of the file.
    fn target(&self, env: &dyn Env) -> Result<Option<RedisTarget>, ConfigError> {
        let redis_url = env
            .var("EKYC_REDIS_URL")
            .or_else(|| self.redis_url.clone())
            .filter(|u| !u.is_empty());
        let named = [
            redis_url.is_some(),
            !self.sentinels.is_empty(),
            !self.cluster_nodes.is_empty(),
        ];
        if named.iter().filter(|n| **n).count() > 1 {
            return Err(ConfigError::new(
                "state",
                "name one Redis deployment: redis_url, sentinels or cluster_nodes",
            ));
        }
        let check_urls = |key: &str, urls: &[String]| -> Result<(), ConfigError> {
            match urls
                .iter()
                .find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
            {
                Some(url) => Err(ConfigError::new(
                    key,
                    format!("{url:?} must start with redis:// or rediss://"),
                )),
                None => Ok(()),
            }
        };
        let credentials = || RedisCredentials {
            username: env.var("EKYC_REDIS_USERNAME").filter(|u| !u.is_empty()),
            password: env.var("EKYC_REDIS_PASSWORD").filter(|p| !p.is_empty()),
        };
        if let Some(url) = redis_url {
            check_urls("state.redis_url", std::slice::from_ref(&url))?;
            if self.sentinel_master.is_some() {
                return Err(ConfigError::new(
                    "state.sentinel_master",
                    "needs sentinels, not redis_url",
                ));
            }
            return Ok(Some(RedisTarget::Node(url)));
        }
        if !self.sentinels.is_empty() {
            check_urls("state.sentinels", &self.sentinels)?;
            let master = self.sentinel_master.clone().filter(|m| !m.is_empty()).ok_or_else(|| {
                ConfigError::new(
                    "state.sentinel_master",
                    "the name the sentinels monitor the master under is required with sentinels",
                )
            })?;
            if self.sentinel_db < 0 {
                return Err(ConfigError::new("state.sentinel_db", "must be 0 or more"));
            }
            return Ok(Some(RedisTarget::Sentinel {
                master,
                sentinels: self.sentinels.clone(),
                db: self.sentinel_db,
                credentials: credentials(),
            }));
        }
        if self.sentinel_master.is_some() {
            return Err(ConfigError::new(
                "state.sentinels",
                "sentinel_master needs the sentinels' addresses",
            ));
        }
        if !self.cluster_nodes.is_empty() {
            check_urls("state.cluster_nodes", &self.cluster_nodes)?;
            return Ok(Some(RedisTarget::Cluster {
                nodes: self.cluster_nodes.clone(),
                credentials: credentials(),
            }));
        }
        Ok(None)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawListen {
    data: String,
    admin: String,
}

impl Default for RawListen {
    fn default() -> Self {
        Self {
            // Loopback until the operator says otherwise: an unconfigured gateway must not
            // be reachable from the network.
            data: "127.0.0.1:8080".into(),
            admin: "127.0.0.1:9090".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_body_bytes: u64,
    max_header_bytes: u64,
    max_headers: u64,
    header_read_timeout_ms: u64,
    body_read_timeout_ms: u64,
    max_connections: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_connections: 10_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    url: String,
    service: String,
    timeout_ms: u64,
    connect_timeout_ms: u64,
    extra_ca_file: Option<PathBuf>,
    pool_idle_timeout_ms: u64,
    pool_max_idle_per_host: u64,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            url: "https://faceid.tencentcloudapi.com".into(),
            service: "faceid".into(),
            timeout_ms: 10_000,
            connect_timeout_ms: 3_000,
            extra_ca_file: None,
            pool_idle_timeout_ms: 90_000,
            pool_max_idle_per_host: 1024,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawShutdown {
    grace_period_ms: u64,
}

impl Default for RawShutdown {
    fn default() -> Self {
        Self {
            grace_period_ms: 30_000,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAction {
    rate_limit_qps: Option<u32>,
    billable: Option<bool>,
    /// The action's prices, each from a month on.
    prices: Option<Vec<RawPrice>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    /// "YYYY-MM": in force from this month on (default: always).
    from: Option<String>,
    /// Flat price per call, as a decimal string ("0.05").
    unit: Option<String>,
    /// "graduated" (default) or "volume", with `tiers`.
    mode: Option<String>,
    tiers: Option<Vec<RawTier>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    up_to: Option<u64>,
    unit: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAccessLog {
    /// "off", "all" or "sampled".
    mode: String,
    /// "json" or "logfmt".
    format: String,
    /// Under "sampled": one successful call in this many (refusals and errors always).
    sample_every: u32,
    /// A file to append to; empty: standard output.
    path: String,
    buffer_kib: u64,
}

impl Default for RawAccessLog {
    fn default() -> Self {
        Self {
            mode: "off".into(),
            format: "json".into(),
            sample_every: 100,
            path: String::new(),
            buffer_kib: 4096,
        }
    }
}

impl RawAccessLog {
    fn validate(self) -> Result<AccessLogConfig, ConfigError> {
        let mode = match self.mode.as_str() {
            "off" => AccessLogMode::Off,
            "all" => AccessLogMode::All,
            "sampled" if self.sample_every >= 1 => AccessLogMode::Sampled {
                every: self.sample_every,
            },
            "sampled" => return Err(ConfigError::new("access_log.sample_every", "must be at least 1")),
            other => {
                return Err(ConfigError::new(
                    "access_log.mode",
                    format!("{other:?} is not off, all or sampled"),
                ));
            }
        };
        let format = match self.format.as_str() {
            "json" => AccessLogFormat::Json,
            "logfmt" => AccessLogFormat::Logfmt,
            other => {
                return Err(ConfigError::new(
                    "access_log.format",
                    format!("{other:?} is not json or logfmt"),
                ));
            }
        };
        if !(64..=1_048_576).contains(&self.buffer_kib) {
            return Err(ConfigError::new("access_log.buffer_kib", "must be 64..=1048576"));
        }
        Ok(AccessLogConfig {
            mode,
            format,
            target: if self.path.is_empty() {
                AccessLogTarget::Stdout
            } else {
                AccessLogTarget::File(self.path.into())
            },
            buffer_bytes: self.buffer_kib as usize * 1024,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRuntime {
    /// Data-plane threads, one current-thread runtime each; 0: one per core.
    worker_threads: u64,
    /// Each data-plane thread kept on one CPU of those the process may use.
    pin_threads: bool,
}

impl Default for RawRuntime {
    fn default() -> Self {
        Self {
            worker_threads: 0,
            pin_threads: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBilling {
    currency: String,
    /// Flat price per call of any action without `prices`; unset (the default): every
    /// billable action needs prices of its own (`Config::check_prices`).
    default_unit: Option<String>,
    /// Bill totals are rounded half up to a multiple of this (default "0.01").
    total_rounding: String,
    /// How much an account may owe before its calls are refused, unless it has a limit
    /// of its own; unset: no limit.
    credit_limit: Option<String>,
    credit_check_interval_ms: u64,
    /// Whether this gateway runs the monthly billing by itself (env
    /// `EKYC_BILLING_SCHEDULER` wins); default true.
    scheduler: bool,
    /// The time of day ("HH:MM", billing time zone) on the 1st when the previous month
    /// is billed; default "02:00".
    run_at: String,
    /// How often the scheduler looks at the clock and the store; default 30 s.
    scheduler_interval_ms: u64,
    /// Days between a bill's issue and its due date; default 0 (due when issued).
    grace_days: u32,
    /// Days before a due date on which an unpaid bill gets a `bill.reminder` event;
    /// default none.
    reminder_days: Vec<u32>,
    /// Available funds (balance minus the unbilled running amount) below which an
    /// account gets a `balance.low` event; unset: no such event.
    balance_low_threshold: Option<String>,
    /// How often each gateway's due sweep runs; default 30 s.
    due_check_interval_ms: u64,
}

impl Default for RawBilling {
    fn default() -> Self {
        Self {
            currency: "USD".into(),
            // No price nobody wrote down: a gateway must not bill at a made-up rate.
            default_unit: None,
            total_rounding: "0.01".into(),
            credit_limit: None,
            credit_check_interval_ms: 2000,
            scheduler: true,
            run_at: "02:00".into(),
            scheduler_interval_ms: 30_000,
            grace_days: 0,
            reminder_days: Vec::new(),
            balance_low_threshold: None,
            due_check_interval_ms: 30_000,
        }
    }
}

/// "HH:MM" (24-hour) as seconds after midnight.
fn parse_time_of_day(text: &str) -> Option<u32> {
    let (hours, minutes) = text.split_once(':')?;
    if hours.len() != 2 || minutes.len() != 2 {
        return None;
    }
    let (hours, minutes): (u32, u32) = (hours.parse().ok()?, minutes.parse().ok()?);
    (hours < 24 && minutes < 60).then_some(hours * 3600 + minutes * 60)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWebhooks {
    /// Endpoints every event is POSTed to; none: events are kept in the outbox only.
    urls: Vec<String>,
    timeout_ms: u64,
    poll_interval_ms: u64,
    initial_backoff_seconds: u64,
    max_backoff_seconds: u64,
    retry_for_hours: u64,
    lease_seconds: u64,
    batch_size: u64,
}

impl Default for RawWebhooks {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            timeout_ms: 10_000,
            poll_interval_ms: 1000,
            initial_backoff_seconds: 10,
            max_backoff_seconds: 3600,
            retry_for_hours: 72,
            lease_seconds: 60,
            batch_size: 50,
        }
    }
}

fn parse_price(key: &str, raw: &RawPrice) -> Result<(String, Price), ConfigError> {
    let from = raw
        .from
        .clone()
        .unwrap_or_else(|| crate::billing::pricing::ALWAYS.into());
    if crate::meter::Month::parse(&from).is_none() {
        return Err(ConfigError::new(format!("{key}.from"), "must look like 2026-01"));
    }
    let amount = |field: String, text: &str| {
        parse_amount(text)
            .ok_or_else(|| ConfigError::new(field, "must be a decimal amount like \"0.05\" (at most 6 decimals)"))
    };
    let price = match (&raw.unit, &raw.tiers) {
        (Some(unit), None) if raw.mode.is_none() => Price::Flat {
            unit: amount(format!("{key}.unit"), unit)?,
        },
        (None, Some(tiers)) => Price::Tiered {
            mode: match raw.mode.as_deref() {
                None | Some("graduated") => TierMode::Graduated,
                Some("volume") => TierMode::Volume,
                Some(_) => {
                    return Err(ConfigError::new(
                        format!("{key}.mode"),
                        "must be \"graduated\" or \"volume\"",
                    ));
                }
            },
            tiers: tiers
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    Ok(Tier {
                        up_to: t.up_to,
                        unit: amount(format!("{key}.tiers[{i}].unit"), &t.unit)?,
                    })
                })
                .collect::<Result<_, ConfigError>>()?,
        },
        _ => {
            return Err(ConfigError::new(
                key.to_string(),
                "give either `unit` (a flat price) or `tiers` (with an optional `mode`)",
            ));
        }
    };
    price.validate().map_err(|e| ConfigError::new(key.to_string(), e))?;
    Ok((from, price))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMeter {
    flush_interval_ms: u64,
    flush_max_rows_per_second: u64,
    billing_utc_offset: String,
    instance_id: Option<String>,
    max_pending_keys: u64,
    journal_path: String,
}

impl Default for RawMeter {
    fn default() -> Self {
        Self {
            flush_interval_ms: 1000,
            flush_max_rows_per_second: 10_000,
            billing_utc_offset: "+08:00".into(),
            instance_id: None,
            max_pending_keys: 1_000_000,
            journal_path: "./data/meter.journal".into(),
        }
    }
}

/// `+08:00`, `-05:30`, `Z` or `+00:00` as seconds east of UTC.
fn parse_utc_offset(text: &str) -> Option<i32> {
    if text == "Z" {
        return Some(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let (hours, minutes) = rest.split_once(':')?;
    if hours.len() != 2 || minutes.len() != 2 {
        return None;
    }
    let (hours, minutes): (i32, i32) = (hours.parse().ok()?, minutes.parse().ok()?);
    (hours <= 14 && minutes < 60).then_some(sign * (hours * 3600 + minutes * 60))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRateLimit {
    default_qps: u32,
}

impl Default for RawRateLimit {
    fn default() -> Self {
        Self { default_qps: 100 }
    }
}

/// One action of the catalog and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionConfig {
    pub name: String,
    /// Calls per second per account for this action, on each gateway instance.
    pub rate_limit_qps: Option<u32>,
    /// Whether a successful call is counted for billing (default true).
    pub billable: bool,
}

/// The platform's own Tencent Cloud credentials, used to re-sign every forwarded call.
#[derive(Clone)]
pub struct UpstreamCredentials {
    pub secret_id: String,
    pub secret_key: String,
}

impl std::fmt::Debug for UpstreamCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamCredentials")
            .field("secret_id", &self.secret_id)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Open data connections at most; beyond it new ones are closed at once.
    pub max_connections: usize,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// `host[:port]`, also the `Host` the gateway signs with.
    pub authority: http::uri::Authority,
    pub service: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub extra_ca_file: Option<PathBuf>,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub credentials: UpstreamCredentials,
}

/// The validated, immutable configuration every part of the server reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub limits: Limits,
    pub upstream: Upstream,
    pub shutdown_grace: Duration,
    /// The actions the gateway forwards, sorted by name; anything else is `InvalidAction`.
    pub actions: Vec<ActionConfig>,
    /// Calls per second per account on each instance, unless the account overrides it;
    /// 0 means no limit.
    pub default_rate_limit_qps: u32,
    pub meter: MeterConfig,
    /// Prices per action and the bill rounding rule.
    pub prices: PriceBook,
    pub credit: CreditConfig,
    /// The monthly billing run this gateway starts by itself.
    pub scheduler: SchedulerConfig,
    /// Due dates, reminders and the low-balance notice (`billing::due`).
    pub due: DueConfig,
    /// Data-plane threads (`runtime.worker_threads`; 0: one per core).
    pub worker_threads: usize,
    /// Each data-plane thread pinned to one allowed CPU (`runtime.pin_threads`).
    pub pin_worker_threads: bool,
    /// `postgres://…` or `sqlite://path` (env `EKYC_STORE_URL` wins over the file).
    pub store_url: String,
    /// The schema owner's `postgres://` URL (`store.migrate_url`, env
    /// `EKYC_STORE_MIGRATE_URL`): migrations run under it and `store_url`'s role is
    /// granted only what it needs. `None`: `store_url` applies the migrations itself.
    pub store_migrate_url: Option<String>,
    /// How long the meter's flush and the state cache's repair wait on the store before
    /// giving up and retrying (`store.timeout_ms`): a database that stops
    /// answering on an open connection (a failed-over primary gone silent, a partition)
    /// otherwise holds them indefinitely, or until TCP gives up (`store::Patience`).
    pub store_timeout: Duration,
    pub state: StateConfig,
    /// Seals SecretKeys at rest (env `EKYC_MASTER_KEY`).
    pub master_key: Arc<MasterKey>,
    /// Bearer tokens of the admin API with the names the audit log records.
    pub admin_tokens: Vec<AdminToken>,
    /// Webhook endpoints, secret and delivery timing.
    pub webhooks: WebhookConfig,
    /// One line per API call (`proxy::access_log`).
    pub access_log: AccessLogConfig,
}

/// Credit control (`billing::credit`).
#[derive(Debug, Clone)]
pub struct CreditConfig {
    /// Micro-units an account may owe before its calls are refused, for accounts
    /// without a limit of their own; `None`: no limit.
    pub default_limit: Option<i64>,
    /// How often each gateway recomputes every account's headroom.
    pub check_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct MeterConfig {
    pub flush_interval: Duration,
    /// Usage rows a second this gateway sends the store at most, on average: after a
    /// batch of R rows the next flush waits R / this if that is longer than
    /// `flush_interval`, up to ten intervals (`meter::flush::next_delay`). 0: no cap.
    pub flush_max_rows_per_second: usize,
    /// The billing time zone, seconds east of UTC: a call belongs to the calendar month
    /// of its arrival there.
    pub billing_utc_offset_seconds: i32,
    /// The prefix of the instance id a new meter journal gets (a random suffix follows),
    /// which names this instance's flush batches for as long as the journal lives.
    pub instance_id: String,
    /// The meter journal (memory-mapped counters); one per gateway process.
    pub journal_path: std::path::PathBuf,
    /// Most distinct (account, action, month) counters held while the store lags.
    pub max_pending_keys: usize,
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// False: the month is billed only by `billing run` or `POST /v1/billing/run`.
    pub enabled: bool,
    /// Seconds after midnight (billing time zone) on the 1st when the previous month's
    /// run is due.
    pub run_at_seconds: u32,
    /// How often the scheduler looks at the clock and the store (and the first retry
    /// after a failed run; retries back off from there).
    pub interval: Duration,
}

/// Due dates and the notices around them (`billing::due`).
#[derive(Debug, Clone)]
pub struct DueConfig {
    /// Seconds from a bill's issue to its due date (`billing.grace_days` days; 0: due
    /// when issued, arrears at once).
    pub grace_seconds: i64,
    /// Days before the due date on which an unpaid bill gets `bill.reminder`,
    /// largest first, without repeats.
    pub reminder_days: Vec<u32>,
    /// Micro-units; `balance.low` when available funds fall below it. `None`: off.
    pub balance_low_threshold: Option<i64>,
    /// How often every gateway's due sweep looks at the bills and balances.
    pub interval: Duration,
}

#[derive(Debug, Clone)]
pub struct StateConfig {
    /// None: single node, state held in process (the embedded default).
    pub redis: Option<RedisTarget>,
    pub resync_interval: Duration,
    pub max_staleness: Duration,
    pub stale_policy: StalePolicy,
}

/// The Redis deployment every gateway shares (docs/CONFIGURATION.md, "Redis: one
/// server, Sentinel or Cluster").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server; its URL may carry a password and a database number.
    Node(String),
    /// A master found through the sentinels monitoring it under `master`; followed to a
    /// promoted replica after a failover.
    Sentinel {
        master: String,
        sentinels: Vec<String>,
        db: i64,
        credentials: RedisCredentials,
    },
    /// Seed nodes of a Redis Cluster; the slot map is read from them.
    Cluster {
        nodes: Vec<String>,
        credentials: RedisCredentials,
    },
}

/// The data nodes' login of a Sentinel set or a Cluster (env `EKYC_REDIS_USERNAME`,
/// `EKYC_REDIS_PASSWORD`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisCredentials {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCredentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where and how webhook events are delivered (`[webhooks]`, docs/WEBHOOKS.md).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// http(s) endpoints; empty: no delivery worker runs.
    pub urls: Vec<String>,
    /// Signs every delivery (env `EKYC_WEBHOOK_SECRET`, required with `urls`).
    pub secret: Option<WebhookSecret>,
    /// One POST, connection to answer.
    pub timeout: Duration,
    /// How often a worker looks for due events.
    pub poll_interval: Duration,
    /// The wait after the first failed attempt, doubled after each further one up to
    /// `max_backoff_seconds`.
    pub initial_backoff_seconds: i64,
    pub max_backoff_seconds: i64,
    /// An event still failing this long after it was created is marked failed.
    pub retry_for_seconds: i64,
    /// How long a claimed event is a worker's own before another may take it.
    pub lease_seconds: i64,
    /// Events claimed at a time.
    pub batch_size: i64,
}

#[derive(Clone)]
pub struct WebhookSecret(pub String);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl RawWebhooks {
    fn validate(self, env: &dyn Env) -> Result<WebhookConfig, ConfigError> {
        for (i, url) in self.urls.iter().enumerate() {
            let uri: http::Uri = url
                .parse()
                .map_err(|e| ConfigError::new(format!("webhooks.urls[{i}]"), format!("{url:?} is not a URL ({e})")))?;
            let scheme_ok = matches!(uri.scheme_str(), Some("http") | Some("https"));
            if !scheme_ok || uri.host().is_none() {
                return Err(ConfigError::new(
                    format!("webhooks.urls[{i}]"),
                    "must be http://host[:port]/path or https://host[:port]/path",
                ));
            }
        }
        let secret = env.var("EKYC_WEBHOOK_SECRET").map(WebhookSecret);
        if !self.urls.is_empty() && secret.as_ref().is_none_or(|s| s.0.len() < 16) {
            return Err(ConfigError::new(
                "EKYC_WEBHOOK_SECRET",
                "webhooks.urls is set: the signing secret (at least 16 characters) must be in this environment variable",
            ));
        }
        let range = |key: &str, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                Err(ConfigError::new(
                    format!("webhooks.{key}"),
                    format!("{value} is outside {min}..={max}"),
                ))
            } else {
                Ok(value)
            }
        };
        let timeout_ms = range("timeout_ms", self.timeout_ms, 100, 600_000)?;
        let lease = range("lease_seconds", self.lease_seconds, 1, 86_400)?;
        if lease * 1000 <= timeout_ms {
            return Err(ConfigError::new(
                "webhooks.lease_seconds",
                "must be longer than webhooks.timeout_ms, or another worker could send an event still in flight",
            ));
        }
        let initial = range("initial_backoff_seconds", self.initial_backoff_seconds, 1, 86_400)?;
        Ok(WebhookConfig {
            urls: self.urls,
            secret,
            timeout: Duration::from_millis(timeout_ms),
            poll_interval: Duration::from_millis(range("poll_interval_ms", self.poll_interval_ms, 10, 3_600_000)?),
            initial_backoff_seconds: initial as i64,
            max_backoff_seconds: range("max_backoff_seconds", self.max_backoff_seconds, initial, 86_400)? as i64,
            retry_for_seconds: range("retry_for_hours", self.retry_for_hours, 24, 24 * 30)? as i64 * 3600,
            lease_seconds: lease as i64,
            batch_size: range("batch_size", self.batch_size, 1, 10_000)? as i64,
        })
    }
}

#[derive(Clone)]
pub struct AdminToken {
    pub name: String,
    pub token: String,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminToken({}, <redacted>)", self.name)
    }
}

/// `EKYC_ADMIN_TOKEN` (named "admin") and `EKYC_ADMIN_TOKENS` ("name:token,name:token").
fn admin_tokens(env: &dyn Env) -> Result<Vec<AdminToken>, ConfigError> {
    let mut tokens = Vec::new();
    if let Some(token) = env.var("EKYC_ADMIN_TOKEN") {
        tokens.push(AdminToken {
            name: "admin".into(),
            token,
        });
    }
    if let Some(list) = env.var("EKYC_ADMIN_TOKENS") {
        for item in list.split(',').filter(|i| !i.trim().is_empty()) {
            let (name, token) = item
                .trim()
                .split_once(':')
                .ok_or_else(|| ConfigError::new("EKYC_ADMIN_TOKENS", "each entry is name:token"))?;
            tokens.push(AdminToken {
                name: name.to_string(),
                token: token.to_string(),
            });
        }
    }
    if tokens.iter().any(|t| t.token.len() < 16) {
        return Err(ConfigError::new(
            "EKYC_ADMIN_TOKEN",
            "an admin token must be at least 16 characters",
        ));
    }
    Ok(tokens)
}

/// Listener addresses given on the command line, which win over the file's `[listen]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListenOverrides {
    pub data: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// Reads environment variables; a function so tests need not touch the process env.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }
}

impl Env for Vec<(&str, &str)> {
    fn var(&self, name: &str) -> Option<String> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }
}

/// The environment of a batch command: what the process has, and stand-ins for what a
/// batch never uses (see `Config::load_for_batch`).
struct BatchEnv<'a> {
    inner: &'a dyn Env,
    throwaway_key: &'a str,
}

impl Env for BatchEnv<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.inner.var(name).or_else(|| match name {
            "EKYC_UPSTREAM_SECRET_ID" | "EKYC_UPSTREAM_SECRET_KEY" => Some("not-used-by-batch-commands".into()),
            "EKYC_MASTER_KEY" => Some(self.throwaway_key.to_string()),
            _ => None,
        })
    }
}

impl Config {
    /// Whether every billable action of the catalog has a price: prices of its own or
    /// `billing.default_unit`. Checked by the commands that bill (`serve`, `billing
    /// run`), not by parsing, so a file read for another purpose (key rotation, tests of
    /// other sections) needs no price list. A price from a later month is still a price:
    /// the months before it are refused when billed (`BillingError::NoPrice`).
    pub fn check_prices(&self) -> Result<(), ConfigError> {
        if self.prices.default.is_some() {
            return Ok(());
        }
        let unpriced = self
            .actions
            .iter()
            .find(|a| a.billable && self.prices.actions.get(&a.name).is_none_or(|p| p.is_empty()));
        match unpriced {
            None => Ok(()),
            Some(action) => Err(ConfigError::new(
                format!("actions.{}.prices", action.name),
                format!(
                    "billable action {0} has no price: add [[actions.{0}.prices]], set billing.default_unit for \
                     every action without prices of its own, or mark it billable = false",
                    action.name
                ),
            )),
        }
    }

    pub fn load(path: &Path, env: &dyn Env) -> Result<Self, ConfigError> {
        Self::load_with_listen(path, env, ListenOverrides::default())
    }

    /// The file at `path` with `serve --listen/--admin-listen` in place of `[listen]`;
    /// the overrides are validated like the file's own addresses.
    pub fn load_with_listen(path: &Path, env: &dyn Env, overrides: ListenOverrides) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::new(path.display().to_string(), e.to_string()))?;
        let mut raw = Self::parse_raw(&text)?;
        if let Some(data) = overrides.data {
            raw.listen.data = data.to_string();
        }
        if let Some(admin) = overrides.admin {
            raw.listen.admin = admin.to_string();
        }
        Self::validate(raw, env)
    }

    pub fn from_toml(text: &str, env: &dyn Env) -> Result<Self, ConfigError> {
        Self::validate(Self::parse_raw(text)?, env)
    }

    fn parse_raw(text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let problem = e.message().to_string();
            let key = e
                .span()
                .map(|span| {
                    let line = text[..span.start].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "(file)".into());
            ConfigError::new(key, problem)
        })
    }

    /// The file at `path` for a batch command (`billing run|export`): the upstream's
    /// SecretId/SecretKey are not needed (a batch never calls Tencent), and
    /// EKYC_MASTER_KEY only where `[state]` names Redis, since publishing a suspension
    /// there reseals the account's record. Without Redis and without a key, the config
    /// carries a throwaway key that nothing sealed with it outlives the process.
    pub fn load_for_batch(path: &Path, env: &dyn Env) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::new(path.display().to_string(), e.to_string()))?;
        let throwaway_key = hex::encode(rand::random::<[u8; 32]>());
        let batch_env = BatchEnv {
            inner: env,
            throwaway_key: &throwaway_key,
        };
        let config = Self::from_toml(&text, &batch_env)?;
        if config.state.redis.is_some() && env.var("EKYC_MASTER_KEY").is_none() {
            return Err(ConfigError::new(
                "EKYC_MASTER_KEY",
                "environment variable is not set: with Redis in [state] the billing job republishes \
                 suspended accounts, sealed under the master key",
            ));
        }
        Ok(config)
    }

    /// Only the `[store]` section of the file at `path`, validated, for commands that
    /// need nothing else (`migrate`): no upstream secrets or master key required.
    pub fn load_store_urls(path: &Path, env: &dyn Env) -> Result<StoreUrls, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::new(path.display().to_string(), e.to_string()))?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::new("(file)", e.message().to_string()))?;
        raw.store.validate(env)
    }

    fn validate(raw: RawConfig, env: &dyn Env) -> Result<Self, ConfigError> {
        let addr = |key: &str, value: &str| {
            value
                .parse::<SocketAddr>()
                .map_err(|e| ConfigError::new(key, format!("{value:?} is not ip:port ({e})")))
        };
        let data_listen = addr("listen.data", &raw.listen.data)?;
        let admin_listen = addr("listen.admin", &raw.listen.admin)?;

        let ms = |key: &str, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                Err(ConfigError::new(
                    key,
                    format!("{value} is outside {min}..={max} milliseconds"),
                ))
            } else {
                Ok(Duration::from_millis(value))
            }
        };
        let within = |key: &str, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                Err(ConfigError::new(key, format!("{value} is outside {min}..={max}")))
            } else {
                Ok(value as usize)
            }
        };
        let limits = Limits {
            max_body_bytes: within("limits.max_body_bytes", raw.limits.max_body_bytes, 1024, 1 << 30)?,
            max_connections: within("limits.max_connections", raw.limits.max_connections, 1, 10_000_000)?,
            max_header_bytes: within("limits.max_header_bytes", raw.limits.max_header_bytes, 8192, 1 << 20)?,
            max_headers: within("limits.max_headers", raw.limits.max_headers, 16, 1000)?,
            header_read_timeout: ms(
                "limits.header_read_timeout_ms",
                raw.limits.header_read_timeout_ms,
                100,
                600_000,
            )?,
            body_read_timeout: ms(
                "limits.body_read_timeout_ms",
                raw.limits.body_read_timeout_ms,
                100,
                3_600_000,
            )?,
        };

        let uri: http::Uri = raw
            .upstream
            .url
            .parse()
            .map_err(|e| ConfigError::new("upstream.url", format!("{:?} is not a URL ({e})", raw.upstream.url)))?;
        let scheme = uri
            .scheme()
            .cloned()
            .filter(|s| *s == http::uri::Scheme::HTTP || *s == http::uri::Scheme::HTTPS);
        let (Some(scheme), Some(authority)) = (scheme, uri.authority().cloned()) else {
            return Err(ConfigError::new(
                "upstream.url",
                "must be http://host[:port] or https://host[:port]",
            ));
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(ConfigError::new(
                "upstream.url",
                "must not have a path or query: Tencent signs \"/\"",
            ));
        }
        if raw.upstream.service.is_empty() {
            return Err(ConfigError::new("upstream.service", "must not be empty"));
        }
        let secret = |name: &str| {
            env.var(name)
                .ok_or_else(|| ConfigError::new(name, "environment variable is not set (secrets never go in the file)"))
        };
        let credentials = UpstreamCredentials {
            secret_id: secret("EKYC_UPSTREAM_SECRET_ID")?,
            secret_key: secret("EKYC_UPSTREAM_SECRET_KEY")?,
        };
        if let Some(file) = &raw.upstream.extra_ca_file
            && !file.is_file()
        {
            return Err(ConfigError::new(
                "upstream.extra_ca_file",
                format!("{} is not a readable file", file.display()),
            ));
        }
        let upstream = Upstream {
            scheme,
            authority,
            service: raw.upstream.service,
            timeout: ms("upstream.timeout_ms", raw.upstream.timeout_ms, 10, 600_000)?,
            connect_timeout: ms(
                "upstream.connect_timeout_ms",
                raw.upstream.connect_timeout_ms,
                10,
                600_000,
            )?,
            extra_ca_file: raw.upstream.extra_ca_file,
            pool_idle_timeout: ms(
                "upstream.pool_idle_timeout_ms",
                raw.upstream.pool_idle_timeout_ms,
                100,
                3_600_000,
            )?,
            pool_max_idle_per_host: within(
                "upstream.pool_max_idle_per_host",
                raw.upstream.pool_max_idle_per_host,
                1,
                100_000,
            )?,
            credentials,
        };

        let tls = match raw.tls {
            None => None,
            Some(t) => {
                for (key, path) in [("tls.cert", &t.cert), ("tls.key", &t.key)] {
                    if !path.is_file() {
                        return Err(ConfigError::new(
                            key,
                            format!("{} is not a readable file", path.display()),
                        ));
                    }
                }
                Some(TlsFiles {
                    cert: t.cert,
                    key: t.key,
                })
            }
        };

        let mut prices = PriceBook {
            currency: raw.billing.currency.clone(),
            default: match &raw.billing.default_unit {
                Some(text) => Some(Price::Flat {
                    unit: parse_amount(text).filter(|u| *u >= 0).ok_or_else(|| {
                        ConfigError::new("billing.default_unit", "must be a decimal amount like \"0.10\"")
                    })?,
                }),
                None => None,
            },
            actions: BTreeMap::new(),
            total_rounding: parse_amount(&raw.billing.total_rounding)
                .filter(|r| *r > 0)
                .ok_or_else(|| ConfigError::new("billing.total_rounding", "must be a positive amount like \"0.01\""))?,
        };
        if raw.billing.currency.len() != 3 || !raw.billing.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ConfigError::new(
                "billing.currency",
                "must be an ISO 4217 code like USD",
            ));
        }
        for (name, action) in raw.actions.iter().flatten() {
            for (i, raw_price) in action.prices.iter().flatten().enumerate() {
                let (from, price) = parse_price(&format!("actions.{name}.prices[{i}]"), raw_price)?;
                prices.actions.entry(name.clone()).or_default().insert(from, price);
            }
        }
        let actions: Vec<ActionConfig> = match raw.actions {
            None => DEFAULT_ACTIONS
                .iter()
                .map(|s| ActionConfig {
                    name: s.to_string(),
                    rate_limit_qps: None,
                    billable: true,
                })
                .collect(),
            Some(map) => {
                for (name, action) in &map {
                    if action.rate_limit_qps == Some(0) {
                        return Err(ConfigError::new(
                            format!("actions.{name}.rate_limit_qps"),
                            "must be at least 1 (omit it for no per-action limit)",
                        ));
                    }
                    if name.is_empty() || name.len() > 64 || !name.bytes().all(|c| c.is_ascii_alphanumeric()) {
                        return Err(ConfigError::new(
                            format!("actions.{name}"),
                            "an action name is 1-64 ASCII letters and digits",
                        ));
                    }
                }
                map.into_iter()
                    .map(|(name, action)| ActionConfig {
                        name,
                        rate_limit_qps: action.rate_limit_qps,
                        billable: action.billable.unwrap_or(true),
                    })
                    .collect()
            }
        };
        if actions.is_empty() {
            return Err(ConfigError::new(
                "actions",
                "the catalog is empty: no call could be forwarded",
            ));
        }

        let store_timeout = ms("store.timeout_ms", raw.store.timeout_ms, 100, 3_600_000)?;
        let StoreUrls {
            url: store_url,
            migrate_url: store_migrate_url,
        } = raw.store.validate(env)?;
        let redis = raw.state.target(env)?;
        let state = StateConfig {
            redis,
            resync_interval: ms("state.resync_interval_ms", raw.state.resync_interval_ms, 100, 3_600_000)?,
            max_staleness: ms("state.max_staleness_ms", raw.state.max_staleness_ms, 1000, 86_400_000)?,
            stale_policy: raw.state.stale_policy,
        };
        let admin_tokens = admin_tokens(env)?;
        // The admin API moves money and suspends accounts: off loopback it must be
        // encrypted and authenticated.
        if !admin_listen.ip().is_loopback() && (tls.is_none() || admin_tokens.is_empty()) {
            return Err(ConfigError::new(
                "listen.admin",
                format!(
                    "{admin_listen} is not a loopback address: the admin listener then needs [tls] (it serves HTTPS with the same certificate) and EKYC_ADMIN_TOKEN"
                ),
            ));
        }
        let master_key = env.var("EKYC_MASTER_KEY").ok_or_else(|| {
            ConfigError::new(
                "EKYC_MASTER_KEY",
                "environment variable is not set (32 bytes, hex or base64)",
            )
        })?;
        let mut master_key =
            MasterKey::parse(&master_key).map_err(|e| ConfigError::new("EKYC_MASTER_KEY", e.to_string()))?;
        if let Some(previous) = env.var("EKYC_MASTER_KEY_PREVIOUS") {
            let previous =
                MasterKey::parse(&previous).map_err(|e| ConfigError::new("EKYC_MASTER_KEY_PREVIOUS", e.to_string()))?;
            master_key = master_key.with_previous(previous);
        }
        let master_key = Arc::new(master_key);

        let webhooks = raw.webhooks.validate(env)?;
        let access_log = raw.access_log.validate()?;

        Ok(Config {
            webhooks,
            access_log,
            store_url,
            store_migrate_url,
            store_timeout,
            state,
            master_key,
            admin_tokens,
            data_listen,
            admin_listen,
            tls,
            limits,
            upstream,
            shutdown_grace: ms("shutdown.grace_period_ms", raw.shutdown.grace_period_ms, 0, 3_600_000)?,
            actions,
            prices,
            credit: CreditConfig {
                default_limit: match &raw.billing.credit_limit {
                    None => None,
                    Some(text) => Some(parse_amount(text).filter(|m| *m >= 0).ok_or_else(|| {
                        ConfigError::new(
                            "billing.credit_limit",
                            "must be a decimal amount like \"50.00\" (\"0\" is prepaid)",
                        )
                    })?),
                },
                check_interval: ms(
                    "billing.credit_check_interval_ms",
                    raw.billing.credit_check_interval_ms,
                    10,
                    3_600_000,
                )?,
            },
            scheduler: SchedulerConfig {
                enabled: match env.var("EKYC_BILLING_SCHEDULER").as_deref() {
                    None => raw.billing.scheduler,
                    Some("on" | "true" | "1") => true,
                    Some("off" | "false" | "0") => false,
                    Some(_) => return Err(ConfigError::new("EKYC_BILLING_SCHEDULER", "must be on or off")),
                },
                run_at_seconds: parse_time_of_day(&raw.billing.run_at).ok_or_else(|| {
                    ConfigError::new(
                        "billing.run_at",
                        "must be a time of day like \"02:00\" (HH:MM, 24-hour)",
                    )
                })?,
                interval: ms(
                    "billing.scheduler_interval_ms",
                    raw.billing.scheduler_interval_ms,
                    10,
                    3_600_000,
                )?,
            },
            due: DueConfig {
                grace_seconds: within("billing.grace_days", u64::from(raw.billing.grace_days), 0, 366)? as i64 * 86_400,
                reminder_days: {
                    let mut days = raw.billing.reminder_days.clone();
                    if let Some(bad) = days.iter().find(|d| **d == 0 || **d > 366) {
                        return Err(ConfigError::new(
                            "billing.reminder_days",
                            format!("{bad}: each must be 1 to 366 days before the due date"),
                        ));
                    }
                    days.sort_unstable_by(|a, b| b.cmp(a));
                    days.dedup();
                    days
                },
                balance_low_threshold: match &raw.billing.balance_low_threshold {
                    None => None,
                    Some(text) => Some(parse_amount(text).filter(|m| *m > 0).ok_or_else(|| {
                        ConfigError::new(
                            "billing.balance_low_threshold",
                            "must be a positive decimal amount like \"20.00\"",
                        )
                    })?),
                },
                interval: ms(
                    "billing.due_check_interval_ms",
                    raw.billing.due_check_interval_ms,
                    10,
                    3_600_000,
                )?,
            },
            worker_threads: within("runtime.worker_threads", raw.runtime.worker_threads, 0, 1024)?,
            pin_worker_threads: raw.runtime.pin_threads,
            default_rate_limit_qps: raw.rate_limit.default_qps,
            meter: MeterConfig {
                flush_interval: ms("meter.flush_interval_ms", raw.meter.flush_interval_ms, 10, 3_600_000)?,
                flush_max_rows_per_second: within(
                    "meter.flush_max_rows_per_second",
                    raw.meter.flush_max_rows_per_second,
                    0,
                    100_000_000,
                )?,
                billing_utc_offset_seconds: parse_utc_offset(&raw.meter.billing_utc_offset).ok_or_else(|| {
                    ConfigError::new("meter.billing_utc_offset", "must look like +08:00, -05:30 or Z")
                })?,
                instance_id: {
                    let prefix = env
                        .var("EKYC_INSTANCE_ID")
                        .or(raw.meter.instance_id)
                        .unwrap_or_else(|| "gw".into());
                    if prefix.is_empty() || prefix.len() > 100 || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(ConfigError::new(
                            "meter.instance_id",
                            "must be 1 to 100 printable ASCII characters",
                        ));
                    }
                    prefix
                },
                journal_path: raw.meter.journal_path.into(),
                max_pending_keys: within("meter.max_pending_keys", raw.meter.max_pending_keys, 1, 100_000_000)?,
            },
        })
    }
}

#[cfg(test)]
mod keys;

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: [(&str, &str); 3] = [
        ("EKYC_UPSTREAM_SECRET_ID", "AKIDplatform"),
        ("EKYC_UPSTREAM_SECRET_KEY", "platform-key"),
        (
            "EKYC_MASTER_KEY",
            "0000000000000000000000000000000000000000000000000000000000000000",
        ),
    ];

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::from_toml("", &ENV).unwrap();
        assert_eq!(c.data_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.limits.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(c.upstream.timeout, Duration::from_secs(10));
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.upstream.authority.as_str(), "faceid.tencentcloudapi.com");
        assert!(c.actions.iter().any(|a| a.name == "LivenessCompare"));
        assert_eq!(c.default_rate_limit_qps, 100);
        assert_eq!((c.worker_threads, c.pin_worker_threads), (0, true));
        let unpinned = Config::from_toml("[runtime]\npin_threads = false\n", &ENV).unwrap();
        assert!(!unpinned.pin_worker_threads);
        let c = Config::from_toml(
            "[actions.GetFaceIdTokenIntl]\nrate_limit_qps = 20\n[actions.LivenessCompare]\n",
            &ENV,
        )
        .unwrap();
        assert_eq!(
            c.actions[0],
            ActionConfig {
                name: "GetFaceIdTokenIntl".into(),
                rate_limit_qps: Some(20),
                billable: true
            }
        );
        assert_eq!(c.actions[1].rate_limit_qps, None);
        assert_eq!(c.store_url, "sqlite://./data/billing.db");
        assert!(c.state.redis.is_none());
        assert_eq!(c.state.max_staleness, Duration::from_secs(300));
        assert_eq!(c.state.stale_policy, StalePolicy::FailClosed);
        assert!(c.admin_tokens.is_empty());
        assert!(c.scheduler.enabled);
        assert_eq!(c.scheduler.run_at_seconds, 2 * 3600);
        assert_eq!(c.scheduler.interval, Duration::from_secs(30));
    }

    #[test]
    fn the_due_date_keys() {
        let c = Config::from_toml("", &ENV).unwrap();
        assert_eq!(c.due.grace_seconds, 0, "due when issued by default");
        assert!(c.due.reminder_days.is_empty());
        assert_eq!(c.due.balance_low_threshold, None);
        assert_eq!(c.due.interval, Duration::from_secs(30));
        let c = Config::from_toml(
            "[billing]\ngrace_days = 3\nreminder_days = [1, 3, 1]\nbalance_low_threshold = \"20.50\"\ndue_check_interval_ms = 50\n",
            &ENV,
        )
        .unwrap();
        assert_eq!(c.due.grace_seconds, 3 * 86_400);
        assert_eq!(c.due.reminder_days, [3, 1], "largest first, once each");
        assert_eq!(c.due.balance_low_threshold, Some(20_500_000));
        assert_eq!(c.due.interval, Duration::from_millis(50));
        for (bad, key) in [
            ("grace_days = 400", "billing.grace_days"),
            ("reminder_days = [0]", "billing.reminder_days"),
            ("balance_low_threshold = \"-1\"", "billing.balance_low_threshold"),
            ("balance_low_threshold = \"lots\"", "billing.balance_low_threshold"),
        ] {
            let err = Config::from_toml(&format!("[billing]\n{bad}\n"), &ENV).unwrap_err();
            assert_eq!(err.key, key, "{bad}");
        }
    }

    #[test]
    fn the_scheduler_keys_and_their_environment_override() {
        let c = Config::from_toml(
            "[billing]\nscheduler = false\nrun_at = \"23:45\"\nscheduler_interval_ms = 50\n",
            &ENV,
        )
        .unwrap();
        assert!(!c.scheduler.enabled);
        assert_eq!(c.scheduler.run_at_seconds, 23 * 3600 + 45 * 60);
        assert_eq!(c.scheduler.interval, Duration::from_millis(50));
        let mut env = ENV.to_vec();
        env.push(("EKYC_BILLING_SCHEDULER", "on"));
        assert!(
            Config::from_toml("[billing]\nscheduler = false\n", &env)
                .unwrap()
                .scheduler
                .enabled
        );
        env.pop();
        env.push(("EKYC_BILLING_SCHEDULER", "off"));
        assert!(!Config::from_toml("", &env).unwrap().scheduler.enabled);
        env.pop();
        env.push(("EKYC_BILLING_SCHEDULER", "maybe"));
        assert_eq!(Config::from_toml("", &env).unwrap_err().key, "EKYC_BILLING_SCHEDULER");
        for bad in ["24:00", "2:00", "02:60", "0200", "noon"] {
            let err = Config::from_toml(&format!("[billing]\nrun_at = \"{bad}\"\n"), &ENV).unwrap_err();
            assert_eq!(err.key, "billing.run_at", "{bad}");
        }
    }

    #[test]
    fn environment_overrides_store_and_redis_and_names_admin_tokens() {
        let env = [
            ("EKYC_UPSTREAM_SECRET_ID", "a"),
            ("EKYC_UPSTREAM_SECRET_KEY", "b"),
            (
                "EKYC_MASTER_KEY",
                "1111111111111111111111111111111111111111111111111111111111111111",
            ),
            ("EKYC_STORE_URL", "postgres://db/x"),
            ("EKYC_REDIS_URL", "redis://127.0.0.1:1/"),
            ("EKYC_ADMIN_TOKEN", "0123456789abcdef"),
            ("EKYC_ADMIN_TOKENS", "alice:aaaaaaaaaaaaaaaa,bob:bbbbbbbbbbbbbbbb"),
        ];
        let c = Config::from_toml("[state]\nstale_policy = \"fail_open\"\n", &env).unwrap();
        assert_eq!(c.store_url, "postgres://db/x");
        assert_eq!(c.state.redis, Some(RedisTarget::Node("redis://127.0.0.1:1/".into())));
        assert_eq!(c.state.stale_policy, StalePolicy::FailOpen);
        let names: Vec<_> = c.admin_tokens.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["admin", "alice", "bob"]);
        assert!(!format!("{c:?}").contains("aaaaaaaa"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[listen]\ndata = \"nope\"", "listen.data"),
            ("[listen]\nadmin = \"0.0.0.0:9090\"", "listen.admin"),
            ("[upstream]\nurl = \"ftp://x\"", "upstream.url"),
            ("[upstream]\nurl = \"http://x/path\"", "upstream.url"),
            ("[limits]\nmax_body_bytes = 1", "limits.max_body_bytes"),
            ("[upstream]\ntimeout_ms = 0", "upstream.timeout_ms"),
            ("[actions.\"Bad-Name\"]", "actions.Bad-Name"),
            ("[tls]\ncert = \"/nonexistent\"\nkey = \"/nonexistent\"", "tls.cert"),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text, &ENV).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
        }
        let err = Config::from_toml("[listen]\ndta = \"x\"", &ENV).unwrap_err();
        assert!(err.problem.contains("dta"), "{err}");
        assert_eq!(err.key, "line 2");
    }

    #[test]
    fn secrets_come_from_the_environment() {
        let err = Config::from_toml("", &[("EKYC_UPSTREAM_SECRET_ID", "x")]).unwrap_err();
        assert_eq!(err.key, "EKYC_UPSTREAM_SECRET_KEY");
        let err = Config::from_toml(
            "",
            &[("EKYC_UPSTREAM_SECRET_ID", "x"), ("EKYC_UPSTREAM_SECRET_KEY", "y")],
        )
        .unwrap_err();
        assert_eq!(err.key, "EKYC_MASTER_KEY");
        let c = Config::from_toml("", &ENV).unwrap();
        assert!(!format!("{c:?}").contains("platform-key"));
    }

    #[test]
    fn webhooks_need_a_secret_and_sane_timing() {
        let c = Config::from_toml("", &ENV).unwrap();
        assert!(c.webhooks.urls.is_empty());
        assert_eq!(c.webhooks.retry_for_seconds, 72 * 3600);
        let with_urls = "[webhooks]\nurls = [\"https://hooks.example.com/ekyc\"]\n";
        let err = Config::from_toml(with_urls, &ENV).unwrap_err();
        assert_eq!(err.key, "EKYC_WEBHOOK_SECRET");
        let mut env = ENV.to_vec();
        env.push(("EKYC_WEBHOOK_SECRET", "whsec_0123456789abcdef"));
        let c = Config::from_toml(with_urls, &env).unwrap();
        assert_eq!(c.webhooks.urls, ["https://hooks.example.com/ekyc"]);
        assert!(!format!("{c:?}").contains("whsec_0123456789abcdef"));
        for (text, key) in [
            ("[webhooks]\nurls = [\"ftp://x/\"]", "webhooks.urls[0]"),
            ("[webhooks]\nretry_for_hours = 23", "webhooks.retry_for_hours"),
            (
                "[webhooks]\nlease_seconds = 5\ntimeout_ms = 5000",
                "webhooks.lease_seconds",
            ),
            (
                "[webhooks]\ninitial_backoff_seconds = 60\nmax_backoff_seconds = 30",
                "webhooks.max_backoff_seconds",
            ),
        ] {
            assert_eq!(Config::from_toml(text, &env).unwrap_err().key, key, "{text}");
        }
    }

    #[test]
    fn a_billable_action_without_a_price_is_refused_naming_the_key() {
        // No price list at all: nothing is billed at a price nobody configured.
        let bare = Config::from_toml("[actions.LivenessCompare]\n", &ENV).unwrap();
        assert_eq!(bare.prices.default, None);
        let err = bare.check_prices().unwrap_err();
        assert_eq!(err.key, "actions.LivenessCompare.prices");
        assert!(err.problem.contains("billing.default_unit"), "{err}");
        let priced =
            "[actions.LivenessCompare]\n[[actions.LivenessCompare.prices]]\nfrom = \"2026-03\"\nunit = \"0.05\"\n";
        Config::from_toml(priced, &ENV).unwrap().check_prices().unwrap();
        // One action of two without a price, a free one, and the default for the rest.
        let partly = format!("{priced}[actions.DetectAuth]\n[actions.GetFaceIdResultIntl]\nbillable = false\n");
        let err = Config::from_toml(&partly, &ENV).unwrap().check_prices().unwrap_err();
        assert_eq!(err.key, "actions.DetectAuth.prices");
        let free = priced.to_string() + "[actions.GetFaceIdResultIntl]\nbillable = false\n";
        Config::from_toml(&free, &ENV).unwrap().check_prices().unwrap();
        let defaulted = format!("[billing]\ndefault_unit = \"0.10\"\n{partly}");
        Config::from_toml(&defaulted, &ENV).unwrap().check_prices().unwrap();
        // The built-in catalog is billable: it needs the default or prices of its own.
        assert_eq!(
            Config::from_toml("", &ENV).unwrap().check_prices().unwrap_err().key,
            "actions.ApplyLivenessToken.prices"
        );
    }

    /// The example file shows every key the parser accepts, set or commented out, and
    /// no key it does not: the list comes from the raw structs themselves, so a new key
    /// without an example fails here.
    #[test]
    fn the_example_file_shows_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let is_setting = |line: &str| {
            line.starts_with('[')
                || line.split_once('=').is_some_and(|(key, _)| {
                    let key = key.trim_end();
                    !key.is_empty()
                        && key
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                })
        };
        let shown: Vec<&str> = text
            .lines()
            .map(|line| match line.strip_prefix('#').map(str::trim_start) {
                Some(setting) if is_setting(setting) => setting,
                _ => line,
            })
            .collect();
        let shown: toml::Table = toml::from_str(&shown.join("\n"))
            .unwrap_or_else(|e| panic!("config/gateway.toml with its examples uncommented: {e}"));
        let shown = keys::keys_in(&toml::Value::Table(shown));
        let accepted = keys::accepted_keys();
        assert!(accepted.contains("billing.credit_limit") && accepted.contains("actions.*.prices.tiers.up_to"));
        let missing: Vec<_> = accepted.difference(&shown).collect();
        assert!(
            missing.is_empty(),
            "config/gateway.toml shows no example of {missing:?}"
        );
        let unknown: Vec<_> = shown.difference(&accepted).collect();
        assert!(
            unknown.is_empty(),
            "config/gateway.toml shows keys the parser refuses: {unknown:?}"
        );
    }

    #[test]
    fn shipped_example_configs_are_valid() {
        for file in ["config/gateway.toml", "config/demo.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = Config::from_toml(&text, &ENV).and_then(|c| c.check_prices()) {
                panic!("{file}: {e}");
            }
        }
    }
}
