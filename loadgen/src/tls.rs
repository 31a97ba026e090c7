//! How the run speaks HTTPS: one rustls client configuration, built once
//! from `[tls]` (`--cacert`, `--insecure`, `--cert`/`--key`,
//! `--http1-only`) before anything is sent, for the load and the side
//! channels (gapscoped, telemetry) alike.
//!
//! Trust is the system's roots plus every `--cacert`, or nothing checked
//! with `--insecure` (the run says so). ALPN offers `h2` then `http/1.1`:
//! the server chooses, hyper speaks what it chose, and each request
//! records the version it got. Plain `http://` stays HTTP/1.1 (no h2c).

use std::{path::Path, sync::Arc, time::Duration};

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
};

use crate::{error::UsageError, plan::Tls};

/// The connector every client of the run uses.
pub(crate) type Connector = HttpsConnector<HttpConnector>;

/// The run's TLS client configuration (cheap to clone).
#[derive(Clone)]
pub(crate) struct Transport {
    config: Arc<ClientConfig>,
    http1_only: bool,
}

impl Transport {
    /// A client certificate is configured.
    pub(crate) fn client_certificate(&self) -> bool {
        self.config.client_auth_cert_resolver.has_certs()
    }
}

impl Transport {
    /// Reads the CA files and the client certificate, and builds the
    /// configuration; every problem is named with its flag.
    pub(crate) fn new(tls: &Tls) -> Result<Self, UsageError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| UsageError::new(format!("TLS: {e}"), "report this as a bug"))?;
        let builder = if tls.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(
                    provider.signature_verification_algorithms,
                )))
        } else {
            builder.with_root_certificates(roots(tls)?)
        };
        let config = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "--cert")?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    UsageError::new(
                        format!("--key {}: no usable private key ({e})", key.display()),
                        "give a PEM file with one PKCS#8, PKCS#1 or SEC1 private key",
                    )
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    UsageError::new(
                        format!("--cert and --key do not work together: {e}"),
                        "give --key the private key of --cert's first certificate",
                    )
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) | (None, Some(_)) => {
                return Err(UsageError::new(
                    "a client certificate needs both --cert and --key",
                    "give both (PEM files), or neither",
                ));
            }
        };
        Ok(Self {
            config: Arc::new(config),
            http1_only: tls.http1_only,
        })
    }

    /// An HTTPS-or-HTTP connector over `http` (its timeouts and
    /// TCP_NODELAY kept), offering h2 unless `--http1-only`.
    pub(crate) fn connector(&self, mut http: HttpConnector) -> Connector {
        http.enforce_http(false);
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config((*self.config).clone())
            .https_or_http()
            .enable_http1();
        if self.http1_only {
            builder.wrap_connector(http)
        } else {
            builder.enable_http2().wrap_connector(http)
        }
    }

    /// A connector with a connect timeout, for the side channels.
    pub(crate) fn side_connector(&self, connect_timeout: Duration) -> Connector {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(connect_timeout));
        self.connector(http)
    }
}

/// The system's roots and every `--cacert`.
fn roots(tls: &Tls) -> Result<RootCertStore, UsageError> {
    let mut roots = RootCertStore::empty();
    // Unreadable system roots are not an error: --cacert may be all
    // there is, and a handshake that finds no root says so.
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    for path in &tls.cacert {
        for cert in read_certs(path, "--cacert")? {
            roots.add(cert).map_err(|e| {
                UsageError::new(
                    format!("--cacert {}: {e}", path.display()),
                    "give PEM CA certificates",
                )
            })?;
        }
    }
    Ok(roots)
}

fn read_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, UsageError> {
    let fail = |why: String| {
        UsageError::new(
            format!("{flag} {}: {why}", path.display()),
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

/// A TLS handshake error's hint: what to pass so the server is trusted.
pub(crate) fn hint(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("notvalidforname") {
        " (the server's certificate is not for this host name: connect by a name or IP address it lists, or --insecure to skip the check)"
    } else if e.contains("expired") || e.contains("notvalidyet") {
        " (the server's certificate is expired or not yet valid: renew it, or --insecure to skip the check)"
    } else if e.contains("unknownissuer") || e.contains("invalid peer certificate") {
        " (the server's certificate is not trusted: give its CA with --cacert FILE, or --insecure to skip the check)"
    } else if e.contains("certificaterequired") || e.contains("certificate required") {
        " (the server wants a client certificate: give --cert FILE --key FILE)"
    } else if e.contains("peer is incompatible") || e.contains("handshakefailure") {
        " (the TLS handshake failed: check the server's TLS versions and --cert/--key)"
    } else {
        ""
    }
}

/// `--insecure`: any certificate is accepted; the handshake's signatures
/// are still checked, so the connection is encrypted, only not
/// authenticated.
#[derive(Debug)]
struct AcceptAnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
