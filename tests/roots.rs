//! Conversations of their own in one context (`Session::open_root`): a root decodes beside
//! other roots — opened before it, during its run, forking, closed under it — exactly as it
//! does alone, logit row for logit row, on the tiny float32 model. Negative control: with the
//! test-only leak that tags every token with the other running roots' ids, the same rows
//! differ. Also: a reopened root reuses exactly its shared prefix and then decodes as a fresh
//! root on the whole prompt would; closing returns cells and ids; misuse is an error.

mod common;

use std::path::PathBuf;

use common::tiny_model::{max_rel_err, TinyConfig, TinyModel};
use pardec::{
    BranchSpec, Error, JoinMode, KvType, Model, ModelParams, NodeId, RunLimits, SamplingParams, Session, SessionParams,
    Silent, Token,
};

const MATCH_TOL: f64 = 1e-3;
const MISMATCH_MIN: f64 = 1e-2;

fn tiny_model() -> (Model, PathBuf) {
    let tiny = TinyModel::random(TinyConfig::default());
    let path = std::env::temp_dir().join(format!(
        "pardec-roots-{}-{:?}.gguf",
        std::process::id(),
        std::thread::current().id()
    ));
    tiny.write_gguf(&path).expect("write tiny gguf");
    (Model::load(&path, &ModelParams::default()).expect("load tiny gguf"), path)
}

fn session(model: &Model, leak: bool) -> Session {
    Session::new(
        model,
        SessionParams {
            n_ctx: 1024,
            max_branches: 8,
            max_depth: 2,
            n_threads: 2,
            kv_type: KvType::F32,
            record_logits: true,
            leak_between_siblings: leak,
            ..Default::default()
        },
    )
    .expect("session")
}

fn limits(n: usize) -> RunLimits {
    RunLimits { max_tokens: n, ban_eog: true, ..Default::default() }
}

const A: [Token; 6] = [5, 77, 310, 12, 499, 64];
const B: [Token; 4] = [201, 3, 44, 9];
const C: [Token; 5] = [18, 250, 250, 7, 91];

/// Root A's logit rows alone.
fn alone(model: &Model, prompt: &[Token], tokens: usize) -> Vec<Vec<f32>> {
    let mut s = session(model, false);
    let a = s.open_root(prompt, &SamplingParams::default()).unwrap();
    s.resume(a, &limits(tokens)).unwrap();
    s.run(&mut Silent).unwrap();
    s.logit_trace(a).to_vec()
}

/// A beside B (which stops, forks two branches and joins while A runs) and C (opened while
/// A runs, closed before A ends). Returns A's rows and C's.
fn together(model: &Model) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut s = session(model, false);
    let greedy = SamplingParams::default();
    let a = s.open_root(&A, &greedy).unwrap();
    let b = s.open_root(&B, &greedy).unwrap();
    s.resume(a, &limits(40)).unwrap();
    s.resume(b, &limits(6)).unwrap();
    for _ in 0..8 {
        assert!(s.step(&mut Silent).unwrap());
    }
    assert!(!s.is_running(b));
    let specs: Vec<BranchSpec> = [100, 107]
        .iter()
        .map(|&t| BranchSpec { prefix_tokens: vec![t], limits: limits(10), ..Default::default() })
        .collect();
    s.fork(b, &specs).unwrap();
    let c = s.open_root(&C, &greedy).unwrap();
    s.resume(c, &limits(30)).unwrap();
    for _ in 0..12 {
        s.step(&mut Silent).unwrap();
    }
    s.join(b, JoinMode::All, None).unwrap();
    s.append_tokens(b, &[400]).unwrap();
    s.resume(b, &limits(5)).unwrap();
    let c_rows = s.logit_trace(c).to_vec();
    s.close_root(c).unwrap();
    s.run(&mut Silent).unwrap();
    assert_eq!(s.node_tokens(a).len(), A.len() + 40);
    (s.logit_trace(a).to_vec(), c_rows)
}

/// A beside one other root of the same length for 20 tokens; A's rows.
fn side_by_side(model: &Model, leak: bool) -> Vec<Vec<f32>> {
    let mut s = session(model, leak);
    let greedy = SamplingParams::default();
    let a = s.open_root(&A, &greedy).unwrap();
    let other = s.open_root(&[9, 8, 7, 6, 5, 4], &greedy).unwrap();
    s.resume(a, &limits(20)).unwrap();
    s.resume(other, &limits(20)).unwrap();
    s.run(&mut Silent).unwrap();
    s.logit_trace(a).to_vec()
}

#[test]
fn a_root_decodes_beside_others_as_it_does_alone_and_the_leak_control_differs() {
    let (model, path) = tiny_model();
    let a_alone = alone(&model, &A, 40);
    let c_alone = alone(&model, &C, 30);
    let (a_rows, c_rows) = together(&model);
    let err_a = max_rel_err(&a_rows, &a_alone);
    let err_c = max_rel_err(&c_rows, &c_alone[..c_rows.len()]);
    assert!(err_a < MATCH_TOL, "root A beside others differs from alone: {err_a:e}");
    assert!(err_c < MATCH_TOL, "root C (opened mid-run) differs from alone: {err_c:e}");
    // The control needs roots at the same positions (a leaked token must extend every
    // sequence it is tagged with), so it runs A beside a prompt of A's length.
    let leaky = side_by_side(&model, true);
    assert!(max_rel_err(&side_by_side(&model, false), &a_alone[..20]) < MATCH_TOL);
    let err_leak = max_rel_err(&leaky, &a_alone[..20]);
    assert!(err_leak > MISMATCH_MIN, "control: roots that see each other should differ, got {err_leak:e}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_reopened_root_reuses_its_shared_prefix_and_decodes_as_a_fresh_one() {
    let (model, path) = tiny_model();
    let greedy = SamplingParams::default();
    let mut s = session(&model, false);
    let r = s.open_root(&A, &greedy).unwrap();
    s.resume(r, &limits(10)).unwrap();
    s.run(&mut Silent).unwrap();
    let held = s.node_tokens(r);
    // The next turn: the whole first answer's first 5 tokens, then new text.
    let mut turn: Vec<Token> = held[..A.len() + 5].to_vec();
    turn.extend([300, 301, 302]);
    assert_eq!(s.reusable_prefix(r, &turn), A.len() + 5);
    let reused = s.reopen_root(r, &turn, &greedy).unwrap();
    assert_eq!(reused, A.len() + 5);
    assert_eq!(s.node_tokens(r), turn);
    s.resume(r, &limits(12)).unwrap();
    s.run(&mut Silent).unwrap();
    let reopened = s.logit_trace(r)[10..].to_vec();
    assert_eq!(reopened.len(), 12);
    let fresh = alone(&model, &turn, 12);
    let err = max_rel_err(&reopened, &fresh);
    assert!(err < MATCH_TOL, "reopened root differs from a fresh one: {err:e}");
    // Control: a prompt that differs at token 2 reuses exactly 2.
    let mut other = turn.clone();
    other[2] = 480;
    assert_eq!(s.reusable_prefix(r, &other), 2);
    assert!(s.reusable_prefix(r, &other) < reused);
    let _ = std::fs::remove_file(path);
}

#[test]
fn closing_roots_returns_cells_and_ids_and_misuse_is_an_error() {
    let (model, path) = tiny_model();
    let greedy = SamplingParams::default();
    let mut s = session(&model, false);
    let (cells0, free0) = (s.kv_cells_used(), s.free_branch_slots());
    let a = s.open_root(&A, &greedy).unwrap();
    s.resume(a, &limits(4)).unwrap();
    s.run(&mut Silent).unwrap();
    let ids = s.fork(a, &[BranchSpec::new("", 3), BranchSpec::new("", 3)]).unwrap();
    assert_eq!(s.root_of(ids[1]), Some(a));
    s.run(&mut Silent).unwrap();
    assert_eq!(s.free_branch_slots(), free0 - 3);
    assert!(matches!(s.reopen_root(a, &A, &greedy), Err(Error::InvalidState(_))));
    s.join(a, JoinMode::All, None).unwrap();
    assert!(!s.root_transcript(a).unwrap().text.is_empty());
    assert!(s.kv_cells_used() > cells0);
    s.close_root(a).unwrap();
    assert_eq!((s.kv_cells_used(), s.free_branch_slots()), (cells0, free0));
    assert!(matches!(s.close_root(a), Err(Error::InvalidArgument(_))));
    assert!(matches!(s.root_transcript(NodeId::TRUNK), Err(Error::InvalidArgument(_))));
    assert!(matches!(s.open_root(&[], &greedy), Err(Error::EmptyPrompt)));
    assert!(matches!(s.open_root(&[9999], &greedy), Err(Error::InvalidArgument(_))));
    assert!(matches!(s.open_root(&vec![5; 2000], &greedy), Err(Error::PromptTooLong { .. })));
    let roots: Vec<NodeId> = (0..8).map(|_| s.open_root(&B, &greedy).unwrap()).collect();
    assert!(matches!(s.open_root(&B, &greedy), Err(Error::TooManyBranches { .. })));
    s.close_root(roots[3]).unwrap();
    s.open_root(&B, &greedy).unwrap();
    let _ = std::fs::remove_file(path);
}

/// Prompts queued for the next step (`open_root_queued`) are decoded in the batch of the
/// running roots' tokens, and each root then answers as one opened on its own; until that
/// step it cannot generate. Control: with the sibling leak, the two roots queued together
/// (same positions, so a leaked token extends both) differ from alone.
#[test]
fn queued_prompts_decode_in_the_next_step_and_answer_as_alone() {
    let (model, path) = tiny_model();
    let want = alone(&model, &C, 12);
    let run = |leak: bool| {
        let mut s = session(&model, leak);
        let greedy = SamplingParams::default();
        let b = s.open_root(&B, &greedy).unwrap();
        s.resume(b, &limits(4)).unwrap();
        for _ in 0..3 {
            s.step(&mut Silent).unwrap();
        }
        let a = s.open_root_queued(&A[..5], &greedy).unwrap();
        let c = s.open_root_queued(&C, &greedy).unwrap();
        assert!(s.is_prefilling(c));
        assert!(matches!(s.resume(c, &limits(12)), Err(Error::InvalidState(_))));
        let prefill_before = s.stats().tokens_prefill;
        assert!(s.step(&mut Silent).unwrap()); // B's last token and both prompts, one batch
        assert!(!s.is_prefilling(c) && !s.is_running(b));
        assert_eq!(s.stats().tokens_prefill - prefill_before, 10);
        s.resume(a, &limits(12)).unwrap();
        s.resume(c, &limits(12)).unwrap();
        s.run(&mut Silent).unwrap();
        s.logit_trace(c).to_vec()
    };
    let got = run(false);
    assert_eq!(got.len(), want.len());
    let err = max_rel_err(&got, &want);
    assert!(err < MATCH_TOL, "queued prompt's rows differ from alone: {err:e}");
    let leaked = max_rel_err(&run(true), &want);
    assert!(leaked > MISMATCH_MIN, "control did not differ: {leaked:e}");
    // A prompt queued alone is a step of its own; closed before it, it is dropped.
    let mut s = session(&model, false);
    let c = s.open_root_queued(&C, &SamplingParams::default()).unwrap();
    s.close_root(c).unwrap();
    assert!(!s.step(&mut Silent).unwrap(), "a closed root's prompt was still decoded");
    let _ = std::fs::remove_file(path);
}
