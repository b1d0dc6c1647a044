//! A tiny random `llama`-architecture model for tests: a GGUF writer, so that llama.cpp can
//! load it, and an independent plain-Rust forward pass (the oracle) that takes explicit
//! position ids and an explicit attention mask.
//!
//! The oracle mirrors what the vendored llama.cpp computes for `LLM_ARCH_LLAMA`
//! (src/models/llama.cpp): per layer `h += Wo·attn(rope(Wq·n(h)), rope(Wk·n(h)), Wv·n(h))`
//! then `h += Wdown·(silu(Wgate·n(h)) ⊙ Wup·n(h))`, and finally `logits = Wout·n(h)`, where
//! `n` is RMSNorm with a learned weight. It accumulates in f64, so it is the more accurate of
//! the two; llama.cpp's f32 result should agree to ~1e-5 relative.
//!
//! Include it with `mod common;` (tests/common/mod.rs) or
//! `#[path = "common/tiny_model.rs"] mod tiny_model;`.
#![allow(dead_code)]

use std::io::{self, Write};
use std::path::Path;

/// Hyper-parameters of the tiny model.
#[derive(Clone, Debug)]
pub struct TinyConfig {
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub n_ctx_train: usize,
    pub seed: u64,
}

impl Default for TinyConfig {
    fn default() -> Self {
        TinyConfig {
            n_vocab: 512,
            n_embd: 64,
            n_head: 4,
            n_head_kv: 2, // GQA: two query heads share each K/V head
            n_layer: 2,
            n_ff: 128,
            rope_base: 10000.0,
            rms_eps: 1e-5,
            n_ctx_train: 4096,
            seed: 42,
        }
    }
}

impl TinyConfig {
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}

/// One transformer block. Every matrix is row-major `[n_out][n_in]`, i.e. exactly GGUF's
/// layout for a tensor with `ne = [n_in, n_out]`.
#[derive(Clone, Debug)]
pub struct TinyLayer {
    pub attn_norm: Vec<f32>, // [n_embd]
    pub wq: Vec<f32>,        // [n_head*head_dim][n_embd]
    pub wk: Vec<f32>,        // [n_head_kv*head_dim][n_embd]
    pub wv: Vec<f32>,        // [n_head_kv*head_dim][n_embd]
    pub wo: Vec<f32>,        // [n_embd][n_head*head_dim]
    pub ffn_norm: Vec<f32>,  // [n_embd]
    pub ffn_gate: Vec<f32>,  // [n_ff][n_embd]
    pub ffn_up: Vec<f32>,    // [n_ff][n_embd]
    pub ffn_down: Vec<f32>,  // [n_embd][n_ff]
}

#[derive(Clone, Debug)]
pub struct TinyModel {
    pub cfg: TinyConfig,
    pub tok_embd: Vec<f32>,    // [n_vocab][n_embd]: one row per token
    pub output_norm: Vec<f32>, // [n_embd]
    pub output: Vec<f32>,      // [n_vocab][n_embd]
    pub layers: Vec<TinyLayer>,
}

/// splitmix64: tiny, deterministic, good enough for test weights.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, center: f32, half_width: f32) -> Vec<f32> {
        (0..n).map(|_| center + half_width * self.uniform()).collect()
    }
    /// A `[n_out][n_in]` matrix; `gain` is the std of each output for unit-RMS input
    /// (uniform on ±a has variance a²/3, so a = gain·sqrt(3/n_in)).
    fn matrix(&mut self, n_out: usize, n_in: usize, gain: f32) -> Vec<f32> {
        self.vec(n_out * n_in, 0.0, gain * (3.0 / n_in as f32).sqrt())
    }
}

impl TinyModel {
    /// Deterministic random weights from `cfg.seed`.
    ///
    /// Scales are chosen so that the model is "interesting" rather than realistic: Q and K
    /// have gain 1.6, which makes per-head scores of std ~2 and so attention sharp enough
    /// that positions (RoPE) and the mask change logits by far more than the test tolerance;
    /// embeddings and attention/FFN outputs are of comparable size so context matters; the
    /// output matrix has gain 3 so logits differ clearly between tokens.
    pub fn random(cfg: TinyConfig) -> TinyModel {
        assert!(cfg.n_embd % cfg.n_head == 0, "n_embd must be a multiple of n_head");
        assert!(cfg.n_head % cfg.n_head_kv == 0, "n_head must be a multiple of n_head_kv");
        assert!(cfg.head_dim() % 2 == 0, "RoPE needs an even head dimension");
        let mut rng = SplitMix64(cfg.seed);
        let (e, f, hd) = (cfg.n_embd, cfg.n_ff, cfg.head_dim());
        let (nq, nkv) = (cfg.n_head * hd, cfg.n_head_kv * hd);
        let tok_embd = rng.vec(cfg.n_vocab * e, 0.0, 1.0);
        let layers = (0..cfg.n_layer)
            .map(|_| TinyLayer {
                attn_norm: rng.vec(e, 1.0, 0.1),
                wq: rng.matrix(nq, e, 1.6),
                wk: rng.matrix(nkv, e, 1.6),
                wv: rng.matrix(nkv, e, 1.0),
                wo: rng.matrix(e, nq, 0.8),
                ffn_norm: rng.vec(e, 1.0, 0.1),
                ffn_gate: rng.matrix(f, e, 1.0),
                ffn_up: rng.matrix(f, e, 1.0),
                ffn_down: rng.matrix(e, f, 0.8),
            })
            .collect();
        let output_norm = rng.vec(e, 1.0, 0.1);
        let output = rng.matrix(cfg.n_vocab, e, 3.0);
        TinyModel { cfg, tok_embd, output_norm, output, layers }
    }

    /// All tensors as (GGUF name, ne, data), in file order. `ne[0]` is the contiguous
    /// dimension, so a `[n_out][n_in]` row-major matrix has `ne = [n_in, n_out]`. Shapes are
    /// those `llama_model_llama::load_arch_tensors` asks for.
    pub fn tensors(&self) -> Vec<(String, Vec<u64>, &[f32])> {
        let c = &self.cfg;
        let (e, f) = (c.n_embd as u64, c.n_ff as u64);
        let nq = (c.n_head * c.head_dim()) as u64;
        let nkv = (c.n_head_kv * c.head_dim()) as u64;
        let mut t: Vec<(String, Vec<u64>, &[f32])> = vec![
            ("token_embd.weight".into(), vec![e, c.n_vocab as u64], &self.tok_embd),
            ("output_norm.weight".into(), vec![e], &self.output_norm),
            ("output.weight".into(), vec![e, c.n_vocab as u64], &self.output),
        ];
        for (i, l) in self.layers.iter().enumerate() {
            t.push((format!("blk.{i}.attn_norm.weight"), vec![e], &l.attn_norm));
            t.push((format!("blk.{i}.attn_q.weight"), vec![e, nq], &l.wq));
            t.push((format!("blk.{i}.attn_k.weight"), vec![e, nkv], &l.wk));
            t.push((format!("blk.{i}.attn_v.weight"), vec![e, nkv], &l.wv));
            t.push((format!("blk.{i}.attn_output.weight"), vec![nq, e], &l.wo));
            t.push((format!("blk.{i}.ffn_norm.weight"), vec![e], &l.ffn_norm));
            t.push((format!("blk.{i}.ffn_gate.weight"), vec![e, f], &l.ffn_gate));
            t.push((format!("blk.{i}.ffn_up.weight"), vec![e, f], &l.ffn_up));
            t.push((format!("blk.{i}.ffn_down.weight"), vec![f, e], &l.ffn_down));
        }
        t
    }

    /// Writes the model as a GGUF v3 file that llama.cpp loads as a `llama` model (see
    /// [`write_gguf_file`] for the layout).
    ///
    /// `tokenizer.ggml.model = "none"` makes llama.cpp skip the tokenizer and create
    /// `llama.vocab_size` dummy tokens; the model is then driven purely by token ids.
    pub fn write_gguf(&self, path: &Path) -> io::Result<()> {
        self.write_gguf_with(path, None)
    }

    /// Writes the model with a byte-level vocabulary: token `b` (0..256) is byte `b`, then each
    /// of `vocab.specials` is one control token, then `<eos>`; BPE with no merges, so every
    /// byte of text is one token and every special string one token. `cfg.n_vocab` must be
    /// [`ByteVocab::n_vocab`].
    pub fn write_gguf_bytes(&self, path: &Path, vocab: &ByteVocab) -> io::Result<()> {
        assert_eq!(self.cfg.n_vocab, vocab.n_vocab(), "n_vocab must match the vocabulary");
        self.write_gguf_with(path, Some(vocab))
    }

    fn write_gguf_with(&self, path: &Path, vocab: Option<&ByteVocab>) -> io::Result<()> {
        self.write_gguf_edited(path, vocab, |_| {})
    }

    /// [`TinyModel::write_gguf_bytes`] with the metadata edited first (hostile-file tests).
    pub fn write_gguf_edited(
        &self,
        path: &Path,
        vocab: Option<&ByteVocab>,
        edit: impl FnOnce(&mut Vec<(&str, GgufValue)>),
    ) -> io::Result<()> {
        self.write_gguf_full(path, vocab, edit, false)
    }

    /// Writes the model without `output.weight`: llama.cpp then ties the output projection to
    /// `token_embd.weight`, as SmolLM2 does. `self.output` must equal `self.tok_embd` for the
    /// oracle to compute the same model.
    pub fn write_gguf_tied(&self, path: &Path) -> io::Result<()> {
        assert_eq!(self.output, self.tok_embd, "a tied model's output is its embedding");
        self.write_gguf_full(path, None, |_| {}, true)
    }

    fn write_gguf_full(
        &self,
        path: &Path,
        vocab: Option<&ByteVocab>,
        edit: impl FnOnce(&mut Vec<(&str, GgufValue)>),
        tied: bool,
    ) -> io::Result<()> {
        use GgufValue as V;
        let c = &self.cfg;
        let mut kvs: Vec<(&str, V)> = vec![
            ("general.architecture", V::Str("llama".into())),
            ("general.name", V::Str("pardec-tiny".into())),
            ("general.alignment", V::U32(GGUF_ALIGN as u32)),
            ("llama.context_length", V::U32(c.n_ctx_train as u32)),
            ("llama.embedding_length", V::U32(c.n_embd as u32)),
            ("llama.block_count", V::U32(c.n_layer as u32)),
            ("llama.feed_forward_length", V::U32(c.n_ff as u32)),
            ("llama.attention.head_count", V::U32(c.n_head as u32)),
            ("llama.attention.head_count_kv", V::U32(c.n_head_kv as u32)),
            ("llama.attention.layer_norm_rms_epsilon", V::F32(c.rms_eps)),
            ("llama.rope.freq_base", V::F32(c.rope_base)),
            ("llama.rope.dimension_count", V::U32(c.head_dim() as u32)),
            ("llama.vocab_size", V::U32(c.n_vocab as u32)),
        ];
        match vocab {
            None => kvs.push(("tokenizer.ggml.model", V::Str("none".into()))),
            Some(v) => {
                let (tokens, types) = v.tokens();
                kvs.push(("tokenizer.ggml.model", V::Str("gpt2".into())));
                kvs.push(("tokenizer.ggml.pre", V::Str("default".into())));
                kvs.push(("tokenizer.ggml.tokens", V::Strs(tokens)));
                kvs.push(("tokenizer.ggml.token_type", V::I32s(types)));
                kvs.push(("tokenizer.ggml.merges", V::Strs(Vec::new())));
                kvs.push(("tokenizer.ggml.eos_token_id", V::U32(v.eos() as u32)));
                kvs.push(("tokenizer.ggml.bos_token_id", V::U32(v.eos() as u32)));
            }
        }
        edit(&mut kvs);
        let mut tensors = self.tensors();
        if tied {
            tensors.retain(|(name, _, _)| name != "output.weight");
        }
        write_gguf_file(path, &kvs, &tensors)
    }

    /// Logits (`n_vocab` floats) for every token, computed in plain Rust.
    ///
    /// Token `i` sits at `positions[i]` and attends to token `j` iff `visible(i, j)`. Nothing
    /// is implied: a causal model must pass `j <= i`-style masks itself, and a token must see
    /// at least one token (normally itself).
    pub fn forward(&self, tokens: &[u32], positions: &[i32], visible: &dyn Fn(usize, usize) -> bool) -> Vec<Vec<f32>> {
        let c = &self.cfg;
        assert_eq!(tokens.len(), positions.len(), "one position per token");
        let (n, e, hd) = (tokens.len(), c.n_embd, c.head_dim());
        let group = c.n_head / c.n_head_kv;
        let scale = 1.0 / (hd as f64).sqrt();
        let eps = c.rms_eps as f64;

        // Residual stream, one row per token.
        let mut h: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| {
                let t = t as usize;
                assert!(t < c.n_vocab, "token {t} out of vocabulary");
                self.tok_embd[t * e..(t + 1) * e].iter().map(|&x| x as f64).collect()
            })
            .collect();

        for l in &self.layers {
            // Attention: project every token, then RoPE Q and K at the token's position.
            let mut q = Vec::with_capacity(n);
            let mut k = Vec::with_capacity(n);
            let mut v = Vec::with_capacity(n);
            for (i, hi) in h.iter().enumerate() {
                let x = rms_norm(hi, &l.attn_norm, eps);
                let mut qi = matvec(&l.wq, &x);
                let mut ki = matvec(&l.wk, &x);
                self.rope(&mut qi, positions[i]);
                self.rope(&mut ki, positions[i]);
                q.push(qi);
                k.push(ki);
                v.push(matvec(&l.wv, &x));
            }
            for i in 0..n {
                let seen: Vec<usize> = (0..n).filter(|&j| visible(i, j)).collect();
                assert!(!seen.is_empty(), "token {i} sees no token at all");
                let mut attn = vec![0.0f64; c.n_head * hd];
                for head in 0..c.n_head {
                    // GQA as ggml broadcasts it: query head `head` reads K/V head `head / group`.
                    let (qo, ko) = (head * hd, (head / group) * hd);
                    let qh = &q[i][qo..qo + hd];
                    let scores: Vec<f64> = seen.iter().map(|&j| scale * dot(qh, &k[j][ko..ko + hd])).collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let sum: f64 = w.iter().sum();
                    for (&j, wj) in seen.iter().zip(&w) {
                        for d in 0..hd {
                            attn[qo + d] += wj / sum * v[j][ko + d];
                        }
                    }
                }
                add_into(&mut h[i], &matvec(&l.wo, &attn));
            }
            // SwiGLU feed-forward (llama.cpp's LLM_FFN_SILU + LLM_FFN_PAR).
            for hi in h.iter_mut() {
                let x = rms_norm(hi, &l.ffn_norm, eps);
                let gate = matvec(&l.ffn_gate, &x);
                let up = matvec(&l.ffn_up, &x);
                let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
                add_into(hi, &matvec(&l.ffn_down, &act));
            }
        }

        h.iter()
            .map(|hi| {
                let x = rms_norm(hi, &self.output_norm, eps);
                matvec(&self.output, &x).into_iter().map(|y| y as f32).collect()
            })
            .collect()
    }

    /// Plain causal decoding of one sequence: positions `0..n`, token `i` sees `0..=i`.
    pub fn causal_forward(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        let positions: Vec<i32> = (0..tokens.len() as i32).collect();
        self.forward(tokens, &positions, &|i, j| j <= i)
    }

    /// RoPE as llama.cpp applies it for `LLM_ARCH_LLAMA` (`LLAMA_ROPE_TYPE_NORM`, ggml's
    /// GGML_ROPE_TYPE_NORMAL): within each head, the *adjacent* pair (x[2i], x[2i+1]) is
    /// rotated by theta_i = pos · base^(-2i/n_rot), with n_rot = head_dim. (NEOX mode would
    /// pair x[i] with x[i + n_rot/2] instead.) To match ggml bit for bit in the angle, theta
    /// is built the way ggml-cpu's `ggml_rope_cache_init` does: in f32, starting at `pos`
    /// and multiplied by `theta_scale = powf(base, -2/n_rot)` once per pair.
    fn rope(&self, x: &mut [f64], pos: i32) {
        let hd = self.cfg.head_dim();
        let theta_scale = self.cfg.rope_base.powf(-2.0 / hd as f32);
        for head in x.chunks_mut(hd) {
            let mut theta = pos as f32;
            for pair in head.chunks_mut(2) {
                let (sin, cos) = (theta as f64).sin_cos();
                let (x0, x1) = (pair[0], pair[1]);
                pair[0] = x0 * cos - x1 * sin;
                pair[1] = x0 * sin + x1 * cos;
                theta *= theta_scale;
            }
        }
    }
}

/// ggml's RMSNorm (x / sqrt(mean(x²) + eps)) followed by llama.cpp's multiply by the weight.
fn rms_norm(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let mean_sq = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (mean_sq + eps).sqrt();
    x.iter().zip(w).map(|(v, &w)| v * s * w as f64).collect()
}

/// y = W x for a row-major `[n_out][n_in]` matrix.
fn matvec(w: &[f32], x: &[f64]) -> Vec<f64> {
    w.chunks_exact(x.len()).map(|row| row.iter().zip(x).map(|(&a, b)| a as f64 * b).sum()).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn add_into(acc: &mut [f64], x: &[f64]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

/// Max over rows of (max |a - b| in the row) / (max |b| in the row): the comparison metric
/// the tests use, relative to the reference `b`.
pub fn max_rel_err(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    assert_eq!(a.len(), b.len(), "row counts differ");
    a.iter()
        .zip(b)
        .map(|(ra, rb)| {
            assert_eq!(ra.len(), rb.len(), "row lengths differ");
            let scale = rb.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs())).max(1e-30);
            let diff = ra.iter().zip(rb).fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
            diff / scale
        })
        .fold(0.0, f64::max)
}

/// A byte-level vocabulary for the tiny model: 256 byte tokens, then control tokens.
#[derive(Clone, Debug)]
pub struct ByteVocab {
    pub specials: Vec<String>,
}

impl ByteVocab {
    pub fn n_vocab(&self) -> usize {
        256 + self.specials.len() + 1
    }

    /// The end-of-generation token.
    pub fn eos(&self) -> usize {
        256 + self.specials.len()
    }

    /// Token strings and types (GGUF's: 1 normal, 3 control). Byte tokens are written in
    /// GPT-2's byte-to-character mapping, as llama.cpp's byte-level BPE expects.
    fn tokens(&self) -> (Vec<String>, Vec<i32>) {
        let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
        let mut types = vec![1; 256];
        for s in &self.specials {
            tokens.push(s.clone());
            types.push(3);
        }
        tokens.push("<eos>".to_string());
        types.push(3);
        (tokens, types)
    }
}

/// GPT-2's printable stand-in for a byte: printable Latin-1 bytes stand for themselves, the
/// others (controls, space, 0x7F–0xA0, 0xAD) map in order to U+0100 onwards.
fn byte_char(b: u8) -> char {
    let printable = |x: u8| (b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || (0xAE..=0xFF).contains(&x);
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).expect("valid char")
}

/// Alignment of the data section and of every tensor in the files written here.
const GGUF_ALIGN: u64 = 32;

/// A metadata value for [`write_gguf_file`].
pub enum GgufValue {
    U32(u32),
    F32(f32),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

/// A tensor's data for [`write_gguf_typed`]: ggml's F32, F16 (raw half bits) or I32.
#[derive(Clone, Copy, Debug)]
pub enum TensorData<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
    I32(&'a [i32]),
}

impl TensorData<'_> {
    fn len(&self) -> usize {
        match self {
            TensorData::F32(d) => d.len(),
            TensorData::F16(d) => d.len(),
            TensorData::I32(d) => d.len(),
        }
    }

    /// (ggml type, little-endian bytes).
    fn encoded(&self) -> (u32, Vec<u8>) {
        match self {
            TensorData::F32(d) => (0, d.iter().flat_map(|x| x.to_le_bytes()).collect()),
            TensorData::F16(d) => (1, d.iter().flat_map(|x| x.to_le_bytes()).collect()),
            TensorData::I32(d) => (26, d.iter().flat_map(|x| x.to_le_bytes()).collect()),
        }
    }
}

/// Writes a GGUF v3 file of f32 tensors.
///
/// Layout (all little-endian): magic "GGUF", version u32, tensor count u64, KV count u64,
/// the KV pairs (key = u64 length + bytes, value type u32, value), the tensor infos
/// (name, n_dims u32, ne[] u64, ggml type u32, offset u64 into the data section), zero
/// padding to `general.alignment`, then the data section. ggml's reader insists that each
/// tensor's offset is exactly the end of the previous one rounded up to the alignment.
/// Integer keys must be UINT32 and float keys FLOAT32 where llama.cpp reads them: it checks.
pub fn write_gguf_file(
    path: &Path,
    kvs: &[(&str, GgufValue)],
    tensors: &[(String, Vec<u64>, &[f32])],
) -> io::Result<()> {
    let typed: Vec<(String, Vec<u64>, TensorData)> =
        tensors.iter().map(|(name, ne, data)| (name.clone(), ne.clone(), TensorData::F32(data))).collect();
    write_gguf_typed(path, kvs, &typed)
}

/// [`write_gguf_file`] with tensors of other types than F32.
pub fn write_gguf_typed(
    path: &Path,
    kvs: &[(&str, GgufValue)],
    tensors: &[(String, Vec<u64>, TensorData)],
) -> io::Result<()> {
    const T_I32: u32 = 5;
    const T_U32: u32 = 4;
    const T_F32: u32 = 6;
    const T_STR: u32 = 8;
    const T_ARR: u32 = 9;
    fn put_str(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    }
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (key, v) in kvs {
        put_str(&mut b, key);
        match v {
            GgufValue::U32(x) => {
                b.extend_from_slice(&T_U32.to_le_bytes());
                b.extend_from_slice(&x.to_le_bytes());
            }
            GgufValue::F32(x) => {
                b.extend_from_slice(&T_F32.to_le_bytes());
                b.extend_from_slice(&x.to_le_bytes());
            }
            GgufValue::Str(s) => {
                b.extend_from_slice(&T_STR.to_le_bytes());
                put_str(&mut b, s);
            }
            GgufValue::Strs(list) => {
                b.extend_from_slice(&T_ARR.to_le_bytes());
                b.extend_from_slice(&T_STR.to_le_bytes());
                b.extend_from_slice(&(list.len() as u64).to_le_bytes());
                for s in list {
                    put_str(&mut b, s);
                }
            }
            GgufValue::I32s(list) => {
                b.extend_from_slice(&T_ARR.to_le_bytes());
                b.extend_from_slice(&T_I32.to_le_bytes());
                b.extend_from_slice(&(list.len() as u64).to_le_bytes());
                for x in list {
                    b.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
    let pad = |n: u64| n.div_ceil(GGUF_ALIGN) * GGUF_ALIGN;
    let mut offset = 0u64;
    let encoded: Vec<(u32, Vec<u8>)> = tensors.iter().map(|(_, _, data)| data.encoded()).collect();
    for ((name, ne, data), (ty, bytes)) in tensors.iter().zip(&encoded) {
        assert_eq!(ne.iter().product::<u64>(), data.len() as u64, "{name}: shape/data mismatch");
        put_str(&mut b, name);
        b.extend_from_slice(&(ne.len() as u32).to_le_bytes());
        for d in ne {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        offset = pad(offset + bytes.len() as u64);
    }
    b.resize(pad(b.len() as u64) as usize, 0); // the data section starts aligned
    for (_, bytes) in &encoded {
        b.extend_from_slice(bytes);
        b.resize(pad(b.len() as u64) as usize, 0);
    }
    let mut file = io::BufWriter::new(std::fs::File::create(path)?);
    file.write_all(&b)?;
    file.flush()
}

/// A LoRA adapter for a [`TinyModel`]: for each adapted matrix `W` (`[n_out][n_in]`), `A`
/// (`[r][n_in]`, GGUF `ne = [n_in, r]`) and `B` (`[n_out][r]`, `ne = [r, n_out]`); llama.cpp
/// then uses `W + scale·(alpha/r)·B·A`.
#[derive(Clone, Debug)]
pub struct TinyLora {
    pub rank: usize,
    pub alpha: f32,
    /// (layer, matrix name as in GGUF: "attn_q", ..., A, B).
    pub pairs: Vec<(usize, &'static str, Vec<f32>, Vec<f32>)>,
}

/// The matrices a LoRA may adapt, by GGUF name.
pub const LORA_TARGETS: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

impl TinyModel {
    /// The layer's matrix named as in GGUF, with its (n_out, n_in).
    fn matrix_mut(&mut self, layer: usize, name: &str) -> (&mut Vec<f32>, usize, usize) {
        let c = &self.cfg;
        let (e, f) = (c.n_embd, c.n_ff);
        let (nq, nkv) = (c.n_head * c.head_dim(), c.n_head_kv * c.head_dim());
        let l = &mut self.layers[layer];
        match name {
            "attn_q" => (&mut l.wq, nq, e),
            "attn_k" => (&mut l.wk, nkv, e),
            "attn_v" => (&mut l.wv, nkv, e),
            "attn_output" => (&mut l.wo, e, nq),
            "ffn_gate" => (&mut l.ffn_gate, f, e),
            "ffn_up" => (&mut l.ffn_up, f, e),
            "ffn_down" => (&mut l.ffn_down, e, f),
            other => panic!("no matrix {other}"),
        }
    }
}

impl TinyLora {
    /// Random A and B for every target of every layer; `gain` sets the size of B·A against W.
    pub fn random(model: &TinyModel, rank: usize, alpha: f32, gain: f32, seed: u64) -> TinyLora {
        let mut rng = SplitMix64(seed);
        let mut probe = model.clone();
        let mut pairs = Vec::new();
        for layer in 0..model.cfg.n_layer {
            for name in LORA_TARGETS {
                let (_, n_out, n_in) = probe.matrix_mut(layer, name);
                let a = rng.matrix(rank, n_in, 1.0);
                let b = rng.matrix(n_out, rank, gain);
                pairs.push((layer, name, a, b));
            }
        }
        TinyLora { rank, alpha, pairs }
    }

    /// The model with this adapter merged in at `scale` (what llama.cpp must compute).
    pub fn merged(&self, model: &TinyModel, scale: f32) -> TinyModel {
        let mut out = model.clone();
        let factor = scale * self.alpha / self.rank as f32;
        for (layer, name, a, b) in &self.pairs {
            let (w, n_out, n_in) = out.matrix_mut(*layer, name);
            for o in 0..n_out {
                for i in 0..n_in {
                    let ba: f32 = (0..self.rank).map(|k| b[o * self.rank + k] * a[k * n_in + i]).sum();
                    w[o * n_in + i] += factor * ba;
                }
            }
        }
        out
    }

    /// The adapter's tensors as (GGUF name, ne, data).
    pub fn tensors(&self, model: &TinyModel) -> Vec<(String, Vec<u64>, &[f32])> {
        let mut probe = model.clone();
        let r = self.rank as u64;
        let mut t: Vec<(String, Vec<u64>, &[f32])> = Vec::new();
        for (layer, name, a, b) in &self.pairs {
            let (_, n_out, n_in) = probe.matrix_mut(*layer, name);
            t.push((format!("blk.{layer}.{name}.weight.lora_a"), vec![n_in as u64, r], a));
            t.push((format!("blk.{layer}.{name}.weight.lora_b"), vec![r, n_out as u64], b));
        }
        t
    }

    /// Writes the adapter as llama.cpp reads it: `general.type = adapter`, `adapter.type =
    /// lora`, `adapter.lora.alpha`, for architecture `arch`.
    pub fn write_gguf(&self, model: &TinyModel, path: &Path, arch: &str) -> io::Result<()> {
        let kvs = [
            ("general.type", GgufValue::Str("adapter".into())),
            ("general.architecture", GgufValue::Str(arch.into())),
            ("general.alignment", GgufValue::U32(GGUF_ALIGN as u32)),
            ("adapter.type", GgufValue::Str("lora".into())),
            ("adapter.lora.alpha", GgufValue::F32(self.alpha)),
        ];
        write_gguf_file(path, &kvs, &self.tensors(model))
    }
}
