//! Stop strings on the trunk, on the default model: plain generation can return its text
//! without the stop string (the session keeps every token), and auto mode ends the answer at
//! a stop string the trunk writes, with the stop as the trunk's reason.

mod common;

use common::models;
use pardec::auto::{generate_auto, AutoParams};
use pardec::protocol::ProtocolSpec;
use pardec::{Model, NodeId, RunLimits, Session, SessionParams, Silent, StopReason};

fn session(model: &Model) -> Session {
    let mut s = Session::new(model, SessionParams { n_ctx: 1024, n_threads: 2, ..Default::default() }).unwrap();
    let prompt = model.apply_chat_template(&[("user", "Four tips for desk workers")]).unwrap();
    s.prompt(&prompt).unwrap();
    s
}

/// A word of `text` past its first 40 bytes, to stop at (greedy runs repeat exactly; the
/// stop fires at the word's first occurrence, which `find` locates too).
fn later_word(text: &str) -> String {
    let tail = &text[text.char_indices().map(|(i, _)| i).find(|&i| i >= 40).expect("a text of 40+ bytes")..];
    let word = tail.split_whitespace().find(|w| w.len() >= 4 && w.chars().all(char::is_alphabetic));
    word.expect("a word to stop at").to_string()
}

#[test]
fn strip_stop_returns_the_text_before_the_stop_and_the_session_keeps_it() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let free = session(&model).generate(&RunLimits::tokens(60), &mut Silent).unwrap();
    let stop = later_word(&free);
    let cut = free.find(&stop).unwrap();

    let limits = RunLimits { max_tokens: 60, stop: vec![stop.clone()], ..Default::default() };
    let mut kept = session(&model);
    let with_stop = kept.generate(&limits, &mut Silent).unwrap();
    assert_eq!(kept.stop_reason(NodeId::TRUNK), Some(&StopReason::StopString(stop.clone())));
    assert!(with_stop.starts_with(&free[..cut + stop.len()]), "{with_stop:?} holds the stop");

    let mut stripped = session(&model);
    let text = stripped.generate(&RunLimits { strip_stop: true, ..limits }, &mut Silent).unwrap();
    assert_eq!(text, free[..cut], "the returned text ends right before the stop");
    assert_eq!(stripped.node_generated_text(NodeId::TRUNK), with_stop, "the session keeps every token");
}

#[test]
fn an_auto_mode_answer_ends_at_a_trunk_stop_string() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let spec = ProtocolSpec::builtin("multiverse").unwrap();
    let run = |stop: Vec<String>| {
        let mut s = session(&model);
        let params = AutoParams { max_tokens: 60, max_branch_tokens: 16, stop, ..Default::default() };
        generate_auto(&mut s, &spec, &params, &mut Silent).unwrap();
        (s.node_generated_text(NodeId::TRUNK), s.stop_reason(NodeId::TRUNK).cloned())
    };
    let (free, reason) = run(Vec::new());
    assert_ne!(reason, None);
    let stop = later_word(&free);
    let (stopped, reason) = run(vec![stop.clone()]);
    assert_eq!(reason, Some(StopReason::StopString(stop.clone())));
    let end = free.find(&stop).unwrap() + stop.len();
    assert!(stopped.len() < free.len() && stopped.starts_with(&free[..end]), "{stopped:?} vs {free:?}");
    assert!(stopped.len() - end < 16, "the answer ends at the token completing the stop: {stopped:?}");
}
