//! `ekyc-gateway rotate-master-key`: reseals every SecretKey in the billing store under
//! `EKYC_MASTER_KEY`, opening the old ones with `EKYC_MASTER_KEY_PREVIOUS`, and tells
//! the gateways (Redis) about each changed credential. Must not print or log a secret.

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Env, ProcessEnv};
use crate::state::StatePublisher;
use crate::state::mirror::StateMirror;
use crate::state::redis::RedisPublisher;
use crate::store::Store;
use std::path::PathBuf;
use std::sync::Arc;

pub async fn rotate(config: PathBuf) -> anyhow::Result<()> {
    // The upstream's secrets play no part in resealing; the master key is the point.
    let config = Config::load_for_batch(&config, &ProcessEnv)?;
    if ProcessEnv.var("EKYC_MASTER_KEY").is_none() {
        return Err(crate::config::ConfigError::new_public(
            "EKYC_MASTER_KEY",
            "environment variable is not set: it is the key every SecretKey is resealed under",
        )
        .into());
    }
    if std::env::var_os("EKYC_MASTER_KEY_PREVIOUS").is_none() {
        eprintln!(
            "note: EKYC_MASTER_KEY_PREVIOUS is not set; only keys already sealed by EKYC_MASTER_KEY can be opened"
        );
    }
    let store = Store::open(&config.store_url, config.store_migrate_url.as_deref()).await?;
    let changed = store
        .reseal_credentials(&config.master_key, "rotate-master-key", SystemClock.now_unix())
        .await?;
    if let Some(target) = &config.state.redis {
        let publisher = RedisPublisher::new(target, Arc::new(StateMirror::new(config.master_key.clone())))?;
        for record in &changed {
            publisher.credential_changed(record).await?;
        }
    }
    println!(
        "resealed {} credential(s) under master key {}",
        changed.len(),
        config.master_key.id()
    );
    Ok(())
}
