//! Layer tarballs written entry by entry, including the malformed and
//! malicious ones a registry may serve (names with `..`, absolute paths,
//! links that point outside the root).
//!
//! Entries are written with raw header fields, so that nothing the `tar` crate
//! would refuse (a `..` component, say) is cleaned away before the test sees it.

use std::io::Write;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip, as most registries serve layers.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// One entry of a layer tar.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory.
    Dir { path: String, mode: u32 },
    /// A regular file.
    File { path: String, data: Vec<u8>, mode: u32 },
    /// A symbolic link to `target` (written as given, absolute or relative).
    Symlink { path: String, target: String },
    /// A hard link to `target`, a path inside the archive.
    Hardlink { path: String, target: String },
    /// A character device.
    CharDevice { path: String, major: u32, minor: u32 },
    /// A named pipe.
    Fifo { path: String },
    /// `entry`, owned by `uid`:`gid` (the others are root's).
    Owned { entry: Box<Entry>, uid: u64, gid: u64 },
}

impl Entry {
    /// This entry, owned by `uid`:`gid`.
    pub fn owned(self, uid: u64, gid: u64) -> Entry {
        Entry::Owned { entry: Box::new(self), uid, gid }
    }
    /// A directory with mode 0755.
    pub fn dir(path: &str) -> Entry {
        Entry::Dir { path: path.into(), mode: 0o755 }
    }
    /// A regular file with mode 0644.
    pub fn file(path: &str, data: impl AsRef<[u8]>) -> Entry {
        Entry::File { path: path.into(), data: data.as_ref().to_vec(), mode: 0o644 }
    }
    /// A regular file with an explicit mode.
    pub fn file_mode(path: &str, data: impl AsRef<[u8]>, mode: u32) -> Entry {
        Entry::File { path: path.into(), data: data.as_ref().to_vec(), mode }
    }
    /// A symbolic link.
    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink { path: path.into(), target: target.into() }
    }
    /// A hard link.
    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::Hardlink { path: path.into(), target: target.into() }
    }
    /// An OCI whiteout removing `path` from the layers below.
    pub fn whiteout(path: &str) -> Entry {
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name),
            None => (String::new(), path),
        };
        Entry::file(&format!("{dir}.wh.{name}"), b"")
    }
    /// An OCI opaque-directory marker: hides everything below `dir` in lower layers.
    pub fn opaque(dir: &str) -> Entry {
        Entry::file(&format!("{}/.wh..wh..opq", dir.trim_end_matches('/')), b"")
    }
}

/// A layer: entries in order, and how to compress them.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The entries, written in this order.
    pub entries: Vec<Entry>,
    /// The compression of the blob.
    pub compression: Compression,
}

impl Layer {
    /// A gzip layer of these entries.
    pub fn new(entries: Vec<Entry>) -> Layer {
        Layer { entries, compression: Compression::Gzip }
    }

    /// The same layer with another compression.
    pub fn compressed(mut self, compression: Compression) -> Layer {
        self.compression = compression;
        self
    }

    /// The uncompressed tar stream (with its end-of-archive blocks).
    pub fn tar(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in &self.entries {
            write_entry(&mut out, entry);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    /// The blob as pushed: the tar, compressed.
    pub fn blob(&self) -> Vec<u8> {
        compress(&self.tar(), self.compression)
    }
}

/// Compresses `data`.
pub fn compress(data: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(data).expect("gzip to memory");
            enc.finish().expect("gzip to memory")
        }
        Compression::Zstd => zstd::encode_all(data, 3).expect("zstd to memory"),
    }
}

/// The `busybox-static` binary of the machine, with the applet links a shell
/// script needs: a 2 MB root filesystem that can run `sh -c`.
pub fn busybox_entries() -> Vec<Entry> {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox is missing: install busybox-static (see .ci/run)");
    let mut entries = vec![
        Entry::dir("bin"),
        Entry::file_mode("bin/busybox", busybox, 0o755),
        Entry::dir("etc"),
        Entry::file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"),
        Entry::file("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        // World-writable and sticky, as in every real image.
        Entry::Dir { path: "tmp".into(), mode: 0o1777 },
    ];
    for applet in [
        "sh", "ls", "cat", "echo", "id", "env", "sleep", "true", "false", "touch", "mkdir", "wc", "wget", "nslookup",
        "nc", "ip", "timeout", "head", "dd", "rm",
    ] {
        entries.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
    }
    entries
}

fn write_entry(out: &mut Vec<u8>, entry: &Entry) {
    write_entry_as(out, entry, (0, 0));
}

fn write_entry_as(out: &mut Vec<u8>, entry: &Entry, (uid, gid): (u64, u64)) {
    let mut header = tar::Header::new_ustar();
    let (path, data): (&str, &[u8]) = match entry {
        Entry::Dir { path, mode } => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(*mode);
            (path, &[])
        }
        Entry::File { path, data, mode } => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(*mode);
            (path, data)
        }
        Entry::Symlink { path, target } => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            set_raw(&mut header.as_old_mut().linkname, target);
            (path, &[])
        }
        Entry::Hardlink { path, target } => {
            header.set_entry_type(tar::EntryType::Link);
            header.set_mode(0o644);
            set_raw(&mut header.as_old_mut().linkname, target);
            (path, &[])
        }
        Entry::CharDevice { path, major, minor } => {
            header.set_entry_type(tar::EntryType::Char);
            header.set_mode(0o666);
            header.set_device_major(*major).expect("ustar header");
            header.set_device_minor(*minor).expect("ustar header");
            (path, &[])
        }
        Entry::Fifo { path } => {
            header.set_entry_type(tar::EntryType::Fifo);
            header.set_mode(0o644);
            (path, &[])
        }
        Entry::Owned { entry, uid, gid } => return write_entry_as(out, entry, (*uid, *gid)),
    };
    set_raw(&mut header.as_old_mut().name, path);
    header.set_size(data.len() as u64);
    header.set_uid(uid);
    header.set_gid(gid);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

/// Writes a name into a raw header field, bypassing the `tar` crate's path
/// cleaning (which would refuse the malicious names the tests need).
fn set_raw(field: &mut [u8; 100], value: &str) {
    let bytes = value.as_bytes();
    assert!(bytes.len() < field.len(), "test entry name too long for a ustar header: {value}");
    field.fill(0);
    field[..bytes.len()].copy_from_slice(bytes);
}
