//! Training layouts match inference. On the tiny float32 model, a protocol whose control
//! tags are single tokens (the tiny vocabulary renders token t as "<t>") drives a generation
//! through the engine; `protocol::layout` of the resulting token sequence must give the very
//! positions the engine used, and the plain-Rust oracle fed the layout's visibility mask must
//! reproduce every logit row the engine sampled from. Negative control: a plain causal mask
//! over the same tokens does not.

mod common;

use common::tiny_model::{max_rel_err, TinyConfig, TinyModel};
use pardec::protocol::{layout, Announce, ProtocolSpec};
use pardec::{
    BranchSpec, ItemReport, JoinMode, KvType, Model, ModelParams, NodeId, NodeReport, Origin, RunLimits, Session,
    SessionParams, Silent, Token, TokenScript,
};

const TRIGGER: Token = 7;
const BRANCH_OPEN: Token = 8;
const BRANCH_END: Token = 9;
const JOIN: Token = 10;
const CONTROL: [Token; 4] = [TRIGGER, BRANCH_OPEN, BRANCH_END, JOIN];

fn tag(t: Token) -> String {
    format!("<{t}>")
}

/// Three branches per block, opened by the trigger token, each starting with its open tag
/// and ending at its end tag; the join appends the join tag.
fn spec() -> ProtocolSpec {
    let mut s = ProtocolSpec::builtin("parallel-r1").unwrap();
    s.name = "tiny".into();
    s.announce = Announce::Fixed { count: 3 };
    s.trigger = tag(TRIGGER);
    s.branch_open = tag(BRANCH_OPEN);
    s.branch_prefix = tag(BRANCH_OPEN);
    s.branch_end = tag(BRANCH_END);
    s.join_text = tag(JOIN);
    s.summary_open = None;
    s.summary_close = None;
    s.block_close = None;
    s.join_rule = pardec::JoinRule::SameMax; // the engine call below joins with `join`
    s.max_blocks = None;
    s.validate().expect("tiny protocol is valid");
    s
}

/// Branch k writes 6 + 3k tokens of its own, then its end tag.
struct CloseBranches;

impl TokenScript for CloseBranches {
    fn next_token(&mut self, label: &str, text: &str) -> Option<Token> {
        let k: usize = label.parse().ok()?;
        let written = text.matches('<').count(); // one "<id>" per token, prefix included
        (written == 1 + 6 + 3 * k).then_some(BRANCH_END)
    }
}

/// (token, engine position, node, generated) in the order of the flattened text.
fn flatten(n: &NodeReport, out: &mut Vec<(i32, i32, usize, bool)>) {
    for item in &n.items {
        match item {
            ItemReport::Text { origin, first_pos, tokens, .. } => out.extend(
                tokens
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| (t, first_pos + i as i32, n.node, *origin == Origin::Generated)),
            ),
            ItemReport::Block { branches, .. } => branches.iter().for_each(|b| flatten(b, out)),
        }
    }
}

#[test]
fn layout_positions_and_mask_reproduce_the_engine() {
    let tiny = TinyModel::random(TinyConfig::default());
    let path = std::env::temp_dir().join(format!("pardec-layout-{}.gguf", std::process::id()));
    tiny.write_gguf(&path).unwrap();
    let model = Model::load(&path, &ModelParams::default()).unwrap();
    let mut s = Session::new(
        &model,
        SessionParams { n_ctx: 1024, n_threads: 2, kv_type: KvType::F32, record_logits: true, ..Default::default() },
    )
    .unwrap();
    s.set_script(Some(Box::new(CloseBranches)));
    // Generated text never contains a control token unless the script puts it there.
    let free = |n| RunLimits {
        max_tokens: n,
        ban_eog: true,
        banned_tokens: CONTROL.to_vec(),
        stop: vec![],
        ..Default::default()
    };

    s.prompt_tokens(&[5, 77, 310, 12]).unwrap();
    s.generate(&free(5), &mut Silent).unwrap();
    s.append_tokens(NodeId::TRUNK, &[TRIGGER]).unwrap();
    let specs: Vec<BranchSpec> = (0..3)
        .map(|_| BranchSpec {
            prefix_tokens: vec![BRANCH_OPEN],
            limits: RunLimits { stop: vec![tag(BRANCH_END)], ..free(40) },
            ..Default::default()
        })
        .collect();
    s.fork(NodeId::TRUNK, &specs).unwrap();
    s.run(&mut Silent).unwrap();
    s.join(NodeId::TRUNK, JoinMode::All, None).unwrap();
    s.append_tokens(NodeId::TRUNK, &[JOIN]).unwrap();
    s.generate(&free(6), &mut Silent).unwrap();

    let mut flat = Vec::new();
    flatten(&s.transcript().trunk, &mut flat);
    let pieces: Vec<String> = flat.iter().map(|f| tag(f.0)).collect();
    let lay = layout(&spec(), &pieces);
    assert!(lay.warnings.is_empty(), "{:?}", lay.warnings);

    // 1. The layout's position ids are the engine's.
    let engine_pos: Vec<i32> = flat.iter().map(|f| f.1).collect();
    let layout_pos: Vec<i32> = lay.pieces.iter().map(|p| p.pos as i32).collect();
    assert_eq!(layout_pos, engine_pos);
    assert!(lay.pieces.iter().any(|p| p.branch.as_deref() == Some("3")), "three branches laid out");

    // 2. The oracle under the layout's mask reproduces every row the engine sampled from.
    let tokens: Vec<u32> = flat.iter().map(|f| f.0 as u32).collect();
    let rows_for = |oracle: &[Vec<f32>]| {
        let mut engine = Vec::new();
        let mut expect = Vec::new();
        let mut taken = std::collections::HashMap::new();
        let mut last_of_node: std::collections::HashMap<usize, usize> = Default::default();
        for (i, f) in flat.iter().enumerate() {
            if f.3 {
                let k = taken.entry(f.2).or_insert(0usize);
                engine.push(s.logit_trace(NodeId::from_index(f.2))[*k].clone());
                expect.push(oracle[last_of_node[&f.2]].clone());
                *k += 1;
            }
            last_of_node.insert(f.2, i);
            // A branch's first token follows the parent's last one.
            if let Some(&b) = flat.get(i + 1).map(|n| &n.2) {
                if b != f.2 && !last_of_node.contains_key(&b) {
                    last_of_node.insert(b, i);
                }
            }
        }
        max_rel_err(&engine, &expect)
    };
    let oracle = tiny.forward(&tokens, &engine_pos, &|i, j| lay.pieces[i].sees(j));
    let err = rows_for(&oracle);
    println!("engine vs oracle under the layout's mask: {err:.2e}");
    assert!(err <= 1e-3, "the layout's mask does not reproduce the engine: {err:.3e}");

    // Negative control: the same tokens and positions with a plain causal mask.
    let causal = tiny.forward(&tokens, &engine_pos, &|i, j| j <= i);
    let leak = rows_for(&causal);
    println!("negative control (causal mask): {leak:.2e}");
    assert!(leak > 1e-2, "a causal mask matched too: the comparison cannot see the mask");
    let _ = std::fs::remove_file(path);
}
