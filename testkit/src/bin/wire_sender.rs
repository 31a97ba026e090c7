//! Speaks the injection library's wire format to gapscoped's deep-mode
//! socket with known content, for tests: a stand-in for the sending side
//! only (the daemon under test is real). Prints "ready", waits for a line,
//! connects and sends one scenario, prints what it sent and "done", then
//! holds the connection until stdin closes.
//!
//! Usage: gapscope-wire-sender SOCKET SCENARIO
//!   known      hello, names, 100 kernels (gemm 50 µs and norm 20 µs,
//!              one every 100 µs), their API calls 5 µs before each, 10
//!              copies of 1 MiB device to host, a sync, a dropped report
//!   garbage    hello, then bytes that are not a frame
//!   no-hello   records without a hello first
//!   flood N    hello, then N one-record frames as fast as possible
//!   truncated  a header promising 1000 bytes, 10 of them, then close

use std::{
    io::{BufRead as _, Write as _},
    os::unix::net::UnixStream,
};

use gapscope_wire::{ClockMode, Frame, Hello, Name, Record, RecordKind, copy, encode};

use gapscope_clock::monotonic_ns as now_ns;

fn hello() -> Frame {
    Frame::Hello(Hello {
        pid: std::process::id(),
        cuda_version: 12080,
        cupti_version: 24,
        clock: ClockMode::Offset,
        clock_offset_ns: 1234,
        agent: "gapscope-wire-sender (test)".into(),
    })
}

fn record(kind: RecordKind, correlation: u32, name: u32, start: u64, end: u64) -> Record {
    Record {
        kind,
        device: 0,
        detail: copy::DEVICE_TO_HOST,
        stream: 7,
        correlation,
        name,
        start_ns: start,
        end_ns: end,
        bytes: 1 << 20,
        thread: 0,
        graph: 0,
    }
}

/// The `known` scenario's frames, starting at `base` (CLOCK_MONOTONIC).
fn known(base: u64) -> Vec<Frame> {
    let us = 1_000u64;
    let mut records = Vec::new();
    for i in 0..100u64 {
        let start = base + i * 100 * us;
        let (name, duration) = if i % 2 == 0 {
            (1, 50 * us)
        } else {
            (2, 20 * us)
        };
        let correlation = i as u32 + 1;
        records.push(record(
            RecordKind::RuntimeApi,
            correlation,
            211,
            start - 5 * us,
            start - 3 * us,
        ));
        records.push(record(
            RecordKind::Kernel,
            correlation,
            name,
            start,
            start + duration,
        ));
    }
    // Copies after the kernels: 10 µs each, one every 100 µs.
    let copies = base + 100 * 100 * us;
    for i in 0..10u64 {
        let start = copies + i * 100 * us;
        records.push(record(RecordKind::Memcpy, 0, 0, start, start + 10 * us));
    }
    records.push(record(RecordKind::Sync, 0, 0, base, base + 3 * us));
    vec![
        hello(),
        Frame::Names(vec![
            Name {
                id: 1,
                text: "ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_tn".into(),
            },
            Name {
                id: 2,
                text: "void vllm::rms_norm_kernel<c10::BFloat16>".into(),
            },
        ]),
        Frame::Records(records),
        Frame::Dropped {
            records: 3,
            buffers: 1,
        },
    ]
}

fn send(stream: &mut UnixStream, frames: &[Frame]) -> std::io::Result<()> {
    let mut out = Vec::new();
    for f in frames {
        encode(f, &mut out);
    }
    stream.write_all(&out)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: gapscope-wire-sender SOCKET known|garbage|no-hello|flood N|truncated");
        std::process::exit(2);
    }
    println!("ready");
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    let _ = stdin.read_line(&mut line);
    let mut stream = UnixStream::connect(&args[1]).expect("connecting to gapscoped's socket");
    let result = match args[2].as_str() {
        "known" => send(&mut stream, &known(now_ns() - 2_000_000_000)),
        "garbage" => {
            send(&mut stream, &[hello()]).and_then(|()| stream.write_all(b"GET / HTTP/1.1\r\n\r\n"))
        }
        "no-hello" => send(
            &mut stream,
            &[Frame::Records(vec![record(RecordKind::Kernel, 1, 0, 1, 2)])],
        ),
        "flood" => {
            let n: usize = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(1000);
            let t = now_ns() - 2_000_000_000;
            let frames: Vec<Frame> = std::iter::once(hello())
                .chain((0..n as u64).map(|i| {
                    Frame::Records(vec![record(
                        RecordKind::Kernel,
                        0,
                        0,
                        t + i * 10,
                        t + i * 10 + 5,
                    )])
                }))
                .collect();
            send(&mut stream, &frames)
        }
        "truncated" => {
            let mut header = b"GSCP".to_vec();
            header.extend_from_slice(&1u16.to_le_bytes());
            header.extend_from_slice(&2u16.to_le_bytes());
            header.extend_from_slice(&1000u32.to_le_bytes());
            header.extend_from_slice(&[0; 10]);
            let r = send(&mut stream, &[hello()]).and_then(|()| stream.write_all(&header));
            drop(stream);
            println!("sent {:?}", r.is_ok());
            println!("done");
            return;
        }
        other => {
            eprintln!("unknown scenario {other}");
            std::process::exit(2);
        }
    };
    println!("sent {:?}", result.is_ok());
    println!("done");
    let _ = std::io::stdout().flush();
    // Hold the connection until the test is done with it.
    while stdin.read_line(&mut line).is_ok_and(|n| n > 0) {}
}
