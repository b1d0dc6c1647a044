//! The stable C ABI. `include/pardec.h` is generated from this module by cbindgen
//! (`cbindgen.toml`; `tests/ffi_header.rs` fails when the checked-in header is stale).
//!
//! Conventions (also in the header's preamble):
//! - opaque handles `pardec_model`, `pardec_adapter`, `pardec_session`, `pardec_conversations`, `pardec_result`, each with a `_free` that
//!   accepts NULL;
//! - every fallible function returns a `pardec_status` and writes its out-params only on
//!   success; `pardec_last_error()` gives the detail on the calling thread;
//! - strings in are NUL-terminated UTF-8; strings out are either owned by a handle
//!   (`const char *`) or new (`char *`, released with `pardec_string_free`, never `free`);
//! - input structs start with `size_t struct_size` and get their defaults from a
//!   `pardec_*_default()` function; output structs are passed with their `sizeof`;
//! - no panic crosses the boundary, and every argument is checked before llama.cpp sees it.
//!
//! Nothing here holds logic of its own: each function converts arguments, calls the Rust API,
//! and converts the outcome back.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)] // each function's contract is in its doc comment

mod adapter;
mod boundary;
mod conversations;
mod events;
mod model;
mod node;
mod params;
mod result;
mod session;
mod status;

use std::ffi::c_char;

pub use adapter::*;
pub use conversations::*;
pub use events::*;
pub use model::*;
pub use node::*;
pub use params::*;
pub use result::*;
pub use session::*;
pub use status::pardec_status;

/// The library's version, e.g. "0.2.0": compare with PARDEC_VERSION to detect a header/library
/// mismatch. Static storage; never free it.
#[no_mangle]
pub extern "C" fn pardec_version() -> *const c_char {
    boundary::guard_str(|| concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char)
}

/// A static, human-readable description of a status (any integer is accepted; unknown values
/// give "unknown status"). Never free it.
#[no_mangle]
pub extern "C" fn pardec_status_str(status: i32) -> *const c_char {
    boundary::guard_str(|| {
        usize::try_from(status)
            .ok()
            .and_then(|i| status::STATUS_TABLE.get(i))
            .map_or(c"unknown status".as_ptr(), |(_, _, text)| text.as_ptr())
    })
}

/// The detail of the last failed pardec call on this thread ("" if the last call succeeded).
/// Valid until the next pardec call on this thread; never free it.
#[no_mangle]
pub extern "C" fn pardec_last_error() -> *const c_char {
    boundary::guard_str(boundary::last_error_ptr)
}

/// Releases a string that pardec returned as `char *` (NULL is ignored). Do not use `free()`:
/// the string was allocated by Rust's allocator.
#[no_mangle]
pub unsafe extern "C" fn pardec_string_free(s: *mut c_char) {
    boundary::guard_void(|| {
        if !s.is_null() {
            drop(std::ffi::CString::from_raw(s));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn version_and_status_strings_are_static_c_strings() {
        let v = unsafe { CStr::from_ptr(pardec_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
        let ok = unsafe { CStr::from_ptr(pardec_status_str(0)) };
        assert_eq!(ok.to_str().unwrap(), "success");
        for bad in [-1, status::STATUS_TABLE.len() as i32, i32::MAX] {
            let s = unsafe { CStr::from_ptr(pardec_status_str(bad)) };
            assert_eq!(s.to_str().unwrap(), "unknown status");
        }
    }
}
