//! Against a real Python server from targets/: the toy OpenAI-style
//! server (a thread per request, a model lock, a simulated GPU step per
//! token), streamed and whole, completions and chat.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
};

use common::*;

struct Toy(Child, u16);

impl Drop for Toy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn toy(step_ms: &str) -> Toy {
    let port = gapscope_testkit::free_port();
    let mut child = Command::new(gapscope_testkit::target_python())
        .arg(repo_file("targets/toy_server.py"))
        .args([
            "--port",
            &port.to_string(),
            "--step-ms",
            step_ms,
            "--python-work",
            "1000",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line}");
    Toy(child, port)
}

#[test]
fn the_toy_server_streams_every_token_it_promised() {
    let _g = serial();
    let server = toy("2");
    for (api, path, stream) in [
        ("completions", "/v1/completions", true),
        ("chat", "/v1/chat/completions", true),
        ("chat", "/v1/chat/completions", false),
    ] {
        let url = format!("http://127.0.0.1:{}{path}", server.1);
        let mut args = vec![
            "--url",
            &url,
            "--api",
            api,
            "--phase",
            "s=closed:4:2s",
            "--max-tokens",
            "8",
            "--input-tokens",
            "20",
        ];
        if !stream {
            args.push("--no-stream");
        }
        let run = loadgen(&args);
        assert_eq!(
            run.code, 0,
            "{api} stream={stream}: {}\n{}",
            run.stdout, run.stderr
        );
        let requests = run.requests();
        assert!(requests.len() >= 4, "{api}: {} requests", requests.len());
        for r in &requests {
            assert_eq!(r["output_tokens"]["usage"], 8, "{r}");
            assert_eq!(r["usage_prompt_tokens"], 20, "{r}");
            assert_eq!(r["finish_reason"], "length");
            if stream {
                assert_eq!(r["output_tokens"]["counted"], 8);
                assert_eq!(r["events"].as_array().unwrap().len(), 8);
            }
        }
        let p = run.phase("s");
        // Streamed, one token a chunk; whole, one chunk carrying usage's count.
        assert_eq!(p["tokens"]["usage_vs_counted"], 0);
        if stream {
            // Each token waits for the model lock and a 2 ms step.
            let itl = p["latency"]["itl_token"]["p50"].as_f64().unwrap();
            assert!(itl >= 0.002, "ITL p50 {itl}");
        }
        eprintln!(
            "{api} stream={stream}: {} requests, {:.1} tok/s, TTFT p50 {:.1} ms",
            p["ok"],
            p["throughput"]["output_tokens_per_s"].as_f64().unwrap(),
            p["latency"]["ttft"]["p50"].as_f64().unwrap_or(0.0) * 1e3
        );
    }
}
