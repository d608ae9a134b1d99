//! A bounded load generator for a server on loopback: `clients` threads, each with
//! one keep-alive HTTP/1.1 connection, send pre-built JSON bodies round-robin until
//! `requests` have been sent or `max_time` has passed (whichever comes first), and
//! optionally an admin reload every `reload_every`. Reports QPS, latency percentiles
//! and every non-200 answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub addr: SocketAddr,
    pub clients: usize,
    /// Total requests (upper bound).
    pub requests: usize,
    /// Wall-clock bound.
    pub max_time: Duration,
    /// `POST /admin/reload` this often during the run.
    pub reload_every: Option<Duration>,
    pub admin_token: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub sent: usize,
    pub ok: usize,
    /// Non-200 answers and transport errors, with a message each (first 10 kept).
    pub failed: usize,
    pub failures: Vec<String>,
    pub seconds: f64,
    pub qps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub reloads_ok: usize,
    pub reloads_failed: usize,
}

/// One keep-alive connection.
pub struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Client { addr, conn: None }
    }

    /// Sends one request and returns (status, body). Reconnects once if the kept-alive
    /// connection was closed.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        match self.try_request(method, path, headers, body) {
            Ok(r) => Ok(r),
            Err(_) => {
                self.conn = None;
                self.try_request(method, path, headers, body)
            }
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().expect("connected");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let s = conn.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        let status: u16 = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut len = 0usize;
        let mut close = false;
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut out = vec![0u8; len];
        conn.read_exact(&mut out)?;
        if close {
            self.conn = None;
        }
        Ok((status, out))
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Runs the load; `bodies` are JSON request bodies for `POST /v1/score`.
pub fn run_load(cfg: &LoadConfig, bodies: Arc<Vec<Vec<u8>>>) -> LoadReport {
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let deadline = t0 + cfg.max_time;
    let reloader = cfg.reload_every.map(|every| {
        let (addr, stop, token) = (cfg.addr, stop.clone(), cfg.admin_token.clone());
        std::thread::spawn(move || {
            let mut c = Client::new(addr);
            let (mut ok, mut failed) = (0, 0);
            let auth = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(every);
                match c.request("POST", "/admin/reload", &headers, b"") {
                    Ok((200, _)) => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    });
    let workers: Vec<_> = (0..cfg.clients.max(1))
        .map(|_| {
            let (bodies, next, addr, total) = (bodies.clone(), next.clone(), cfg.addr, cfg.requests);
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                let mut lat = Vec::new();
                let mut failures = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total || Instant::now() >= deadline {
                        break;
                    }
                    let t = Instant::now();
                    match c.request("POST", "/v1/score", &[], &bodies[i % bodies.len()]) {
                        Ok((200, _)) => lat.push(t.elapsed().as_secs_f64() * 1e3),
                        Ok((s, b)) => failures.push(format!("HTTP {s}: {}", String::from_utf8_lossy(&b))),
                        Err(e) => failures.push(format!("transport: {e}")),
                    }
                }
                (lat, failures)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut failures = Vec::new();
    for w in workers {
        if let Ok((l, f)) = w.join() {
            lat.extend(l);
            failures.extend(f);
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let (reloads_ok, reloads_failed) = reloader.and_then(|r| r.join().ok()).unwrap_or((0, 0));
    lat.sort_by(f64::total_cmp);
    let ok = lat.len();
    let failed = failures.len();
    failures.truncate(10);
    LoadReport {
        sent: ok + failed,
        ok,
        failed,
        failures,
        seconds,
        qps: ok as f64 / seconds.max(1e-9),
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        reloads_ok,
        reloads_failed,
    }
}
