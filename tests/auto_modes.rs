//! Auto mode when the model's output is malformed, and the APR and Skeleton-of-Thought modes,
//! on the real default model with a scripted sampler. Every malformed case must take its
//! documented fallback, report a warning, and never hang or crash.

mod common;

use common::models;
use common::script::{seg, seg_eos, Script, When};
use pardec::auto::apr::generate_apr;
use pardec::auto::sot::{generate_sot, SotParams};
use pardec::auto::{generate_auto, AutoParams, AutoReport};
use pardec::protocol::{ProtocolSpec, SkeletonFormat, SubSearchFormat, WarningKind};
use pardec::{Event, Model, NodeId, Session, SessionParams, Silent};

fn session(model: &Model, max_branches: u32, max_depth: u32) -> Session {
    Session::new(model, SessionParams { n_ctx: 4096, max_branches, max_depth, n_threads: 2, ..Default::default() })
        .unwrap()
}

fn multiverse(
    max_branches: u32,
    max_depth: u32,
    branch_tokens: usize,
    prefix: &str,
    script: Vec<(&str, Vec<common::script::Segment>)>,
) -> (Session, AutoReport) {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = session(&model, max_branches, max_depth);
    s.prompt("Write about fruit.\n").unwrap();
    s.set_script(Some(Box::new(Script::new(&model, script))));
    let params = AutoParams {
        max_tokens: 100,
        max_branch_tokens: branch_tokens,
        response_prefix: prefix.into(),
        ..Default::default()
    };
    // Multiverse's engine joins a path cut by its budget as it stands; these tests watch the
    // fallbacks, so an unfinished path is closed in the text.
    let spec = ProtocolSpec { close_unfinished: true, ..ProtocolSpec::builtin("multiverse").unwrap() };
    let report = generate_auto(&mut s, &spec, &params, &mut Silent).unwrap();
    (s, report)
}

fn kinds(r: &AutoReport) -> Vec<WarningKind> {
    r.warnings.iter().map(|w| w.kind).collect()
}

const CLOSE: &str = "\n</Path>";

#[test]
fn a_trigger_without_outlines_continues_serially() {
    let (s, r) = multiverse(
        8,
        2,
        40,
        "",
        vec![(
            "",
            vec![
                seg(When::Start, "<Parallel>\n<Goal>\nno plan here\n</Goal>"),
                seg_eos(When::LongerThan(60), "\n</Parallel>\nEnd."),
            ],
        )],
    );
    assert!(r.blocks.is_empty());
    assert!(kinds(&r).contains(&WarningKind::NoAnnouncements), "{:?}", r.warnings);
    assert_eq!(s.stats().blocks, 0);
    assert!(s.transcript().text.ends_with("End."));
}

#[test]
fn more_outlines_than_free_sequence_ids_are_capped() {
    let (s, r) = multiverse(2, 2, 40, "", vec![
        ("", vec![
            seg(When::Start, "<Parallel>\n<Goal>\n<Outline>1: A</Outline>\n<Outline>2: B</Outline>\n<Outline>3: C</Outline>\n<Outline>4: D</Outline>\n</Goal>"),
            seg_eos(When::EndsWith("<Conclusion>\n".into()), "ok\n</Conclusion>\n</Parallel>"),
        ]),
        ("1", vec![seg(When::LongerThan(20), CLOSE)]),
        ("2", vec![seg(When::LongerThan(20), CLOSE)]),
    ]);
    assert_eq!(r.blocks.len(), 1);
    assert_eq!(r.blocks[0].labels, vec!["1", "2"]);
    assert!(kinds(&r).contains(&WarningKind::TooManyBranches), "{:?}", r.warnings);
    assert_eq!(s.stats().branches, 2);
}

#[test]
fn a_path_that_never_closes_is_closed_at_its_limit() {
    let (s, r) = multiverse(
        8,
        2,
        10,
        "",
        vec![(
            "",
            vec![
                seg(When::Start, "<Parallel>\n<Goal>\n<Outline>1: A</Outline>\n<Outline>2: B</Outline>\n</Goal>"),
                seg_eos(When::EndsWith("<Conclusion>\n".into()), "ok\n</Conclusion>\n</Parallel>"),
            ],
        )],
    );
    let unclosed = r.warnings.iter().filter(|w| w.kind == WarningKind::BranchNotClosed).count();
    assert_eq!(unclosed, 2, "{:?}", r.warnings);
    let t = s.transcript();
    for b in t.top_level_branches(0).unwrap() {
        assert!(b.text.ends_with("</Path>"), "branch {} not closed: {:?}", b.label, b.text);
    }
    assert!(t.text.ends_with("</Parallel>"));
}

#[test]
fn nesting_past_the_limit_is_read_as_text() {
    let (s, r) = multiverse(
        8,
        1,
        60,
        "",
        vec![
            (
                "",
                vec![
                    seg(When::Start, "<Parallel>\n<Goal>\n<Outline>1: A</Outline>\n<Outline>2: B</Outline>\n</Goal>"),
                    seg_eos(When::EndsWith("<Conclusion>\n".into()), "ok\n</Conclusion>\n</Parallel>"),
                ],
            ),
            (
                "1",
                vec![
                    seg(When::LongerThan(12), "\n<Parallel>\n<Goal>\n<Outline>1.1: x</Outline>\n</Goal>"),
                    seg(When::LongerThan(70), CLOSE),
                ],
            ),
            ("2", vec![seg(When::LongerThan(20), CLOSE)]),
        ],
    );
    assert_eq!(r.blocks.len(), 1, "no nested block may open at max_depth 1");
    assert!(kinds(&r).contains(&WarningKind::NestingTooDeep), "{:?}", r.warnings);
    assert_eq!(s.stats().blocks, 1);
}

#[test]
fn eos_inside_a_branch_ends_it_and_the_block_still_joins() {
    let (s, r) = multiverse(
        8,
        2,
        40,
        "",
        vec![
            (
                "",
                vec![
                    seg(When::Start, "<Parallel>\n<Goal>\n<Outline>1: A</Outline>\n<Outline>2: B</Outline>\n</Goal>"),
                    seg_eos(When::EndsWith("<Conclusion>\n".into()), "ok\n</Conclusion>\n</Parallel>"),
                ],
            ),
            ("1", vec![seg_eos(When::LongerThan(16), " stop")]),
            ("2", vec![seg(When::LongerThan(20), CLOSE)]),
        ],
    );
    assert_eq!(r.blocks.len(), 1);
    assert_eq!(s.stop_reason(NodeId::from_index(1)), Some(&pardec::StopReason::Eog));
    assert!(s.transcript().text.contains("<Conclusion>\nok"));
}

#[test]
fn a_response_prefix_can_open_the_block_itself() {
    let (s, r) = multiverse(
        8,
        2,
        40,
        "<Parallel>\n<Goal>\n<Outline>1: A</Outline>\n<Outline>2: B</Outline>\n</Goal>",
        vec![
            ("", vec![seg_eos(When::EndsWith("<Conclusion>\n".into()), "ok\n</Conclusion>\n</Parallel>")]),
            ("1", vec![seg(When::LongerThan(20), CLOSE)]),
            ("2", vec![seg(When::LongerThan(20), CLOSE)]),
        ],
    );
    assert_eq!(r.blocks.len(), 1);
    // The model may imitate tags inside a branch; nothing else may be reported.
    assert!(r.warnings.iter().all(|w| w.kind == WarningKind::ForbiddenTag), "{:?}", r.warnings);
    assert!(s.transcript().text.contains("<Outline>2: B</Outline>\n</Goal>\n<Path>\n1:"));
}

/// Auto mode tells the observer about the response prefix once, as forced text, before the
/// first sampled token (the CLI's stream shows it from this event); without a prefix there is
/// no such event, and an observer that stops at it cancels before anything is sampled.
#[test]
fn the_response_prefix_is_a_forced_text_event() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let spec = ProtocolSpec::builtin("multiverse").unwrap();
    let events_for = |prefix: &str, stop_at_forced: bool| {
        let mut s = session(&model, 8, 2);
        s.prompt("Write about fruit.\n").unwrap();
        s.set_script(Some(Box::new(Script::new(&model, vec![("", vec![seg_eos(When::Start, "Fruit is good.")])]))));
        let params = AutoParams { max_tokens: 20, response_prefix: prefix.into(), ..Default::default() };
        let mut seen = Vec::new();
        let mut observer = |e: &Event<'_>| {
            match e {
                Event::Forced { node, label, text } => seen.push(format!("forced {}/{label}: {text}", node.index())),
                Event::Token { .. } => seen.push("token".into()),
                _ => {}
            }
            !(stop_at_forced && matches!(e, Event::Forced { .. }))
        };
        let outcome = generate_auto(&mut s, &spec, &params, &mut observer);
        (seen, outcome.map(|_| ()), s.transcript().text)
    };
    let (seen, outcome, text) = events_for("Sure: ", false);
    outcome.unwrap();
    assert_eq!(seen[0], "forced 0/: Sure: ", "{seen:?}");
    assert_eq!(seen.iter().filter(|e| e.starts_with("forced")).count(), 1, "{seen:?}");
    assert!(seen[1..].iter().all(|e| e == "token") && seen.len() > 1, "{seen:?}");
    assert!(text.ends_with("Sure: Fruit is good."), "{text:?}");

    let (seen, outcome, _) = events_for("", false);
    outcome.unwrap();
    assert!(seen.iter().all(|e| e == "token"), "no prefix, no forced event: {seen:?}");

    let (seen, outcome, text) = events_for("Sure: ", true);
    assert!(matches!(outcome, Err(pardec::Error::Cancelled)), "{outcome:?}");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(text.ends_with("Sure: "), "the prefix is kept, nothing sampled: {text:?}");
}

/// APR's Countdown layout (src/data/search.py): the parent expands nodes and calls sub
/// searches on them; each child gets its node's rebuilt state on its own prompt; the parent
/// resumes from the text before the calls with one entry per child.
#[test]
fn apr_children_run_on_their_own_prompts() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = session(&model, 8, 2);
    s.prompt("Moving to Node #0\nCurrent State: 24:[4, 9, 3], Operations: []\n").unwrap();
    let expand =
        "Exploring Operation: 9-3=6, Resulting Numbers: [4, 6]\nGenerated Node #0,0: 24:[4, 6] Operation: 9-3=6\n\
        Exploring Operation: 9/3=3, Resulting Numbers: [4, 3]\nGenerated Node #0,1: 24:[4, 3] Operation: 9/3=3\n";
    let calls = "<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,0\n\
        <Start Sub Search 1 at level 1> Moving to Node #0,1\n<Start Sub Search 2 at level 1> Moving to Node #0,9\n\
        <End Calling Sub Searches>";
    s.set_script(Some(Box::new(Script::new(
        &model,
        vec![
            (
                "",
                vec![
                    seg(When::Start, &format!("{expand}{calls}")),
                    seg_eos(When::EndsWith("<End Sub Searches>\n".into()), "Done."),
                ],
            ),
            (
                "2",
                vec![seg_eos(
                    When::Start,
                    "\nExploring Operation: 4*3=12\n12*2=24\nGoal Reached\n['9/3=3', '4*6=24']\nGoal Reached\n9/3=3",
                )],
            ),
        ],
    ))));
    let params =
        AutoParams { max_tokens: 200, max_branch_tokens: 90, response_prefix: String::new(), ..Default::default() };
    let r = generate_apr(&mut s, &SubSearchFormat::apr(), &params, &mut Silent).unwrap();
    assert_eq!(r.blocks.len(), 1);
    assert_eq!(
        r.blocks[0].titles,
        vec![
            "Moving to Node #0,0\nCurrent State: 24:[4, 6], Operations: ['9-3=6']",
            "Moving to Node #0,1\nCurrent State: 24:[4, 3], Operations: ['9/3=3']"
        ]
    );
    assert!(r.warnings.iter().any(|w| w.message.contains("0,9")), "{:?}", r.warnings);
    let trunk = s.node_text(NodeId::TRUNK);
    assert!(!trunk.contains("<Calling Sub Searches>"), "the calls block is dropped: {trunk}");
    let results = "Operation: 9/3=3\n<Sub Searches>\n<No Solution in Sub Search 0 at level 1 at Node #0,0>\n\
        <Goal Reached in Sub Search 1 at level 1 at Node #0,1>\n['9/3=3', '4*6=24']\nGoal Reached\n9/3=3\n<End Sub Searches>\nDone.";
    assert!(trunk.ends_with(results), "{trunk}");
    // Each child saw only its own prompt.
    let t = s.transcript();
    let kids = t.top_level_branches(0).unwrap();
    assert!(kids[0].text.starts_with("Moving to Node #0,0\nCurrent State") && !kids[0].text.contains("Node #0\n"));
    assert_eq!(s.stats().branches, 2);
}

/// A calls block whose closer is the trunk's last allowed token still runs its children.
#[test]
fn apr_calls_written_with_the_last_token_still_run() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = session(&model, 8, 2);
    s.prompt("Moving to Node #0\nCurrent State: 10:[2, 5], Operations: []\n").unwrap();
    let text = "Generated Node #0,0: 10:[10] Operation: 2*5=10\n<Calling Sub Searches>\n\
        <Start Sub Search 0 at level 1> Moving to Node #0,0\n<End Calling Sub Searches>";
    let budget = model.tokenize(text, false).unwrap().len();
    s.set_script(Some(Box::new(Script::new(&model, vec![("", vec![seg(When::Start, text)])]))));
    let params =
        AutoParams { max_tokens: budget, max_branch_tokens: 4, response_prefix: String::new(), ..Default::default() };
    let r = generate_apr(&mut s, &SubSearchFormat::apr(), &params, &mut Silent).unwrap();
    assert_eq!(r.blocks.len(), 1, "{:?}", r.warnings);
    assert!(s
        .node_text(NodeId::TRUNK)
        .ends_with("<No Solution in Sub Search 0 at level 1 at Node #0,0>\n<End Sub Searches>\n"));
}

/// A calls closer split between the response prefix and the model's first tokens is seen.
#[test]
fn apr_trigger_split_across_the_response_prefix() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = session(&model, 8, 2);
    s.prompt("Moving to Node #0\nCurrent State: 10:[2, 5], Operations: []\n").unwrap();
    let prefix = "Generated Node #0,0: 10:[10] Operation: 2*5=10\n<Calling Sub Searches>\n\
        <Start Sub Search 0 at level 1> Moving to Node #0,0\n<End Calling Sub";
    s.set_script(Some(Box::new(Script::new(&model, vec![("", vec![seg(When::Start, " Searches>")])]))));
    let params =
        AutoParams { max_tokens: 30, max_branch_tokens: 4, response_prefix: prefix.into(), ..Default::default() };
    let r = generate_apr(&mut s, &SubSearchFormat::apr(), &params, &mut Silent).unwrap();
    assert_eq!(r.blocks.len(), 1, "{:?}", r.warnings);
}

/// A response prefix holding a whole calls block runs its calls before the model writes a
/// token (it was left to the model, which wrote on past it).
#[test]
fn apr_calls_written_in_the_response_prefix_run() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = session(&model, 8, 2);
    s.prompt("Moving to Node #0\nCurrent State: 10:[2, 5], Operations: []\n").unwrap();
    let prefix = "Generated Node #0,0: 10:[10] Operation: 2*5=10\n<Calling Sub Searches>\n\
        <Start Sub Search 0 at level 1> Moving to Node #0,0\n<End Calling Sub Searches>";
    s.set_script(Some(Box::new(Script::new(&model, vec![("", vec![seg_eos(When::Start, "Done.")])]))));
    let params =
        AutoParams { max_tokens: 30, max_branch_tokens: 4, response_prefix: prefix.into(), ..Default::default() };
    let r = generate_apr(&mut s, &SubSearchFormat::apr(), &params, &mut Silent).unwrap();
    assert_eq!(r.blocks.len(), 1, "{:?}", r.warnings);
    assert!(s.transcript().text.contains("<End Sub Searches>"), "{}", s.transcript().text);
}

#[test]
fn skeleton_of_thought_for_real() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = session(&model, 12, 1);
    let format = SkeletonFormat::sot();
    let params = SotParams { skeleton_tokens: 80, point_tokens: 40 };
    let answer = generate_sot(&mut s, "How can I sleep better?", &format, &params, &mut Silent).unwrap();
    println!("points {:?}\n{}", answer.points, answer.answer);
    assert!(!answer.serial_fallback, "the model's skeleton was unusable: {:?}", answer.report.warnings);
    assert!((2..=10).contains(&answer.points.len()));
    // Every point appears in the answer, in order.
    let mut at = 0;
    for p in &answer.points {
        let found =
            answer.answer[at..].find(p.as_str()).unwrap_or_else(|| panic!("point {p:?} missing or out of order"));
        at += found + p.len();
    }
    let st = s.stats();
    assert_eq!(st.blocks, 1);
    assert_eq!(st.branches as usize, answer.points.len());
    // One shared prefix: the branches' prefix cells were not copied.
    assert!(st.kv_cells_unshared > st.kv_cells_used);
}

#[test]
fn a_rambling_skeleton_is_cut_with_a_warning() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = session(&model, 12, 1);
    let mut ramble = String::from(" Sleep early\n2. Sleep early\n");
    for i in 3..=14 {
        ramble.push_str(&format!("{i}. Point number {i}\n"));
    }
    s.set_script(Some(Box::new(Script::new(&model, vec![("", vec![seg_eos(When::Start, &ramble)])]))));
    let answer = generate_sot(
        &mut s,
        "How can I sleep better?",
        &SkeletonFormat::sot(),
        &SotParams { skeleton_tokens: 200, point_tokens: 8 },
        &mut Silent,
    )
    .unwrap();
    assert_eq!(answer.points.len(), 10);
    let k = kinds(&answer.report);
    assert!(k.contains(&WarningKind::DuplicateLabel), "{k:?}");
    assert!(k.contains(&WarningKind::TooManyBranches), "{k:?}");
    assert_eq!(s.stats().branches, 10);
}

/// A KV cache that fills inside a block fails the call with KvCacheFull, but nothing is lost:
/// the report (filled as it went) has the block, the session holds the text so far.
#[test]
fn a_full_kv_cache_midway_keeps_the_report_and_the_text() {
    let model = models::load(models::DEFAULT_MODEL_FILE);
    let mut s = Session::new(&model, SessionParams { n_ctx: 128, max_branches: 4, n_threads: 2, ..Default::default() })
        .unwrap();
    s.prompt("Write about fruit.\n").unwrap();
    let prefix = "<Parallel>\n<Goal>\n<Outline>1: Apples</Outline>\n<Outline>2: Pears</Outline>\n</Goal>";
    let params =
        AutoParams { max_tokens: 400, max_branch_tokens: 400, response_prefix: prefix.into(), ..Default::default() };
    let mut report = AutoReport::default();
    let spec = ProtocolSpec::builtin("multiverse").unwrap();
    let mut ban_eog = params.clone();
    ban_eog.branches_ban_eog = true; // the paths must run until the cache is full
    let outcome = pardec::auto::generate_auto_into(&mut s, &spec, &ban_eog, &mut Silent, &mut report);
    assert_eq!(outcome, Err(pardec::Error::KvCacheFull));
    assert!(!report.blocks.is_empty(), "{report:?}");
    assert_eq!(report.blocks[0].paths, ["1", "2"]);
    let t = s.transcript();
    assert!(t.text.contains(prefix), "{}", t.text);
    assert!(s.kv_cells_used() > 100, "the branches wrote until the cache was full");
}
