//! `ekyc-gateway admin …`: the operators' command line, a thin client of the admin API
//! (`--admin-url`, token from `EKYC_ADMIN_TOKEN`). Human-readable tables by default,
//! the API's JSON with `--json`. Must not touch the stores directly: every change goes
//! through the API so it is audited and propagated like any other.

use super::UsageError;
use bytes::Bytes;
use clap::Subcommand;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct AdminArgs {
    /// Base URL of the admin listener.
    #[arg(long, env = "EKYC_ADMIN_URL", default_value = "http://127.0.0.1:9090", global = true)]
    admin_url: String,
    /// Admin bearer token.
    #[arg(long, env = "EKYC_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create, list, show, activate, suspend and resume accounts.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Create, list and revoke an account's credentials.
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// Show an account's billable calls in a month (default: this billing month).
    Usage {
        account: String,
        /// YYYY-MM
        #[arg(long)]
        month: Option<String>,
    },
    /// Record a payment: settles overdue bills oldest first and lifts arrears once none is left.
    Topup {
        account: String,
        /// In currency units, e.g. 12.50
        amount: String,
        /// The same key twice records one payment (default: a new random key).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Record a credit (a goodwill or correction amount in the tenant's favour, with its
    /// reason); settles overdue bills like a payment. Always positive: nothing is refunded.
    Credit {
        account: String,
        /// In currency units, e.g. 5.00
        amount: String,
        /// Why, for the ledger and the audit log.
        #[arg(long)]
        reason: String,
        /// The same key twice records one credit (default: a new random key).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show an account's bills (oldest first) and balance.
    Bills { account: String },
    /// Show the audit log, newest first.
    Audit {
        /// Only this account's entries.
        #[arg(long)]
        account: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum AccountsCommand {
    /// Create an account (not activated until the tenant or an operator activates it).
    Create { id: String, name: String },
    /// List accounts, optionally matching a part of the id or name.
    List {
        #[arg(long)]
        search: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long, default_value_t = 0)]
        offset: u32,
    },
    /// Show one account.
    Show { id: String },
    /// Activate the service for an account.
    Activate { id: String },
    /// Suspend an account (refused with OperationDenied until resumed).
    Suspend {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Lift an operator's suspension (arrears are lifted by payment only).
    Resume { id: String },
    /// Set the account's rate limit in calls per second per gateway, or `default`.
    RateLimit { id: String, qps: String },
    /// Set how much the account may owe before calls are refused (a decimal amount; 0
    /// is prepaid), or `default` (billing.credit_limit).
    CreditLimit { id: String, amount: String },
}

#[derive(Subcommand)]
enum CredentialsCommand {
    /// Create a SecretId/SecretKey pair and an API key; the secrets are shown once.
    Create { account: String },
    /// List an account's credentials (no secrets).
    List { account: String },
    /// Revoke a credential for good.
    Revoke { secret_id: String },
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let AdminArgs {
        admin_url,
        token,
        json: as_json,
        command,
    } = args;
    let token =
        token.ok_or_else(|| UsageError::new("set EKYC_ADMIN_TOKEN (or --token) to the admin API's bearer token"))?;
    let api = Api {
        base: admin_url.trim_end_matches('/').to_string(),
        token,
    };
    let (value, render): (Value, fn(&Value) -> String) = match command {
        AdminCommand::Accounts(cmd) => match cmd {
            AccountsCommand::Create { id, name } => (
                api.call("POST", "/v1/accounts", Some(json!({"id": id, "name": name})))
                    .await?,
                account_table,
            ),
            AccountsCommand::List { search, limit, offset } => {
                let mut path = format!("/v1/accounts?limit={limit}&offset={offset}");
                if let Some(search) = search {
                    path.push_str("&search=");
                    path.push_str(&form_urlencoded::byte_serialize(search.as_bytes()).collect::<String>());
                }
                (api.call("GET", &path, None).await?, accounts_table)
            }
            AccountsCommand::Show { id } => (
                api.call("GET", &format!("/v1/accounts/{id}"), None).await?,
                account_table,
            ),
            AccountsCommand::Activate { id } => (
                api.call("POST", &format!("/v1/accounts/{id}/activate"), None).await?,
                account_table,
            ),
            AccountsCommand::Suspend { id, reason } => (
                api.call(
                    "POST",
                    &format!("/v1/accounts/{id}/suspend"),
                    Some(json!({"reason": reason})),
                )
                .await?,
                account_table,
            ),
            AccountsCommand::Resume { id } => (
                api.call("POST", &format!("/v1/accounts/{id}/resume"), None).await?,
                account_table,
            ),
            AccountsCommand::RateLimit { id, qps } => {
                let qps: Value = if qps == "default" {
                    Value::Null
                } else {
                    qps.parse::<u32>()
                        .map_err(|_| UsageError::new("qps must be a number or `default`"))?
                        .into()
                };
                (
                    api.call(
                        "PUT",
                        &format!("/v1/accounts/{id}/rate-limit"),
                        Some(json!({"qps": qps})),
                    )
                    .await?,
                    account_table,
                )
            }
            AccountsCommand::CreditLimit { id, amount } => {
                let limit: Value = if amount == "default" {
                    Value::Null
                } else {
                    amount.into()
                };
                (
                    api.call(
                        "PUT",
                        &format!("/v1/accounts/{id}/credit-limit"),
                        Some(json!({"credit_limit": limit})),
                    )
                    .await?,
                    account_table,
                )
            }
        },
        AdminCommand::Credentials(cmd) => match cmd {
            CredentialsCommand::Create { account } => (
                api.call("POST", &format!("/v1/accounts/{account}/credentials"), None)
                    .await?,
                created_credential,
            ),
            CredentialsCommand::List { account } => (
                api.call("GET", &format!("/v1/accounts/{account}/credentials"), None)
                    .await?,
                credentials_table,
            ),
            CredentialsCommand::Revoke { secret_id } => (
                api.call("DELETE", &format!("/v1/credentials/{secret_id}"), None)
                    .await?,
                |v: &Value| {
                    format!(
                        "{} {}\n",
                        v["secret_id"].as_str().unwrap_or(""),
                        v["status"].as_str().unwrap_or("")
                    )
                },
            ),
        },
        AdminCommand::Usage { account, month } => {
            let mut path = format!("/v1/accounts/{account}/usage");
            if let Some(month) = month {
                path.push_str(&format!("?month={month}"));
            }
            (api.call("GET", &path, None).await?, usage_table)
        }
        AdminCommand::Topup {
            account,
            amount,
            idempotency_key,
        } => {
            let key = idempotency_key.unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4().simple()));
            let body = serde_json::json!({"amount": amount, "idempotency_key": key});
            (
                api.call("POST", &format!("/v1/accounts/{account}/topups"), Some(body))
                    .await?,
                topup_text,
            )
        }
        AdminCommand::Credit {
            account,
            amount,
            reason,
            idempotency_key,
        } => {
            let key = idempotency_key.unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4().simple()));
            let body = serde_json::json!({"amount": amount, "reason": reason, "idempotency_key": key});
            (
                api.call("POST", &format!("/v1/accounts/{account}/credits"), Some(body))
                    .await?,
                topup_text,
            )
        }
        AdminCommand::Bills { account } => (
            api.call("GET", &format!("/v1/accounts/{account}/bills"), None).await?,
            bills_table,
        ),
        AdminCommand::Audit { account, limit } => {
            let mut path = format!("/v1/audit?limit={limit}");
            if let Some(account) = account {
                path.push_str(&format!("&account={account}"));
            }
            (api.call("GET", &path, None).await?, audit_table)
        }
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    } else {
        print!("{}", render(&value));
    }
    Ok(())
}

struct Api {
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(body.map(|b| Bytes::from(b.to_string())).unwrap_or_default()))
            .map_err(|e| anyhow::anyhow!("bad request: {e}"))?;
        let response = client
            .request(request)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the admin API at {}: {e}", self.base))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = value["error"]["message"].as_str().unwrap_or("no details");
            anyhow::bail!("{status}: {message}");
        }
        Ok(value)
    }
}

/// Left-aligned columns, two spaces apart.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.iter().map(|h| h.to_string()).collect(), &mut out);
    for row in rows {
        line(row.clone(), &mut out);
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn account_row(a: &Value) -> Vec<String> {
    let flags: Vec<String> = a["suspensions"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| format!("{}: {}", text(&s["flag"]), text(&s["reason"])))
                .collect()
        })
        .unwrap_or_default();
    vec![
        text(&a["id"]),
        text(&a["name"]),
        if a["activated"] == true {
            "yes".into()
        } else {
            "no".into()
        },
        if flags.is_empty() { "-".into() } else { flags.join("; ") },
        if a["rate_limit_qps"].is_null() {
            "default".into()
        } else {
            text(&a["rate_limit_qps"])
        },
        if a["credit_limit"].is_null() {
            "default".into()
        } else {
            text(&a["credit_limit"])
        },
    ]
}

const ACCOUNT_HEADERS: [&str; 6] = ["ID", "NAME", "ACTIVATED", "SUSPENDED", "QPS", "CREDIT"];

fn account_table(a: &Value) -> String {
    table(&ACCOUNT_HEADERS, &[account_row(a)])
}

fn accounts_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["accounts"]
        .as_array()
        .map(|a| a.iter().map(account_row).collect())
        .unwrap_or_default();
    table(&ACCOUNT_HEADERS, &rows)
}

fn created_credential(v: &Value) -> String {
    format!(
        "account     {}\nsecret_id   {}\nsecret_key  {}\napi_key     {}\n\nThe secret key and API key are shown only now: store them safely.\n",
        text(&v["account"]),
        text(&v["secret_id"]),
        text(&v["secret_key"]),
        text(&v["api_key"])
    )
}

fn credentials_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["credentials"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| {
                    vec![
                        text(&c["secret_id"]),
                        text(&c["status"]),
                        text(&c["created_at"]),
                        text(&c["revoked_at"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["SECRET_ID", "STATUS", "CREATED", "REVOKED"], &rows)
}

fn topup_text(v: &Value) -> String {
    format!(
        "{} {} {} (key {}){}; balance {} {}; {}\n",
        if v["duplicate"] == Value::Bool(true) {
            "already recorded:"
        } else {
            "recorded:"
        },
        text(&v["amount"]),
        text(&v["currency"]),
        text(&v["idempotency_key"]),
        "",
        text(&v["balance"]),
        text(&v["currency"]),
        if v["state"]["enabled"] == Value::Bool(true) {
            "the account is enabled"
        } else {
            "the account is still refused"
        }
    )
}

fn bills_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["bills"]
        .as_array()
        .map(|bills| {
            bills
                .iter()
                .map(|b| {
                    vec![
                        text(&b["id"]),
                        text(&b["month"]),
                        format!("{} {}", text(&b["total"]), text(&b["currency"])),
                        text(&b["status"]),
                        b["lines"].as_array().map_or(0, |l| l.len()).to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{}  balance {}\n{}",
        text(&v["account"]),
        text(&v["balance"]),
        table(&["BILL", "MONTH", "TOTAL", "STATUS", "LINES"], &rows)
    )
}

fn usage_table(v: &Value) -> String {
    let mut rows: Vec<Vec<String>> = v["actions"]
        .as_object()
        .map(|a| {
            a.iter()
                .map(|(action, calls)| vec![action.clone(), text(calls)])
                .collect()
        })
        .unwrap_or_default();
    rows.push(vec!["TOTAL".into(), text(&v["total"])]);
    format!(
        "{} {}\n{}",
        text(&v["account"]),
        text(&v["month"]),
        table(&["ACTION", "CALLS"], &rows)
    )
}

fn audit_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["entries"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| {
                    // Money movements show their amount: what an operator looks for.
                    let detail = match e["after"]["amount"].as_str() {
                        Some(amount) => match e["after"]["idempotency_key"].as_str() {
                            Some(key) => format!("{amount} (key {key})"),
                            None => amount.to_string(),
                        },
                        None => String::new(),
                    };
                    vec![
                        text(&e["at"]),
                        text(&e["actor"]),
                        text(&e["action"]),
                        text(&e["target"]),
                        detail,
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["AT", "ACTOR", "ACTION", "TARGET", "AMOUNT"], &rows)
}
