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
//!
//! - `model`: a loaded model and its LoRA adapters (`LlamaModel`, `LlamaAdapter`);
//! - `context`: a context with its backend sampler chains, and the token batch it decodes;
//! - `grammar_sampler`: llama.cpp's grammar sampler, one per branch (`GrammarSampler`);
//! - `gbnf`: a port of llama.cpp's GBNF parser and checks, run before llama.cpp sees a grammar;
//! - `shim`: the catching wrappers every throwing call goes through.

mod context;
mod gbnf;
mod grammar_sampler;
mod model;
mod shim;

use std::ffi::{CStr, CString};
use std::path::Path;

use llama_cpp_sys_2 as sys;

pub(crate) use context::{Batch, ContextConfig, LlamaContext, Sampled};
pub(crate) use grammar_sampler::{GrammarSampler, JSON_OBJECT_GBNF};
pub(crate) use model::{LlamaAdapter, LlamaModel, LoadFailure};

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
pub(crate) fn quantize_file(
    input: &CStr,
    output: &CStr,
    ftype: sys::llama_ftype,
    n_threads: u32,
) -> Result<(), String> {
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
