//! Is a file still open for writing? The kernel answers through leases: a
//! read lease (`F_SETLEASE` with `F_RDLCK`) is granted only when no process
//! has the file open for writing. Taken and released at once, it is a
//! question, not a lock. The only `unsafe` of replication, kept here.

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::libc;

/// `Some(true)` if no process has `file` open for writing, `Some(false)` if
/// one has, `None` when the kernel will not say (no CAP_LEASE for a file we do
/// not own, a file system without leases): then the caller waits for the file
/// to settle instead.
pub fn nobody_writes(file: &File) -> Option<bool> {
    let fd = file.as_raw_fd();
    // SAFETY: F_SETLEASE takes an int argument and touches no memory; `fd`
    // stays open for the duration of the call because `file` is borrowed.
    let taken = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) };
    if taken == 0 {
        // SAFETY: as above; releasing a lease we hold.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        return Some(true);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_open_for_writing_is_seen_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut writer = File::create(&path).unwrap();
        writer.write_all(b"part").unwrap();
        let reader = File::open(&path).unwrap();
        // The test may run where leases are unavailable (then: None).
        if let Some(answer) = nobody_writes(&reader) {
            assert!(!answer, "a writer holds it open");
            drop(writer);
            assert_eq!(nobody_writes(&reader), Some(true));
        }
    }
}
