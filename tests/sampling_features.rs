//! The logit bias and llama.cpp's repetition penalties on the default model: they break the
//! loop a plain greedy run falls into, act inside branches without a sibling's tokens ever
//! reaching another branch's penalty window, and refuse out-of-range values by name.

mod common;

use common::models;
use pardec::{BranchSpec, Error, Model, NodeId, RunLimits, SamplingParams, Selection, Session, SessionParams};

fn session(model: &Model, sampling: SamplingParams) -> Session {
    session_sharing(model, sampling, false)
}

/// With `share_windows`, the test-only leak puts each branch's tokens in its siblings'
/// penalty windows too.
fn session_sharing(model: &Model, sampling: SamplingParams, share_windows: bool) -> Session {
    let p = SessionParams {
        n_ctx: 1024,
        max_branches: 4,
        n_threads: 2,
        sampling,
        share_penalty_windows: share_windows,
        ..Default::default()
    };
    Session::new(model, p).expect("session")
}

fn branch(prefix: &str, max_tokens: usize) -> BranchSpec {
    BranchSpec {
        prefix: prefix.into(),
        limits: RunLimits { max_tokens, ban_eog: true, ..Default::default() },
        ..Default::default()
    }
}

/// Each branch's tokens after forking `prefixes` from the chat-templated desk-worker prompt.
fn branches(model: &Model, sampling: &SamplingParams, prefixes: &[&str], max_tokens: usize) -> Vec<Vec<i32>> {
    branches_sharing(model, sampling, prefixes, max_tokens, false)
}

/// `branches`, with the siblings' penalty windows shared (the negative control) or not.
fn branches_sharing(
    model: &Model,
    sampling: &SamplingParams,
    prefixes: &[&str],
    max_tokens: usize,
    share_windows: bool,
) -> Vec<Vec<i32>> {
    let mut s = session_sharing(model, sampling.clone(), share_windows);
    let prompt = model.apply_chat_template(&[("user", "Four tips for desk workers")]).unwrap();
    s.prompt(&prompt).unwrap();
    let specs: Vec<BranchSpec> = prefixes.iter().map(|p| branch(p, max_tokens)).collect();
    let ids = s.fork(NodeId::TRUNK, &specs).unwrap();
    s.run(&mut pardec::Silent).unwrap();
    ids.iter().map(|&id| s.node_tokens(id)).collect()
}

/// `branches` on a session made greedy, given `sampling` only after the prompt.
fn branches_set_late(model: &Model, sampling: &SamplingParams, prefixes: &[&str], max_tokens: usize) -> Vec<Vec<i32>> {
    let mut s = session(model, SamplingParams::greedy());
    let prompt = model.apply_chat_template(&[("user", "Four tips for desk workers")]).unwrap();
    s.prompt(&prompt).unwrap();
    s.set_sampling(sampling.clone()).unwrap();
    let specs: Vec<BranchSpec> = prefixes.iter().map(|p| branch(p, max_tokens)).collect();
    let ids = s.fork(NodeId::TRUNK, &specs).unwrap();
    s.run(&mut pardec::Silent).unwrap();
    ids.iter().map(|&id| s.node_tokens(id)).collect()
}

/// How often the most repeated run of `n` tokens occurs.
fn most_repeated(tokens: &[i32], n: usize) -> usize {
    let mut counts = std::collections::HashMap::new();
    for w in tokens.windows(n) {
        *counts.entry(w.to_vec()).or_insert(0usize) += 1;
    }
    counts.values().copied().max().unwrap_or(0)
}

fn penalised() -> SamplingParams {
    SamplingParams { repeat_penalty: 1.3, presence_penalty: 0.3, ..Default::default() }
}

#[test]
fn a_repetition_penalty_breaks_the_loop_a_greedy_run_falls_into() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let plain = &branches(&model, &SamplingParams::greedy(), &["1. Posture:"], 64)[0];
    let fixed = &branches(&model, &penalised(), &["1. Posture:"], 64)[0];
    let (looped, broken) = (most_repeated(plain, 8), most_repeated(fixed, 8));
    println!("most repeated 8-token run: {looped} times plain, {broken} times penalised");
    assert!(looped >= 2, "the plain greedy run no longer loops ({looped}): pick another prompt");
    assert!(broken < looped, "the penalty did not break the loop ({broken} vs {looped})");
    // Penalties turned on after the prompt look back on it just the same (windows are rebuilt
    // from the text).
    assert_eq!(&branches_set_late(&model, &penalised(), &["1. Posture:"], 64)[0], fixed);
}

#[test]
fn a_sibling_never_enters_a_branch_penalty_window() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let b = "2. Eyes:";
    // The same batch shape (two rows per step), siblings of different text: a branch's rows do
    // not depend on another row's content, so only a shared window could change its tokens.
    let with_posture = branches(&model, &penalised(), &["1. Posture: Stand up straight.", b], 40);
    let with_breaks = branches(&model, &penalised(), &["1. Breaks: look away from the screen, eyes", b], 40);
    assert_eq!(with_posture[1], with_breaks[1], "a sibling's tokens changed branch {b:?}");
    // Control: the penalties do act inside that branch, so the comparison above means something.
    let unpenalised = branches(&model, &SamplingParams::greedy(), &["1. Posture: Stand up straight.", b], 40);
    assert_ne!(with_posture[1], unpenalised[1], "the penalties changed nothing in the branch");
    // Negative control: with the windows deliberately shared, the same comparison fails.
    let shared = |first: &str| branches_sharing(&model, &penalised(), &[first, b], 40, true).remove(1);
    assert_ne!(
        shared("1. Posture: Stand up straight."),
        shared("1. Breaks: look away from the screen, eyes"),
        "the comparison cannot see a sibling's tokens in a shared penalty window"
    );
}

#[test]
fn a_logit_bias_bans_and_forces_tokens() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    // A branch's tokens start with its prefix's: only the sampled ones after it count.
    let prefix = branches(&model, &SamplingParams::greedy(), &["1. Posture:"], 0)[0].len();
    let sampled = |sampling: &SamplingParams| branches(&model, sampling, &["1. Posture:"], 12)[0][prefix..].to_vec();
    let plain = sampled(&SamplingParams::greedy());
    let first = plain[0];
    let banned = SamplingParams { logit_bias: vec![(first, f32::NEG_INFINITY)], ..Default::default() };
    let without_first = sampled(&banned);
    assert!(!without_first.contains(&first), "a -inf bias did not ban token {first}");
    assert_eq!(without_first.len(), 12);
    let other = plain[3];
    let forced = SamplingParams { logit_bias: vec![(other, 1000.0)], ..Default::default() };
    let only_other = sampled(&forced);
    assert!(only_other.iter().all(|&t| t == other), "a +1000 bias did not force token {other}: {only_other:?}");
}

#[test]
fn out_of_range_penalties_and_biases_are_specific_errors() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let n_vocab = model.n_vocab() as i32;
    let bad = [
        SamplingParams { repeat_penalty: 0.0, ..Default::default() },
        SamplingParams { repeat_penalty: f32::NAN, ..Default::default() },
        SamplingParams { frequency_penalty: f32::INFINITY, ..Default::default() },
        SamplingParams { penalty_last_n: -2, ..Default::default() },
        SamplingParams { logit_bias: vec![(n_vocab, 1.0)], ..Default::default() },
        SamplingParams { logit_bias: vec![(-1, 1.0)], ..Default::default() },
        SamplingParams { logit_bias: vec![(5, f32::NAN)], ..Default::default() },
        SamplingParams { logit_bias: vec![(5, f32::INFINITY)], ..Default::default() },
    ];
    for sampling in bad {
        let p = SessionParams { n_ctx: 256, n_threads: 2, sampling: sampling.clone(), ..Default::default() };
        match Session::new(&model, p) {
            Err(Error::InvalidArgument(m)) => println!("{m}"),
            other => panic!("{sampling:?}: expected InvalidArgument, got {other:?}"),
        }
        let mut s = session(&model, SamplingParams::greedy());
        assert!(matches!(s.set_sampling(sampling), Err(Error::InvalidArgument(_))));
    }
    // Penalties and biases change full rows: device selection refuses them.
    let p = SessionParams {
        n_ctx: 256,
        n_threads: 2,
        sampling: penalised(),
        selection: Selection::Device { candidates: 64 },
        ..Default::default()
    };
    assert!(matches!(Session::new(&model, p), Err(Error::InvalidArgument(m)) if m.contains("Selection::Host")));
}
