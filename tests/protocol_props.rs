//! Property tests of the protocol watcher and parsers over random and adversarial streams:
//! nothing panics or hangs, the decisions do not depend on how the text is split, the watcher
//! changes state exactly where a stop-string engine stops, forks respect the cap, and layouts
//! never let siblings see each other.

mod protocol_harness;

use std::collections::HashMap;

use pardec::protocol::{
    check, layout, layout_text, parse_announcements, Action, ProtocolSpec, SkeletonFormat, StreamEnd, SubSearchFormat,
    Watcher,
};
use proptest::prelude::*;
use protocol_harness::{feed_split, replay};

fn spec_named(i: usize) -> ProtocolSpec {
    let names = ProtocolSpec::builtin_names();
    ProtocolSpec::builtin(names[i % names.len()]).unwrap()
}

/// Fragments an adversarial stream is made of: control strings, their truncations, the
/// protocol's own prefix and join texts, labels, and arbitrary text.
fn fragments(spec: &ProtocolSpec) -> Vec<String> {
    let mut tags: Vec<String> = vec![
        spec.trigger.clone(),
        spec.branch_open.clone(),
        spec.branch_end.clone(),
        spec.join_text.clone(),
        spec.render_prefix(0, "1", "t"),
        spec.render_prefix(1, "2.1", "u"),
    ];
    tags.extend(spec.block_open.clone());
    tags.extend(spec.plan_open.clone());
    tags.extend(spec.summary_open.clone());
    tags.extend(spec.summary_close.clone());
    tags.extend(spec.block_close.clone());
    if let pardec::protocol::Announce::Tagged { open, close, .. } = &spec.announce {
        tags.push(open.clone());
        tags.push(close.clone());
        for label in ["1", "2", "3", "2.1", "1.1", "1.1.1", "01", "x"] {
            tags.push(format!("{open}{label}: step{close}"));
        }
    }
    let mut out = tags.clone();
    for t in &tags {
        let cut: Vec<usize> = t.char_indices().map(|(i, _)| i).skip(1).collect();
        for c in cut.iter().step_by(2) {
            out.push(t[..*c].to_string());
        }
    }
    out.extend(["1:", " 2 :", "\n", " ", "<", ">", "</", "é", "漢字", "🙂", "\u{0}", "text "].map(String::from));
    out
}

/// An adversarial text for `spec` from fragment choices and free text.
fn soup(spec: &ProtocolSpec, picks: &[(usize, String)]) -> String {
    let frags = fragments(spec);
    let mut s = String::new();
    for (i, free) in picks {
        if i % 4 == 3 {
            s.push_str(free);
        } else {
            s.push_str(&frags[i % frags.len()]);
        }
    }
    s
}

fn picks() -> impl Strategy<Value = Vec<(usize, String)>> {
    prop::collection::vec((any::<usize>(), "\\PC{0,6}"), 0..60)
}

fn actions_of(spec: &ProtocolSpec, text: &str, cuts: &[usize], branch: bool) -> Vec<Action> {
    let mut w = watcher(spec, branch);
    let mut a = feed_split(&mut w, text, cuts);
    a.extend(w.finish(StreamEnd::Limit));
    a
}

/// A trunk watcher, or one for the first branch of a one-branch fork.
fn watcher(spec: &ProtocolSpec, branch: bool) -> Watcher {
    let mut t = Watcher::trunk(spec);
    if !branch {
        return t;
    }
    let opener = spec.block_open.clone().unwrap_or_default();
    let announce = match &spec.announce {
        pardec::protocol::Announce::Tagged { open, close, .. } => format!("{open}1: a{close}"),
        _ => String::new(),
    };
    let plan = t
        .feed(&format!("{opener}{announce}{}", spec.trigger))
        .into_iter()
        .find_map(|a| if let Action::Fork(p) = a { Some(p) } else { None })
        .expect("a well-formed block forks");
    t.child(&plan.branches[0])
}

/// A case proptest found (2026-12-04): the last piece of a Parallel-R1 summary opener sees
/// itself and the re-read paths, one merged range across the end of the pieces.
#[test]
fn the_last_piece_may_see_itself_and_the_copies_in_one_range() {
    let spec = ProtocolSpec::builtin("parallel-r1").unwrap();
    let text = "<Parallel><Path></Path><Path></Path><Summary>";
    let l = layout_text(&spec, text);
    let n = l.pieces.len();
    let last = &l.pieces[n - 1];
    assert!(last.visible.iter().any(|r| r.start < n && r.end > n), "{:?}", last.visible);
    assert!(last.sees(n - 1) && last.sees(n));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// Same actions however the text is cut into pieces (tags split at every offset).
    #[test]
    fn decisions_do_not_depend_on_the_split(
        which in 0usize..5, picks in picks(), cuts in prop::collection::vec(0usize..2000, 0..40), branch in any::<bool>()
    ) {
        let spec = spec_named(which);
        let text = soup(&spec, &picks);
        let whole = actions_of(&spec, &text, &[], branch);
        let split = actions_of(&spec, &text, &cuts, branch);
        prop_assert_eq!(&whole, &split);
        let every_byte: Vec<usize> = (0..text.len()).collect();
        prop_assert_eq!(&whole, &actions_of(&spec, &text, &every_byte, branch));
        // Positions stay inside the text.
        let len = watcher(&spec, branch).text().len() + text.len();
        for a in &whole {
            let at = match a {
                Action::Warning(w) => w.at,
                Action::BranchEnd { at, .. } | Action::TrunkEnd { at } => *at,
                Action::Fork(p) => p.trigger_end,
                Action::NoFork { end, .. } => *end,
                Action::BlockOpened { end, .. } | Action::BlockClosed { end, .. } => *end,
            };
            prop_assert!(at <= len);
        }
    }

    /// Driven like the engine (one character per token, restarted at every stop string), the
    /// watcher changes state exactly where the engine stops; forks respect the cap.
    #[test]
    fn watcher_agrees_with_a_stop_string_engine(
        which in 0usize..5, trunk in picks(), branches in prop::collection::vec(picks(), 1..6), cap in 0usize..6
    ) {
        let spec = spec_named(which);
        let trunk = soup(&spec, &trunk);
        let scripts: Vec<String> = branches.iter().map(|p| soup(&spec, p)).collect();
        let script = |b: &pardec::protocol::BranchPlan| {
            let h = b.path.bytes().fold(b.depth as usize, |h, c| h.wrapping_mul(31).wrapping_add(c as usize));
            scripts[h % scripts.len()].clone()
        };
        let r = replay(&spec, &trunk, &script, Some(cap));
        prop_assert!(r.stop_mismatches.is_empty(), "{:#?}", r.stop_mismatches);
        for (_, f) in r.forks() {
            prop_assert!(!f.branches.is_empty() && f.branches.len() <= cap.min(spec.max_branches));
            prop_assert!(f.depth <= spec.max_depth);
        }
    }

    /// Arbitrary bytes never break anything.
    #[test]
    fn arbitrary_bytes_never_panic(
        which in 0usize..5, bytes in prop::collection::vec(any::<u8>(), 0..600), cuts in prop::collection::vec(0usize..600, 0..20)
    ) {
        let spec = spec_named(which);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        for branch in [false, true] {
            let _ = actions_of(&spec, &text, &cuts, branch);
        }
        let _ = check(&text, &spec);
        let l = layout_text(&spec, &text);
        prop_assert_eq!(l.pieces.len(), text.chars().count());
        let _ = parse_announcements(&spec, &text);
        let _ = SkeletonFormat::sot().parse(&text);
        let _ = SubSearchFormat::apr().parse_calls(&text, 8);
    }

    /// Layout invariants on adversarial texts and arbitrary pieces.
    #[test]
    fn layouts_are_causal_and_consecutive(
        which in 0usize..5, picks in picks(), cuts in prop::collection::vec(0usize..2000, 0..30)
    ) {
        let spec = spec_named(which);
        let text = soup(&spec, &picks);
        let l = layout_text(&spec, &text);
        let n = l.pieces.len();
        for (i, p) in l.pieces.iter().enumerate() {
            prop_assert!(p.sees(i));
            // Pieces before it, or copies (re-read pieces, indexed after every piece). The last
            // piece's own range may run on into the copies: adjacent ranges are merged.
            prop_assert!(p.visible.iter().all(|r| r.start < r.end && (r.start >= n || r.end.min(n) <= i + 1)));
            prop_assert!(p.visible.windows(2).all(|w| w[0].end < w[1].start));
            prop_assert!(p.pos as usize <= i);
            if i > 0 && l.pieces[i - 1].branch == p.branch {
                if spec.trigger_in_cache {
                    prop_assert_eq!(p.pos, l.pieces[i - 1].pos + 1);
                } else {
                    // After a trigger kept out of the cache the stream may restart at its place.
                    prop_assert!(p.pos <= l.pieces[i - 1].pos + 1);
                }
            }
        }
        for c in &l.copies {
            prop_assert!(c.of < n && c.layout.visible.iter().all(|r| r.start < r.end));
        }
        // Any cut into pieces: same number of pieces out, still causal.
        let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(text.len())).filter(|&c| text.is_char_boundary(c)).collect();
        points.push(0);
        points.push(text.len());
        points.sort_unstable();
        points.dedup();
        let pieces: Vec<&str> = points.windows(2).map(|w| &text[w[0]..w[1]]).collect();
        let l = layout(&spec, &pieces);
        prop_assert_eq!(l.pieces.len(), pieces.len());
        for (i, p) in l.pieces.iter().enumerate() {
            prop_assert!(p.sees(i) && p.visible.last().is_some_and(|r| r.end == i + 1));
        }
    }

    /// Well-formed nested Multiverse texts: the check passes, an engine-like replay rebuilds the
    /// same text with no warning, and the layout keeps siblings apart with Same-Max positions.
    #[test]
    fn well_formed_trees_round_trip(seed in any::<u64>()) {
        let spec = ProtocolSpec::builtin("multiverse").unwrap();
        let mut rng = Rng(seed);
        let tree = gen_stream(&mut rng, 0);
        let mut scripts = HashMap::new();
        let full = render(&tree, "", 0, &mut scripts);
        let errors = check(&full, &spec);
        prop_assert!(errors.is_empty(), "{:#?}\n{}", errors, full);

        let trunk_script = scripts.remove("").unwrap();
        let r = replay(&spec, &trunk_script, &|b| scripts.get(&b.path).cloned().unwrap_or_default(), None);
        prop_assert!(r.stop_mismatches.is_empty());
        prop_assert!(r.warnings().is_empty(), "{:#?}", r.warnings());
        prop_assert_eq!(&r.transcript, &full);

        let l = layout_text(&spec, &full);
        prop_assert!(l.warnings.is_empty());
        let label = |i: usize| l.pieces[i].branch.clone().unwrap_or_default();
        let is_under = |a: &str, b: &str| b.is_empty() || a == b || a.starts_with(&format!("{b}."));
        for i in 0..l.pieces.len() {
            for j in 0..i {
                let (p, q) = (label(i), label(j));
                // Labels are unique here (one block per stream): related = ancestor, self or
                // descendant (a descendant's pieces are earlier only after its join).
                let related = is_under(&p, &q) || is_under(&q, &p);
                prop_assert_eq!(l.pieces[i].sees(j), related, "piece {} ({:?}) / {} ({:?})", i, p, j, q);
            }
        }
        // Branches start right after their parent's last piece before the fork; the parent
        // resumes at max(branch end) + 1.
        let mut first: HashMap<String, usize> = HashMap::new();
        let mut last: HashMap<String, usize> = HashMap::new();
        for i in 0..l.pieces.len() {
            first.entry(label(i)).or_insert(i);
            last.insert(label(i), i);
        }
        for (b, &f) in &first {
            if b.is_empty() { continue; }
            let parent = parent_of(b);
            let before = (0..f).rev().find(|&j| label(j) == parent).unwrap();
            prop_assert_eq!(l.pieces[f].pos, l.pieces[before].pos + 1);
            let siblings: Vec<&String> = first.keys().filter(|k| !k.is_empty() && parent_of(k) == parent).collect();
            let resume = (last[b] + 1..l.pieces.len()).find(|&j| label(j) == parent);
            if let Some(resume) = resume {
                if siblings.iter().all(|s| last[*s] < resume) {
                    let max_end = siblings.iter().map(|s| l.pieces[last[*s]].pos).max().unwrap();
                    prop_assert_eq!(l.pieces[resume].pos, max_end + 1);
                }
            }
        }
    }
}

fn parent_of(label: &str) -> String {
    label.rsplit_once('.').map_or(String::new(), |(p, _)| p.to_string())
}

// ----- a generator of well-formed Multiverse trees ----------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn text(&mut self) -> String {
        const ALPHABET: &[&str] = &["a", "b", "7", " ", "\n", ":", ".", "é", "漢", "🙂", "x y", "/", "P"];
        (0..self.below(8)).map(|_| ALPHABET[self.below(ALPHABET.len() as u64) as usize]).collect()
    }
}

struct Stream {
    pre: String,
    block: Option<Block>,
    post: String,
}

struct Block {
    goal: String,
    titles: Vec<String>,
    children: Vec<Stream>,
    conclusion: String,
}

/// A stream at `depth` (0 = trunk); multiverse lets depth-0 and depth-1 streams fork.
fn gen_stream(rng: &mut Rng, depth: u32) -> Stream {
    let block = (depth < 2 && rng.below(3) > 0).then(|| {
        let n = 1 + rng.below(3) as usize;
        Block {
            goal: rng.text(),
            titles: (0..n).map(|_| rng.text()).collect(),
            children: (0..n).map(|_| gen_stream(rng, depth + 1)).collect(),
            conclusion: rng.text(),
        }
    });
    Stream { pre: rng.text(), block, post: rng.text() }
}

/// The full text of a stream (labelled `label`), and each stream's script (what it
/// generates itself) into `scripts`.
fn render(s: &Stream, label: &str, depth: u32, scripts: &mut HashMap<String, String>) -> String {
    let mut full = s.pre.clone();
    let mut own = s.pre.clone();
    if let Some(b) = &s.block {
        let child_label = |i: usize| if label.is_empty() { (i + 1).to_string() } else { format!("{label}.{}", i + 1) };
        let head: String = format!(
            "<Parallel><Goal>{}{}</Goal>",
            b.goal,
            b.titles
                .iter()
                .enumerate()
                .map(|(i, t)| format!("<Outline>{}: {t}</Outline>", child_label(i)))
                .collect::<String>()
        );
        full.push_str(&head);
        own.push_str(&head);
        for (i, c) in b.children.iter().enumerate() {
            // The newline after `</Goal>` is the block's own, once (Multiverse's fork text).
            let lead = if i == 0 { "\n" } else { "" };
            full.push_str(&format!("{lead}<Path>\n{}:", child_label(i)));
            full.push_str(&render(c, &child_label(i), depth + 1, scripts));
        }
        let tail = format!("{}</Conclusion></Parallel>", b.conclusion);
        full.push_str("<Conclusion>\n");
        full.push_str(&tail);
        own.push_str(&tail);
    }
    full.push_str(&s.post);
    own.push_str(&s.post);
    if depth > 0 {
        full.push_str("</Path>");
        own.push_str("</Path>");
    }
    scripts.insert(label.to_string(), own);
    full
}
