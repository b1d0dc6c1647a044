//! Conformance with the released engines. For each system, a reference of its own rule —
//! re-implemented here from the system's code (repository, file and function named at each
//! helper), independently of pardec's layout code — gives every character of a sample response
//! its position; pardec's `layout` of the same sample (engine rule by default, `Rule::Train` for
//! the training code's rule) must give the same positions and visibility, and `check` must
//! accept the sample. Negative controls: the layout pardec used before this suite (newline
//! inside the branch prefix, joins at the wrong place) misses each reference.
//!
//! The samples are written for these tests in the exact layout of each system's outputs (tags,
//! newlines, labels); their prose is ours. Sources of the layouts:
//! - Multiverse: ryogishiki-0217/Multiverse `Multiverse/prompts/MATH500_results` (447 of 462
//!   joins read `</Path>\n<Conclusion>\n`; `</Goal>\n<Path>\n1:`; `</Path>\n<Path>\n2:`);
//! - NPR: bigai-nlco/Native-Parallel-Reasoner, the sglang rollout's `"\n<step>\n{label}"` and
//!   `"<takeaway>\n"`;
//! - ThreadWeaver: facebookresearch/threadweaver `single_turn_agent_loop.py` (threads joined
//!   as `\n<Thread>\n1:…</Thread><Thread>\n2:…</Thread>` then `\n`);
//! - Parallel-R1: zhengkid/Parallel-R1 `parallel_thinking_loop_v3.py` (`<Path>` per path,
//!   `</Parallel>`, `\n`, `<Summary>` appended by the loop);
//! - ASPD: TencentYoutuResearch/LLM-ASPD `infer/modeling_qwen2_aspd.py` (`generate_with_parallel`:
//!   titles then `<|para|>`, branches `<|branch|>T: …<|/branch|>`, then `<|/para|>\n`).

mod common;

use common::script::{seg, seg_eos, Script, When};
use common::tiny_model::{ByteVocab, TinyConfig, TinyModel};
use common::transcript::response_pieces;
use pardec::auto::{generate_auto, AutoParams};
use pardec::protocol::{check, layout, layout_text, layout_with, Layout, ProtocolSpec, Rule};
use pardec::{KvType, Model, ModelParams, NodeId, Session, SessionParams, Silent};

const MULTIVERSE: &str = "Let's think in parallel.\n<Parallel>\n<Goal>\n<Outline>\n1: Convert the feet.\n</Outline>\n\
<Outline>\n2: Form the fraction.\n</Outline>\n</Goal>\n<Path>\n1: Two feet are 24 inches.\n</Path>\n<Path>\n2: Three of \
24 is 3/24.\n</Path>\n<Conclusion>\nSo it is 1/8.\n</Conclusion>\n</Parallel>\nThe answer is 1/8.";

const NPR: &str = "Two parts.<guideline><plan>1: left side</plan><plan>2: right side</plan></guideline>\n<step>\n1: \
2*3 = 6</step>\n<step>\n2: 1+5 makes 6</step>\n<takeaway>\nBoth sides are 6.</takeaway> Done.";

const THREADWEAVER: &str = "<think>\nTwo cases.\n<Parallel>\n<Outlines>\n<Outline>1: x even</Outline>\n<Outline>2: x odd\
</Outline>\n</Outlines>\n<Thread>\n1: even works.\n</Thread><Thread>\n2: odd works too.\n</Thread>\n</Parallel>\nSo it holds.";

const PARALLEL_R1: &str = "Two ways.<Parallel><Path>3+4 = 7</Path><Path>10-3 makes 7</Path></Parallel>\n<Summary>Both \
give 7.</Summary> Final Answer: 7";

const ASPD: &str = "Compare them.<|title|>Cost<|/title|><|title|>Speed<|/title|><|para|><|branch|>Cost: trains are \
cheaper.<|/branch|><|branch|>Speed: planes win.<|/branch|><|/para|>\nPick by budget.";

/// pardec's own `titles` format (no released engine: its rule is ASPD's titles-once over
/// single-token tags, joined same-max); only the engine-vs-layout check below applies to it.
const TITLES: &str = "Two tips.<issue_start>Sleep<issue_comment><issue_start>Water<issue_comment><issue_closed>\
<jupyter_start>1. **Sleep**: eight hours.<jupyter_text><jupyter_start>2. **Water**: two litres.<jupyter_text>\
<jupyter_code>\n\nBoth are free.";

fn spec(name: &str) -> ProtocolSpec {
    ProtocolSpec::builtin(name).unwrap()
}

fn chars(text: &str) -> Vec<String> {
    text.chars().map(String::from).collect()
}

/// Character index of the `n`-th (0-based) occurrence of `pat`.
fn nth(text: &str, pat: &str, n: usize) -> usize {
    text.match_indices(pat).nth(n).unwrap_or_else(|| panic!("{pat:?} #{n}")).0
}

/// A reference layout: per character, its position and the characters it sees.
struct Reference {
    pos: Vec<u32>,
    /// Per character, the ranges of characters hidden from it (besides the future).
    hidden: Vec<Vec<std::ops::Range<usize>>>,
}

/// Multiverse-Engine (`schedule_batch.py` `filter_batch`, `scheduler.py`
/// `merge_zombie_batch_to_run`) and NPR's sglang copy of it: with the trigger's last
/// character at G, the shared newline sits at G+1 and every branch starts at G+2; a branch
/// keeps the character after its end marker; the join text starts at max(kept) + 1.
fn fork_and_keep_one(text: &str, trigger: &str, open: &str, close: &str, join: &str) -> Reference {
    let n = text.chars().count();
    let g = nth(text, trigger, 0) + trigger.len() - 1;
    let mut pos: Vec<u32> = (0..n as u32).collect();
    let mut hidden = vec![Vec::new(); n];
    let join_at = nth(text, join, 0);
    let mut branches = Vec::new();
    let mut k = 0;
    while let Some((start, _)) = text.match_indices(open).nth(k).filter(|(s, _)| *s < join_at) {
        let end = nth(text, close, k) + close.len() + 1; // the kept character
        branches.push(start..end);
        k += 1;
    }
    let mut max_end = 0;
    for b in &branches {
        for (i, c) in b.clone().enumerate() {
            pos[c] = (g + 2 + i) as u32;
        }
        max_end = max_end.max(pos[b.end - 1]);
        for c in b.clone() {
            hidden[c] = branches.iter().filter(|o| *o != b).cloned().collect();
        }
    }
    for (k, p) in pos.iter_mut().skip(join_at).enumerate() {
        *p = max_end + 1 + k as u32;
    }
    Reference { pos, hidden }
}

/// Multiverse's `train/utils.py` (`generate_multiverse_position_ids`) and NPR's
/// `npr-beta/train/utils.py`: `<Path>` at G+1 (with the newline before it), the character after
/// a `</Path>` at its position + 1, `<Conclusion>` at max(`</Path>`) + 1.
fn train_shared_start(text: &str, trigger: &str, open: &str, close: &str, join: &str) -> Vec<u32> {
    let n = text.chars().count();
    let g = nth(text, trigger, 0) + trigger.len() - 1;
    let mut pos: Vec<u32> = (0..n as u32).collect();
    let join_at = nth(text, join, 0);
    let mut max_close = 0;
    let mut k = 0;
    while let Some((start, _)) = text.match_indices(open).nth(k).filter(|(s, _)| *s < join_at) {
        let close_end = nth(text, close, k) + close.len();
        for (i, c) in (start..close_end).enumerate() {
            pos[c] = (g + 1 + i) as u32;
        }
        max_close = max_close.max(pos[close_end - 1]);
        pos[close_end] = pos[close_end - 1] + 1; // the separator after it
        k += 1;
    }
    pos[g + 1] = (g + 1) as u32;
    for (k, p) in pos.iter_mut().skip(join_at).enumerate() {
        *p = max_close + 1 + k as u32;
    }
    pos
}

fn assert_matches(name: &str, lay: &Layout, r: &Reference) {
    let pos: Vec<u32> = lay.pieces.iter().map(|p| p.pos).collect();
    assert_eq!(pos, r.pos, "{name}: positions");
    for (i, p) in lay.pieces.iter().enumerate() {
        for j in 0..=i {
            let hidden = r.hidden[i].iter().any(|h| h.contains(&j));
            assert_eq!(p.sees(j), !hidden, "{name}: does character {i} see {j}?");
        }
    }
}

#[test]
fn multiverse_and_npr_layouts_are_their_engines_and_their_training_code() {
    let cases = [
        ("multiverse", MULTIVERSE, "</Goal>", "<Path>", "</Path>", "<Conclusion>"),
        ("npr", NPR, "</guideline>", "<step>", "</step>", "<takeaway>"),
    ];
    for (name, text, trigger, open, close, join) in cases {
        let spec = spec(name);
        assert_eq!(check(text, &spec), vec![], "{name}: the released format is well formed");
        let reference = fork_and_keep_one(text, trigger, open, close, join);
        assert_matches(name, &layout_text(&spec, text), &reference);
        let train = layout_with(&spec, &chars(text), Rule::Train);
        let pos: Vec<u32> = train.pieces.iter().map(|p| p.pos).collect();
        assert_eq!(pos, train_shared_start(text, trigger, open, close, join), "{name}: training positions");
        // Negative control: the layout pardec used before (the newline in the branch prefix,
        // nothing kept after the end marker) misses the engine.
        let mut old = spec.clone();
        old.fork_text = String::new();
        old.branch_prefix = format!("\n{}", spec.branch_prefix);
        old.keep_after_end = 0;
        let old_pos: Vec<u32> = layout_text(&old, text).pieces.iter().map(|p| p.pos).collect();
        assert_ne!(old_pos, reference.pos, "{name}: the old layout must differ");
    }
}

/// ThreadWeaver's rollout and Parallel-R1's loop: branches are decoded from one shared start,
/// then the whole text is read again serially: the continuation sits at its serial index and
/// sees every branch as serial text.
fn reread_reference(text: &str, open: &str, close: &str, fork_at: usize, join_at: usize) -> (Vec<u32>, Vec<u32>) {
    let n = text.chars().count();
    let mut engine: Vec<u32> = (0..n as u32).collect();
    let mut copies = Vec::new();
    let mut k = 0;
    while let Some((start, _)) = text.match_indices(open).nth(k).filter(|(s, _)| *s < join_at) {
        let end = nth(text, close, k) + close.len();
        for (i, c) in (start..end).enumerate() {
            engine[c] = (fork_at + i) as u32;
            if k > 0 {
                copies.push(c as u32); // re-read at its serial position
            }
        }
        k += 1;
    }
    (engine, copies)
}

#[test]
fn threadweaver_and_parallel_r1_reread_their_branches() {
    let cases = [
        ("threadweaver", THREADWEAVER, "<Thread>", "</Thread>", "</Outlines>\n", "</Thread>\n</Parallel>"),
        ("parallel-r1", PARALLEL_R1, "<Path>", "</Path>", "<Parallel>", "</Parallel>"),
    ];
    for (name, text, open, close, fork_after, join_before) in cases {
        let spec = spec(name);
        assert_eq!(check(text, &spec), vec![], "{name}: the released format is well formed");
        let fork_at = nth(text, fork_after, 0) + fork_after.len();
        let join_at = text.rfind(join_before).unwrap() + close.len().min(join_before.len());
        let (engine, copies) = reread_reference(text, open, close, fork_at, join_at);
        let lay = layout_text(&spec, text);
        let pos: Vec<u32> = lay.pieces.iter().map(|p| p.pos).collect();
        assert_eq!(pos, engine, "{name}: positions");
        let copy_pos: Vec<u32> = lay.copies.iter().map(|c| c.layout.pos).collect();
        assert_eq!(copy_pos, copies, "{name}: the re-read sits at serial positions");
        // The continuation sees the first branch and the copies, not the isolated originals.
        let last = lay.pieces.last().unwrap();
        let second = nth(text, open, 1);
        assert!(!last.sees(second) && last.sees(text.chars().count()), "{name}: continuation view");
        // Negative control: joining at max + 1 instead of re-reading.
        let same_max = ProtocolSpec { join_rule: pardec::JoinRule::SameMax, ..spec.clone() };
        let pos: Vec<u32> = layout_text(&same_max, text).pieces.iter().map(|p| p.pos).collect();
        assert_ne!(pos, engine, "{name}: a same-max join must differ");
    }
}

#[test]
fn training_rules_of_threadweaver_and_parallel_r1() {
    // ThreadWeaver's prefix tree: the text serially, plus isolated copies of later threads.
    let tw = spec("threadweaver");
    let lay = layout_with(&tw, &chars(THREADWEAVER), Rule::Train);
    let n = THREADWEAVER.chars().count() as u32;
    assert_eq!(lay.pieces.iter().map(|p| p.pos).collect::<Vec<_>>(), (0..n).collect::<Vec<_>>());
    let fork_at = (nth(THREADWEAVER, "</Outlines>\n", 0) + "</Outlines>\n".len()) as u32;
    assert_eq!(lay.copies.first().map(|c| c.layout.pos), Some(fork_at), "copies start where the engine forks");
    // Parallel-R1's SFT dataset: same-max, `</Parallel>` one past the longest path.
    let pr1 = spec("parallel-r1");
    let lay = layout_with(&pr1, &chars(PARALLEL_R1), Rule::Train);
    let p = nth(PARALLEL_R1, "<Parallel>", 0) + "<Parallel>".len() - 1;
    let longest = "<Path>10-3 makes 7</Path>".len();
    let close = nth(PARALLEL_R1, "</Parallel>", 0);
    assert_eq!(lay.pieces[close].pos as usize, p + longest + 1);
}

/// ASPD's `generate_with_parallel`: `<|para|>` (text index P) is never fed; branch token k sits
/// at P + k and sees the trunk before P and itself; after the block the last branch's last
/// token is fed again at P + S (S: every branch token), then `<|/para|>` at P + S + 1, and
/// everything after sees every cell but `<|para|>`.
#[test]
fn aspd_layout_is_its_engine() {
    let spec = spec("aspd");
    let text = ASPD;
    assert_eq!(check(text, &spec), vec![]);
    let n = text.chars().count();
    let p = nth(text, "<|para|>", 0);
    let para = p..p + "<|para|>".len();
    let join = nth(text, "<|/para|>", 0);
    let branches: Vec<std::ops::Range<usize>> =
        (0..2).map(|k| nth(text, "<|branch|>", k)..nth(text, "<|/branch|>", k) + "<|/branch|>".len()).collect();
    let s: usize = branches.iter().map(|b| b.len()).sum();
    let mut pos: Vec<u32> = (0..n as u32).collect();
    for b in &branches {
        for (k, c) in b.clone().enumerate() {
            pos[c] = (p + k) as u32;
        }
    }
    for (k, x) in pos.iter_mut().skip(join).enumerate() {
        *x = (p + s + 1 + k) as u32;
    }
    let lay = layout_text(&spec, text);
    assert_eq!(lay.pieces.iter().map(|x| x.pos).collect::<Vec<_>>(), pos, "positions");
    assert_eq!(lay.copies.len(), 1, "the repeated token");
    assert_eq!((lay.copies[0].of, lay.copies[0].layout.pos), (branches[1].end - 1, (p + s) as u32));
    let first_branch = branches[0].start;
    assert!(!lay.pieces[first_branch].sees(para.start) && lay.pieces[first_branch].sees(para.start - 1));
    assert!(!lay.pieces[branches[1].start].sees(first_branch), "siblings apart");
    let last = lay.pieces.last().unwrap();
    assert!(!last.sees(para.start) && last.sees(first_branch) && last.sees(n), "continuation view");
    // Negative control: the layout pardec used before (`<|para|>` in the cache, max + 1).
    let old = ProtocolSpec {
        trigger_in_cache: true,
        join_repeats_last: false,
        join_rule: pardec::JoinRule::SameMax,
        ..spec.clone()
    };
    let old_pos: Vec<u32> = layout_text(&old, text).pieces.iter().map(|x| x.pos).collect();
    assert_ne!(old_pos, pos);
    // The training code as designed (POSID_MODE=normal): `<|para|>` in the text, branches
    // from P + 1, `<|/para|>` at P + 1 + S.
    let train = layout_with(&spec, &chars(text), Rule::Train);
    let para_end = para.end as u32;
    assert_eq!(train.pieces[branches[0].start].pos, para_end);
    assert_eq!(train.pieces[join].pos as usize, para.end + s);
}

// ----- through the engine ------------------------------------------------------------------
//
// The tiny float32 model with a byte-level vocabulary in which every tag of every built-in is
// one token: a scripted sampler writes exactly what the model writes in each sample (the
// engine inserts the rest), so the engine's transcript must be the sample, byte for byte, and
// the positions it decoded at must be `layout`'s (which the references above pin down).

fn byte_model() -> (Model, std::path::PathBuf) {
    let mut specials: Vec<String> = Vec::new();
    for name in ProtocolSpec::builtin_names() {
        for t in spec(name).tags() {
            if !specials.iter().any(|s| s == t) {
                specials.push(t.to_string());
            }
        }
    }
    let vocab = ByteVocab { specials };
    let tiny = TinyModel::random(TinyConfig { n_vocab: vocab.n_vocab(), ..TinyConfig::default() });
    let path = std::env::temp_dir().join(format!("pardec-conformance-{}.gguf", std::process::id()));
    tiny.write_gguf_bytes(&path, &vocab).unwrap();
    (Model::load(&path, &ModelParams::default()).unwrap(), path)
}

/// Runs `spec` under `script` after a short prompt; the response text, its tokens' bytes and
/// the positions the engine decoded them at.
fn run_engine(model: &Model, spec: &ProtocolSpec, script: Script) -> (String, Vec<Vec<u8>>, Vec<u32>) {
    let params = SessionParams {
        n_ctx: 2048,
        n_threads: 2,
        kv_type: KvType::F32,
        max_branches: 8,
        max_depth: 6,
        ..Default::default()
    };
    let mut s = Session::new(model, params).unwrap();
    s.prompt("Q:\n").unwrap();
    let prompt_tokens = s.node_tokens(NodeId::TRUNK).len();
    let prompt_len = s.transcript().text.len();
    s.set_script(Some(Box::new(script)));
    let auto = AutoParams { max_tokens: 400, max_branch_tokens: 200, ..Default::default() };
    generate_auto(&mut s, spec, &auto, &mut Silent).unwrap();
    let t = s.transcript();
    let (pieces, pos) = response_pieces(model, &t, prompt_tokens);
    let pos = pos.into_iter().map(|p| p as u32).collect();
    (t.text[prompt_len..].to_string(), pieces, pos)
}

/// What the model writes in each sample, per stream ("" is the trunk).
fn scripts(model: &Model, name: &str) -> Script {
    let at = |s: &str| When::EndsWith(s.to_string());
    let segments = match name {
        "multiverse" => vec![
            ("", vec![
                seg(When::Start, "Let's think in parallel.\n<Parallel>\n<Goal>\n<Outline>\n1: Convert the feet.\n</Outline>\n<Outline>\n2: Form the fraction.\n</Outline>\n</Goal>"),
                seg_eos(at("<Conclusion>\n"), "So it is 1/8.\n</Conclusion>\n</Parallel>\nThe answer is 1/8."),
            ]),
            ("1", vec![seg(When::Start, " Two feet are 24 inches.\n</Path>"), seg(at("</Path>"), "\n")]),
            ("2", vec![seg(When::Start, " Three of 24 is 3/24.\n</Path>"), seg(at("</Path>"), "\n")]),
        ],
        "npr" => vec![
            ("", vec![
                seg(When::Start, "Two parts.<guideline><plan>1: left side</plan><plan>2: right side</plan></guideline>"),
                seg_eos(at("<takeaway>\n"), "Both sides are 6.</takeaway> Done."),
            ]),
            ("1", vec![seg(When::Start, " 2*3 = 6</step>"), seg(at("</step>"), "\n")]),
            ("2", vec![seg(When::Start, " 1+5 makes 6</step>"), seg(at("</step>"), "\n")]),
        ],
        "threadweaver" => vec![
            ("", vec![
                seg(When::Start, "<think>\nTwo cases.\n<Parallel>\n<Outlines>\n<Outline>1: x even</Outline>\n<Outline>2: x odd</Outline>\n</Outlines>"),
                seg_eos(at("</Outlines>\n\n"), "</Parallel>\nSo it holds."),
            ]),
            ("1", vec![seg(When::Start, " even works.\n</Thread>")]),
            ("2", vec![seg(When::Start, " odd works too.\n</Thread>")]),
        ],
        "parallel-r1" => vec![
            ("", vec![
                seg(When::Start, "Two ways.<Parallel>"),
                seg_eos(at("<Summary>"), "Both give 7.</Summary> Final Answer: 7"),
            ]),
            ("1", vec![seg(When::Start, "3+4 = 7</Path>")]),
            ("2", vec![seg(When::Start, "10-3 makes 7</Path>")]),
        ],
        "aspd" => vec![
            ("", vec![
                seg(When::Start, "Compare them.<|title|>Cost<|/title|><|title|>Speed<|/title|><|para|>"),
                seg_eos(at("<|/para|>\n"), "Pick by budget."),
            ]),
            ("1", vec![seg(When::Start, "trains are cheaper.<|/branch|>")]),
            ("2", vec![seg(When::Start, "planes win.<|/branch|>")]),
        ],
        "titles" => vec![
            ("", vec![
                seg(When::Start, "Two tips.<issue_start>Sleep<issue_comment><issue_start>Water<issue_comment><issue_closed>"),
                seg_eos(at("<jupyter_code>"), "\n\nBoth are free."),
            ]),
            ("1", vec![seg(When::Start, " eight hours.<jupyter_text>")]),
            ("2", vec![seg(When::Start, " two litres.<jupyter_text>")]),
        ],
        _ => unreachable!(),
    };
    Script::new(model, segments)
}

#[test]
fn the_engine_writes_each_sample_exactly_at_its_layout_positions() {
    let (model, path) = byte_model();
    assert_eq!(model.tokenize("<Path>\n1:", false).unwrap().len(), 4, "a tag is one token, a byte one token");
    let samples = [
        ("multiverse", MULTIVERSE),
        ("npr", NPR),
        ("threadweaver", THREADWEAVER),
        ("parallel-r1", PARALLEL_R1),
        ("aspd", ASPD),
        ("titles", TITLES),
    ];
    for (name, sample) in samples {
        let spec = spec(name);
        let (text, pieces, pos) = run_engine(&model, &spec, scripts(&model, name));
        assert_eq!(text, sample, "{name}: the engine's text");
        let lay = layout(&spec, &pieces);
        assert_eq!(lay.pieces.iter().map(|p| p.pos).collect::<Vec<_>>(), pos, "{name}: engine positions vs layout");
    }
    // Negative control: Multiverse with the prefix pardec used before (newline inside it, no
    // token kept after `</Path>`) does not write the sample.
    let old = ProtocolSpec {
        fork_text: String::new(),
        branch_prefix: "\n<Path>\n{label}:".into(),
        keep_after_end: 0,
        ..spec("multiverse")
    };
    let (text, _, _) = run_engine(&model, &old, scripts(&model, "multiverse"));
    assert_ne!(text, MULTIVERSE);
    let _ = std::fs::remove_file(path);
}
