//! Metrics in the Prometheus text format: lock-free histograms the hot paths record into, a
//! writer for the exposition format (version 0.0.4), and a small HTTP endpoint that serves it.
//!
//! Why hand-written: the format is a few lines of text, the endpoint answers one `GET /metrics`
//! per scrape, and a metrics crate would bring a registry, global state and an HTTP stack into
//! every node for that. What the driver exports is listed in [`crate::node::RaftHandle::write_metrics`];
//! an application adds its own families to the same page (raftkv: clients and commands).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// A histogram over integer observations with fixed upper bounds, recorded with relaxed atomics
/// (one add per observation on the bucket, the count and the sum). Exported values are the
/// recorded ones divided by `per_unit` (microseconds to seconds: 1e6; a division, so that bounds
/// print as `0.0001`, not as the nearest product of binary fractions).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    count: AtomicU64,
    per_unit: f64,
}

/// fsync latency bounds in microseconds: 100 µs to 1 s.
pub const FSYNC_MICROS: &[u64] =
    &[100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000];

/// Group-commit sizes (writes per fsync): powers of two to 1024.
pub const GROUP_SIZES: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

impl Histogram {
    /// An empty histogram with these upper bounds (ascending; `+Inf` is implied), recorded in units
    /// of which `per_unit` make one exported unit.
    pub fn new(bounds: &'static [u64], per_unit: f64) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).chain([AtomicU64::new(0)]).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
            per_unit,
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far, per bucket (not cumulative) with the sum and count.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            sum: self.sum.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
            per_unit: self.per_unit,
        }
    }
}

/// A histogram's counts at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds, in the recorded unit.
    pub bounds: &'static [u64],
    /// Observations per bucket (the last one above every bound), not cumulative.
    pub buckets: Vec<u64>,
    /// Sum of the observations, in the recorded unit.
    pub sum: u64,
    /// Number of observations.
    pub count: u64,
    /// Recorded units per exported unit.
    pub per_unit: f64,
}

/// Builds one exposition page. Families are written as they are added; each metric name must be
/// added once (Prometheus rejects a page that repeats a family).
#[derive(Default)]
pub struct Exposition {
    out: String,
}

/// Label pairs of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Exposition {
    /// An empty page.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: Labels<'_>, value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    /// A counter (a name ending in `_total`) without labels.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.counters(name, help, &[(&[], value)]);
    }

    /// A counter family: one sample per label set.
    pub fn counters(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, u64)]) {
        debug_assert!(name.ends_with("_total"), "counter {name} must end in _total");
        self.header(name, help, "counter");
        for (labels, v) in samples {
            self.sample(name, labels, *v as f64);
        }
    }

    /// A counter family of fractional values (seconds).
    pub fn counters_f64(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, f64)]) {
        debug_assert!(name.ends_with("_total"), "counter {name} must end in _total");
        self.header(name, help, "counter");
        for (labels, v) in samples {
            self.sample(name, labels, *v);
        }
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.gauges(name, help, &[(&[], value)]);
    }

    /// A gauge family: one sample per label set.
    pub fn gauges(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, f64)]) {
        self.header(name, help, "gauge");
        for (labels, v) in samples {
            self.sample(name, labels, *v);
        }
    }

    /// A histogram: cumulative `_bucket{le=...}` samples, `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.header(name, help, "histogram");
        let mut cumulative = 0;
        for (i, count) in h.buckets.iter().enumerate() {
            cumulative += count;
            let le = h.bounds.get(i).map_or_else(|| "+Inf".to_owned(), |&b| number(b as f64 / h.per_unit));
            self.sample(&format!("{name}_bucket"), &[("le", &le)], cumulative as f64);
        }
        self.sample(&format!("{name}_sum"), &[], h.sum as f64 / h.per_unit);
        self.sample(&format!("{name}_count"), &[], h.count as f64);
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Prometheus's number format: integers without a fraction, the rest in Rust's shortest form.
fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}

/// The HTTP endpoint: a thread answering `GET /metrics` with the page `render` builds for each
/// scrape. Stops when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves. One scrape at a time (Prometheus scrapes every few seconds); a
    /// request must arrive within 2 s and fit in 8 KiB, or the connection is closed.
    pub fn start<F>(addr: SocketAddr, render: F) -> std::io::Result<MetricsServer>
    where
        F: Fn() -> String + Send + 'static,
    {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::Builder::new().name("raft-metrics".into()).spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = answer(stream, &render) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics listener accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
        Ok(MetricsServer { addr, stop, handle: Some(handle) })
    }

    /// The address it listens on (the bound port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn answer(mut stream: TcpStream, render: &dyn Fn() -> String) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 || request.len() + n > 8192 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, kind, body) = match (method, path) {
        (b"GET" | b"HEAD", b"/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render()),
        (b"GET" | b"HEAD", b"/") => ("200 OK", "text/plain; charset=utf-8", "metrics at /metrics\n".to_owned()),
        (b"GET" | b"HEAD", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "GET only\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if method != b"HEAD" {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_an_infinite_last_one() {
        let h = Histogram::new(&[1, 4], 1.0);
        for v in [0, 1, 2, 4, 5, 100] {
            h.observe(v);
        }
        let mut page = Exposition::new();
        page.histogram("x_size", "sizes", &h.snapshot());
        let text = page.finish();
        assert!(text.contains("x_size_bucket{le=\"1\"} 2\n"), "{text}");
        assert!(text.contains("x_size_bucket{le=\"4\"} 4\n"), "{text}");
        assert!(text.contains("x_size_bucket{le=\"+Inf\"} 6\n"), "{text}");
        assert!(text.contains("x_size_sum 112\nx_size_count 6\n"), "{text}");
        assert!(text.starts_with("# HELP x_size sizes\n# TYPE x_size histogram\n"), "{text}");
    }

    #[test]
    fn scaled_bounds_and_escaped_labels() {
        let h = Histogram::new(FSYNC_MICROS, 1e6);
        h.observe(300);
        let mut page = Exposition::new();
        page.histogram("fsync_seconds", "fsync", &h.snapshot());
        page.gauges("g", "odd \"labels\"", &[(&[("peer", "a\"b\\c")], 1.5)]);
        let text = page.finish();
        assert!(text.contains("fsync_seconds_bucket{le=\"0.0001\"} 0\n"), "{text}");
        assert!(text.contains("fsync_seconds_bucket{le=\"0.00025\"} 0\n"), "{text}");
        assert!(text.contains("fsync_seconds_bucket{le=\"0.025\"} 1\n"), "{text}");
        assert!(text.contains("fsync_seconds_bucket{le=\"0.0005\"} 1\n"), "{text}");
        assert!(text.contains("fsync_seconds_sum 0.0003\n"), "{text}");
        assert!(text.contains("g{peer=\"a\\\"b\\\\c\"} 1.5\n"), "{text}");
    }

    #[test]
    fn the_endpoint_serves_the_page_and_refuses_the_rest() {
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), || "up 1\n".to_owned()).unwrap();
        let get = |request: &str| {
            let mut s = TcpStream::connect(server.local_addr()).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            reply
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nup 1\n"), "{ok}");
        assert!(ok.contains("Content-Length: 5\r\n"), "{ok}");
        assert!(get("GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    }
}
