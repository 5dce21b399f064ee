//! The admin listener's `/metrics` as its consumers see it: calls driven through a
//! gateway and the values it then exposes (by action and outcome, latency, billable
//! calls, the upstream pool, the process, usage flushes, suspensions); the
//! dashboard and alert rules in `deploy/` checked against a real scrape and by
//! `promtool`; and a real Prometheus scraping the gateway. Prometheus and promtool
//! are Debian's `prometheus` package: without them those tests say so and pass,
//! unless `EKYC_TEST_REQUIRE_PROMETHEUS` is set (`scripts/test` sets it). Must not
//! use fixed ports or the calendar.

mod common;

use common::*;
use ekyc_gateway::clock::{Clock, ManualClock, SystemClock};
use ekyc_gateway::store::records::{AccountRecord, Suspension};
use http_body_util::BodyExt;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

/// The value of the sample `series` (its name, with its labels as exposed) in an
/// exposition; `None` when it is absent.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

fn must(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

/// A gateway on a clock stopped at the test's start: whenever the test runs, every
/// call falls in one billing month and times read from the clock are known.
async fn gateway_on_a_stopped_clock(sim: &SimHandle, extra_toml: &str) -> (GatewayHandle, ManualClock, i64) {
    let start = SystemClock.now_unix();
    let clock = ManualClock::new(start);
    let gateway = GatewayHandle::start_with_clock(sim, extra_toml, clock.clone()).await;
    (gateway, clock, start)
}

async fn succeeds(client: &HttpClient, gateway: &GatewayHandle, action: &str, body: &str) {
    let answer = send(client, call(gateway, action, body)).await;
    assert!(answer.get("Error").is_none(), "{action}: {answer}");
}

#[tokio::test]
async fn calls_are_counted_and_timed_by_action_and_tenant_actions_are_answered() {
    let sim = SimHandle::start(|_| {}).await;
    let (gateway, _clock, _) = gateway_on_a_stopped_clock(&sim, "").await;
    let client = http1_client();
    for _ in 0..3 {
        succeeds(&client, &gateway, "IdCardVerification", "{}").await;
    }
    for _ in 0..2 {
        succeeds(&client, &gateway, "PhoneVerification", "{}").await;
    }
    succeeds(&client, &gateway, "DescribePriceList", "{}").await;
    succeeds(&client, &gateway, "DescribeCallUsage", "{}").await;
    let refused = send(&client, call(&gateway, "DescribeCallUsage", r#"{"Month":"December"}"#)).await;
    assert_eq!(error_code(&refused), Some("InvalidParameter"), "{refused}");
    let unknown = send(&client, call(&gateway, "NoSuchAction", "{}")).await;
    assert_eq!(error_code(&unknown), Some("InvalidAction"), "{unknown}");

    let response = http1_client()
        .get(format!("http://{}/metrics", gateway.admin).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(
        text.ends_with("# EOF\n"),
        "an OpenMetrics body ends with # EOF:\n{text}"
    );
    for (series, expected) in [
        (
            r#"ekyc_gateway_requests_total{action="IdCardVerification",outcome="forwarded"}"#,
            3.0,
        ),
        (
            r#"ekyc_gateway_requests_total{action="PhoneVerification",outcome="forwarded"}"#,
            2.0,
        ),
        (
            r#"ekyc_gateway_requests_total{action="DescribePriceList",outcome="answered"}"#,
            1.0,
        ),
        (
            r#"ekyc_gateway_requests_total{action="DescribeCallUsage",outcome="answered"}"#,
            1.0,
        ),
        (
            r#"ekyc_gateway_requests_total{action="DescribeCallUsage",outcome="InvalidParameter"}"#,
            1.0,
        ),
        (
            r#"ekyc_gateway_requests_total{action="unknown",outcome="InvalidAction"}"#,
            1.0,
        ),
        // Tenant actions are not counted as forwarded calls of no action.
        (
            r#"ekyc_gateway_requests_total{action="unknown",outcome="forwarded"}"#,
            0.0,
        ),
        (
            r#"ekyc_gateway_requests_total{action="DescribePriceList",outcome="forwarded"}"#,
            0.0,
        ),
        (
            r#"ekyc_gateway_request_duration_seconds_count{action="IdCardVerification"}"#,
            3.0,
        ),
        (
            r#"ekyc_gateway_request_duration_seconds_count{action="DescribeCallUsage"}"#,
            2.0,
        ),
        (r#"ekyc_gateway_request_duration_seconds_count{action="unknown"}"#, 1.0),
        (
            r#"ekyc_gateway_request_duration_seconds_bucket{le="+Inf",action="PhoneVerification"}"#,
            2.0,
        ),
        (
            r#"ekyc_gateway_upstream_duration_seconds_count{action="IdCardVerification"}"#,
            3.0,
        ),
        (
            r#"ekyc_gateway_upstream_duration_seconds_count{action="PhoneVerification"}"#,
            2.0,
        ),
        (
            r#"ekyc_gateway_billable_calls_by_action_total{action="IdCardVerification"}"#,
            3.0,
        ),
        (
            r#"ekyc_gateway_billable_calls_by_action_total{action="PhoneVerification"}"#,
            2.0,
        ),
        (
            r#"ekyc_gateway_billable_calls_by_action_total{action="DetectAuth"}"#,
            0.0,
        ),
        ("ekyc_gateway_billable_calls_total", 5.0),
        (r#"ekyc_gateway_upstream_errors_total{kind="timeout"}"#, 0.0),
    ] {
        assert_eq!(must(&text, series), expected, "{series}");
    }
    // Only forwarded calls wait on the upstream.
    assert!(!text.contains(r#"ekyc_gateway_upstream_duration_seconds_count{action="DescribePriceList"}"#));
    // The gateway's time includes the upstream's.
    let gateway_seconds = must(
        &text,
        r#"ekyc_gateway_request_duration_seconds_sum{action="IdCardVerification"}"#,
    );
    let upstream_seconds = must(
        &text,
        r#"ekyc_gateway_upstream_duration_seconds_sum{action="IdCardVerification"}"#,
    );
    assert!(gateway_seconds >= upstream_seconds && upstream_seconds > 0.0);
}

#[tokio::test]
async fn upstream_pool_connections_are_in_use_during_a_call_and_idle_after() {
    let sim = SimHandle::start(|c| c.latency = ekyc_gateway::sim::Latency::Fixed(Duration::from_millis(300))).await;
    let (gateway, _clock, _) = gateway_on_a_stopped_clock(&sim, "").await;
    let pool = |text: &str| {
        (
            must(text, r#"ekyc_gateway_upstream_connections{state="in_use"}"#),
            must(text, r#"ekyc_gateway_upstream_connections{state="idle"}"#),
        )
    };
    assert_eq!(pool(&gateway.metrics().await), (0.0, 0.0));
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let request = call(&gateway, "IdCardVerification", "{}");
            tokio::spawn(async move { send(&http1_client(), request).await })
        })
        .collect();
    poll_until("three upstream connections in use", DEADLINE, || async {
        (pool(&gateway.metrics().await) == (3.0, 0.0)).then_some(())
    })
    .await;
    for answer in calls {
        let answer = answer.await.unwrap();
        assert!(answer.get("Error").is_none(), "{answer}");
    }
    assert_eq!(pool(&gateway.metrics().await), (0.0, 3.0));
}

/// This process's user and system CPU time, from /proc/self/stat (proc(5)).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[tokio::test]
async fn process_and_build_metrics_describe_the_running_process() {
    let sim = SimHandle::start(|_| {}).await;
    let (gateway, _clock, _) = gateway_on_a_stopped_clock(&sim, "").await;
    let cpu_before = cpu_seconds();
    let text = gateway.metrics().await;
    let cpu_after = cpu_seconds();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        must(&text, &format!(r#"ekyc_gateway_build_info{{version="{version}"}}"#)),
        1.0
    );
    if !cfg!(target_os = "linux") {
        return;
    }
    // The gateway runs in this test's process: the same /proc/self.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap();
    let rss = must(&text, "process_resident_memory_bytes");
    assert!(
        rss > rss_kib * 1024.0 / 2.0 && rss < rss_kib * 1024.0 * 2.0,
        "{rss} bytes against VmRSS {rss_kib} KiB"
    );
    let fds = must(&text, "process_open_fds");
    let fds_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as f64;
    assert!(
        fds > 5.0 && (fds - fds_now).abs() < 50.0,
        "{fds} open against {fds_now}"
    );
    assert!(must(&text, "process_max_fds") >= fds);
    let cpu = must(&text, "process_cpu_seconds_total");
    assert!(
        cpu_before <= cpu && cpu <= cpu_after,
        "{cpu_before} <= {cpu} <= {cpu_after}"
    );
    // Started before this scrape, and not before the machine booted.
    let started = must(&text, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        started <= now + 1.0 && started >= now - uptime - 1.0,
        "{started} (now {now})"
    );
}

#[tokio::test]
async fn usage_flushes_and_suspended_accounts_are_exposed() {
    let sim = SimHandle::start(|_| {}).await;
    let (gateway, clock, start) = gateway_on_a_stopped_clock(&sim, "[meter]\nflush_interval_ms = 100\n").await;
    let last_flush = "ekyc_gateway_usage_last_flush_timestamp_seconds";
    // The start counts as a flush: nothing was waiting before it.
    assert_eq!(must(&gateway.metrics().await, last_flush), start as f64);
    clock.advance(90);
    succeeds(&http1_client(), &gateway, "PhoneVerification", "{}").await;
    poll_until("a flush at the advanced clock", DEADLINE, || async {
        let text = gateway.metrics().await;
        (value(&text, last_flush) == Some((start + 90) as f64)
            && value(&text, "ekyc_gateway_usage_pending_calls") == Some(0.0))
        .then_some(())
    })
    .await;

    let suspended = |flag: &str| format!(r#"ekyc_gateway_accounts_suspended{{flag="{flag}"}}"#);
    let text = gateway.metrics().await;
    assert_eq!(
        (must(&text, &suspended("manual")), must(&text, &suspended("arrears"))),
        (0.0, 0.0)
    );
    let (status, _) = admin(
        &gateway,
        "POST",
        &format!("/v1/accounts/{CLIENT_ACCOUNT}/suspend"),
        Some(serde_json::json!({"reason": "review"})),
    )
    .await;
    assert_eq!(status, 200);
    // Arrears are set by the billing due sweep through the store; the metric reads the
    // mirror, so a copy in arrears applied to it stands for that.
    for id in ["owes-1", "owes-2"] {
        let mut record = AccountRecord::new(id, id, start);
        record.activated = true;
        record.arrears = Some(Suspension {
            reason: "overdue bill".into(),
            since: start,
        });
        gateway.app.mirror.apply_account(&record);
    }
    let text = gateway.metrics().await;
    assert_eq!(
        (must(&text, &suspended("manual")), must(&text, &suspended("arrears"))),
        (1.0, 2.0)
    );
}

/// Metric names a PromQL text refers to: `ekyc_gateway_*` and `process_*` identifiers.
fn referenced_metrics(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = promql.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &promql[at..];
        let starts_name = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        if starts_name && (rest.starts_with("ekyc_gateway_") || rest.starts_with("process_")) {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..len].to_string());
            at += len;
        } else {
            at += 1;
        }
    }
    names
}

/// The sample names of an exposition (`_bucket`, `_total`, ... as exposed).
fn exposed_metrics(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line[..line.find(['{', ' ']).unwrap_or(line.len())].to_string())
        .collect()
}

fn repository_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `expr` of the dashboard's panels.
fn dashboard_queries(dashboard: &serde_json::Value, into: &mut Vec<String>) {
    match dashboard {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => into.push(expr.clone()),
                    _ => dashboard_queries(value, into),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| dashboard_queries(item, into)),
        _ => {}
    }
}

#[tokio::test]
async fn the_dashboard_and_alert_rules_name_only_metrics_the_gateway_exposes() {
    let sim = SimHandle::start(|_| {}).await;
    let (gateway, _clock, _) = gateway_on_a_stopped_clock(&sim, "").await;
    let exposed = exposed_metrics(&gateway.metrics().await);
    let dashboard: serde_json::Value =
        serde_json::from_str(&repository_file("deploy/grafana/ekyc-gateway.json")).unwrap();
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(queries.len() > 20, "{queries:?}");
    for (source, text) in [
        ("deploy/grafana/ekyc-gateway.json", queries.join("\n")),
        (
            "deploy/prometheus/alerts.yml",
            repository_file("deploy/prometheus/alerts.yml"),
        ),
        (
            "deploy/prometheus/alerts.test.yml",
            repository_file("deploy/prometheus/alerts.test.yml"),
        ),
    ] {
        let referenced = referenced_metrics(&text);
        assert!(!referenced.is_empty(), "{source} names no metric");
        let missing: Vec<_> = referenced.difference(&exposed).collect();
        assert!(
            missing.is_empty(),
            "{source} names metrics /metrics does not expose: {missing:?}"
        );
    }
    // Each alert named in the docs' list exists, and each alert has a unit test.
    let rules = repository_file("deploy/prometheus/alerts.yml");
    let tests = repository_file("deploy/prometheus/alerts.test.yml");
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no test in alerts.test.yml"
        );
    }
}

/// Debian's `prometheus` package's `name` (prometheus, promtool), if installed; when
/// it is not, the test passes saying so, unless `EKYC_TEST_REQUIRE_PROMETHEUS` is set.
fn prometheus_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("EKYC_TEST_REQUIRE_PROMETHEUS").is_none(),
            "{name} is not installed (apt-get install prometheus) and EKYC_TEST_REQUIRE_PROMETHEUS is set"
        );
        eprintln!("SKIPPED: {name} is not installed (Debian package prometheus); this test checks nothing");
    }
    found
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = prometheus_tool("promtool") else {
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]] {
        let output = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A Prometheus server of this test's own: its own port, storage and config.
struct Prometheus {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(binary: &Path, scrape: std::net::SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
                 scrape_configs:\n  - job_name: ekyc-gateway\n    static_configs:\n      - targets: ['{scrape}']\n"
            ),
        )
        .unwrap();
        // A port the kernel gave and took back: free unless another process grabs it
        // in between, which the readiness poll below would show.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut prometheus = Self { child, addr, _dir: dir };
        let started = std::time::Instant::now();
        let ready = format!("http://{addr}/-/ready");
        loop {
            if let Some(status) = prometheus.child.try_wait().unwrap() {
                panic!("prometheus exited: {status}");
            }
            if let Ok(response) = http1_client().get(ready.parse().unwrap()).await
                && response.status() == 200
            {
                break;
            }
            assert!(started.elapsed() < DEADLINE, "Prometheus not ready after {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        prometheus
    }

    /// The instant query's result: each series' labels and value.
    async fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let query: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let answer = get_json(&format!("http://{}/api/v1/query?query={query}", self.addr)).await;
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (series["metric"].clone(), value)
            })
            .collect()
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_gateway_and_ingests_its_series() {
    let Some(binary) = prometheus_tool("prometheus") else {
        return;
    };
    let sim = SimHandle::start(|_| {}).await;
    let (gateway, _clock, _) = gateway_on_a_stopped_clock(&sim, "").await;
    let client = http1_client();
    for _ in 0..4 {
        succeeds(&client, &gateway, "IdCardVerification", "{}").await;
    }
    for _ in 0..2 {
        succeeds(&client, &gateway, "DescribePriceList", "{}").await;
    }
    let prometheus = Prometheus::start(&binary, gateway.admin).await;
    let expected = [
        (r#"up{job="ekyc-gateway"}"#, 1.0),
        (
            r#"ekyc_gateway_requests_total{action="IdCardVerification",outcome="forwarded"}"#,
            4.0,
        ),
        (
            r#"ekyc_gateway_requests_total{action="DescribePriceList",outcome="answered"}"#,
            2.0,
        ),
        (
            r#"ekyc_gateway_request_duration_seconds_count{action="IdCardVerification"}"#,
            4.0,
        ),
        (
            r#"ekyc_gateway_upstream_duration_seconds_bucket{action="IdCardVerification",le="+Inf"}"#,
            4.0,
        ),
        (
            r#"ekyc_gateway_billable_calls_by_action_total{action="IdCardVerification"}"#,
            4.0,
        ),
        ("ekyc_gateway_billable_calls_total", 4.0),
        (
            &format!(r#"ekyc_gateway_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION")),
            1.0,
        ),
        (r#"ekyc_gateway_upstream_connections{state="idle"}"#, 1.0),
        ("count(process_open_fds > 0)", 1.0),
        // The histogram is usable: a quantile of the four calls, within the buckets.
        (
            r#"count(histogram_quantile(0.5, sum by (le) (ekyc_gateway_upstream_duration_seconds_bucket)) < 20)"#,
            1.0,
        ),
    ];
    poll_until(
        "Prometheus to ingest the gateway's series",
        Duration::from_secs(60),
        || async {
            for (promql, value) in &expected {
                let result = prometheus.query(promql).await;
                if result.len() != 1 || result[0].1 != *value {
                    eprintln!("waiting: {promql} = {result:?}, want {value}");
                    // About a scrape interval, not poll_until's few milliseconds.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}
