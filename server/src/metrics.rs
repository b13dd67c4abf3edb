//! Counters for `GET /metrics`, in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The server's counters; every field is updated atomically from any thread.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: AtomicU64,
    failures: AtomicU64,
    rejected: AtomicU64,
    queue_depth: AtomicU64,
    batches: AtomicU64,
    batch_rows: AtomicU64,
    batch_rows_max: AtomicU64,
    tokens: AtomicU64,
    generation_micros: AtomicU64,
    forwards: AtomicU64,
    flops_saved: AtomicU64,
}

impl Metrics {
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.store(depth as u64, Ordering::Relaxed);
    }

    pub fn count_batch(&self, rows: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_rows.fetch_add(rows as u64, Ordering::Relaxed);
        self.batch_rows_max
            .fetch_max(rows as u64, Ordering::Relaxed);
    }

    /// One finished batch: tokens kept over all rows, its wall time, forwards, FLOPs saved.
    pub fn count_generation(&self, tokens: usize, wall: Duration, forwards: usize, saved: u64) {
        self.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        self.generation_micros
            .fetch_add(wall.as_micros() as u64, Ordering::Relaxed);
        self.forwards.fetch_add(forwards as u64, Ordering::Relaxed);
        self.flops_saved.fetch_add(saved, Ordering::Relaxed);
    }

    /// The Prometheus exposition text.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let seconds = get(&self.generation_micros) as f64 / 1e6;
        let batches = get(&self.batches);
        let rows = get(&self.batch_rows);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        metric(
            "dllm_requests_total",
            "counter",
            "Generation requests accepted.",
            get(&self.requests).to_string(),
        );
        metric(
            "dllm_requests_failed_total",
            "counter",
            "Accepted requests that failed or timed out.",
            get(&self.failures).to_string(),
        );
        metric(
            "dllm_requests_rejected_total",
            "counter",
            "Requests refused because the queue was full.",
            get(&self.rejected).to_string(),
        );
        metric(
            "dllm_queue_depth",
            "gauge",
            "Jobs waiting for a batch.",
            get(&self.queue_depth).to_string(),
        );
        metric(
            "dllm_batches_total",
            "counter",
            "Batches run.",
            batches.to_string(),
        );
        metric(
            "dllm_batch_rows_total",
            "counter",
            "Rows over all batches (divide by dllm_batches_total for the mean batch size).",
            rows.to_string(),
        );
        metric(
            "dllm_batch_rows_max",
            "gauge",
            "Largest batch run.",
            get(&self.batch_rows_max).to_string(),
        );
        metric(
            "dllm_generated_tokens_total",
            "counter",
            "Completion tokens produced.",
            get(&self.tokens).to_string(),
        );
        metric(
            "dllm_generation_seconds_total",
            "counter",
            "Wall time spent generating.",
            format!("{seconds:.6}"),
        );
        metric(
            "dllm_tokens_per_second",
            "gauge",
            "Completion tokens per second of generation time, since start.",
            format!("{:.3}", get(&self.tokens) as f64 / seconds.max(1e-9)),
        );
        metric(
            "dllm_forwards_total",
            "counter",
            "Model forwards run (NFE).",
            get(&self.forwards).to_string(),
        );
        metric(
            "dllm_flops_saved_total",
            "counter",
            "FLOPs the cache policies saved against running the same steps without a cache.",
            get(&self.flops_saved).to_string(),
        );
        out
    }
}
