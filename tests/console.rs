//! The consoles in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, Debian's `chromium-driver`; `scripts/test` installs both). A tenant
//! activates the service with the Activate Now button and the official SDK's next
//! call passes; an operator suspends the account and the tenant's page shows the
//! banner; a top-up clears an overdue bill and lifts the arrears suspension; a bill's
//! invoice, printed through WebDriver's Print Page, is one A4 or Letter page with the
//! invoice and none of the console (read back with poppler-utils' `pdftotext` and
//! `pdfinfo`, which `scripts/test` installs too). Screenshots (PNG) and the printed
//! PDFs go under target/console-screenshots/, a screenshot prefixed FAILED- when its
//! scenario failed.

mod common;

use anyhow::{Context, bail, ensure};
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const STEP_DEADLINE: Duration = Duration::from_secs(15);

/// One chromedriver process, and the browser sessions opened through it.
struct Browser {
    driver: Child,
    url: String,
    sessions: Vec<(&'static str, Client)>,
}

impl Browser {
    async fn start() -> Self {
        let chromedriver = std::env::var("EKYC_TEST_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let port = closed_port().await.port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{chromedriver}: {e}: install chromium and chromium-driver (scripts/test does)")
            });
        let url = format!("http://127.0.0.1:{port}");
        poll_until("chromedriver to listen", Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(drop)
        })
        .await;
        Browser {
            driver,
            url,
            sessions: Vec::new(),
        }
    }

    /// A fresh browser window (its own sessionStorage), named for its screenshots.
    async fn open(&mut self, name: &'static str) -> Client {
        let chromium = std::env::var("EKYC_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1100", "--no-first-run", "--disable-extensions"],
            }),
        );
        // chromedriver is on loopback: plain HTTP, no TLS stack needed.
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a Chromium session");
        self.sessions.push((name, client.clone()));
        client
    }

    /// Saves a screenshot of every window, then fails the test if the scenario did.
    async fn finish(mut self, test: &str, outcome: anyhow::Result<()>) {
        let failed = outcome.is_err();
        for (name, client) in std::mem::take(&mut self.sessions) {
            if failed {
                save_screenshot(&client, &format!("FAILED-{test}-{name}")).await;
            }
            let _ = client.close().await;
        }
        if let Err(e) = outcome {
            panic!("{test}: {e:#} (screenshots in {})", screenshot_dir().display());
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console-screenshots")
}

async fn save_screenshot(client: &Client, name: &str) {
    if let Ok(png) = client.screenshot().await {
        let dir = screenshot_dir();
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(format!("{name}.png")), png);
    }
}

/// Waits until the element at `css` is displayed and its text contains `needle`,
/// ignoring case (the stylesheet capitalises some labels).
async fn wait_text(client: &Client, css: &str, needle: &str) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + STEP_DEADLINE;
    let mut last = String::from("(not found)");
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await
            && element.is_displayed().await.unwrap_or(false)
        {
            last = element.text().await.unwrap_or_default();
            if last.to_lowercase().contains(&needle.to_lowercase()) {
                return Ok(last);
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{css} never showed {needle:?}; last text: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the element at `css` is hidden.
async fn wait_hidden(client: &Client, css: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + STEP_DEADLINE;
    loop {
        let element = client.find(Locator::Css(css)).await?;
        if !element.is_displayed().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{css} is still shown: {:?}", element.text().await.unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the element at `css` once it is shown. Retried while the page re-renders it
/// (a stale element) until the step deadline.
async fn click(client: &Client, css: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + STEP_DEADLINE;
    loop {
        wait_text(client, css, "").await?;
        let clicked = match client.find(Locator::Css(css)).await {
            Ok(element) => element.click().await,
            Err(e) => Err(e),
        };
        match clicked {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(e).with_context(|| format!("click {css}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn type_into(client: &Client, css: &str, text: &str) -> anyhow::Result<()> {
    let element = client.find(Locator::Css(css)).await?;
    element.clear().await?;
    element
        .send_keys(text)
        .await
        .with_context(|| format!("type into {css}"))
}

/// A tenant account as the operators create it: not activated, one credential.
struct Tenant {
    id: &'static str,
    secret_id: String,
    secret_key: String,
    api_key: String,
}

async fn create_tenant(gateway: &GatewayHandle, id: &'static str, name: &str, activate: bool) -> Tenant {
    let (status, _) = admin(
        gateway,
        "POST",
        "/v1/accounts",
        Some(serde_json::json!({"id": id, "name": name})),
    )
    .await;
    assert_eq!(status, 201);
    if activate {
        admin(gateway, "POST", &format!("/v1/accounts/{id}/activate"), None).await;
    }
    let (status, credential) = admin(gateway, "POST", &format!("/v1/accounts/{id}/credentials"), None).await;
    assert_eq!(status, 201, "{credential}");
    Tenant {
        id,
        secret_id: credential["secret_id"].as_str().unwrap().into(),
        secret_key: credential["secret_key"].as_str().unwrap().into(),
        api_key: credential["api_key"].as_str().unwrap().into(),
    }
}

/// One IdCardVerification through the official (mainland) Python SDK: its result, or
/// the error code it raised.
async fn sdk_call(gateway: &GatewayHandle, tenant: &Tenant) -> Result<String, String> {
    let answer = sdk_call_as(
        sdk_python("EKYC_TEST_PYTHON_CN", "py-sdk-cn"),
        gateway.data.to_string(),
        (&tenant.secret_id, &tenant.secret_key),
        "IdCardVerification",
        r#"{"IdCard":"11204416541220243X","Name":"Zhang San"}"#,
        &[],
    )
    .await;
    if answer["ok"] == true {
        Ok(answer["response"]["Result"].as_str().unwrap_or_default().to_string())
    } else {
        Err(answer["code"].as_str().unwrap_or_default().to_string())
    }
}

async fn tenant_sign_in(page: &Client, gateway: &GatewayHandle, tenant: &Tenant) -> anyhow::Result<()> {
    page.goto(&format!("http://{}/console/", gateway.data)).await?;
    type_into(page, "#api-key", &tenant.api_key).await?;
    click(page, "#signin-form button").await?;
    wait_text(page, "#who", tenant.id).await?;
    Ok(())
}

async fn operator_open_account(page: &Client, gateway: &GatewayHandle, account: &str) -> anyhow::Result<()> {
    page.goto(&format!("http://{}/ui/", gateway.admin)).await?;
    type_into(page, "#token", ADMIN_TOKEN).await?;
    click(page, "#signin-form button").await?;
    type_into(page, "#search", account).await?;
    click(page, &format!("tr[data-account='{account}']")).await?;
    wait_text(page, "#account-title", account).await?;
    Ok(())
}

#[tokio::test]
async fn activate_now_then_suspend_and_resume_from_the_consoles() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let tenant = create_tenant(&gateway, "acme", "Acme <b>Verification</b> Ltd", false).await;
    let mut browser = Browser::start().await;
    let tenant_page = browser.open("tenant").await;
    let operator_page = browser.open("operator").await;

    let outcome = async {
        // Before activation the SDK's call is refused.
        ensure!(
            sdk_call(&gateway, &tenant).await == Err("UnauthorizedOperation.Nonactivated".into()),
            "a call before activation must be refused"
        );
        tenant_sign_in(&tenant_page, &gateway, &tenant).await?;
        wait_text(&tenant_page, "#service-state", "Not activated").await?;
        save_screenshot(&tenant_page, "tenant-not-activated").await;
        click(&tenant_page, "#activate").await?;
        wait_text(&tenant_page, "#service-state", "Active").await?;
        wait_hidden(&tenant_page, "#activate-box").await?;
        // The gateway accepts the SDK's next call, and it shows up in this month's calls.
        ensure!(
            sdk_call(&gateway, &tenant).await == Ok("0".into()),
            "the call after activation"
        );
        gateway.app.flush_usage().await?;
        tenant_page.refresh().await?;
        wait_text(&tenant_page, "#month-calls", "1").await?;
        wait_text(&tenant_page, "#month-table", "IdCardVerification").await?;

        // The operator suspends it; the tenant's page says so and why.
        operator_open_account(&operator_page, &gateway, tenant.id).await?;
        // The name is shown as text, not run as markup.
        wait_text(&operator_page, "#account-title", "Acme <b>Verification</b> Ltd").await?;
        type_into(&operator_page, "#suspend-reason", "identity documents under review").await?;
        click(&operator_page, "#suspend").await?;
        wait_text(&operator_page, "#account-state", "suspended").await?;
        wait_text(&operator_page, "#audit-table", "account.suspend").await?;
        tenant_page.refresh().await?;
        let banner = wait_text(&tenant_page, "#banner", "identity documents under review").await?;
        ensure!(banner.contains("suspended by the operator"), "{banner}");
        save_screenshot(&tenant_page, "tenant-suspended").await;
        ensure!(
            sdk_call(&gateway, &tenant).await.is_err(),
            "a suspended account's call must be refused"
        );

        // Resumed: the banner goes, calls pass again.
        click(&operator_page, "#resume").await?;
        wait_text(&operator_page, "#account-state", "active").await?;
        tenant_page.refresh().await?;
        wait_text(&tenant_page, "#service-state", "Active").await?;
        wait_hidden(&tenant_page, "#banner").await?;
        ensure!(
            sdk_call(&gateway, &tenant).await == Ok("0".into()),
            "the call after resuming"
        );
        Ok(())
    }
    .await;
    browser.finish("activate_suspend_resume", outcome).await;
}

#[tokio::test]
async fn a_top_up_clears_an_overdue_bill_and_lifts_the_suspension() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let tenant = create_tenant(&gateway, "debtor", "Debtor & Sons", true).await;

    // Forty days of calls up to yesterday, flushed as the gateway would have, then the
    // previous month billed: with no balance, the bill is overdue and the account in
    // arrears.
    let now = gateway.app.clock.now_unix();
    let today = time::OffsetDateTime::from_unix_timestamp(now).unwrap().date();
    for back in 1..=40i64 {
        let date = today - time::Duration::days(back);
        let day = format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day());
        let batch = ekyc_gateway::store::UsageBatch {
            instance_id: "console-test".into(),
            seq: back as u64,
            rows: vec![ekyc_gateway::store::UsageRow {
                account_id: tenant.id.into(),
                action: "IdCardVerification".into(),
                month: day[..7].to_string(),
                calls: 10 + (back as u64 * 7) % 23,
            }],
        };
        gateway.app.store.apply_usage_batch_on(&batch, now, &day).await.unwrap();
    }
    let (status, run) = admin(&gateway, "POST", "/v1/billing/run", Some(serde_json::json!({}))).await;
    assert_eq!(status, 200, "{run}");
    let (_, bills) = admin(&gateway, "GET", "/v1/accounts/debtor/bills", None).await;
    let bill = &bills["bills"][0];
    assert_eq!(bill["status"], "overdue", "{bills}");
    let total = bill["total"].as_str().unwrap().to_string();
    assert_eq!(
        sdk_call(&gateway, &tenant).await,
        Err("UnauthorizedOperation.Arrears".into())
    );

    let mut browser = Browser::start().await;
    let tenant_page = browser.open("tenant").await;
    let operator_page = browser.open("operator").await;
    let outcome = async {
        tenant_sign_in(&tenant_page, &gateway, &tenant).await?;
        let banner = wait_text(&tenant_page, "#banner", "unpaid bills").await?;
        ensure!(
            banner.contains(&total),
            "the banner must say what is due ({total}): {banner}"
        );
        wait_text(&tenant_page, "#bills-table", "overdue").await?;
        wait_text(&tenant_page, "#balance", &format!("-{total}")).await?;
        save_screenshot(&tenant_page, "tenant-arrears").await;

        operator_open_account(&operator_page, &gateway, tenant.id).await?;
        wait_text(&operator_page, "#account-state", "suspended").await?;
        wait_text(&operator_page, "#bills-table", "overdue").await?;
        // The chart has a bar per day with calls.
        let bars = operator_page.find_all(Locator::Css("#chart rect.bar")).await?;
        ensure!(bars.len() == 30, "30 days in the chart, got {}", bars.len());
        // Exactly what is due: the bill's amount depends on the days the previous month
        // had, so it is read from the bill, never assumed.
        type_into(&operator_page, "#topup-amount", &total).await?;
        click(&operator_page, "#topup").await?;
        wait_text(&operator_page, "#topup-result", &format!("Recorded {total}")).await?;
        wait_text(&operator_page, "#account-state", "active").await?;
        wait_text(&operator_page, "#bills-table", "paid").await?;
        wait_text(&operator_page, "#audit-table", "account.").await?;
        save_screenshot(&operator_page, "operator-account").await;

        // The webhook events of all this with their delivery state (no endpoint here:
        // pending); one marked failed is sent again by its Retry button.
        wait_text(&operator_page, "#webhooks-table", "bill.overdue").await?;
        wait_text(&operator_page, "#webhooks-endpoints", "No endpoint configured").await?;
        let overdue = gateway
            .app
            .store
            .list_events(None, 100)
            .await?
            .into_iter()
            .find(|e| e.kind == "bill.overdue")
            .ok_or_else(|| anyhow::anyhow!("no bill.overdue event"))?;
        execute_raw(
            &gateway.app,
            &format!(
                "UPDATE webhook_events SET status = 'failed' WHERE id = '{}'",
                overdue.id
            ),
        )
        .await?;
        operator_page
            .find(Locator::Css("#webhooks-status"))
            .await?
            .select_by_value("failed")
            .await?;
        wait_text(&operator_page, "#webhooks-table", "failed").await?;
        save_screenshot(&operator_page, "operator-webhooks").await;
        click(&operator_page, "button.retry").await?;
        poll_until("the retried event pending", Duration::from_secs(10), || async {
            let event = gateway.app.store.event(&overdue.id).await.ok().flatten()?;
            (event.status == "pending").then_some(())
        })
        .await;
        wait_text(&operator_page, "#webhooks-table", "None.").await?;

        tenant_page.refresh().await?;
        wait_text(&tenant_page, "#bills-table", "paid").await?;
        wait_hidden(&tenant_page, "#banner").await?;
        wait_text(&tenant_page, "#service-state", "Active").await?;
        save_screenshot(&tenant_page, "tenant-paid").await;
        ensure!(
            sdk_call(&gateway, &tenant).await == Ok("0".into()),
            "the call after paying"
        );
        Ok(())
    }
    .await;
    browser.finish("topup_clears_overdue", outcome).await;
}

/// 2026-03-10 12:00 in the billing time zone (UTC+8): February is over and billed.
const TENTH_OF_MARCH: i64 = 1_773_115_200;

const INVOICE_PRICES: &str = r#"
[billing]
currency = "USD"
total_rounding = "0.01"
[actions.IdCardVerification]
[[actions.IdCardVerification.prices]]
from = "2026-01"
mode = "graduated"
tiers = [ { up_to = 100, unit = "0.05" }, { unit = "0.03" } ]
[actions.LivenessCompare]
[[actions.LivenessCompare.prices]]
unit = "0.10"
[actions.GetFaceIdResultIntl]
billable = false
"#;

/// `pdftotext` and `pdfinfo` (Debian's poppler-utils; `scripts/test` installs them) on
/// a PDF Chromium printed: its text and its number of pages.
fn pdf_text_and_pages(pdf: &[u8], name: &str) -> (String, u32) {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}.pdf"));
    std::fs::write(&file, pdf).unwrap();
    let run = |tool: &str, args: &[&std::ffi::OsStr]| {
        let out = Command::new(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}: install poppler-utils (scripts/test does)"));
        assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = run("pdftotext", &["-layout".as_ref(), file.as_os_str(), "-".as_ref()]);
    let info = run("pdfinfo", &[file.as_os_str()]);
    let pages = info
        .lines()
        .find_map(|l| l.strip_prefix("Pages:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no page count: {info}"));
    (text, pages)
}

#[tokio::test]
async fn the_invoice_of_a_bill_prints_alone_on_one_page() {
    let sim = SimHandle::start(|_| {}).await;
    let clock = ekyc_gateway::clock::ManualClock::new(TENTH_OF_MARCH);
    let gateway = GatewayHandle::start_with_clock(&sim, INVOICE_PRICES, clock).await;
    let tenant = create_tenant(&gateway, "inv", "Invoice Test Ltd", true).await;
    // February's calls, as flushed: 250 IdCardVerification (100 at 0.05, 150 at 0.03:
    // 9.50) and 12 LivenessCompare (1.20); billed on the pinned clock, nothing to pay
    // it with: overdue.
    let batch = ekyc_gateway::store::UsageBatch {
        instance_id: "console-invoice".into(),
        seq: 1,
        rows: ["IdCardVerification", "LivenessCompare"]
            .into_iter()
            .zip([250, 12])
            .map(|(action, calls)| ekyc_gateway::store::UsageRow {
                account_id: tenant.id.into(),
                action: action.into(),
                month: "2026-02".into(),
                calls,
            })
            .collect(),
    };
    gateway
        .app
        .store
        .apply_usage_batch_on(&batch, TENTH_OF_MARCH, "2026-02-15")
        .await
        .unwrap();
    let (status, run) = admin(
        &gateway,
        "POST",
        "/v1/billing/run",
        Some(serde_json::json!({"month": "2026-02"})),
    )
    .await;
    assert_eq!(status, 200, "{run}");
    let bill_id = "B202602-inv";

    let mut browser = Browser::start().await;
    let page = browser.open("invoice").await;
    let outcome = async {
        tenant_sign_in(&page, &gateway, &tenant).await?;
        // The price list in force this month, per tier.
        wait_text(&page, "#prices-month", "2026-03").await?;
        let prices = wait_text(&page, "#prices-table", "IdCardVerification").await?;
        for needle in [
            "Graduated",
            "1–100",
            "101 and more",
            "0.03 USD",
            "2026-01",
            "GetFaceIdResultIntl",
        ] {
            ensure!(prices.contains(needle), "price list without {needle:?}: {prices}");
        }
        // The bill's lines: calls, unit prices and amounts.
        let bills = wait_text(&page, "#bills-table", bill_id).await?;
        for needle in [
            "IdCardVerification: 250 calls (100 × 0.05 + 150 × 0.03) = 9.50",
            "LivenessCompare: 12 calls × 0.10 = 1.20",
            "10.70 USD",
        ] {
            ensure!(bills.contains(needle), "bills without {needle:?}: {bills}");
        }

        click(&page, &format!("button[data-invoice='{bill_id}']")).await?;
        wait_text(&page, "#inv-number", bill_id).await?;
        wait_text(&page, "#inv-issued", "2026-03-10").await?;
        wait_text(&page, "#inv-total", "10.70 USD").await?;
        wait_text(&page, "#inv-status", "Overdue").await?;
        wait_hidden(&page, "#app").await?;
        save_screenshot(&page, "tenant-invoice").await;

        // Printed, on either paper: one page, the invoice and nothing of the console.
        for (paper, size) in [
            ("A4", fantoccini::wd::PrintSize::A4),
            ("Letter", fantoccini::wd::PrintSize::US_LETTER),
        ] {
            let config = fantoccini::wd::PrintConfiguration::builder()
                .size(size)
                .build()
                .map_err(|e| anyhow::anyhow!("print configuration: {e}"))?;
            let pdf = page.print(config).await.context("WebDriver Print Page")?;
            let (text, pages) = pdf_text_and_pages(&pdf, &format!("invoice-{paper}"));
            ensure!(pages == 1, "{paper}: {pages} pages:\n{text}");
            for needle in [bill_id, "10.70 USD", "9.50", "Invoice number", "2026-03-10"] {
                ensure!(
                    text.contains(needle),
                    "{paper}: no {needle:?} in the printed invoice:\n{text}"
                );
            }
            for chrome in [
                "Sign out",
                "Console",
                "Back to the console",
                "Print",
                "Balance",
                "Prices",
            ] {
                ensure!(
                    !text.contains(chrome),
                    "{paper}: the console's {chrome:?} was printed:\n{text}"
                );
            }
        }

        // Back: the console again, and its print is not the invoice.
        click(&page, "#invoice-back").await?;
        wait_hidden(&page, "#invoice").await?;
        wait_text(&page, "#bills-table", bill_id).await?;
        Ok(())
    }
    .await;
    browser.finish("invoice_prints_alone", outcome).await;
}

/// An operator runs an account from the console alone: creates it, activates it, sets
/// its rate limit, issues a credential that the next signed call uses, revokes it; the
/// usage view opens on the newest month with calls, not on an empty current month.
#[tokio::test]
async fn an_operator_creates_activates_and_issues_credentials_without_the_cli() {
    let clock = ekyc_gateway::clock::ManualClock::new(TENTH_OF_MARCH);
    let sim_clock = clock.clone();
    let sim = SimHandle::start(move |c| c.clock = std::sync::Arc::new(sim_clock)).await;
    let gateway = GatewayHandle::start_with_clock(&sim, "", clock).await;
    // An older account whose last calls were in January; none this month (March).
    create_tenant(&gateway, "oldco", "Old Co", true).await;
    let batch = ekyc_gateway::store::UsageBatch {
        instance_id: "console-operator".into(),
        seq: 1,
        rows: vec![ekyc_gateway::store::UsageRow {
            account_id: "oldco".into(),
            action: "IdCardVerification".into(),
            month: "2026-01".into(),
            calls: 42,
        }],
    };
    gateway
        .app
        .store
        .apply_usage_batch_on(&batch, TENTH_OF_MARCH, "2026-01-20")
        .await
        .unwrap();

    let mut browser = Browser::start().await;
    let page = browser.open("operator-manage").await;
    let outcome = async {
        operator_open_account(&page, &gateway, "oldco").await?;
        wait_text(&page, "#usage-table", "42 calls in 2026-01").await?;

        type_into(&page, "#create-id", "newco").await?;
        type_into(&page, "#create-name", "New Co").await?;
        click(&page, "#create").await?;
        wait_text(&page, "#account-title", "newco · New Co").await?;
        wait_text(&page, "#account-state", "not activated").await?;
        click(&page, "#activate").await?;
        wait_text(&page, "#account-state", "active").await?;
        wait_hidden(&page, "#activate-row").await?;
        type_into(&page, "#rate-limit", "7").await?;
        click(&page, "#set-rate-limit").await?;
        wait_text(&page, "#account-facts", "rate limit 7/s").await?;
        type_into(&page, "#credit-limit", "25.00").await?;
        click(&page, "#set-credit-limit").await?;
        wait_text(&page, "#account-facts", "credit limit 25.00").await?;

        click(&page, "#issue-credential").await?;
        let secret_id = wait_text(&page, "#new-secret-id", "AKID").await?;
        let secret_key = page.find(Locator::Css("#new-secret-key")).await?.text().await?;
        wait_text(&page, "#credentials-table", &secret_id).await?;
        save_screenshot(&page, "operator-credential").await;
        let signer = ekyc_gateway::tc3::Signer::new(secret_id.clone(), secret_key, "faceid");
        let call = || {
            signed_call_at(
                &gateway.url(),
                &gateway.data.to_string(),
                "DetectAuth",
                b"{}",
                &signer,
                TENTH_OF_MARCH,
            )
        };
        let answer = send(&http1_client(), call()).await;
        ensure!(answer["BizToken"].is_string(), "the new credential's call: {answer}");

        click(&page, &format!("button[data-revoke='{secret_id}']")).await?;
        page.accept_alert().await?;
        wait_text(&page, "#credentials-table", "revoked").await?;
        let code = error_code(&send(&http1_client(), call()).await).map(str::to_string);
        ensure!(
            code.as_deref() == Some("AuthFailure.InvalidSecretId"),
            "a revoked credential is refused: {code:?}"
        );
        let (_, account) = admin(&gateway, "GET", "/v1/accounts/newco", None).await;
        ensure!(
            (&account["rate_limit_qps"], &account["credit_limit"])
                == (&serde_json::json!(7), &serde_json::json!("25.00")),
            "{account}"
        );
        Ok(())
    }
    .await;
    browser.finish("operator_manages_accounts", outcome).await;
}

/// What a browser asks for besides the pages: a favicon on both listeners, HEAD of a
/// page, and the operators' path typed on the data listener.
#[tokio::test]
async fn favicon_head_and_a_misplaced_ui_path_get_plain_answers() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let client = http1_client();
    for listener in [gateway.data, gateway.admin] {
        let request = http::Request::get(format!("http://{listener}/favicon.ico"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200, "{listener}");
        assert_eq!(response.headers()["content-type"], "image/svg+xml");
    }
    for (listener, path) in [(gateway.data, "/console/"), (gateway.admin, "/ui/")] {
        let request = http::Request::head(format!("http://{listener}{path}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200, "HEAD {path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "HEAD {path}"
        );
    }
    let (status, body) = get(&format!("http://{}/ui", gateway.data)).await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("admin listener"), "{body:?}");
}
