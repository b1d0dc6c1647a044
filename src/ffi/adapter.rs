//! LoRA adapter handles, and applying them to sessions.

use std::ffi::c_char;

use super::boundary::{array_arg, guard, guard_void, out_arg, FfiError};
use super::model::{model_arg, pardec_model, path_arg};
use super::session::{pardec_session, with_session};
use super::status::pardec_status;
use crate::Adapter;

/// A LoRA adapter loaded for one model (opaque).
///
/// Thread safety: fully thread-safe, like a model. Sessions using it hold their own reference,
/// so `pardec_adapter_free` may be called while they still decode with it.
pub struct pardec_adapter {
    pub(crate) adapter: Adapter,
}

/// Most adapters applied to one session at once.
pub const PARDEC_MAX_ADAPTERS: usize = 64;

/// Loads a GGUF LoRA adapter for `model`. On success `*out_adapter` holds a new handle, to be
/// released with `pardec_adapter_free`.
///
/// Errors: NULL_ARGUMENT, MODEL_NOT_FOUND (no such file), NOT_GGUF, NOT_ADAPTER (a GGUF that
/// is not a LoRA adapter, or a malformed one), ADAPTER_MISMATCH (made for another
/// architecture, or tensors the model lacks or of other shapes), MODEL_LOAD (llama.cpp refused
/// it).
#[no_mangle]
pub unsafe extern "C" fn pardec_adapter_load(
    model: *const pardec_model,
    path: *const c_char,
    out_adapter: *mut *mut pardec_adapter,
) -> pardec_status {
    guard(|| {
        let model = model_arg(model)?;
        let path = path_arg(path)?;
        let out = out_arg(out_adapter, "out_adapter")?;
        let adapter = Adapter::load(&model.model, &path)?;
        *out = Box::into_raw(Box::new(pardec_adapter { adapter }));
        Ok(())
    })
}

/// Releases an adapter handle (NULL is ignored). Sessions still using the adapter keep it.
#[no_mangle]
pub unsafe extern "C" fn pardec_adapter_free(adapter: *mut pardec_adapter) {
    guard_void(|| {
        if !adapter.is_null() {
            drop(Box::from_raw(adapter));
        }
    })
}

/// Replaces the session's LoRA adapters with `adapters[0..n]`, each at `scales[i]` (1.0: as
/// trained; 0 disables it); `n == 0` returns to the base model. Cells already in the KV cache
/// keep the values computed before: call `pardec_session_clear` first for a clean switch.
///
/// Errors: NULL_ARGUMENT, BUSY, INVALID_ARGUMENT (n above PARDEC_MAX_ADAPTERS, an adapter
/// loaded for another model, a scale that is not finite, an adapter listed twice); on an error
/// the session keeps its previous adapters.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_set_adapters(
    session: *mut pardec_session,
    adapters: *const *const pardec_adapter,
    scales: *const f32,
    n: usize,
) -> pardec_status {
    guard(|| {
        let handles = array_arg(adapters, n, PARDEC_MAX_ADAPTERS, "adapters")?;
        let scales = array_arg(scales, n, PARDEC_MAX_ADAPTERS, "scales")?;
        let mut list = Vec::with_capacity(n);
        for (i, (&handle, &scale)) in handles.iter().zip(scales).enumerate() {
            let handle = handle.as_ref().ok_or_else(|| FfiError::null(&format!("adapters[{i}]")))?;
            list.push((handle.adapter.clone(), scale));
        }
        with_session(session, |s| Ok(s.set_adapters(&list)?))
    })
}
