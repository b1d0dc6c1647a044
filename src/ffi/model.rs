//! Model handles.

use std::ffi::c_char;
use std::path::PathBuf;

use super::boundary::{
    array_arg, c_string, guard, guard_void, out_arg, read_versioned, str_arg, FfiError, FfiResult,
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
/// NOT_GGUF, MODEL_LOAD, UNSUPPORTED_MODEL (recurrent/hybrid architectures), BACKEND.
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
pub unsafe extern "C" fn pardec_model_n_vocab(
    model: *const pardec_model,
    out_n_vocab: *mut usize,
) -> pardec_status {
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
