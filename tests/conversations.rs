//! Many requests in one session (`pardec::conversations`), on the tiny float32 model with a
//! byte vocabulary: requests decoded together — queued, admitted mid-run, cancelled — answer
//! exactly as each does alone (and as the trunk's plain `generate` does); a later prompt
//! reuses the cached one's cells; budgets queue what does not fit and refuse what never will.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use common::tiny_model::{ByteVocab, TinyConfig, TinyModel};
use pardec::conversations::{Conversations, ConversationsParams, Mode, Outcome, Request, RequestId, Sink};
use pardec::{Error, Event, KvType, Model, ModelParams, RunLimits, SamplingParams, Session, SessionParams, Silent};

fn tiny_model() -> (Model, PathBuf) {
    let vocab = ByteVocab { specials: vec![] };
    let tiny = TinyModel::random(TinyConfig { n_vocab: vocab.n_vocab(), ..Default::default() });
    let path =
        std::env::temp_dir().join(format!("pardec-conv-{}-{:?}.gguf", std::process::id(), std::thread::current().id()));
    tiny.write_gguf_bytes(&path, &vocab).expect("write tiny gguf");
    (Model::load(&path, &ModelParams::default()).expect("load tiny gguf"), path)
}

fn session(model: &Model, n_ctx: u32) -> Session {
    let params = SessionParams { n_ctx, max_branches: 24, n_threads: 2, kv_type: KvType::F32, ..Default::default() };
    Session::new(model, params).expect("session")
}

fn conversations(model: &Model, n_ctx: u32, max_active: usize) -> Conversations {
    let params = ConversationsParams { max_active, branches_per_request: 2, cached_prompts: 4 };
    Conversations::new(session(model, n_ctx), params).expect("conversations")
}

fn plain(prompt: &str, max_tokens: usize) -> Request {
    Request {
        prompt: prompt.bytes().map(i32::from).collect(),
        sampling: SamplingParams::default(),
        mode: Mode::Plain(RunLimits { max_tokens, ban_eog: true, ..Default::default() }),
        logprobs: None,
    }
}

#[derive(Default)]
struct Collect {
    done: BTreeMap<RequestId, Outcome>,
    tokens: HashMap<RequestId, usize>,
}

impl Sink for Collect {
    fn event(&mut self, id: RequestId, event: &Event<'_>) {
        assert!(!self.done.contains_key(&id), "an event after the request finished");
        if let Event::Token { token, .. } = event {
            *self.tokens.entry(id).or_default() += (*token >= 0) as usize;
        }
    }

    fn finished(&mut self, id: RequestId, outcome: Outcome) {
        assert!(self.done.insert(id, outcome).is_none(), "finished twice");
    }
}

fn run(conv: &mut Conversations, sink: &mut Collect) {
    while conv.step(sink).unwrap() {}
}

/// One request on its own: its answer's text.
fn alone(model: &Model, request: Request) -> String {
    let mut conv = conversations(model, 2048, 1);
    let mut sink = Collect::default();
    let id = conv.submit(request).unwrap();
    run(&mut conv, &mut sink);
    let outcome = sink.done.remove(&id).unwrap();
    assert!(outcome.error.is_none());
    outcome.text
}

const PROMPTS: [(&str, usize); 6] =
    [("The cat", 30), ("A dog ran", 12), ("Fruit:", 40), ("x", 25), ("Numbers 1 2 3", 18), ("Zebra", 33)];

#[test]
fn requests_decoded_together_answer_as_each_does_alone() {
    let (model, path) = tiny_model();
    let mut conv = conversations(&model, 2048, 3);
    let mut sink = Collect::default();
    let mut ids = Vec::new();
    for &(p, n) in &PROMPTS[..4] {
        ids.push(conv.submit(plain(p, n)).unwrap());
    }
    assert_eq!(conv.load().queued, 4);
    for _ in 0..6 {
        assert!(conv.step(&mut sink).unwrap());
    }
    // Three decode, one waits for a place; two more join the queue mid-run.
    assert_eq!((conv.load().active, conv.load().queued), (3, 1));
    for &(p, n) in &PROMPTS[4..] {
        ids.push(conv.submit(plain(p, n)).unwrap());
    }
    run(&mut conv, &mut sink);
    let together_steps = conv.session().stats().steps;
    assert_eq!(sink.done.len(), PROMPTS.len());
    let mut alone_texts = Vec::new();
    for (&id, &(p, n)) in ids.iter().zip(&PROMPTS) {
        let got = &sink.done[&id];
        assert!(got.error.is_none());
        assert_eq!(got.generated_tokens, n);
        assert_eq!(sink.tokens[&id], n, "every sampled token reached the sink");
        let want = alone(&model, plain(p, n));
        assert_eq!(got.text, want, "request {p:?} beside others differs from alone");
        alone_texts.push(want);
    }
    // Control: the prompts' answers differ, so equal texts are not a given.
    alone_texts.sort();
    alone_texts.dedup();
    assert_eq!(alone_texts.len(), PROMPTS.len());
    // They shared steps: fewer than one after another.
    let serial: usize = PROMPTS.iter().map(|&(_, n)| n).sum();
    assert!((together_steps as usize) < serial, "{together_steps} steps for {serial} tokens");
    // Anchor: a request's answer is the trunk's plain `generate` on the same prompt.
    let mut s = session(&model, 2048);
    s.prompt_tokens(&plain(PROMPTS[2].0, 0).prompt).unwrap();
    let trunk =
        s.generate(&RunLimits { max_tokens: PROMPTS[2].1, ban_eog: true, ..Default::default() }, &mut Silent).unwrap();
    assert_eq!(sink.done[&ids[2]].text, trunk);
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_cancelled_request_ends_at_once_and_its_neighbour_is_unchanged() {
    let (model, path) = tiny_model();
    let mut conv = conversations(&model, 2048, 2);
    let mut sink = Collect::default();
    let a = conv.submit(plain("The cat", 40)).unwrap();
    let b = conv.submit(plain("Fruit:", 30)).unwrap();
    let queued = conv.submit(plain("Zebra", 10)).unwrap();
    for _ in 0..5 {
        conv.step(&mut sink).unwrap();
    }
    assert!(conv.cancel(a));
    assert!(conv.cancel(queued));
    assert!(!conv.cancel(a));
    assert_eq!((conv.load().active, conv.load().queued), (1, 0));
    run(&mut conv, &mut sink);
    assert_eq!(sink.done.keys().copied().collect::<Vec<_>>(), vec![b]);
    assert_eq!(sink.done[&b].text, alone(&model, plain("Fruit:", 30)));
    // Only b's root remains, cached for reuse.
    let load = conv.load();
    assert_eq!((load.active, load.cached), (0, 1));
    assert_eq!(load.kv_cells as usize, "Fruit:".len() + 30);
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_longer_prompt_reuses_the_cached_one_and_answers_as_a_fresh_one() {
    let (model, path) = tiny_model();
    let mut conv = conversations(&model, 2048, 2);
    let mut sink = Collect::default();
    let first = conv.submit(plain("The cat sat on", 20)).unwrap();
    run(&mut conv, &mut sink);
    assert_eq!(sink.done[&first].reused_tokens, 0);
    let turn = conv.submit(plain("The cat sat on the mat, and", 20)).unwrap();
    let unrelated = conv.submit(plain("Zebra", 20)).unwrap();
    run(&mut conv, &mut sink);
    assert_eq!(sink.done[&turn].reused_tokens, "The cat sat on".len());
    assert_eq!(sink.done[&turn].text, alone(&model, plain("The cat sat on the mat, and", 20)));
    // Control: a prompt that shares nothing reuses nothing.
    assert_eq!(sink.done[&unrelated].reused_tokens, 0);
    let _ = std::fs::remove_file(path);
}

#[test]
fn what_does_not_fit_waits_and_what_never_fits_is_refused() {
    let (model, path) = tiny_model();
    // Room for one request of ~150 cells at a time.
    let mut conv = conversations(&model, 256, 2);
    let mut sink = Collect::default();
    let a = conv.submit(plain("The cat", 140)).unwrap();
    let b = conv.submit(plain("A dog", 140)).unwrap();
    conv.step(&mut sink).unwrap();
    assert_eq!((conv.load().active, conv.load().queued), (1, 1));
    assert!(conv.load().kv_reserved <= 256);
    run(&mut conv, &mut sink);
    assert!(sink.done[&a].error.is_none() && sink.done[&b].error.is_none());
    assert_eq!(sink.done[&b].text, alone(&model, plain("A dog", 140)));
    assert!(matches!(conv.submit(plain("The cat", 300)), Err(Error::PromptTooLong { .. })));
    assert!(matches!(conv.submit(plain("", 3)), Err(Error::EmptyPrompt)));
    let few = ConversationsParams { max_active: 20, branches_per_request: 4, cached_prompts: 4 };
    assert!(matches!(Conversations::new(session(&model, 256), few), Err(Error::InvalidArgument(_))));
    let _ = std::fs::remove_file(path);
}

#[test]
fn an_answer_that_opens_block_after_block_is_cut_at_its_reservation_before_the_cache_fills() {
    use common::script::{seg, When};
    use pardec::auto::AutoParams;
    use pardec::protocol::ProtocolSpec;

    let (model, path) = tiny_model();
    // The trunk opens a two-path Multiverse block, closes it, and opens the next, on and on;
    // every path writes a few bytes and closes. Forced through the sampler, as a model would.
    // (A script answers by label, and every root's label is "": one request only.)
    let block = "<Parallel>\n<Goal>\n<Outline>1: a</Outline>\n<Outline>2: b</Outline>\n</Goal>";
    let mut trunk = vec![seg(When::Start, block)];
    let next = format!("ok\n</Conclusion>\n</Parallel>\n{block}");
    trunk.extend((0..60).map(|_| seg(When::EndsWith("<Conclusion>\n".into()), &next)));
    let path_end: Vec<_> = (0..60).map(|_| seg(When::LongerThan(6), "\n</Path>")).collect();
    let script = common::script::Script::new(&model, vec![("", trunk), ("1", path_end.clone()), ("2", path_end)]);
    let n_ctx = 1200;
    let mut s = session(&model, n_ctx);
    s.set_script(Some(Box::new(script)));
    let mut conv =
        Conversations::new(s, ConversationsParams { max_active: 2, branches_per_request: 2, cached_prompts: 4 })
            .unwrap();
    let forking = |max_tokens| Request {
        prompt: "Go:".bytes().map(i32::from).collect(),
        sampling: SamplingParams::default(),
        mode: Mode::Auto {
            spec: Box::new(ProtocolSpec { close_unfinished: true, ..ProtocolSpec::builtin("multiverse").unwrap() }),
            params: AutoParams { max_tokens, max_branch_tokens: 20, ..Default::default() },
        },
        logprobs: None,
    };
    assert!(matches!(conv.submit(forking(1500)), Err(Error::PromptTooLong { .. })));
    // Its reservation holds the trunk's budget and one block's branches; this answer opens
    // block after block, whose joined branches stay in its cells.
    let mut sink = Collect::default();
    let f = conv.submit(forking(700)).unwrap();
    let mut most = 0;
    while conv.step(&mut sink).unwrap() {
        most = most.max(conv.load().kv_cells);
    }
    let cut = &sink.done[&f];
    assert!(cut.error.is_none(), "{:?}", cut.error);
    assert_eq!(cut.stop_reason, Some(pardec::StopReason::MaxTokens));
    let blocks = cut.report.as_ref().unwrap().blocks.len();
    assert!(blocks >= 3, "it opened block after block ({blocks})");
    assert!(cut.generated_tokens < 700, "cut before its trunk's budget ran out");
    assert!(most <= n_ctx as u64 && most > 600, "{most} cells at most");
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_request_records_its_log_probabilities_as_a_session_does() {
    let (model, path) = tiny_model();
    let mut conv = conversations(&model, 2048, 2);
    let mut sink = Collect::default();
    let (prompt, n) = PROMPTS[0];
    let asked = conv.submit(Request { logprobs: Some(3), ..plain(prompt, n) }).unwrap();
    let beside = conv.submit(plain(PROMPTS[1].0, PROMPTS[1].1)).unwrap();
    run(&mut conv, &mut sink);
    let got = &sink.done[&asked].logprobs;
    // The anchor: a session that records every token's, on the same prompt alone.
    let mut s = Session::new(
        &model,
        SessionParams { n_ctx: 2048, n_threads: 2, kv_type: KvType::F32, logprobs: Some(3), ..Default::default() },
    )
    .unwrap();
    s.prompt_tokens(&plain(prompt, 0).prompt).unwrap();
    s.generate(&RunLimits { max_tokens: n, ban_eog: true, ..Default::default() }, &mut Silent).unwrap();
    let want = s.node_logprobs(pardec::NodeId::TRUNK);
    assert_eq!(got.len(), n);
    assert_eq!(got.iter().map(|l| l.token).collect::<Vec<_>>(), want.iter().map(|l| l.token).collect::<Vec<_>>());
    for (g, w) in got.iter().zip(want) {
        assert!((g.logprob - w.logprob).abs() < 1e-3 && g.top.len() == 3, "{g:?} vs {w:?}");
    }
    // Control: the request beside it asked for none, and got none.
    assert!(sink.done[&beside].logprobs.is_empty());
    // A protocol request cannot ask for them (its answer holds branches).
    let forking = Request {
        mode: Mode::Auto {
            spec: Box::new(pardec::protocol::ProtocolSpec::builtin("multiverse").unwrap()),
            params: pardec::auto::AutoParams::default(),
        },
        ..Request { logprobs: Some(1), ..plain(prompt, n) }
    };
    assert!(matches!(conv.submit(forking), Err(Error::InvalidArgument(_))));
    let _ = std::fs::remove_file(path);
}
