//! The tiny-model test fixture checked against llama.cpp itself: the GGUF writer produces a
//! file llama.cpp loads, and the plain-Rust oracle reproduces llama.cpp's logits for plain
//! causal decoding — while a wrong position or a leaky mask visibly does not.

mod common;

use std::num::NonZeroU32;
use std::path::PathBuf;

use common::tiny_model::{max_rel_err, TinyConfig, TinyModel};
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

/// Agreement required between llama.cpp (f32, flash attention off) and the oracle (f64).
const MATCH_TOL: f64 = 1e-3;
/// Agreement required with flash attention on, where K and V pass through f16.
const MATCH_TOL_FLASH: f64 = 5e-3;
/// Disagreement required of a deliberately wrong oracle run.
const MISMATCH_MIN: f64 = 1e-2;

/// Fixed pseudo-random token ids (an LCG, so the sequence never changes).
fn test_tokens(n: usize, n_vocab: usize) -> Vec<u32> {
    let mut s: u64 = 0x2545_F491_4F6C_DD1D;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % n_vocab as u64) as u32
        })
        .collect()
}

fn temp_gguf_path() -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!("pardec-tiny-{}-{nanos}.gguf", std::process::id()))
}

/// Decodes `tokens` at positions 0..n as one sequence in a single batch and returns every
/// token's logits.
///
/// `flash_attn` matters for precision: with flash attention on (llama.cpp's default policy
/// "auto" turns it on for the CPU backend), llama.cpp casts an F32 K/V cache to F16 before
/// `ggml_flash_attn_ext` (src/llama-graph.cpp, build_attn_mha), so K and V are rounded to
/// f16 and the logits drift by ~1e-3 relative. With it off, everything stays f32.
fn llama_cpp_causal_logits(model: &TinyModel, tokens: &[u32], flash_attn: bool) -> Vec<Vec<f32>> {
    let path = temp_gguf_path();
    model.write_gguf(&path).expect("write gguf");
    let backend = pardec::backend().expect("llama.cpp backend");
    let loaded = LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default());
    let _ = std::fs::remove_file(&path);
    let llm = loaded.expect("llama.cpp rejected the tiny GGUF (run with PARDEC_LLAMA_LOG=1)");
    assert_eq!(llm.n_vocab() as usize, model.cfg.n_vocab, "vocab size as llama.cpp sees it");

    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(512))
        .with_kv_unified(true)
        .with_type_k(KvCacheType::F32)
        .with_type_v(KvCacheType::F32)
        .with_n_threads(2)
        .with_n_threads_batch(2)
        .with_flash_attention_policy(if flash_attn {
            llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED
        } else {
            llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED
        });
    let mut ctx = llm.new_context(backend, params).expect("context");
    let mut batch = LlamaBatch::new(tokens.len(), 1);
    for (i, &t) in tokens.iter().enumerate() {
        batch.add(LlamaToken::new(t as i32), i as i32, &[0], true).expect("batch add");
    }
    ctx.decode(&mut batch).expect("decode");
    (0..tokens.len()).map(|i| ctx.get_logits_ith(i as i32).to_vec()).collect()
}

#[test]
fn oracle_matches_llama_cpp_on_causal_decoding() {
    let model = TinyModel::random(TinyConfig::default());
    let tokens = test_tokens(40, model.cfg.n_vocab);
    let n = tokens.len();

    let got = llama_cpp_causal_logits(&model, &tokens, false);
    let want = model.causal_forward(&tokens);
    let err = max_rel_err(&got, &want);
    println!("causal: llama.cpp vs oracle, max relative error {err:.3e}");
    let err_fa = max_rel_err(&llama_cpp_causal_logits(&model, &tokens, true), &want);
    println!("causal, flash attention on (K/V rounded to f16): {err_fa:.3e}");

    // Negative control 1: the second half of the tokens one position further on. (Shifting
    // *all* positions would change nothing: RoPE scores depend only on relative positions.)
    let shifted: Vec<i32> = (0..n as i32).map(|p| if p >= n as i32 / 2 { p + 1 } else { p }).collect();
    let err_pos = max_rel_err(&got, &model.forward(&tokens, &shifted, &|i, j| j <= i));
    println!("negative control, positions shifted for half the tokens: {err_pos:.3e}");

    // Negative control 2: the smallest possible leak — each token also sees the next one.
    let causal: Vec<i32> = (0..n as i32).collect();
    let err_mask = max_rel_err(&got, &model.forward(&tokens, &causal, &|i, j| j <= i + 1));
    println!("negative control, mask leaks the next token: {err_mask:.3e}");

    assert!(err <= MATCH_TOL, "oracle disagrees with llama.cpp: {err:.3e} > {MATCH_TOL:e}");
    assert!(err_fa <= MATCH_TOL_FLASH, "flash attention: {err_fa:.3e} > {MATCH_TOL_FLASH:e}");
    assert!(err_pos > MISMATCH_MIN, "wrong positions went unnoticed: {err_pos:.3e}");
    assert!(err_mask > MISMATCH_MIN, "leaky mask went unnoticed: {err_mask:.3e}");
}

#[test]
fn oracle_is_deterministic_and_context_sensitive() {
    let model = TinyModel::random(TinyConfig::default());
    let again = TinyModel::random(TinyConfig::default());
    assert_eq!(model.tok_embd, again.tok_embd);
    assert_eq!(model.layers[1].ffn_down, again.layers[1].ffn_down);
    let other = TinyModel::random(TinyConfig { seed: 7, ..TinyConfig::default() });
    assert_ne!(model.output, other.output);

    // The same last token after two different prefixes must get clearly different logits,
    // and logits must spread across the vocabulary (so greedy choices are meaningful).
    let a = model.causal_forward(&[5, 17, 99, 300]);
    let b = model.causal_forward(&[6, 250, 42, 300]);
    let ctx_effect = max_rel_err(&a[3..], &b[3..]);
    println!("context effect on the last token's logits: {ctx_effect:.3e}");
    assert!(ctx_effect > 0.1, "context barely matters: {ctx_effect:.3e}");
    let row = &a[3];
    let (lo, hi) = row.iter().fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    println!("logit range for one token: {lo:.2} .. {hi:.2}");
    assert!(hi - lo > 5.0, "logits too flat: {lo} .. {hi}");
}
