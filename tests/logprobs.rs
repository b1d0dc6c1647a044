//! Log-probabilities on the default model: every generated token of the trunk and of each
//! branch carries the log-softmax of the raw logits its step saw (recomputed here from the
//! recorded rows, in f64), whatever the sampler does to the row before choosing; streamed
//! events carry the same values; and bad settings are specific errors.

mod common;

use common::models;
use pardec::{
    BranchSpec, Error, Event, Model, NodeId, Observer, RunLimits, SamplingParams, Selection, Session, SessionParams,
    TokenLogprob,
};

const TOP: usize = 5;

fn session(model: &Model, sampling: SamplingParams) -> Session {
    let p = SessionParams {
        n_ctx: 1024,
        max_branches: 4,
        n_threads: 2,
        sampling,
        logprobs: Some(TOP),
        record_logits: true,
        ..Default::default()
    };
    Session::new(model, p).expect("session")
}

/// The log-softmax of `row` at `token`, computed independently of the library.
fn reference_logprob(row: &[f32], token: i32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
    row[token as usize] as f64 - max - sum.ln()
}

/// Collects the log-probabilities streamed with each token event, per node.
#[derive(Default)]
struct Streamed(Vec<(usize, i32, TokenLogprob)>);

impl Observer for Streamed {
    fn on_event(&mut self, event: &Event<'_>) -> bool {
        if let Event::Token { node, token, logprob, .. } = event {
            if *token >= 0 {
                let lp = logprob.expect("a token event of a session that records log-probabilities");
                self.0.push((node.index(), *token, lp.clone()));
            }
        }
        true
    }
}

/// Runs a trunk start and two branches; checks each node's log-probabilities against its
/// recorded rows and its streamed events. Returns how many tokens were checked.
fn check_run(model: &Model, sampling: SamplingParams) -> usize {
    let greedy = sampling.is_greedy();
    let mut s = session(model, sampling);
    let prompt = model.apply_chat_template(&[("user", "Four tips for desk workers")]).unwrap();
    s.prompt(&prompt).unwrap();
    let mut streamed = Streamed::default();
    s.generate(&RunLimits { max_tokens: 6, ban_eog: true, ..Default::default() }, &mut streamed).unwrap();
    let specs: Vec<BranchSpec> = ["1. Posture:", "2. Breaks:"]
        .iter()
        .map(|p| BranchSpec {
            prefix: (*p).into(),
            limits: RunLimits { max_tokens: 12, ban_eog: true, ..Default::default() },
            ..Default::default()
        })
        .collect();
    let ids = s.fork(NodeId::TRUNK, &specs).unwrap();
    s.run(&mut streamed).unwrap();
    let mut checked = 0;
    for node in std::iter::once(NodeId::TRUNK).chain(ids) {
        let lps = s.node_logprobs(node);
        let rows = s.logit_trace(node);
        assert_eq!(lps.len(), rows.len(), "one entry per sampled token of node {}", node.index());
        for (i, (lp, row)) in lps.iter().zip(rows).enumerate() {
            let want = reference_logprob(row, lp.token);
            assert!(lp.logprob <= 0.0, "log-probability {} above 0", lp.logprob);
            assert!(
                (lp.logprob as f64 - want).abs() < 1e-4,
                "node {} token {i}: {} vs {want}",
                node.index(),
                lp.logprob
            );
            assert_eq!(lp.top.len(), TOP);
            let mass: f64 = lp.top.iter().map(|t| (t.1 as f64).exp()).sum();
            assert!(mass <= 1.0 + 1e-5, "top-{TOP} probabilities sum to {mass}");
            for pair in lp.top.windows(2) {
                assert!(pair[0].1 >= pair[1].1, "top list out of order: {:?}", lp.top);
            }
            for &(t, l) in &lp.top {
                assert!((l as f64 - reference_logprob(row, t)).abs() < 1e-4);
            }
            if greedy {
                assert_eq!(lp.top[0].0, lp.token, "greedy picks the most likely token");
            }
            let streamed_lp = streamed.0.iter().find(|(n, _, l)| *n == node.index() && l.pos == lp.pos);
            assert_eq!(streamed_lp.map(|(_, t, l)| (*t, l)), Some((lp.token, lp)), "the event carries the same values");
            checked += 1;
        }
    }
    assert_eq!(checked, streamed.0.len(), "every streamed token has its entry in the session");
    assert_eq!(s.transcript().trunk.logprobs, s.node_logprobs(NodeId::TRUNK), "the transcript carries them too");
    checked
}

#[test]
fn greedy_log_probabilities_are_the_log_softmax_of_each_nodes_logits() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    assert_eq!(check_run(&model, SamplingParams::greedy()), 6 + 12 + 12);
}

#[test]
fn sampled_and_penalised_runs_report_the_models_own_probabilities() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let sampling = SamplingParams {
        temperature: 0.9,
        top_k: 40,
        seed: 7,
        repeat_penalty: 1.3,
        logit_bias: vec![(28, -2.0)],
        ..Default::default()
    };
    assert_eq!(check_run(&model, sampling), 6 + 12 + 12);
}

#[test]
fn sessions_without_logprobs_record_none_and_bad_settings_are_refused() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let p = SessionParams { n_ctx: 256, n_threads: 2, ..Default::default() };
    let mut s = Session::new(&model, p.clone()).unwrap();
    s.prompt("Hello").unwrap();
    s.generate(&RunLimits { max_tokens: 3, ban_eog: true, ..Default::default() }, &mut pardec::Silent).unwrap();
    assert!(s.node_logprobs(NodeId::TRUNK).is_empty());
    assert!(s.transcript().trunk.logprobs.is_empty());

    let too_many = SessionParams { logprobs: Some(pardec::MAX_TOP_LOGPROBS + 1), ..p.clone() };
    assert!(matches!(Session::new(&model, too_many), Err(Error::InvalidArgument(m)) if m.contains("logprobs")));
    let device = SessionParams { logprobs: Some(1), selection: Selection::Device { candidates: 8 }, ..p };
    assert!(matches!(Session::new(&model, device), Err(Error::InvalidArgument(m)) if m.contains("log-probabilities")));
}
