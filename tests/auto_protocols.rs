//! Auto mode on the real default model: a scripted sampler makes the trunk (and, where a
//! block nests, a branch) write each built-in protocol's control text; the model writes the
//! branch bodies. The engine must fork at the trigger with the announced labels, decode the
//! branches in one batch per step, join with the protocol's join text, and go on.

mod common;

use common::models;
use common::script::{nested_multiverse, seg, seg_eos, Script, When};
use common::transcript::response_pieces;
use pardec::auto::{generate_auto, AutoParams, AutoReport};
use pardec::protocol::{check, layout, ProtocolSpec, WarningKind};
use pardec::{ItemReport, Model, NodeReport, Origin, Session, SessionParams, Silent, Transcript};

fn session(model: &Model) -> Session {
    Session::new(
        model,
        SessionParams { n_ctx: 4096, max_branches: 16, max_depth: 3, n_threads: 2, ..Default::default() },
    )
    .unwrap()
}

fn params() -> AutoParams {
    AutoParams { max_tokens: 120, max_branch_tokens: 80, response_prefix: String::new(), ..Default::default() }
}

/// Runs `spec` with `script` and checks what every protocol must satisfy: the text is
/// well-formed except where the model itself wrote a control tag that is illegal in place
/// (each such spot must have been reported as a warning), and the positions the engine used
/// are the training layout's position ids.
fn run_protocol(model: &Model, spec: &ProtocolSpec, script: Script) -> (Session, AutoReport) {
    let mut s = session(model);
    s.prompt("Write about fruit.\n").unwrap();
    let prompt_tokens = s.kv_cells_used() as usize;
    let prompt_len = s.transcript().text.len();
    s.set_script(Some(Box::new(script)));
    let report = generate_auto(&mut s, spec, &params(), &mut Silent).unwrap();
    let t = s.transcript();
    let response = &t.text[prompt_len..];
    let forbidden = report.warnings.iter().filter(|w| w.kind == WarningKind::ForbiddenTag).count();
    let errors = check(response, spec);
    for e in &errors {
        assert!(e.message.contains("treated as text"), "{}: structural error {e:?} in\n{response}", spec.name);
    }
    assert!(
        errors.len() <= forbidden,
        "{}: {errors:?} not all reported as warnings ({:?})",
        spec.name,
        report.warnings
    );
    let (pieces, pos) = response_pieces(model, &t, prompt_tokens);
    let lay = layout(spec, &pieces);
    let layout_pos: Vec<i32> = lay.pieces.iter().map(|p| p.pos as i32).collect();
    assert_eq!(layout_pos, pos, "{}: layout positions differ from the engine's", spec.name);
    (s, report)
}

/// Generated tokens in a node and all its branches.
fn generated(n: &NodeReport) -> usize {
    n.items
        .iter()
        .map(|i| match i {
            ItemReport::Text { origin: Origin::Generated, tokens, .. } => tokens.len(),
            ItemReport::Text { .. } => 0,
            ItemReport::Block { branches, .. } => branches.iter().map(generated).sum(),
        })
        .sum()
}

/// Decode steps if every block's branches advance together, one token each per step: a
/// node's own tokens plus, per block, its longest branch.
fn critical_path(n: &NodeReport) -> usize {
    n.items
        .iter()
        .map(|i| match i {
            ItemReport::Text { origin: Origin::Generated, tokens, .. } => tokens.len(),
            ItemReport::Text { .. } => 0,
            ItemReport::Block { branches, .. } => branches.iter().map(critical_path).max().unwrap_or(0),
        })
        .sum()
}

/// The stats count every generated token once and a parallel step once.
fn assert_steps(s: &Session) {
    let t = s.transcript();
    let st = s.stats();
    assert_eq!(st.tokens_total as usize, generated(&t.trunk));
    assert_eq!(st.steps as usize, critical_path(&t.trunk), "branches were not decoded one batch per step");
    assert!(st.steps < st.tokens_total);
}

fn labels(report: &AutoReport) -> Vec<(String, Vec<String>)> {
    report.blocks.iter().map(|b| (b.parent.clone(), b.labels.clone())).collect()
}

fn titles(report: &AutoReport) -> Vec<Vec<String>> {
    report.blocks.iter().map(|b| b.titles.clone()).collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Siblings of the trunk's first block all start at one position.
fn assert_shared_start(t: &Transcript) {
    let starts: Vec<i32> = t
        .top_level_branches(0)
        .unwrap()
        .iter()
        .map(|b| match &b.items[0] {
            ItemReport::Text { first_pos, .. } => *first_pos,
            _ => panic!("branch starts with a block"),
        })
        .collect();
    assert!(starts.iter().all(|&p| p == starts[0]), "branch starts {starts:?}");
}

#[test]
fn multiverse_with_a_nested_block() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let spec = ProtocolSpec::builtin("multiverse").unwrap();
    let script = nested_multiverse(&model);
    let (s, report) = run_protocol(&model, &spec, script);
    assert_eq!(
        labels(&report),
        vec![(String::new(), strings(&["1", "2", "3"])), ("2".into(), strings(&["2.1", "2.2"]))]
    );
    assert_eq!(titles(&report), vec![strings(&["Apples", "Pears", "Plums"]), strings(&["Green", "Red"])]);
    let t = s.transcript();
    assert!(t.text.ends_with("Done."), "{}", t.text);
    // Each path keeps the token the model sampled after `</Path>`; the join text follows it.
    assert!(t.text.contains("<Conclusion>\n") && !t.text.contains("</Path><Conclusion>"), "{}", t.text);
    let st = s.stats();
    assert_eq!((st.blocks, st.branches), (2, 5));
    assert_steps(&s);
    assert_shared_start(&t);
}

#[test]
fn aspd_with_two_blocks() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let spec = ProtocolSpec::builtin("aspd").unwrap();
    let script = Script::new(
        &model,
        vec![
            ("", vec![
                seg(When::Start, "Fruit comes in many kinds.<|title|>Apples<|/title|><|title|>Pears<|/title|><|para|>"),
                seg(When::EndsWith("<|/para|>\n".into()), "Also berries.<|title|>Red<|/title|><|title|>Blue<|/title|><|title|>Black<|/title|><|title|>White<|/title|><|para|>"),
                seg_eos(When::EndsWith("<|/para|>\n".into()), "That is all."),
            ]),
            ("1", vec![seg(When::LongerThan(24), "<|/branch|>")]),
            ("2", vec![seg(When::LongerThan(22), "<|/branch|>")]),
            ("3", vec![seg(When::LongerThan(22), "<|/branch|>")]),
            ("4", vec![seg(When::LongerThan(24), "<|/branch|>")]),
        ],
    );
    let (s, report) = run_protocol(&model, &spec, script);
    assert_eq!(titles(&report), vec![strings(&["Apples", "Pears"]), strings(&["Red", "Blue", "Black", "White"])]);
    let t = s.transcript();
    assert!(t.text.ends_with("That is all."), "{}", t.text);
    let trunk = s.node_text(pardec::NodeId::TRUNK);
    assert_eq!(trunk.matches("<|/para|>\n").count(), 2, "one join text per block");
    let st = s.stats();
    assert_eq!((st.blocks, st.branches), (2, 6));
    assert_steps(&s);
    assert_shared_start(&t);
}

#[test]
fn parallel_r1_forks_two_paths() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let spec = ProtocolSpec::builtin("parallel-r1").unwrap();
    let script = Script::new(
        &model,
        vec![
            (
                "",
                vec![
                    seg(When::Start, "Let me think in two ways.\n<Parallel>"),
                    seg_eos(When::EndsWith("<Summary>".into()), "Both agree.</Summary>\nSo yes."),
                ],
            ),
            ("1", vec![seg(When::LongerThan(20), "</Path>")]),
            ("2", vec![seg(When::LongerThan(26), "</Path>")]),
        ],
    );
    let (s, report) = run_protocol(&model, &spec, script);
    assert_eq!(report.blocks.len(), 1);
    assert_eq!(report.blocks[0].paths, strings(&["1", "2"]));
    let t = s.transcript();
    assert!(t.text.ends_with("So yes."), "{}", t.text);
    assert_steps(&s);
    assert_shared_start(&t);
}

#[test]
fn threadweaver_forks_four_threads() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let spec = ProtocolSpec::builtin("threadweaver").unwrap();
    let script = Script::new(
        &model,
        vec![
            ("", vec![
                seg(When::Start, "<Parallel>\n<Outlines>\n<Outline>1: Taste</Outline>\n<Outline>2: Colour</Outline>\n<Outline>3: Price</Outline>\n<Outline>4: Season</Outline>\n</Outlines>"),
                // The engine appends a newline after the threads; the model closes the block.
                seg_eos(When::EndsWith("</Outlines>\n\n".into()), "</Parallel>\nThat covers it."),
            ]),
            ("1", vec![seg(When::LongerThan(24), "</Thread>")]),
            ("2", vec![seg(When::LongerThan(28), "</Thread>")]),
            ("3", vec![seg(When::LongerThan(20), "</Thread>")]),
            ("4", vec![seg(When::LongerThan(30), "</Thread>")]),
        ],
    );
    let (s, report) = run_protocol(&model, &spec, script);
    assert_eq!(labels(&report), vec![(String::new(), strings(&["1", "2", "3", "4"]))]);
    assert_eq!(titles(&report), vec![strings(&["Taste", "Colour", "Price", "Season"])]);
    let t = s.transcript();
    assert!(t.text.ends_with("That covers it."), "{}", t.text);
    let st = s.stats();
    assert_eq!((st.blocks, st.branches), (1, 4));
    assert_steps(&s);
    assert_shared_start(&t);
}
