//! SIGTERM/SIGINT/SIGHUP/SIGUSR1 as readable events on a file descriptor (signalfd), so
//! the main loop handles them in order, in normal code, never in a handler.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// What a signal asks the daemon to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Stop,
    Reload,
    /// `sftp-ha promote` / `demote` left a request in the runtime dir.
    Command,
}

pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks the signals for this thread (call before starting any thread, so
    /// every thread inherits the mask) and opens a signalfd for them.
    pub fn install() -> nix::Result<Signals> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.add(Signal::SIGHUP);
        mask.add(Signal::SIGUSR1);
        mask.thread_block()?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The next pending request, if any.
    pub fn next(&mut self) -> nix::Result<Option<Request>> {
        loop {
            let Some(info) = self.fd.read_signal()? else {
                return Ok(None);
            };
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGTERM | Signal::SIGINT) => return Ok(Some(Request::Stop)),
                Ok(Signal::SIGHUP) => return Ok(Some(Request::Reload)),
                Ok(Signal::SIGUSR1) => return Ok(Some(Request::Command)),
                _ => continue,
            }
        }
    }
}
