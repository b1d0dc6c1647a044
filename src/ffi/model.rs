//! Model handles.

use std::ffi::c_char;
use std::mem::size_of;
use std::path::PathBuf;

use super::boundary::{
    array_arg, c_string, guard, guard_void, out_arg, read_versioned, str_arg, write_versioned, FfiError, FfiResult,
    Versioned,
};
use super::params::pardec_model_params;
use super::status::pardec_status;
use crate::Model;

/// A loaded GGUF model (opaque).
///
/// Thread safety: fully thread-safe. One model may be shared by any number of sessions on any
/// number of threads, and its functions may be called concurrently. Each session keeps the
/// model alive, so `pardec_model_free` may be called while sessions still use it.
pub struct pardec_model {
    pub(crate) model: Model,
}

/// Most messages in one `pardec_model_apply_chat_template` call.
pub const PARDEC_MAX_CHAT_MESSAGES: usize = 4096;

/// One chat message for `pardec_model_apply_chat_template`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pardec_chat_message {
    /// "system", "user" or "assistant" (UTF-8).
    pub role: *const c_char,
    /// The message text (UTF-8).
    pub content: *const c_char,
}

/// Borrows a model handle.
///
/// # Safety
/// `p` is NULL or a live handle from `pardec_model_load`.
pub(crate) unsafe fn model_arg<'a>(p: *const pardec_model) -> FfiResult<&'a pardec_model> {
    p.as_ref().ok_or_else(|| FfiError::null("model"))
}

/// The path as the OS spells it. On Unix a path is bytes, not necessarily UTF-8, so any bytes
/// are accepted there; elsewhere it must be UTF-8.
pub(crate) unsafe fn path_arg(p: *const c_char) -> FfiResult<PathBuf> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        if p.is_null() {
            return Err(FfiError::null("path"));
        }
        let bytes = std::ffi::CStr::from_ptr(p).to_bytes();
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
    }
    #[cfg(not(unix))]
    {
        str_arg(p, "path").map(PathBuf::from)
    }
}

/// Loads a GGUF model. `params` may be NULL for the defaults. On success `*out_model` holds a
/// new handle, to be released with `pardec_model_free`.
///
/// Errors: NULL_ARGUMENT (path, out_model), STRUCT_SIZE, INVALID_ARGUMENT, MODEL_NOT_FOUND,
/// NOT_GGUF, MODEL_LOAD, UNSUPPORTED_MODEL (recurrent/hybrid architectures), BACKEND, RPC (a
/// server in `rpc_servers` cannot be reached, or this build has no RPC backend).
#[no_mangle]
pub unsafe extern "C" fn pardec_model_load(
    path: *const c_char,
    params: *const pardec_model_params,
    out_model: *mut *mut pardec_model,
) -> pardec_status {
    guard(|| {
        let path = path_arg(path)?;
        let out = out_arg(out_model, "out_model")?;
        let params = if params.is_null() {
            pardec_model_params::default()
        } else {
            read_versioned(params, pardec_model_params::default())?
        };
        let model = Model::load(&path, &params.to_rust()?)?;
        *out = Box::into_raw(Box::new(pardec_model { model }));
        Ok(())
    })
}

/// Releases a model handle (NULL is ignored). Sessions created from it keep working: they hold
/// their own reference to the model.
#[no_mangle]
pub unsafe extern "C" fn pardec_model_free(model: *mut pardec_model) {
    guard_void(|| {
        if !model.is_null() {
            drop(Box::from_raw(model));
        }
    })
}

/// Writes the vocabulary size to `*out_n_vocab`.
///
/// Errors: NULL_ARGUMENT.
#[no_mangle]
pub unsafe extern "C" fn pardec_model_n_vocab(model: *const pardec_model, out_n_vocab: *mut usize) -> pardec_status {
    guard(|| {
        let model = model_arg(model)?;
        let out = out_arg(out_n_vocab, "out_n_vocab")?;
        *out = model.model.n_vocab();
        Ok(())
    })
}

/// Writes the model's architecture (`general.architecture`, e.g. "llama") to `*out_text`, a new
/// string to release with `pardec_string_free`.
///
/// Errors: NULL_ARGUMENT.
#[no_mangle]
pub unsafe extern "C" fn pardec_model_architecture(
    model: *const pardec_model,
    out_text: *mut *mut c_char,
) -> pardec_status {
    guard(|| {
        let model = model_arg(model)?;
        let out = out_arg(out_text, "out_text")?;
        *out = c_string(model.model.architecture()).into_raw();
        Ok(())
    })
}

/// Formats a chat with the model's own chat template (from its GGUF metadata), ending with the
/// assistant's turn opened, ready for `pardec_session_prompt`. `*out_text` receives a new
/// string to release with `pardec_string_free`.
///
/// Errors: NULL_ARGUMENT, INVALID_UTF8, INVALID_ARGUMENT (0 or more than
/// PARDEC_MAX_CHAT_MESSAGES messages), UNSUPPORTED_MODEL (no usable template).
#[no_mangle]
pub unsafe extern "C" fn pardec_model_apply_chat_template(
    model: *const pardec_model,
    messages: *const pardec_chat_message,
    n_messages: usize,
    out_text: *mut *mut c_char,
) -> pardec_status {
    guard(|| {
        let model = model_arg(model)?;
        if n_messages == 0 {
            return Err(FfiError::invalid("a chat needs at least one message"));
        }
        let messages = array_arg(messages, n_messages, PARDEC_MAX_CHAT_MESSAGES, "messages")?;
        let out = out_arg(out_text, "out_text")?;
        let mut chat = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let role = str_arg(m.role, &format!("messages[{i}].role"))?;
            let content = str_arg(m.content, &format!("messages[{i}].content"))?;
            chat.push((role, content));
        }
        let text = model.model.apply_chat_template(&chat)?;
        *out = c_string(&text).into_raw();
        Ok(())
    })
}

// ----- tokenizer --------------------------------------------------------------------------

/// Most token ids one `pardec_model_detokenize` call renders.
pub const PARDEC_MAX_DETOKENIZE_TOKENS: usize = 1 << 24;

/// The vocabulary's special tokens; -1 where it has none.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pardec_special_tokens {
    /// Beginning of sequence.
    pub bos: i32,
    /// End of sequence.
    pub eos: i32,
    /// End of turn (chat models).
    pub eot: i32,
    /// Separator.
    pub sep: i32,
    /// Newline.
    pub nl: i32,
    /// Padding.
    pub pad: i32,
}

impl Versioned for pardec_special_tokens {
    const NAME: &'static str = "pardec_special_tokens";
    const SIZES: &'static [usize] = &[size_of::<pardec_special_tokens>()];
}

/// A token id inside the model's vocabulary, or INVALID_ARGUMENT.
fn vocab_token(model: &Model, token: i32) -> FfiResult<crate::Token> {
    if token < 0 || token as usize >= model.n_vocab() {
        return Err(FfiError::invalid(format!("token {token} is outside the vocabulary (0..{})", model.n_vocab())));
    }
    Ok(token)
}

/// Copies `items` to `out[0..capacity]` and writes their count to `*out_n`; when they do not
/// fit, writes only the count (the size to retry with) and fails with OUT_OF_RANGE. `out`
/// may be NULL when `capacity` is 0 (a size query).
unsafe fn copy_out<T: Copy>(items: &[T], out: *mut T, capacity: usize, out_n: *mut usize, what: &str) -> FfiResult<()> {
    let n = out_arg(out_n, "out_n")?;
    *n = items.len();
    if items.len() > capacity {
        return Err(FfiError::new(
            pardec_status::OutOfRange,
            format!("{what}: {} needed, capacity {capacity} (retry with *out_n)", items.len()),
        ));
    }
    if !items.is_empty() {
        std::ptr::copy_nonoverlapping(items.as_ptr(), out_arg(out, what)?, items.len());
    }
    Ok(())
}

/// Tokenizes UTF-8 `text` into `out_tokens[0..capacity]` and writes the token count to
/// `*out_n`. `add_bos` adds the model's start token where its metadata asks for one;
/// `parse_special` reads special-token text (`<|im_start|>`) as those tokens; pass false for
/// text from users. When the tokens do not fit, only `*out_n` is written (call again with
/// that capacity); `capacity` `strlen(text) + 2` always suffices.
///
/// Errors: NULL_ARGUMENT, INVALID_UTF8, OUT_OF_RANGE (capacity too small), INVALID_ARGUMENT
/// (a model without a tokenizer, or one llama.cpp fails on).
#[no_mangle]
pub unsafe extern "C" fn pardec_model_tokenize(
    model: *const pardec_model,
    text: *const c_char,
    add_bos: bool,
    parse_special: bool,
    out_tokens: *mut i32,
    capacity: usize,
    out_n: *mut usize,
) -> pardec_status {
    guard(|| {
        let model = &model_arg(model)?.model;
        let text = str_arg(text, "text")?;
        let tokens = model.tokenize_with(text, add_bos, parse_special)?;
        copy_out(&tokens, out_tokens, capacity, out_n, "out_tokens")
    })
}

/// Writes the bytes token `token` renders to (special tokens as their text) to
/// `out_bytes[0..capacity]` and their count to `*out_len`; no NUL is added. A piece need not
/// be valid UTF-8 on its own (a character may span tokens). When it does not fit, only
/// `*out_len` is written.
///
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (token outside the vocabulary), OUT_OF_RANGE.
#[no_mangle]
pub unsafe extern "C" fn pardec_model_token_piece(
    model: *const pardec_model,
    token: i32,
    out_bytes: *mut c_char,
    capacity: usize,
    out_len: *mut usize,
) -> pardec_status {
    guard(|| {
        let model = &model_arg(model)?.model;
        let token = vocab_token(model, token)?;
        let mut bytes = Vec::new();
        model.token_bytes(token, &mut bytes);
        copy_out(&bytes, out_bytes.cast::<u8>(), capacity, out_len, "out_bytes")
    })
}

/// Renders `n_tokens` token ids to text (bytes that are not valid UTF-8 become U+FFFD);
/// `*out_text` receives a new string to release with `pardec_string_free`.
///
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (an id outside the vocabulary, more than
/// PARDEC_MAX_DETOKENIZE_TOKENS ids).
#[no_mangle]
pub unsafe extern "C" fn pardec_model_detokenize(
    model: *const pardec_model,
    tokens: *const i32,
    n_tokens: usize,
    out_text: *mut *mut c_char,
) -> pardec_status {
    guard(|| {
        let model = &model_arg(model)?.model;
        let tokens = array_arg(tokens, n_tokens, PARDEC_MAX_DETOKENIZE_TOKENS, "tokens")?;
        let out = out_arg(out_text, "out_text")?;
        for &t in tokens {
            vocab_token(model, t)?;
        }
        *out = c_string(&model.detokenize(tokens)).into_raw();
        Ok(())
    })
}

/// Writes the vocabulary's special tokens. Pass `sizeof(pardec_special_tokens)` as `size`.
///
/// Errors: NULL_ARGUMENT, STRUCT_SIZE.
#[no_mangle]
pub unsafe extern "C" fn pardec_model_special_tokens(
    model: *const pardec_model,
    out_tokens: *mut pardec_special_tokens,
    size: usize,
) -> pardec_status {
    guard(|| {
        let s = model_arg(model)?.model.special_tokens();
        let id = |t: Option<crate::Token>| t.unwrap_or(-1);
        let tokens = pardec_special_tokens {
            bos: id(s.bos),
            eos: id(s.eos),
            eot: id(s.eot),
            sep: id(s.sep),
            nl: id(s.nl),
            pad: id(s.pad),
        };
        write_versioned(out_tokens, &tokens, size)
    })
}

/// Writes to `*out_is_eog` whether `token` ends a generation (EOS, EOT, ...).
///
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (token outside the vocabulary).
#[no_mangle]
pub unsafe extern "C" fn pardec_model_token_is_eog(
    model: *const pardec_model,
    token: i32,
    out_is_eog: *mut bool,
) -> pardec_status {
    guard(|| {
        let model = &model_arg(model)?.model;
        let token = vocab_token(model, token)?;
        *out_arg(out_is_eog, "out_is_eog")? = model.is_eog(token);
        Ok(())
    })
}
