//! The metrics the parallel-decoding papers report, for one generation.
//!
//! Definitions (the metrics the papers report; README "Measured"):
//! - TPS = generated tokens / wall time of decoding (serial + parallel phases);
//! - P-TPS = branch tokens / parallel-phase time;
//! - DP (degree of parallelism) = branch tokens / generated tokens;
//! - ABN = mean number of branches per parallel block;
//! - #parallel (Multiverse) = generated tokens / decode steps on the critical path.
//!
//! "Generated" counts sampled tokens only; prompt, branch prefixes and join texts are prefill.

use std::time::Duration;

use serde::Serialize;

/// Counters accumulated by a session; [`Stats`] is derived from them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters {
    pub trunk_tokens: u64,
    pub branch_tokens: u64,
    pub prefill_tokens: u64,
    pub steps: u64,
    pub parallel_steps: u64,
    pub blocks: u64,
    pub branches: u64,
    pub serial_time: Duration,
    pub parallel_time: Duration,
    pub prefill_time: Duration,
    /// Step time outside llama_decode (sampling, bookkeeping, callbacks).
    pub host_time: Duration,
    /// Of which choosing tokens (scanning rows or candidates, drawing, stop checks).
    pub selection_time: Duration,
    /// Cells that would be needed if each branch had decoded its own copy of the prefix
    /// beyond those actually used: Σ over blocks of (branches − 1) × prefix cells.
    pub prefix_copies_avoided: u64,
}

/// Metrics of a generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Sampled tokens, trunk and branches.
    pub tokens_total: u64,
    /// Sampled tokens inside branches.
    pub tokens_branch: u64,
    /// Tokens prefilled (prompt, branch prefixes, join text).
    pub tokens_prefill: u64,
    /// Decode steps on the critical path (a parallel step counts once, whatever its width).
    pub steps: u64,
    /// Forks made (blocks opened, nested ones included).
    pub blocks: u64,
    /// Branches opened, over every block.
    pub branches: u64,
    /// Wall time of decode steps with no branch token (the trunk decoding alone), seconds.
    pub serial_seconds: f64,
    /// Wall time of decode steps holding at least one branch token, seconds.
    pub parallel_seconds: f64,
    /// Wall time spent prefilling prompts, branch prefixes and join texts, seconds (not part
    /// of `tps`).
    pub prefill_seconds: f64,
    /// Host time per decode step outside llama_decode (sampling, bookkeeping, callbacks), µs.
    pub host_us_per_step: f64,
    /// Of which choosing the next tokens (all rows of the step), µs.
    pub selection_us_per_step: f64,
    /// Tokens per second: `tokens_total` / (`serial_seconds` + `parallel_seconds`); 0 when
    /// nothing was decoded (as for every ratio here with a zero denominator).
    pub tps: f64,
    /// Parallel tokens per second: `tokens_branch` / `parallel_seconds`.
    pub p_tps: f64,
    /// Degree of parallelism: `tokens_branch` / `tokens_total`, in [0, 1].
    pub dp: f64,
    /// Average branch number: `branches` / `blocks`.
    pub abn: f64,
    /// Multiverse's #parallel: `tokens_total` / `steps`, the tokens gained per step on the
    /// critical path (1.0 for purely serial decoding).
    pub parallel: f64,
    /// KV cells holding this session's tokens now.
    pub kv_cells_used: u64,
    /// KV cells the same tokens would need if every branch carried its own copy of its prefix.
    pub kv_cells_unshared: u64,
}

fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

impl Counters {
    pub(crate) fn to_stats(&self, kv_cells_used: u64) -> Stats {
        let total = self.trunk_tokens + self.branch_tokens;
        let serial = self.serial_time.as_secs_f64();
        let parallel = self.parallel_time.as_secs_f64();
        Stats {
            tokens_total: total,
            tokens_branch: self.branch_tokens,
            tokens_prefill: self.prefill_tokens,
            steps: self.steps,
            blocks: self.blocks,
            branches: self.branches,
            serial_seconds: serial,
            parallel_seconds: parallel,
            prefill_seconds: self.prefill_time.as_secs_f64(),
            host_us_per_step: ratio(self.host_time.as_secs_f64() * 1e6, self.steps as f64),
            selection_us_per_step: ratio(self.selection_time.as_secs_f64() * 1e6, self.steps as f64),
            tps: ratio(total as f64, serial + parallel),
            p_tps: ratio(self.branch_tokens as f64, parallel),
            dp: ratio(self.branch_tokens as f64, total as f64),
            abn: ratio(self.branches as f64, self.blocks as f64),
            parallel: ratio(total as f64, self.steps as f64),
            kv_cells_used,
            kv_cells_unshared: kv_cells_used + self.prefix_copies_avoided,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_follow_the_papers_definitions() {
        let c = Counters {
            trunk_tokens: 20,
            branch_tokens: 80,
            steps: 40,
            blocks: 2,
            branches: 6,
            serial_time: Duration::from_secs(1),
            parallel_time: Duration::from_secs(4),
            prefix_copies_avoided: 50,
            ..Default::default()
        };
        let s = c.to_stats(150);
        assert_eq!(s.tokens_total, 100);
        assert!((s.tps - 20.0).abs() < 1e-9);
        assert!((s.p_tps - 20.0).abs() < 1e-9);
        assert!((s.dp - 0.8).abs() < 1e-9);
        assert!((s.abn - 3.0).abs() < 1e-9);
        assert!((s.parallel - 2.5).abs() < 1e-9);
        assert_eq!(s.kv_cells_unshared, 200);
        assert_eq!(Counters::default().to_stats(0).tps, 0.0);
    }
}
