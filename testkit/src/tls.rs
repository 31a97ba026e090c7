//! Certificates for the TLS tests: a CA, a server certificate for
//! 127.0.0.1/localhost and a client certificate signed by it, made with
//! openssl (P-256, valid two days) in a directory of the test's.

use std::{path::Path, process::Command};

/// Writes `ca.pem`/`ca.key`, `server.pem`/`server.key` and
/// `client.pem`/`client.key` into `dir`.
pub fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &key,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
        &["-subj", "/CN=gapscope test CA"],
    ]
    .concat());
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        let (key_file, csr) = (format!("{name}.key"), format!("{name}.csr"));
        let subject = format!("/CN=gapscope test {name}");
        run(&[
            &["req"][..],
            &key,
            &["-keyout", &key_file, "-out", &csr, "-subj", &subject],
        ]
        .concat());
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (pem, ext_file) = (format!("{name}.pem"), format!("{name}.ext"));
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext_file,
        ]);
    }
}
