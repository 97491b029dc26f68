//! The tamper-evident audit log of ces: one JSON object per line (JSON
//! Lines), append-only, each record carrying a sequence number and the
//! sha256 of the line before it, so that an edited, removed, inserted,
//! reordered or cut record breaks the chain at a place [`AuditLog::verify`]
//! names.
//!
//! ```text
//! {"seq":0,"prev":"000…0","time":"2026-…Z","user":{"name":"alice","uid":1000},"event":"pull",…}
//! {"seq":1,"prev":"<sha256 of line 1>",…,"event":"run_start","run_id":"…",…}
//! {"seq":2,"prev":"<sha256 of line 2>",…,"event":"run","run_id":"…",…}
//! ```
//!
//! The last record can be edited or removed without breaking the chain
//! (nothing comes after it); a copy kept where users cannot write (syslog,
//! a log collector) closes that gap.

pub mod lock;
pub mod log;
pub mod open;
pub mod record;

pub use log::{AuditError, AuditLog, Break, Report, SYSLOG_SOCKET, sha256_hex};
pub use open::{OpenMark, Opened};
pub use record::{
    Archive, Device, Event, Exit, Image, Job, Limits, LoadEvent, LoadedImage, MAX_ERROR_TEXT, Mount, Outcome,
    Provenance, ProxyPullEvent, PullEndEvent, PullEvent, PullStartEvent, Record, RunEndEvent, RunEvent, RunNotStarted,
    RunSetup, RunStartEvent, RunSubmittedEvent, SafeData, User,
};
