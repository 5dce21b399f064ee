//! Hostile HTTP/2 on the data listener (h2c by prior knowledge, the same code path as
//! h2 over TLS): rapid reset (CVE-2023-44487), a CONTINUATION flood, and SETTINGS and
//! PING floods from a client that never reads. Frames are written by hand, because a
//! well-behaved client library cannot misbehave. Each attack must end in a GOAWAY, a
//! closed connection or a stalled attacker, with the gateway's memory bounded and honest
//! clients served during the attack.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `POST /` over http to 127.0.0.1, HPACK-encoded with static-table indices only.
fn request_headers() -> Vec<u8> {
    let mut block = vec![0x83, 0x86, 0x84, 0x01, 9];
    block.extend_from_slice(b"127.0.0.1");
    block
}

/// One HPACK literal header (without indexing, new name) of about `value_len` bytes.
fn literal_header(value_len: usize) -> Vec<u8> {
    assert!(value_len < 127);
    let mut block = vec![0x00, 7];
    block.extend_from_slice(b"x-flood");
    block.push(value_len as u8);
    block.extend(std::iter::repeat_n(b'a', value_len));
    block
}

/// What the server wrote back, frame by frame, until it closed or `wait` passed.
struct ServerFrames {
    goaway_code: Option<u32>,
    closed: bool,
}

async fn read_frames(mut stream: tokio::net::tcp::OwnedReadHalf, wait: Duration) -> ServerFrames {
    let mut seen = ServerFrames {
        goaway_code: None,
        closed: false,
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut header = [0u8; 9];
    loop {
        match tokio::time::timeout_at(deadline, stream.read_exact(&mut header)).await {
            Err(_) => return seen,
            Ok(Err(_)) => {
                seen.closed = true;
                return seen;
            }
            Ok(Ok(_)) => {}
        }
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; length];
        match tokio::time::timeout_at(deadline, stream.read_exact(&mut payload)).await {
            Err(_) => return seen,
            Ok(Err(_)) => {
                seen.closed = true;
                return seen;
            }
            Ok(Ok(_)) => {}
        }
        if header[3] == GOAWAY && payload.len() >= 8 {
            seen.goaway_code = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
    }
}

/// Honest calls over HTTP/1.1 and h2c while an attack runs: each must succeed within
/// a second. Returns the slowest.
async fn honest_calls(gateway: &GatewayHandle, rounds: usize) -> Duration {
    let (h1, h2) = (http1_client(), h2c_client());
    let mut slowest = Duration::ZERO;
    for round in 0..rounds {
        let client = if round % 2 == 0 { &h1 } else { &h2 };
        let started = Instant::now();
        let answer = send(client, call(gateway, "IdCardVerification", "{}")).await;
        assert_eq!(answer["Result"], "0", "{answer}");
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < Duration::from_secs(1), "honest calls took up to {slowest:?}");
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_with_goaway() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let stream = TcpStream::connect(gateway.data).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let frames = tokio::spawn(read_frames(reader, Duration::from_secs(20)));

    // 20,000 streams, each opened and cancelled at once, sent in batches as fast as
    // the socket takes them.
    let headers = request_headers();
    let mut sent_streams = 0u32;
    let attack = async {
        writer.write_all(PREFACE).await?;
        writer.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
        for batch in 0..200u32 {
            let mut bytes = Vec::new();
            for i in 0..100u32 {
                let id = 1 + 2 * (batch * 100 + i);
                bytes.extend(frame(HEADERS, END_HEADERS, id, &headers));
                bytes.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
            }
            writer.write_all(&bytes).await?;
            sent_streams += 100;
        }
        std::io::Result::Ok(())
    };
    let (attack_result, slowest) = tokio::join!(attack, honest_calls(&gateway, 20));
    let seen = frames.await.unwrap();
    eprintln!(
        "rapid reset: {sent_streams} streams written ({attack_result:?}), GOAWAY {:?}, closed {}, slowest honest call {slowest:?}",
        seen.goaway_code, seen.closed
    );
    // ENHANCE_YOUR_CALM (0xb): the server noticed, said so and hung up.
    assert_eq!(
        seen.goaway_code,
        Some(0xb),
        "rapid reset must end in GOAWAY ENHANCE_YOUR_CALM"
    );
    assert!(seen.closed);
    assert!(sent_streams < 20_000 || attack_result.is_ok());
    honest_calls(&gateway, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_bounded_and_closed() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let stream = TcpStream::connect(gateway.data).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let frames = tokio::spawn(read_frames(reader, Duration::from_secs(20)));
    let before = resident_kib(std::process::id());

    // One header block that never ends: HEADERS without END_HEADERS, then CONTINUATION
    // frames of 16 KiB each, up to 256 MiB in all unless the server stops it first.
    let mut chunk = Vec::new();
    while chunk.len() + 110 < 16_384 {
        chunk.extend(literal_header(100));
    }
    let continuation = frame(CONTINUATION, 0, 1, &chunk);
    let mut written = 0usize;
    let attack = async {
        writer.write_all(PREFACE).await?;
        writer.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
        writer.write_all(&frame(HEADERS, 0, 1, &request_headers())).await?;
        while written < 256 << 20 {
            writer.write_all(&continuation).await?;
            written += continuation.len();
        }
        std::io::Result::Ok(())
    };
    let attack = tokio::time::timeout(Duration::from_secs(15), attack);
    let (attack_result, slowest) = tokio::join!(attack, honest_calls(&gateway, 20));
    let seen = frames.await.unwrap();
    let grown_kib = resident_kib(std::process::id()).saturating_sub(before);
    eprintln!(
        "CONTINUATION flood: {} KiB written before the server stopped it ({attack_result:?}), GOAWAY {:?}, closed {}, RSS +{grown_kib} KiB, slowest honest call {slowest:?}",
        written / 1024,
        seen.goaway_code,
        seen.closed
    );
    assert!(written < 256 << 20, "the server must stop an endless header block");
    assert!(seen.closed, "the connection must be closed");
    assert!(grown_kib < 64 * 1024, "memory grew by {grown_kib} KiB");
    honest_calls(&gateway, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_ping_floods_from_a_client_that_never_reads_stall_only_that_client() {
    let sim = SimHandle::start(|_| {}).await;
    let gateway = GatewayHandle::start(&sim, "").await;
    let before = resident_kib(std::process::id());
    let mut stalled_attackers = Vec::new();
    for (name, flood) in [
        ("SETTINGS", frame(SETTINGS, 0, 0, &[])),
        ("PING", frame(PING, 0, 0, &[7u8; 8])),
    ] {
        let stream = TcpStream::connect(gateway.data).await.unwrap();
        // The attacker never reads: every acknowledgement the server owes piles up
        // unless it stops reading while it cannot write.
        let (_reader, mut writer) = stream.into_split();
        let batch: Vec<u8> = flood.iter().copied().cycle().take(flood.len() * 4096).collect();
        let mut written = 0usize;
        let attack = async {
            writer.write_all(PREFACE).await?;
            writer.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
            // Up to 1 GiB of control frames; a write that waits 2 s means the server
            // has stopped reading this connection.
            while written < 1 << 30 {
                match tokio::time::timeout(Duration::from_secs(2), writer.write_all(&batch)).await {
                    Ok(result) => result?,
                    Err(_) => return std::io::Result::Ok(true),
                }
                written += batch.len();
            }
            std::io::Result::Ok(false)
        };
        let (stalled, slowest) = tokio::join!(attack, honest_calls(&gateway, 20));
        let grown_kib = resident_kib(std::process::id()).saturating_sub(before);
        eprintln!(
            "{name} flood: {} KiB written, stalled {stalled:?}, RSS +{grown_kib} KiB, slowest honest call {slowest:?}",
            written / 1024
        );
        // Either the server stopped reading (back-pressure) or closed the connection.
        assert!(
            matches!(stalled, Ok(true) | Err(_)),
            "{name}: the server kept reading 1 GiB without acknowledging"
        );
        assert!(grown_kib < 64 * 1024, "{name}: memory grew by {grown_kib} KiB");
        // Kept open to the end, so the stalled connection stays stalled.
        stalled_attackers.push(writer);
    }
    honest_calls(&gateway, 4).await;
}
