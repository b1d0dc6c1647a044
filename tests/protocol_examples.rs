//! Each built-in protocol on a realistic hand-written response, driven stream by stream as the
//! engine would; then every malformed case with its fallback and warning.

mod protocol_harness;

use std::collections::HashMap;

use pardec::protocol::{check, layout, Action, EndCause, Phase, ProtocolSpec, StreamEnd, WarningKind, Watcher};
use protocol_harness::{replay, Replay};

fn spec(name: &str) -> ProtocolSpec {
    ProtocolSpec::builtin(name).unwrap()
}

/// A built-in with pardec's own checks switched on (derived bans, label checks): the
/// malformed-output cases below watch those warnings.
fn checked(name: &str) -> ProtocolSpec {
    ProtocolSpec { bans: None, check_labels: true, ..spec(name) }
}

/// Branch scripts keyed by "path title".
fn scripts(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn run(spec: &ProtocolSpec, trunk: &str, branches: &HashMap<String, String>) -> Replay {
    let r =
        replay(spec, trunk, &|b| branches.get(&format!("{} {}", b.path, b.title)).cloned().unwrap_or_default(), None);
    assert!(r.stop_mismatches.is_empty(), "{:#?}", r.stop_mismatches);
    r
}

fn kinds(actions: &[Action]) -> Vec<WarningKind> {
    actions.iter().filter_map(|a| if let Action::Warning(w) = a { Some(w.kind) } else { None }).collect()
}

fn warning_at(actions: &[Action], kind: WarningKind) -> usize {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Warning(w) if w.kind == kind => Some(w.at),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {kind:?} in {actions:#?}"))
}

/// Char-level pieces of a text, for layouts.
fn chars(text: &str) -> Vec<String> {
    text.chars().map(String::from).collect()
}

#[test]
fn multiverse_with_a_nested_block() {
    let spec = spec("multiverse");
    let trunk = "Compute 3*4 + 5*6.\n<Parallel><Goal>The products are independent.\
        <Outline>1: compute 3*4</Outline><Outline>2: compute 5*6</Outline></Goal>\
        Adding: 12 + 30 = 42.</Conclusion></Parallel>\nThe answer is 42.";
    let branches = scripts(&[
        ("1 compute 3*4", " 3*4 = 12.</Path>"),
        (
            "2 compute 5*6",
            " 5*6 is 5*3 twice.<Parallel><Goal><Outline>2.1: 5*3</Outline><Outline>2.2: 5*3 again</Outline></Goal>\
             So 15 + 15 = 30.</Conclusion></Parallel></Path>",
        ),
        ("2.1 5*3", " 15</Path>"),
        ("2.2 5*3 again", " also 15</Path>"),
    ]);
    let r = run(&spec, trunk, &branches);
    assert!(r.warnings().is_empty(), "{:#?}", r.warnings());
    let forks = r.forks();
    assert_eq!(forks.len(), 2);
    assert_eq!(forks[0].0, "");
    assert_eq!(forks[1].0, "2");
    assert_eq!(forks[1].1.depth, 2);
    assert_eq!(forks[1].1.branches.iter().map(|b| b.path.as_str()).collect::<Vec<_>>(), vec!["2.1", "2.2"]);
    let expected = "Compute 3*4 + 5*6.\n<Parallel><Goal>The products are independent.\
        <Outline>1: compute 3*4</Outline><Outline>2: compute 5*6</Outline></Goal>\
        \n<Path>\n1: 3*4 = 12.</Path>\
        <Path>\n2: 5*6 is 5*3 twice.<Parallel><Goal><Outline>2.1: 5*3</Outline><Outline>2.2: 5*3 again</Outline></Goal>\
        \n<Path>\n2.1: 15</Path><Path>\n2.2: also 15</Path><Conclusion>\nSo 15 + 15 = 30.</Conclusion></Parallel></Path>\
        <Conclusion>\nAdding: 12 + 30 = 42.</Conclusion></Parallel>\nThe answer is 42.";
    assert_eq!(r.transcript, expected);
    assert_eq!(check(&r.transcript, &spec), vec![]);

    // The training layout of the same text realizes the same tree.
    let pieces = chars(&r.transcript);
    let l = layout(&spec, &pieces);
    assert!(l.warnings.is_empty());
    let first = |label: &str| l.pieces.iter().position(|p| p.branch.as_deref() == Some(label)).unwrap();
    let last = |label: &str| l.pieces.iter().rposition(|p| p.branch.as_deref() == Some(label)).unwrap();
    let fork_at = expected.find("</Goal>").unwrap() + "</Goal>\n".len();
    assert_eq!(l.pieces[first("1")].pos as usize, fork_at, "branches start after the trigger's shared newline");
    assert_eq!(l.pieces[first("1")].pos, l.pieces[first("2")].pos);
    assert_eq!(l.pieces[first("2.1")].pos, l.pieces[first("2.2")].pos);
    assert!(!l.pieces[first("2")].sees(first("1")), "siblings never see each other");
    assert!(!l.pieces[last("2.2")].sees(last("2.1")));
    assert!(l.pieces[last("2.2")].sees(first("2")), "a nested branch sees its parent's prefix");
    let after_nested_join = last("2");
    assert!(l.pieces[after_nested_join].sees(first("2.1")) && l.pieces[after_nested_join].sees(first("2.2")));
    assert!(!l.pieces[after_nested_join].sees(first("1")));
    // Same-Max: the parent resumes one past the longest branch.
    let conclusion = first_trunk_after(&l, last("2"));
    let max_end = ["1", "2"].iter().map(|b| l.pieces[last(b)].pos).max().unwrap();
    assert_eq!(l.pieces[conclusion].pos, max_end + 1);
    assert!((0..conclusion).all(|j| l.pieces[conclusion].sees(j)));
}

fn first_trunk_after(l: &pardec::protocol::Layout, i: usize) -> usize {
    (i + 1..l.pieces.len()).find(|&j| l.pieces[j].branch.is_none()).unwrap()
}

#[test]
fn aspd_with_two_blocks() {
    let spec = spec("aspd");
    let trunk = "Here is how the options compare.\n<|title|>Cost<|/title|><|title|>Speed<|/title|><|para|>\
        Next, the risks.\n<|title|>Safety<|/title|><|title|>Upkeep<|/title|><|title|>Resale<|/title|><|para|>\
        Overall, choose by budget.";
    let branches = scripts(&[
        ("1 Cost", "trains cost less.<|/branch|>"),
        ("2 Speed", "planes are faster.<|/branch|>"),
        ("1 Safety", "both are safe.<|/branch|>"),
        ("2 Upkeep", "cars need the most.<|/branch|>"),
        ("3 Resale", "only cars resell"), // ends with EOS, which ASPD accepts as the branch end
    ]);
    let r = run(&spec, trunk, &branches);
    assert!(r.warnings().is_empty(), "{:#?}", r.warnings());
    let forks = r.forks();
    assert_eq!(forks.iter().map(|f| f.1.branches.len()).collect::<Vec<_>>(), vec![2, 3]);
    assert!(r.transcript.contains(
        "<|branch|>Cost: trains cost less.<|/branch|><|branch|>Speed: planes are faster.<|/branch|><|/para|>\nNext"
    ));
    assert!(r.actions.iter().any(|(p, a)| p == "3"
        && *a
            == Action::BranchEnd {
                at: "<|branch|>Resale: only cars resell".len(),
                cause: EndCause::Stream(StreamEnd::Eos)
            }));
    // The EOS-ended branch has no end marker, so the complete text is not well formed there.
    let errors = check(&r.transcript, &spec);
    assert!(!errors.is_empty());
    let fixed = r.transcript.replace("only cars resell", "only cars resell<|/branch|>");
    assert_eq!(check(&fixed, &spec), vec![]);
    let l = layout(&spec, &chars(&fixed));
    let second_fork = fixed.rfind("<|para|>").unwrap() + "<|para|>".len();
    let firsts: Vec<u32> = ["1", "2", "3"]
        .iter()
        .map(|b| l.pieces[second_fork..].iter().find(|p| p.branch.as_deref() == Some(b)).unwrap().pos)
        .collect();
    // ASPD's engine: the branches take the position of the `<|para|>` they fork on, which is
    // never decoded; after the first block the trunk went on at the sum of the branch lengths
    // (plus the last branch token decoded again), where a serial text would be.
    let trigger = fixed.rfind("<|para|>").unwrap();
    assert_eq!(firsts[0], l.pieces[trigger].pos);
    let first_trigger = fixed.find("<|para|>").unwrap();
    let serial_gap = (second_fork - first_trigger) as u32 - 2 * "<|para|>".len() as u32 + 1;
    assert_eq!(l.pieces[trigger].pos - l.pieces[first_trigger].pos, serial_gap);
    assert!(firsts.windows(2).all(|w| w[0] == w[1]), "{firsts:?}");
}

#[test]
fn parallel_r1_threadweaver_and_npr() {
    let cases = [
        (
            "parallel-r1",
            "Two ways to get 7.<Parallel>Both give 7.</Summary> Answer: 7",
            scripts(&[("1 ", " 3+4 = 7</Path>"), ("2 ", " 10-3 = 7</Path>")]),
            "Two ways to get 7.<Parallel><Path> 3+4 = 7</Path><Path> 10-3 = 7</Path></Parallel>\n<Summary>Both give 7.</Summary> Answer: 7",
        ),
        (
            "threadweaver",
            "Check both parities.<Parallel><Outlines><Outline>1: x even</Outline><Outline>2: x odd</Outline></Outlines></Parallel>\nSo the claim holds.",
            scripts(&[("1 x even", " even works.</Thread>"), ("2 x odd", " odd works.</Thread>")]),
            "Check both parities.<Parallel><Outlines><Outline>1: x even</Outline><Outline>2: x odd</Outline></Outlines>\
             \n<Thread>\n1: even works.</Thread><Thread>\n2: odd works.</Thread>\n</Parallel>\nSo the claim holds.",
        ),
        (
            "npr",
            "<guideline><plan>1: left side</plan><plan>2: right side</plan></guideline>Both sides are 6.</takeaway> Done.",
            scripts(&[("1 left side", " 2*3 = 6</step>"), ("2 right side", " 1+5 = 6</step>")]),
            "<guideline><plan>1: left side</plan><plan>2: right side</plan></guideline>\n<step>\n1: 2*3 = 6</step><step>\n2: 1+5 = 6</step>\
             <takeaway>\nBoth sides are 6.</takeaway> Done.",
        ),
    ];
    for (name, trunk, branches, expected) in cases {
        let spec = spec(name);
        let r = run(&spec, trunk, &branches);
        assert!(r.warnings().is_empty(), "{name}: {:#?}", r.warnings());
        assert_eq!(r.transcript, expected, "{name}");
        assert_eq!(check(&r.transcript, &spec), vec![], "{name}");
    }
}

// ----- malformed output: each case's fallback and warning --------------------------------

#[test]
fn no_outlines_before_the_trigger_continues_serially() {
    let spec = checked("multiverse");
    let mut w = Watcher::trunk(&spec);
    let text = "<Parallel><Goal>hmm</Goal>";
    let a = w.feed(text);
    assert!(a.iter().all(|a| !matches!(a, Action::Fork(_))));
    assert_eq!(warning_at(&a, WarningKind::NoAnnouncements), text.find("</Goal>").unwrap());
    assert_eq!(a.last(), Some(&Action::NoFork { start: text.len() - 7, end: text.len() }));
    assert_eq!(w.state().phase, Phase::Fallback);
    assert!(w.banned_strings().is_empty(), "the serial fallback bans nothing");
    // The model writes its paths serially; nothing is flagged until the block closes.
    let a = w.feed("<Path>1: x</Path><Conclusion>y</Conclusion></Parallel>");
    assert!(kinds(&a).is_empty());
    assert!(matches!(a.last(), Some(Action::BlockClosed { .. })));
    assert_eq!(w.state().phase, Phase::Serial);
}

#[test]
fn outline_and_path_counts_and_labels() {
    let spec = checked("multiverse");
    let mut w = Watcher::trunk(&spec);
    let text = "<Parallel><Goal><Outline>1: a</Outline><Outline>3: c</Outline></Goal>";
    let a = w.feed(text);
    assert_eq!(warning_at(&a, WarningKind::LabelsNotConsecutive), text.find("<Outline>3").unwrap());
    let Some(Action::Fork(plan)) = a.last() else { panic!("{a:?}") };
    assert_eq!(plan.branches[1].prefix, "<Path>\n3:", "labels are used as written");

    let bad = "<Parallel><Goal><Outline>1: a</Outline><Outline>2: b</Outline></Goal>\n<Path>\n1: x</Path>\n<Path>\n3: y</Path>\
        <Conclusion>\nz</Conclusion></Parallel>";
    let errors = check(bad, &spec);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message.contains("branch 2"));
    let missing = "x\n<Parallel><Goal><Outline>1: a</Outline><Outline>2: b</Outline></Goal>\n<Path>\n1: x</Path>\
        <Conclusion>\nz</Conclusion></Parallel>";
    let errors = check(missing, &spec);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].line, 2);
    assert!(errors[0].message.contains("2 branch(es) announced, 1 found"));
}

#[test]
fn a_path_that_never_closes_is_closed_at_its_limit() {
    let spec = checked("multiverse");
    let mut t = Watcher::trunk(&spec);
    let a = t.feed("<Parallel><Goal><Outline>1: a</Outline></Goal>");
    let Some(Action::Fork(plan)) = a.last() else { panic!() };
    let mut b = t.child(&plan.branches[0]);
    assert!(b.feed(" and on and on").is_empty());
    let a = b.finish(StreamEnd::Limit);
    assert_eq!(warning_at(&a, WarningKind::BranchNotClosed), b.text().len());
    assert_eq!(a.last(), Some(&Action::BranchEnd { at: b.text().len(), cause: EndCause::Stream(StreamEnd::Limit) }));
    assert_eq!(b.state().phase, Phase::Ended);
    // A complete text that stops inside a path says so too.
    let errors = check("<Parallel><Goal><Outline>1: a</Outline></Goal>\n<Path>\n1: on", &spec);
    assert!(errors.iter().any(|e| e.message.contains("without")), "{errors:?}");
}

#[test]
fn forbidden_tags_in_a_branch_and_stray_closers_in_the_trunk() {
    let spec = checked("multiverse");
    let mut t = Watcher::trunk(&spec);
    let a = t.feed("ok </Path> and </Parallel> then <Conclusion>");
    assert_eq!(kinds(&a), vec![WarningKind::ForbiddenTag; 3]);
    assert_eq!(warning_at(&a, WarningKind::ForbiddenTag), 3);
    let a = t.feed("<Parallel><Goal><Outline>1: a</Outline></Goal>");
    let Some(Action::Fork(plan)) = a.last() else { panic!() };
    let mut b = t.child(&plan.branches[0]);
    let before = b.text().len();
    let a = b.feed(" x <Path> y </Conclusion> z</Path>");
    assert_eq!(kinds(&a), vec![WarningKind::ForbiddenTag; 2]);
    assert_eq!(warning_at(&a, WarningKind::ForbiddenTag), before + 3);
    assert!(matches!(a.last(), Some(Action::BranchEnd { cause: EndCause::Marker, .. })));
}

#[test]
fn nesting_past_the_limit_is_text() {
    // One nested level: a branch of a nested block may not nest again.
    let spec = ProtocolSpec { max_depth: 2, ..checked("multiverse") };
    let mut t = Watcher::trunk(&spec);
    let a = t.feed("<Parallel><Goal><Outline>1: a</Outline></Goal>");
    let Some(Action::Fork(plan)) = a.last() else { panic!() };
    let mut b = t.child(&plan.branches[0]);
    let a = b.feed(" <Parallel><Goal><Outline>1.1: b</Outline></Goal>");
    let Some(Action::Fork(nested)) = a.last() else { panic!("{a:?}") };
    let mut deep = b.child(&nested.branches[0]);
    assert_eq!(deep.stop_strings(), vec!["</Path>"]);
    assert!(deep.banned_strings().contains(&"<Parallel>".to_string()));
    let start = deep.text().len();
    let a = deep.feed(" <Parallel><Goal><Outline>1.1.1: c</Outline></Goal> still text</Path>");
    assert_eq!(kinds(&a), vec![WarningKind::NestingTooDeep; 4]);
    assert_eq!(warning_at(&a, WarningKind::NestingTooDeep), start + 1);
    assert!(!a.iter().any(|a| matches!(a, Action::Fork(_))));
    assert!(matches!(a.last(), Some(Action::BranchEnd { .. })));

    // ASPD does not nest at all.
    let spec = checked("aspd");
    let mut t = Watcher::trunk(&spec);
    let a = t.feed("<|title|>A<|/title|><|para|>");
    let Some(Action::Fork(plan)) = a.last() else { panic!() };
    let mut b = t.child(&plan.branches[0]);
    let a = b.feed("x <|title|>B<|/title|><|para|> y<|/branch|>");
    assert_eq!(kinds(&a), vec![WarningKind::NestingTooDeep; 2]);
}

#[test]
fn more_branches_than_the_cap_are_cut() {
    let spec = checked("multiverse");
    let mut w = Watcher::trunk(&spec).with_branch_cap(3);
    let outlines: String = (1..=5).map(|i| format!("<Outline>{i}: p{i}</Outline>")).collect();
    let text = format!("<Parallel><Goal>{outlines}</Goal>");
    let a = w.feed(&text);
    assert_eq!(warning_at(&a, WarningKind::TooManyBranches), text.find("<Outline>4").unwrap());
    let Some(Action::Fork(plan)) = a.last() else { panic!() };
    assert_eq!(plan.branches.len(), 3);
    assert_eq!(plan.announced, 5);
}

#[test]
fn eos_in_the_middle_of_a_block() {
    let spec = checked("multiverse");
    let mut w = Watcher::trunk(&spec);
    w.feed("<Parallel><Goal><Outline>1: a</Outl");
    let a = w.finish(StreamEnd::Eos);
    assert_eq!(kinds(&a), vec![WarningKind::UnclosedBlock]);
    assert_eq!(warning_at(&a, WarningKind::UnclosedBlock), w.text().len());
    assert_eq!(w.state().phase, Phase::Ended);
    // After a join, ending before the closer is reported too.
    let mut w = Watcher::trunk(&spec);
    w.feed("<Parallel><Goal><Outline>1: a</Outline></Goal>");
    w.joined();
    w.feed("done");
    assert_eq!(kinds(&w.finish(StreamEnd::Eos)), vec![WarningKind::UnclosedBlock]);
}

#[test]
fn thousands_of_outlines() {
    let spec = checked("multiverse");
    let outlines: String = (1..=5000).map(|i| format!("<Outline>{i}: step {i}</Outline>\n")).collect();
    let text = format!("<Parallel><Goal>{outlines}</Goal>");
    let start = std::time::Instant::now();
    let mut w = Watcher::trunk(&spec);
    let mut a = Vec::new();
    for chunk in text.as_bytes().chunks(7) {
        a.extend(w.feed(std::str::from_utf8(chunk).unwrap()));
    }
    assert!(start.elapsed().as_secs() < 10, "took {:?}", start.elapsed());
    let Some(Action::Fork(plan)) = a.last() else { panic!() };
    assert_eq!(plan.branches.len(), spec.max_branches);
    assert_eq!(plan.announced, 5000);
    assert_eq!(kinds(&a), vec![WarningKind::TooManyBranches]);
}

#[test]
fn duplicate_labels_are_dropped() {
    let spec = checked("multiverse");
    let mut w = Watcher::trunk(&spec);
    let text = "<Parallel><Goal><Outline>1: a</Outline><Outline>2: b</Outline><Outline>2: b again</Outline></Goal>";
    let a = w.feed(text);
    assert_eq!(warning_at(&a, WarningKind::DuplicateLabel), text.find("<Outline>2: b again").unwrap());
    let Some(Action::Fork(plan)) = a.last() else { panic!() };
    assert_eq!(plan.branches.iter().map(|b| b.title.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
}

#[test]
fn a_trigger_without_an_opener_still_forks() {
    let spec = checked("multiverse");
    let mut w = Watcher::trunk(&spec);
    let a = w.feed("<Goal><Outline>1: a</Outline><Outline>2: b</Outline></Goal>");
    assert_eq!(kinds(&a), vec![WarningKind::MissingBlockOpen]);
    assert!(matches!(a.last(), Some(Action::Fork(p)) if p.branches.len() == 2));
}

#[test]
fn text_after_the_trigger_in_the_same_piece_is_reported() {
    let spec = checked("multiverse");
    let mut w = Watcher::trunk(&spec);
    let text = "<Parallel><Goal><Outline>1: a</Outline></Goal>\n<Path>";
    let a = w.feed(text);
    assert!(a.iter().any(|a| matches!(a, Action::Fork(_))));
    assert_eq!(warning_at(&a, WarningKind::TextAfterStop), text.find("<Path>").unwrap());
}

#[test]
fn a_new_block_before_the_old_one_closed() {
    let spec = checked("multiverse");
    let mut w = Watcher::trunk(&spec);
    w.feed("<Parallel><Goal><Outline>1: a</Outline></Goal>");
    w.joined();
    let a = w.feed("fine.</Conclusion><Outline>1: b</Outline></Goal>");
    // "<Outline>" after the join is forbidden, then the trigger closes the old block and forks.
    assert_eq!(kinds(&a), vec![WarningKind::ForbiddenTag, WarningKind::UnclosedBlock]);
    assert!(matches!(a.last(), Some(Action::Fork(p)) if p.branches.len() == 1));
}

// ----- structural check ------------------------------------------------------------------

#[test]
fn check_reports_each_multiverse_rule_with_its_line() {
    let spec = checked("multiverse");
    let good = "<Parallel>\n<Goal>\n<Outline>1: a</Outline>\n<Outline>2: b</Outline>\n</Goal>\n<Path>\n1: x</Path>\n<Path>\n2: y</Path>\n<Conclusion>\nz</Conclusion>\n</Parallel>";
    assert_eq!(check(good, &spec), vec![]);
    let cases: &[(&str, usize, &str)] = &[
        (
            "<Parallel>\nhi<Goal><Outline>1: a</Outline></Goal>\n<Path>\n1: x</Path><Conclusion>\nz</Conclusion></Parallel>",
            1,
            "must start with \"<Goal>\"",
        ),
        ("<Parallel><Goal><Outline>1: a</Outline></Goal>\n\nno paths</Parallel>", 1, "at least one branch"),
        (
            "<Parallel><Goal><Outline>1: a</Outline></Goal>\n<Path>\n1: x</Path>\nz</Conclusion></Parallel>",
            3,
            "followed by \"<Conclusion>\"",
        ),
        (
            "<Parallel><Goal><Outline>1: a</Outline></Goal>\n<Path>\n1: x</Path><Conclusion>\nz</Conclusion> more\n</Parallel>",
            4,
            "must be the last part",
        ),
        ("text </Path>\nmore", 1, "not allowed"),
        ("a\nb\n</Parallel>", 3, "not allowed"),
        (
            "<Parallel><Goal><Outline>1: a</Outline><Outline>2: b</Outline></Goal>\n<Path>\n1: \
             <Parallel><Goal><Outline>2.1: c</Outline></Goal>\n<Path>\n2.1: d</Path><Conclusion>\ne</Conclusion></Parallel></Path>\
             \n<Path>\n2: f</Path><Conclusion>\ng</Conclusion></Parallel>",
            3,
            "inside branch \"1\"",
        ),
        ("<Parallel><Goal><Outline>1: a</Outline></Goal>\n<Path>\n1: x</Path><Conclusion>\nz", 4, "inside a block"),
    ];
    for (text, line, needle) in cases {
        let errors = check(text, &spec);
        assert!(
            errors.iter().any(|e| e.line == *line && e.message.contains(needle)),
            "expected line {line} {needle:?} for {text:?}, got {errors:#?}"
        );
    }
}

#[test]
fn deep_nesting_stays_bounded() {
    // The deepest a spec may nest, and a text nested far deeper: the extra levels are text.
    let mut spec = checked("multiverse");
    spec.max_depth = pardec::protocol::MAX_SUPPORTED_DEPTH;
    spec.validate().unwrap();
    let open = "<Parallel><Goal><Outline>1: a</Outline></Goal>\n<Path>\n1:";
    let levels = 2000;
    let text = format!("{}x{}", open.repeat(levels), "</Path><Conclusion>\n</Conclusion></Parallel>".repeat(levels));
    let errors = check(&text, &spec);
    assert!(errors.iter().any(|e| e.message.contains("nest deeper")), "{:?}", &errors[..errors.len().min(3)]);
    let l = layout(&spec, &chars(&text));
    let deepest = l.pieces.iter().filter_map(|p| p.branch.as_ref()).map(|b| b.split('.').count()).max().unwrap();
    assert_eq!(deepest as u32, spec.max_depth);
    // A hand-built spec past the supported depth is clamped, not trusted.
    spec.max_depth = u32::MAX;
    assert!(spec.validate().is_err());
    let _ = check(&text, &spec);
}

/// What Multiverse's engine writes when a path is cut (end of generation: joined without
/// `</Path>`) or keeps a token that is not a newline (`</Path>6<Path>`), as in its released
/// MATH500 transcripts: `check` accepts both, and the layout gives the kept token to its path.
#[test]
fn multiverse_engine_joins_as_the_transcripts_show() {
    let spec = spec("multiverse");
    let cut = "<Parallel>\n<Goal>\n<Outline>\n1: a\n</Outline>\n<Outline>\n2: b\n</Outline>\n</Goal>\n<Path>\n1: x\n</Path>\n\
        <Path>\n2: so \\(\\boxed{294}\\).<Conclusion>\nDone.\n</Conclusion>\n</Parallel>\nEnd.";
    assert_eq!(check(cut, &spec), vec![]);
    let kept = "<Parallel>\n<Goal>\n<Outline>\n1: a\n</Outline>\n<Outline>\n2: b\n</Outline>\n</Goal>\n<Path>\n1: 67.\n</Path>6\
        <Path>\n2: 67.\n</Path>\n<Conclusion>\nSo 6.\n</Conclusion>\n</Parallel>\n";
    assert_eq!(check(kept, &spec), vec![]);
    let l = layout(&spec, &chars(kept));
    let six = kept.find("</Path>6").unwrap() + "</Path>".len();
    assert_eq!(l.pieces[six].branch.as_deref(), Some("1"), "the kept token is its path's");
    assert!(!l.pieces[six + 1].sees(six), "the next path does not see it");
}
