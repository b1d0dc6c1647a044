//! The process-wide llama.cpp backend.
//!
//! llama.cpp's backend may be initialised once per process (`LlamaBackend::init` fails the
//! second time), yet every model load and context creation needs a reference to it. pardec
//! initialises it lazily on first use and keeps it for the life of the process.

use llama_cpp_2::llama_backend::LlamaBackend;
use once_cell::sync::OnceCell;

use crate::error::{Error, Result};

static BACKEND: OnceCell<LlamaBackend> = OnceCell::new();

/// The shared llama.cpp backend, initialised on first call.
///
/// llama.cpp's own logging is silenced unless `PARDEC_LLAMA_LOG=1` is set, so that a library
/// embedded in an application does not write to its stderr.
pub fn backend() -> Result<&'static LlamaBackend> {
    BACKEND.get_or_try_init(|| {
        let mut backend =
            LlamaBackend::init().map_err(|e| Error::Backend(format!("llama.cpp backend failed to start: {e}")))?;
        if std::env::var_os("PARDEC_LLAMA_LOG").map_or(true, |v| v != "1") {
            backend.void_logs();
        }
        Ok(backend)
    })
}
