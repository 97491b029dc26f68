//! What `ces test` observes of a run, beyond its exit: every network attempt
//! (a TUN device as the only route of the container's network namespace,
//! read by a watcher process that answers with [`crate::netwatch::Stub`]),
//! the peak memory (from the cgroup) and the files written to the
//! container's own filesystem (the overlay's upper layer), which are lost at
//! exit.
//!
//! The watcher is forked from ces between libcontainer's build and start
//! (ces is single-threaded then, as libcontainer requires anyway), enters
//! the container's user namespace (rootless) and network namespace, creates
//! `ces0` there, addresses it, routes everything to it, and reports ready
//! before the workload exists. It dies with ces (`PR_SET_PDEATHSIG`) and its
//! device with the namespace. It never sends a packet anywhere but back into
//! the container: it has no other interface to send one to.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::netwatch::{Attempt, CONTAINER_ADDR, Stub};

/// The device's name in the container.
pub const DEVICE: &str = "ces0";
const TUN_PATH: &CStr = c"/dev/net/tun";
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// The network attempts of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkReport {
    /// Each distinct attempt, first seen first.
    pub attempts: Vec<Attempt>,
    /// Attempts not kept (beyond the bound on distinct attempts).
    pub dropped: u64,
}

/// A file the container wrote to its own filesystem (lost at exit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostWrite {
    /// The path in the container.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Why the network could not be observed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The watcher failed at `stage`.
    #[error("cannot observe the container's network ({stage})")]
    Setup {
        /// What it was doing.
        stage: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The forked watcher.
pub(crate) struct Watcher {
    pid: Pid,
    stop: Option<OwnedFd>,
    results: OwnedFd,
}

/// Stages the child reports, by number, with an errno.
const STAGES: [&str; 7] = [
    "opening the container's namespaces",
    "entering the container's user namespace",
    "entering the container's network namespace",
    "opening /dev/net/tun",
    "creating the ces0 device",
    "addressing the ces0 device",
    "routing to the ces0 device",
];

impl Watcher {
    /// Forks the watcher for the container whose init is `init`; returns once
    /// the device routes everything (or with why it could not).
    pub(crate) fn start(init: Pid, rootless: bool) -> Result<Watcher, ObserveError> {
        let setup = |stage, source| ObserveError::Setup { stage, source };
        let namespace = |name: &str| {
            File::open(format!("/proc/{init}/ns/{name}")).map_err(|e| setup("opening the container's namespaces", e))
        };
        let user_ns = if rootless { Some(namespace("user")?) } else { None };
        let net_ns = namespace("net")?;
        let (stop_read, stop_write) = super::pipe().map_err(|e| setup("creating pipes", e))?;
        let (results_read, results_write) = super::pipe().map_err(|e| setup("creating pipes", e))?;
        // SAFETY: ces is single-threaded here (libcontainer's build needs it
        // too); the child only makes system calls and allocates.
        match unsafe { libc::fork() } {
            -1 => Err(setup("forking the watcher", io::Error::last_os_error())),
            0 => {
                drop(stop_write);
                drop(results_read);
                let code = child(user_ns.as_ref(), &net_ns, stop_read.as_raw_fd(), results_write.as_raw_fd());
                // SAFETY: leaving the forked child without running the
                // parent's destructors or atexit handlers.
                unsafe { libc::_exit(code) }
            }
            pid => {
                drop(stop_read);
                drop(results_write);
                let mut watcher = Watcher { pid: Pid::from_raw(pid), stop: Some(stop_write), results: results_read };
                let mut status = [0u8; 8];
                let ready = File::from(watcher.results.try_clone().map_err(|e| setup("creating pipes", e))?)
                    .read_exact(&mut status);
                let stage = u32::from_le_bytes([status[0], status[1], status[2], status[3]]);
                let errno = i32::from_le_bytes([status[4], status[5], status[6], status[7]]);
                match (ready, stage) {
                    (Ok(()), 0) => Ok(watcher),
                    (Ok(()), n) => {
                        let stage = STAGES.get(n as usize - 1).copied().unwrap_or("setting up");
                        watcher.kill();
                        Err(setup(stage, io::Error::from_raw_os_error(errno)))
                    }
                    (Err(e), _) => {
                        watcher.kill();
                        Err(setup("waiting for the watcher", e))
                    }
                }
            }
        }
    }

    /// Stops the watcher once the container has ended; returns what it saw.
    pub(crate) fn finish(mut self) -> io::Result<NetworkReport> {
        drop(self.stop.take());
        let mut bytes = Vec::new();
        File::from(self.results.try_clone()?).read_to_end(&mut bytes)?;
        let _ = nix::sys::wait::waitpid(self.pid, None);
        serde_json::from_slice(&bytes).map_err(io::Error::other)
    }

    fn kill(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// The watcher: set up, report, serve until told to stop, report again.
fn child(user_ns: Option<&File>, net_ns: &File, stop: RawFd, results: RawFd) -> i32 {
    // SAFETY: plain system calls on descriptors this process owns.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let tun = match set_up(user_ns, net_ns) {
        Ok(tun) => tun,
        Err((stage, e)) => {
            let mut status = stage.to_le_bytes().to_vec();
            status.extend_from_slice(&e.raw_os_error().unwrap_or(libc::EIO).to_le_bytes());
            write_all(results, &status);
            return 1;
        }
    };
    write_all(results, &[0; 8]);
    let mut stub = Stub::new();
    serve(&tun, stop, &mut stub);
    let report = NetworkReport { attempts: stub.attempts(), dropped: stub.dropped };
    match serde_json::to_vec(&report) {
        Ok(bytes) => {
            write_all(results, &bytes);
            0
        }
        Err(_) => 1,
    }
}

fn write_all(fd: RawFd, bytes: &[u8]) {
    // SAFETY: the descriptor stays open for the child's life; ManuallyDrop
    // keeps this File from closing it.
    let mut file = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    let _ = file.write_all(bytes);
}

/// Enters the namespaces and brings the device up; on failure, the stage
/// number (1-based, see [`STAGES`]) and the error.
fn set_up(user_ns: Option<&File>, net_ns: &File) -> Result<OwnedFd, (u32, io::Error)> {
    if let Some(user_ns) = user_ns {
        setns(user_ns, libc::CLONE_NEWUSER).map_err(|e| (2, e))?;
    }
    setns(net_ns, libc::CLONE_NEWNET).map_err(|e| (3, e))?;
    // SAFETY: opening a device; the result is checked.
    let fd = unsafe { libc::open(TUN_PATH.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err((4, io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor we own.
    let tun = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut request = ifreq(DEVICE);
    request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF takes an ifreq.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut request) } < 0 {
        return Err((5, io::Error::last_os_error()));
    }
    configure()?;
    Ok(tun)
}

/// Address, netmask, up, default route: the ioctls `ifconfig` and `route`
/// use (no netlink library needed for four settings).
fn configure() -> Result<(), (u32, io::Error)> {
    // SAFETY: a new socket, checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err((6, io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let ioctl = |request: libc::c_ulong, arg: *mut libc::c_void, stage: u32| {
        // SAFETY: each request below is given the structure it takes.
        if unsafe { libc::ioctl(socket.as_raw_fd(), request, arg) } < 0 {
            return Err((stage, io::Error::last_os_error()));
        }
        Ok(())
    };
    let mut request = ifreq(DEVICE);
    request.ifr_ifru.ifru_addr = sockaddr(CONTAINER_ADDR);
    ioctl(libc::SIOCSIFADDR, (&raw mut request).cast(), 6)?;
    request.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::new(255, 255, 255, 0));
    ioctl(libc::SIOCSIFNETMASK, (&raw mut request).cast(), 6)?;
    ioctl(libc::SIOCGIFFLAGS, (&raw mut request).cast(), 6)?;
    // SAFETY: SIOCGIFFLAGS filled the flags.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(libc::SIOCSIFFLAGS, (&raw mut request).cast(), 6)?;

    let mut device = *b"ces0\0";
    // SAFETY: rtentry is plain data; zero is "unset" for every field.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_flags = libc::RTF_UP;
    route.rt_dev = device.as_mut_ptr().cast();
    ioctl(libc::SIOCADDRT, (&raw mut route).cast(), 7)
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    request
}

fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(address.octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads
    // the family first.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

fn setns(file: &File, kind: libc::c_int) -> io::Result<()> {
    // SAFETY: a namespace descriptor and its type.
    if unsafe { libc::setns(file.as_raw_fd(), kind) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads packets and writes the stub's replies until `stop` closes (ces has
/// seen the container end); then takes what is still queued.
fn serve(tun: &OwnedFd, stop: RawFd, stub: &mut Stub) {
    let mut buffer = vec![0u8; 65536];
    loop {
        let mut fds = [
            libc::pollfd { fd: tun.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: stop, events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two valid pollfds, no timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            packet(tun, &mut buffer, stub);
        }
        if fds[1].revents != 0 {
            // The stop pipe closed: drain without waiting.
            set_nonblocking(tun);
            while packet(tun, &mut buffer, stub) {}
            return;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            return;
        }
    }
}

/// One packet in, one reply out; false when there was none to read.
fn packet(tun: &OwnedFd, buffer: &mut [u8], stub: &mut Stub) -> bool {
    // SAFETY: reading into our buffer.
    let n = unsafe { libc::read(tun.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
    if n <= 0 {
        return false;
    }
    if let Some(reply) = stub.handle(&buffer[..n as usize]) {
        // SAFETY: writing our reply; a failure only loses the reply.
        unsafe { libc::write(tun.as_raw_fd(), reply.as_ptr().cast(), reply.len()) };
    }
    true
}

fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: fcntl on our descriptor.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// The regular files and symbolic links in the overlay's upper layer (what
/// the container wrote to its own filesystem), but for the mount points ces
/// itself created (`ignore`: paths in the container).
pub(crate) fn lost_writes(upper: &Path, ignore: &[&str]) -> Vec<LostWrite> {
    let mut found = Vec::new();
    let mut stack = vec![(upper.to_owned(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = format!("{prefix}/{name}");
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            let kind = meta.file_type();
            if kind.is_dir() {
                stack.push((entry.path(), path));
            } else if (kind.is_file() || kind.is_symlink()) && !ignore.contains(&path.as_str()) {
                found.push(LostWrite { path, size: meta.len() });
            } else if kind.is_char_device() && meta.rdev() == 0 {
                // A whiteout: a deletion, not a write.
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}
