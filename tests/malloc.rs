//! `vnca::malloc::keep_freed_memory` in a process of its own (the setting is global and
//! glibc gives other threads their own arenas), on the main thread: freed large blocks
//! come back without new page faults. `harness = false` in Cargo.toml.

/// A block above glibc's largest dynamic mmap threshold (32 MiB) and within one heap.
const BYTES: usize = 48 << 20;
const PAGES: i64 = (BYTES / 4096) as i64;

/// Minor page faults of this process so far.
fn minor_faults() -> i64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut u), 0);
        u.ru_minflt
    }
}

/// Faults taken by allocating, writing and freeing a 48 MiB block ten times.
fn faults_of_ten_blocks() -> i64 {
    let before = minor_faults();
    for i in 0..10u8 {
        let block = std::hint::black_box(vec![i + 1; BYTES]);
        assert_eq!(block[BYTES - 1], i + 1);
    }
    minor_faults() - before
}

fn main() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        println!("malloc: not glibc on Linux, nothing to test");
        return;
    }
    // glibc's default: every block is mmapped afresh, every page faults every time.
    let default = faults_of_ten_blocks();
    assert!(
        default >= 9 * PAGES,
        "default allocator: {default} faults, expected about {}",
        10 * PAGES
    );
    assert!(vnca::malloc::keep_freed_memory());
    // Kept in the heap: only the first block faults its pages in.
    let kept = faults_of_ten_blocks();
    assert!(
        kept < 2 * PAGES,
        "freed memory kept: {kept} faults for ten blocks of {PAGES} pages"
    );
    println!("malloc: ten 48 MiB blocks, {default} minor faults by default, {kept} with freed memory kept: ok");
}
