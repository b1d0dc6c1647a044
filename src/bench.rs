//! `pardec bench`: what parallel branches buy on this machine, measured in one process.
//!
//! For each branch count B, the same B branches (same prompt, same prefixes, same token counts,
//! EOG banned so every branch decodes exactly `tokens` tokens) are decoded four ways:
//! - **serial**: through the engine, one single-branch block after another;
//! - **parallel**: through the engine, all B in one block (one batch per step);
//! - **raw parallel** / **raw serial**: plain batched `llama_decode` calls on the same
//!   sequences with no sampling or bookkeeping, B lanes at once or one lane at a time.
//!
//! Prefills are excluded from every timing. Each measurement keeps the fastest of `reps`.
//!
//! The raw ceiling is always plain decoding with full logit rows delivered to the host (as a
//! plain llama.cpp program gets them): with device selection the engine runs on a session with
//! the backend chains attached, and the raw columns on a second, host-selection session.
//!
//! Beside it: `sampling_costs` (the host cost of each sampling feature at one B) and
//! `format_ceilings` (the raw ceiling of the model in each weight format).

use std::time::Duration;

use serde::Serialize;

use crate::error::Result;
use crate::model::Model;
use crate::session::SamplingParams;
use crate::session::{BranchSpec, JoinMode, NodeId, RunLimits, Selection, Session, SessionParams, Silent};
use crate::stats::Stats;

/// What `pardec bench` measures, and on what session.
#[derive(Debug, Clone)]
pub struct BenchParams {
    /// The branch counts B to measure, one row each, in this order (default 1, 2, 4, 8, 16);
    /// the session's `max_branches` is raised to the largest.
    pub branches: Vec<usize>,
    /// Tokens each branch decodes.
    pub tokens: usize,
    /// Repetitions of every measurement; the fastest is kept (0 counts as 1).
    pub reps: usize,
    /// The shared prompt every branch forks from (ignored, for a fixed run of token ids, on a
    /// model without a tokenizer).
    pub prompt: String,
    /// The session to measure on: its selection and sampling are the engine's; the raw
    /// columns always use host selection.
    pub session: SessionParams,
}

impl Default for BenchParams {
    fn default() -> Self {
        BenchParams {
            branches: vec![1, 2, 4, 8, 16],
            tokens: 64,
            reps: 2,
            prompt: "Write a short note about each of the following topics.\n".into(),
            session: SessionParams { n_ctx: 8192, max_branches: 32, ..Default::default() },
        }
    }
}

/// One line of the benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// B: branches decoded together in the parallel and raw parallel runs.
    pub branches: usize,
    /// Where the engine chose its tokens, and how.
    pub selection: Selection,
    /// The sampling parameters the engine used (EOG was banned throughout).
    pub sampling: SamplingParams,
    /// Tokens each branch decoded in every run.
    pub tokens_per_branch: usize,
    /// Engine, branches one after another (tokens/s).
    pub serial_tps: f64,
    /// Engine, branches in one batch per step (tokens/s).
    pub parallel_tps: f64,
    /// Plain llama_decode, B lanes per batch, no sampling (tokens/s).
    pub raw_tps: f64,
    /// Plain llama_decode, one lane at a time (tokens/s).
    pub raw_serial_tps: f64,
    /// parallel_tps / serial_tps.
    pub speedup: f64,
    /// raw_tps / raw_serial_tps: the ceiling llama.cpp itself gives on this machine.
    pub raw_speedup: f64,
    /// speedup / raw_speedup.
    pub speedup_vs_ceiling: f64,
    /// parallel_tps / raw_tps.
    pub engine_vs_raw: f64,
    /// Engine host time per parallel step outside llama_decode (sampling, bookkeeping), µs.
    pub host_us_per_step: f64,
    /// Of which choosing the next tokens, µs.
    pub selection_us_per_step: f64,
    /// Cells used with a shared prefix: P + B·L.
    pub kv_cells_shared: u64,
    /// Cells needed if each branch had its own prefix copy: B·(P + L).
    pub kv_cells_unshared: u64,
}

/// The same B branch openings for every measurement. Models without a tokenizer (random
/// weights made for a device check) get token-id prefixes of the same length instead.
fn specs(model: &Model, b: usize, tokens: usize) -> Vec<BranchSpec> {
    (0..b)
        .map(|i| BranchSpec {
            prefix: if model.has_text_vocab() { format!("\nTopic {}:", i + 1) } else { String::new() },
            prefix_tokens: if model.has_text_vocab() { Vec::new() } else { vec![10 + i as i32, 3, 4] },
            limits: RunLimits { max_tokens: tokens, ban_eog: true, ..Default::default() },
        })
        .collect()
}

/// Prompts with `text`, or — for a model without a tokenizer (random weights made for a
/// device check) — with a fixed run of token ids.
pub(crate) fn prompt(s: &mut Session, model: &Model, text: &str) -> Result<()> {
    if model.has_text_vocab() {
        s.prompt(text)
    } else {
        let n = model.n_vocab().max(2) as i32;
        let ids: Vec<i32> = (0..24).map(|i| 1 + (i * 37) % (n - 1)).collect();
        s.prompt_tokens(&ids)
    }
}

fn tps(tokens: usize, d: Duration) -> f64 {
    tokens as f64 / d.as_secs_f64().max(1e-9)
}

/// Runs the engine on `specs` in one block and returns the block's statistics (prefill is
/// excluded from their decode times).
fn engine_block(s: &mut Session, specs: &[BranchSpec]) -> Result<Stats> {
    s.reset_stats();
    s.fork(NodeId::TRUNK, specs)?;
    s.run(&mut Silent)?;
    let st = s.stats();
    s.join(NodeId::TRUNK, JoinMode::Discard, None)?;
    Ok(st)
}

/// Forks `specs` with no generation and times raw decoding of their lanes.
fn raw_block(s: &mut Session, specs: &[BranchSpec], tokens: usize) -> Result<Duration> {
    let idle: Vec<BranchSpec> =
        specs.iter().map(|sp| BranchSpec { limits: RunLimits::tokens(0), ..sp.clone() }).collect();
    let nodes = s.fork(NodeId::TRUNK, &idle)?;
    let t = s.raw_decode_steps(&nodes, tokens);
    s.join(NodeId::TRUNK, JoinMode::Discard, None)?;
    t
}

fn best<F: FnMut() -> Result<Duration>>(reps: usize, mut f: F) -> Result<Duration> {
    let mut min = Duration::MAX;
    for _ in 0..reps.max(1) {
        min = min.min(f()?);
    }
    Ok(min)
}

/// Runs the benchmark on one session of `model`.
pub fn run(model: &Model, p: &BenchParams) -> Result<Vec<BenchRow>> {
    let max_b = p.branches.iter().copied().max().unwrap_or(1);
    let mut params = p.session.clone();
    params.max_branches = params.max_branches.max(max_b as u32);
    let selection = params.selection;
    let mut s = Session::new(model, params.clone())?;
    prompt(&mut s, model, &p.prompt)?;
    // Warm-up: the first decodes pay one-off allocation costs.
    engine_block(&mut s, &specs(model, 2, 4))?;
    let mut raw_session = match selection {
        Selection::Host => None,
        Selection::Device { .. } => {
            let mut r = Session::new(model, SessionParams { selection: Selection::Host, ..params })?;
            prompt(&mut r, model, &p.prompt)?;
            raw_block(&mut r, &specs(model, 2, 4), 4)?;
            Some(r)
        }
    };

    let mut rows = Vec::new();
    for &b in &p.branches {
        let all = specs(model, b, p.tokens);
        let total = b * p.tokens;
        let serial = best(p.reps, || {
            let mut sum = Duration::ZERO;
            for spec in &all {
                sum += Duration::from_secs_f64(engine_block(&mut s, std::slice::from_ref(spec))?.parallel_seconds);
            }
            Ok(sum)
        })?;
        let mut cells = (0, 0);
        // Host and selection time of the rep with the least host time.
        let mut host_us = (f64::MAX, 0.0);
        let parallel = best(p.reps, || {
            let run = engine_block(&mut s, &all)?;
            cells = (run.kv_cells_used, run.kv_cells_unshared);
            if run.host_us_per_step < host_us.0 {
                host_us = (run.host_us_per_step, run.selection_us_per_step);
            }
            Ok(Duration::from_secs_f64(run.parallel_seconds))
        })?;
        let r = raw_session.as_mut().unwrap_or(&mut s);
        let raw = best(p.reps, || raw_block(r, &all, p.tokens))?;
        let raw_serial = best(p.reps, || {
            let mut sum = Duration::ZERO;
            for spec in &all {
                sum += raw_block(r, std::slice::from_ref(spec), p.tokens)?;
            }
            Ok(sum)
        })?;
        let (serial_tps, parallel_tps) = (tps(total, serial), tps(total, parallel));
        let (raw_tps, raw_serial_tps) = (tps(total, raw), tps(total, raw_serial));
        let speedup = parallel_tps / serial_tps;
        let raw_speedup = raw_tps / raw_serial_tps;
        rows.push(BenchRow {
            branches: b,
            selection,
            sampling: p.session.sampling.clone(),
            tokens_per_branch: p.tokens,
            serial_tps,
            parallel_tps,
            raw_tps,
            raw_serial_tps,
            speedup,
            raw_speedup,
            speedup_vs_ceiling: speedup / raw_speedup,
            engine_vs_raw: parallel_tps / raw_tps,
            host_us_per_step: host_us.0,
            selection_us_per_step: host_us.1,
            kv_cells_shared: cells.0,
            kv_cells_unshared: cells.1,
        });
    }
    Ok(rows)
}

/// One line of `pardec bench --sampling-costs`: what one sampling feature costs the host per
/// parallel step of B branches (llama_decode excluded).
#[derive(Debug, Clone, Serialize)]
pub struct FeatureCostRow {
    /// The feature, with the settings measured.
    pub feature: String,
    /// Branches decoded together.
    pub branches: usize,
    /// Tokens the branches sampled (fewer than B × tokens where a grammar ended a branch).
    pub tokens: u64,
    /// Engine host time per parallel step outside llama_decode, µs.
    pub host_us_per_step: f64,
    /// Of which choosing the next tokens, µs.
    pub selection_us_per_step: f64,
    /// Host time per sampled token, µs.
    pub host_us_per_token: f64,
    /// host_us_per_token minus the first row's (no feature), µs.
    pub extra_us_per_token: f64,
    /// Wall time per parallel step, llama_decode included, ms.
    pub step_ms: f64,
}

/// The features `sampling_costs` measures, each on top of the session's own sampling: a
/// label, the session's sampling and log-probability settings, and the branches' limits.
fn costed_features(model: &Model, base: &SessionParams, tokens: usize) -> Vec<(String, SessionParams, RunLimits)> {
    let limits = RunLimits { max_tokens: tokens, ban_eog: true, ..Default::default() };
    let with_sampling = |sampling: SamplingParams| SessionParams { sampling, ..base.clone() };
    let n_vocab = model.n_vocab().max(1) as i32;
    // Tokens spread over the vocabulary, so the bias touches a row in many places.
    let bias: Vec<(crate::Token, f32)> = (0..16).map(|i| ((i * 7919) % n_vocab, -1.5)).collect();
    vec![
        ("none".into(), base.clone(), limits.clone()),
        (
            "penalties (repeat 1.1, frequency 0.1, presence 0.1, last 64)".into(),
            with_sampling(SamplingParams {
                repeat_penalty: 1.1,
                frequency_penalty: 0.1,
                presence_penalty: 0.1,
                penalty_last_n: 64,
                ..base.sampling.clone()
            }),
            limits.clone(),
        ),
        (
            "logit bias (16 tokens)".into(),
            with_sampling(SamplingParams { logit_bias: bias, ..base.sampling.clone() }),
            limits.clone(),
        ),
        ("log-probs (top 5)".into(), SessionParams { logprobs: Some(5), ..base.clone() }, limits.clone()),
        (
            "stop strings (4, never matched)".into(),
            base.clone(),
            RunLimits { stop: ["\u{1}a", "\u{1}b", "\u{1}c", "\u{1}d"].map(String::from).to_vec(), ..limits.clone() },
        ),
        (
            "grammar (one JSON object)".into(),
            base.clone(),
            RunLimits { grammar: Some(crate::Grammar::json_object()), ..limits },
        ),
    ]
}

/// The host cost of each sampling feature at B = the largest of `p.branches`: the same B
/// branches of `p.tokens` tokens, once per feature on a fresh session, best of `p.reps` by
/// host time per token.
pub fn sampling_costs(model: &Model, p: &BenchParams) -> Result<Vec<FeatureCostRow>> {
    let b = p.branches.iter().copied().max().unwrap_or(16);
    let mut base = p.session.clone();
    base.max_branches = base.max_branches.max(b as u32);
    let mut rows: Vec<FeatureCostRow> = Vec::new();
    for (feature, params, limits) in costed_features(model, &base, p.tokens) {
        let mut s = Session::new(model, params)?;
        prompt(&mut s, model, &p.prompt)?;
        let all: Vec<BranchSpec> =
            specs(model, b, p.tokens).into_iter().map(|sp| BranchSpec { limits: limits.clone(), ..sp }).collect();
        engine_block(&mut s, &all[..2.min(b)])?; // warm-up
        let mut best_row: Option<FeatureCostRow> = None;
        for _ in 0..p.reps.max(1) {
            let st = engine_block(&mut s, &all)?;
            let host_us = st.host_us_per_step * st.steps as f64;
            let row = FeatureCostRow {
                feature: feature.clone(),
                branches: b,
                tokens: st.tokens_branch,
                host_us_per_step: st.host_us_per_step,
                selection_us_per_step: st.selection_us_per_step,
                host_us_per_token: host_us / st.tokens_branch.max(1) as f64,
                extra_us_per_token: 0.0,
                step_ms: st.parallel_seconds * 1e3 / st.steps.max(1) as f64,
            };
            // map_or: Option::is_none_or is newer than the crate's rust-version (1.80).
            if best_row.as_ref().map_or(true, |r| row.host_us_per_token < r.host_us_per_token) {
                best_row = Some(row);
            }
        }
        let mut row = best_row.expect("at least one rep");
        row.extra_us_per_token = rows.first().map_or(0.0, |none| row.host_us_per_token - none.host_us_per_token);
        rows.push(row);
    }
    Ok(rows)
}

/// A plain English passage the `--formats` benchmark scores each format on (perplexity):
/// written for this benchmark, so no model has seen it verbatim.
const SCORED_PASSAGE: &str = "The small harbour town wakes before the sun. Fishing boats leave in a line, \
their lamps swinging, while the baker pulls the first loaves from an oven that has not gone cold in \
forty years. By seven the market square fills with crates of mackerel, bunches of wet parsley and the \
noise of people who have known each other all their lives. Children run to the school on the hill, \
and the ferry to the island sounds its horn twice, as it always does, whether anyone is waiting or \
not. In the afternoon the wind turns, the tide goes out, and the gulls settle on the mud to argue \
over what the fishermen threw away.";

/// One line of `pardec bench --formats`: one weight format's raw batched-decode ceiling and
/// quality.
#[derive(Debug, Clone, Serialize)]
pub struct FormatRow {
    /// The weight format.
    pub format: crate::WeightFormat,
    /// Whether this is the model file as given (the others are converted from it).
    pub original: bool,
    /// The file's size, MiB.
    pub file_mib: f64,
    /// Perplexity on a fixed English passage (lower is better; compare with the original's).
    pub perplexity: f64,
    /// B for each entry of `step_ms` and `ceiling`.
    pub branches: Vec<usize>,
    /// Wall time of one raw llama_decode step of B lanes, ms.
    pub step_ms: Vec<f64>,
    /// Raw tokens per second at B lanes: B / step time (comparable across formats).
    pub tps: Vec<f64>,
    /// The raw ceiling: B × (one-lane step time) / (B-lane step time), the most a batch of B
    /// branches can gain over decoding them one after another.
    pub ceiling: Vec<f64>,
}

/// The raw ceiling and perplexity of `model_path` in each of `formats` (converted once, beside
/// the model, by [`crate::convert`]; an existing converted file is reused), the model as
/// given first. Each B of `p.branches` decodes `p.tokens` raw steps, best of `p.reps`.
pub fn format_ceilings(
    model_path: &std::path::Path,
    formats: &[crate::WeightFormat],
    p: &BenchParams,
    mut progress: impl FnMut(&str),
) -> Result<Vec<FormatRow>> {
    let original = crate::file_format(model_path);
    let mut files = vec![(model_path.to_path_buf(), original, true)];
    for &f in formats {
        if Some(f) == original {
            continue;
        }
        let out = crate::converted_path(model_path, f);
        if !out.is_file() {
            progress(&format!("writing {}", out.display()));
            crate::convert(model_path, &out, f, p.session.n_threads)?;
        }
        files.push((out, Some(f), false));
    }
    let mut rows = Vec::new();
    for (path, format, is_original) in files {
        let Some(format) = format else {
            return Err(crate::Error::UnsupportedModel(format!(
                "{}: its weight format (general.file_type) is none of {}",
                path.display(),
                crate::WeightFormat::ALL.map(|f| f.name()).join(", ")
            )));
        };
        progress(&format!("measuring {format}"));
        let model = Model::load(&path, &crate::ModelParams::default())?;
        let (params, times) = raw_step_ms(&model, p)?;
        let (one, step_ms) = (times[0], times[1..].to_vec());
        let tps = p.branches.iter().zip(&step_ms).map(|(&b, &ms)| b as f64 * 1e3 / ms.max(1e-9)).collect();
        let ceiling = p.branches.iter().zip(&step_ms).map(|(&b, &ms)| b as f64 * one / ms.max(1e-9)).collect();
        let mut scorer = Session::new(&model, SessionParams { max_branches: 1, ..params })?;
        scorer.prompt("A morning in a harbour town.\n")?;
        let ids = model.tokenize(SCORED_PASSAGE, false)?;
        let logprobs = scorer.score_tokens(NodeId::TRUNK, &ids)?;
        let mean = logprobs.iter().map(|&l| l as f64).sum::<f64>() / logprobs.len().max(1) as f64;
        rows.push(FormatRow {
            format,
            original: is_original,
            file_mib: std::fs::metadata(&path).map_or(0.0, |m| m.len() as f64 / (1024.0 * 1024.0)),
            perplexity: (-mean).exp(),
            branches: p.branches.clone(),
            step_ms,
            tps,
            ceiling,
        });
    }
    Ok(rows)
}

/// The wall time of one raw llama_decode step of B lanes, ms, for B = 1 and then each B of
/// `p.branches` (`p.tokens` steps, best of `p.reps`), and the session parameters used.
fn raw_step_ms(model: &Model, p: &BenchParams) -> Result<(SessionParams, Vec<f64>)> {
    let max_b = p.branches.iter().copied().max().unwrap_or(1);
    let params = SessionParams { max_branches: p.session.max_branches.max(max_b as u32), ..p.session.clone() };
    let mut s = Session::new(model, params.clone())?;
    prompt(&mut s, model, &p.prompt)?;
    let lanes = specs(model, max_b, 0);
    raw_block(&mut s, &lanes, 4)?; // warm-up: the first decodes of a shape pay set-up costs
    let steps = p.tokens.max(1);
    let mut step = |b: usize| -> Result<f64> {
        Ok(best(p.reps, || raw_block(&mut s, &lanes[..b], steps))?.as_secs_f64() * 1e3 / steps as f64)
    };
    let one = step(1)?;
    let mut times = vec![one];
    for &b in &p.branches {
        times.push(if b == 1 { one } else { step(b)? });
    }
    Ok((params, times))
}

/// One line of `pardec bench --rpc-cost`: a raw batched step on this machine and over the
/// RPC servers.
#[derive(Debug, Clone, Serialize)]
pub struct RpcCostRow {
    /// Lanes decoded in the step (B).
    pub branches: usize,
    /// Wall time of the step with the model on this machine, ms.
    pub local_ms: f64,
    /// The same with its layers on the servers, ms.
    pub rpc_ms: f64,
    /// What the servers add to a step, ms.
    pub added_ms: f64,
    /// rpc_ms / local_ms.
    pub ratio: f64,
}

/// The cost of the RPC servers per decode step: raw steps of each B of `p.branches` with the
/// model at `model_path` loaded here and over `servers`, one after the other in this run.
pub fn rpc_step_costs(model_path: &std::path::Path, servers: &[String], p: &BenchParams) -> Result<Vec<RpcCostRow>> {
    let local = Model::load(model_path, &crate::ModelParams::default())?;
    let (_, here) = raw_step_ms(&local, p)?;
    drop(local);
    let remote = Model::load(model_path, &crate::ModelParams { rpc_servers: servers.to_vec(), ..Default::default() })?;
    let (_, there) = raw_step_ms(&remote, p)?;
    Ok(p.branches
        .iter()
        .zip(here[1..].iter().zip(&there[1..]))
        .map(|(&branches, (&local_ms, &rpc_ms))| RpcCostRow {
            branches,
            local_ms,
            rpc_ms,
            added_ms: rpc_ms - local_ms,
            ratio: rpc_ms / local_ms.max(1e-9),
        })
        .collect())
}

/// One line of `pardec bench --auto`.
#[derive(Debug, Clone, Serialize)]
pub struct AutoBenchRow {
    /// B: branches of the response's one block.
    pub branches: usize,
    /// Filler tokens each branch writes before its end marker.
    pub tokens_per_branch: usize,
    /// Tokens of the response (trunk and branches, forced and sampled).
    pub response_tokens: usize,
    /// Of which the trunk's own (serial part).
    pub trunk_tokens: usize,
    /// Tokens of the longest branch: the block's steps on the critical path.
    pub longest_branch: usize,
    /// Wall time of auto mode (Multiverse, structure scripted, bodies by the model).
    pub auto_seconds: f64,
    /// Wall time of decoding the identical token sequence serially, one token per step.
    pub serial_seconds: f64,
    /// serial_seconds / auto_seconds.
    pub speedup: f64,
    /// The speedup the measured raw decode curve allows for this structure.
    pub ideal: f64,
    /// speedup / ideal.
    pub vs_ideal: f64,
}

/// Forces a whole Multiverse response: the trunk writes B outlines and the trigger, each
/// branch writes exactly `tokens` tokens of filler and its end marker, the trunk concludes and
/// ends. Everything is forced so that the auto-mode run and the serial replay decode the very
/// same tokens and branches are equally long; selection cost is measured by `run` instead.
struct MultiverseScript {
    model: Model,
    branches: usize,
    tokens: usize,
    started: std::collections::HashSet<String>,
    queue: std::collections::HashMap<String, std::collections::VecDeque<crate::Token>>,
}

impl MultiverseScript {
    fn tokens_of(&self, text: &str) -> Vec<crate::Token> {
        self.model.tokenize(text, false).unwrap_or_default()
    }

    fn start(&mut self, label: &str, text: &str) -> Option<crate::Token> {
        let mut q: std::collections::VecDeque<crate::Token> = if label.is_empty() {
            if self.started.contains(label) {
                if !text.ends_with("<Conclusion>\n") {
                    return None;
                }
                let mut t = self.tokens_of("Done.\n</Conclusion>\n</Parallel>");
                t.extend(self.model.eog_tokens().first());
                t.into()
            } else {
                let outlines: String =
                    (1..=self.branches).map(|i| format!("<Outline>{i}: part {i}</Outline>\n")).collect();
                self.tokens_of(&format!("<Parallel>\n<Goal>\n{outlines}</Goal>")).into()
            }
        } else {
            if self.started.contains(label) {
                return None;
            }
            let filler = " and then some more words about this part".repeat(1 + self.tokens / 4);
            let mut t: Vec<crate::Token> = self.tokens_of(&filler).into_iter().take(self.tokens).collect();
            t.extend(self.tokens_of("\n</Path>"));
            t.into()
        };
        self.started.insert(label.to_string());
        let first = q.pop_front();
        self.queue.insert(label.to_string(), q);
        first
    }
}

impl crate::TokenScript for MultiverseScript {
    fn next_token(&mut self, label: &str, text: &str) -> Option<crate::Token> {
        if let Some(t) = self.queue.get_mut(label).and_then(|q| q.pop_front()) {
            return Some(t);
        }
        self.start(label, text)
    }
}

/// Replays a fixed token sequence, one token per sample.
struct Replay(std::collections::VecDeque<crate::Token>);

impl crate::TokenScript for Replay {
    fn next_token(&mut self, _label: &str, _text: &str) -> Option<crate::Token> {
        self.0.pop_front()
    }
}

/// Auto mode with a scripted Multiverse structure versus the identical tokens decoded
/// serially, next to the ideal the raw decode curve allows.
pub fn auto_vs_serial(model: &Model, p: &BenchParams) -> Result<Vec<AutoBenchRow>> {
    use crate::auto::{generate_auto, AutoParams};
    use crate::protocol::ProtocolSpec;
    let spec = ProtocolSpec::builtin("multiverse").expect("built-in");
    let mut rows = Vec::new();
    for &b in &p.branches {
        let mut params = p.session.clone();
        params.max_branches = params.max_branches.max(b as u32);
        let mut s = Session::new(model, params.clone())?;
        prompt(&mut s, model, &p.prompt)?;
        let prompt_tokens = s.node_tokens(NodeId::TRUNK).len();
        let script = MultiverseScript {
            model: model.clone(),
            branches: b,
            tokens: p.tokens,
            started: Default::default(),
            queue: Default::default(),
        };
        s.set_script(Some(Box::new(script)));
        let auto = AutoParams {
            max_tokens: 64 + 16 * b,
            max_branch_tokens: p.tokens + 16,
            response_prefix: String::new(),
            branches_ban_eog: true,
            ..Default::default()
        };
        let started = std::time::Instant::now();
        generate_auto(&mut s, &spec, &auto, &mut Silent)?;
        let auto_seconds = started.elapsed().as_secs_f64();
        let mut flat = Vec::new();
        flatten_tokens(&s.transcript().trunk, &mut flat);
        let response: Vec<crate::Token> = flat[prompt_tokens..].to_vec();
        let trunk_tokens = s.node_tokens(NodeId::TRUNK).len() - prompt_tokens;
        let longest =
            s.transcript().top_level_branches(0).map_or(0, |br| br.iter().map(|x| x.tokens).max().unwrap_or(0));

        // The same tokens, one per step, on a fresh session.
        let mut serial = Session::new(model, params)?;
        prompt(&mut serial, model, &p.prompt)?;
        serial.set_script(Some(Box::new(Replay(response.iter().copied().collect()))));
        let started = std::time::Instant::now();
        serial.generate(&RunLimits::tokens(response.len()), &mut Silent)?;
        let serial_seconds = started.elapsed().as_secs_f64();

        // Ideal: trunk tokens at the one-lane step time, the block at the B-lane step time.
        let lanes = specs(model, b, 0);
        raw_block(&mut serial, &lanes, 4)?; // warm-up: first decodes of a shape pay set-up costs
        let t1 = raw_block(&mut serial, &lanes[..1], 32)?.as_secs_f64() / 32.0;
        let tb = raw_block(&mut serial, &lanes, 32)?.as_secs_f64() / 32.0;
        let ideal_time = trunk_tokens as f64 * t1 + longest as f64 * tb;
        let ideal = response.len() as f64 * t1 / ideal_time.max(1e-12);
        let speedup = serial_seconds / auto_seconds.max(1e-12);
        rows.push(AutoBenchRow {
            branches: b,
            tokens_per_branch: p.tokens,
            response_tokens: response.len(),
            trunk_tokens,
            longest_branch: longest,
            auto_seconds,
            serial_seconds,
            speedup,
            ideal,
            vs_ideal: speedup / ideal,
        });
    }
    Ok(rows)
}

fn flatten_tokens(n: &crate::session::NodeReport, out: &mut Vec<crate::Token>) {
    for item in &n.items {
        match item {
            crate::session::ItemReport::Text { tokens, .. } => out.extend_from_slice(tokens),
            crate::session::ItemReport::Block { branches, .. } => branches.iter().for_each(|b| flatten_tokens(b, out)),
        }
    }
}
