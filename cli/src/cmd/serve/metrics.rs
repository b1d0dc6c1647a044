//! `GET /metrics`: counters the decoding thread updates and the HTTP side reads, rendered in
//! Prometheus' text format (version 0.0.4). Plain atomics: no registry crate is needed for a
//! dozen numbers.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use pardec::conversations::{Load, Outcome};

/// A number that only grows.
#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A number that goes up and down.
#[derive(Default)]
pub(crate) struct Gauge(AtomicU64);

impl Gauge {
    fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything `/metrics` shows.
#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) requests: Counter,
    pub(crate) refused: Counter,
    pub(crate) rejected: Counter,
    pub(crate) finished_ok: Counter,
    pub(crate) failed: Counter,
    pub(crate) hung_up: Counter,
    pub(crate) forks: Counter,
    prompt_tokens: Counter,
    reused_tokens: Counter,
    completion_tokens: Counter,
    steps: Counter,
    step_tokens: Counter,
    active: Gauge,
    queued: Gauge,
    cached: Gauge,
    kv_cells: Gauge,
    pub(crate) kv_cells_total: Gauge,
}

impl Metrics {
    pub(crate) fn new(kv_cells_total: u32) -> Metrics {
        let m = Metrics::default();
        m.kv_cells_total.set(kv_cells_total as u64);
        m
    }

    /// A request ended (well or not).
    pub(crate) fn finished(&self, o: &Outcome) {
        if o.error.is_some() {
            self.failed.inc();
        } else {
            self.finished_ok.inc();
        }
        self.prompt_tokens.add(o.prompt_tokens as u64);
        self.reused_tokens.add(o.reused_tokens as u64);
        self.completion_tokens.add(o.generated_tokens as u64);
    }

    /// One step ran and sampled `sampled` tokens (a step that sampled none — all prefill,
    /// or nothing admitted — is not counted); `load` is the state after it.
    pub(crate) fn stepped(&self, sampled: u64, load: Load) {
        if sampled > 0 {
            self.steps.inc();
            self.step_tokens.add(sampled);
        }
        self.active.set(load.active as u64);
        self.queued.set(load.queued as u64);
        self.cached.set(load.cached as u64);
        self.kv_cells.set(load.kv_cells);
    }

    /// The Prometheus text.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP pardec_{name} {help}\n# TYPE pardec_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "pardec_{name}{labels} {value}");
            }
        };
        metric(
            "requests_total",
            "counter",
            "Requests by how they ended.",
            &[
                ("{outcome=\"accepted\"}", self.requests.get()),
                ("{outcome=\"finished\"}", self.finished_ok.get()),
                ("{outcome=\"failed\"}", self.failed.get()),
                ("{outcome=\"hung_up\"}", self.hung_up.get()),
                ("{outcome=\"refused\"}", self.refused.get()),
                ("{outcome=\"rejected\"}", self.rejected.get()),
            ],
        );
        metric(
            "prompt_tokens_total",
            "counter",
            "Prompt tokens of finished requests.",
            &[("", self.prompt_tokens.get())],
        );
        metric(
            "prompt_tokens_reused_total",
            "counter",
            "Prompt tokens taken from the cache instead of decoded.",
            &[("", self.reused_tokens.get())],
        );
        metric(
            "completion_tokens_total",
            "counter",
            "Tokens sampled for finished requests, branches included.",
            &[("", self.completion_tokens.get())],
        );
        metric("steps_total", "counter", "Batched decode steps.", &[("", self.steps.get())]);
        metric(
            "step_tokens_total",
            "counter",
            "Tokens decoded in steps (divided by steps_total: the mean batch width).",
            &[("", self.step_tokens.get())],
        );
        metric("forks_total", "counter", "Blocks the model opened.", &[("", self.forks.get())]);
        metric("requests_active", "gauge", "Requests decoding.", &[("", self.active.get())]);
        metric("requests_queued", "gauge", "Requests waiting for room.", &[("", self.queued.get())]);
        metric("prompts_cached", "gauge", "Finished conversations kept for prompt reuse.", &[("", self.cached.get())]);
        metric("kv_cells_used", "gauge", "KV cells holding tokens.", &[("", self.kv_cells.get())]);
        metric("kv_cells", "gauge", "KV cells of the context.", &[("", self.kv_cells_total.get())]);
        out
    }
}
