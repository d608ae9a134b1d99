//! Prometheus metrics in the text exposition format (version 0.0.4), kept by hand:
//! a few counters and fixed-bucket histograms behind mutexes (one short lock per
//! request, far below the cost of scoring it).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `mixrank_requests_total` | counter | `protocol` (http, grpc), `outcome` (ok, bad_request, too_large, overloaded, timeout, shutting_down, internal) |
//! | `mixrank_request_duration_seconds` | histogram | `protocol` |
//! | `mixrank_batch_rows` | histogram | rows per model forward |
//! | `mixrank_batch_requests` | histogram | requests merged into one forward |
//! | `mixrank_forward_duration_seconds` | histogram | |
//! | `mixrank_queue_depth` | gauge | requests waiting for the batcher |
//! | `mixrank_model_info` | gauge (1) | `version`, `precision` |
//! | `mixrank_model_step` | gauge | training step of the serving checkpoint |
//! | `mixrank_reloads_total` | counter | `outcome` (ok, refused) |
//! | `mixrank_ignored_fields_total` | counter | `column`: scored requests that sent a column the served model does not read (only its position tower does), ignored |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// A histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    state: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    pub fn new(bounds: Vec<f64>) -> Self {
        let n = bounds.len();
        Histogram { bounds, state: Mutex::new((vec![0; n], 0.0, 0)) }
    }

    pub fn observe(&self, v: f64) {
        if let Ok(mut s) = self.state.lock() {
            if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
                s.0[i] += 1;
            }
            s.1 += v;
            s.2 += 1;
        }
    }

    /// Total observations.
    pub fn count(&self) -> u64 {
        self.state.lock().map(|s| s.2).unwrap_or(0)
    }

    fn render(&self, o: &mut String, name: &str, labels: &str) {
        let Ok(s) = self.state.lock() else { return };
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&s.0) {
            cum += c;
            let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", s.2);
        let _ = writeln!(o, "{name}_sum{{{labels}}} {}", s.1);
        let _ = writeln!(o, "{name}_count{{{labels}}} {}", s.2);
    }
}

fn latency_bounds() -> Vec<f64> {
    vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
}

fn size_bounds() -> Vec<f64> {
    vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0]
}

/// All serving metrics.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    latency: [Histogram; 2],
    pub batch_rows: Histogram,
    pub batch_requests: Histogram,
    pub forward_seconds: Histogram,
    reloads: Mutex<BTreeMap<&'static str, u64>>,
    ignored: Mutex<BTreeMap<String, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            latency: [Histogram::new(latency_bounds()), Histogram::new(latency_bounds())],
            batch_rows: Histogram::new(size_bounds()),
            batch_requests: Histogram::new(size_bounds()),
            forward_seconds: Histogram::new(latency_bounds()),
            reloads: Mutex::default(),
            ignored: Mutex::default(),
        }
    }
}

/// Which front end a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

impl Metrics {
    /// Records one finished scoring request.
    pub fn request(&self, p: Protocol, outcome: &'static str, took: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((p.name(), outcome)).or_default() += 1;
        }
        self.latency[p as usize].observe(took.as_secs_f64());
    }

    /// Requests counted so far with this outcome (any protocol).
    pub fn requests_with(&self, outcome: &str) -> u64 {
        self.requests.lock().map(|m| m.iter().filter(|((_, o), _)| *o == outcome).map(|(_, c)| c).sum()).unwrap_or(0)
    }

    /// Counts one scored request that sent `column`, which the served model does not
    /// read (it was ignored).
    pub fn ignored_field(&self, column: &str) {
        if let Ok(mut m) = self.ignored.lock() {
            *m.entry(column.to_string()).or_default() += 1;
        }
    }

    /// Requests counted so far that sent the ignored `column`.
    pub fn ignored_count(&self, column: &str) -> u64 {
        self.ignored.lock().map(|m| m.get(column).copied().unwrap_or(0)).unwrap_or(0)
    }

    pub fn reload(&self, ok: bool) {
        if let Ok(mut m) = self.reloads.lock() {
            *m.entry(if ok { "ok" } else { "refused" }).or_default() += 1;
        }
    }

    /// The exposition text.
    pub fn render(&self, queue_depth: usize, version: &str, precision: &str, step: u64) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# HELP mixrank_requests_total Scoring requests by protocol and outcome.");
        let _ = writeln!(o, "# TYPE mixrank_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            for ((p, out), c) in m.iter() {
                let _ = writeln!(o, "mixrank_requests_total{{protocol=\"{p}\",outcome=\"{out}\"}} {c}");
            }
        }
        let _ = writeln!(o, "# HELP mixrank_request_duration_seconds Scoring request latency, parse to reply.");
        let _ = writeln!(o, "# TYPE mixrank_request_duration_seconds histogram");
        for p in [Protocol::Http, Protocol::Grpc] {
            self.latency[p as usize].render(
                &mut o,
                "mixrank_request_duration_seconds",
                &format!("protocol=\"{}\"", p.name()),
            );
        }
        for (name, help, h) in [
            ("mixrank_batch_rows", "Rows per model forward.", &self.batch_rows),
            ("mixrank_batch_requests", "Requests merged into one model forward.", &self.batch_requests),
            ("mixrank_forward_duration_seconds", "Model forward time per micro-batch.", &self.forward_seconds),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} histogram");
            h.render(&mut o, name, "");
        }
        let _ = writeln!(o, "# HELP mixrank_queue_depth Requests waiting for the batcher.");
        let _ = writeln!(o, "# TYPE mixrank_queue_depth gauge");
        let _ = writeln!(o, "mixrank_queue_depth {queue_depth}");
        let _ = writeln!(o, "# HELP mixrank_model_info The serving model.");
        let _ = writeln!(o, "# TYPE mixrank_model_info gauge");
        let v = version.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(o, "mixrank_model_info{{version=\"{v}\",precision=\"{precision}\"}} 1");
        let _ = writeln!(o, "# HELP mixrank_model_step Training step of the serving checkpoint.");
        let _ = writeln!(o, "# TYPE mixrank_model_step gauge");
        let _ = writeln!(o, "mixrank_model_step {step}");
        let _ = writeln!(o, "# HELP mixrank_reloads_total Model reloads by outcome.");
        let _ = writeln!(o, "# TYPE mixrank_reloads_total counter");
        if let Ok(m) = self.reloads.lock() {
            for (out, c) in m.iter() {
                let _ = writeln!(o, "mixrank_reloads_total{{outcome=\"{out}\"}} {c}");
            }
        }
        let _ = writeln!(
            o,
            "# HELP mixrank_ignored_fields_total Scored requests that sent a column the served model does not read \
             (only its position tower does, which is off at serving), by column; the values were ignored."
        );
        let _ = writeln!(o, "# TYPE mixrank_ignored_fields_total counter");
        if let Ok(m) = self.ignored.lock() {
            for (col, c) in m.iter() {
                let col = col.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(o, "mixrank_ignored_fields_total{{column=\"{col}\"}} {c}");
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_text_is_well_formed() {
        let m = Metrics::default();
        m.request(Protocol::Http, "ok", Duration::from_millis(3));
        m.request(Protocol::Http, "ok", Duration::from_millis(30));
        m.request(Protocol::Grpc, "bad_request", Duration::from_micros(100));
        m.batch_rows.observe(100.0);
        m.reload(false);
        m.ignored_field("position");
        m.ignored_field("position");
        let t = m.render(2, "run@7#abc", "bf16", 7);
        assert!(t.contains("mixrank_requests_total{protocol=\"http\",outcome=\"ok\"} 2"), "{t}");
        assert!(t.contains("mixrank_requests_total{protocol=\"grpc\",outcome=\"bad_request\"} 1"), "{t}");
        assert!(t.contains("mixrank_request_duration_seconds_bucket{protocol=\"http\",le=\"0.005\"} 1"), "{t}");
        assert!(t.contains("mixrank_request_duration_seconds_bucket{protocol=\"http\",le=\"0.05\"} 2"), "{t}");
        assert!(t.contains("mixrank_request_duration_seconds_count{protocol=\"http\"} 2"), "{t}");
        assert!(t.contains("mixrank_batch_rows_bucket{le=\"128\"} 1"), "{t}");
        assert!(t.contains("mixrank_queue_depth 2"), "{t}");
        assert!(t.contains("mixrank_model_info{version=\"run@7#abc\",precision=\"bf16\"} 1"), "{t}");
        assert!(t.contains("mixrank_reloads_total{outcome=\"refused\"} 1"), "{t}");
        assert!(t.contains("mixrank_ignored_fields_total{column=\"position\"} 2"), "{t}");
        assert_eq!(m.ignored_count("position"), 2);
        assert_eq!(m.requests_with("ok"), 2);
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line}");
        }
    }
}
