//! The web config: TLS and basic auth for every HTTP endpoint, read from
//! the same YAML file Prometheus exporters take (`--web.config.file` in
//! node_exporter), so one file can serve a whole host.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/gapscope/tls.crt
//!   key_file: /etc/gapscope/tls.key
//!   client_auth_type: RequireAndVerifyClientCert   # optional
//!   client_ca_file: /etc/gapscope/clients.pem       # with the above
//!   min_version: TLS12                              # or TLS13
//! basic_auth_users:
//!   prometheus: $2y$10$...                          # gapscoped hash-password
//! http_server_config:
//!   headers:
//!     Strict-Transport-Security: max-age=31536000
//! ```

pub mod auth;
pub mod serve;
pub mod tls;

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

use crate::error::UsageError;

/// A loaded, validated web config.
pub struct WebConfig {
    pub tls: Option<tls::TlsSettings>,
    /// User name → bcrypt hash.
    pub users: BTreeMap<String, String>,
    /// Extra response headers (security headers only).
    pub headers: Vec<(String, String)>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    tls_server_config: Option<tls::RawTls>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
    http_server_config: Option<RawHttp>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// Accepted for compatibility with exporters' files; gapscoped serves
    /// HTTP/1.1, which is what Prometheus scrapes with.
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// The response headers the Prometheus web config allows setting.
const ALLOWED_HEADERS: [&str; 5] = [
    "Strict-Transport-Security",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

impl WebConfig {
    pub fn load(path: &Path) -> Result<WebConfig, UsageError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            UsageError::new(
                format!("cannot read the web config {}: {e}", path.display()),
                "point daemon.web_config at a readable YAML file, or remove it to serve plain HTTP",
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|e| e.in_file(path))
    }

    /// Parses the YAML text; relative file names are taken from `base`
    /// (the directory of the config file), as exporters do.
    pub fn parse(text: &str, base: &Path) -> Result<WebConfig, UsageError> {
        let raw: RawWebConfig = if text.trim().is_empty() {
            RawWebConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| {
                UsageError::new(
                    format!("invalid web config: {e}"),
                    "the keys are tls_server_config, basic_auth_users and http_server_config, \
                     as in Prometheus' web configuration file",
                )
            })?
        };
        let tls = raw
            .tls_server_config
            .map(|t| tls::TlsSettings::from_raw(t, base))
            .transpose()?;
        for (user, hash) in &raw.basic_auth_users {
            if user.is_empty() || user.contains(':') {
                return Err(UsageError::new(
                    format!("basic_auth_users: {user:?} is not a usable user name"),
                    "use a non-empty name without ':'",
                ));
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(UsageError::new(
                    format!("basic_auth_users.{user}: the value is not a bcrypt hash"),
                    "store the hash, not the password: `gapscoped hash-password` prints one",
                ));
            }
        }
        let http = raw.http_server_config.unwrap_or_default();
        if http.http2 == Some(true) {
            log::info!("web config: http2 = true is accepted, but gapscoped serves HTTP/1.1");
        }
        let mut headers = Vec::new();
        for (name, value) in http.headers {
            let Some(known) = ALLOWED_HEADERS
                .iter()
                .find(|h| h.eq_ignore_ascii_case(&name))
            else {
                return Err(UsageError::new(
                    format!("http_server_config.headers: {name:?} cannot be set"),
                    format!("settable headers: {}", ALLOWED_HEADERS.join(", ")),
                ));
            };
            if axum::http::HeaderValue::from_str(&value).is_err() {
                return Err(UsageError::new(
                    format!(
                        "http_server_config.headers.{known}: {value:?} is not a valid header value"
                    ),
                    "use printable ASCII",
                ));
            }
            headers.push(((*known).to_string(), value));
        }
        Ok(WebConfig {
            tls,
            users: raw.basic_auth_users,
            headers,
        })
    }

    /// The URL scheme clients must use.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// What protects the endpoints (`Prepared::protection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Protection {
    pub tls: bool,
    pub client_auth: u8,
    pub tls13_only: bool,
    pub basic_auth: bool,
}

impl Protection {
    /// What `self` drops of `running`'s protection, in words; empty when
    /// nothing is weaker.
    pub fn weaker_than(&self, running: &Protection) -> Vec<&'static str> {
        let mut lost = Vec::new();
        if self.tls != running.tls {
            lost.push(if running.tls { "TLS off" } else { "TLS on" });
        }
        if self.client_auth < running.client_auth {
            lost.push("client certificates less strictly verified");
        }
        if running.tls13_only && !self.tls13_only {
            lost.push("TLS 1.2 allowed again");
        }
        if running.basic_auth && !self.basic_auth {
            lost.push("basic auth off");
        }
        lost
    }
}

/// What the HTTP server runs with: the web config (if any) and, for TLS,
/// the server configuration built from its files.
pub struct Prepared {
    pub config: WebConfig,
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl Prepared {
    /// Loads `path` and reads the files it names; `None` serves plain HTTP.
    pub fn load(path: Option<&Path>) -> Result<Option<Prepared>, UsageError> {
        let Some(path) = path else { return Ok(None) };
        let config = WebConfig::load(path)?;
        let tls = config
            .tls
            .as_ref()
            .map(tls::TlsSettings::server_config)
            .transpose()
            .map_err(|e| e.in_file(path))?;
        Ok(Some(Prepared { config, tls }))
    }

    /// What protects the endpoints, strongest last in each part: TLS,
    /// client certificates (0 none, 1 verified if given, 2 required),
    /// TLS 1.3 only, basic auth. A reload may not lower any of them.
    pub fn protection(web: Option<&Prepared>) -> Protection {
        let tls = web.and_then(|w| w.config.tls.as_ref());
        Protection {
            tls: web.is_some_and(|w| w.tls.is_some()),
            client_auth: match tls.map(|t| t.client_auth) {
                Some(tls::ClientAuth::RequireAndVerify) => 2,
                Some(tls::ClientAuth::VerifyIfGiven) => 1,
                _ => 0,
            },
            tls13_only: tls.is_some_and(|t| t.min_tls13),
            basic_auth: web.is_some_and(|w| !w.config.users.is_empty()),
        }
    }

    /// One line for the log and `check-config`.
    pub fn describe(&self) -> String {
        let mut parts = vec![
            if self.tls.is_some() {
                "TLS"
            } else {
                "plain HTTP"
            }
            .to_string(),
        ];
        if let Some(t) = &self.config.tls
            && t.client_auth != tls::ClientAuth::None
        {
            parts.push("client certificates verified".into());
        }
        if !self.config.users.is_empty() {
            parts.push(format!("basic auth ({} users)", self.config.users.len()));
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$04$Ny0t5Z1NpmV3SL6GWTh2W.RhAiYlK7IOYKn3bFc5SxMgHzP0yJtpa";

    #[test]
    fn empty_file_means_plain_http_without_auth() {
        let c = WebConfig::parse("", Path::new("/")).unwrap();
        assert!(c.tls.is_none() && c.users.is_empty() && c.headers.is_empty());
        assert_eq!(c.scheme(), "http");
    }

    #[test]
    fn users_and_headers_are_read() {
        let c = WebConfig::parse(
            &format!(
                "basic_auth_users:\n  prom: '{HASH}'\nhttp_server_config:\n  http2: false\n  headers:\n    x-frame-options: deny\n"
            ),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(c.users["prom"], HASH);
        assert_eq!(c.headers, vec![("X-Frame-Options".into(), "deny".into())]);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let cases = [
            ("basic_auth_users:\n  prom: hunter2\n", "not a bcrypt hash"),
            ("basic_auth_users:\n  'a:b': x\n", "not a usable user name"),
            (
                "http_server_config:\n  headers:\n    Server: x\n",
                "cannot be set",
            ),
            ("tls_server_config:\n  key_file: k\n", "cert_file"),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS10\n",
                "TLS10",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  cipher_suites: [a]\n",
                "cipher_suites",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAndVerifyClientCert\n",
                "client_ca_file",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: Maybe\n",
                "Maybe",
            ),
            ("listen: 1\n", "listen"),
        ];
        for (text, expected) in cases {
            let err = match WebConfig::parse(text, Path::new("/")) {
                Ok(_) => panic!("accepted: {text}"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
