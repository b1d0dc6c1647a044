//! The part of llama.cpp's C API that pardec drives directly.
//!
//! llama-cpp-2's safe wrappers keep their raw handles private, and backend ("on-device")
//! token selection needs two things they do not offer: creating a context with a sampler
//! chain per sequence id, and reading back each output row's reduced candidates
//! (`llama_get_sampled_candidates_ith`). So the model and the context are owned here, over
//! `llama-cpp-sys-2` (the same vendored llama.cpp llama-cpp-2 builds and links); llama-cpp-2
//! still starts the process-wide backend (`crate::backend`).
//!
//! Every function here checks what llama.cpp would abort on, or returns what it reports;
//! nothing here panics. Callers (the session) check ids, positions and batch sizes first.

use std::ffi::{CStr, CString};
use std::path::Path;
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

/// The catching wrappers of src/shim/llama_shim.cpp (build.rs compiles it): each returns 0
/// with the call's result in `out`, or i32::MIN (PARDEC_SHIM_THREW) when llama.cpp threw.
mod shim {
    use super::sys;
    use std::ffi::{c_char, CStr};

    extern "C" {
        fn pardec_shim_last_message() -> *const c_char;
        pub(super) fn pardec_shim_tokenize(
            vocab: *const sys::llama_vocab,
            text: *const c_char,
            text_len: i32,
            tokens: *mut sys::llama_token,
            n_tokens_max: i32,
            add_special: bool,
            parse_special: bool,
            out: *mut i32,
        ) -> i32;
        pub(super) fn pardec_shim_token_to_piece(
            vocab: *const sys::llama_vocab,
            token: sys::llama_token,
            buf: *mut c_char,
            length: i32,
            lstrip: i32,
            special: bool,
            out: *mut i32,
        ) -> i32;
        pub(super) fn pardec_shim_decode(ctx: *mut sys::llama_context, batch: *const sys::llama_batch, out: *mut i32) -> i32;
        pub(super) fn pardec_shim_model_load(
            path: *const c_char,
            params: *const sys::llama_model_params,
            out: *mut *mut sys::llama_model,
        ) -> i32;
        pub(super) fn pardec_shim_init_context(
            model: *mut sys::llama_model,
            params: *const sys::llama_context_params,
            out: *mut *mut sys::llama_context,
        ) -> i32;
        pub(super) fn pardec_shim_adapter_init(
            model: *mut sys::llama_model,
            path: *const c_char,
            out: *mut *mut sys::llama_adapter_lora,
        ) -> i32;
        pub(super) fn pardec_shim_chat_apply_template(
            tmpl: *const c_char,
            chat: *const sys::llama_chat_message,
            n_msg: usize,
            add_ass: bool,
            buf: *mut c_char,
            length: i32,
            out: *mut i32,
        ) -> i32;
        pub(super) fn pardec_shim_model_quantize(
            input: *const c_char,
            output: *const c_char,
            params: *const sys::llama_model_quantize_params,
            out: *mut u32,
        ) -> i32;
    }

    /// The message of the exception the last failed wrapper on this thread caught.
    pub(super) fn last_message() -> String {
        // SAFETY: a NUL-terminated thread-local buffer of the shim's, always initialised.
        unsafe { CStr::from_ptr(pardec_shim_last_message()) }.to_string_lossy().into_owned()
    }
}

/// A llama.cpp call that threw (through the shim): its message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Threw(pub String);

/// A path as llama.cpp takes it: None when it is not UTF-8 or holds a NUL byte.
pub(crate) fn path_cstring(path: &Path) -> Option<CString> {
    path.to_str().and_then(|s| CString::new(s).ok())
}

/// Writes the model file `input` again at `output` with its weights in `ftype` (llama.cpp's
/// `llama_model_quantize`, re-quantizing already quantized tensors). Err: the message of an
/// exception it threw, or its bare status (it logs the reason, and pardec silences its log).
pub(crate) fn quantize_file(input: &CStr, output: &CStr, ftype: sys::llama_ftype, n_threads: u32) -> Result<(), String> {
    // SAFETY: a plain value constructor; both paths are NUL-terminated and outlive the call.
    unsafe {
        let mut params = sys::llama_model_quantize_default_params();
        params.ftype = ftype;
        params.nthread = n_threads.min(i32::MAX as u32) as i32;
        params.allow_requantize = true;
        let mut rc = 0u32;
        if shim::pardec_shim_model_quantize(input.as_ptr(), output.as_ptr(), &params, &mut rc) != 0 {
            return Err(shim::last_message());
        }
        if rc != 0 {
            return Err(format!("llama_model_quantize returned {rc}"));
        }
    }
    Ok(())
}

/// A token id of the model's vocabulary (llama.cpp's `llama_token`).
pub type Token = i32;

/// A loaded llama.cpp model. Read-only once loaded, so it may be shared between threads;
/// creating contexts from it concurrently is serialised by the session module.
pub(crate) struct LlamaModel {
    ptr: NonNull<sys::llama_model>,
    /// Owned by the model; read once at load, since every sampled token asks for it.
    vocab: *const sys::llama_vocab,
    n_vocab: i32,
}

// SAFETY: llama.cpp does not mutate a model after loading except while a context is created,
// which `session` serialises (`CONTEXT_CREATION`). Its vocabulary calls are read-only.
unsafe impl Send for LlamaModel {}
unsafe impl Sync for LlamaModel {}

impl Drop for LlamaModel {
    fn drop(&mut self) {
        // SAFETY: the pointer came from llama_model_load_from_file and is freed once; every
        // context made from it holds a `Model` clone, so none outlives it.
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) }
    }
}

/// A llama.cpp LoRA adapter of one model. It is freed explicitly (`free`) by its owner, under
/// the model's adapter lock; a model frees any adapters still attached when it is freed.
pub(crate) struct LlamaAdapter {
    ptr: Option<NonNull<sys::llama_adapter_lora>>,
}

// SAFETY: an adapter's tensors are read-only once loaded; the one mutation, freeing, detaches
// it from its model's set, which `adapter.rs` serialises with the model's adapter lock.
unsafe impl Send for LlamaAdapter {}
unsafe impl Sync for LlamaAdapter {}

impl LlamaAdapter {
    /// None when llama.cpp refuses the file (it catches its own exceptions and logs why).
    pub(crate) fn load(model: &LlamaModel, path: &Path) -> Option<LlamaAdapter> {
        let c_path = path_cstring(path)?;
        // SAFETY: a live model and a NUL-terminated path that lives across the call.
        let mut ptr = std::ptr::null_mut();
        if unsafe { shim::pardec_shim_adapter_init(model.ptr.as_ptr(), c_path.as_ptr(), &mut ptr) } != 0 {
            return None;
        }
        Some(LlamaAdapter { ptr: Some(NonNull::new(ptr)?) })
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::llama_adapter_lora {
        self.ptr.map_or(std::ptr::null_mut(), NonNull::as_ptr)
    }

    /// Frees the adapter (once; later calls do nothing). No context may still use it.
    pub(crate) fn free(&mut self) {
        if let Some(ptr) = self.ptr.take() {
            // SAFETY: the pointer came from llama_adapter_lora_init on a model that is still
            // alive (the owner holds it), and `take` makes this the only free.
            unsafe { sys::llama_adapter_lora_free(ptr.as_ptr()) }
        }
    }
}

/// Why a model failed to load.
pub(crate) enum LoadFailure {
    /// The path cannot be passed to C (not UTF-8, or holds a NUL byte).
    BadPath,
    /// llama.cpp returned no model (unknown architecture, corrupt file, out of memory...).
    Refused,
    /// llama.cpp threw while loading (the exception's message).
    Threw(String),
}

/// What [`LlamaContext::decode`] returns when llama_decode threw a C++ exception.
pub(crate) const DECODE_THREW: i32 = -1000;

impl LlamaModel {
    /// Loads the model at `path`; `devices`, if not empty, is the NULL-terminated list of
    /// devices to place its layers on (`llama_model_params.devices`), else llama.cpp chooses.
    pub(crate) fn load(
        path: &Path,
        n_gpu_layers: Option<u32>,
        devices: &[sys::ggml_backend_dev_t],
    ) -> Result<LlamaModel, LoadFailure> {
        let c_path = path_cstring(path).ok_or(LoadFailure::BadPath)?;
        debug_assert!(devices.last().map_or(true, |d| d.is_null()), "the device list is NULL-terminated");
        let mut devices = devices.to_vec();
        // SAFETY: plain value constructors, a NUL-terminated path and a NULL-terminated device
        // list that live across the call (llama.cpp copies the list).
        let ptr = unsafe {
            let mut params = sys::llama_model_default_params();
            if let Some(n) = n_gpu_layers {
                params.n_gpu_layers = n.min(i32::MAX as u32) as i32;
            }
            if !devices.is_empty() {
                params.devices = devices.as_mut_ptr();
            }
            let mut ptr = std::ptr::null_mut();
            if shim::pardec_shim_model_load(c_path.as_ptr(), &params, &mut ptr) != 0 {
                return Err(LoadFailure::Threw(shim::last_message()));
            }
            ptr
        };
        let ptr = NonNull::new(ptr).ok_or(LoadFailure::Refused)?;
        // SAFETY: a loaded model always has a vocabulary (possibly of type "none"), which
        // lives as long as the model; its size is a read-only query.
        let (vocab, n_vocab) = unsafe {
            let vocab = sys::llama_model_get_vocab(ptr.as_ptr());
            (vocab, sys::llama_vocab_n_tokens(vocab))
        };
        Ok(LlamaModel { ptr, vocab, n_vocab })
    }

    pub(crate) fn vocab(&self) -> *const sys::llama_vocab {
        self.vocab
    }

    pub(crate) fn n_vocab(&self) -> i32 {
        self.n_vocab
    }

    pub(crate) fn n_ctx_train(&self) -> u32 {
        // SAFETY: read-only query on a live model.
        unsafe { sys::llama_model_n_ctx_train(self.ptr.as_ptr()) }.max(0) as u32
    }

    pub(crate) fn is_recurrent(&self) -> bool {
        // SAFETY: read-only query on a live model.
        unsafe { sys::llama_model_is_recurrent(self.ptr.as_ptr()) }
    }

    pub(crate) fn is_hybrid(&self) -> bool {
        // SAFETY: read-only query on a live model.
        unsafe { sys::llama_model_is_hybrid(self.ptr.as_ptr()) }
    }

    /// A GGUF metadata value as a string, if the key exists.
    pub(crate) fn meta_str(&self, key: &str) -> Option<String> {
        let key = CString::new(key).ok()?;
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: the buffer is writable for its full length; llama.cpp NUL-terminates and
            // returns the full length it needed (snprintf semantics), or -1 for a missing key.
            let n = unsafe {
                sys::llama_model_meta_val_str(self.ptr.as_ptr(), key.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            if n < 0 {
                return None;
            }
            let n = n as usize;
            if n < buf.len() {
                buf.truncate(n);
                return Some(String::from_utf8_lossy(&buf).into_owned());
            }
            buf.resize(n + 1, 0);
        }
    }

    /// Whether `token` ends a generation. Out-of-range ids are not end tokens.
    pub(crate) fn is_eog(&self, token: Token) -> bool {
        if token < 0 || token >= self.n_vocab() {
            return false;
        }
        // SAFETY: the id is inside the vocabulary (checked above).
        unsafe { sys::llama_vocab_is_eog(self.vocab(), token) }
    }

    /// The vocabulary's special tokens: BOS, EOS, EOT, SEP, newline and padding, each
    /// `None` where the vocabulary has none (llama.cpp's LLAMA_TOKEN_NULL, or out of range).
    pub(crate) fn special_tokens(&self) -> [Option<Token>; 6] {
        let vocab = self.vocab();
        // SAFETY: plain getters of the vocabulary's fields.
        let ids = unsafe {
            [
                sys::llama_vocab_bos(vocab),
                sys::llama_vocab_eos(vocab),
                sys::llama_vocab_eot(vocab),
                sys::llama_vocab_sep(vocab),
                sys::llama_vocab_nl(vocab),
                sys::llama_vocab_pad(vocab),
            ]
        };
        ids.map(|t| (0..self.n_vocab()).contains(&t).then_some(t))
    }

    /// Tokenizes UTF-8 text, parsing special tokens written in it (`<|im_start|>`) when
    /// `parse_special`. The caller makes sure the vocabulary has a tokenizer (llama.cpp
    /// asserts on type "none"). Err: why not.
    pub(crate) fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<Token>, Threw> {
        let len = i32::try_from(text.len()).map_err(|_| Threw("the text is longer than 2 GiB".into()))?;
        // A token covers at least one byte, plus room for BOS/EOS.
        let mut tokens: Vec<Token> = vec![0; text.len() + 2];
        loop {
            let cap = i32::try_from(tokens.len()).map_err(|_| Threw("too many tokens".into()))?;
            let mut n = 0;
            // SAFETY: `text` is readable for `len` bytes and `tokens` writable for `cap` ids;
            // a negative result is the count needed, nothing is written past `cap`.
            let status = unsafe {
                shim::pardec_shim_tokenize(self.vocab(), text.as_ptr().cast(), len, tokens.as_mut_ptr(), cap, add_special, parse_special, &mut n)
            };
            if status != 0 {
                return Err(Threw(shim::last_message()));
            }
            if n == i32::MIN {
                return Err(Threw("the token count overflows".into()));
            }
            if n >= 0 {
                tokens.truncate(n as usize);
                return Ok(tokens);
            }
            tokens.resize((-n) as usize, 0);
        }
    }

    /// Appends the bytes `token` renders to (special tokens rendered as their text).
    pub(crate) fn token_piece(&self, token: Token, out: &mut Vec<u8>) {
        if token < 0 || token >= self.n_vocab() {
            return;
        }
        // A vocabulary whose rendering throws gets U+FFFD: visibly broken, never an abort.
        const BROKEN: &[u8] = "\u{FFFD}".as_bytes();
        let mut buf = [0u8; 64];
        let mut n = 0;
        // SAFETY: the id is inside the vocabulary and the buffer writable for its length.
        if unsafe { shim::pardec_shim_token_to_piece(self.vocab(), token, buf.as_mut_ptr().cast(), 64, 0, true, &mut n) } != 0 {
            out.extend_from_slice(BROKEN);
            return;
        }
        if n >= 0 {
            out.extend_from_slice(&buf[..n as usize]);
            return;
        }
        let mut big = vec![0u8; (-n) as usize];
        // SAFETY: as above, with the length llama.cpp asked for.
        let status = unsafe {
            shim::pardec_shim_token_to_piece(self.vocab(), token, big.as_mut_ptr().cast(), big.len() as i32, 0, true, &mut n)
        };
        if status != 0 {
            out.extend_from_slice(BROKEN);
        } else if n >= 0 {
            out.extend_from_slice(&big[..n as usize]);
        }
    }

    /// The model's own chat template from its metadata, if it has one.
    pub(crate) fn chat_template(&self) -> Option<CString> {
        // SAFETY: returns NULL or a NUL-terminated string owned by the model, copied here.
        let p = unsafe { sys::llama_model_chat_template(self.ptr.as_ptr(), std::ptr::null()) };
        if p.is_null() {
            return None;
        }
        // SAFETY: non-null, NUL-terminated, alive while the model is.
        Some(unsafe { CStr::from_ptr(p) }.to_owned())
    }

    /// Renders (role, content) messages with `template`, ending with the assistant's turn
    /// opened. None: the template is not one llama.cpp knows, or a text holds a NUL byte.
    pub(crate) fn apply_chat_template(template: &CStr, messages: &[(&str, &str)]) -> Option<String> {
        let owned: Vec<(CString, CString)> = messages
            .iter()
            .map(|(r, c)| Some((CString::new(*r).ok()?, CString::new(*c).ok()?)))
            .collect::<Option<_>>()?;
        let chat: Vec<sys::llama_chat_message> = owned
            .iter()
            .map(|(r, c)| sys::llama_chat_message { role: r.as_ptr(), content: c.as_ptr() })
            .collect();
        let total: usize = messages.iter().map(|(r, c)| r.len() + c.len()).sum();
        let mut buf = vec![0u8; 2 * total + 256];
        loop {
            let cap = i32::try_from(buf.len()).ok()?;
            // SAFETY: `chat` points at NUL-terminated strings kept alive by `owned`; the buffer
            // is writable for `cap` bytes; the result is the length needed (or < 0: unknown).
            let mut n = 0;
            let status = unsafe {
                shim::pardec_shim_chat_apply_template(template.as_ptr(), chat.as_ptr(), chat.len(), true, buf.as_mut_ptr().cast(), cap, &mut n)
            };
            if status != 0 || n < 0 {
                return None;
            }
            if (n as usize) <= buf.len() {
                buf.truncate(n as usize);
                return Some(String::from_utf8_lossy(&buf).into_owned());
            }
            buf.resize(n as usize, 0);
        }
    }
}

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
