//! Grammar-constrained generation on the default model: branches under the JSON-object
//! grammar write parseable JSON on every seed (unconstrained, the same branches do not), a
//! branch without a grammar continues its parent's state, and bad grammars are specific
//! errors; JSON schemas become grammars as llama.cpp converts them.

mod common;

use common::models;
use pardec::{
    BranchSpec, Error, Grammar, Model, NodeId, RunLimits, SamplingParams, Selection, Session, SessionParams, StopReason,
};

fn session(model: &Model, seed: u64) -> Session {
    let sampling = SamplingParams { temperature: 0.8, seed, ..Default::default() };
    let mut s = Session::new(
        model,
        SessionParams { n_ctx: 2048, max_branches: 4, n_threads: 2, sampling, ..Default::default() },
    )
    .unwrap();
    let prompt = model.apply_chat_template(&[("user", "Describe a cat as a JSON object.")]).unwrap();
    s.prompt(&prompt).unwrap();
    s
}

fn limits(grammar: Option<Grammar>) -> RunLimits {
    RunLimits { max_tokens: 160, grammar, ..Default::default() }
}

/// The generated text and stop reason of two branches forked on `seed`.
fn two_branches(model: &Model, seed: u64, grammar: Option<Grammar>) -> Vec<(String, Option<StopReason>)> {
    let mut s = session(model, seed);
    let specs = vec![BranchSpec { limits: limits(grammar), ..Default::default() }; 2];
    let ids = s.fork(NodeId::TRUNK, &specs).unwrap();
    s.run(&mut pardec::Silent).unwrap();
    ids.iter().map(|&id| (s.node_generated_text(id), s.stop_reason(id).cloned())).collect()
}

fn is_json_object(text: &str) -> bool {
    matches!(serde_json::from_str::<serde_json::Value>(text), Ok(serde_json::Value::Object(_)))
}

#[test]
fn json_grammar_branches_write_parseable_json_on_twenty_seeds() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let (mut ended, mut free_parsed) = (0, 0);
    for seed in 0..10 {
        for (text, reason) in two_branches(&model, seed, Some(Grammar::json_object())) {
            if reason == Some(StopReason::Eog) {
                ended += 1;
                assert!(is_json_object(&text), "seed {seed}: {text:?} is not one JSON object");
            } else {
                // Cut by its budget: still a prefix the grammar allowed, starting an object.
                assert!(text.starts_with('{'), "seed {seed}: {text:?}");
            }
        }
        free_parsed += two_branches(&model, seed, None).iter().filter(|(t, _)| is_json_object(t)).count();
    }
    assert!(ended >= 15, "only {ended} of 20 branches closed their object within the budget");
    assert!(free_parsed < 20, "control: without the grammar every branch wrote bare JSON anyway");
}

#[test]
fn a_branch_without_a_grammar_continues_its_parents_state() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = session(&model, 3);
    s.generate(
        &RunLimits { max_tokens: 4, grammar: Some(Grammar::json_object()), ..Default::default() },
        &mut pardec::Silent,
    )
    .unwrap();
    let opened = s.node_generated_text(NodeId::TRUNK);
    assert!(opened.starts_with('{'), "{opened:?}");
    let ids = s.fork(NodeId::TRUNK, &vec![BranchSpec { limits: limits(None), ..Default::default() }; 2]).unwrap();
    s.run(&mut pardec::Silent).unwrap();
    for id in ids {
        let text = format!("{opened}{}", s.node_generated_text(id));
        if s.stop_reason(id) == Some(&StopReason::Eog) {
            assert!(is_json_object(&text), "{text:?}");
        }
    }
}

#[test]
fn bad_grammars_are_specific_errors_and_change_nothing() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = session(&model, 0);
    let before = s.transcript().text;
    for bad in ["root ::= foo", "root ::= \"a", "root ::= root \"a\"", "", "other ::= \"a\""] {
        let err = s.generate(&limits(Some(Grammar::gbnf(bad))), &mut pardec::Silent).unwrap_err();
        assert!(matches!(&err, Error::InvalidArgument(m) if m.starts_with("grammar:")), "{bad:?}: {err:?}");
        let err = s
            .fork(NodeId::TRUNK, &[BranchSpec { limits: limits(Some(Grammar::gbnf(bad))), ..Default::default() }])
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}");
    }
    assert_eq!(s.transcript().text, before);
    let p = SessionParams {
        n_ctx: 256,
        n_threads: 2,
        selection: Selection::Device { candidates: 16 },
        ..Default::default()
    };
    let mut d = Session::new(&model, p).unwrap();
    d.prompt("Hello").unwrap();
    let err = d.generate(&limits(Some(Grammar::json_object())), &mut pardec::Silent).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(m) if m.contains("Selection::Host")));
}

/// A schema of the kind an API caller sends: two required, typed properties.
const PET_SCHEMA: &str = r#"{"type": "object",
  "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
  "required": ["name", "age"], "additionalProperties": false}"#;

#[test]
fn json_schema_branches_write_objects_the_schema_accepts() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let grammar = Grammar::json_schema(PET_SCHEMA).expect("llama.cpp converts the schema");
    let mut ended = 0;
    for seed in 0..5 {
        for (text, reason) in two_branches(&model, seed, Some(grammar.clone())) {
            if reason != Some(StopReason::Eog) {
                assert!(text.starts_with('{'), "seed {seed}: {text:?}");
                continue;
            }
            ended += 1;
            let value: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text:?}"));
            let object = value.as_object().unwrap_or_else(|| panic!("seed {seed}: not an object: {text:?}"));
            let keys: Vec<&str> = object.keys().map(String::as_str).collect();
            assert_eq!(keys.len(), 2, "seed {seed}: keys {keys:?} ({text:?})");
            assert!(object["name"].is_string(), "seed {seed}: {text:?}");
            assert!(object["age"].as_u64().is_some(), "seed {seed}: age is not a natural number: {text:?}");
        }
    }
    assert!(ended >= 5, "only {ended} of 10 branches closed their object within the budget");
}

#[test]
fn bad_json_schemas_are_specific_errors() {
    for (schema, why) in [
        ("{\"type\": \"object\"", "not valid JSON"),
        ("{\"$ref\": \"#/definitions/missing\"}", "could not convert"),
        ("{\"type\": \"no-such-type\"}", "could not convert"),
    ] {
        match Grammar::json_schema(schema) {
            Err(Error::InvalidArgument(m)) => assert!(m.contains(why), "{schema}: {m}"),
            other => panic!("{schema}: {other:?}"),
        }
    }
    // Nesting deeper than serde_json's limit (128) is refused before llama.cpp recurses on it.
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    assert!(matches!(Grammar::json_schema(&deep), Err(Error::InvalidArgument(m)) if m.contains("not valid JSON")));
}

/// Two branches' tokens under `grammar` (None: free), sampled with `sampling` plus `logit_bias`.
fn branch_tokens(
    model: &Model,
    sampling: &SamplingParams,
    logit_bias: Vec<(i32, f32)>,
    grammar: Option<Grammar>,
) -> Vec<Vec<i32>> {
    let sampling = SamplingParams { logit_bias, ..sampling.clone() };
    let mut s = Session::new(
        model,
        SessionParams { n_ctx: 2048, max_branches: 4, n_threads: 2, sampling, ..Default::default() },
    )
    .unwrap();
    s.prompt(&model.apply_chat_template(&[("user", "Describe a cat as a JSON object.")]).unwrap()).unwrap();
    let specs =
        vec![
            BranchSpec { limits: RunLimits { max_tokens: 48, grammar, ..Default::default() }, ..Default::default() };
            2
        ];
    let ids = s.fork(NodeId::TRUNK, &specs).unwrap();
    s.run(&mut pardec::Silent).unwrap();
    ids.iter().map(|&id| s.node_tokens(id)).collect()
}

#[test]
fn shortlisted_picks_under_a_grammar_equal_those_of_the_fully_masked_row() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    // A pick the grammar rejects is redrawn from the allowed tokens among the row's 64
    // highest when the sampler can only reach the top k of them (greedy; top-k); a zero
    // bias (which changes no logit) sends the same runs through the mask of the whole row
    // instead: both must choose the same tokens, greedy and sampled.
    let greedy = SamplingParams::greedy();
    let top_k = |top_k, seed| SamplingParams { temperature: 0.8, top_k, seed, ..Default::default() };
    let zero_bias = vec![(0, 0.0)];
    // Top-3 reaches few enough tokens that the shortlist usually holds them; with top-40 the
    // JSON grammar's rejections mostly come where fewer than 40 tokens are allowed.
    for (what, sampling) in [("greedy", greedy.clone()), ("top-3", top_k(3, 1)), ("top-40", top_k(40, 2))] {
        for grammar in [Grammar::json_object(), Grammar::json_schema(PET_SCHEMA).unwrap()] {
            let shortlisted = branch_tokens(&model, &sampling, Vec::new(), Some(grammar.clone()));
            let fully_masked = branch_tokens(&model, &sampling, zero_bias.clone(), Some(grammar));
            assert_eq!(shortlisted, fully_masked, "{what}");
        }
    }
    // Control: the grammar did reject greedy picks here (unconstrained, the text differs).
    let free = branch_tokens(&model, &greedy, Vec::new(), None);
    assert_ne!(
        free,
        branch_tokens(&model, &greedy, Vec::new(), Some(Grammar::json_object())),
        "the grammar never overrode a pick"
    );
}
