//! Drives the injection library's transport with known records, for the
//! tests of what it does when gapscoped is absent, killed, restarted or
//! slow. Prints "ready", waits for a line, then sends RECORDS kernel
//! records in batches of 100 at RATE records a second, prints its counts
//! and "done", and on the next line (or end of input) shuts down.
//!
//! Usage: gapscope-inject-transport-probe SOCKET RECORDS RATE

use std::{
    io::BufRead as _,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use gapscope_inject::{Transport, TransportConfig};
use gapscope_wire::{ClockMode, Hello, Record, RecordKind};

use gapscope_clock::monotonic_ns as now_ns;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: gapscope-inject-transport-probe SOCKET RECORDS RATE");
        std::process::exit(2);
    }
    let total: u64 = args[2].parse().expect("RECORDS");
    let rate: f64 = args[3].parse().expect("RATE");
    let transport = Transport::start(
        TransportConfig::new(&args[1]),
        Hello {
            pid: std::process::id(),
            cuda_version: 0,
            cupti_version: 0,
            clock: ClockMode::Callback,
            clock_offset_ns: 0,
            agent: "gapscope-inject transport probe (test)".into(),
        },
    )
    .expect("starting the transport");
    println!("ready");
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    let _ = stdin.read_line(&mut line);

    let name = transport.intern("ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_tn");
    let start = Instant::now();
    let mut sent = 0u64;
    let mut slowest = Duration::ZERO;
    while sent < total {
        let due = Duration::from_secs_f64(sent as f64 / rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let t = now_ns().saturating_sub(1_000_000_000);
        let n = (total - sent).min(100);
        let batch: Vec<Record> = (0..n)
            .map(|i| Record {
                kind: RecordKind::Kernel,
                device: 0,
                detail: 0,
                stream: 1,
                correlation: (sent + i) as u32,
                name,
                start_ns: t + i * 1000,
                end_ns: t + i * 1000 + 500,
                bytes: 0,
                thread: 0,
                graph: 0,
            })
            .collect();
        let call = Instant::now();
        transport.send_records(batch);
        slowest = slowest.max(call.elapsed());
        sent += n;
    }
    // Let the transport thread write what it can.
    std::thread::sleep(Duration::from_millis(300));
    let s = transport.stats();
    println!("made {total}");
    println!("sent {}", s.records_sent.load(Ordering::Relaxed));
    println!("dropped {}", s.records_dropped.load(Ordering::Relaxed));
    println!("buffered {}", s.records_buffered.load(Ordering::Relaxed));
    println!("connects {}", s.connects.load(Ordering::Relaxed));
    println!("disconnects {}", s.disconnects.load(Ordering::Relaxed));
    println!("slowest_call_us {}", slowest.as_micros());
    println!("done");
    let _ = stdin.read_line(&mut line);
    transport.shutdown();
}
