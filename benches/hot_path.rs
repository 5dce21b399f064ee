//! Criterion benchmarks of the per-request work on the data listener's hot path:
//! TC3 verification (payload hash + signature), catalog lookup, metrics recording, and
//! building the re-signed upstream Authorization. Run: `cargo bench --bench hot_path`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ekyc_gateway::catalog::Catalog;
use ekyc_gateway::config::{ActionConfig, DEFAULT_ACTIONS};
use ekyc_gateway::metrics::{Metrics, Outcome};
use ekyc_gateway::tc3::{self, SignedRequest, Signer};
use http::HeaderMap;
use std::hint::black_box;

const TIMESTAMP: i64 = 1_795_667_476;

fn signed_headers(body: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("host", "127.0.0.1:8080".parse().unwrap());
    headers.insert("x-tc-timestamp", TIMESTAMP.to_string().parse().unwrap());
    let hash = tc3::sha256_hex(body);
    let authorization = Signer::new("AKIDbench", "bench-key", "faceid").authorization(&SignedRequest {
        method: "POST",
        query: "",
        headers: &headers,
        payload_hash_hex: &hash,
        timestamp: TIMESTAMP,
    });
    headers.insert("authorization", authorization.parse().unwrap());
    headers
}

fn verify(headers: &HeaderMap, body: &[u8], key: &[u8; 32]) {
    let auth = tc3::parse_authorization(headers["authorization"].to_str().unwrap()).unwrap();
    let timestamp = tc3::request_timestamp(headers).unwrap();
    tc3::check_time(&auth, timestamp, TIMESTAMP).unwrap();
    let hash = tc3::payload_hash(headers, body);
    let request = SignedRequest {
        method: "POST",
        query: "",
        headers,
        payload_hash_hex: &hash,
        timestamp,
    };
    tc3::verify_signature(&auth, &request, key).unwrap();
}

fn tc3_verification(c: &mut Criterion) {
    let key = tc3::signing_key("bench-key", "2026-11-26", "faceid");
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
        })
        .collect();
    let catalog = Catalog::new(&actions);
    let metrics = Metrics::new(&catalog);
    c.bench_function("catalog_lookup", |b| {
        b.iter(|| catalog.lookup(black_box("LivenessCompare")))
    });
    let id = catalog.lookup("LivenessCompare");
    c.bench_function("metrics_record_request", |b| {
        b.iter(|| metrics.record_request(black_box(id), Outcome::Forwarded, 0.000_8))
    });
}

criterion_group!(benches, tc3_verification, upstream_signature, catalog_and_metrics);
criterion_main!(benches);
