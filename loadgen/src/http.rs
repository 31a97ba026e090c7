//! Small HTTP helpers for the side channels (telemetry scrapes, phase
//! annotations): one GET or POST with a deadline, the body read whole up to
//! a limit. The load itself goes through `request.rs`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, header};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use crate::{
    plan::BasicAuth,
    tls::{Connector, Transport},
};

/// Largest side-channel reply read (a big exporter's /metrics fits).
const MAX_REPLY: usize = 32 << 20;

#[derive(Clone)]
pub(crate) struct SideClient {
    http: Client<Connector, Full<Bytes>>,
    /// Basic auth sent with every call (gapscoped behind a web config).
    auth: Option<String>,
}

impl SideClient {
    /// Whether it sends credentials.
    pub(crate) fn authenticates(&self) -> bool {
        self.auth.is_some()
    }

    /// Over the run's TLS settings, with basic auth when given.
    pub(crate) fn new(transport: &Transport, auth: Option<&BasicAuth>) -> Self {
        let connector = transport.side_connector(Duration::from_secs(2));
        Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            auth: auth.map(BasicAuth::header),
        }
    }

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
        if let Some(auth) = &self.auth
            && let Ok(mut value) = header::HeaderValue::from_str(auth)
        {
            value.set_sensitive(true);
            req = req.header(header::AUTHORIZATION, value);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("bad URL {url:?}: {e}"))?;
        let work = async {
            let resp = self.http.request(req).await.map_err(|e| {
                let chain = crate::request::error_chain(&e);
                format!("{url}: {chain}{}", crate::tls::hint(&chain))
            })?;
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

/// Standard base64 with padding (RFC 4648), for basic auth.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc_4648_test_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(plain.as_bytes()), coded);
        }
    }
}
