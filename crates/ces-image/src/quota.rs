//! What a disk quota leaves its holder on the file system holding a
//! directory. `statvfs` shows the disk's free space but not user or group
//! quotas (ext4's, XFS's: a TRE's homes), so a pull asks the quotas too
//! before it downloads, and a load before it stores each blob, rather than
//! failing with `EDQUOT` halfway ([`shortfall`]).
//!
//! The kernel is asked with `quotactl_fd` (Linux 5.14) on the directory, or
//! `quotactl` on its file system's block device (`/dev/block/MAJ:MIN`)
//! where that call is missing: whether limits are enforced there, then each
//! quota's limits and use. Quotas the kernel does not keep this way (NFS's
//! `rquota`) are not seen: their writes fail at the quota as before.

use std::ffi::{CString, c_long, c_void};
use std::fmt;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The capability that lifts disk quotas (`CAP_SYS_RESOURCE`).
const CAP_SYS_RESOURCE: u32 = 24;
/// The unit of a quota's block limits (`QIF_DQBLKSIZE`).
const QUOTA_BLOCK: u64 = 1024;
/// `Q_XGETQSTAT`: the file system's quota state (`struct fs_quota_stat`),
/// for XFS and the generic quota code alike; no privilege needed.
const Q_XGETQSTAT: i32 = (b'X' as i32) << 8 | 5;
/// In `fs_quota_stat.qs_flags`: user, group quota limits enforced.
const FS_QUOTA_UDQ_ENFD: u16 = 1 << 1;
const FS_QUOTA_GDQ_ENFD: u16 = 1 << 3;

/// Whose quota it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Holder {
    /// The user's own.
    User,
    /// That of the group new files get.
    Group,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Holder::User => "your",
            Holder::Group => "your group's",
        })
    }
}

/// A disk quota that holds this process, on one file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Quota {
    /// Whose it is.
    pub holder: Holder,
    /// The bytes it lets its holder keep there.
    pub limit: u64,
    /// The bytes its holder keeps there now.
    pub used: u64,
    /// What it leaves: `limit - used`, or 0.
    pub left: u64,
}

/// The tightest of this process's user and group quotas on the file system
/// holding `dir` (the one that leaves the least). `None` where no quota
/// limits what is written there: none is set or enforced, the file system
/// or the kernel keeps none, or this process is not held to quotas (root of
/// the host: `CAP_SYS_RESOURCE` in the initial user namespace; in a user
/// namespace of its own, a process with it is still held).
pub fn tightest(dir: &Path) -> Option<Quota> {
    let target = Target::of(dir)?;
    if capable(CAP_SYS_RESOURCE) && in_initial_user_namespace() {
        return None;
    }
    let meta = target.dir.metadata().ok()?;
    let enforced = target.enforced()?;
    // New files take the directory's group where it is set-group-ID.
    let group = if meta.mode() & 0o2000 != 0 { meta.gid() } else { rustix::process::getegid().as_raw() };
    let user = rustix::process::geteuid().as_raw();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    [(libc::USRQUOTA, FS_QUOTA_UDQ_ENFD, Holder::User, user), (libc::GRPQUOTA, FS_QUOTA_GDQ_ENFD, Holder::Group, group)]
        .into_iter()
        .filter(|&(_, flag, _, _)| enforced & flag != 0)
        .filter_map(|(kind, _, holder, id)| {
            let quota = target.quota(kind, id)?;
            let valid = |flag: u32| quota.dqb_valid & flag == flag;
            if !valid(libc::QIF_BLIMITS | libc::QIF_SPACE) {
                return None;
            }
            let grace_ends = valid(libc::QIF_BTIME).then_some(quota.dqb_btime);
            let limit = limit(quota.dqb_bhardlimit, quota.dqb_bsoftlimit, grace_ends, now)?;
            let used = quota.dqb_curspace;
            Some(Quota { holder, limit, used, left: limit.saturating_sub(used) })
        })
        .min_by_key(|quota| quota.left)
}

/// What the file system holding `dir` lacks for `needed` more bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// Its free space: `available` bytes to an unprivileged writer.
    Disk {
        /// The bytes free.
        available: u64,
    },
    /// The disk quota that holds this process there ([`tightest`]).
    Quota(Quota),
}

impl Shortfall {
    /// What is said of it: `needed` bytes to `action` (`download`, `load`)
    /// into the store `path`, its entry `entry` where there is one.
    pub fn message(&self, path: &Path, entry: Option<&str>, needed: u64, action: &str) -> String {
        let path = path.display();
        let entry = entry.map(|e| format!(" for {e}")).unwrap_or_default();
        match self {
            Shortfall::Disk { available } => {
                format!("not enough free space in {path}{entry}: {needed} bytes to {action}, {available} free")
            }
            Shortfall::Quota(q) => format!(
                "not enough disk quota left on the file system holding {path}{entry}: {needed} bytes to {action}, {} left of {} quota of {}",
                q.left, q.holder, q.limit
            ),
        }
    }
}

/// Whether `needed` more bytes fit on the file system holding `dir`, in its
/// free space (`statvfs`) and in the disk quota that holds this process
/// there; what they do not fit in, if not. Where either cannot be read, it
/// is taken to have room: the writes will tell.
pub fn shortfall(dir: &Path, needed: u64) -> Option<Shortfall> {
    if needed == 0 {
        return None;
    }
    if let Ok(stat) = rustix::fs::statvfs(dir) {
        let available = stat.f_bavail.saturating_mul(stat.f_frsize);
        if needed > available {
            return Some(Shortfall::Disk { available });
        }
    }
    tightest(dir).filter(|quota| needed > quota.left).map(Shortfall::Quota)
}

/// What `quotactl` is pointed at: the directory, and its file system's
/// block device by number (udev's names), for kernels before 5.14.
struct Target {
    dir: File,
    device: CString,
}

#[allow(unsafe_code)]
impl Target {
    fn of(dir: &Path) -> Option<Target> {
        let dir = File::open(dir).ok()?;
        let dev = dir.metadata().ok()?.dev();
        let device = format!("/dev/block/{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev));
        Some(Target { dir, device: CString::new(device).ok()? })
    }

    /// The `FS_QUOTA_*` flags of the file system's quota state.
    fn enforced(&self) -> Option<u16> {
        // struct fs_quota_stat is 80 bytes (76 on 32-bit x86); qs_flags is
        // the u16 at offset 2.
        let mut state = [0u64; 16];
        // SAFETY: `state` is 128 writable bytes, more than the struct the
        // kernel writes.
        unsafe { self.quotactl(libc::QCMD(Q_XGETQSTAT, libc::USRQUOTA), 0, state.as_mut_ptr().cast()) }.ok()?;
        let bytes = state[0].to_ne_bytes();
        Some(u16::from_ne_bytes([bytes[2], bytes[3]]))
    }

    /// `id`'s quota of `kind` (`USRQUOTA`, `GRPQUOTA`).
    fn quota(&self, kind: i32, id: u32) -> Option<libc::dqblk> {
        let mut quota = MaybeUninit::<libc::dqblk>::zeroed();
        // SAFETY: Q_GETQUOTA writes one struct if_dqblk, which libc::dqblk
        // is (plain integers: any bytes are a valid one), and only where it
        // succeeds is the value taken.
        unsafe {
            self.quotactl(libc::QCMD(libc::Q_GETQUOTA, kind), id, quota.as_mut_ptr().cast()).ok()?;
            Some(quota.assume_init())
        }
    }

    /// `quotactl_fd(dir, cmd, id, addr)`, or `quotactl(cmd, device, id,
    /// addr)` where the kernel has no `quotactl_fd`.
    ///
    /// # Safety
    ///
    /// `addr` must be valid for the writes `cmd` makes.
    unsafe fn quotactl(&self, cmd: i32, id: u32, addr: *mut c_void) -> io::Result<()> {
        // SAFETY: the fd and the path outlive the calls; `addr` is the
        // caller's to vouch for.
        let fd = c_long::from(self.dir.as_raw_fd());
        let rc = unsafe { libc::syscall(libc::SYS_quotactl_fd, fd, c_long::from(cmd), c_long::from(id), addr) };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ENOSYS) {
            return Err(error);
        }
        #[allow(clippy::cast_possible_wrap)]
        let rc = unsafe { libc::quotactl(cmd, self.device.as_ptr(), id as i32, addr.cast()) };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}

/// The bytes a quota lets its holder keep, from its limits in 1 KiB blocks
/// (0: none): the hard limit, or the soft limit where it is lower and the
/// grace time its holder was given when passing it (`grace_ends`, seconds
/// since the epoch; 0 while not past it) has run out.
fn limit(hard: u64, soft: u64, grace_ends: Option<u64>, now: u64) -> Option<u64> {
    let bytes = |blocks: u64| (blocks > 0).then(|| blocks.saturating_mul(QUOTA_BLOCK));
    let expired = grace_ends.is_some_and(|t| t != 0 && t <= now);
    let soft = bytes(soft).filter(|_| expired);
    match (bytes(hard), soft) {
        (Some(hard), Some(soft)) => Some(hard.min(soft)),
        (hard, soft) => hard.or(soft),
    }
}

/// Whether this process has `capability` in its effective set.
fn capable(capability: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << capability) != 0)
}

/// Whether this process is in the initial user namespace (its uid map is
/// the whole range, unshifted). Read as it is: a user who forges it only
/// skips their own check, not the quota.
fn in_initial_user_namespace() -> bool {
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hard_limit_holds_and_a_soft_one_once_its_grace_is_over() {
        let now = 1_000_000;
        // None set.
        assert_eq!(limit(0, 0, Some(0), now), None);
        assert_eq!(limit(0, 0, None, now), None);
        // The hard limit, in 1 KiB blocks.
        assert_eq!(limit(1024, 0, Some(0), now), Some(1 << 20));
        // A soft limit not passed, or passed with grace left: writes go on.
        assert_eq!(limit(1024, 512, Some(0), now), Some(1 << 20));
        assert_eq!(limit(1024, 512, None, now), Some(1 << 20));
        assert_eq!(limit(1024, 512, Some(now + 60), now), Some(1 << 20));
        assert_eq!(limit(0, 512, Some(now + 60), now), None);
        // Its grace over: the soft limit holds.
        assert_eq!(limit(1024, 512, Some(now - 1), now), Some(512 << 10));
        assert_eq!(limit(0, 512, Some(now), now), Some(512 << 10));
        // A soft limit above the hard one changes nothing.
        assert_eq!(limit(512, 1024, Some(now - 1), now), Some(512 << 10));
        // Limits near u64's end do not wrap.
        assert_eq!(limit(u64::MAX, 0, None, now), Some(u64::MAX));
    }

    #[test]
    fn a_directory_that_cannot_be_read_has_nothing_to_check() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(tightest(&dir.path().join("missing")), None);
    }
}
