//! Test harness shared by the integration tests: starts the real gateway
//! (`server::serve` on 127.0.0.1:0), the upstream simulator, a private `redis-server`
//! on a free port and a fresh PostgreSQL database, and tears them all down at the end.
//! Nothing here sleeps to wait: readiness is polled with a deadline.
#![allow(dead_code)]

pub mod faults;
pub mod redis_ha;

use bytes::Bytes;
use ekyc_gateway::app::App;
use ekyc_gateway::clock::{ManualClock, SharedClock, SystemClock};
use ekyc_gateway::config::Config;
use ekyc_gateway::server::{self, Listeners};
use ekyc_gateway::sim::{self, SimConfig};
use ekyc_gateway::tc3::{SignedRequest, Signer};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PLATFORM_SECRET_ID: &str = "AKIDplatformTEST";
pub const PLATFORM_SECRET_KEY: &str = "platform-secret-key-test";
pub const MASTER_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The activated tenant every gateway started by the harness knows.
pub const CLIENT_ACCOUNT: &str = "tenant";
pub const CLIENT_SECRET_ID: &str = "AKIDclientTEST";
pub const CLIENT_SECRET_KEY: &str = "client-secret-key";
pub const CLIENT_API_KEY: &str = "client-api-key-0123456789";

/// `Store::apply_usage_batch_on` with the calls dated on `now`'s day in UTC, as the
/// tests that write batches directly want them.
pub async fn apply_usage_batch(
    store: &ekyc_gateway::store::Store,
    batch: &ekyc_gateway::store::UsageBatch,
    now: i64,
) -> Result<bool, ekyc_gateway::store::StoreError> {
    let day = ekyc_gateway::meter::Month::day_of(now, 0).unwrap_or_default();
    store.apply_usage_batch_on(batch, now, &day).await
}

/// Runs raw SQL against the gateway's billing store on a connection of its own, for
/// the tests of the append-only rule (the store's triggers, not its API, refuse it).
/// Only the statement's own failure is returned: a store that cannot be reached fails
/// the test.
pub async fn execute_raw(app: &App, sql: &str) -> Result<u64, sqlx::Error> {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    let mut connection = sqlx::AnyConnection::connect(&app.config.store_url)
        .await
        .expect("a connection to the gateway's store");
    let done = sqlx::query(sql).execute(&mut connection).await;
    connection.close().await.expect("the store connection closes");
    Ok(done?.rows_affected())
}

/// Checks the sums that migration 0010's triggers keep against the rows they sum: each
/// account's balance, funds and latest funding against its ledger, each usage row's
/// billed calls against billed_usage, and `unbilled_through` against what the whole
/// history says is still to bill (every usage row with more calls than billed).
pub async fn assert_sums_match_history(store_url: &str) {
    use sqlx::{Connection as _, Row as _};
    use std::collections::{BTreeMap, BTreeSet};
    sqlx::any::install_default_drivers();
    let mut connection = sqlx::AnyConnection::connect(store_url)
        .await
        .expect("a connection to the store");
    let mut expected: BTreeMap<String, (i64, i64, Option<i64>)> = BTreeMap::new();
    for row in sqlx::query("SELECT account_id, kind, amount, id FROM ledger")
        .fetch_all(&mut connection)
        .await
        .unwrap()
    {
        let (account, kind, amount, id): (String, String, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
        let sums = expected.entry(account).or_default();
        sums.0 += amount;
        if kind != "charge" {
            sums.1 += amount;
        }
        if kind == "topup" || kind == "credit" {
            sums.2 = sums.2.max(Some(id));
        }
    }
    let kept: BTreeMap<String, (i64, i64, Option<i64>)> =
        sqlx::query("SELECT account_id, balance, funds, latest_funding FROM account_balances")
            .fetch_all(&mut connection)
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), (row.get(1), row.get(2), row.get(3))))
            .collect();
    assert_eq!(kept, expected, "account_balances against the ledger");

    let mut billed: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    for row in sqlx::query("SELECT account_id, month, action, calls FROM billed_usage")
        .fetch_all(&mut connection)
        .await
        .unwrap()
    {
        *billed.entry((row.get(0), row.get(1), row.get(2))).or_default() += row.get::<i64, _>(3);
    }
    let mut to_bill = BTreeSet::new();
    for row in sqlx::query("SELECT account_id, month, action, calls, billed FROM usage")
        .fetch_all(&mut connection)
        .await
        .unwrap()
    {
        let key: (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let (calls, kept): (i64, i64) = (row.get(3), row.get(4));
        let sum = billed.get(&key).copied().unwrap_or(0);
        assert_eq!(kept, sum, "usage.billed of {key:?} against billed_usage");
        if calls > sum {
            to_bill.insert((key.0, key.1, key.2, calls as u64, sum as u64));
        }
    }
    connection.close().await.unwrap();
    let store = ekyc_gateway::store::Store::connect(store_url).await.unwrap();
    assert_eq!(
        unbilled_rows(&store, "9999-12").await,
        to_bill.into_iter().collect::<Vec<_>>(),
        "unbilled_through against the whole history"
    );
}

/// `unbilled_through(month)` as sorted (account, month, action, calls, billed) tuples; a
/// row found twice stays twice.
pub async fn unbilled_rows(store: &ekyc_gateway::store::Store, month: &str) -> Vec<(String, String, String, u64, u64)> {
    let mut rows: Vec<_> = store
        .unbilled_through(month)
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.account_id, u.month, u.action, u.calls, u.billed))
        .collect();
    rows.sort();
    rows
}

/// The unix time of an RFC 3339 time as the JSON interfaces show it.
pub fn unix_of(value: &serde_json::Value) -> i64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not an RFC 3339 time: {value}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .unix_timestamp()
}

/// Polls `check` until it returns `Some`, failing the test after `deadline`.
pub async fn poll_until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A port nothing listens on (bound, then released).
/// Resident memory of process `pid` in KiB (VmRSS).
pub fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

// ---------------------------------------------------------------- simulator

pub struct SimHandle {
    pub addr: SocketAddr,
    pub scheme: &'static str,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl SimHandle {
    pub async fn start(configure: impl FnOnce(&mut SimConfig)) -> Self {
        let mut config = SimConfig::new(PLATFORM_SECRET_ID, PLATFORM_SECRET_KEY);
        config.record_last_request = true;
        configure(&mut config);
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sim::run(listener, config, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            scheme,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stats(&self) -> serde_json::Value {
        get_json(&format!("http://{}/sim/stats", self.addr)).await
    }

    pub async fn successes(&self, action: &str) -> u64 {
        self.stats().await["actions"][action]["success"].as_u64().unwrap()
    }

    /// Everything the simulator has seen, over every action, plus auth failures and
    /// invalid actions: what must not move when a call is refused before it.
    pub async fn seen(&self) -> u64 {
        let stats = self.stats().await;
        let actions: u64 = stats["actions"]
            .as_object()
            .unwrap()
            .values()
            .map(|a| a["success"].as_u64().unwrap() + a["api_error"].as_u64().unwrap())
            .sum();
        actions + stats["auth_failures"].as_u64().unwrap() + stats["invalid_action"].as_u64().unwrap()
    }

    pub async fn last_request(&self) -> serde_json::Value {
        get_json(&format!("http://{}/sim/last-request", self.addr)).await
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// ---------------------------------------------------------------- gateway

pub struct GatewayHandle {
    pub data: SocketAddr,
    pub admin: SocketAddr,
    pub app: Arc<App>,
    _store_dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// What a test gateway charges per call of an action without prices of its own,
/// unless the test sets `billing.default_unit` itself.
pub const TEST_DEFAULT_UNIT: &str = "0.10";

/// `head` then `extra_toml`, with `billing.default_unit = TEST_DEFAULT_UNIT` unless
/// `extra_toml` sets one. The gateway has no price it was not given (`serve` refuses a
/// billable action without one), so the harness writes the tests' price down; it goes
/// in the test's own `[billing]` table when there is one (a table is defined once).
pub fn with_test_prices(head: &str, extra_toml: &str) -> String {
    if extra_toml.contains("default_unit") {
        return format!("{head}{extra_toml}");
    }
    let line = format!("default_unit = \"{TEST_DEFAULT_UNIT}\"\n");
    match extra_toml.lines().position(|l| l.trim() == "[billing]") {
        Some(at) => {
            let mut lines: Vec<String> = extra_toml.lines().map(|l| format!("{l}\n")).collect();
            lines.insert(at + 1, line);
            format!("{head}{}", lines.concat())
        }
        // First, so that keys `extra_toml` writes before any header stay in `head`'s table.
        None => format!("[billing]\n{line}{head}{extra_toml}"),
    }
}

/// A config for a gateway in front of `upstream_url`, from TOML plus the test env.
/// The billing scheduler is off (a test that wants it sets `config.scheduler.enabled`):
/// on the machine's date it would bill the test's months by itself.
pub fn gateway_config(upstream_url: &str, extra_toml: &str) -> Config {
    let text = with_test_prices(&format!("[upstream]\nurl = \"{upstream_url}\"\n"), extra_toml);
    let env = [
        ("EKYC_UPSTREAM_SECRET_ID", PLATFORM_SECRET_ID),
        ("EKYC_UPSTREAM_SECRET_KEY", PLATFORM_SECRET_KEY),
        ("EKYC_MASTER_KEY", MASTER_KEY),
        ("EKYC_ADMIN_TOKEN", ADMIN_TOKEN),
        ("EKYC_BILLING_SCHEDULER", "off"),
    ];
    Config::from_toml(&text, &env).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

impl GatewayHandle {
    /// Starts a gateway in front of `sim` with extra TOML tables appended to the config.
    pub async fn start(sim: &SimHandle, extra_toml: &str) -> Self {
        let config = gateway_config(&format!("{}://{}", sim.scheme, sim.addr), extra_toml);
        Self::start_with(config, Arc::new(SystemClock)).await
    }

    pub async fn start_with_clock(sim: &SimHandle, extra_toml: &str, clock: ManualClock) -> Self {
        let config = gateway_config(&format!("{}://{}", sim.scheme, sim.addr), extra_toml);
        Self::start_with(config, Arc::new(clock)).await
    }

    /// Starts a gateway on `config`; unless the config names a store other than the
    /// default, it gets a fresh SQLite file of its own. The test tenant is seeded.
    pub async fn start_with(config: Config, clock: SharedClock) -> Self {
        Self::start_on(config, clock, std::net::Ipv4Addr::LOCALHOST.into()).await
    }

    /// The same, its data listener on `ip` (the client matrix puts it where `localhost`
    /// resolves first, as clients that try only that address need).
    pub async fn start_on(mut config: Config, clock: SharedClock, ip: std::net::IpAddr) -> Self {
        let mut store_dir = None;
        if config.store_url == "sqlite://./data/billing.db" {
            let dir = tempfile::tempdir().unwrap();
            config.store_url = format!("sqlite://{}/billing.db", dir.path().display());
            store_dir = Some(dir);
        }
        if config.meter.journal_path == std::path::Path::new("./data/meter.journal") {
            let dir = store_dir.get_or_insert_with(|| tempfile::tempdir().unwrap());
            config.meter.journal_path = dir.path().join("meter.journal");
        }
        seed_tenant(&config).await;
        let listeners = Listeners::bind(SocketAddr::new(ip, 0), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let data = listeners.data.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let app = App::new(config, clock).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(app.clone(), listeners, async move {
            let _ = stopped.await;
        }));
        Self {
            data,
            admin,
            app,
            _store_dir: store_dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.data)
    }

    /// Signals shutdown without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Signals shutdown and waits for `server::serve` to return.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        self.join().await;
    }

    pub async fn join(&mut self) {
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = get(&format!("http://{}/metrics", self.admin)).await;
        assert_eq!(status, 200);
        String::from_utf8(body.to_vec()).unwrap()
    }
}

/// Creates the activated test tenant and its credential in the config's store.
pub async fn seed_tenant(config: &Config) {
    let store = ekyc_gateway::store::Store::open(&config.store_url, config.store_migrate_url.as_deref())
        .await
        .unwrap();
    ekyc_gateway::demo::ensure_account_with_credential(
        &store,
        &config.master_key,
        CLIENT_ACCOUNT,
        "Test tenant",
        true,
        CLIENT_SECRET_ID,
        CLIENT_SECRET_KEY,
        CLIENT_API_KEY,
        ekyc_gateway::clock::Clock::now_unix(&SystemClock),
    )
    .await
    .unwrap();
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

// ---------------------------------------------------------------- clients

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

pub async fn get(url: &str) -> (u16, Bytes) {
    let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let response = http1_client().request(request).await.unwrap();
    let status = response.status().as_u16();
    (status, response.into_body().collect().await.unwrap().to_bytes())
}

pub async fn get_json(url: &str) -> serde_json::Value {
    let (status, body) = get(url).await;
    assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// An eKYC API 3.0 call as the SDKs send it, signed with `signer` for `host`.
pub fn signed_call(url: &str, host: &str, action: &str, body: &[u8], signer: &Signer) -> Request<Full<Bytes>> {
    let timestamp = ekyc_gateway::clock::Clock::now_unix(&SystemClock);
    signed_call_at(url, host, action, body, signer, timestamp)
}

/// The same, signed as if sent at `timestamp` (for gateways on a manual clock).
pub fn signed_call_at(
    url: &str,
    host: &str,
    action: &str,
    body: &[u8],
    signer: &Signer,
    timestamp: i64,
) -> Request<Full<Bytes>> {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("host", host.parse().unwrap());
    headers.insert("x-tc-action", action.parse().unwrap());
    headers.insert("x-tc-version", "2018-03-01".parse().unwrap());
    headers.insert("x-tc-region", "ap-singapore".parse().unwrap());
    headers.insert("x-tc-timestamp", timestamp.to_string().parse().unwrap());
    let hash = ekyc_gateway::tc3::sha256_hex(body);
    let authorization = signer.authorization(&SignedRequest {
        method: "POST",
        query: "",
        headers: &headers,
        payload_hash_hex: &hash,
        timestamp,
    });
    headers.insert("authorization", authorization.parse().unwrap());
    let mut request = Request::post(url)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    *request.headers_mut() = headers;
    request
}

pub fn client_signer() -> Signer {
    Signer::new(CLIENT_SECRET_ID, CLIENT_SECRET_KEY, "faceid")
}

/// A call as the test tenant sends it, signed with TC3.
pub fn call(gateway: &GatewayHandle, action: &str, body: &str) -> Request<Full<Bytes>> {
    let client_signer = client_signer();
    signed_call(
        &gateway.url(),
        &gateway.data.to_string(),
        action,
        body.as_bytes(),
        &client_signer,
    )
}

/// A JSON body of about `size` bytes, its pad varied so that a byte hashed twice,
/// skipped or moved changes the hash.
pub fn large_body(size: usize) -> String {
    let pad: String = (0..size)
        .map(|i| char::from(b'a' + ((i * 7 + i / 977) % 26) as u8))
        .collect();
    format!("{{\"IdCard\":\"11204416541220243X\",\"Name\":\"Zhang San\",\"Pad\":\"{pad}\"}}")
}

/// Sends `request` and returns the parsed `Response` object of the answer.
pub async fn send(client: &HttpClient, request: Request<Full<Bytes>>) -> serde_json::Value {
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    value["Response"].clone()
}

pub fn error_code(response: &serde_json::Value) -> Option<&str> {
    response["Error"]["Code"].as_str()
}

// ---------------------------------------------------------------- TLS material

pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub server_config: Arc<rustls::ServerConfig>,
}

/// A self-signed certificate for 127.0.0.1 and localhost, written to a temp dir.
pub fn test_certificate() -> TestCa {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let server_config = ekyc_gateway::tls::server_config(&cert_path, &key_path).unwrap();
    TestCa {
        dir,
        cert_path,
        key_path,
        server_config,
    }
}

// ---------------------------------------------------------------- Redis

/// redis-server on `port`, loopback only, keeping nothing on disk.
fn spawn_redis(port: u16) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (scripts/test installs it)")
}

/// A private `redis-server` on a free port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl RedisServer {
    pub async fn start() -> Self {
        for _ in 0..5 {
            let port = closed_port().await.port();
            let child = spawn_redis(port);
            let mut server = RedisServer { port, child };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // port taken in the meantime: try another
                }
                if server.ping().await {
                    return server;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = server.child.kill();
        }
        panic!("could not start a private redis-server");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new, empty redis-server on the same port (as after a crash without
    /// persistence).
    pub async fn restart(&mut self) {
        self.kill();
        self.child = spawn_redis(self.port);
        let started = Instant::now();
        while !self.ping().await {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not come back"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn command(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut conn).await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------- PostgreSQL

/// A fresh database with a random name on the local PostgreSQL, dropped on drop.
/// The server is `EKYC_TEST_PG` (default `host=127.0.0.1 user=postgres`).
pub struct PgDatabase {
    pub name: String,
    admin_conninfo: String,
    /// Roles made for this database alone (`create_with_roles`), dropped after it.
    roles: Vec<String>,
}

/// The two roles of a production PostgreSQL store (see docs/OPERATIONS.md): the schema
/// owner, which migrations run as, and the gateway's, granted only what it needs.
pub struct PgRoles {
    pub owner_url: String,
    pub gateway_url: String,
    pub gateway_role: String,
}

impl PgDatabase {
    pub async fn create() -> Self {
        let admin_conninfo =
            std::env::var("EKYC_TEST_PG").unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=postgres".into());
        let name = format!("ekyc_test_{}", uuid::Uuid::new_v4().simple());
        let (client, connection) = tokio_postgres::connect(&admin_conninfo, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must be running (scripts/test starts it)");
        tokio::spawn(connection);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        Self {
            name,
            admin_conninfo,
            roles: Vec::new(),
        }
    }

    /// A fresh database owned by a fresh owner role, with a second fresh role for the
    /// gateway that has no rights on it yet (migrations grant them).
    pub async fn create_with_roles() -> (Self, PgRoles) {
        let mut db = Self::create().await;
        let suffix = &db.name["ekyc_test_".len()..];
        let (owner, gateway) = (format!("ekyc_owner_{suffix}"), format!("ekyc_gw_{suffix}"));
        db.admin_sql(&format!(
            "CREATE ROLE {owner} LOGIN PASSWORD 'ekyc-test'; CREATE ROLE {gateway} LOGIN PASSWORD 'ekyc-test'; \
             ALTER DATABASE {0} OWNER TO {owner}; REVOKE ALL ON DATABASE {0} FROM PUBLIC; \
             GRANT CONNECT ON DATABASE {0} TO {gateway}",
            db.name
        ))
        .await;
        // PostgreSQL before 15 lets every role create in `public`; the owner's alone here.
        db.admin_sql_in_database("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            .await;
        db.admin_sql_in_database(&format!("ALTER SCHEMA public OWNER TO {owner}"))
            .await;
        db.roles = vec![owner.clone(), gateway.clone()];
        let url = db.url();
        let with_user = |role: &str| {
            let (_, rest) = url.split_once('@').unwrap();
            format!("postgres://{role}:ekyc-test@{rest}")
        };
        let roles = PgRoles {
            owner_url: with_user(&owner),
            gateway_url: with_user(&gateway),
            gateway_role: gateway,
        };
        (db, roles)
    }

    /// Runs SQL as the server's admin user inside this database.
    pub async fn admin_sql_in_database(&self, sql: &str) {
        let (client, connection) = tokio_postgres::connect(&self.conninfo(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client.batch_execute(sql).await.unwrap();
    }

    /// Runs SQL as the server's admin user (e.g. to cut the database off).
    pub async fn admin_sql(&self, sql: &str) {
        let (client, connection) = tokio_postgres::connect(&self.admin_conninfo, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client.batch_execute(sql).await.unwrap();
    }

    /// Refuses new connections to the database and ends the open ones: the store is down.
    pub async fn cut(&self) {
        self.admin_sql(&format!(
            "ALTER DATABASE {0} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}'",
            self.name
        ))
        .await;
    }

    pub async fn restore(&self) {
        self.admin_sql(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.name))
            .await;
    }

    /// The fresh database as a `postgres://` URL, for the gateway's `store.url`.
    pub fn url(&self) -> String {
        let mut user = "postgres".to_string();
        let mut password = None;
        let mut host = "127.0.0.1".to_string();
        let mut port = "5432".to_string();
        for kv in self.admin_conninfo.split_whitespace() {
            match kv.split_once('=') {
                Some(("user", v)) => user = v.to_string(),
                Some(("password", v)) => password = Some(v.to_string()),
                Some(("host", v)) => host = v.to_string(),
                Some(("port", v)) => port = v.to_string(),
                _ => {}
            }
        }
        let auth = match password {
            Some(p) => format!("{user}:{p}"),
            None => user,
        };
        format!("postgres://{auth}@{host}:{port}/{}", self.name)
    }

    /// Connection string for the fresh database.
    pub fn conninfo(&self) -> String {
        let base: Vec<&str> = self
            .admin_conninfo
            .split_whitespace()
            .filter(|kv| !kv.starts_with("dbname="))
            .collect();
        format!("{} dbname={}", base.join(" "), self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (conninfo, name, roles) = (self.admin_conninfo.clone(), self.name.clone(), self.roles.clone());
        // Drop cannot await; a short-lived runtime on its own thread does the cleanup.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, connection)) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                    for role in roles {
                        let _ = client.batch_execute(&format!("DROP ROLE IF EXISTS {role}")).await;
                    }
                }
            });
        })
        .join();
    }
}

// ---------------------------------------------------------------- SDK vectors

/// A raw request from `tests/vectors/tc3/`, ready to send to `addr` unchanged.
pub fn vector_request(name: &str, addr: SocketAddr) -> Request<Full<Bytes>> {
    let path = format!("{}/tests/vectors/tc3/{name}", env!("CARGO_MANIFEST_DIR"));
    let raw = std::fs::read(path).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let body = Bytes::copy_from_slice(&raw[split + 4..]);
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap().split(' ');
    let method = request_line.next().unwrap();
    let target = request_line.next().unwrap();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{target}"))
        .body(Full::new(body))
        .unwrap();
    for line in lines {
        let (name, value) = line.split_once(": ").unwrap();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("connection") {
            continue;
        }
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    request
}

/// `X-TC-Timestamp` (or the v1 `Timestamp` parameter) of a vector.
pub fn vector_timestamp(name: &str) -> i64 {
    let path = format!("{}/tests/vectors/tc3/{name}", env!("CARGO_MANIFEST_DIR"));
    let raw = String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned();
    if let Some(line) = raw.lines().find(|l| l.starts_with("X-TC-Timestamp: ")) {
        return line["X-TC-Timestamp: ".len()..].trim().parse().unwrap();
    }
    let start = raw.find("&Timestamp=").unwrap() + "&Timestamp=".len();
    raw[start..].split('&').next().unwrap().parse().unwrap()
}

/// Sends an admin API request with the test admin token.
pub async fn admin(
    gateway: &GatewayHandle,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    admin_with_token(gateway, method, path, body, Some(ADMIN_TOKEN)).await
}

pub async fn admin_with_token(
    gateway: &GatewayHandle,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    admin_request(gateway.admin, method, path, body, token).await
}

/// An admin API call with the test admin token to any admin listener.
pub async fn admin_at(
    admin_addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    admin_request(admin_addr, method, path, body, Some(ADMIN_TOKEN)).await
}

async fn admin_request(
    admin_addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{admin_addr}{path}"))
        .body(Full::new(body.map(|b| Bytes::from(b.to_string())).unwrap_or_default()))
        .unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let response = http1_client().request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

/// A call authenticated with an API key, as plain HTTP clients send it.
pub fn api_key_call(gateway: &GatewayHandle, api_key: &str, action: &str, body: &str) -> Request<Full<Bytes>> {
    let mut request = Request::post(gateway.url())
        .header("authorization", format!("Bearer {api_key}"))
        .header("x-tc-action", action)
        .header("x-tc-version", "2018-03-01")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    request.headers_mut().remove("host");
    request
}

// ---------------------------------------------------------------- processes

/// Everything a child process writes to stderr, collected as it comes.
pub struct ChildLogs {
    text: Arc<std::sync::Mutex<String>>,
}

impl ChildLogs {
    pub fn capture(child: &mut Child) -> Self {
        use std::io::{BufRead, BufReader};
        let stderr = child.stderr.take().expect("spawned with Stdio::piped() stderr");
        let text = Arc::new(std::sync::Mutex::new(String::new()));
        let sink = text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Self { text }
    }

    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Waits until `needle` has been logged.
    pub async fn wait_for(&self, needle: &str) {
        let started = Instant::now();
        while !self.text().contains(needle) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never logged {needle:?}:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `ekyc-gateway serve` as its own process, killed on drop.
pub struct GatewayProcess {
    pub child: Child,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    pub logs: ChildLogs,
    _dir: Option<tempfile::TempDir>,
}

impl GatewayProcess {
    /// Starts `serve` with the `[listen]` table filled in and `extra_toml` after it.
    pub async fn start(extra_toml: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut process = Self::start_in(dir.path(), extra_toml, env).await;
        process._dir = Some(dir);
        process
    }

    /// The same, in a working directory the caller keeps: a process started again in
    /// it finds the previous one's ./data (meter journal, SQLite store).
    pub async fn start_in(dir: &std::path::Path, extra_toml: &str, env: &[(&str, &str)]) -> Self {
        let data = closed_port().await;
        let admin = closed_port().await;
        let file = dir.join("gateway.toml");
        std::fs::write(
            &file,
            with_test_prices(
                &format!("[listen]\ndata = \"{data}\"\nadmin = \"{admin}\"\n"),
                extra_toml,
            ),
        )
        .unwrap();
        // The working directory is the process's own: its ./data (SQLite store, meter
        // journal) is private to it.
        let mut child = Command::new(env!("CARGO_BIN_EXE_ekyc-gateway"))
            .args(["serve", "--config"])
            .arg(&file)
            .current_dir(dir)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = ChildLogs::capture(&mut child);
        logs.wait_for("ekyc-gateway serving").await;
        Self {
            child,
            data,
            admin,
            logs,
            _dir: None,
        }
    }

    /// SIGKILL: no shutdown hook, no final flush.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.data)
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let mut child = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap());
        tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment a gateway process needs, for the test secrets; the billing scheduler
/// off, as in `gateway_config`.
pub fn process_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("EKYC_UPSTREAM_SECRET_ID", PLATFORM_SECRET_ID),
        ("EKYC_UPSTREAM_SECRET_KEY", PLATFORM_SECRET_KEY),
        ("EKYC_MASTER_KEY", MASTER_KEY),
        ("EKYC_ADMIN_TOKEN", ADMIN_TOKEN),
        ("EKYC_BILLING_SCHEDULER", "off"),
    ]
}

/// Runs tests/sdk/call.py (an official SDK call as `secret_id`) and returns its JSON
/// outcome: `{"ok": true, "response"}` or `{"ok": false, "code", "message"}`.
pub async fn sdk_call_as(
    python: PathBuf,
    endpoint: String,
    (secret_id, secret_key): (&str, &str),
    action: &str,
    params: &str,
    extra: &[&str],
) -> serde_json::Value {
    let script = format!("{}/tests/sdk/call.py", env!("CARGO_MANIFEST_DIR"));
    let mut args: Vec<String> = vec![
        script,
        endpoint,
        secret_id.into(),
        secret_key.into(),
        action.into(),
        params.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = tokio::task::spawn_blocking(move || std::process::Command::new(python).args(args).output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The interpreter of one of the SDK venvs `scripts/test` makes (`var` names it).
pub fn sdk_python(var: &str, venv: &str) -> PathBuf {
    if let Ok(path) = std::env::var(var) {
        return PathBuf::from(path);
    }
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| format!("{}/target", env!("CARGO_MANIFEST_DIR")));
    let path = PathBuf::from(target).join(venv).join("bin/python");
    assert!(
        path.exists(),
        "{var} is not set and {} does not exist: run scripts/test once",
        path.display()
    );
    path
}

// ---------------------------------------------------------------- admin API steps

/// Creates the account `id` (named `id`) through the admin API and activates it.
pub async fn account(gateway: &GatewayHandle, id: &str) {
    let (status, body) = admin(
        gateway,
        "POST",
        "/v1/accounts",
        Some(serde_json::json!({"id": id, "name": id})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    admin(gateway, "POST", &format!("/v1/accounts/{id}/activate"), None).await;
}

/// Records a top-up of `amount` (a decimal string) under `key`; it must be accepted.
pub async fn topup(gateway: &GatewayHandle, id: &str, amount: &str, key: &str) -> serde_json::Value {
    let (status, body) = admin(
        gateway,
        "POST",
        &format!("/v1/accounts/{id}/topups"),
        Some(serde_json::json!({"amount": amount, "idempotency_key": key})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body
}
