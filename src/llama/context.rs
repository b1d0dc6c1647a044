//! A llama.cpp context, the backend sampler chains it was created with (device-side token
//! selection), its KV cache, and the token batch it decodes.

use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use super::{shim, LlamaAdapter, LlamaModel, Token};

/// What [`LlamaContext::decode`] returns when llama_decode threw a C++ exception.
pub(crate) const DECODE_THREW: i32 = -1000;

/// How a context is made (the subset of `llama_context_params` pardec sets).
pub(crate) struct ContextConfig {
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_seq_max: u32,
    pub n_threads: i32,
    pub flash_attn: sys::llama_flash_attn_type,
    pub kv_type: sys::ggml_type,
    /// Attach to every sequence id a backend chain that keeps each output row's
    /// `k` highest logits (device-side selection); `None`: full rows reach the host.
    pub device_top_k: Option<u32>,
}

/// What a backend sampler chain produced for one output row.
pub(crate) enum Sampled<'a> {
    /// Token ids and their raw logits, in no particular order.
    Candidates(&'a [Token], &'a [f32]),
    /// A whole row came back through the sampling buffers: the backend could not run the
    /// chain's reduction (llama.cpp then applies none of it) but still skipped the raw copy.
    FullRow(&'a [f32]),
    /// No sampling output: llama.cpp did not attach the chains (it refuses some setups, e.g.
    /// tensor-split models), so the raw logit rows were copied as usual.
    Nothing,
}

/// A llama.cpp context and the backend sampler chains it was created with.
pub(crate) struct LlamaContext {
    ptr: NonNull<sys::llama_context>,
    /// Owned here: llama.cpp only borrows them; freed after the context.
    chains: Vec<NonNull<sys::llama_sampler>>,
    n_vocab: usize,
}

// SAFETY: a context is used from one thread at a time (`Session` is Send, not Sync).
unsafe impl Send for LlamaContext {}

impl Drop for LlamaContext {
    fn drop(&mut self) {
        // SAFETY: created by llama_init_from_model, freed once; the chains outlive it.
        unsafe { sys::llama_free(self.ptr.as_ptr()) };
        free_chains(&mut self.chains);
    }
}

fn free_chains(chains: &mut Vec<NonNull<sys::llama_sampler>>) {
    for chain in chains.drain(..) {
        // SAFETY: each chain was made by llama_sampler_chain_init and is freed once, after
        // any context that used it.
        unsafe { sys::llama_sampler_free(chain.as_ptr()) };
    }
}

/// A `top_k(k)` chain, the reduction run on the backend for one sequence id.
fn top_k_chain(k: u32) -> Option<NonNull<sys::llama_sampler>> {
    // SAFETY: plain constructors; the chain takes ownership of the top-k sampler.
    unsafe {
        let chain = NonNull::new(sys::llama_sampler_chain_init(sys::llama_sampler_chain_default_params()))?;
        let top_k = sys::llama_sampler_init_top_k(k.min(i32::MAX as u32) as i32);
        if top_k.is_null() {
            sys::llama_sampler_free(chain.as_ptr());
            return None;
        }
        sys::llama_sampler_chain_add(chain.as_ptr(), top_k);
        Some(chain)
    }
}

impl LlamaContext {
    /// Creates a context; None when llama.cpp refuses (out of memory, sizes it rejects). A
    /// backend that cannot run the sampler chains is not a refusal: see [`Sampled`].
    pub(crate) fn new(model: &LlamaModel, config: &ContextConfig) -> Option<LlamaContext> {
        let mut chains = Vec::new();
        let mut seq_configs = Vec::new();
        if let Some(k) = config.device_top_k {
            for seq in 0..config.n_seq_max {
                let Some(chain) = top_k_chain(k) else {
                    free_chains(&mut chains);
                    return None;
                };
                chains.push(chain);
                seq_configs.push(sys::llama_sampler_seq_config { seq_id: seq as i32, sampler: chain.as_ptr() });
            }
        }
        // SAFETY: default params, then plain fields; `seq_configs` and the chains outlive the
        // call (llama.cpp keeps the chain pointers, which `chains` frees after the context).
        let ptr = unsafe {
            let mut p = sys::llama_context_default_params();
            p.n_ctx = config.n_ctx;
            p.n_batch = config.n_batch;
            p.n_ubatch = config.n_batch;
            p.n_seq_max = config.n_seq_max;
            p.n_threads = config.n_threads;
            p.n_threads_batch = config.n_threads;
            p.flash_attn_type = config.flash_attn;
            p.type_k = config.kv_type;
            p.type_v = config.kv_type;
            p.kv_unified = true;
            p.swa_full = true;
            if !seq_configs.is_empty() {
                p.samplers = seq_configs.as_mut_ptr();
                p.n_samplers = seq_configs.len();
            }
            let mut ctx = std::ptr::null_mut();
            if shim::pardec_shim_init_context(model.ptr.as_ptr(), &p, &mut ctx) != 0 {
                ctx = std::ptr::null_mut();
            }
            ctx
        };
        match NonNull::new(ptr) {
            Some(ptr) => Some(LlamaContext { ptr, chains, n_vocab: model.n_vocab().max(0) as usize }),
            None => {
                free_chains(&mut chains);
                None
            }
        }
    }

    /// Replaces the context's LoRA adapters (an empty list removes them). llama.cpp rebuilds
    /// its graph at the next decode; cells already computed keep their values.
    pub(crate) fn set_adapters(&mut self, adapters: &[(&LlamaAdapter, f32)]) {
        let mut ptrs: Vec<*mut sys::llama_adapter_lora> = adapters.iter().map(|(a, _)| a.as_ptr()).collect();
        let mut scales: Vec<f32> = adapters.iter().map(|&(_, s)| s).collect();
        // SAFETY: both arrays hold `len` entries and outlive the call (llama.cpp copies them
        // into its own map); the adapters outlive the context (the session keeps them).
        unsafe {
            sys::llama_set_adapters_lora(self.ptr.as_ptr(), ptrs.as_mut_ptr(), ptrs.len(), scales.as_mut_ptr());
        }
    }

    pub(crate) fn n_ctx(&self) -> u32 {
        // SAFETY: read-only query on a live context.
        unsafe { sys::llama_n_ctx(self.ptr.as_ptr()) }
    }

    pub(crate) fn n_batch(&self) -> u32 {
        // SAFETY: read-only query on a live context.
        unsafe { sys::llama_n_batch(self.ptr.as_ptr()) }
    }

    /// Decodes a batch; returns llama_decode's status (0 ok, 1 no KV slot, other: failure;
    /// [`DECODE_THREW`]: llama.cpp threw; the session reports it as a decode failure).
    pub(crate) fn decode(&mut self, batch: &Batch) -> i32 {
        let mut status = 0;
        // SAFETY: the batch's arrays hold `n_tokens` initialised entries (see `Batch::add`);
        // the caller has checked seq ids < n_seq_max and n_tokens ≤ n_batch.
        if unsafe { shim::pardec_shim_decode(self.ptr.as_ptr(), &batch.raw, &mut status) } != 0 {
            return DECODE_THREW;
        }
        status
    }

    /// Waits for the backend to finish the last decode.
    pub(crate) fn synchronize(&mut self) {
        // SAFETY: live context.
        unsafe { sys::llama_synchronize(self.ptr.as_ptr()) }
    }

    /// The full logit row of batch entry `i` (requested with logits = true in the last
    /// decode of a context without device selection).
    pub(crate) fn logits(&self, i: i32) -> Option<&[f32]> {
        // SAFETY: llama.cpp returns NULL (release build) for a row it did not compute;
        // otherwise the row holds n_vocab floats valid until the next decode, which needs
        // `&mut self`.
        unsafe {
            let p = sys::llama_get_logits_ith(self.ptr.as_ptr(), i);
            (!p.is_null()).then(|| std::slice::from_raw_parts(p, self.n_vocab))
        }
    }

    /// What the backend sampler chain left for batch entry `i` (contexts made with
    /// `device_top_k`).
    pub(crate) fn sampled(&self, i: i32) -> Sampled<'_> {
        // SAFETY: the counts say how many entries each array holds for this row; both arrays
        // stay valid until the next decode, which needs `&mut self`.
        unsafe {
            let ctx = self.ptr.as_ptr();
            let logits = sys::llama_get_sampled_logits_ith(ctx, i);
            if logits.is_null() {
                return Sampled::Nothing;
            }
            let n_logits = sys::llama_get_sampled_logits_count_ith(ctx, i) as usize;
            let n_ids = sys::llama_get_sampled_candidates_count_ith(ctx, i) as usize;
            let ids = sys::llama_get_sampled_candidates_ith(ctx, i);
            if n_ids > 0 && n_ids == n_logits && n_ids <= self.n_vocab && !ids.is_null() {
                return Sampled::Candidates(
                    std::slice::from_raw_parts(ids, n_ids),
                    std::slice::from_raw_parts(logits, n_ids),
                );
            }
            if n_ids == 0 && n_logits == self.n_vocab {
                return Sampled::FullRow(std::slice::from_raw_parts(logits, n_logits));
            }
            Sampled::Nothing
        }
    }

    fn memory(&self) -> sys::llama_memory_t {
        // SAFETY: live context; the handle is owned by it.
        unsafe { sys::llama_get_memory(self.ptr.as_ptr()) }
    }

    /// Adds `dst` to every cell of `src` at positions in [p0, ∞) (p0 < 0: all).
    pub(crate) fn seq_cp(&mut self, src: i32, dst: i32, p0: i32) {
        // SAFETY: ids checked by the caller (< n_seq_max).
        unsafe { sys::llama_memory_seq_cp(self.memory(), src, dst, p0, -1) }
    }

    /// Removes `seq` from its cells at positions in [p0, ∞) (p0 < 0: all).
    pub(crate) fn seq_rm(&mut self, seq: i32, p0: i32) -> bool {
        // SAFETY: id checked by the caller (< n_seq_max).
        unsafe { sys::llama_memory_seq_rm(self.memory(), seq, p0, -1) }
    }

    /// Moves the cells of `seq` at positions in [p0, p1) by `delta` positions; llama.cpp
    /// rotates their keys (RoPE shift) at the next decode.
    pub(crate) fn seq_add(&mut self, seq: i32, p0: i32, p1: i32, delta: i32) {
        // SAFETY: id checked by the caller (< n_seq_max).
        unsafe { sys::llama_memory_seq_add(self.memory(), seq, p0, p1, delta) }
    }

    /// Whether cells can be moved to other positions (RoPE models; not M-RoPE or recurrent).
    pub(crate) fn can_shift(&self) -> bool {
        // SAFETY: live context.
        unsafe { sys::llama_memory_can_shift(self.memory()) }
    }

    /// Removes `seq` from its cells at positions in [p0, p1).
    pub(crate) fn seq_rm_range(&mut self, seq: i32, p0: i32, p1: i32) -> bool {
        // SAFETY: id checked by the caller (< n_seq_max).
        unsafe { sys::llama_memory_seq_rm(self.memory(), seq, p0, p1) }
    }

    /// Empties the KV cache.
    pub(crate) fn clear(&mut self) {
        // SAFETY: live context.
        unsafe { sys::llama_memory_clear(self.memory(), true) }
    }
}

/// A token batch (llama_batch) with room for `capacity` tokens of up to `n_seq_max` ids each.
pub(crate) struct Batch {
    raw: sys::llama_batch,
    capacity: usize,
    n_seq_max: usize,
}

// SAFETY: owned heap arrays, used by one thread at a time along with the session.
unsafe impl Send for Batch {}

impl Drop for Batch {
    fn drop(&mut self) {
        // SAFETY: allocated by llama_batch_init, freed once.
        unsafe { sys::llama_batch_free(self.raw) }
    }
}

impl Batch {
    pub(crate) fn new(capacity: usize, n_seq_max: usize) -> Batch {
        let capacity = capacity.max(1);
        let n_seq_max = n_seq_max.max(1);
        // SAFETY: allocation only; entries are written before they are counted in n_tokens.
        let raw = unsafe { sys::llama_batch_init(capacity as i32, 0, n_seq_max as i32) };
        Batch { raw, capacity, n_seq_max }
    }

    pub(crate) fn clear(&mut self) {
        self.raw.n_tokens = 0;
    }

    pub(crate) fn len(&self) -> usize {
        self.raw.n_tokens as usize
    }

    /// Appends one token. False (nothing written) when the batch is full or `seqs` is empty
    /// or longer than the batch allows.
    pub(crate) fn add(&mut self, token: Token, pos: i32, seqs: &[i32], logits: bool) -> bool {
        let i = self.len();
        if i >= self.capacity || seqs.is_empty() || seqs.len() > self.n_seq_max {
            return false;
        }
        // SAFETY: i < capacity, and each seq_id[i] array holds n_seq_max ids (llama_batch_init).
        unsafe {
            *self.raw.token.add(i) = token;
            *self.raw.pos.add(i) = pos;
            *self.raw.n_seq_id.add(i) = seqs.len() as i32;
            let ids = *self.raw.seq_id.add(i);
            for (k, &s) in seqs.iter().enumerate() {
                *ids.add(k) = s;
            }
            *self.raw.logits.add(i) = i8::from(logits);
        }
        self.raw.n_tokens += 1;
        true
    }
}
