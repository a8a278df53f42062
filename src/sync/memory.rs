//! Giving freed memory back to the system after the work that needs most of
//! it (a walk of the whole tree, an audit, a plan of the whole tree): glibc
//! keeps freed small blocks for reuse, so otherwise the daemon's resident size
//! would stay at that peak, several copies of a big tree, for good.

/// Allocations at least this big get a mapping of their own, unmapped when freed.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Keeps big allocations (the trees' sorted lists, a walk's or an audit's
/// lists) out of glibc's heaps, for good. glibc's default threshold is
/// 128 KiB too, but it rises to the size of every mapped block freed (up to
/// 32 MiB): after the first walk the next big lists go into the heaps of the
/// threads that made them, and what is freed between live blocks there stays
/// resident, malloc_trim or not. Measured on the test bed (100,000 files
/// indexed, idle after a restart and the audit, tests/bench/ab): 37.8 MiB RSS
/// with the rising threshold, 23.2 MiB with it fixed; one arena instead of
/// one per thread (`MALLOC_ARENA_MAX=1`) gave 29.9 MiB alone and nothing on
/// top of the fixed threshold.
/// Called once at start, before the threads that allocate exist.
pub fn configure() {
    // SAFETY: mallopt only sets a glibc tunable; no pointer is involved. A
    // refusal (0) leaves glibc's default, which is correct, only bigger.
    let set = unsafe { nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    if set == 0 {
        tracing::debug!("glibc refused M_MMAP_THRESHOLD; freed big lists may stay resident");
    }
}

/// Returns what the heap does not use to the system.
pub fn give_back() {
    // SAFETY: malloc_trim takes a size and walks only glibc's own heap
    // bookkeeping; no pointer of ours is involved.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
