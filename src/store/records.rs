//! The rows of the billing store as plain values, shared by the store, the Redis cache,
//! the gateway's in-memory mirror and the admin API. Must not do I/O.

use crate::billing::pricing::format_amount;
use crate::clock::rfc3339;
use serde::{Deserialize, Serialize};

/// Why an account is refused. `Arrears` is set and lifted by billing; `Manual` only by
/// an operator. Either one refuses every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SuspensionFlag {
    Manual,
    Arrears,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    pub reason: String,
    /// Unix seconds.
    pub since: i64,
}

/// Whether an account may call: the one rule, for the pipeline (through the mirror's
/// flags) and for the API's `enabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStanding {
    Enabled,
    NotActivated,
    Arrears,
    ManuallySuspended,
}

impl AccountStanding {
    /// The first reason to refuse, in the order Tencent reports them: a manual
    /// suspension outranks arrears, and both outrank "not activated".
    pub fn of(activated: bool, manually_suspended: bool, in_arrears: bool) -> Self {
        if manually_suspended {
            AccountStanding::ManuallySuspended
        } else if in_arrears {
            AccountStanding::Arrears
        } else if !activated {
            AccountStanding::NotActivated
        } else {
            AccountStanding::Enabled
        }
    }
}

/// An account as the store keeps it. `version` grows by one with every change, so
/// caches apply a copy only when it is newer than the one they hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub id: String,
    pub name: String,
    pub activated: bool,
    pub activated_at: Option<i64>,
    pub manual: Option<Suspension>,
    pub arrears: Option<Suspension>,
    pub rate_limit_qps: Option<u32>,
    /// Micro-units the account may owe before calls are refused; `None`: the configured
    /// default (`billing.credit_limit`). 0 is prepaid.
    #[serde(default)]
    pub credit_limit: Option<i64>,
    pub created_at: i64,
    pub version: i64,
}

impl AccountRecord {
    /// The account as every interface shows it (admin API, audit log): times RFC 3339,
    /// money a decimal string.
    pub fn view(&self) -> serde_json::Value {
        let suspensions: Vec<serde_json::Value> = [SuspensionFlag::Manual, SuspensionFlag::Arrears]
            .into_iter()
            .filter_map(|flag| {
                self.suspension(flag)
                    .map(|s| serde_json::json!({"flag": flag, "reason": s.reason, "since": rfc3339(s.since)}))
            })
            .collect();
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "activated": self.activated,
            "activated_at": self.activated_at.map_or(serde_json::Value::Null, rfc3339),
            "enabled": self.enabled(),
            "suspensions": suspensions,
            "rate_limit_qps": self.rate_limit_qps,
            "credit_limit": self.credit_limit.map(format_amount),
            "created_at": rfc3339(self.created_at),
            "version": self.version,
        })
    }

    pub fn new(id: &str, name: &str, now: i64) -> Self {
        Self {
            id: id.to_string(),
            name: name.to_string(),
            activated: false,
            activated_at: None,
            manual: None,
            arrears: None,
            rate_limit_qps: None,
            credit_limit: None,
            created_at: now,
            version: 1,
        }
    }

    /// Activated and carrying no suspension flag.
    pub fn enabled(&self) -> bool {
        AccountStanding::of(self.activated, self.manual.is_some(), self.arrears.is_some()) == AccountStanding::Enabled
    }

    pub fn suspension(&self, flag: SuspensionFlag) -> Option<&Suspension> {
        match flag {
            SuspensionFlag::Manual => self.manual.as_ref(),
            SuspensionFlag::Arrears => self.arrears.as_ref(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialStatus {
    Active,
    Revoked,
}

impl CredentialStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialStatus::Active => "active",
            CredentialStatus::Revoked => "revoked",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(CredentialStatus::Active),
            "revoked" => Some(CredentialStatus::Revoked),
            _ => None,
        }
    }
}

/// A credential as stored: the SecretKey sealed under the master key, the API key only
/// as a SHA-256 hash (hex). Safe to log field by field: it holds no usable secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    pub secret_id: String,
    pub account_id: String,
    pub secret_key_sealed: String,
    pub api_key_hash: String,
    pub status: CredentialStatus,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub version: i64,
}

impl CredentialRecord {
    /// The credential as every interface shows it: never the sealed key or the key hash.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "secret_id": self.secret_id,
            "account": self.account_id,
            "status": self.status,
            "created_at": rfc3339(self.created_at),
            "revoked_at": self.revoked_at.map_or(serde_json::Value::Null, rfc3339),
        })
    }
}

/// One entry of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}
