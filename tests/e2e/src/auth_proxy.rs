//! The real binary serving the auth proxy — `proxy`, or `run … --proxy-addr` — with the PAT in a
//! file (rotated by rewriting it, as a mounted Secret is), on free 127.0.0.1 ports, logging at
//! trace level; and the raw HTTP/1.1 client the protocol-abuse tests speak to it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{free_port, refresher::RefresherProc};

/// Successful exchanges (PAT → access token) so far.
pub const EXCHANGES: &str =
    "ls_token_refresher_http_requests_total{code=\"2xx\",endpoint=\"refresh\"}";
/// Token validations (before publishing, and after a rejection report) answered 2xx.
pub const VALIDATIONS: &str =
    "ls_token_refresher_http_requests_total{code=\"2xx\",endpoint=\"validate\"}";
/// Open client connections of the proxy.
pub const CONNECTIONS: &str = "ls_token_refresher_proxy_connections";

/// Writes `pat` to `path` the way a Secret volume changes: a new file renamed over the old one.
pub fn write_pat(path: &Path, pat: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, pat).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A running proxy.
pub struct AuthProxy {
    /// The process (admin server, metrics, log).
    pub proc: RefresherProc,
    /// Where the proxy listens.
    pub addr: SocketAddr,
    /// The PAT file it reads.
    pub pat_file: PathBuf,
}

impl AuthProxy {
    /// Starts `command` (`proxy`, or `run` with a sink in `extra`) against `ls_url` with `pat`
    /// written to `dir/pat`, logging to `dir/name.log`, and waits until it is ready. Access
    /// tokens are refreshed at 66 % of their lifetime (`--min-lead 1s`, no jitter, so the
    /// exchange rate is steady); `extra` adds or replaces flags.
    pub async fn start(
        command: &str,
        ls_url: &str,
        pat: &str,
        dir: &Path,
        name: &str,
        extra: &[&str],
    ) -> AuthProxy {
        std::fs::create_dir_all(dir).unwrap();
        let pat_file = dir.join("pat");
        write_pat(&pat_file, pat);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let addr_text = addr.to_string();
        let mut args: Vec<&str> = vec![
            "--url",
            ls_url,
            "--pat-file",
            pat_file.to_str().unwrap(),
            "--proxy-addr",
            &addr_text,
            "--log-level",
            "trace",
            "--min-lead",
            "1s",
            "--jitter",
            "0s",
        ];
        for pair in extra.chunks(2) {
            match args.iter().position(|a| *a == pair[0]) {
                Some(i) if pair.len() == 2 => args[i + 1] = pair[1],
                _ => args.extend_from_slice(pair),
            }
        }
        let mut proc = RefresherProc::start_command(command, dir, name, &args, &[]);
        proc.wait_ready(200, Duration::from_secs(60)).await;
        AuthProxy {
            proc,
            addr,
            pat_file,
        }
    }

    /// `http://127.0.0.1:PORT` (what a consumer sets as `LABEL_STUDIO_URL`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A metric of the process, 0 when the series is not there.
    pub async fn metric(&self, series: &str) -> f64 {
        self.proc.metric(series).await.unwrap_or(0.0)
    }
}

/// What a raw exchange got back.
#[derive(Debug)]
pub struct RawAnswer {
    /// Everything received, lossily decoded.
    pub text: String,
    /// The server closed the connection (false: still open when the wait ended).
    pub closed: bool,
}

impl RawAnswer {
    /// Every status line received, in order.
    pub fn statuses(&self) -> Vec<&str> {
        self.text
            .split("\r\n")
            .filter(|l| l.starts_with("HTTP/1.1 "))
            .collect()
    }

    /// The body of the first answer, as JSON.
    pub fn json(&self) -> serde_json::Value {
        let body = self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let end = body.find("HTTP/1.1 ").unwrap_or(body.len());
        serde_json::from_str(&body[..end])
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", &body[..end]))
    }
}

/// Sends `bytes` on a fresh connection to `addr` and reads until the server closes it or `wait`
/// passes without a byte.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> RawAnswer {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    s.write_all(bytes).await.expect("send");
    read_until_close(&mut s, wait).await
}

/// Reads until the server closes `s` or `wait` passes without a byte.
pub async fn read_until_close(s: &mut TcpStream, wait: Duration) -> RawAnswer {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    RawAnswer {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}
