//! Giving freed memory back to the system after the work that needs most of
//! it (a walk of the whole tree, an audit, a plan of the whole tree): glibc
//! keeps freed small blocks for reuse, so otherwise the daemon's resident size
//! would stay at that peak, several copies of a big tree, for good.

/// Returns what the heap does not use to the system.
pub fn give_back() {
    // SAFETY: malloc_trim takes a size and walks only glibc's own heap
    // bookkeeping; no pointer of ours is involved.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
