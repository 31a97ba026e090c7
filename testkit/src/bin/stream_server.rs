//! The streaming test server as a process of its own (for the load
//! generator benchmark, so the server does not share the client's core).
//!
//! usage: gapscope-stream-server PORT THREADS FIRST_TOKEN_MS TOKEN_MS TOKENS_PER_CHUNK
//! Prints "listening PORT" and serves until stdin closes.

use gapscope_testkit::stream_server::{ServerConfig, StreamServer};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: f64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let cfg = ServerConfig {
        first_token_ms: num(2, 0.0),
        token_ms: num(3, 0.0),
        tokens_per_chunk: num(4, 1.0) as u32,
        log_requests: false,
        ..ServerConfig::default()
    };
    let server = StreamServer::start_on(cfg, num(0, 0.0) as u16, num(1, 2.0) as usize);
    println!("listening {}", server.port);
    let mut sink = String::new();
    while std::io::stdin()
        .read_line(&mut sink)
        .map(|n| n > 0)
        .unwrap_or(false)
    {}
}
