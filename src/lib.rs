//! ekyc-gateway: a gateway that resells Tencent Cloud's eKYC (FaceID) API call by call.
//!
//! Table of contents, in the order a request meets them:
//!
//! | module    | role |
//! | --------- | ---- |
//! | `cli`     | the `ekyc-gateway` command line (thin) |
//! | `config`  | TOML config validated into an immutable `Config`; secrets from the env |
//! | `server`  | listeners, TLS, our HTTP/1.1 server (`server::http1`), hyper for h2, graceful shutdown; `server::run` |
//! | `proxy`   | the data listener's pipeline, its order written down in `proxy/mod.rs`; request headers by position (`proxy::fields`); the data plane's handle (`proxy::plane`), which has no path to the store |
//! | `tc3`     | TC3-HMAC-SHA256 parsing, signing and verification (pure) |
//! | `sigv1`   | the legacy v1 form signature (pure) |
//! | `state`   | account state and credentials: in-memory mirror, Redis cache, publishers |
//! | `store`   | the billing store (PostgreSQL or SQLite): accounts, credentials, audit, usage, bills, ledger |
//! | `accounts` | account changes: the one write path (store and audit, then every gateway) for operators and tenants |
//! | `tenant_desk` | the control plane's bounded answers to tenant actions (the data plane's only way to the store's contents) |
//! | `crypto`  | SecretKeys sealed at rest, credential generation |
//! | `catalog` | the actions this gateway sells |
//! | `meter`   | billable-call counters, the journal, the billable check, the flusher |
//! | `billing` | prices, the monthly billing job, ledger, balance and bill status |
//! | `webhooks` | billing events for the operator's endpoints: built, signed, delivered from the store's outbox |
//! | `admin`   | the admin listener: health, readiness, metrics |
//! | `console` | the tenants' (`/console/`) and operators' (`/ui/`) web pages, embedded |
//! | `metrics` | Prometheus counters, lock-free and sharded per worker on the hot path |
//! | `tencent` | Tencent API 3.0 wire shapes (error body, RequestId) |
//! | `tls`     | rustls server and client configuration |
//! | `app`     | the one shared state, passed down as an `Arc`: the control plane's, holding the data plane's |
//! | `clock`   | injectable time |
//! | `sim`     | the eKYC API simulator (`upstream-sim`) |
//! | `demo`    | `ekyc-gateway demo`: everything on embedded defaults |

pub mod accounts;
pub mod admin;
pub mod app;
pub mod billing;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod crypto;
pub mod demo;
pub mod meter;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod sigv1;
pub mod sim;
pub mod state;
pub mod store;
pub mod tc3;
pub mod tenant_desk;
pub mod tencent;
pub mod tls;
pub mod webhooks;
pub mod workers;
