//! SQLite's memory, set up once per process. Under the preloaded bench SQLite allocated through
//! glibc's malloc (8 % of the daemon's CPU, three quarters of it called by SQLite: page cache
//! entries, values copied out of rows) and took a global mutex around every allocation to keep
//! memory statistics nobody reads. Here its allocations go to mimalloc, the daemon's own
//! allocator, and the statistics are off. The only `unsafe` of the daemon: SQLite's C API.

use libsqlite3_sys as ffi;
use std::os::raw::{c_int, c_void};

/// Bytes before each block that hold its size (SQLite asks a block's size back: `xSize`). Eight,
/// so a block stays 8-aligned (mimalloc returns 16-aligned memory), as SQLite requires.
const HEADER: usize = 8;

unsafe extern "C" fn malloc(n: c_int) -> *mut c_void {
    let Ok(n) = usize::try_from(n) else {
        return std::ptr::null_mut();
    };
    // SAFETY: mi_malloc returns null or a block of at least n + HEADER bytes, 16-aligned.
    unsafe {
        let p = libmimalloc_sys::mi_malloc(n + HEADER).cast::<u8>();
        if p.is_null() {
            return std::ptr::null_mut();
        }
        p.cast::<u64>().write(n as u64);
        p.add(HEADER).cast()
    }
}

unsafe extern "C" fn free(p: *mut c_void) {
    if !p.is_null() {
        // SAFETY: p came from `malloc` or `realloc` above: its block starts HEADER bytes before.
        unsafe { libmimalloc_sys::mi_free(p.cast::<u8>().sub(HEADER).cast()) }
    }
}

unsafe extern "C" fn realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    if p.is_null() {
        // SAFETY: as `malloc`.
        return unsafe { malloc(n) };
    }
    let Ok(n) = usize::try_from(n) else {
        return std::ptr::null_mut();
    };
    // SAFETY: p came from `malloc` or `realloc`; on failure the old block is left as it was.
    unsafe {
        let q =
            libmimalloc_sys::mi_realloc(p.cast::<u8>().sub(HEADER).cast(), n + HEADER).cast::<u8>();
        if q.is_null() {
            return std::ptr::null_mut();
        }
        q.cast::<u64>().write(n as u64);
        q.add(HEADER).cast()
    }
}

unsafe extern "C" fn size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    // SAFETY: p came from `malloc` or `realloc`, which wrote its size (≤ c_int::MAX) before it.
    unsafe { p.cast::<u8>().sub(HEADER).cast::<u64>().read() as c_int }
}

unsafe extern "C" fn roundup(n: c_int) -> c_int {
    n.saturating_add(7) & !7
}

unsafe extern "C" fn init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn shutdown(_: *mut c_void) {}

/// Points SQLite's allocations at mimalloc and turns its memory statistics off. Call it first
/// thing in `main`, while the process has one thread (`sqlite3_config` must not race another
/// thread's use of SQLite); once SQLite has started (a connection was opened) it changes
/// nothing, and SQLite keeps its own allocator. Returns whether both settings took.
pub fn use_daemon_allocator() -> bool {
    let methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(malloc),
        xFree: Some(free),
        xRealloc: Some(realloc),
        xSize: Some(size),
        xRoundup: Some(roundup),
        xInit: Some(init),
        xShutdown: Some(shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: called before SQLite is initialised (else it returns SQLITE_MISUSE and changes
    // nothing); SQLite copies `methods` before returning.
    unsafe {
        let stats = ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int);
        let alloc = ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &methods as *const _);
        stats == ffi::SQLITE_OK && alloc == ffi::SQLITE_OK
    }
}
