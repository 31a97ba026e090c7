//! `tls_server_config`: a rustls server configuration from the certificate,
//! key and (optionally) client CA files the web config names.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use serde::Deserialize;

use crate::error::UsageError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClientAuth {
    /// The default: no client certificate asked for.
    None,
    /// Verified against client_ca_file when the client sends one.
    VerifyIfGiven,
    /// Required and verified against client_ca_file.
    RequireAndVerify,
}

/// Validated TLS settings; the files are read when the server starts (and
/// by `check-config`), so a bad certificate stops the daemon at once.
#[derive(Debug)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    pub client_ca_file: Option<PathBuf>,
    pub min_tls13: bool,
    pub max_tls12: bool,
}

impl TlsSettings {
    pub(super) fn from_raw(raw: RawTls, base: &Path) -> Result<TlsSettings, UsageError> {
        let file = |name: &str, value: Option<String>| -> Result<PathBuf, UsageError> {
            match value.filter(|v| !v.is_empty()) {
                Some(v) => Ok(base.join(v)),
                None => Err(UsageError::new(
                    format!("tls_server_config: {name} is missing"),
                    "TLS needs both cert_file and key_file (PEM)",
                )),
            }
        };
        let cert_file = file("cert_file", raw.cert_file)?;
        let key_file = file("key_file", raw.key_file)?;
        let client_auth = match raw.client_auth_type.as_deref() {
            None | Some("") | Some("NoClientCert") => ClientAuth::None,
            Some("VerifyClientCertIfGiven") => ClientAuth::VerifyIfGiven,
            Some("RequireAndVerifyClientCert") => ClientAuth::RequireAndVerify,
            Some(other) => {
                return Err(UsageError::new(
                    format!("tls_server_config.client_auth_type: {other:?} is not supported"),
                    "use NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert \
                     (gapscoped never accepts a client certificate it has not verified)",
                ));
            }
        };
        let client_ca_file = raw
            .client_ca_file
            .filter(|v| !v.is_empty())
            .map(|v| base.join(v));
        if client_auth != ClientAuth::None && client_ca_file.is_none() {
            return Err(UsageError::new(
                "tls_server_config: verifying client certificates needs client_ca_file",
                "set client_ca_file to the PEM bundle of the CAs that sign your clients' certificates",
            ));
        }
        let version = |name: &str, v: Option<String>| -> Result<Option<bool>, UsageError> {
            match v.as_deref() {
                None | Some("") => Ok(None),
                Some("TLS12") => Ok(Some(false)),
                Some("TLS13") => Ok(Some(true)),
                Some(other) => Err(UsageError::new(
                    format!("tls_server_config.{name}: {other} is not supported"),
                    "use TLS12 or TLS13",
                )),
            }
        };
        let min_tls13 = version("min_version", raw.min_version)? == Some(true);
        let max_tls12 = version("max_version", raw.max_version)? == Some(false);
        if min_tls13 && max_tls12 {
            return Err(UsageError::new(
                "tls_server_config: min_version TLS13 is above max_version TLS12",
                "remove one of them",
            ));
        }
        Ok(TlsSettings {
            cert_file,
            key_file,
            client_auth,
            client_ca_file,
            min_tls13,
            max_tls12,
        })
    }

    /// Reads the files and builds the server configuration.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, UsageError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs(&self.cert_file, "cert_file")?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file).map_err(|e| {
            UsageError::new(
                format!(
                    "tls_server_config.key_file {}: no usable private key ({e})",
                    self.key_file.display()
                ),
                "give a PEM file with one PKCS#8, PKCS#1 or SEC1 private key, readable by gapscoped",
            )
        })?;
        let versions: &[&rustls::SupportedProtocolVersion] = if self.min_tls13 {
            &[&rustls::version::TLS13]
        } else if self.max_tls12 {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| UsageError::new(format!("TLS: {e}"), "check min_version/max_version"))?;
        let builder = match (&self.client_auth, &self.client_ca_file) {
            (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
            (auth, Some(ca_file)) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca_file, "client_ca_file")? {
                    roots.add(cert).map_err(|e| {
                        UsageError::new(
                            format!(
                                "tls_server_config.client_ca_file {}: {e}",
                                ca_file.display()
                            ),
                            "give PEM CA certificates",
                        )
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
                let verifier = if *auth == ClientAuth::VerifyIfGiven {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier.build().map_err(|e| {
                    UsageError::new(
                        format!("tls_server_config.client_ca_file: {e}"),
                        "give PEM CA certificates",
                    )
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            UsageError::new(
                format!("tls_server_config: the certificate and key do not work together: {e}"),
                "check that key_file holds the private key of cert_file's first certificate",
            )
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, UsageError> {
    let fail = |why: String| {
        UsageError::new(
            format!("tls_server_config.{key} {}: {why}", path.display()),
            "give a readable PEM file with at least one CERTIFICATE block",
        )
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no certificate in it".into()));
    }
    Ok(certs)
}
