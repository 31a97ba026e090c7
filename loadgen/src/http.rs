//! Small HTTP helpers for the side channels (telemetry scrapes, phase
//! annotations): one GET or POST with a deadline, the body read whole up to
//! a limit. The load itself goes through `request.rs`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, header};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

/// Largest side-channel reply read (a big exporter's /metrics fits).
const MAX_REPLY: usize = 32 << 20;

#[derive(Clone)]
pub(crate) struct SideClient(Client<HttpConnector, Full<Bytes>>);

impl Default for SideClient {
    fn default() -> Self {
        let mut c = HttpConnector::new();
        c.set_connect_timeout(Some(Duration::from_secs(2)));
        Self(Client::builder(TokioExecutor::new()).build(c))
    }
}

impl SideClient {
    /// GET `url`: (status, body).
    pub(crate) async fn get(&self, url: &str, timeout: Duration) -> Result<(u16, String), String> {
        self.call(Method::GET, url, None, timeout).await
    }

    /// POST a JSON body to `url`: (status, body).
    pub(crate) async fn post_json(
        &self,
        url: &str,
        body: String,
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        self.call(Method::POST, url, Some(body), timeout).await
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<String>,
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        let mut req = Request::builder().method(method).uri(url);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("bad URL {url:?}: {e}"))?;
        let work = async {
            let resp = self
                .0
                .request(req)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status().as_u16();
            let bytes = Limited::new(resp.into_body(), MAX_REPLY)
                .collect()
                .await
                .map_err(|e| format!("{url}: reading the reply: {e}"))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| format!("{url}: no reply within {timeout:?}"))?
    }
}

/// Percent-encodes a query parameter value.
pub(crate) fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
