//! Device selection (llama.cpp's backend top-k chain per sequence id) against host selection,
//! on both real models. The CPU backend runs the same sampling graph a GPU would, so what is
//! proven here — the same tokens from candidate sets as from full rows — holds on the device;
//! only its speed needs a GPU (scripts/gpu/).

mod common;

use common::models;
use common::script::nested_multiverse;
use pardec::auto::{generate_auto, AutoParams};
use pardec::protocol::ProtocolSpec;
use pardec::{
    BranchSpec, Error, JoinMode, Model, NodeId, RunLimits, SamplingParams, Selection, Session, SessionParams, Silent,
    StopReason,
};

const PROMPT: &str = "Here are four animals and one fact about each of them.\n";
const PREFIXES: [&str; 4] = ["1. Cat:", "2. Dog:", "3. Owl:", "4. Fox:"];

fn session(model: &Model, selection: Selection, sampling: SamplingParams) -> Session {
    let p = SessionParams { n_ctx: 2048, max_branches: 8, n_threads: 2, sampling, selection, ..Default::default() };
    Session::new(model, p).expect("session")
}

fn limits(max_tokens: usize) -> RunLimits {
    RunLimits { max_tokens, ban_eog: true, ..Default::default() }
}

/// Tokens of the trunk and of each branch after prompt, fork (four prefixed branches), run,
/// join, a serial continuation, then a stop and a resume (which samples from saved scores).
fn script(model: &Model, selection: Selection, sampling: &SamplingParams) -> Vec<Vec<i32>> {
    let mut s = session(model, selection, sampling.clone());
    s.prompt(PROMPT).unwrap();
    let specs: Vec<BranchSpec> = PREFIXES
        .iter()
        .map(|p| BranchSpec { prefix: p.to_string(), limits: limits(20), ..Default::default() })
        .collect();
    let ids = s.fork(NodeId::TRUNK, &specs).unwrap();
    s.run(&mut Silent).unwrap();
    let mut out: Vec<Vec<i32>> = ids.iter().map(|&id| s.node_tokens(id)).collect();
    s.join(NodeId::TRUNK, JoinMode::All, Some("\nIn short,")).unwrap();
    s.generate(&limits(6), &mut Silent).unwrap();
    s.generate(&limits(6), &mut Silent).unwrap();
    out.push(s.node_tokens(NodeId::TRUNK));
    out
}

fn stochastic(seed: u64) -> SamplingParams {
    SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, min_p: 0.02, seed, ..Default::default() }
}

#[test]
fn device_candidates_give_the_host_tokens_greedy_and_sampled() {
    for (name, model) in models::both() {
        let device = Selection::Device { candidates: Selection::DEFAULT_CANDIDATES };
        let greedy = SamplingParams::greedy();
        let host = script(&model, Selection::Host, &greedy);
        assert_eq!(host, script(&model, device, &greedy), "{name}: greedy tokens differ");
        assert!(host.iter().all(|t| t.len() > 20), "{name}: the script produced too little");

        let sampled = stochastic(7);
        let host_sampled = script(&model, Selection::Host, &sampled);
        assert_ne!(host, host_sampled, "{name}: temperature sampling had no effect");
        assert_eq!(
            host_sampled,
            script(&model, device, &sampled),
            "{name}: top-k 40 sampling from 64 device candidates differs from the full rows"
        );
        // Negative control: four candidates per row cannot carry the top-40 distribution, so
        // the comparison above would catch candidate sets that are not the row's best 40.
        assert_ne!(
            host_sampled,
            script(&model, Selection::Device { candidates: 4 }, &sampled),
            "{name}: four candidates sampled like the full row: the comparison is blind"
        );
    }
}

#[test]
fn branches_forked_without_prefix_sample_from_saved_candidates() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let run = |selection| {
        let mut s = session(&model, selection, stochastic(3));
        s.prompt(PROMPT).unwrap();
        let ids = s.fork(NodeId::TRUNK, &[BranchSpec::new("", 12), BranchSpec::new("", 12)]).unwrap();
        s.run(&mut Silent).unwrap();
        ids.iter().map(|&id| s.node_tokens(id)).collect::<Vec<_>>()
    };
    let host = run(Selection::Host);
    assert_ne!(host[0], host[1], "two seeds paths gave one text");
    assert_eq!(host, run(Selection::Device { candidates: 64 }));
}

#[test]
fn bans_must_leave_a_candidate_and_are_honoured() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = session(&model, Selection::Device { candidates: 4 }, SamplingParams::greedy());
    s.prompt(PROMPT).unwrap();
    // The greedy first token, banned below together with three other ids.
    let free = s.generate(&RunLimits::tokens(1), &mut Silent).unwrap();
    assert!(!free.is_empty());
    let first = *s.node_tokens(NodeId::TRUNK).last().unwrap();
    let mut s = session(&model, Selection::Device { candidates: 4 }, SamplingParams::greedy());
    s.prompt(PROMPT).unwrap();
    let too_many = RunLimits { max_tokens: 4, banned_tokens: vec![first, 1, 2, 3], ..Default::default() };
    match s.generate(&too_many, &mut Silent) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("candidates"), "{m}"),
        other => panic!("four bans with four candidates: {other:?}"),
    }
    // The refused run changed nothing: a run with three bans still works and avoids them.
    let ok = RunLimits { max_tokens: 8, banned_tokens: vec![first, 1, 2], ..Default::default() };
    s.generate(&ok, &mut Silent).unwrap();
    let tokens = s.node_tokens(NodeId::TRUNK);
    let generated = &tokens[tokens.len() - 8..];
    assert!(!generated.contains(&first), "a banned token was picked: {generated:?}");
    assert_eq!(s.stop_reason(NodeId::TRUNK), Some(&StopReason::MaxTokens));
}

#[test]
fn device_selection_rejects_what_it_cannot_serve() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let bad = |p: SessionParams| match Session::new(&model, p) {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    let device = |candidates| SessionParams { selection: Selection::Device { candidates }, ..Default::default() };
    assert!(bad(device(0)).contains("candidates"));
    assert!(bad(device(model.n_vocab() as u32 + 1)).contains("candidates"));
    assert!(bad(SessionParams { record_logits: true, ..device(64) }).contains("Selection::Host"));
    assert!(bad(SessionParams { leak_between_siblings: true, ..device(64) }).contains("Selection::Host"));
    // The whole vocabulary as candidates is allowed (and exact for any sampler).
    Session::new(&model, SessionParams { n_ctx: 256, ..device(model.n_vocab() as u32) }).unwrap();
}

#[test]
fn auto_mode_writes_the_same_response_with_device_selection() {
    // The nested Multiverse response of tests/auto_protocols.rs: the structure is scripted,
    // the text between is the model's own (greedy), and the watcher's bans apply in every state.
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let respond = |selection| {
        let mut s = session(&model, selection, SamplingParams::greedy());
        s.prompt("Write about fruit.\n").unwrap();
        s.set_script(Some(Box::new(nested_multiverse(&model))));
        let params = AutoParams { max_tokens: 200, max_branch_tokens: 80, ..Default::default() };
        let spec = ProtocolSpec::builtin("multiverse").unwrap();
        let report = generate_auto(&mut s, &spec, &params, &mut Silent).unwrap();
        let warnings: Vec<String> = report.warnings.iter().map(|w| w.message.clone()).collect();
        (s.transcript().text, s.stats().blocks, warnings)
    };
    let host = respond(Selection::Host);
    assert_eq!(host.1, 2, "both blocks forked");
    assert!(host.0.ends_with("Done."), "{}", host.0);
    assert_eq!(host, respond(Selection::Device { candidates: 32 }));
}
