//! Criterion benchmarks of the per-request work on the data listener's hot path:
//! TC3 verification (payload hash + signature), catalog lookup, metrics recording, and
//! building the re-signed upstream Authorization, and authentication + state + rate
//! limit against 1 M loaded credentials (`BENCH_ACCOUNTS` to change the count).
//! Run: `cargo bench --bench hot_path`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ekyc_gateway::catalog::ActionId;
use ekyc_gateway::catalog::Catalog;
use ekyc_gateway::config::{ActionConfig, DEFAULT_ACTIONS};
use ekyc_gateway::crypto::MasterKey;
use ekyc_gateway::metrics::{CallAction, Metrics, Outcome};
use ekyc_gateway::proxy::auth::{self, CallerCache};
use ekyc_gateway::proxy::body::ReceivedBody;
use ekyc_gateway::proxy::fields::RequestFields;
use ekyc_gateway::proxy::ratelimit::RateLimits;
use ekyc_gateway::state::mirror::{AccountStanding, StateMirror};
use ekyc_gateway::store::records::{AccountRecord, CredentialRecord, CredentialStatus};
use ekyc_gateway::tc3::{self, SignedRequest, Signer};
use http::HeaderMap;
use std::hint::black_box;
use std::sync::Arc;

const TIMESTAMP: i64 = 1_795_667_476;

fn signed_headers(body: &[u8]) -> HeaderMap {
    signed_headers_by(&Signer::new("AKIDbench", "bench-key", "faceid"), body)
}

/// The headers of a POST signed by `signer` the way the SDKs sign it.
fn signed_headers_by(signer: &Signer, body: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("host", "127.0.0.1:8080".parse().unwrap());
    headers.insert("x-tc-timestamp", TIMESTAMP.to_string().parse().unwrap());
    let hash = tc3::sha256_hex(body);
    let authorization = signer.authorization(&SignedRequest {
        method: "POST",
        query: "",
        headers: &headers,
        payload_hash_hex: &hash,
        timestamp: TIMESTAMP,
    });
    headers.insert("authorization", authorization.parse().unwrap());
    headers
}

/// Phase 2 as the pipeline runs it: the caller's account.
fn authenticate<'c>(
    parts: &http::request::Parts,
    fields: &RequestFields,
    body: &ReceivedBody,
    mirror: &StateMirror,
    callers: &'c mut CallerCache,
) -> &'c ekyc_gateway::state::mirror::AccountEntry {
    let identified = auth::identify(fields, mirror, callers, TIMESTAMP, "faceid").unwrap();
    let caller = auth::verify(identified, parts, fields, body, mirror, callers, TIMESTAMP).unwrap();
    caller.credential.account()
}

fn verify(headers: &HeaderMap, body: &[u8], key: &tc3::SigningKey) {
    let auth = tc3::parse_authorization(headers["authorization"].to_str().unwrap()).unwrap();
    let timestamp = tc3::request_timestamp(headers).unwrap();
    tc3::check_time(&auth, timestamp, TIMESTAMP).unwrap();
    let hash = tc3::payload_hash(headers, body);
    let request = SignedRequest {
        method: "POST",
        query: "",
        headers,
        payload_hash_hex: hash.as_str(),
        timestamp,
    };
    tc3::verify_signature(&auth, &request, key).unwrap();
}

fn tc3_verification(c: &mut Criterion) {
    let key = tc3::SigningKey::derive("bench-key", "2026-11-26", "faceid");
    let mut group = c.benchmark_group("tc3_verify");
    for size in [1024usize, 1024 * 1024] {
        let body = vec![b'a'; size];
        let headers = signed_headers(&body);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("{size}B_body_cached_key"), |b| {
            b.iter(|| verify(black_box(&headers), black_box(&body), &key))
        });
    }
    group.finish();
    c.bench_function("tc3_signing_key_derivation", |b| {
        b.iter(|| tc3::signing_key(black_box("bench-key"), "2026-11-26", "faceid"))
    });
}

fn upstream_signature(c: &mut Criterion) {
    let body = vec![b'a'; 1024];
    let mut headers = signed_headers(&body);
    headers.remove("authorization");
    let hash = tc3::sha256_hex(&body);
    let signer = Signer::new("AKIDplatform", "platform-key", "faceid");
    c.bench_function("resign_for_upstream", |b| {
        b.iter(|| {
            signer.authorization(&SignedRequest {
                method: "POST",
                query: "",
                headers: black_box(&headers),
                payload_hash_hex: &hash,
                timestamp: TIMESTAMP,
            })
        })
    });
}

fn catalog_and_metrics(c: &mut Criterion) {
    let actions: Vec<ActionConfig> = DEFAULT_ACTIONS
        .iter()
        .map(|s| ActionConfig {
            name: s.to_string(),
            rate_limit_qps: None,
            billable: true,
        })
        .collect();
    let catalog = Catalog::new(&actions);
    let metrics = Metrics::new(&catalog);
    c.bench_function("catalog_lookup", |b| {
        b.iter(|| catalog.lookup(black_box("LivenessCompare")))
    });
    let id = catalog
        .lookup("LivenessCompare")
        .map_or(CallAction::Unknown, CallAction::Catalog);
    c.bench_function("metrics_record_request", |b| {
        b.iter(|| metrics.record_request(black_box(id), Outcome::Forwarded, 0.000_8))
    });
}

/// A mirror holding `n` activated accounts with one credential each, as a gateway
/// holds them after loading; SecretId `AKID{i:032}`, key `key-{i}`, API key `ak-{i}`.
fn loaded_mirror(n: usize) -> StateMirror {
    let master = Arc::new(MasterKey::parse(&"42".repeat(32)).unwrap());
    let mirror = StateMirror::new(master.clone());
    for i in 0..n {
        let account_id = format!("acct-{i}");
        let mut account = AccountRecord::new(&account_id, "bench", 0);
        account.activated = true;
        mirror.apply_account(&account);
        mirror
            .apply_credential(&CredentialRecord {
                secret_id: format!("AKID{i:032}"),
                account_id: account_id.clone(),
                secret_key_sealed: master.seal(&format!("key-{i}"), &account_id),
                api_key_hash: hex::encode(ekyc_gateway::crypto::api_key_hash(&format!("ak-{i}"))),
                status: CredentialStatus::Active,
                created_at: 0,
                revoked_at: None,
                version: 1,
            })
            .unwrap();
    }
    mirror
}

/// Phase 2 as the pipeline runs it (identify from headers, verify over the body), plus
/// the state and rate-limit checks, with 1 M credentials loaded.
fn auth_with_a_million_credentials(c: &mut Criterion) {
    let n: usize = std::env::var("BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let started = std::time::Instant::now();
    let mirror = loaded_mirror(n);
    eprintln!("loaded {n} accounts and credentials in {:?}", started.elapsed());
    let limits = RateLimits::new(
        0,
        &[ActionConfig {
            name: "LivenessCompare".into(),
            rate_limit_qps: None,
            billable: true,
        }],
    );
    let limited = RateLimits::new(
        1_000_000_000,
        &[ActionConfig {
            name: "LivenessCompare".into(),
            rate_limit_qps: None,
            billable: true,
        }],
    );
    let i = n / 2;
    let signer = Signer::new(format!("AKID{i:032}"), format!("key-{i}"), "faceid");
    // Metering as the pipeline does it: the month of the call, the admission check
    // before forwarding, the count in the memory-mapped journal after the answer.
    let journal_dir = tempfile::tempdir().unwrap();
    let journal =
        ekyc_gateway::meter::journal::Journal::open(&journal_dir.path().join("meter.journal"), 2_000_000, "bench")
            .unwrap();
    let counters = ekyc_gateway::meter::Counters::new(journal, 2_000_000);
    let mut group = c.benchmark_group("auth_1M");
    for size in [1024usize, 1024 * 1024] {
        let body = vec![b'a'; size];
        let headers = signed_headers_by(&signer, &body);
        // As the HTTP/1.1 server hands over a body that came with its head: not hashed yet.
        let received = ReceivedBody::unhashed(body.clone().into());
        let mut request = http::Request::post("/").body(()).unwrap();
        *request.headers_mut() = headers;
        let (parts, ()) = request.into_parts();
        // As the HTTP/1.1 server hands them over (built while the head is taken).
        let fields = RequestFields::from_header_map(&parts.headers);
        group.throughput(Throughput::Bytes(size as u64));
        // A fresh CallerCache each call: every call looks its credential up in the
        // mirror, as the first call on a connection does.
        group.bench_function(format!("tc3_identify_verify_{size}B"), |b| {
            b.iter(|| {
                let mut callers = CallerCache::default();
                black_box(authenticate(&parts, &fields, black_box(&received), &mirror, &mut callers).standing())
            })
        });
        if size == 1024 {
            // Phases 2, 3 and 5 as the pipeline runs them.
            let admit = |callers: &mut CallerCache| {
                let account = authenticate(&parts, &fields, black_box(&received), &mirror, callers);
                assert_eq!(account.standing(), AccountStanding::Enabled);
                limited.check(account, ActionId(0)).unwrap();
                account.index()
            };
            group.bench_function("tc3_auth_state_ratelimit_1024B", |b| {
                b.iter(|| admit(&mut CallerCache::default()))
            });
            // The next calls on a kept-alive connection: the credential is held.
            let mut kept = CallerCache::default();
            group.bench_function("tc3_auth_state_ratelimit_1024B_kept_connection", |b| {
                b.iter(|| admit(&mut kept))
            });
            group.bench_function("tc3_auth_state_ratelimit_meter_1024B", |b| {
                b.iter(|| {
                    let mut callers = CallerCache::default();
                    let index = admit(&mut callers);
                    let key = ekyc_gateway::meter::CounterKey {
                        account: index,
                        action: 0,
                        month: ekyc_gateway::meter::Month::of(TIMESTAMP, 8 * 3600).unwrap(),
                    };
                    assert!(counters.admits(&key));
                    counters.add(key, TIMESTAMP, || (format!("acct-{i}"), "LivenessCompare".to_string()));
                })
            });
        }
    }
    let mut headers = HeaderMap::new();
    headers.insert("authorization", format!("Bearer ak-{i}").parse().unwrap());
    let fields = RequestFields::from_header_map(&headers);
    group.bench_function("api_key_identify", |b| {
        b.iter(|| {
            let identified = auth::identify(
                black_box(&fields),
                &mirror,
                &mut CallerCache::default(),
                TIMESTAMP,
                "faceid",
            )
            .unwrap();
            black_box(matches!(identified, auth::Identified::ApiKey));
        })
    });
    let account = mirror.account(&format!("acct-{i}")).unwrap();
    group.bench_function("rate_limit_check_unlimited", |b| {
        b.iter(|| limits.check(black_box(&account), ActionId(0)))
    });
    group.bench_function("rate_limit_check_limited", |b| {
        b.iter(|| limited.check(black_box(&account), ActionId(0)))
    });
    group.finish();
}

/// Counting a billable call, and the streaming billable check of a 5 MiB answer.
fn metering(c: &mut Criterion) {
    use ekyc_gateway::meter::billable::BillableScanner;
    use ekyc_gateway::meter::journal::Journal;
    use ekyc_gateway::meter::{CounterKey, Counters, Month};
    // The real thing: counters in a memory-mapped journal file.
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("meter.journal"), 2_000_000, "bench").unwrap();
    let counters = Counters::new(journal, 2_000_000);
    let names = |account: u32| move || (format!("acct-{account}"), "LivenessCompare".to_string());
    let key = |account: u32| CounterKey {
        account,
        action: 3,
        month: Month(24_322),
    };
    for account in 0..1_000_000 {
        counters.add(key(account), 1, names(account));
    }
    c.bench_function("meter_increment_1M_keys_uncontended", |b| {
        let mut i = 0u32;
        b.iter(|| {
            i = (i + 7919) % 1_000_000;
            counters.add(black_box(key(i)), 1, names(i))
        })
    });
    c.bench_function("meter_increment_one_key_uncontended", |b| {
        b.iter(|| counters.add(black_box(key(42)), 1, names(42)))
    });
    c.bench_function("meter_increment_hot_key_2_threads", |b| {
        b.iter_custom(|iterations| {
            let started = std::time::Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..iterations {
                            counters.add(black_box(key(42)), 1, names(42));
                        }
                    });
                }
            });
            started.elapsed() / 2
        })
    });
    let image = "A".repeat(5 << 20);
    let answer = format!(r#"{{"Response":{{"BestFrameBase64":"{image}","Result":"Success","RequestId":"x"}}}}"#);
    let mut group = c.benchmark_group("billable_check");
    group.throughput(Throughput::Bytes(answer.len() as u64));
    group.bench_function("5MiB_answer_in_16KiB_frames", |b| {
        b.iter(|| {
            let mut scanner = BillableScanner::new();
            for frame in answer.as_bytes().chunks(16 * 1024) {
                scanner.feed(black_box(frame));
            }
            assert!(scanner.is_billable());
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    metering,
    tc3_verification,
    upstream_signature,
    catalog_and_metrics,
    auth_with_a_million_credentials
);
criterion_main!(benches);
