//! Bounds on tar extension headers, enforced before the `tar` crate reads them.
//!
//! GNU long names and long links (`L`, `K` entries) and PAX records (`x`,
//! `g`) are entries whose data the `tar` crate reads whole into memory
//! (`read_all`) to apply to the next entry: a 1 MB layer could make it
//! allocate gigabytes. The crate has no limit to set, so [`Bounded`] wraps
//! the stream it reads and follows the archive block by block, the way the
//! crate does (header, data rounded up to 512 bytes, a PAX `size` that
//! overrides the next header's), and fails the read that completes an
//! extension header announcing more than its limit: the crate never sees its
//! data.
//!
//! GNU sparse entries (type `S`, or a GNU header whose sparse extension flag
//! is set) are refused whole, at their header. OCI layer writers never
//! produce them, and the `tar` crate handles them unsafely for ces: it reads
//! a chain of extension blocks of any length into memory (with quadratic
//! work) before handing the entry out, and it synthesizes the zeros of the
//! holes, which a byte count of the compressed or tar stream never sees, so
//! a 1.5 KB layer could unpack into gigabytes of written blocks.
//!
//! Where the two could disagree (a header the crate would refuse: a bad
//! checksum or size field), [`Bounded`] fails too, so that no extension can
//! pass while it has lost track of the stream.

use std::fmt;
use std::io::{self, Read};

/// The longest GNU long name or long link (`L`, `K` entries) accepted, in
/// bytes. Linux's own `PATH_MAX` is 4096.
pub const MAX_LONG_NAME: u64 = 4096;
/// The largest PAX extended header (`x` for one entry, `g` global) accepted,
/// in bytes. Real ones hold a path, a link, times and a few xattrs.
pub const MAX_PAX: u64 = 64 << 10;

const BLOCK: usize = 512;

/// Which kind of extension header was too large.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionKind {
    /// A GNU long name (`L`).
    LongName,
    /// A GNU long link target (`K`).
    LongLink,
    /// A PAX extended header for one entry (`x`).
    Pax,
    /// A PAX global extended header (`g`).
    PaxGlobal,
    /// A GNU sparse entry (`S`, or a header flagged as sparse-extended):
    /// refused whatever its size (its limit is 0).
    GnuSparse,
}

impl fmt::Display for ExtensionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExtensionKind::LongName => "GNU long name",
            ExtensionKind::LongLink => "GNU long link",
            ExtensionKind::Pax => "PAX extended header",
            ExtensionKind::PaxGlobal => "PAX global header",
            ExtensionKind::GnuSparse => "GNU sparse entry",
        })
    }
}

/// A tar extension header larger than its limit, or a GNU sparse entry
/// ([`ExtensionKind::GnuSparse`], refused at any size): the archive is
/// refused before its data is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub struct ExtensionTooLarge {
    /// The kind of extension.
    pub kind: ExtensionKind,
    /// The size its header announces.
    pub size: u64,
    /// The limit ([`MAX_LONG_NAME`] or [`MAX_PAX`]; 0 for a sparse entry).
    pub limit: u64,
}

impl fmt::Display for ExtensionTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ExtensionTooLarge { kind, size, limit } = self;
        match kind {
            ExtensionKind::GnuSparse => {
                write!(f, "a {kind} (tar type 'S') is refused: image layers never hold sparse entries")
            }
            _ => write!(f, "a {kind} of {size} bytes is larger than the {limit}-byte limit"),
        }
    }
}

impl ExtensionTooLarge {
    /// The limit error inside an I/O error returned by a [`Bounded`] reader
    /// (and passed on by the `tar` crate), if that is what it is.
    pub fn find(error: &io::Error) -> Option<ExtensionTooLarge> {
        error.get_ref().and_then(|inner| inner.downcast_ref::<ExtensionTooLarge>()).copied()
    }
}

/// Where in the archive the next byte is.
#[derive(Debug)]
enum State {
    /// In a header block: the bytes of it seen so far.
    Header,
    /// In an entry's data (and padding): the bytes left.
    Data(u64),
    /// In a PAX `x` header's data: collected (bounded) to learn the next
    /// entry's size; then the padding.
    Pax { left: u64, padding: u64 },
    /// After the end-of-archive block: the `tar` crate reads no more headers.
    End,
}

/// A reader of a tar stream that refuses extension headers over their
/// limits (see the module docs). Wrap the decompressed stream in it and give
/// it to `tar::Archive::new`.
#[derive(Debug)]
pub struct Bounded<R> {
    inner: R,
    state: State,
    block: Vec<u8>,
    /// The data of the PAX `x` header that applies to the next entry.
    pax: Option<Vec<u8>>,
    failed: Option<io::ErrorKind>,
}

impl<R: Read> Bounded<R> {
    /// Wraps `inner`, which starts at the first header of a tar stream.
    pub fn new(inner: R) -> Self {
        Bounded { inner, state: State::Header, block: Vec::with_capacity(BLOCK), pax: None, failed: None }
    }

    /// Follows `bytes`, the next bytes of the stream.
    fn observe(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::End => return Ok(()),
                State::Data(left) => {
                    let n = usize::try_from(*left).map_or(bytes.len(), |left| left.min(bytes.len()));
                    *left -= n as u64;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.state = State::Header;
                    }
                }
                State::Pax { left, padding } => {
                    let n = usize::try_from(*left).map_or(bytes.len(), |left| left.min(bytes.len()));
                    if let Some(pax) = &mut self.pax {
                        pax.extend_from_slice(&bytes[..n]);
                    }
                    *left -= n as u64;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.state = if *padding == 0 { State::Header } else { State::Data(*padding) };
                    }
                }
                State::Header => {
                    let n = (BLOCK - self.block.len()).min(bytes.len());
                    self.block.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if self.block.len() == BLOCK {
                        let block = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
                        self.state = self.header(&block)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads one header block, as `tar::Archive` does, and says what follows it.
    fn header(&mut self, block: &[u8]) -> io::Result<State> {
        if block.iter().all(|b| *b == 0) {
            // The crate stops at the first zero block (it never sets
            // `ignore_zeros` here).
            return Ok(State::End);
        }
        let mut header = tar::Header::new_old();
        header.as_mut_bytes().copy_from_slice(block);
        let sum = block[..148].iter().chain(&block[156..]).map(|b| u32::from(*b)).sum::<u32>() + 8 * 32;
        if header.cksum()? != sum {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "archive header checksum mismatch"));
        }
        let kind = header.entry_type();
        // Refused before the crate reads the sparse map or its extension
        // blocks (see the module docs). The crate only follows the flag on an
        // `S` entry; a GNU header flagged anywhere else is refused as well,
        // since no writer sets it there.
        if kind == tar::EntryType::GNUSparse || header.as_gnu().is_some_and(|gnu| gnu.isextended[0] != 0) {
            let size = header.entry_size().unwrap_or(0);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                ExtensionTooLarge { kind: ExtensionKind::GnuSparse, size, limit: 0 },
            ));
        }
        let extension = match kind {
            tar::EntryType::GNULongName => Some((ExtensionKind::LongName, MAX_LONG_NAME)),
            tar::EntryType::GNULongLink => Some((ExtensionKind::LongLink, MAX_LONG_NAME)),
            tar::EntryType::XHeader => Some((ExtensionKind::Pax, MAX_PAX)),
            tar::EntryType::XGlobalHeader => Some((ExtensionKind::PaxGlobal, MAX_PAX)),
            _ => None,
        };
        let mut size = header.entry_size()?;
        if let Some((kind, limit)) = extension {
            if size > limit {
                return Err(io::Error::new(io::ErrorKind::InvalidData, ExtensionTooLarge { kind, size, limit }));
            }
        } else if let Some(pax_size) = self.pax.as_deref().and_then(pax_size) {
            // As the crate: a PAX `size` overrides the header's.
            size = pax_size;
        }
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        let padded = size.checked_next_multiple_of(BLOCK as u64).ok_or_else(|| io::Error::other("size overflow"))?;
        let applies_to_next = recognized
            && matches!(kind, tar::EntryType::GNULongName | tar::EntryType::GNULongLink | tar::EntryType::XHeader);
        if !applies_to_next {
            // The crate hands this entry out: the PAX header was its own.
            self.pax = None;
        }
        if recognized && kind == tar::EntryType::XHeader {
            // The crate keeps this header for the next entry (and refuses a
            // second one before it).
            self.pax = Some(Vec::with_capacity(size as usize));
            return Ok(if size == 0 { State::Header } else { State::Pax { left: size, padding: padded - size } });
        }
        Ok(if padded == 0 { State::Header } else { State::Data(padded) })
    }
}

/// The `size` record of a PAX header, read as the `tar` crate reads it
/// (`pax_extensions_value`): the first `size` record, if it is a number.
fn pax_size(pax: &[u8]) -> Option<u64> {
    for extension in tar::PaxExtensions::new(pax) {
        let extension = extension.ok()?;
        if extension.key() == Ok("size") {
            return extension.value().ok()?.parse().ok();
        }
    }
    None
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(kind) = self.failed {
            return Err(io::Error::new(kind, "the tar stream was refused"));
        }
        let n = self.inner.read(buf)?;
        if let Err(error) = self.observe(&buf[..n]) {
            self.failed = Some(error.kind());
            return Err(error);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(out: &mut Vec<u8>, kind: tar::EntryType, name: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(BLOCK), 0);
    }

    fn read_all(tar: &[u8], chunk: usize) -> io::Result<Vec<String>> {
        struct Chunks<'a>(&'a [u8], usize);
        impl Read for Chunks<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.1.min(buf.len()).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut archive = tar::Archive::new(Bounded::new(Chunks(tar, chunk)));
        let mut names = Vec::new();
        for entry in archive.entries()? {
            names.push(String::from_utf8_lossy(&entry?.path_bytes()).into_owned());
        }
        Ok(names)
    }

    #[test]
    fn extensions_within_limits_pass_in_any_read_size() {
        let long = "d/".repeat(1000) + "f";
        let mut tar = Vec::new();
        entry(&mut tar, tar::EntryType::GNULongName, "././@LongLink", format!("{long}\0").as_bytes());
        entry(&mut tar, tar::EntryType::Regular, "x", b"hello");
        entry(&mut tar, tar::EntryType::XHeader, "pax", b"11 size=700\n14 path=paxed\n");
        entry(&mut tar, tar::EntryType::Regular, "y", &[7u8; 700]);
        entry(&mut tar, tar::EntryType::Regular, "z", b"");
        tar.extend_from_slice(&[0; 1024]);
        for chunk in [1, 7, 512, 513, 1 << 20] {
            assert_eq!(read_all(&tar, chunk).unwrap(), [long.as_str(), "paxed", "z"], "chunk {chunk}");
        }
    }

    #[test]
    fn oversized_extensions_are_refused_naming_the_limit() {
        for (kind, size, limit) in [
            (tar::EntryType::GNULongName, MAX_LONG_NAME + 1, MAX_LONG_NAME),
            (tar::EntryType::GNULongLink, 1 << 20, MAX_LONG_NAME),
            (tar::EntryType::XHeader, MAX_PAX + 1, MAX_PAX),
            (tar::EntryType::XGlobalHeader, 1 << 30, MAX_PAX),
        ] {
            let mut tar = Vec::new();
            entry(&mut tar, tar::EntryType::Regular, "before", b"data");
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_size(size);
            header.set_cksum();
            tar.extend_from_slice(header.as_bytes());
            let error = read_all(&tar, 4096).unwrap_err();
            let found = ExtensionTooLarge::find(&error).unwrap();
            assert_eq!((found.size, found.limit), (size, limit));
        }
    }

    #[test]
    fn a_pax_size_that_hides_a_long_name_in_data_is_followed() {
        // The PAX size says the next entry's data is 0 bytes although its
        // header says 1024: what follows at once is read as a header.
        let mut tar = Vec::new();
        entry(&mut tar, tar::EntryType::XHeader, "pax", b"9 size=0\n");
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(1024);
        header.set_cksum();
        tar.extend_from_slice(header.as_bytes());
        let mut long = tar::Header::new_gnu();
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_size(1 << 20);
        long.set_cksum();
        tar.extend_from_slice(long.as_bytes());
        let error = read_all(&tar, 100).unwrap_err();
        assert!(ExtensionTooLarge::find(&error).is_some(), "{error}");
    }

    fn octal(field: &mut [u8], value: u64) {
        let text = format!("{value:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    }

    /// A GNU sparse (`S`) header for `name`: one hole of `real` bytes (no
    /// data), `extensions` extension blocks after it (as gen.py, gen2.py).
    fn sparse(out: &mut Vec<u8>, name: &str, real: u64, extensions: usize) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::GNUSparse);
        header.set_size(0);
        header.set_mode(0o644);
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut gnu.sparse[0].offset, real);
        octal(&mut gnu.sparse[0].numbytes, 0);
        octal(&mut gnu.realsize, real);
        gnu.isextended[0] = u8::from(extensions > 0);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        for i in 0..extensions {
            let mut ext = tar::GnuExtSparseHeader::new();
            for block in &mut ext.sparse {
                octal(&mut block.offset, 0);
                octal(&mut block.numbytes, 0);
            }
            ext.isextended[0] = u8::from(i + 1 < extensions);
            out.extend_from_slice(ext.as_bytes());
        }
    }

    fn assert_sparse_refused(tar: &[u8]) {
        for chunk in [1, 512, 4096] {
            let error = read_all(tar, chunk).unwrap_err();
            let found = ExtensionTooLarge::find(&error).unwrap_or_else(|| panic!("not refused as sparse: {error}"));
            assert_eq!(found.kind, ExtensionKind::GnuSparse, "chunk {chunk}");
            assert!(found.to_string().contains("GNU sparse entry (tar type 'S')"), "{found}");
        }
    }

    #[test]
    fn a_gnu_sparse_entry_is_refused_at_its_header() {
        // gen2.py: one hole the crate would fill with 4 GiB of zeros.
        let mut tar = Vec::new();
        entry(&mut tar, tar::EntryType::Regular, "before", b"data");
        sparse(&mut tar, "huge", 4 << 30, 0);
        tar.extend_from_slice(&[0; 1024]);
        assert_sparse_refused(&tar);
    }

    #[test]
    fn a_chain_of_sparse_extension_blocks_is_refused_at_the_header() {
        // gen.py, small: the crate would read every block into memory before
        // handing the entry out. The stream is cut after the header: were
        // any extension block read, the error would be a short read instead.
        let mut tar = Vec::new();
        sparse(&mut tar, "spar", 0, 256);
        let whole = tar.len();
        tar.extend_from_slice(&[0; 1024]);
        assert_sparse_refused(&tar);
        assert_sparse_refused(&tar[..whole.min(BLOCK)]);
    }

    #[test]
    fn a_sparse_extension_flag_on_another_entry_type_is_refused() {
        let mut tar = Vec::new();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(4);
        header.as_gnu_mut().unwrap().isextended[0] = 1;
        header.set_cksum();
        tar.extend_from_slice(header.as_bytes());
        tar.extend_from_slice(&[b'x'; BLOCK]);
        tar.extend_from_slice(&[0; 1024]);
        assert_sparse_refused(&tar);
    }
}
