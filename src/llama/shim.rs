//! The catching wrappers of src/shim/llama_shim.cpp (build.rs compiles it): each returns 0
//! with the call's result in `out`, or i32::MIN (PARDEC_SHIM_THREW) when llama.cpp threw.
//! Every call of the llama.cpp layer that can throw goes through one of them.

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
    pub(super) fn pardec_shim_decode(
        ctx: *mut sys::llama_context,
        batch: *const sys::llama_batch,
        out: *mut i32,
    ) -> i32;
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
    pub(super) fn pardec_shim_grammar_init(
        vocab: *const sys::llama_vocab,
        grammar: *const c_char,
        root: *const c_char,
        out: *mut *mut sys::llama_sampler,
    ) -> i32;
    pub(super) fn pardec_shim_sampler_apply(
        smpl: *mut sys::llama_sampler,
        cur_p: *mut sys::llama_token_data_array,
    ) -> i32;
    pub(super) fn pardec_shim_sampler_accept(smpl: *mut sys::llama_sampler, token: sys::llama_token) -> i32;
    pub(super) fn pardec_shim_sampler_clone(smpl: *const sys::llama_sampler, out: *mut *mut sys::llama_sampler) -> i32;
    pub(super) fn pardec_shim_sampler_free(smpl: *mut sys::llama_sampler) -> i32;
}

/// The message of the exception the last failed wrapper on this thread caught.
pub(super) fn last_message() -> String {
    // SAFETY: a NUL-terminated thread-local buffer of the shim's, always initialised.
    unsafe { CStr::from_ptr(pardec_shim_last_message()) }.to_string_lossy().into_owned()
}
