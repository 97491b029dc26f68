//! Stopping a seal early: a seal asks an [`Interrupt`] between chunks of
//! the files it hashes, and stops hashing when it answers. ces answers with
//! the signals it forwards to containers, which stay blocked while it seals
//! the outputs (`ces_runtime::native::ForwardedSignals`).

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
