//! The process around the pipeline: graceful shutdown with requests in flight, shutdown
//! hooks, the command line (help, config errors, SIGTERM), the demo, and the harness's
//! private Redis and PostgreSQL.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_then_runs_hooks() {
    let sim = SimHandle::start(|c| c.latency = ekyc_gateway::sim::Latency::Fixed(Duration::from_millis(400))).await;
    let mut gateway = GatewayHandle::start(&sim, "").await;
    let hook_saw = Arc::new(AtomicU64::new(u64::MAX));
    let completed = Arc::new(AtomicU64::new(0));
    {
        let (hook_saw, completed) = (hook_saw.clone(), completed.clone());
        gateway.app.on_shutdown(Box::new(move || {
            Box::pin(async move {
                hook_saw.store(completed.load(Ordering::SeqCst), Ordering::SeqCst);
            })
        }));
    }

    let client = http1_client();
    let mut calls = Vec::new();
    for _ in 0..20 {
        let (client, request, completed) = (
            client.clone(),
            call(&gateway, "IdCardVerification", "{}"),
            completed.clone(),
        );
        calls.push(tokio::spawn(async move {
            let answer = send(&client, request).await;
            completed.fetch_add(1, Ordering::SeqCst);
            answer
        }));
    }
    poll_until(
        "20 calls in flight at the simulator",
        Duration::from_secs(10),
        || async { (sim.stats().await["in_flight"] == 20).then_some(()) },
    )
    .await;

    gateway.begin_shutdown();
    // New connections are refused once the accept loop has stopped.
    let data = gateway.data;
    poll_until("the listener to close", Duration::from_secs(5), || async move {
        tokio::net::TcpStream::connect(data).await.is_err().then_some(())
    })
    .await;
    for call in calls {
        let answer = call.await.unwrap();
        assert_eq!(answer["Result"], "0", "{answer}");
    }
    gateway.join().await;
    assert_eq!(completed.load(Ordering::SeqCst), 20);
    assert_eq!(sim.successes("IdCardVerification").await, 20);
    // The hook ran after the responses had been written (clients may read them a little later).
    assert_ne!(hook_saw.load(Ordering::SeqCst), u64::MAX, "shutdown hook did not run");
}

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ekyc-gateway"))
}

#[test]
fn help_lists_every_subcommand() {
    let out = binary().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for command in ["serve", "upstream-sim", "admin", "demo"] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
}

#[test]
fn config_errors_name_the_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[upstream]\nurl = \"ftp://nowhere\"\n").unwrap();
    let out = binary()
        .args(["serve", "--config"])
        .arg(&file)
        .env("EKYC_UPSTREAM_SECRET_ID", "x")
        .env("EKYC_UPSTREAM_SECRET_KEY", "y")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("upstream.url"), "{stderr}");

    std::fs::write(&file, "").unwrap();
    let out = binary()
        .args(["serve", "--config"])
        .arg(&file)
        .env_remove("EKYC_UPSTREAM_SECRET_ID")
        .env_remove("EKYC_UPSTREAM_SECRET_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("EKYC_UPSTREAM_SECRET_ID"));

    // A billable action without a price: refused before anything listens, not billed at
    // a price nobody set.
    std::fs::write(
        &file,
        "[actions.LivenessCompare]\n[actions.DetectAuth]\n[[actions.DetectAuth.prices]]\nunit = \"0.05\"\n",
    )
    .unwrap();
    let out = binary()
        .args(["serve", "--config"])
        .arg(&file)
        .env("EKYC_UPSTREAM_SECRET_ID", "x")
        .env("EKYC_UPSTREAM_SECRET_KEY", "y")
        .env("EKYC_MASTER_KEY", MASTER_KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("actions.LivenessCompare.prices"), "{stderr}");
}

/// Runs the binary with `args` and `env` (and nothing inherited that names a secret):
/// its exit code and stderr.
fn exit_of(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = binary();
    for name in [
        "EKYC_UPSTREAM_SECRET_ID",
        "EKYC_UPSTREAM_SECRET_KEY",
        "EKYC_MASTER_KEY",
        "EKYC_ADMIN_TOKEN",
        "EKYC_REDIS_URL",
        "EKYC_STORE_URL",
    ] {
        command.env_remove(name);
    }
    // A command without --config may use ./data: never the repository's.
    let cwd = tempfile::tempdir().unwrap();
    let out = command
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd.path())
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn every_subcommand_exits_2_for_a_usage_or_config_error_and_1_for_a_failure() {
    let help = String::from_utf8(binary().arg("--help").output().unwrap().stdout).unwrap();
    assert!(help.contains("Exit status"), "{help}");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    let store = format!("[store]\nurl = \"sqlite://{}/billing.db\"\n", dir.path().display());
    let with_redis = dir.path().join("redis.toml");
    std::fs::write(
        &with_redis,
        format!("{store}[state]\nredis_url = \"redis://127.0.0.1:1/\"\n"),
    )
    .unwrap();
    let closed = format!("http://{}", closed_port().await);
    let token = [("EKYC_ADMIN_TOKEN", ADMIN_TOKEN)];
    // (arguments, environment, exit status, what stderr says)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], i32, &'a str);
    let cases: [Case; 7] = [
        (&["serve", "--config", missing], &[], 2, "missing.toml"),
        (&["billing", "--config", missing, "run"], &[], 2, "missing.toml"),
        (&["billing", "run", "--month", "October"], &[], 2, "must be YYYY-MM"),
        (
            &["billing", "--config", with_redis.to_str().unwrap(), "run"],
            &[],
            2,
            "EKYC_MASTER_KEY",
        ),
        (&["admin", "accounts", "list"], &[], 2, "EKYC_ADMIN_TOKEN"),
        (
            &["admin", "--admin-url", &closed, "accounts", "list"],
            &token,
            1,
            "cannot reach the admin API",
        ),
        (&["rotate-master-key", "--config", missing], &[], 2, "missing.toml"),
    ];
    for (args, env, code, says) in cases {
        let (exit, stderr) = exit_of(args, env);
        assert_eq!(exit, Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} should say {says:?}: {stderr}");
    }
    // A listener that cannot be bound is a runtime failure.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        with_test_prices(
            &format!("{store}[upstream]\nurl = \"http://{}\"\n", taken.local_addr().unwrap()),
            "",
        ),
    )
    .unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let (exit, stderr) = exit_of(
        &["serve", "--config", config.to_str().unwrap(), "--listen", &taken_addr],
        &process_env(),
    );
    assert_eq!(exit, Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen"), "{stderr}");
}

#[tokio::test]
async fn serve_listen_flags_win_over_the_file() {
    let sim = SimHandle::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let (file_data, file_admin) = (closed_port().await, closed_port().await);
    let (data, admin) = (closed_port().await, closed_port().await);
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        with_test_prices(
            &format!("[listen]\ndata = \"{file_data}\"\nadmin = \"{file_admin}\"\n"),
            &format!(
                "[upstream]\nurl = \"http://{}\"\n[store]\nurl = \"sqlite://{}/billing.db\"\n",
                sim.addr,
                dir.path().display()
            ),
        ),
    )
    .unwrap();
    let mut child = binary()
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &data.to_string(), "--admin-listen", &admin.to_string()])
        .envs(process_env())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = ChildLogs::capture(&mut child);
    logs.wait_for("ekyc-gateway serving").await;
    assert_eq!(get(&format!("http://{admin}/healthz")).await.0, 200);
    let answer = get_json(&format!("http://{data}/")).await;
    assert!(
        answer["Response"]["Error"]["Code"].is_string(),
        "the data listener answers: {answer}"
    );
    for unused in [file_data, file_admin] {
        assert!(
            tokio::net::TcpStream::connect(unused).await.is_err(),
            "{unused} from the file is not listened on"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A batch job reads the store and prices: no upstream secrets, and no master key
/// where no Redis is configured.
#[test]
fn billing_run_needs_neither_the_upstream_secrets_nor_a_master_key_without_redis() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        with_test_prices(
            "",
            &format!("[store]\nurl = \"sqlite://{}/billing.db\"\n", dir.path().display()),
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (exit, stderr) = exit_of(
        &["billing", "--config", config, "run", "--month", "2026-10", "--json"],
        &[],
    );
    assert_eq!(exit, Some(0), "{stderr}");
    let (exit, stderr) = exit_of(&["billing", "--config", config, "export", "--month", "2026-10"], &[]);
    assert_eq!(exit, Some(0), "{stderr}");
}

#[tokio::test]
async fn serve_process_exits_0_on_sigterm_and_never_logs_a_secret() {
    let sim = SimHandle::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[upstream]\nurl = \"http://{}\"\n[store]\nurl = \"sqlite://{}/billing.db\"\n",
        sim.addr,
        dir.path().display()
    );
    let mut env = process_env();
    env.push(("EKYC_LOG", "trace"));
    let gateway = GatewayProcess::start(&config, &env).await;

    // A full round: account, credentials, good and bad calls, revocation.
    admin_at(
        gateway.admin,
        "POST",
        "/v1/accounts",
        Some(serde_json::json!({"id": "acme", "name": "Acme"})),
    )
    .await;
    admin_at(gateway.admin, "POST", "/v1/accounts/acme/activate", None).await;
    let (_, created) = admin_at(gateway.admin, "POST", "/v1/accounts/acme/credentials", None).await;
    let (secret_id, secret_key, api_key) = (
        created["secret_id"].as_str().unwrap().to_string(),
        created["secret_key"].as_str().unwrap().to_string(),
        created["api_key"].as_str().unwrap().to_string(),
    );
    let host = gateway.data.to_string();
    let signer = ekyc_gateway::tc3::Signer::new(secret_id.clone(), secret_key.clone(), "faceid");
    let answer = send(
        &http1_client(),
        signed_call(&gateway.url(), &host, "DetectAuth", b"{}", &signer),
    )
    .await;
    assert!(answer["BizToken"].is_string(), "{answer}");
    let wrong = ekyc_gateway::tc3::Signer::new(secret_id.clone(), "wrong-key", "faceid");
    let answer = send(
        &http1_client(),
        signed_call(&gateway.url(), &host, "DetectAuth", b"{}", &wrong),
    )
    .await;
    assert_eq!(error_code(&answer), Some("AuthFailure.SignatureFailure"));
    let request = http::Request::post(gateway.url())
        .header("authorization", format!("Bearer {api_key}"))
        .header("x-tc-action", "DetectAuth")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    assert!(send(&http1_client(), request).await["BizToken"].is_string());
    admin_at(gateway.admin, "DELETE", &format!("/v1/credentials/{secret_id}"), None).await;

    let logs = gateway.logs.text();
    assert!(logs.contains("ekyc-gateway serving"));
    assert!(
        !logs.contains('\x1b'),
        "colour codes in a log that is not a terminal:\n{logs}"
    );
    for (name, secret) in [
        ("SecretKey", secret_key.as_str()),
        ("API key", api_key.as_str()),
        ("master key", MASTER_KEY),
        ("platform SecretKey", PLATFORM_SECRET_KEY),
        ("admin token", ADMIN_TOKEN),
    ] {
        assert!(!logs.contains(secret), "the {name} appears in the logs");
    }
    let status = gateway.terminate().await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn demo_serves_the_printed_curl_command() {
    let dir = tempfile::tempdir().unwrap();
    let data = closed_port().await;
    let admin = closed_port().await;
    let mut child = binary()
        .args([
            "demo",
            "--listen",
            &data.to_string(),
            "--admin-listen",
            &admin.to_string(),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    ChildLogs::capture(&mut child).wait_for("ekyc-gateway serving").await;
    let mut stdout = child.stdout.take().unwrap();
    let banner = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut text = String::new();
        let mut buf = [0u8; 8192];
        while !text.contains("to_json_string") {
            let n = stdout.read(&mut buf).unwrap();
            assert!(n > 0);
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    })
    .await
    .unwrap();
    let curl_line = banner
        .lines()
        .find(|l| l.trim_start().starts_with("curl -s "))
        .unwrap()
        .trim()
        .to_string();
    let out = tokio::task::spawn_blocking(move || Command::new("sh").arg("-c").arg(&curl_line).output().unwrap())
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} {} {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status
        );
    });
    assert_eq!(answer["Response"]["Result"], "0", "{answer}");
    assert!(banner.contains(ekyc_gateway::demo::DEMO_SECRET_ID));

    // The printed Python snippet, run as printed with the mainland SDK; and the demo
    // credentials with the international SDK.
    let snippet_start = banner.find("python3 - <<'EOF'\n").unwrap() + "python3 - <<'EOF'\n".len();
    let snippet = banner[snippet_start..].split("\nEOF").next().unwrap().to_string();
    let python_cn = sdk_python("EKYC_TEST_PYTHON_CN", "py-sdk-cn");
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(python_cn)
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(snippet.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(printed["Result"], "0", "{printed}");
    let python_intl = sdk_python("EKYC_TEST_PYTHON_INTL", "py-sdk-intl");
    let script = format!("{}/tests/sdk/call.py", env!("CARGO_MANIFEST_DIR"));
    let args = [
        script,
        data.to_string(),
        ekyc_gateway::demo::DEMO_SECRET_ID.to_string(),
        ekyc_gateway::demo::DEMO_SECRET_KEY.to_string(),
        "GetFaceIdTokenIntl".to_string(),
        "{}".to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || Command::new(python_intl).args(args).output().unwrap())
        .await
        .unwrap();
    let intl: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(intl["response"]["SdkToken"].is_string(), "{intl}");
    assert!(dir.path().join("data").is_dir());
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn harness_runs_a_private_redis_and_a_fresh_postgres_database() {
    let mut redis = RedisServer::start().await;
    assert!(redis.ping().await);
    redis.kill();
    assert!(!redis.ping().await);

    let db = PgDatabase::create().await;
    let (client, connection) = tokio_postgres::connect(&db.conninfo(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client.query_one("SELECT current_database()", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), db.name);
}
