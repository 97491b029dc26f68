//! Stopping a seal early: ces blocks SIGINT, SIGTERM, SIGHUP and SIGQUIT
//! while it runs a container (so that they reach the container, see
//! `ces_runtime::native`), and they stay blocked while it seals the outputs.
//! A seal asks an [`Interrupt`] between chunks of the files it hashes, and
//! stops hashing when one of those signals is pending.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Asked between chunks of hashing: has ces been told to stop?
pub trait Interrupt {
    /// The signal that asks ces to stop, if one has arrived.
    fn signal(&self) -> Option<i32>;
}

/// Never interrupted (verify, tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoInterrupt;

impl Interrupt for NoInterrupt {
    fn signal(&self) -> Option<i32> {
        None
    }
}

/// SIGINT, SIGTERM, SIGHUP or SIGQUIT, pending for this process while the calling
/// thread blocks them, read from a non-blocking signalfd. A signal read is
/// consumed: it has done its work by stopping the seal (ces then records the
/// run and exits). A signal that is not blocked is not seen here: its
/// default action ends ces first.
#[derive(Debug)]
pub struct SignalWatch {
    fd: SignalFd,
}

impl SignalWatch {
    /// Watches SIGINT, SIGTERM, SIGHUP and SIGQUIT (those ces forwards to a
    /// container, and so blocks).
    pub fn new() -> std::io::Result<SignalWatch> {
        let mut set = SigSet::empty();
        for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT] {
            set.add(signal);
        }
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(SignalWatch { fd })
    }
}

impl Interrupt for SignalWatch {
    fn signal(&self) -> Option<i32> {
        // An error reading the signalfd cannot mean a signal arrived.
        match self.fd.read_signal() {
            Ok(Some(info)) => i32::try_from(info.ssi_signo).ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask, raise};

    use super::{Interrupt as _, SignalWatch};

    /// A blocked SIGTERM raised in this thread is seen (once: it is consumed).
    #[test]
    fn a_pending_blocked_signal_is_seen() {
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        let mut old = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old)).unwrap();
        let watch = SignalWatch::new().unwrap();
        assert_eq!(watch.signal(), None);
        raise(Signal::SIGTERM).unwrap();
        assert_eq!(watch.signal(), Some(15));
        assert_eq!(watch.signal(), None, "consumed");
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).unwrap();
    }
}
