//! Bad situations: each gets its specific error, and the session keeps working afterwards.

mod common;

use common::{models, tiny_model};
use pardec::{
    BranchSpec, Error, JoinMode, Model, ModelParams, NodeId, RunLimits, Session, SessionParams, Silent, StopReason,
};

fn session(model: &Model, n_ctx: u32, max_branches: u32) -> Session {
    Session::new(model, SessionParams { n_ctx, max_branches, n_threads: 2, ..Default::default() }).unwrap()
}

fn specs(n: usize, tokens: usize) -> Vec<BranchSpec> {
    (0..n)
        .map(|i| BranchSpec {
            prefix: format!("{}.", i + 1),
            limits: RunLimits { max_tokens: tokens, ban_eog: true, ..Default::default() },
            ..Default::default()
        })
        .collect()
}

/// The session still forks, runs, joins and generates.
fn assert_usable(s: &mut Session) {
    let before = s.transcript().text.len();
    s.fork(NodeId::TRUNK, &specs(2, 4)).expect("fork after the error");
    s.run(&mut Silent).expect("run after the error");
    s.join(NodeId::TRUNK, JoinMode::All, Some("\n")).expect("join after the error");
    s.generate(&RunLimits { max_tokens: 4, ban_eog: true, ..Default::default() }, &mut Silent)
        .expect("generate after the error");
    assert!(s.transcript().text.len() > before);
}

#[test]
fn more_branches_than_sequence_ids_is_refused_before_llama_cpp() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = session(&model, 1024, 4);
    s.prompt("List things:\n").unwrap();
    assert_eq!(s.fork(NodeId::TRUNK, &specs(5, 4)), Err(Error::TooManyBranches { requested: 5, free: 4 }));
    assert_eq!(s.free_branch_slots(), 4, "a refused fork must not leak ids");
    // Nested forks draw on the same pool.
    let ids = s.fork(NodeId::TRUNK, &specs(3, 2)).unwrap();
    s.run(&mut Silent).unwrap();
    assert_eq!(s.fork(ids[0], &specs(2, 2)), Err(Error::TooManyBranches { requested: 2, free: 1 }));
    s.join(NodeId::TRUNK, JoinMode::Discard, None).unwrap();
    assert_eq!(s.free_branch_slots(), 4, "ids come back at the join");
    assert_usable(&mut s);
}

#[test]
fn kv_cache_full_in_the_parallel_phase_keeps_what_was_generated() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = session(&model, 256, 8);
    s.prompt("Name eight colours and describe each one in detail.\n").unwrap();
    let ids = s.fork(NodeId::TRUNK, &specs(8, 64)).unwrap();
    let mut seen = 0;
    let result = s.run(&mut |_: &pardec::Event<'_>| {
        seen += 1;
        true
    });
    assert_eq!(result, Err(Error::KvCacheFull));
    assert!(seen > 0);
    let t = s.transcript();
    let branches = t.top_level_branches(0).unwrap();
    assert!(branches.iter().all(|b| b.tokens > 2), "generated text must be kept");
    assert!(branches.iter().all(|b| b.stop_reason == Some(StopReason::KvCacheFull)));
    assert_eq!(s.stop_reason(ids[0]), Some(&StopReason::KvCacheFull));
    // The cells hold exactly what the transcript reports: every reported token is decoded.
    assert!(s.kv_cells_used() <= 256);
    // Keeping the branches is possible; discarding frees their cells for more work.
    s.join(NodeId::TRUNK, JoinMode::Discard, None).unwrap();
    assert_usable(&mut s);
}

#[test]
fn prompt_errors_are_specific() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = session(&model, 64, 2);
    assert_eq!(s.prompt(""), Err(Error::EmptyPrompt));
    assert_eq!(s.prompt_tokens(&[]), Err(Error::EmptyPrompt));
    let long = "word ".repeat(2000);
    let n_ctx = s.n_ctx() as usize; // llama.cpp may round the requested size up
    assert!(matches!(s.prompt(&long), Err(Error::PromptTooLong { n_ctx: n, tokens }) if n == n_ctx && tokens > n_ctx));
    // A text that cannot fit is refused from its length alone, before tokenizing (a 200 MB
    // prompt took a minute and gigabytes): the bound is its bytes over the longest token.
    let max_bytes = model.max_token_bytes();
    assert!((1..=1024).contains(&max_bytes), "{max_bytes}");
    let huge = "x".repeat(64 << 20);
    let bound = huge.len().div_ceil(max_bytes);
    assert!(matches!(s.prompt(&huge), Err(Error::PromptTooLong { tokens, .. }) if tokens == bound));
    // ... but not a text that fits while being longer in bytes than the context in cells.
    let fits = "word ".repeat(n_ctx / 2);
    assert!(model.tokenize(&fits, true).unwrap().len() < n_ctx);
    s.prompt(&fits).unwrap();
    s.clear();
    assert!(matches!(s.prompt_bytes(b"caf\xC3"), Err(Error::InvalidUtf8(_))));
    assert!(matches!(s.prompt_tokens(&[1, -5]), Err(Error::InvalidArgument(_))));
    assert!(matches!(s.prompt_tokens(&[model.n_vocab() as i32]), Err(Error::InvalidArgument(_))));
    assert_eq!(s.kv_cells_used(), 0, "failed prompts leave nothing behind");
    s.prompt("Hello:\n").unwrap();
    assert_usable(&mut s);
}

#[test]
fn state_errors_are_specific_and_harmless() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = Session::new(
        &model,
        SessionParams { n_ctx: 1024, max_branches: 8, max_depth: 1, n_threads: 2, ..Default::default() },
    )
    .unwrap();
    // Nothing to sample from yet.
    assert!(matches!(s.generate(&RunLimits::tokens(4), &mut Silent), Err(Error::InvalidState(_))));
    s.prompt("Two points:\n").unwrap();
    assert!(matches!(s.join(NodeId::TRUNK, JoinMode::All, None), Err(Error::InvalidState(_))));
    assert!(matches!(s.fork(NodeId::TRUNK, &[]), Err(Error::InvalidArgument(_))));
    let ids = s.fork(NodeId::TRUNK, &specs(2, 3)).unwrap();
    // The trunk waits for its block; branches are running.
    assert!(matches!(s.generate(&RunLimits::tokens(2), &mut Silent), Err(Error::InvalidState(_))));
    assert!(matches!(s.fork(NodeId::TRUNK, &specs(1, 1)), Err(Error::InvalidState(_))));
    assert!(matches!(s.join(NodeId::TRUNK, JoinMode::All, None), Err(Error::InvalidState(_))));
    s.run(&mut Silent).unwrap();
    assert_eq!(s.fork(ids[0], &specs(2, 2)), Err(Error::DepthLimit { limit: 1 }));
    assert!(matches!(s.join(NodeId::TRUNK, JoinMode::Keep(vec![0, 0]), None), Err(Error::InvalidArgument(_))));
    assert!(matches!(s.join(NodeId::TRUNK, JoinMode::Keep(vec![2]), None), Err(Error::InvalidArgument(_))));
    s.join(NodeId::TRUNK, JoinMode::All, None).unwrap();
    // After a join that kept branches, no token has seen them all yet: text must come first.
    assert!(matches!(s.generate(&RunLimits::tokens(2), &mut Silent), Err(Error::InvalidState(_))));
    assert!(matches!(s.append_text(ids[0], "x"), Err(Error::InvalidArgument(_))), "joined node");
    assert!(matches!(s.append_text(NodeId::from_index(999), "x"), Err(Error::InvalidArgument(_))));
    s.append_text(NodeId::TRUNK, "\nSo").unwrap();
    assert_usable(&mut s);
}

#[test]
fn cancelling_mid_branch_leaves_a_usable_session() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = session(&model, 1024, 4);
    s.prompt("Three ideas:\n").unwrap();
    s.fork(NodeId::TRUNK, &specs(3, 32)).unwrap();
    let mut tokens = 0;
    let r = s.run(&mut |e: &pardec::Event<'_>| {
        if matches!(e, pardec::Event::Token { .. }) {
            tokens += 1;
        }
        tokens < 10
    });
    assert_eq!(r, Err(Error::Cancelled));
    let t = s.transcript();
    let total: usize = t.top_level_branches(0).unwrap().iter().map(|b| b.tokens).sum();
    assert!(total < 3 * 34, "cancel did not stop the run");
    assert!(t.top_level_branches(0).unwrap().iter().all(|b| b.stop_reason == Some(StopReason::Cancelled)));
    s.join(NodeId::TRUNK, JoinMode::All, Some("\n")).unwrap();
    assert_usable(&mut s);
}

#[test]
fn model_loading_errors_are_specific() {
    let dir = std::env::temp_dir().join(format!("pardec-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert!(matches!(Model::load(dir.join("missing.gguf"), &ModelParams::default()), Err(Error::ModelNotFound(_))));
    assert!(matches!(Model::load(&dir, &ModelParams::default()), Err(Error::ModelNotFound(_))));
    let text = dir.join("notes.gguf");
    std::fs::write(&text, b"this is not a model").unwrap();
    assert!(matches!(Model::load(&text, &ModelParams::default()), Err(Error::NotGguf(_))));
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(Model::load(&empty, &ModelParams::default()), Err(Error::NotGguf(_))));

    // A valid GGUF whose architecture llama.cpp does not know.
    let tiny = tiny_model::TinyModel::random(tiny_model::TinyConfig::default());
    let good = dir.join("tiny.gguf");
    tiny.write_gguf(&good).unwrap();
    let mut bytes = std::fs::read(&good).unwrap();
    let key = b"general.architecture";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // Skip the value type (u32) and string length (u64) to reach "llama".
    let value = at + 4 + 8;
    assert_eq!(&bytes[value..value + 5], b"llama");
    bytes[value..value + 5].copy_from_slice(b"zzzzz");
    let unknown = dir.join("unknown-arch.gguf");
    std::fs::write(&unknown, &bytes).unwrap();
    assert!(matches!(Model::load(&unknown, &ModelParams::default()), Err(Error::ModelLoad(_))));

    // A truncated file.
    let cut = dir.join("truncated.gguf");
    std::fs::write(&cut, &std::fs::read(&good).unwrap()[..1000]).unwrap();
    assert!(matches!(Model::load(&cut, &ModelParams::default()), Err(Error::ModelLoad(_))));

    // Every cut inside the header is refused by pardec's own reader, before llama.cpp parses it.
    let whole = std::fs::read(&good).unwrap();
    let header_end = whole.windows(17).position(|w| w == b"token_embd.weight").unwrap() + 17;
    for len in (5..header_end).step_by(7) {
        std::fs::write(&cut, &whole[..len]).unwrap();
        match Model::load(&cut, &ModelParams::default()) {
            Err(Error::ModelLoad(m)) => assert!(m.contains("malformed GGUF header"), "{len}: {m}"),
            other => panic!("a header cut at {len} bytes gave {other:?}"),
        }
    }
    // A count of 2^64 − 1 metadata pairs: refused before anything is allocated.
    let mut huge = whole[..16].to_vec();
    huge.extend_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&cut, &huge).unwrap();
    assert!(matches!(Model::load(&cut, &ModelParams::default()), Err(Error::ModelLoad(m)) if m.contains("malformed")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn invalid_session_parameters_are_refused() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let bad = |p: SessionParams| matches!(Session::new(&model, p), Err(Error::InvalidArgument(_)));
    assert!(bad(SessionParams { max_branches: 0, ..Default::default() }));
    assert!(bad(SessionParams { max_branches: 256, ..Default::default() }));
    assert!(bad(SessionParams { n_batch: 0, ..Default::default() }));
    assert!(bad(SessionParams { n_ctx: 0, ..Default::default() }));
    assert!(bad(SessionParams { max_depth: 0, ..Default::default() }));
    // ggml's pool holds 512 threads; u32::MAX was clamped to 1024 and accepted.
    assert!(bad(SessionParams { n_threads: 513, ..Default::default() }));
    assert!(bad(SessionParams { n_threads: u32::MAX, ..Default::default() }));
    let mut nan = SessionParams::default();
    nan.sampling.top_p = f32::NAN;
    assert!(bad(nan));
}

/// llama.cpp aborts creating a context whose batch cannot hold one output per sequence:
/// refused before it is asked (`pardec run --ctx 16 --protocol multiverse` exited 134).
#[test]
fn a_context_too_small_for_its_sequences_is_refused() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let bad = |p: SessionParams| matches!(Session::new(&model, p), Err(Error::InvalidArgument(m)) if m.contains("max_branches + 1"));
    assert!(bad(SessionParams { n_ctx: 16, max_branches: 16, n_threads: 2, ..Default::default() }));
    for n_batch in [1, 8, 16] {
        assert!(bad(SessionParams { n_batch, max_branches: 16, n_threads: 2, ..Default::default() }));
    }
    let ok = SessionParams { n_ctx: 64, n_batch: 17, max_branches: 16, n_threads: 2, ..Default::default() };
    assert!(Session::new(&model, ok).is_ok());
}

/// A join whose join text cannot fit is refused before it closes the block (it used to close
/// it, then fail decoding the text: half joined). After the refusal the block is still open:
/// discarding its branches frees their cells, and the session goes on.
#[test]
fn a_join_text_that_cannot_fit_leaves_the_block_open() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = session(&model, 256, 8);
    s.prompt("Topics:\n").unwrap();
    s.fork(NodeId::TRUNK, &specs(2, 40)).unwrap();
    s.run(&mut Silent).unwrap();
    let cells = s.kv_cells_used();
    let free = s.n_ctx() as u64 - cells;
    let too_long = " and".repeat(free as usize + 1);
    assert_eq!(s.join(NodeId::TRUNK, JoinMode::All, Some(&too_long)), Err(Error::KvCacheFull));
    assert_eq!(s.kv_cells_used(), cells, "nothing was merged or decoded");
    assert!(s.transcript().top_level_branches(0).is_some_and(|b| b.len() == 2));
    // Still open: it can be joined now, here by discarding the branches.
    s.join(NodeId::TRUNK, JoinMode::Discard, Some("\n")).unwrap();
    assert_usable(&mut s);
}

/// After a failure the error for a node that cannot continue says why, not a guess.
#[test]
fn a_node_without_logits_says_why() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = session(&model, 256, 8);
    s.prompt("Topics:\n").unwrap();
    let mut stop_at_once = |_: &pardec::Event| false;
    assert_eq!(
        s.generate(&RunLimits { max_tokens: 8, ..Default::default() }, &mut stop_at_once),
        Err(Error::Cancelled)
    );
    let limits = RunLimits { max_tokens: 2, ..Default::default() };
    match s.resume(NodeId::TRUNK, &limits) {
        Err(Error::InvalidState(m)) => assert!(m.contains("cancelled") && !m.contains("join"), "{m}"),
        other => panic!("{other:?}"),
    }
    s.fork(NodeId::TRUNK, &specs(2, 4)).unwrap();
    s.run(&mut Silent).unwrap();
    s.join(NodeId::TRUNK, JoinMode::All, None).unwrap();
    match s.resume(NodeId::TRUNK, &limits) {
        Err(Error::InvalidState(m)) => assert!(m.contains("a join kept branches"), "{m}"),
        other => panic!("{other:?}"),
    }
    s.append_text(NodeId::TRUNK, "\n").unwrap();
    assert!(s.resume(NodeId::TRUNK, &limits).is_ok());
}

#[test]
fn kv_cache_full_while_prefilling_branch_prefixes_undoes_the_fork() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = session(&model, 256, 8);
    s.prompt("Topics:\n").unwrap();
    let cells = s.kv_cells_used();
    let long = "a very long branch prefix that repeats itself ".repeat(8);
    let specs: Vec<BranchSpec> = (0..8).map(|_| BranchSpec::new(long.clone(), 4)).collect();
    assert_eq!(s.fork(NodeId::TRUNK, &specs), Err(Error::KvCacheFull));
    assert_eq!(s.free_branch_slots(), 8, "the failed fork returned its ids");
    assert_eq!(s.kv_cells_used(), cells);
    assert!(s.transcript().top_level_branches(0).is_none(), "no block was opened");
    assert_usable(&mut s);
}

/// GGUF files llama.cpp itself trips over: each is refused with an error value, or the
/// model's output degrades visibly, never an abort (a C++ exception crossing into Rust, or a
/// GGML_ASSERT). The model is the tiny one with a byte-level vocabulary, edited.
#[test]
fn hostile_model_files_get_error_values() {
    use tiny_model::{ByteVocab, GgufValue as V, TinyConfig, TinyModel};
    let dir = std::env::temp_dir().join(format!("pardec-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vocab = ByteVocab { specials: vec![] };
    let tiny = TinyModel::random(TinyConfig { n_vocab: vocab.n_vocab(), ..TinyConfig::default() });
    type Edit<'a> = dyn Fn(&mut Vec<(&str, V)>) + 'a;
    let write = |name: &str, edit: &Edit<'_>| {
        let path = dir.join(name);
        tiny.write_gguf_edited(&path, Some(&vocab), |kvs| edit(kvs)).unwrap();
        path
    };
    let set = |kvs: &mut Vec<(&str, V)>, key: &'static str, value: V| {
        kvs.retain(|(k, _)| *k != key);
        kvs.push((key, value));
    };
    // Byte-level BPE tokens read as SentencePiece: llama.cpp throws std::out_of_range from a
    // map lookup when it tokenizes (the C++ shim turns it into an error).
    let spm = write("spm.gguf", &|kvs| set(kvs, "tokenizer.ggml.model", V::Str("llama".into())));
    let model = Model::load(&spm, &ModelParams::default()).expect("llama.cpp loads it");
    match model.tokenize("hello", false) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("unordered_map::at"), "{m}"),
        other => panic!("tokenizing a mismatched vocabulary gave {other:?}"),
    }
    // Rendering its tokens goes through the same shim (U+FFFD where llama.cpp throws).
    let _ = model.detokenize(&[0, 1, 2, 300]);
    // What llama.cpp asserts on: refused by pardec's header checks before it sees them.
    let cases: Vec<(&str, Box<Edit<'_>>)> = vec![
        ("no layers", Box::new(|kvs| set(kvs, "llama.block_count", V::U32(0)))),
        ("too many layers", Box::new(|kvs| set(kvs, "llama.block_count", V::U32(513)))),
        ("NaN epsilon", Box::new(|kvs| set(kvs, "llama.attention.layer_norm_rms_epsilon", V::F32(f32::NAN)))),
        ("negative epsilon", Box::new(|kvs| set(kvs, "llama.attention.layer_norm_rms_epsilon", V::F32(-1e-5)))),
        (
            "duplicate tokens",
            Box::new(|kvs| {
                for (k, v) in kvs.iter_mut() {
                    if *k == "tokenizer.ggml.tokens" {
                        if let V::Strs(tokens) = v {
                            tokens[1] = tokens[0].clone();
                        }
                    }
                }
            }),
        ),
    ];
    for (i, (what, edit)) in cases.iter().enumerate() {
        let path = write(&format!("case{i}.gguf"), edit.as_ref());
        match Model::load(&path, &ModelParams::default()) {
            Err(Error::ModelLoad(m)) => assert!(m.contains("refused"), "{what}: {m}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
