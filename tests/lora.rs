//! LoRA adapters against the oracle: the tiny float32 model with an adapter written here must
//! give the logits of the oracle forward with `W + scale·(alpha/r)·B·A` merged in, and scale 0
//! those of the base model (the negative control: the adapter really changes the logits).
//! Then every wrong file gets its specific error, never an abort.

mod common;

use std::path::{Path, PathBuf};

use common::tiny_model::{max_rel_err, GgufValue, TinyConfig, TinyLora, TinyModel};
use pardec::{Adapter, Error, KvType, Model, ModelParams, NodeId, RunLimits, Session, SessionParams};

const TOL: f64 = 1e-4;
const PROMPT: [i32; 6] = [5, 77, 310, 12, 499, 64];
const GENERATED: usize = 12;
const SCALE: f32 = 0.7;

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pardec-lora-{}-{:?}-{name}", std::process::id(), std::thread::current().id()))
}

struct Fixture {
    tiny: TinyModel,
    lora: TinyLora,
    model: Model,
    adapter_path: PathBuf,
}

fn fixture() -> Fixture {
    let tiny = TinyModel::random(TinyConfig::default());
    let model_path = temp("model.gguf");
    tiny.write_gguf(&model_path).unwrap();
    let lora = TinyLora::random(&tiny, 4, 8.0, 0.5, 7);
    let adapter_path = temp("adapter.gguf");
    lora.write_gguf(&tiny, &adapter_path, "llama").unwrap();
    let model = Model::load(&model_path, &ModelParams::default()).unwrap();
    Fixture { tiny, lora, model, adapter_path }
}

fn params(adapters: Vec<(Adapter, f32)>) -> SessionParams {
    SessionParams {
        n_ctx: 256,
        max_branches: 2,
        n_threads: 2,
        kv_type: KvType::F32,
        record_logits: true,
        adapters,
        ..Default::default()
    }
}

/// The engine's logit rows for a greedy continuation of the prompt, and the tokens.
fn engine_rows(s: &mut Session) -> (Vec<Vec<f32>>, Vec<u32>) {
    s.prompt_tokens(&PROMPT).unwrap();
    s.generate(&RunLimits { max_tokens: GENERATED, ban_eog: true, ..Default::default() }, &mut pardec::Silent).unwrap();
    let rows = s.logit_trace(NodeId::TRUNK).to_vec();
    let mut tokens: Vec<u32> = PROMPT.iter().map(|&t| t as u32).collect();
    tokens.extend(s.node_tokens(NodeId::TRUNK).iter().skip(PROMPT.len()).map(|&t| t as u32));
    (rows, tokens)
}

/// The oracle's rows at the positions that predicted each generated token.
fn oracle_rows(model: &TinyModel, tokens: &[u32]) -> Vec<Vec<f32>> {
    let all = model.causal_forward(tokens);
    all[PROMPT.len() - 1..tokens.len() - 1].to_vec()
}

#[test]
fn adapter_logits_equal_the_merged_oracle_and_scale_zero_the_base() {
    let f = fixture();
    let adapter = Adapter::load(&f.model, &f.adapter_path).unwrap();
    assert_eq!((adapter.rank(), adapter.alpha(), adapter.matrices()), (4, 8.0, 2 * 7));

    let mut s = Session::new(&f.model, params(vec![(adapter.clone(), SCALE)])).unwrap();
    let (rows, tokens) = engine_rows(&mut s);
    assert_eq!(rows.len(), GENERATED);
    let merged = f.lora.merged(&f.tiny, SCALE);
    let err = max_rel_err(&rows, &oracle_rows(&merged, &tokens));
    assert!(err <= TOL, "adapter at {SCALE}: engine vs merged oracle {err:.2e} > {TOL:.0e}");
    let against_base = max_rel_err(&rows, &oracle_rows(&f.tiny, &tokens));
    assert!(against_base > 1e-2, "the adapter barely moved the logits ({against_base:.2e}): the test proves nothing");

    // Scale 0 is the base model; switching adapters on a cleared session takes effect.
    s.set_adapters(&[(adapter.clone(), 0.0)]).unwrap();
    s.clear();
    let (rows, tokens) = engine_rows(&mut s);
    let err = max_rel_err(&rows, &oracle_rows(&f.tiny, &tokens));
    assert!(err <= TOL, "scale 0: engine vs base oracle {err:.2e}");
    let mut base = Session::new(&f.model, params(Vec::new())).unwrap();
    let (base_rows, _) = engine_rows(&mut base);
    assert!(max_rel_err(&rows, &base_rows) <= TOL);
}

#[test]
fn branches_decode_with_the_adapter_too() {
    let f = fixture();
    let adapter = Adapter::load(&f.model, &f.adapter_path).unwrap();
    let mut s = Session::new(&f.model, params(vec![(adapter, SCALE)])).unwrap();
    s.prompt_tokens(&PROMPT).unwrap();
    let specs: Vec<_> = [100, 200]
        .iter()
        .map(|&t| pardec::BranchSpec {
            prefix_tokens: vec![t],
            limits: RunLimits { max_tokens: 6, ban_eog: true, ..Default::default() },
            ..Default::default()
        })
        .collect();
    let branches = s.fork(NodeId::TRUNK, &specs).unwrap();
    s.run(&mut pardec::Silent).unwrap();
    let merged = f.lora.merged(&f.tiny, SCALE);
    for (b, first) in branches.iter().zip([100u32, 200]) {
        // A branch sees the prompt and itself at the positions that follow the prompt.
        let mut tokens: Vec<u32> = PROMPT.iter().map(|&t| t as u32).collect();
        tokens.push(first);
        tokens.extend(s.node_tokens(*b).iter().skip(1).map(|&t| t as u32));
        let all = merged.causal_forward(&tokens);
        let expected = all[PROMPT.len()..tokens.len() - 1].to_vec();
        let err = max_rel_err(s.logit_trace(*b), &expected);
        assert!(err <= TOL, "branch with adapter vs merged oracle {err:.2e}");
    }
}

fn load_err(model: &Model, path: &Path) -> Error {
    Adapter::load(model, path).expect_err("a wrong adapter must be refused")
}

#[test]
fn wrong_files_get_specific_errors() {
    let f = fixture();
    assert!(matches!(load_err(&f.model, &temp("missing.gguf")), Error::ModelNotFound(_)));

    let text = temp("text.gguf");
    std::fs::write(&text, b"not a gguf at all").unwrap();
    assert!(matches!(load_err(&f.model, &text), Error::NotGguf(_)));

    // The model itself is a GGUF but not an adapter.
    assert!(matches!(load_err(&f.model, f.model.path()), Error::NotAdapter(m) if m.contains("general.type")));

    let other_arch = temp("qwen.gguf");
    f.lora.write_gguf(&f.tiny, &other_arch, "qwen2").unwrap();
    assert!(matches!(load_err(&f.model, &other_arch), Error::AdapterMismatch(m) if m.contains("qwen2")));

    // An adapter for a wider model: shapes do not fit.
    let wide = TinyModel::random(TinyConfig { n_ff: 192, ..TinyConfig::default() });
    let wide_lora = TinyLora::random(&wide, 4, 8.0, 0.5, 7);
    let wide_path = temp("wide.gguf");
    wide_lora.write_gguf(&wide, &wide_path, "llama").unwrap();
    assert!(matches!(load_err(&f.model, &wide_path), Error::AdapterMismatch(m) if m.contains("ffn_")));

    // A tensor the model does not have, a pair missing its half, a stray tensor name.
    let write = |name: &str, tensors: Vec<(String, Vec<u64>, &[f32])>| {
        let path = temp(name);
        let kvs = [
            ("general.type", GgufValue::Str("adapter".into())),
            ("general.architecture", GgufValue::Str("llama".into())),
            ("adapter.type", GgufValue::Str("lora".into())),
            ("adapter.lora.alpha", GgufValue::F32(8.0)),
        ];
        common::tiny_model::write_gguf_file(&path, &kvs, &tensors).unwrap();
        path
    };
    let a = vec![0.1f32; 64 * 4];
    let b = vec![0.1f32; 4 * 64];
    let absent = write(
        "absent.gguf",
        vec![
            ("blk.9.attn_q.weight.lora_a".into(), vec![64, 4], &a),
            ("blk.9.attn_q.weight.lora_b".into(), vec![4, 64], &b),
        ],
    );
    assert!(matches!(load_err(&f.model, &absent), Error::AdapterMismatch(m) if m.contains("blk.9")));
    let half = write("half.gguf", vec![("blk.0.attn_q.weight.lora_a".into(), vec![64, 4], &a)]);
    assert!(matches!(load_err(&f.model, &half), Error::NotAdapter(m) if m.contains("lora_b")));
    let stray = write("stray.gguf", vec![("blk.0.attn_q.weight".into(), vec![64, 4], &a)]);
    assert!(matches!(load_err(&f.model, &stray), Error::NotAdapter(_)));
    // An alpha stored as an integer: llama.cpp reads it with gguf_get_val_f32, which would stop
    // the process; refused before llama.cpp sees the file.
    let int_alpha = temp("int-alpha.gguf");
    let kvs = [
        ("general.type", GgufValue::Str("adapter".into())),
        ("general.architecture", GgufValue::Str("llama".into())),
        ("adapter.type", GgufValue::Str("lora".into())),
        ("adapter.lora.alpha", GgufValue::U32(8)),
    ];
    let pair: Vec<(String, Vec<u64>, &[f32])> = vec![
        ("blk.0.attn_q.weight.lora_a".into(), vec![64, 4], &a),
        ("blk.0.attn_q.weight.lora_b".into(), vec![4, 64], &b),
    ];
    common::tiny_model::write_gguf_file(&int_alpha, &kvs, &pair).unwrap();
    assert!(matches!(load_err(&f.model, &int_alpha), Error::NotAdapter(m) if m.contains("float32")));
    let _ = std::fs::remove_file(int_alpha);

    // Truncated: inside the header, then inside the tensor data (llama.cpp's own bounds check).
    let bytes = std::fs::read(&f.adapter_path).unwrap();
    let cut_header = temp("cut-header.gguf");
    std::fs::write(&cut_header, &bytes[..100]).unwrap();
    assert!(matches!(load_err(&f.model, &cut_header), Error::NotAdapter(m) if m.contains("malformed")));
    let cut_data = temp("cut-data.gguf");
    std::fs::write(&cut_data, &bytes[..bytes.len() - 512]).unwrap();
    assert!(matches!(load_err(&f.model, &cut_data), Error::ModelLoad(_)));

    for p in [text, other_arch, wide_path, absent, half, stray, cut_header, cut_data] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn sessions_refuse_foreign_adapters_bad_scales_and_duplicates() {
    let f = fixture();
    let adapter = Adapter::load(&f.model, &f.adapter_path).unwrap();
    // The same file loaded as a second model: its adapters are not this model's.
    let twin = Model::load(f.model.path(), &ModelParams::default()).unwrap();
    let foreign = Adapter::load(&twin, &f.adapter_path).unwrap();
    let refused = |adapters: Vec<(Adapter, f32)>| {
        matches!(Session::new(&f.model, params(adapters)), Err(Error::InvalidArgument(_)))
    };
    assert!(refused(vec![(foreign.clone(), 1.0)]));
    assert!(refused(vec![(adapter.clone(), f32::NAN)]));
    assert!(refused(vec![(adapter.clone(), 1.0), (adapter.clone(), 0.5)]));

    // A refused switch keeps the adapters the session had.
    let mut s = Session::new(&f.model, params(vec![(adapter.clone(), SCALE)])).unwrap();
    assert!(matches!(s.set_adapters(&[(foreign, 1.0)]), Err(Error::InvalidArgument(_))));
    assert_eq!(s.adapters().len(), 1);
    assert_eq!(s.adapters()[0].1, SCALE);
}

#[test]
fn scoring_reads_the_same_rows_the_sampler_sees() {
    // score_tokens gives ln softmax of the rows generation samples from.
    let f = fixture();
    let adapter = Adapter::load(&f.model, &f.adapter_path).unwrap();
    let mut s = Session::new(&f.model, params(vec![(adapter, SCALE)])).unwrap();
    let (rows, tokens) = engine_rows(&mut s);
    s.clear();
    s.prompt_tokens(&PROMPT).unwrap();
    let continuation: Vec<i32> = tokens[PROMPT.len()..].iter().map(|&t| t as i32).collect();
    let scores = s.score_tokens(NodeId::TRUNK, &continuation).unwrap();
    assert_eq!(scores.len(), continuation.len());
    for ((row, &token), score) in rows.iter().zip(&continuation).zip(&scores) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max + row.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
        let expected = row[token as usize] as f64 - lse;
        assert!((expected - *score as f64).abs() < 1e-4, "score {score} vs {expected}");
    }
    // The scored text is now in the trunk, which can go on from there.
    assert_eq!(s.node_tokens(NodeId::TRUNK).len(), PROMPT.len() + continuation.len());
    // A node with nothing to predict its first token from is refused, and loses nothing.
    s.clear();
    assert!(matches!(s.score_tokens(NodeId::TRUNK, &[1, 2]), Err(Error::InvalidState(_))));
    assert!(s.node_tokens(NodeId::TRUNK).is_empty());
}
