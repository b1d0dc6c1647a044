//! The engine against an independent oracle.
//!
//! A tiny float32 llama model is written by the test itself; `common::tiny_model` holds a
//! plain-Rust forward pass of it that takes explicit position ids and an explicit attention
//! mask. The engine forks, decodes branches in one batch per step, nests once, joins and
//! continues; the oracle, given the branch-invisible mask and Same-Max positions derived here
//! from the transcript's structure alone, must reproduce every logit row the engine sampled
//! from. Negative controls: the same comparison fails when the oracle's mask lets branches see
//! each other, and when positions run sequentially instead of being shared.

mod common;

use std::path::PathBuf;

use common::tiny_model::{max_rel_err, TinyConfig, TinyModel};
use pardec::{
    BranchSpec, ItemReport, JoinMode, KvType, Model, ModelParams, NodeId, NodeReport, Origin, RunLimits, Session,
    SessionParams, Silent,
};

/// Agreement required with the oracle. 1e-3 holds on the CPU backend (measured ~1e-6). On
/// CUDA (H100, 2026-11-26) the same runs measured 2.8e-3 to 5.3e-3 — already 2.8e-3 with a
/// single branch, so it is the backend's f32 matmul precision, not leakage (the leak controls
/// stay above 1.1) — so GPU runs set `PARDEC_ORACLE_TOL=1e-2`.
fn match_tol() -> f64 {
    std::env::var("PARDEC_ORACLE_TOL").ok().and_then(|v| v.parse().ok()).unwrap_or(1e-3)
}
const MISMATCH_MIN: f64 = 1e-2;
const BRANCH_TOKENS: usize = 32;

fn tiny_model() -> (TinyModel, Model, PathBuf) {
    let tiny = TinyModel::random(TinyConfig::default());
    let path = std::env::temp_dir().join(format!(
        "pardec-oracle-{}-{:?}.gguf",
        std::process::id(),
        std::thread::current().id()
    ));
    tiny.write_gguf(&path).expect("write tiny gguf");
    let model = Model::load(&path, &ModelParams::default()).expect("load tiny gguf");
    (tiny, model, path)
}

fn session(model: &Model) -> Session {
    Session::new(
        model,
        SessionParams {
            n_ctx: 2048,
            max_branches: 16,
            max_depth: 2,
            n_threads: 2,
            kv_type: KvType::F32,
            record_logits: true,
            ..Default::default()
        },
    )
    .expect("session")
}

fn limits(n: usize) -> RunLimits {
    RunLimits { max_tokens: n, ban_eog: true, ..Default::default() }
}

const PROMPT: [i32; 8] = [5, 77, 310, 12, 499, 64, 201, 3];

fn branch_specs(b: usize) -> Vec<BranchSpec> {
    (0..b)
        .map(|i| BranchSpec {
            prefix_tokens: vec![100 + i as i32 * 7],
            limits: limits(BRANCH_TOKENS),
            ..Default::default()
        })
        .collect()
}

/// Prompt → fork `b` branches → (optionally a nested block in branch 1) → join → continue.
fn run_scenario(s: &mut Session, b: usize, nested: bool) {
    s.prompt_tokens(&PROMPT).unwrap();
    let mut specs = branch_specs(b);
    if nested {
        specs[0].limits = limits(12); // branch 1 pauses here to fork its own block
    }
    let ids = s.fork(NodeId::TRUNK, &specs).unwrap();
    s.run(&mut Silent).unwrap();
    if nested {
        let sub: Vec<BranchSpec> = [200, 201]
            .iter()
            .map(|&t| BranchSpec { prefix_tokens: vec![t], limits: limits(10), ..Default::default() })
            .collect();
        s.fork(ids[0], &sub).unwrap();
        s.run(&mut Silent).unwrap();
        s.join(ids[0], JoinMode::All, None).unwrap();
        s.append_tokens(ids[0], &[300]).unwrap();
        s.resume(ids[0], &limits(8)).unwrap();
        s.run(&mut Silent).unwrap();
    }
    s.join(NodeId::TRUNK, JoinMode::All, None).unwrap();
    s.append_tokens(NodeId::TRUNK, &[400, 401]).unwrap();
    s.generate(&limits(8), &mut Silent).unwrap();
}

/// Every decoded token in an order that respects causality, with the structure the oracle
/// needs: which node wrote it, where the rules say it sits, and which nodes were joined when.
#[derive(Default)]
struct Timeline {
    tokens: Vec<u32>,
    /// Positions by the Same-Max rule: branches start together, the parent resumes at
    /// max(branch end) + 1.
    pos: Vec<i32>,
    node_of: Vec<usize>,
    parent: Vec<Option<usize>>,
    /// Index of the first timeline token after the node was joined into its parent.
    joined_at: Vec<Option<usize>>,
    /// (engine node, timeline index of the token whose logits predicted each generated token).
    predictions: Vec<(usize, usize)>,
}

impl Timeline {
    fn new_node(&mut self, parent: Option<usize>) -> usize {
        self.parent.push(parent);
        self.joined_at.push(None);
        self.parent.len() - 1
    }

    /// Walks a node's report; returns the position after its last token.
    fn walk(&mut self, report: &NodeReport, node: usize, mut pos: i32) -> i32 {
        let mut last: Option<usize> = None;
        for item in &report.items {
            match item {
                ItemReport::Text { origin, first_pos, tokens, .. } => {
                    if !tokens.is_empty() {
                        assert_eq!(*first_pos, pos, "engine position differs from Same-Max at node {:?}", report.label);
                    }
                    for &t in tokens {
                        if *origin == Origin::Generated {
                            self.predictions.push((report.node, last.expect("generated token without context")));
                        }
                        self.tokens.push(t as u32);
                        self.pos.push(pos);
                        self.node_of.push(node);
                        last = Some(self.tokens.len() - 1);
                        pos += 1;
                    }
                }
                ItemReport::Block { fork_pos, branches, join, .. } => {
                    assert_eq!(*fork_pos, pos);
                    let mut end = pos;
                    let mut children = Vec::new();
                    for br in branches {
                        let child = self.new_node(Some(node));
                        end = end.max(self.walk(br, child, pos));
                        children.push(child);
                    }
                    assert_eq!(join.as_ref(), Some(&JoinMode::All));
                    for c in children {
                        self.joined_at[c] = Some(self.tokens.len());
                    }
                    pos = end;
                }
            }
        }
        pos
    }

    fn is_ancestor_or_self(&self, a: usize, mut n: usize) -> bool {
        loop {
            if a == n {
                return true;
            }
            match self.parent[n] {
                Some(p) => n = p,
                None => return false,
            }
        }
    }

    /// The branch-invisible rule: token i sees earlier token j at a position ≤ its own iff
    /// j's node is i's node or an ancestor, or j's node was joined (level by level) into one
    /// of those before i was written.
    fn tree_visible(&self, i: usize, j: usize, pos: &[i32]) -> bool {
        if j > i || pos[j] > pos[i] {
            return false;
        }
        let mut x = self.node_of[j];
        loop {
            if self.is_ancestor_or_self(x, self.node_of[i]) {
                return true;
            }
            match self.joined_at[x] {
                Some(t) if t <= i => x = self.parent[x].unwrap(),
                _ => return false,
            }
        }
    }
}

/// Max relative error between the engine's sampled-from logits and the oracle's rows.
fn compare(s: &Session, tl: &Timeline, oracle: &[Vec<f32>]) -> f64 {
    let mut next_row = std::collections::HashMap::new();
    let mut engine_rows = Vec::new();
    let mut oracle_rows = Vec::new();
    for &(node, idx) in &tl.predictions {
        let k = next_row.entry(node).or_insert(0usize);
        let trace = s.logit_trace(NodeId::from_index(node));
        engine_rows.push(trace[*k].clone());
        oracle_rows.push(oracle[idx].clone());
        *k += 1;
    }
    for (node, count) in next_row {
        assert_eq!(s.logit_trace(NodeId::from_index(node)).len(), count, "node {node}: trace rows vs generated tokens");
    }
    max_rel_err(&engine_rows, &oracle_rows)
}

fn check_equivalence(b: usize, nested: bool) {
    let (tiny, model, path) = tiny_model();
    let mut s = session(&model);
    run_scenario(&mut s, b, nested);
    let transcript = s.transcript();
    let mut tl = Timeline::default();
    let trunk = tl.new_node(None);
    tl.walk(&transcript.trunk, trunk, 0);
    let expected_generated = b * BRANCH_TOKENS + 8 + if nested { 2 * 10 + 8 - (BRANCH_TOKENS - 12) } else { 0 };
    assert_eq!(tl.predictions.len(), expected_generated);

    let pos = tl.pos.clone();
    let oracle = tiny.forward(&tl.tokens, &pos, &|i, j| tl.tree_visible(i, j, &pos));
    let err = compare(&s, &tl, &oracle);
    println!("B={b} nested={nested}: {} tokens, max rel err vs oracle {err:.2e}", tl.tokens.len());
    assert!(err <= match_tol(), "engine differs from the branch-invisible oracle: {err:.3e}");

    // Negative control 1: siblings see each other (every earlier token at a lower position).
    let leaky = tiny.forward(&tl.tokens, &pos, &|i, j| j <= i && pos[j] <= pos[i]);
    let leak_err = compare(&s, &tl, &leaky);
    println!("  leaky-mask control: {leak_err:.2e}");
    if b > 1 || nested {
        assert!(leak_err > MISMATCH_MIN, "a leaky oracle still matched ({leak_err:.3e}): the test cannot see leaks");
    }

    // Negative control 2: sequential positions instead of shared ones.
    let seq_pos: Vec<i32> = (0..tl.tokens.len() as i32).collect();
    let sequential = tiny.forward(&tl.tokens, &seq_pos, &|i, j| tl.tree_visible(i, j, &pos));
    let seq_err = compare(&s, &tl, &sequential);
    println!("  sequential-position control: {seq_err:.2e}");
    if b > 1 || nested {
        assert!(seq_err > MISMATCH_MIN, "sequential positions still matched ({seq_err:.3e})");
    }
    let _ = std::fs::remove_file(path);
}

#[test]
fn one_branch_matches_oracle() {
    check_equivalence(1, false);
}

#[test]
fn two_branches_match_oracle() {
    check_equivalence(2, false);
}

#[test]
fn four_branches_match_oracle() {
    check_equivalence(4, false);
}

#[test]
fn eight_branches_match_oracle() {
    check_equivalence(8, false);
}

#[test]
fn nested_block_matches_oracle() {
    check_equivalence(4, true);
}

/// Greedy tokens of every branch decoded in the batch equal the same branch decoded alone,
/// and equal across repeated runs (determinism).
#[test]
fn batched_branches_equal_branches_decoded_alone() {
    let (_tiny, model, path) = tiny_model();
    let b = 8;
    let mut s = session(&model);
    s.prompt_tokens(&PROMPT).unwrap();
    let ids = s.fork(NodeId::TRUNK, &branch_specs(b)).unwrap();
    s.run(&mut Silent).unwrap();
    let batched: Vec<Vec<i32>> = ids.iter().map(|&id| s.node_tokens(id)).collect();
    let distinct: std::collections::HashSet<_> = batched.iter().collect();
    assert!(distinct.len() > 1, "all branches wrote the same tokens: the test would not notice a mix-up");
    for (i, spec) in branch_specs(b).into_iter().enumerate() {
        let mut alone = session(&model);
        alone.prompt_tokens(&PROMPT).unwrap();
        let id = alone.fork(NodeId::TRUNK, &[spec]).unwrap()[0];
        alone.run(&mut Silent).unwrap();
        assert_eq!(alone.node_tokens(id), batched[i], "branch {} differs when decoded alone", i + 1);
    }
    let _ = std::fs::remove_file(path);
}

/// Detached branches (APR's children) run from their own prompts: they match a fresh session
/// given the same prompt, and see nothing of the parent's context.
#[test]
fn detached_branches_see_only_their_own_prompt() {
    let (tiny, model, path) = tiny_model();
    let child_prompts: [&[i32]; 3] = [&[9, 8, 7], &[40, 41], &[300, 2, 77, 5]];
    let mut s = session(&model);
    s.prompt_tokens(&PROMPT).unwrap();
    let specs: Vec<BranchSpec> = child_prompts
        .iter()
        .map(|p| BranchSpec { prefix_tokens: p.to_vec(), limits: limits(16), ..Default::default() })
        .collect();
    let ids = s.fork_detached(NodeId::TRUNK, &specs).unwrap();
    s.run(&mut Silent).unwrap();
    for (id, prompt) in ids.iter().zip(child_prompts) {
        let tokens: Vec<u32> = s.node_tokens(*id).iter().map(|&t| t as u32).collect();
        // The oracle sees only the child's own tokens, at positions from 0.
        let oracle = tiny.causal_forward(&tokens);
        let engine = s.logit_trace(*id);
        let err = max_rel_err(engine, &oracle[prompt.len() - 1..tokens.len() - 1]);
        assert!(err <= match_tol(), "detached branch differs from its own-prompt oracle: {err:.3e}");
    }
    assert!(matches!(s.join(NodeId::TRUNK, JoinMode::All, None), Err(pardec::Error::InvalidArgument(_))));
    s.join(NodeId::TRUNK, JoinMode::Discard, None).unwrap();
    assert_eq!(s.kv_cells_used(), PROMPT.len() as u64, "discarding freed every child cell");
    let _ = std::fs::remove_file(path);
}
