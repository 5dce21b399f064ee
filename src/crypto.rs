//! Secrets at rest and credential generation. SecretKeys are sealed with AES-256-GCM
//! under the master key (`EKYC_MASTER_KEY`) before they reach the billing store or
//! Redis, and opened only in gateway memory; API keys are kept only as SHA-256 hashes.
//! Must not log, format or return a secret in an error.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("EKYC_MASTER_KEY must be 32 bytes as 64 hex digits or base64")]
    BadMasterKey,
    #[error("a sealed secret is malformed")]
    Malformed,
    #[error("a sealed secret was sealed with master key {0}, which is not configured")]
    UnknownKey(String),
    #[error("a sealed secret failed authentication (wrong master key or tampered data)")]
    Unauthentic,
}

/// The master key, identified by a short fingerprint so a sealed value names its key.
pub struct MasterKey {
    key: LessSafeKey,
    id: String,
    /// During a rotation: the key being retired, still able to open what it sealed.
    previous: Option<Box<MasterKey>>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.previous {
            Some(previous) => write!(f, "MasterKey({}, previous {})", self.id, previous.id),
            None => write!(f, "MasterKey({})", self.id),
        }
    }
}

impl MasterKey {
    /// Parses 32 bytes given as 64 hex digits or as base64.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok())
            .filter(|b| b.len() == 32)
            .ok_or(CryptoError::BadMasterKey)?;
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| CryptoError::BadMasterKey)?;
        let id = hex::encode(&Sha256::digest(bytes)[..4]);
        Ok(Self {
            key: LessSafeKey::new(unbound),
            id,
            previous: None,
        })
    }

    /// This key, also opening what `previous` sealed (`EKYC_MASTER_KEY_PREVIOUS`, during
    /// a rotation). New seals always use this key.
    pub fn with_previous(mut self, previous: MasterKey) -> Self {
        self.previous = Some(Box::new(previous));
        self
    }

    /// Whether `sealed` was sealed by another key than this one (it should be resealed).
    pub fn is_stale(&self, sealed: &str) -> bool {
        sealed.split('.').nth(1) != Some(self.id.as_str())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// `v1.<key id>.<base64(nonce ‖ ciphertext ‖ tag)>`; the account id is bound as
    /// associated data so a sealed key cannot be moved to another account.
    pub fn seal(&self, plaintext: &str, bound_to: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the OS random source works");
        let mut data = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(bound_to.as_bytes()),
                &mut data,
            )
            .expect("AES-GCM sealing cannot fail for in-range lengths");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&data);
        format!("v1.{}.{}", self.id, STANDARD_NO_PAD.encode(blob))
    }

    pub fn open(&self, sealed: &str, bound_to: &str) -> Result<String, CryptoError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(key_id), Some(blob)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CryptoError::Malformed);
        };
        if key_id != self.id {
            return match &self.previous {
                Some(previous) if previous.id == key_id => previous.open(sealed, bound_to),
                _ => Err(CryptoError::UnknownKey(key_id.to_string())),
            };
        }
        let blob = STANDARD_NO_PAD.decode(blob).map_err(|_| CryptoError::Malformed)?;
        if blob.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(CryptoError::Malformed);
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Malformed)?;
        let mut data = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(bound_to.as_bytes()), &mut data)
            .map_err(|_| CryptoError::Unauthentic)?;
        String::from_utf8(plain.to_vec()).map_err(|_| CryptoError::Malformed)
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the OS random source works");
    bytes
}

const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn random_alphanumeric(len: usize) -> String {
    // Rejection sampling keeps every character equally likely.
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in random_bytes::<64>() {
            if (b as usize) < 248 && out.len() < len {
                out.push(ALPHANUMERIC[b as usize % 62] as char);
            }
        }
    }
    out
}

/// A new SecretId in Tencent's shape: `AKID` and 32 letters or digits (≈ 190 bits).
pub fn new_secret_id() -> String {
    format!("AKID{}", random_alphanumeric(32))
}

/// A new SecretKey: 32 letters or digits (≈ 190 bits).
pub fn new_secret_key() -> String {
    random_alphanumeric(32)
}

/// A new API key: `ak_` and 32 random bytes in base64url (256 bits).
pub fn new_api_key() -> String {
    format!("ak_{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

/// What the store keeps of an API key.
pub fn api_key_hash(api_key: &str) -> [u8; 32] {
    Sha256::digest(api_key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::parse(&"11".repeat(32)).unwrap()
    }

    #[test]
    fn seal_and_open_round_trip_bound_to_the_account() {
        let k = key();
        let sealed = k.seal("my-secret-key", "acme");
        assert!(!sealed.contains("my-secret-key"));
        assert_eq!(k.open(&sealed, "acme").unwrap(), "my-secret-key");
        assert!(matches!(k.open(&sealed, "other"), Err(CryptoError::Unauthentic)));
        let other = MasterKey::parse(&"22".repeat(32)).unwrap();
        assert!(matches!(other.open(&sealed, "acme"), Err(CryptoError::UnknownKey(_))));
        let mut tampered = sealed.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(k.open(&tampered, "acme").is_err());
    }

    #[test]
    fn master_key_accepts_hex_or_base64_of_32_bytes_only() {
        assert!(MasterKey::parse(&"ab".repeat(32)).is_ok());
        assert!(MasterKey::parse(&base64::engine::general_purpose::STANDARD.encode([7u8; 32])).is_ok());
        assert!(MasterKey::parse("short").is_err());
        assert!(MasterKey::parse(&"ab".repeat(16)).is_err());
    }

    #[test]
    fn generated_credentials_have_their_shapes() {
        let id = new_secret_id();
        assert!(id.starts_with("AKID") && id.len() == 36);
        assert_eq!(new_secret_key().len(), 32);
        let api = new_api_key();
        assert!(api.starts_with("ak_") && api.len() == 46);
        assert_ne!(new_api_key(), api);
        assert_ne!(new_secret_key(), new_secret_key());
    }
}
