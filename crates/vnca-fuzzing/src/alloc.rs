//! The largest single allocation a read makes, counted by a global allocator.
//!
//! A corrupt header may claim lengths up to 2^64; a reader that trusted one would ask
//! for that much at once. Each test binary installs [`PeakAlloc`]:
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: vnca_fuzzing::alloc::PeakAlloc = vnca_fuzzing::alloc::PeakAlloc;
//! ```
//!
//! and wraps each read in [`largest_allocation`]. Readers that decode on several
//! threads are measured over [`Scope::AllThreads`] (reads serialised, so two do not
//! overlap); single-threaded ones over [`Scope::ThisThread`], which lets the test
//! threads run in parallel and keeps what other tests allocate out of the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

/// The system allocator, noting the size of every request.
pub struct PeakAlloc;

/// Which allocations count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Those of the calling thread only.
    ThisThread,
    /// Those of every thread, one measured read at a time.
    AllThreads,
}

/// Set by the first allocation through [`PeakAlloc`]: proof that it is installed.
static INSTALLED: AtomicBool = AtomicBool::new(false);
static ARMED: AtomicBool = AtomicBool::new(false);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static SERIAL: Mutex<()> = Mutex::new(());

thread_local! {
    static THREAD_PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    if !INSTALLED.load(Relaxed) {
        INSTALLED.store(true, Relaxed);
    }
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = THREAD_PEAK.try_with(|p| p.set(p.get().max(size)));
    if ARMED.load(Relaxed) {
        PEAK.fetch_max(size, Relaxed);
    }
}

unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// Disarms the process-wide count even if the measured read panics.
struct Disarm;

impl Drop for Disarm {
    fn drop(&mut self) {
        ARMED.store(false, Relaxed);
    }
}

/// Runs `f` and returns its result with the largest single allocation requested
/// meanwhile, counted over `scope`.
///
/// # Panics
/// If the test binary did not install [`PeakAlloc`] as its global allocator (the count
/// would silently be 0).
pub fn largest_allocation<T>(scope: Scope, f: impl FnOnce() -> T) -> (T, usize) {
    assert!(
        INSTALLED.load(Relaxed),
        "vnca_fuzzing::alloc::PeakAlloc is not this binary's #[global_allocator]"
    );
    match scope {
        Scope::ThisThread => {
            THREAD_PEAK.with(|p| p.set(0));
            let out = f();
            (out, THREAD_PEAK.with(Cell::get))
        }
        Scope::AllThreads => {
            let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
            PEAK.store(0, Relaxed);
            ARMED.store(true, Relaxed);
            let disarm = Disarm;
            let out = f();
            drop(disarm);
            (out, PEAK.load(Relaxed))
        }
    }
}
