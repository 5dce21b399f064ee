//! Redis deployments that fail over, for the high-availability tests: a master with
//! replicas watched by sentinels, and a Cluster of masters with a replica each. Every
//! server is a real `redis-server` process (sentinels run as `redis-server --sentinel`,
//! the program Debian's `redis-sentinel` starts) on a free port, keeping nothing on disk
//! and killed on drop. Readiness is polled with a deadline, never slept on.

use super::{
    GatewayHandle, PgDatabase, SimHandle, admin, closed_port, error_code, gateway_config, http1_client, poll_until,
    send, signed_call,
};
use ekyc_gateway::tc3::Signer;
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// One `redis-server` process.
pub struct RedisNode {
    pub port: u16,
    child: Option<Child>,
}

impl RedisNode {
    /// A server on a free port with `extra` arguments, answering PING.
    pub async fn start(dir: &Path, extra: &[&str]) -> Self {
        for _ in 0..5 {
            let port = closed_port().await.port();
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
                .args(["--appendonly", "no", "--dir", node_dir.to_str().unwrap()])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (scripts/test installs it)");
            let mut node = RedisNode {
                port,
                child: Some(child),
            };
            if node.until_answering(Duration::from_secs(10)).await {
                return node;
            }
            node.kill();
        }
        panic!("could not start a redis-server");
    }

    /// A sentinel on a free port watching `master_port` under `master_name`, agreeing
    /// with one other sentinel (quorum 2) after `down_after_ms` without an answer.
    pub async fn start_sentinel(dir: &Path, master_name: &str, master_port: u16, down_after_ms: u64) -> Self {
        for _ in 0..5 {
            let port = closed_port().await.port();
            // A sentinel rewrites its configuration file as it learns the topology.
            let conf = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {master_name} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {master_name} {down_after_ms}\n\
                     sentinel failover-timeout {master_name} 10000\n\
                     sentinel parallel-syncs {master_name} 2\n",
                    dir = dir.display()
                ),
            )
            .unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed");
            let mut node = RedisNode {
                port,
                child: Some(child),
            };
            if node.until_answering(Duration::from_secs(10)).await {
                return node;
            }
            node.kill();
        }
        panic!("could not start a sentinel");
    }

    async fn until_answering(&mut self, deadline: Duration) -> bool {
        let started = std::time::Instant::now();
        while started.elapsed() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false; // the port was taken meanwhile
            }
            if self.query::<String>(&["PING"]).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub async fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut conn = tokio::time::timeout(Duration::from_secs(2), client.get_multiplexed_async_connection())
            .await
            .map_err(|_| redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut conn).await
    }

    /// SIGKILL: no goodbye to replicas, sentinels or clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A master, two replicas and three sentinels (quorum 2).
pub struct SentinelSet {
    pub master_name: String,
    pub servers: Vec<RedisNode>,
    pub sentinels: Vec<RedisNode>,
    _dir: tempfile::TempDir,
}

impl SentinelSet {
    pub async fn start(down_after_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let master = RedisNode::start(dir.path(), &[]).await;
        let replica_of = master.port.to_string();
        let mut servers = vec![master];
        for _ in 0..2 {
            servers.push(RedisNode::start(dir.path(), &["--replicaof", "127.0.0.1", &replica_of]).await);
        }
        let master_name = "ekyc".to_string();
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(RedisNode::start_sentinel(dir.path(), &master_name, servers[0].port, down_after_ms).await);
        }
        let set = SentinelSet {
            master_name,
            servers,
            sentinels,
            _dir: dir,
        };
        // Every sentinel knows both replicas and the two other sentinels, and both
        // replicas are in sync: only then can a failover happen.
        for sentinel in &set.sentinels {
            poll_until("sentinels to discover the set", Duration::from_secs(30), || async {
                let replicas: Vec<redis::Value> =
                    sentinel.query(&["SENTINEL", "REPLICAS", &set.master_name]).await.ok()?;
                let peers: Vec<redis::Value> = sentinel
                    .query(&["SENTINEL", "SENTINELS", &set.master_name])
                    .await
                    .ok()?;
                (replicas.len() == 2 && peers.len() == 2).then_some(())
            })
            .await;
        }
        for replica in &set.servers[1..] {
            poll_until("replicas to sync", Duration::from_secs(30), || async {
                let info: String = replica.query(&["INFO", "replication"]).await.ok()?;
                info.contains("master_link_status:up").then_some(())
            })
            .await;
        }
        set
    }

    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisNode::url).collect()
    }

    /// The master's port as `sentinel` names it now.
    pub async fn master_port_by(&self, sentinel: &RedisNode) -> Option<u16> {
        let (_host, port): (String, String) = sentinel
            .query(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.master_name])
            .await
            .ok()?;
        port.parse().ok()
    }

    /// The server every sentinel names as master, once they agree.
    pub async fn agreed_master(&self) -> Option<usize> {
        let mut agreed = None;
        for sentinel in &self.sentinels {
            let port = self.master_port_by(sentinel).await?;
            if agreed.is_some_and(|p| p != port) {
                return None;
            }
            agreed = Some(port);
        }
        let port = agreed?;
        self.servers.iter().position(|s| s.port == port && s.is_running())
    }
}

/// Three masters with one replica each, made a Cluster by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisNode>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub async fn start(node_timeout_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let timeout = node_timeout_ms.to_string();
        let mut nodes = Vec::new();
        for _ in 0..6 {
            // The bus port is named: the default (port + 10000) lies past 65535 for
            // half of Linux's ephemeral range.
            let bus = closed_port().await.port().to_string();
            nodes.push(
                RedisNode::start(
                    dir.path(),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &bus,
                        "--cluster-node-timeout",
                        &timeout,
                        "--cluster-config-file",
                        "nodes.conf",
                        // A replica syncs at once rather than after the default 5 s
                        // wait for more replicas; until it has, it may not fail over.
                        "--repl-diskless-sync-delay",
                        "0",
                    ],
                )
                .await,
            );
        }
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli must be installed (Debian's redis-tools, with redis-server)");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        for node in &cluster.nodes {
            poll_until("every node to see the cluster ok", Duration::from_secs(30), || async {
                let info: String = node.query(&["CLUSTER", "INFO"]).await.ok()?;
                info.contains("cluster_state:ok").then_some(())
            })
            .await;
            poll_until("every replica to sync", Duration::from_secs(30), || async {
                let info: String = node.query(&["INFO", "replication"]).await.ok()?;
                (info.contains("role:master") || info.contains("master_link_status:up")).then_some(())
            })
            .await;
        }
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisNode::url).collect()
    }

    /// Index of the node serving `key`'s slot as master, as `asked` sees it.
    pub async fn master_of(&self, asked: usize, key: &str) -> Option<usize> {
        let slot: i64 = self.nodes[asked].query(&["CLUSTER", "KEYSLOT", key]).await.ok()?;
        let nodes: String = self.nodes[asked].query(&["CLUSTER", "NODES"]).await.ok()?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((from, to)) => {
                    from.parse::<i64>().is_ok_and(|f| f <= slot) && to.parse::<i64>().is_ok_and(|t| slot <= t)
                }
                None => range.parse::<i64>() == Ok(slot),
            });
            if serves {
                let port: u16 = fields[1].split(['@', ':']).nth(1)?.parse().ok()?;
                return self.nodes.iter().position(|n| n.port == port);
            }
        }
        None
    }
}

/// A gateway on `sim` and `db` whose `[state]` section is `state` (no rate limit, a
/// re-sync every 500 ms).
pub async fn gateway_on(sim: &SimHandle, db: &PgDatabase, state: &str) -> GatewayHandle {
    let mut config = gateway_config(
        &format!("http://{}", sim.addr),
        &format!("[rate_limit]\ndefault_qps = 0\n[state]\n{state}\nresync_interval_ms = 500\n"),
    );
    config.store_url = db.url();
    GatewayHandle::start_with(config, Arc::new(ekyc_gateway::clock::SystemClock)).await
}

/// A TOML array of the URLs.
pub fn toml_list(urls: &[String]) -> String {
    let quoted: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The Tencent error code of a DetectAuth call, None when it was served.
pub async fn code_of(gateway: &GatewayHandle, signer: &Signer) -> Option<String> {
    let request = signed_call(&gateway.url(), &gateway.data.to_string(), "DetectAuth", b"{}", signer);
    error_code(&send(&http1_client(), request).await).map(str::to_string)
}

pub async fn until_code(gateway: &GatewayHandle, signer: &Signer, want: Option<&str>, deadline: Duration) {
    poll_until(&format!("{} to answer {want:?}", gateway.data), deadline, || async {
        (code_of(gateway, signer).await.as_deref() == want).then_some(())
    })
    .await;
}

/// An activated account with one credential, created through `gateway`'s admin API.
pub async fn active_account(gateway: &GatewayHandle, id: &str) -> Signer {
    let (status, body) = admin(gateway, "POST", "/v1/accounts", Some(json!({"id": id, "name": id}))).await;
    assert_eq!(status, 201, "{body}");
    admin(gateway, "POST", &format!("/v1/accounts/{id}/activate"), None).await;
    let (_, created) = admin(gateway, "POST", &format!("/v1/accounts/{id}/credentials"), None).await;
    Signer::new(
        created["secret_id"].as_str().unwrap(),
        created["secret_key"].as_str().unwrap(),
        "faceid",
    )
}
