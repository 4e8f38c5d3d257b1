//! glibc's allocator, tuned for libtorch's large short-lived CPU tensors.
//!
//! glibc serves every allocation above its mmap threshold (128 KiB, rising to at most
//! 32 MiB) with a fresh `mmap` and gives it back with `munmap` when freed, so the kernel
//! zeroes new pages on every step. Evaluation (IWAE-128: a [128 x images] batch of cell
//! grids, no autograd to keep buffers alive) allocates and frees tensors of tens of MiB
//! at every NCA step: half of `vnca eval`'s time went to page faults in the kernel
//! (docs/BENCHMARKS.md, lever 7). Raising the mmap and trim thresholds keeps freed
//! blocks in the heap for reuse; the resident memory then stays near the run's peak
//! instead of falling back between steps.

/// Keep freed memory in the process for reuse (glibc on Linux; a no-op elsewhere).
/// Returns whether the allocator took the setting. Call it once at start-up.
/// Tested in tests/malloc.rs (its own process: the setting is global).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const HUGE: libc::c_int = libc::c_int::MAX;
        // SAFETY: mallopt only sets allocator parameters; no pointers are passed.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, HUGE) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, HUGE) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
