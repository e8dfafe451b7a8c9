//! Certificates with the `openssl` CLI (EC P-256 keys: instant to make, accepted by rustls and Go).

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use base64::Engine as _;

/// Runs `openssl ARGS…` in `dir`; panics with its stderr if it fails.
pub fn openssl<I, S>(dir: &Path, args: I)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (the harness needs the openssl CLI)");
    assert!(
        out.status.success(),
        "openssl {:?} failed: {}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `-newkey` arguments of an EC P-256 key without a passphrase.
pub const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// Writes a self-signed certificate (CN and SAN 127.0.0.1/localhost, `CA:FALSE`, serverAuth) and its
/// key into `dir`; returns (cert.pem, key.pem).
pub fn self_signed_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let mut args: Vec<&OsStr> = vec!["req".as_ref(), "-x509".as_ref()];
    args.extend(EC_KEY.iter().map(OsStr::new));
    args.extend(
        [
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "keyUsage=critical,digitalSignature",
            "-addext",
            "extendedKeyUsage=serverAuth",
            "-keyout",
        ]
        .map(OsStr::new),
    );
    args.push(key.as_os_str());
    args.push("-out".as_ref());
    args.push(cert.as_os_str());
    openssl(dir, args);
    (cert, key)
}

/// The DER bytes of the (first) certificate in a PEM text.
pub fn pem_to_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body is base64")
}
