//! The rows of the billing store as plain values, shared by the store, the Redis cache,
//! the gateway's in-memory mirror and the admin API. Must not do I/O.

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
