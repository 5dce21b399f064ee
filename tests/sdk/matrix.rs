//! The client matrix's machinery for tests/sdk.rs: builds the grid of cells for one
//! SDK, runs them all in one script process (tests/sdk/call.py or call.js), judges each
//! answer, writes the table to `target/sdk-matrix/`, and fails with a table of the
//! failing cells. It must not retry, skip or excuse a cell: the table is what users of
//! that SDK get.

use crate::common::*;
use ekyc_gateway::admin::api::{current_month, previous_month};
use ekyc_gateway::clock::{Clock, ManualClock, SystemClock};
use ekyc_gateway::store::records::Suspension;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One official SDK and how to run the script that drives it.
pub struct Sdk {
    /// The package name, as in the table's title and the file name.
    pub package: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The `sign` the SDK uses when none is set, shown in the table.
    pub default_sign: &'static str,
    /// Whether the typed faceid client has `IdCardVerification` (the intl Node SDK's
    /// does not: it goes through `CommonClient` there, as an application would).
    pub typed_id_card: bool,
    pub is_node: bool,
    /// The installed packages and versions, as the table's title.
    pub version: String,
}

/// The Python interpreter of an SDK venv (see `sdk_python`) running tests/sdk/call.py.
pub fn python_sdk(package: &'static str, var: &str, venv: &str) -> Sdk {
    let python = sdk_python(var, venv);
    let version = std::process::Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m; print(' + '.join(sorted(d.metadata['Name'] + ' ' + d.version \
             for d in m.distributions() if d.metadata['Name'].startswith('tencentcloud-sdk-python'))))",
        ])
        .output()
        .expect("run the SDK venv's python");
    Sdk {
        package,
        program: python,
        args: vec![script("call.py"), "--cells".into()],
        default_sign: "TC3-HMAC-SHA256",
        typed_id_card: true,
        is_node: false,
        version: String::from_utf8_lossy(&version.stdout).trim().to_string(),
    }
}

/// Node running tests/sdk/call.js against the packages `scripts/test` installs under
/// `target/node-sdk` (EKYC_TEST_NODE_SDK_DIR); `node` from PATH unless EKYC_TEST_NODE.
pub fn node_sdk(package: &'static str, flavour: &str, default_sign: &'static str, typed_id_card: bool) -> Sdk {
    let dir = match std::env::var("EKYC_TEST_NODE_SDK_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => target_dir().join("node-sdk"),
    };
    let manifest = dir.join("node_modules").join(package).join("package.json");
    let manifest = std::fs::read_to_string(&manifest).unwrap_or_else(|e| {
        panic!(
            "EKYC_TEST_NODE_SDK_DIR is not set and {} cannot be read ({e}): run scripts/test once",
            manifest.display()
        )
    });
    let manifest: Value = serde_json::from_str(&manifest).unwrap();
    Sdk {
        package,
        program: std::env::var("EKYC_TEST_NODE").map_or_else(|_| PathBuf::from("node"), PathBuf::from),
        args: vec![script("call.js"), dir.display().to_string(), flavour.into()],
        default_sign,
        typed_id_card,
        is_node: true,
        version: format!("{package} {}", manifest["version"].as_str().unwrap()),
    }
}

fn script(name: &str) -> String {
    format!("{}/tests/sdk/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    )
}

const SIGNS: [Option<&str>; 4] = [None, Some("TC3-HMAC-SHA256"), Some("HmacSHA256"), Some("HmacSHA1")];
const METHODS: [&str; 2] = ["POST", "GET"];
const ENDPOINTS: [Endpoint; 3] = [Endpoint::Ip, Endpoint::Localhost, Endpoint::Tls];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Ip,
    Localhost,
    Tls,
}

impl Endpoint {
    fn label(self) -> &'static str {
        match self {
            Endpoint::Ip => "http 127.0.0.1:PORT",
            Endpoint::Localhost => "http localhost:PORT",
            Endpoint::Tls => "https localhost:PORT",
        }
    }
}

/// The calls of every row, as the table's columns.
const COLUMNS: [&str; 12] = [
    "IdCardVerification",
    "ActivateService",
    "DescribeServiceStatus",
    "DescribeCallUsage",
    "DescribeBills",
    "DescribePriceList",
    "wrong key",
    "unknown SecretId",
    "suspended",
    "not activated",
    "arrears",
    "unknown action",
];

/// A Chinese name, as real calls carry: UTF-8 in GET query strings and v1 forms.
const ID_CARD: &str = r#"{"IdCard":"11204416541220243X","Name":"张三"}"#;

/// Credentials of accounts in each refused state, made through the admin API (the
/// arrears flag through the same write path the billing job uses).
struct Accounts {
    suspended: (String, String),
    not_activated: (String, String),
    arrears: (String, String),
}

async fn account(gateway: &GatewayHandle, id: &str, activate: bool) -> (String, String) {
    let (status, _) = admin(gateway, "POST", "/v1/accounts", Some(json!({"id": id, "name": id}))).await;
    assert_eq!(status, 201, "create {id}");
    if activate {
        let (status, _) = admin(gateway, "POST", &format!("/v1/accounts/{id}/activate"), None).await;
        assert_eq!(status, 200, "activate {id}");
    }
    let (status, c) = admin(gateway, "POST", &format!("/v1/accounts/{id}/credentials"), None).await;
    assert_eq!(status, 201, "credential for {id}: {c}");
    (
        c["secret_id"].as_str().unwrap().to_string(),
        c["secret_key"].as_str().unwrap().to_string(),
    )
}

impl Accounts {
    async fn prepare(gateway: &GatewayHandle) -> Self {
        let suspended = account(gateway, "suspended", true).await;
        let (status, body) = admin(
            gateway,
            "POST",
            "/v1/accounts/suspended/suspend",
            Some(json!({"reason": "client matrix"})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let not_activated = account(gateway, "not-activated", false).await;
        let arrears = account(gateway, "arrears", true).await;
        let since = gateway.app.clock.now_unix();
        ekyc_gateway::accounts::change(&gateway.app, "arrears", "test", "billing.arrears_set", |a| {
            a.arrears = Some(Suspension {
                reason: "client matrix".into(),
                since,
            });
            Ok(())
        })
        .await
        .unwrap();
        Accounts {
            suspended,
            not_activated,
            arrears,
        }
    }
}

/// Checks a successful `Response`; `Err` says what is wrong.
type Check = Box<dyn Fn(&Value) -> Result<(), String> + Send>;

/// A row of the table: endpoint form, signature (`None`: the SDK's default), method.
type Row = (Endpoint, Option<&'static str>, &'static str);

/// What a cell must answer.
enum Expect {
    Ok(Check),
    /// The SDK's own exception carrying this Tencent code and a RequestId.
    Error(&'static str),
}

struct Cell {
    row: usize,
    column: usize,
    spec: Value,
    expect: Expect,
}

/// A gateway (and its refused accounts) behind one endpoint form.
struct Target<'a> {
    endpoint: Endpoint,
    port: u16,
    accounts: &'a Accounts,
}

/// The DescribeCallUsage month: the one before the gateway's, so an SDK that drops
/// `Month` gets the gateway's default (this month) back and the cell fails.
fn asked_month(gateway: &GatewayHandle) -> String {
    previous_month(current_month(&gateway.app)).to_string()
}

fn cells(sdk: &Sdk, targets: &[Target<'_>], month: &str, ca: &Path) -> (Vec<Row>, Vec<Cell>) {
    let mut rows = Vec::new();
    let mut cells = Vec::new();
    for target in targets {
        for sign in SIGNS {
            for method in METHODS {
                let row = rows.len();
                rows.push((target.endpoint, sign, method));
                let (protocol, host) = match target.endpoint {
                    Endpoint::Ip => ("http", format!("127.0.0.1:{}", target.port)),
                    Endpoint::Localhost => ("http", format!("localhost:{}", target.port)),
                    Endpoint::Tls => ("https", format!("localhost:{}", target.port)),
                };
                let id_card_client = if sdk.typed_id_card { "typed" } else { "common" };
                let base = |column: usize, credential: (&str, &str), client: &str, action: &str, params: &str| {
                    json!({
                        "id": format!("{row}/{column}"),
                        "endpoint": host,
                        "protocol": protocol,
                        "sign": sign,
                        "method": method,
                        "secret_id": credential.0,
                        "secret_key": credential.1,
                        "client": client,
                        "action": action,
                        "params": serde_json::from_str::<Value>(params).unwrap(),
                        "ca": (target.endpoint == Endpoint::Tls).then(|| ca.display().to_string()),
                    })
                };
                let tenant = (CLIENT_SECRET_ID, CLIENT_SECRET_KEY);
                let own = |pair: &(String, String)| (pair.0.clone(), pair.1.clone());
                let month_owned = month.to_string();
                let calls: Vec<(Value, Expect)> = vec![
                    (
                        base(0, tenant, id_card_client, "IdCardVerification", ID_CARD),
                        Expect::Ok(Box::new(|r| field_is(r, "Result", &json!("0")))),
                    ),
                    (
                        base(1, tenant, "common", "ActivateService", "{}"),
                        Expect::Ok(Box::new(|r| field_is(r, "Activated", &json!(true)))),
                    ),
                    (
                        base(2, tenant, "common", "DescribeServiceStatus", "{}"),
                        Expect::Ok(Box::new(|r| field_is(r, "Enabled", &json!(true)))),
                    ),
                    (
                        base(
                            3,
                            tenant,
                            "common",
                            "DescribeCallUsage",
                            &json!({"Month": month}).to_string(),
                        ),
                        Expect::Ok(Box::new(move |r| {
                            field_is(r, "Month", &json!(month_owned))?;
                            r["TotalCalls"].as_u64().map(|_| ()).ok_or("no TotalCalls".into())
                        })),
                    ),
                    (
                        base(4, tenant, "common", "DescribeBills", "{}"),
                        Expect::Ok(Box::new(|r| r["Bills"].as_array().map(|_| ()).ok_or("no Bills".into()))),
                    ),
                    (
                        base(5, tenant, "common", "DescribePriceList", "{}"),
                        Expect::Ok(Box::new(|r| {
                            let list = r["PriceList"].as_array().ok_or("no PriceList")?;
                            list.iter()
                                .any(|p| p["Action"] == "IdCardVerification" && p["Tiers"].is_array())
                                .then_some(())
                                .ok_or("no IdCardVerification price".into())
                        })),
                    ),
                    (
                        base(
                            6,
                            (CLIENT_SECRET_ID, "wrong-secret-key"),
                            id_card_client,
                            "IdCardVerification",
                            ID_CARD,
                        ),
                        Expect::Error("AuthFailure.SignatureFailure"),
                    ),
                    (
                        base(
                            7,
                            ("AKIDnobodyHere", CLIENT_SECRET_KEY),
                            id_card_client,
                            "IdCardVerification",
                            ID_CARD,
                        ),
                        Expect::Error("AuthFailure.SecretIdNotFound"),
                    ),
                    (
                        {
                            let (id, key) = own(&target.accounts.suspended);
                            base(8, (&id, &key), id_card_client, "IdCardVerification", ID_CARD)
                        },
                        Expect::Error("OperationDenied"),
                    ),
                    (
                        {
                            let (id, key) = own(&target.accounts.not_activated);
                            base(9, (&id, &key), id_card_client, "IdCardVerification", ID_CARD)
                        },
                        Expect::Error("UnauthorizedOperation.Nonactivated"),
                    ),
                    (
                        {
                            let (id, key) = own(&target.accounts.arrears);
                            base(10, (&id, &key), id_card_client, "IdCardVerification", ID_CARD)
                        },
                        Expect::Error("UnauthorizedOperation.Arrears"),
                    ),
                    (
                        base(11, tenant, "common", "NoSuchAction", "{}"),
                        Expect::Error("InvalidAction"),
                    ),
                ];
                for (column, (spec, expect)) in calls.into_iter().enumerate() {
                    cells.push(Cell {
                        row,
                        column,
                        spec,
                        expect,
                    });
                }
            }
        }
    }
    (rows, cells)
}

fn field_is(response: &Value, field: &str, want: &Value) -> Result<(), String> {
    if &response[field] == want {
        Ok(())
    } else {
        Err(format!("{field} {} (want {want})", response[field]))
    }
}

/// Judges one script line against its cell: `Ok` or what went wrong, short enough
/// for a table (the Tencent code when there is one).
fn judge(cell: &Cell, out: &Value, exception: &str) -> Result<(), String> {
    let code = out["code"].as_str().unwrap_or("");
    match (&cell.expect, out["ok"].as_bool()) {
        (Expect::Ok(check), Some(true)) => check(&out["response"]),
        (Expect::Ok(_), Some(false)) if !code.is_empty() => Err(code.to_string()),
        (Expect::Ok(_), _) => Err(format!("{}: {}", out["exception"], out["message"])),
        (Expect::Error(want), Some(false)) => {
            if code != *want {
                return Err(if code.is_empty() {
                    format!("{}: {}", out["exception"], out["message"])
                } else {
                    code.to_string()
                });
            }
            if out["exception"] != exception {
                return Err(format!("{code} as {} (want {exception})", out["exception"]));
            }
            match out["request_id"].as_str() {
                Some(id) if !id.is_empty() => Ok(()),
                _ => Err(format!("{code} without a RequestId")),
            }
        }
        (Expect::Error(_), _) => Err(format!("success: {}", out["response"])),
    }
}

/// A private CA and a certificate for `localhost` it signed, as PEM files: the CA is
/// what the clients trust; the gateway serves the leaf.
pub struct PrivateCa {
    _dir: tempfile::TempDir,
    pub ca_path: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

pub fn private_ca() -> PrivateCa {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ekyc-gateway client matrix CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf_params.distinguished_name.push(DnType::CommonName, "localhost");
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    PrivateCa {
        _dir: dir,
        ca_path,
        cert_path,
        key_path,
    }
}

/// Enough for a few hundred calls in a row from one client without RequestLimitExceeded.
const RATE: &str = "[rate_limit]\ndefault_qps = 100000\n";

/// The address `localhost` resolves to first: where clients that try only the first
/// address (Node before 20, when `/etc/hosts` lists `::1` first) connect.
async fn localhost_ip() -> std::net::IpAddr {
    tokio::net::lookup_host("localhost:0")
        .await
        .expect("localhost resolves")
        .next()
        .expect("localhost has an address")
        .ip()
}

/// Runs the whole matrix for `sdk` and fails with a table of the failing cells.
pub async fn run(sdk: Sdk) {
    let sim = SimHandle::start(|_| {}).await;
    // Frozen near now: SDKs sign with the real time (±300 s), and the month the
    // gateway reports cannot change under the test.
    let clock = ManualClock::new(SystemClock.now_unix());
    let start = |toml: String, ip: std::net::IpAddr| {
        let config = gateway_config(&format!("http://{}", sim.addr), &toml);
        GatewayHandle::start_on(config, Arc::new(clock.clone()), ip)
    };
    let localhost = localhost_ip().await;
    let ip = start(RATE.into(), std::net::Ipv4Addr::LOCALHOST.into()).await;
    let plain = start(RATE.into(), localhost).await;
    let ca = private_ca();
    let tls_toml = format!(
        "{RATE}[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        ca.cert_path.display(),
        ca.key_path.display()
    );
    let tls = start(tls_toml, localhost).await;
    let month = asked_month(&ip);
    let mut prepared = Vec::new();
    for (endpoint, gateway) in [
        (Endpoint::Ip, &ip),
        (Endpoint::Localhost, &plain),
        (Endpoint::Tls, &tls),
    ] {
        assert_eq!(asked_month(gateway), month);
        prepared.push((endpoint, gateway.data.port(), Accounts::prepare(gateway).await));
    }
    let targets: Vec<Target<'_>> = prepared
        .iter()
        .map(|(endpoint, port, accounts)| Target {
            endpoint: *endpoint,
            port: *port,
            accounts,
        })
        .collect();
    let (rows, cells) = cells(&sdk, &targets, &month, &ca.ca_path);

    let input = serde_json::to_vec(&cells.iter().map(|c| &c.spec).collect::<Vec<_>>()).unwrap();
    let mut command = std::process::Command::new(&sdk.program);
    command.args(&sdk.args);
    if sdk.is_node {
        // How a Node application trusts a private CA without code changes.
        command.env("NODE_EXTRA_CA_CERTS", &ca.ca_path);
    }
    let started = std::time::Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {:?}: {e} (scripts/test installs Python and Node.js)",
                    command.get_program()
                )
            });
        // A script that dies early closes its stdin: its stderr, below, says why.
        let _ = child.stdin.take().unwrap().write_all(&input);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{} failed: {stderr}\n{stdout}", sdk.package);
    let mut answers: HashMap<String, Value> = HashMap::new();
    for line in stdout.lines() {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}\n{stderr}"));
        answers.insert(value["id"].as_str().unwrap().to_string(), value);
    }

    let exception = if sdk.is_node {
        "TencentCloudSDKHttpException"
    } else {
        "TencentCloudSDKException"
    };
    let mut grid = vec![vec![String::new(); COLUMNS.len()]; rows.len()];
    let mut failures = Vec::new();
    let mut id_cards_passed = 0;
    for cell in &cells {
        let id = cell.spec["id"].as_str().unwrap();
        let verdict = match answers.get(id) {
            Some(out) => judge(cell, out, exception),
            None => Err("no answer from the script".into()),
        };
        grid[cell.row][cell.column] = match &verdict {
            Ok(()) => "✓".into(),
            Err(what) => format!("✗ {}", short(what)),
        };
        match verdict {
            Ok(()) if cell.column == 0 => id_cards_passed += 1,
            Ok(()) => {}
            Err(what) => failures.push((cell, what)),
        }
    }

    let table = markdown(&sdk, &rows, &grid);
    let dir = target_dir().join("sdk-matrix");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{}.md", sdk.package)), &table).unwrap();

    let mut report = String::new();
    for (cell, what) in &failures {
        let (endpoint, sign, method) = rows[cell.row];
        let _ = writeln!(
            report,
            "| {} | {} | {method} | {} | {} | {what} |",
            endpoint.label(),
            sign.unwrap_or(sdk.default_sign),
            COLUMNS[cell.column],
            match cell.expect {
                Expect::Ok(_) => "success",
                Expect::Error(code) => code,
            }
        );
    }
    assert!(
        failures.is_empty(),
        "{}: {} of {} cells failed ({elapsed:.1?} in the script):\n\
         | endpoint | signature | method | call | want | got |\n|---|---|---|---|---|---|\n{report}\n\
         whole table: {}",
        sdk.version,
        failures.len(),
        cells.len(),
        dir.join(format!("{}.md", sdk.package)).display()
    );
    // Every data call the SDK saw succeed reached the simulator once, through the gateway.
    assert_eq!(sim.successes("IdCardVerification").await, id_cards_passed);
}

/// A failure as a table cell: the first line, cut at 60 characters.
fn short(what: &str) -> String {
    let line = what.lines().next().unwrap_or("").replace('|', "/");
    if line.chars().count() > 60 {
        format!("{}…", line.chars().take(60).collect::<String>())
    } else {
        line
    }
}

fn sign_label(sdk: &Sdk, sign: Option<&str>) -> String {
    match sign {
        None => format!("default ({})", sdk.default_sign),
        Some(s) => s.to_string(),
    }
}

/// The SDK's tables: a summary (signature × method by endpoint form, the failing calls
/// named) and every cell.
fn markdown(sdk: &Sdk, rows: &[Row], grid: &[Vec<String>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### {}
",
        sdk.version
    );
    let _ = writeln!(
        out,
        "| signature | method | {} |",
        ENDPOINTS.map(Endpoint::label).join(" | ")
    );
    let _ = writeln!(out, "|---|---|{}", "---|".repeat(ENDPOINTS.len()));
    for sign in SIGNS {
        for method in METHODS {
            let mut line = format!("| {} | {method} |", sign_label(sdk, sign));
            for endpoint in ENDPOINTS {
                let row = rows.iter().position(|r| *r == (endpoint, sign, method)).unwrap();
                // Failures grouped by what went wrong, in column order.
                let mut failed: Vec<(&str, Vec<&str>)> = Vec::new();
                for (cell, column) in grid[row].iter().zip(COLUMNS) {
                    if let Some(why) = cell.strip_prefix("✗ ") {
                        match failed.iter_mut().find(|(w, _)| *w == why) {
                            Some((_, columns)) => columns.push(column),
                            None => failed.push((why, vec![column])),
                        }
                    }
                }
                let failures: usize = failed.iter().map(|(_, c)| c.len()).sum();
                let passed = COLUMNS.len() - failures;
                if failed.is_empty() {
                    let _ = write!(line, " ✓ {passed}/{} |", COLUMNS.len());
                } else {
                    let what: Vec<String> = failed
                        .iter()
                        .map(|(why, columns)| match columns.len() {
                            1..=2 => format!("{}: {why}", columns.join(", ")),
                            n => format!("{n} calls: {why}"),
                        })
                        .collect();
                    let _ = write!(line, " ✗ {passed}/{} ({}) |", COLUMNS.len(), what.join("; "));
                }
            }
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(out, "\n<details><summary>every cell</summary>\n");
    let _ = writeln!(out, "| endpoint | signature | method | {} |", COLUMNS.join(" | "));
    let _ = writeln!(out, "|---|---|---|{}", "---|".repeat(COLUMNS.len()));
    for ((endpoint, sign, method), cells) in rows.iter().zip(grid) {
        let _ = writeln!(
            out,
            "| {} | {} | {method} | {} |",
            endpoint.label(),
            sign_label(sdk, *sign),
            cells.join(" | ")
        );
    }
    let _ = writeln!(out, "\n</details>");
    out
}
