//! The panic boundary and argument checking shared by every `extern "C"` function.
//!
//! Rules kept here so each entry point stays short:
//! - every body runs inside [`guard`]: a panic becomes `PARDEC_STATUS_PANIC`, never an unwind
//!   into C, and the failure's message lands in the thread-local last error;
//! - pointers, strings, counts and struct sizes are checked before anything reaches llama.cpp
//!   (its asserts abort the process and cannot be caught);
//! - out-params are written at the very end, only on success.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::status::pardec_status;
use crate::error::Error;

/// A failure at the C boundary: the status to return and the detail for `pardec_last_error`.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub status: pardec_status,
    pub message: String,
    /// The failed call had begun generating and its text so far is kept in the session
    /// ([`Error::keeps_partial_output`]); false for errors raised by this layer.
    pub kept_partial_output: bool,
}

impl FfiError {
    pub fn new(status: pardec_status, message: impl Into<String>) -> Self {
        FfiError { status, message: message.into(), kept_partial_output: false }
    }

    pub fn null(what: &str) -> Self {
        Self::new(pardec_status::NullArgument, format!("{what} is NULL"))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(pardec_status::InvalidArgument, message)
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        FfiError {
            status: pardec_status::from(&e),
            message: e.to_string(),
            kept_partial_output: e.keeps_partial_output(),
        }
    }
}

pub(crate) type FfiResult<T> = Result<T, FfiError>;

thread_local! {
    /// The detail of the last failed call on this thread (`pardec_last_error`).
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(crate) fn set_last_error(message: &str) {
    let c = c_string(message);
    // `try_with`: during thread teardown the slot may be gone; losing the message is fine.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = c);
}

fn clear_last_error() {
    let _ = LAST_ERROR.try_with(|slot| {
        let mut slot = slot.borrow_mut();
        if !slot.as_bytes().is_empty() {
            *slot = CString::default();
        }
    });
}

/// Pointer to this thread's last error (valid until the next pardec call on this thread).
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.try_with(|slot| slot.borrow().as_ptr()).unwrap_or(c"".as_ptr())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Runs the body of a fallible C function: clears the last error, catches panics and maps the
/// outcome to a status.
pub(crate) fn guard(body: impl FnOnce() -> FfiResult<()>) -> pardec_status {
    clear_last_error();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => pardec_status::Ok,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.status
        }
        Err(payload) => {
            set_last_error(&format!("panic: {}", panic_message(payload.as_ref())));
            pardec_status::Panic
        }
    }
}

/// Runs the body of a function with no status (the `_free` functions): a panic is caught and
/// recorded as the last error, nothing else can be reported.
pub(crate) fn guard_void(body: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(body)) {
        set_last_error(&format!("panic: {}", panic_message(payload.as_ref())));
    }
}

/// Runs the body of a function returning a static string (no status to report): a panic
/// gives "" instead of unwinding.
pub(crate) fn guard_str(body: impl FnOnce() -> *const c_char) -> *const c_char {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(c"".as_ptr())
}

/// The state behind a handle that one call at a time may use (a session, conversations): a
/// call that finds it in use gets BUSY instead of waiting (a callback re-entering would
/// deadlock), and once a call panicked inside it, its state may be inconsistent, so every later
/// call gets PANIC.
pub(crate) struct Exclusive<T> {
    inner: Mutex<T>,
    poisoned: AtomicBool,
    /// What the handle is, for the errors ("session", "conversations").
    what: &'static str,
}

impl<T> Exclusive<T> {
    pub(crate) fn new(value: T, what: &'static str) -> Self {
        Exclusive { inner: Mutex::new(value), poisoned: AtomicBool::new(false), what }
    }

    /// Runs `f` with the state, or refuses with BUSY or PANIC.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> FfiResult<R>) -> FfiResult<R> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(FfiError::new(
                pardec_status::Panic,
                format!("an earlier call panicked inside this {}; free it and create a new one", self.what),
            ));
        }
        let mut state = self.inner.try_lock().ok_or_else(|| {
            FfiError::new(
                pardec_status::Busy,
                format!(
                    "the {} is in use (a call from inside its own callback, or from another thread at the same time)",
                    self.what
                ),
            )
        })?;
        let _poison = PoisonOnUnwind(&self.poisoned);
        f(&mut state)
    }

    /// Whether a call is inside it now (freeing it then would pull the state from under it).
    pub(crate) fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }
}

/// Marks a handle poisoned if dropped during a panic.
struct PoisonOnUnwind<'a>(&'a AtomicBool);

impl Drop for PoisonOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// A Rust string as a C string. Interior NUL bytes (which C cannot represent and which would
/// make `pardec_string_free` compute a wrong length) become U+FFFD.
pub(crate) fn c_string(s: &str) -> CString {
    match CString::new(s) {
        Ok(c) => c,
        Err(_) => CString::new(s.replace('\0', "\u{FFFD}")).expect("NULs were replaced"),
    }
}

/// Fills `buf` with `s` and a terminating NUL (interior NULs become U+FFFD), reusing its
/// allocation: for event fields, which are only valid during the callback.
pub(crate) fn fill_c_buf(buf: &mut Vec<u8>, s: &str) {
    buf.clear();
    if s.as_bytes().contains(&0) {
        buf.extend_from_slice(s.replace('\0', "\u{FFFD}").as_bytes());
    } else {
        buf.extend_from_slice(s.as_bytes());
    }
    buf.push(0);
}

/// Borrows a required C string as UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives the returned borrow.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(FfiError::null(what));
    }
    CStr::from_ptr(p).to_str().map_err(|e| {
        FfiError::new(pardec_status::InvalidUtf8, format!("{what} is not valid UTF-8 (byte {})", e.valid_up_to()))
    })
}

/// Borrows an optional C string (NULL: `None`) as UTF-8.
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn opt_str_arg<'a>(p: *const c_char, what: &str) -> FfiResult<Option<&'a str>> {
    if p.is_null() {
        Ok(None)
    } else {
        str_arg(p, what).map(Some)
    }
}

/// Borrows a C array of `n` elements. `n == 0` gives an empty slice whatever `p` is; `n`
/// above `max` is refused before `p` is touched (a garbage count must not become a read of
/// gigabytes).
///
/// # Safety
/// When `0 < n <= max`, `p` is NULL or points to `n` valid elements.
pub(crate) unsafe fn array_arg<'a, T>(p: *const T, n: usize, max: usize, what: &str) -> FfiResult<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if n > max {
        return Err(FfiError::invalid(format!("{what}: count {n} is above the limit of {max}")));
    }
    if p.is_null() {
        return Err(FfiError::null(what));
    }
    Ok(std::slice::from_raw_parts(p, n))
}

/// Checks that an out-pointer is not NULL.
pub(crate) fn out_arg<T>(p: *mut T, what: &str) -> FfiResult<*mut T> {
    if p.is_null() {
        Err(FfiError::null(what))
    } else {
        Ok(p)
    }
}

/// A `#[repr(C)]` struct whose layout may grow by appending fields. `SIZES` lists the sizes of
/// every released layout, oldest first; the last is the current `size_of::<Self>()`. A caller
/// built against an older header passes an older size and is served the fields it knows.
pub(crate) trait Versioned: Copy {
    const NAME: &'static str;
    const SIZES: &'static [usize];
}

pub(crate) fn check_size<T: Versioned>(size: usize) -> FfiResult<()> {
    debug_assert_eq!(T::SIZES.last(), Some(&std::mem::size_of::<T>()));
    if T::SIZES.contains(&size) {
        Ok(())
    } else {
        Err(FfiError::new(
            pardec_status::StructSize,
            format!(
                "{} has size {size}, this library knows {:?} (is the header from another pardec version?)",
                T::NAME,
                T::SIZES
            ),
        ))
    }
}

/// Reads an input struct whose first field is `size_t struct_size`: fields beyond an older
/// caller's size keep their `defaults`.
///
/// # Safety
/// `p` is NULL or points to at least `struct_size` readable bytes (the caller's own struct).
pub(crate) unsafe fn read_versioned<T: Versioned>(p: *const T, defaults: T) -> FfiResult<T> {
    if p.is_null() {
        return Err(FfiError::null(T::NAME));
    }
    let size = std::ptr::read_unaligned(p as *const usize);
    check_size::<T>(size)?;
    let mut value = defaults;
    std::ptr::copy_nonoverlapping(p as *const u8, &mut value as *mut T as *mut u8, size);
    Ok(value)
}

/// Writes the first `size` bytes of `value` to `p` (an output struct of a known version).
///
/// # Safety
/// `p` is NULL or points to at least `size` writable bytes.
pub(crate) unsafe fn write_versioned<T: Versioned>(p: *mut T, value: &T, size: usize) -> FfiResult<()> {
    let p = out_arg(p, T::NAME)?;
    check_size::<T>(size)?;
    std::ptr::copy_nonoverlapping(value as *const T as *const u8, p as *mut u8, size);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_turns_panics_into_a_status_and_a_message() {
        let status = guard(|| panic!("boom {}", 42));
        assert_eq!(status, pardec_status::Panic);
        let msg = unsafe { CStr::from_ptr(last_error_ptr()) }.to_str().unwrap().to_string();
        assert!(msg.contains("boom 42"), "{msg}");
        // The next successful call clears it.
        assert_eq!(guard(|| Ok(())), pardec_status::Ok);
        assert_eq!(unsafe { CStr::from_ptr(last_error_ptr()) }.to_bytes(), b"");
    }

    #[test]
    fn errors_map_to_their_status_and_message() {
        let status = guard(|| Err(Error::EmptyPrompt.into()));
        assert_eq!(status, pardec_status::EmptyPrompt);
        let msg = unsafe { CStr::from_ptr(last_error_ptr()) }.to_str().unwrap().to_string();
        assert!(msg.contains("empty"), "{msg}");
    }

    #[test]
    fn strings_with_nul_survive_as_replacement_characters() {
        assert_eq!(c_string("a\0b").to_str().unwrap(), "a\u{FFFD}b");
        let mut buf = Vec::new();
        fill_c_buf(&mut buf, "x\0");
        assert_eq!(buf, "x\u{FFFD}\0".as_bytes());
    }

    #[test]
    fn arrays_refuse_null_and_huge_counts_before_reading() {
        let p: *const u32 = std::ptr::null();
        unsafe {
            assert!(array_arg(p, 0, 4, "xs").unwrap().is_empty());
            assert_eq!(array_arg(p, 1, 4, "xs").unwrap_err().status, pardec_status::NullArgument);
            // A bogus non-null pointer with a huge count is never dereferenced.
            let bogus = 16 as *const u32;
            assert_eq!(array_arg(bogus, usize::MAX, 4, "xs").unwrap_err().status, pardec_status::InvalidArgument);
        }
    }
}
