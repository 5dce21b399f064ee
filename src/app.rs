//! The one shared application state, built once from the `Config` and handed to every
//! listener and background task as an `Arc`. No global state lives anywhere else.
//! Must not start tasks or bind sockets: `server` does that.

use crate::catalog::Catalog;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::forward::UpstreamClient;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

pub type ShutdownHook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

pub struct App {
    pub config: Config,
    pub clock: SharedClock,
    pub catalog: Catalog,
    pub upstream: UpstreamClient,
    pub metrics: Metrics,
    shutdown_hooks: Mutex<Vec<ShutdownHook>>,
}

impl App {
    pub fn new(config: Config, clock: SharedClock) -> anyhow::Result<Arc<Self>> {
        let catalog = Catalog::new(&config.actions);
        let upstream = UpstreamClient::new(&config.upstream, config.limits.max_body_bytes)?;
        let metrics = Metrics::new(&catalog);
        Ok(Arc::new(Self {
            config,
            clock,
            catalog,
            upstream,
            metrics,
            shutdown_hooks: Mutex::new(Vec::new()),
        }))
    }

    /// Registers work to run once in-flight requests have finished (e.g. the final
    /// counter flush). Hooks run in registration order.
    pub fn on_shutdown(&self, hook: ShutdownHook) {
        self.shutdown_hooks.lock().expect("hook list poisoned").push(hook);
    }

    pub(crate) async fn run_shutdown_hooks(&self) {
        let hooks = std::mem::take(&mut *self.shutdown_hooks.lock().expect("hook list poisoned"));
        for hook in hooks {
            hook().await;
        }
    }
}
