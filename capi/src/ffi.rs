//! What every exported function shares: status codes, the thread-local last-error message, the
//! guard that turns errors and panics into a status, and UTF-8 strings in and out.

use plumb_rs::Error;
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a call did. `PLUMB_STATUS_OK` is 0; every other value comes with a message from
/// `plumb_last_error()` on the same thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlumbStatus {
    /// Success.
    Ok = 0,
    /// A NULL pointer, a string that is not UTF-8, or a call in the wrong order (for example
    /// saving an adapter before one is attached).
    InvalidArgument = 1,
    /// A setting is invalid: bad JSON, an unknown field, a value out of range.
    Config = 2,
    /// A file could not be read or written.
    Io = 3,
    /// A file exists but its content is wrong (bad header, missing tensor, bad JSON).
    Format = 4,
    /// The GPU: no adapter, a device error, out of GPU memory, a tensor too large.
    Gpu = 5,
    /// A loss or a logit became NaN or infinite.
    NonFinite = 6,
    /// The model is running another call (one call at a time per model); nothing was done.
    Busy = 7,
    /// The call stopped early because of `plumb_model_cancel` or a callback returning false.
    /// What it finished is kept (training: a checkpoint when `out_dir` is set).
    Cancelled = 8,
    /// The output buffer is too small; the size needed was written.
    BufferTooSmall = 9,
    /// This build cannot do it (for example KTO, or a GGUF file).
    Unsupported = 10,
    /// A bug in plumb: an internal panic, caught at the boundary.
    Panic = 11,
}

/// An error on its way to the caller: a status and the message for `plumb_last_error`.
#[derive(Debug)]
pub(crate) struct CError {
    pub status: PlumbStatus,
    pub msg: String,
}

impl CError {
    pub fn new(status: PlumbStatus, msg: impl Into<String>) -> CError {
        CError { status, msg: msg.into() }
    }
    pub fn arg(msg: impl Into<String>) -> CError {
        CError::new(PlumbStatus::InvalidArgument, msg)
    }
}

impl From<Error> for CError {
    fn from(e: Error) -> CError {
        let status = match &e {
            Error::NoAdapter(_) | Error::Device { .. } | Error::OutOfMemory { .. } | Error::TooLarge { .. } | Error::Gpu { .. } => PlumbStatus::Gpu,
            Error::Shape { .. } => PlumbStatus::InvalidArgument,
            Error::NonFinite { .. } => PlumbStatus::NonFinite,
            Error::Io { .. } => PlumbStatus::Io,
            Error::Format { .. } => PlumbStatus::Format,
            Error::Config { .. } => PlumbStatus::Config,
        };
        CError { status, msg: e.to_string() }
    }
}

pub(crate) type CResult<T> = std::result::Result<T, CError>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).expect("NUL bytes replaced");
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Run the body of an exported function: its error or panic becomes a status and the calling
/// thread's last-error message, prefixed with the function's name.
pub(crate) fn guard(func: &str, body: impl FnOnce() -> CResult<()>) -> PlumbStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => PlumbStatus::Ok,
        Ok(Err(e)) => {
            set_last_error(&format!("{func}: {}", e.msg));
            e.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("{func}: internal error (panic): {what}"));
            PlumbStatus::Panic
        }
    }
}

/// A required UTF-8 string argument.
pub(crate) fn str_arg<'a>(p: *const c_char, name: &str) -> CResult<&'a str> {
    opt_str_arg(p, name)?.ok_or_else(|| CError::arg(format!("`{name}` is NULL")))
}

/// An optional UTF-8 string argument (NULL = None).
pub(crate) fn opt_str_arg<'a>(p: *const c_char, name: &str) -> CResult<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller passes a NUL-terminated string that outlives the call (header contract).
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map(Some).map_err(|e| CError::arg(format!("`{name}` is not valid UTF-8: {e}")))
}

/// A required pointer argument, as a reference.
pub(crate) fn ref_arg<'a, T>(p: *const T, name: &str) -> CResult<&'a T> {
    // SAFETY: non-NULL handles come from this library's constructors (header contract).
    unsafe { p.as_ref() }.ok_or_else(|| CError::arg(format!("`{name}` is NULL")))
}

/// Write a new C string to `*out` (freed by `plumb_string_free`); nothing when `out` is NULL.
pub(crate) fn put_string(out: *mut *mut c_char, s: &str) {
    if !out.is_null() {
        let c = CString::new(s.replace('\0', " ")).expect("NUL bytes replaced");
        // SAFETY: `out` is non-NULL and points to writable storage (header contract).
        unsafe { *out = c.into_raw() };
    }
}

/// Write `v` to `*out` when `out` is not NULL.
pub(crate) fn put<T>(out: *mut T, v: T) {
    if !out.is_null() {
        // SAFETY: `out` is non-NULL and points to writable storage (header contract).
        unsafe { out.write(v) };
    }
}

/// A required output pointer.
pub(crate) fn out_arg<T>(p: *mut T, name: &str) -> CResult<*mut T> {
    if p.is_null() {
        return Err(CError::arg(format!("`{name}` (the output pointer) is NULL")));
    }
    Ok(p)
}

/// The message of the last failed call on this thread ("" if none failed yet). The string
/// belongs to the library and stays valid until the next failing call on the same thread.
#[no_mangle]
pub extern "C" fn plumb_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Free a string that the library returned (through a `char **` output). NULL is ignored.
///
/// # Safety
/// `s` must come from this library and must not be freed twice.
#[no_mangle]
pub unsafe extern "C" fn plumb_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: the string was made by `CString::into_raw` in `put_string` (contract above).
        drop(unsafe { CString::from_raw(s) });
    }
}

/// The library's version, e.g. "0.1.0" (a static string: do not free it).
#[no_mangle]
pub extern "C" fn plumb_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
