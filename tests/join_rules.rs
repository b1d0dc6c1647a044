//! The three join rules against the float32 oracle. One block of three branches of different
//! lengths is decoded on the tiny model and joined under each rule; the oracle, given the
//! positions and visibility each rule stands for, must reproduce the logits the engine sampled
//! the continuation from.
//!
//! - reprefill: the continuation reads the branches as one serial text, so a plain causal
//!   forward over the flat text at sequential positions is exact;
//! - same-seq: the branches keep their own cells and shared start; the continuation sits at
//!   fork + Σ lengths. Only the join token's own forward is approximate (it also saw a filler
//!   cell, see `session/join.rs`): that distance is measured and printed here, and bounded;
//! - negative controls: each rule's oracle does not match the other rules' engine rows.

mod common;

use common::tiny_model::{max_rel_err, TinyConfig, TinyModel};
use pardec::{
    BranchSpec, ItemReport, JoinMode, JoinRule, KvType, Model, ModelParams, NodeId, NodeReport, RunLimits, Session,
    SessionParams, Silent, Token,
};

const JOIN: Token = 10;
const PROMPT: [Token; 4] = [5, 77, 310, 12];
const BRANCH_TOKENS: [usize; 3] = [3, 9, 5];
const CONTINUATION: usize = 6;

/// One decoded token: id, engine position, the branch it belongs to (None: trunk).
#[derive(Debug, Clone, Copy)]
struct Flat {
    token: Token,
    pos: i32,
    branch: Option<usize>,
}

fn flatten(n: &NodeReport, branch: Option<usize>, out: &mut Vec<Flat>) {
    for item in &n.items {
        match item {
            ItemReport::Text { first_pos, tokens, .. } => out
                .extend(tokens.iter().enumerate().map(|(i, &token)| Flat { token, pos: first_pos + i as i32, branch })),
            ItemReport::Block { branches, .. } => {
                for (i, b) in branches.iter().enumerate() {
                    flatten(b, Some(i), out)
                }
            }
        }
    }
}

struct Run {
    flat: Vec<Flat>,
    /// Logit rows the trunk sampled its continuation from (from the join's last token on).
    rows: Vec<Vec<f32>>,
    /// Index in `flat` of the join token.
    join_at: usize,
}

fn run(model: &Model, rule: JoinRule) -> Run {
    let mut s = Session::new(
        model,
        SessionParams { n_ctx: 512, n_threads: 2, kv_type: KvType::F32, record_logits: true, ..Default::default() },
    )
    .unwrap();
    let free =
        |n| RunLimits { max_tokens: n, ban_eog: true, banned_tokens: vec![JOIN], stop: vec![], ..Default::default() };
    s.prompt_tokens(&PROMPT).unwrap();
    s.generate(&free(4), &mut Silent).unwrap();
    let specs: Vec<BranchSpec> = BRANCH_TOKENS
        .iter()
        .enumerate()
        .map(|(i, &n)| BranchSpec { prefix_tokens: vec![8, 20 + i as Token], limits: free(n), ..Default::default() })
        .collect();
    s.fork(NodeId::TRUNK, &specs).unwrap();
    s.run(&mut Silent).unwrap();
    s.join_with_tokens(NodeId::TRUNK, JoinMode::All, rule, &[JOIN]).unwrap();
    s.generate(&free(CONTINUATION), &mut Silent).unwrap();
    let mut flat = Vec::new();
    flatten(&s.transcript().trunk, None, &mut flat);
    let trace = s.logit_trace(NodeId::TRUNK);
    let rows = trace[trace.len() - CONTINUATION..].to_vec();
    let join_at = flat.iter().position(|f| f.token == JOIN && f.branch.is_none()).expect("join token");
    Run { flat, rows, join_at }
}

/// Oracle rows at the join token and the continuation tokens before the last one (each
/// predicts the next), for tokens at `pos` with visibility `sees`.
fn oracle_rows(tiny: &TinyModel, r: &Run, pos: &[i32], sees: &dyn Fn(usize, usize) -> bool) -> Vec<Vec<f32>> {
    let tokens: Vec<u32> = r.flat.iter().map(|f| f.token as u32).collect();
    let all = tiny.forward(&tokens, pos, sees);
    all[r.join_at..r.join_at + CONTINUATION].to_vec()
}

/// A branch token sees the trunk before the fork and its own branch; a trunk token sees
/// everything before it.
fn isolated(flat: &[Flat]) -> impl Fn(usize, usize) -> bool + '_ {
    move |i, j| {
        j <= i
            && match (flat[i].branch, flat[j].branch) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

fn serial_positions(r: &Run) -> Vec<i32> {
    (0..r.flat.len() as i32).collect()
}

/// Positions as the branches were decoded (shared start), the trunk after the join moved to
/// `after_join(fork, lengths)`.
fn block_positions(r: &Run, after_join: impl Fn(i32, &[i32]) -> i32) -> Vec<i32> {
    let fork = r.flat.iter().find(|f| f.branch.is_some()).unwrap().pos;
    let lengths: Vec<i32> =
        (0..BRANCH_TOKENS.len()).map(|b| r.flat.iter().filter(|f| f.branch == Some(b)).count() as i32).collect();
    let resume = after_join(fork, &lengths);
    r.flat
        .iter()
        .enumerate()
        .map(|(i, f)| if i >= r.join_at { resume + (i - r.join_at) as i32 } else { f.pos })
        .collect()
}

#[test]
fn join_rules_match_the_oracle_of_their_layout() {
    let tiny = TinyModel::random(TinyConfig::default());
    let path = std::env::temp_dir().join(format!("pardec-join-rules-{}.gguf", std::process::id()));
    tiny.write_gguf(&path).unwrap();
    let model = Model::load(&path, &ModelParams::default()).unwrap();

    // Reprefill: exact against a serial forward of the flat text.
    let re = run(&model, JoinRule::Reprefill);
    let serial = oracle_rows(&tiny, &re, &serial_positions(&re), &|i, j| j <= i);
    let err = max_rel_err(&re.rows, &serial);
    println!("reprefill vs serial oracle: {err:.2e}");
    assert!(err <= 1e-4, "reprefill is not a serial read: {err:.3e}");

    // Same-seq: the continuation sits at fork + Σ lengths.
    let seq = run(&model, JoinRule::SameSeq);
    let seq_pos = block_positions(&seq, |fork, l| fork + l.iter().sum::<i32>());
    let engine_pos: Vec<i32> = seq.flat.iter().map(|f| f.pos).collect();
    assert_eq!(engine_pos, seq_pos, "same-seq positions");
    let exact = oracle_rows(&tiny, &seq, &seq_pos, &isolated(&seq.flat));
    let join_err = max_rel_err(&seq.rows[..1], &exact[..1]);
    let later_err = max_rel_err(&seq.rows[1..], &exact[1..]);
    println!("same-seq vs exact same-seq forward: join token {join_err:.2e}, later tokens {later_err:.2e}");
    // Bounds of the documented approximation (the tiny model is deterministic).
    assert!(join_err <= 0.25 && later_err <= 0.05, "same-seq drifted: {join_err:.3e} / {later_err:.3e}");

    // Same-max: the continuation at max + 1 over the branches' own cells.
    let max = run(&model, JoinRule::SameMax);
    let max_pos = block_positions(&max, |fork, l| fork + l.iter().max().unwrap());
    let engine_pos: Vec<i32> = max.flat.iter().map(|f| f.pos).collect();
    assert_eq!(engine_pos, max_pos, "same-max positions");
    let same_max = oracle_rows(&tiny, &max, &max_pos, &isolated(&max.flat));
    let err = max_rel_err(&max.rows, &same_max);
    println!("same-max vs its oracle: {err:.2e}");
    assert!(err <= 1e-4, "same-max: {err:.3e}");

    // Negative controls: every other rule's oracle misses each engine's rows.
    let leak = max_rel_err(&max.rows, &serial);
    println!("negative control, same-max engine vs serial oracle: {leak:.2e}");
    assert!(leak > 1e-2);
    let leak = max_rel_err(&re.rows, &same_max);
    println!("negative control, reprefill engine vs same-max oracle: {leak:.2e}");
    assert!(leak > 1e-2);
    let leak = max_rel_err(&seq.rows[1..], &same_max[1..]);
    println!("negative control, same-seq engine vs same-max oracle after the join token: {leak:.2e}");
    assert!(leak > 1.0, "the same-seq positions change nothing measurable");
    let _ = std::fs::remove_file(path);
}

#[test]
fn same_seq_needs_join_text_and_keeps_the_session_usable() {
    let tiny = TinyModel::random(TinyConfig::default());
    let path = std::env::temp_dir().join(format!("pardec-join-rules-err-{}.gguf", std::process::id()));
    tiny.write_gguf(&path).unwrap();
    let model = Model::load(&path, &ModelParams::default()).unwrap();
    let mut s = Session::new(&model, SessionParams { n_ctx: 256, n_threads: 2, ..Default::default() }).unwrap();
    s.prompt_tokens(&PROMPT).unwrap();
    let limits = RunLimits { max_tokens: 3, ban_eog: true, ..Default::default() };
    let specs = vec![BranchSpec { prefix_tokens: vec![8], limits, ..Default::default() }; 2];
    s.fork(NodeId::TRUNK, &specs).unwrap();
    s.run(&mut Silent).unwrap();
    let e = s.join_with_tokens(NodeId::TRUNK, JoinMode::All, JoinRule::SameSeq, &[]).unwrap_err();
    assert!(e.to_string().contains("join text"), "{e}");
    // Nothing was merged: the same join with text works.
    s.join_with_tokens(NodeId::TRUNK, JoinMode::All, JoinRule::SameSeq, &[JOIN]).unwrap();
    assert_eq!(s.next_pos(NodeId::TRUNK), Some(PROMPT.len() as i32 + 2 * 4 + 1));
    let _ = std::fs::remove_file(path);
}
