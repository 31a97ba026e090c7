//! The few lines of HTTP `gapscoped explain` and `gapscoped trace` need:
//! one GET of `/api/v1/explain` or `/api/v1/trace` from a running
//! gapscoped over plain HTTP (credentials
//! in the URL are sent as basic auth), so the command works with no HTTP
//! client library in the daemon.

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    time::Duration,
};

use base64::Engine as _;
use serde_json::Value;

use crate::error::UsageError;

/// Most bytes of a report read.
const MAX_BODY: u64 = 16 << 20;

/// `gpu_hour_usd`: the price the report's money figures use (the
/// daemon's `[explain] gpu_hour_usd` when None); `what_if`: causes to
/// predict the removal of together (`serialization,syscall_sleep`).
pub fn fetch_report(
    base: &str,
    service: &str,
    window: &str,
    gpu_hour_usd: Option<f64>,
    what_if: Option<&str>,
) -> anyhow::Result<Value> {
    let price = gpu_hour_usd.map_or(String::new(), |usd| format!("&gpu_hour_usd={usd}"));
    let what_if = what_if.map_or(String::new(), |w| format!("&what_if={}", encode(w)));
    let path = format!(
        "/api/v1/explain?service={}&window={}{price}{what_if}",
        encode(service),
        encode(window)
    );
    let (host, body) = get(base, &path, MAX_BODY, Duration::from_secs(30))?;
    serde_json::from_slice(&body)
        .map_err(|e| anyhow::anyhow!("gapscoped at {host} sent a report that is not JSON: {e}"))
}

/// Most bytes of a trace read.
const MAX_TRACE: u64 = 2 << 30;

/// `/api/v1/trace` of a service: the trace's JSON text.
pub fn fetch_trace(base: &str, service: &str, window: &str) -> anyhow::Result<Vec<u8>> {
    let path = format!(
        "/api/v1/trace?service={}&window={}",
        encode(service),
        encode(window)
    );
    // A busy service's trace takes a while to build and send.
    Ok(get(base, &path, MAX_TRACE, Duration::from_secs(300))?.1)
}

/// GETs `path` from gapscoped at `base`: (host, body) of a 200, or an
/// error naming the problem and the fix.
fn get(
    base: &str,
    path: &str,
    max_body: u64,
    timeout: Duration,
) -> anyhow::Result<(String, Vec<u8>)> {
    let Some(rest) = base.strip_prefix("http://") else {
        return Err(UsageError::new(
            format!("--url {base:?} is not an http:// URL"),
            "gapscoped's commands speak plain HTTP; behind TLS fetch the JSON yourself \
             (curl --cacert CA 'https://HOST:9478/api/v1/explain?service=NAME') and read it with jq",
        )
        .into());
    };
    let rest = rest.trim_end_matches('/');
    let (auth, host) = match rest.rsplit_once('@') {
        Some((userinfo, host)) => (
            Some(base64::engine::general_purpose::STANDARD.encode(userinfo)),
            host,
        ),
        None => (None, rest),
    };
    let unreachable = |e: std::io::Error| {
        UsageError::new(
            format!("cannot reach gapscoped at {host}: {e}"),
            "start it (systemctl start gapscoped) or point --url at its daemon.listen address",
        )
    };
    let addr = host
        .to_socket_addrs()
        .map_err(unreachable)?
        .next()
        .ok_or_else(|| UsageError::new(format!("{host} resolves to nothing"), "check --url"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(unreachable)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut request =
        format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n");
    if let Some(a) = auth {
        request.push_str(&format!("Authorization: Basic {a}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream
        .take(max_body + 64 * 1024)
        .read_to_end(&mut raw)
        .map_err(|e| match e.kind() {
            // A read timeout is EAGAIN on Linux.
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => anyhow::anyhow!(
                "gapscoped at {host} did not answer {path} within {timeout:?} ({} bytes came): \
                 it is overloaded or stuck; see its log (journalctl -u gapscoped), then try again \
                 or ask for a shorter --window",
                raw.len()
            ),
            _ => anyhow::anyhow!("reading gapscoped's answer from {host}: {e}"),
        })?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("gapscoped at {host} sent no HTTP response"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = raw.split_off(split + 4);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    if body.len() as u64 > max_body {
        return Err(anyhow::anyhow!(
            "gapscoped at {host} sent more than {max_body} bytes: ask for a shorter --window"
        ));
    }
    if let Some(n) = length.filter(|n| body.len() < *n) {
        return Err(anyhow::anyhow!(
            "gapscoped at {host} sent {} of {n} bytes before the connection ended: run it again",
            body.len()
        ));
    }
    if status == 200 {
        return Ok((host.to_string(), body));
    }
    let value: Option<Value> = serde_json::from_slice(&body).ok();
    match (status, value) {
        (401, _) => Err(UsageError::new(
            "gapscoped asks for credentials (basic auth in its web config)",
            "put them in the URL: --url http://USER:PASSWORD@127.0.0.1:9478",
        )
        .into()),
        (_, Some(v)) if v.get("error").is_some() => Err(UsageError::new(
            format!("gapscoped: {}", v["error"].as_str().unwrap_or("error")),
            v["fix"]
                .as_str()
                .unwrap_or("see gapscoped's log")
                .to_string(),
        )
        .into()),
        (status, _) => Err(anyhow::anyhow!(
            "gapscoped at {host} answered HTTP {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        )),
    }
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
