//! A loaded llama.cpp model (its vocabulary, metadata, tokenizer and chat template) and the
//! LoRA adapters loaded for it.

use std::ffi::{CStr, CString};
use std::path::Path;
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use super::{path_cstring, shim, Threw, Token};

/// A loaded llama.cpp model. Read-only once loaded, so it may be shared between threads;
/// creating contexts from it concurrently is serialised by the session module.
pub(crate) struct LlamaModel {
    pub(super) ptr: NonNull<sys::llama_model>,
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
                shim::pardec_shim_tokenize(
                    self.vocab(),
                    text.as_ptr().cast(),
                    len,
                    tokens.as_mut_ptr(),
                    cap,
                    add_special,
                    parse_special,
                    &mut n,
                )
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
        if unsafe {
            shim::pardec_shim_token_to_piece(self.vocab(), token, buf.as_mut_ptr().cast(), 64, 0, true, &mut n)
        } != 0
        {
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
            shim::pardec_shim_token_to_piece(
                self.vocab(),
                token,
                big.as_mut_ptr().cast(),
                big.len() as i32,
                0,
                true,
                &mut n,
            )
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
        let chat: Vec<sys::llama_chat_message> =
            owned.iter().map(|(r, c)| sys::llama_chat_message { role: r.as_ptr(), content: c.as_ptr() }).collect();
        let total: usize = messages.iter().map(|(r, c)| r.len() + c.len()).sum();
        let mut buf = vec![0u8; 2 * total + 256];
        loop {
            let cap = i32::try_from(buf.len()).ok()?;
            // SAFETY: `chat` points at NUL-terminated strings kept alive by `owned`; the buffer
            // is writable for `cap` bytes; the result is the length needed (or < 0: unknown).
            let mut n = 0;
            let status = unsafe {
                shim::pardec_shim_chat_apply_template(
                    template.as_ptr(),
                    chat.as_ptr(),
                    chat.len(),
                    true,
                    buf.as_mut_ptr().cast(),
                    cap,
                    &mut n,
                )
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
