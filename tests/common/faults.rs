//! Fault injection and load for the metering tests: a TCP relay in front of PostgreSQL
//! that can cut every connection, hold every byte (a black hole) or swallow the reply to
//! a COMMIT, and a load
//! generator that keeps the clients' own tally of successful calls.

use super::*;
use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A TCP relay on a free port. `cut` ends every open connection and refuses new ones
/// (the database is unreachable); `swallow_next_commit_reply` lets the next COMMIT
/// through and drops the server's answer, then the connection: the transaction is
/// committed but the client never hears so. `hold` keeps connections open and forwards
/// nothing until `release`: a database that stopped answering. `strand_next_transaction`
/// does so for good on the connection that next sends a BEGIN while the others work: a
/// primary gone silent after a failover, a partition healed for new connections only.
pub struct TcpRelay {
    pub addr: SocketAddr,
    shared: Arc<RelayShared>,
    task: JoinHandle<()>,
}

struct RelayShared {
    target: SocketAddr,
    cut: AtomicBool,
    /// Bumped to end every open connection.
    generation: watch::Sender<u64>,
    swallow_commit: AtomicBool,
    pub swallowed: AtomicU64,
    held: watch::Sender<bool>,
    /// Bytes that arrived while held, either way.
    held_bytes: AtomicU64,
    strand_at_begin: AtomicBool,
}

impl TcpRelay {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(RelayShared {
            target,
            cut: AtomicBool::new(false),
            generation: watch::channel(0).0,
            swallow_commit: AtomicBool::new(false),
            swallowed: AtomicU64::new(0),
            held: watch::channel(false).0,
            held_bytes: AtomicU64::new(0),
            strand_at_begin: AtomicBool::new(false),
        });
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if accept_shared.cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                tokio::spawn(relay(client, accept_shared.clone()));
            }
        });
        Self { addr, shared, task }
    }

    /// A relay in front of `db`'s server.
    pub async fn in_front_of(db: &PgDatabase) -> Self {
        let url = db.url();
        let host_port = url.split_once('@').unwrap().1.split_once('/').unwrap().0;
        Self::start(host_port.to_socket_addrs().unwrap().next().unwrap()).await
    }

    /// `db`'s URL through this relay.
    pub fn store_url(&self, db: &PgDatabase) -> String {
        let url = db.url();
        let (auth, rest) = url.split_once('@').unwrap();
        format!("{auth}@{}/{}", self.addr, rest.split_once('/').unwrap().1)
    }

    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    pub fn hold(&self) {
        self.shared.held.send_replace(true);
    }

    pub fn release(&self) {
        self.shared.held.send_replace(false);
    }

    /// The connection that next sends a BEGIN forwards nothing from then on, and stays
    /// open: its client waits for an answer that never comes.
    pub fn strand_next_transaction(&self) {
        self.shared.strand_at_begin.store(true, Ordering::SeqCst);
    }

    /// Bytes that arrived while held or stranded: something is waiting on the database.
    pub fn held_bytes(&self) -> u64 {
        self.shared.held_bytes.load(Ordering::SeqCst)
    }

    pub fn swallow_next_commit_reply(&self) {
        self.shared.swallow_commit.store(true, Ordering::SeqCst);
    }

    /// COMMIT replies swallowed so far.
    pub fn swallowed(&self) -> u64 {
        self.shared.swallowed.load(Ordering::SeqCst)
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn relay(client: TcpStream, shared: Arc<RelayShared>) {
    let Ok(server) = TcpStream::connect(shared.target).await else {
        return;
    };
    let mut generation = shared.generation.subscribe();
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let commit_sent = Arc::new(AtomicBool::new(false));
    let upstream = {
        let (shared, commit_sent) = (shared.clone(), commit_sent.clone());
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = client_read.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                if shared.swallow_commit.load(Ordering::SeqCst) && contains(&buf[..n], b"COMMIT") {
                    commit_sent.store(true, Ordering::SeqCst);
                }
                if shared.strand_at_begin.load(Ordering::SeqCst)
                    && contains(&buf[..n], b"BEGIN")
                    && shared.strand_at_begin.swap(false, Ordering::SeqCst)
                {
                    shared.held_bytes.fetch_add(n as u64, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
                wait_while_held(&shared, n).await;
                server_write.write_all(&buf[..n]).await?;
            }
        }
    };
    let downstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = server_read.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            // The client waits for each answer before its next statement, so what
            // arrives after the COMMIT went out is the COMMIT's answer.
            if commit_sent.load(Ordering::SeqCst) && shared.swallow_commit.swap(false, Ordering::SeqCst) {
                shared.swallowed.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
            wait_while_held(&shared, n).await;
            client_write.write_all(&buf[..n]).await?;
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
        _ = generation.changed() => {}
    }
}

async fn wait_while_held(shared: &RelayShared, bytes: usize) {
    let mut held = shared.held.subscribe();
    if *held.borrow_and_update() {
        shared.held_bytes.fetch_add(bytes as u64, Ordering::SeqCst);
        let _ = held.wait_for(|held| !held).await;
    }
}

fn contains(bytes: &[u8], word: &[u8]) -> bool {
    bytes.windows(word.len()).any(|w| w == word)
}

/// One tenant of a load: its account id and a signer for its credential.
#[derive(Clone)]
pub struct LoadTenant {
    pub account: String,
    pub signer: Signer,
}

/// Creates `count` activated accounts `load-NN` with a credential each, through the
/// admin API at `admin`.
pub async fn create_tenants(admin: SocketAddr, count: usize) -> Vec<LoadTenant> {
    let mut tenants = Vec::new();
    for i in 0..count {
        let account = format!("load-{i:02}");
        let (status, _) = admin_at(
            admin,
            "POST",
            "/v1/accounts",
            Some(serde_json::json!({"id": account, "name": account})),
        )
        .await;
        assert_eq!(status, 201, "create {account}");
        admin_at(admin, "POST", &format!("/v1/accounts/{account}/activate"), None).await;
        let (_, credential) = admin_at(admin, "POST", &format!("/v1/accounts/{account}/credentials"), None).await;
        tenants.push(LoadTenant {
            account,
            signer: Signer::new(
                credential["secret_id"].as_str().unwrap(),
                credential["secret_key"].as_str().unwrap(),
                "faceid",
            ),
        });
    }
    tenants
}

/// Waits until the gateway at `data` knows `tenant` (state reaches every process).
pub async fn until_known(data: SocketAddr, tenant: &LoadTenant) {
    poll_until("the tenant to reach the gateway", Duration::from_secs(10), || async {
        let request = signed_call(
            &format!("http://{data}/"),
            &data.to_string(),
            "DescribeServiceStatus",
            b"{}",
            &tenant.signer,
        );
        error_code(&send(&http1_client(), request).await)
            .is_none()
            .then_some(())
    })
    .await;
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Complete answers without an `Error`, per (account, action).
    pub ok: BTreeMap<(String, String), u64>,
    pub api_errors: u64,
    /// Calls the gateway refused, by error code (suspended accounts, for instance).
    pub refused: BTreeMap<String, u64>,
    /// Requests that got no complete answer (connection refused or cut).
    pub failed: u64,
}

impl Tally {
    pub fn total_ok(&self) -> u64 {
        self.ok.values().sum()
    }

    fn merge(&mut self, other: Tally) {
        for (key, n) in other.ok {
            *self.ok.entry(key).or_default() += n;
        }
        self.api_errors += other.api_errors;
        self.failed += other.failed;
        for (code, n) in other.refused {
            *self.refused.entry(code).or_default() += n;
        }
    }
}

/// A load of signed calls spread over `targets` (data addresses), tenants and actions.
pub struct Load {
    pub targets: Vec<SocketAddr>,
    pub tenants: Vec<LoadTenant>,
    pub actions: Vec<&'static str>,
    pub concurrency: usize,
}

/// Runs until `calls` have been sent or `stop` is set, and returns the clients' tally.
/// Workers also report successes as they happen through `progress`.
pub async fn run_load(load: Arc<Load>, calls: usize, stop: Arc<AtomicBool>, progress: Arc<AtomicU64>) -> Tally {
    let next = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(Mutex::new(Tally::default()));
    let mut workers = Vec::new();
    for _ in 0..load.concurrency {
        let (load, next, total, stop, progress) = (
            load.clone(),
            next.clone(),
            total.clone(),
            stop.clone(),
            progress.clone(),
        );
        workers.push(tokio::spawn(async move {
            let client = http1_client();
            let mut tally = Tally::default();
            while !stop.load(Ordering::SeqCst) {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= calls {
                    break;
                }
                let tenant = &load.tenants[i % load.tenants.len()];
                let action = load.actions[(i / load.tenants.len()) % load.actions.len()];
                let target = load.targets[i % load.targets.len()];
                let request = signed_call(
                    &format!("http://{target}/"),
                    &target.to_string(),
                    action,
                    b"{}",
                    &tenant.signer,
                );
                match complete_answer(&client, request).await {
                    Some(answer) if answer["Response"].get("Error").is_none() => {
                        *tally
                            .ok
                            .entry((tenant.account.clone(), action.to_string()))
                            .or_default() += 1;
                        progress.fetch_add(1, Ordering::SeqCst);
                    }
                    Some(answer) => {
                        let code = answer["Response"]["Error"]["Code"].as_str().unwrap_or("");
                        if code == ekyc_gateway::sim::INJECTED_ERROR {
                            tally.api_errors += 1;
                        } else {
                            *tally.refused.entry(code.to_string()).or_default() += 1;
                        }
                    }
                    None => tally.failed += 1,
                }
            }
            total.lock().unwrap().merge(tally);
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    std::mem::take(&mut *total.lock().unwrap())
}

/// The parsed answer, or None when the exchange did not complete.
async fn complete_answer(client: &HttpClient, request: Request<Full<Bytes>>) -> Option<serde_json::Value> {
    let response = client.request(request).await.ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

/// Billed calls per (account, action) over `months`, read from the store at
/// `store_url`: a run that crosses a month's end is billed in both months.
pub async fn billed(store_url: &str, tenants: &[LoadTenant], months: &[String]) -> BTreeMap<(String, String), u64> {
    let store = ekyc_gateway::store::Store::connect(store_url).await.unwrap();
    let mut billed = BTreeMap::new();
    for tenant in tenants {
        for month in months {
            for (action, calls) in store.usage(&tenant.account, month).await.unwrap() {
                *billed.entry((tenant.account.clone(), action)).or_default() += calls;
            }
        }
    }
    billed
}

/// The simulator's successes over `actions`.
pub async fn sim_successes(sim: &SimHandle, actions: &[&str]) -> u64 {
    let mut total = 0;
    for action in actions {
        total += sim.successes(action).await;
    }
    total
}

/// The billing months (UTC+8) from `since` (unix seconds, taken before the first call)
/// to now, oldest first: the calls of a test that runs across a month's end are
/// counted in two months, and reconciliation must read both.
pub fn billing_months_since(since: i64) -> Vec<String> {
    let month_of = |at: i64| ekyc_gateway::meter::Month::of(at, 8 * 3600).unwrap().to_string();
    let mut months = vec![month_of(since)];
    let now = month_of(ekyc_gateway::clock::Clock::now_unix(&SystemClock));
    if months[0] != now {
        months.push(now);
    }
    months
}
