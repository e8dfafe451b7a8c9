//! An HTTPS front for Label Studio with a self-signed certificate (rustls with the ring provider, no
//! ALPN so clients speak HTTP/1.1). One thread per connection, one request per connection.

use std::{
    io::Write,
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::http1::{forward_sync, read_request_sync, render, socket_addr_of, TokenLog};

/// An HTTPS front for Label Studio with a self-signed certificate (rustls with the ring provider, no
/// ALPN so clients speak HTTP/1.1). One thread per connection, one request per connection.
pub struct TlsEndpoint {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Access tokens seen.
    pub tokens: TokenLog,
}

impl TlsEndpoint {
    /// Serves `cert`/`key` on a free 127.0.0.1 port, forwarding to `upstream_url`.
    pub fn start(cert: &Path, key: &Path, upstream_url: &str) -> TlsEndpoint {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let upstream = socket_addr_of(upstream_url);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("read cert")
            .collect::<Result<_, _>>()
            .expect("parse cert");
        let key = PrivateKeyDer::from_pem_file(key).expect("read key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server cert");
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind TLS endpoint");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let tokens = TokenLog::default();
        let thread = {
            let (stop, tokens) = (stop.clone(), tokens.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((tcp, _)) => {
                            let (config, tokens) = (config.clone(), tokens.clone());
                            std::thread::spawn(move || serve_tls(tcp, config, upstream, tokens));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        TlsEndpoint {
            port,
            stop,
            thread: Some(thread),
            tokens,
        }
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_tls(
    tcp: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    upstream: SocketAddr,
    tokens: TokenLog,
) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(10)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // The handshake happens on the first read; a client that rejects the certificate aborts here.
    let Some(req) = read_request_sync(&mut tls) else {
        return;
    };
    let resp = forward_sync(upstream, &req);
    tokens.capture(&req.path, &resp);
    let _ = tls.write_all(&render(&resp, true));
    tls.conn.send_close_notify();
    let _ = tls.flush();
}
