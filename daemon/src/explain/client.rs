//! The few lines of HTTP `gapscoped explain` needs: one GET of
//! `/api/v1/explain` from a running gapscoped over plain HTTP (credentials
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

pub fn fetch_report(base: &str, service: &str, window: &str) -> anyhow::Result<Value> {
    let Some(rest) = base.strip_prefix("http://") else {
        return Err(UsageError::new(
            format!("--url {base:?} is not an http:// URL"),
            "gapscoped explain speaks plain HTTP; behind TLS fetch the JSON yourself \
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
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!(
        "GET /api/v1/explain?service={}&window={} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n",
        encode(service),
        encode(window)
    );
    if let Some(a) = auth {
        request.push_str(&format!("Authorization: Basic {a}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.take(MAX_BODY).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("gapscoped at {host} sent no HTTP response"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let value: Option<Value> = serde_json::from_str(body).ok();
    match (status, value) {
        (200, Some(v)) => Ok(v),
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
            body.chars().take(200).collect::<String>()
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
