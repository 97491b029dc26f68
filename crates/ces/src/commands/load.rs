//! `ces load`: import the images of an OCI archive or a `docker save`
//! tarball (as brought in through a TRE's airlock) into the store, then
//! unpack their root filesystems, as a pull would. Every load is recorded in
//! the audit log, whatever its outcome.

use std::io::{self, Read};
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use ces_image::archive::{self, LoadOptions};
use ces_image::manifest::Platform;
use ces_image::{ImageRecord, ImageReference};
use indicatif::ProgressBar;
use sha2::{Digest as _, Sha256};

use crate::cli::LoadArgs;
use crate::commands::audit;
use crate::commands::pull::unpack;
use crate::printer::{Printer, human_bytes};
use crate::settings::Settings;

/// How far past the point where the load stopped the archive is read to
/// finish its sha256 for the audit record (a load stops before the end only
/// when it fails; the rest of a huge archive is not read for its hash).
const HASH_READ_LIMIT: u64 = 64 << 20;

/// Loads the archive, records it in the audit log (whatever its outcome),
/// prints the pinned reference of each image on stdout, and unpacks them
/// unless asked not to.
pub fn load(settings: &Settings, printer: &Printer, args: LoadArgs) -> anyhow::Result<()> {
    // Nothing is loaded that could not be recorded.
    audit::log(settings).check_writable()?;
    let mut archive = Archive::default();
    let mut named = Vec::new();
    let result = import(settings, printer, &args, &mut archive, &mut named);
    let attempt = audit::LoadAttempt { path: &args.file, size: archive.size, sha256: archive.sha256 };
    let recorded = audit::record_load(
        settings,
        attempt,
        result.as_ref().map(|()| named.as_slice()).map_err(|e| (e, named.as_slice())),
    );
    match (result, recorded) {
        (result, Ok(())) => result?,
        (Ok(()), Err(error)) => return Err(error),
        (Err(load), Err(error)) => {
            return Err(error.context(format!("the load failed ({})", crate::diagnostics::message(&load))));
        }
    }
    for record in &named {
        println!("{}", record.reference.with_digest(record.digest.clone()));
    }
    Ok(())
}

/// What the load read of the archive, for its record.
#[derive(Debug, Default)]
struct Archive {
    /// Its size, when known.
    size: Option<u64>,
    /// The sha256 (hex) of its bytes, when read to the end.
    sha256: Option<String>,
}

/// Loads into the store, unpacks, then names (`named`: the images named).
fn import(
    settings: &Settings,
    printer: &Printer,
    args: &LoadArgs,
    archive: &mut Archive,
    named: &mut Vec<ImageRecord>,
) -> anyhow::Result<()> {
    let name = args.tag.as_deref().map(str::parse::<ImageReference>).transpose()?;
    let from_stdin = args.file == Path::new("-");
    let shown = if from_stdin { "standard input".to_owned() } else { args.file.display().to_string() };
    let input: Box<dyn Read> = if from_stdin {
        Box::new(io::stdin().lock())
    } else {
        // As the user ces runs for: under sudo, not root's reach.
        let file = crate::identity::open_as_invoker(&args.file).with_context(|| format!("cannot open {shown}"))?;
        archive.size = file.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
        Box::new(file)
    };
    let store = settings.store()?;
    printer.status(format!("Loading {shown}"));

    let started = Instant::now();
    let spinner = printer.spinner(format!("Reading {shown}"));
    let mut counting = Counting {
        inner: input,
        read: 0,
        shown_at: 0,
        spinner: &spinner,
        shown: &shown,
        hasher: Sha256::new(),
        eof: false,
    };
    let result = archive::read(&store, &mut counting, &LoadOptions { name, platform: Platform::host() });
    // The bytes pass through ces once: the hash is finished on what the load
    // left unread (padding after a whole archive), within a limit.
    if !counting.eof {
        let _ = io::copy(&mut (&mut counting).take(HASH_READ_LIMIT), &mut io::sink());
    }
    spinner.finish_and_clear();
    if counting.eof {
        // The size of what was hashed: the file may have grown or shrunk
        // since it was opened (its owner may write to it meanwhile).
        archive.size = Some(counting.read);
        archive.sha256 = Some(format!("{:x}", counting.hasher.finalize()));
    }
    let loaded = result.with_context(|| format!("cannot load {shown}"))?;
    // Named only once unpacked, as a pull is: an image whose layers cannot
    // be unpacked (a malicious entry) is never named.
    if !args.no_unpack {
        let mut unpacked = Vec::new();
        for record in &loaded.images {
            if !unpacked.contains(&record.digest) {
                // From where the load keeps its blobs until they are named.
                unpack(loaded.store(), printer, &record.digest)?;
                unpacked.push(record.digest.clone());
            }
        }
    }
    let outcome = loaded.name(&store).with_context(|| format!("cannot load {shown}"))?;
    named.extend(outcome.images.iter().cloned());
    printer.status(format!(
        "Read {}: {} blobs, {}, in {:.2}s",
        outcome.format,
        outcome.blobs,
        human_bytes(outcome.bytes),
        started.elapsed().as_secs_f64()
    ));
    for record in &outcome.images {
        printer.status(format!("Loaded {}", record.reference));
    }

    Ok(())
}

/// The archive as it is read, counted on the spinner and hashed for the
/// audit record.
struct Counting<'a, R> {
    inner: R,
    read: u64,
    shown_at: u64,
    spinner: &'a ProgressBar,
    shown: &'a str,
    hasher: Sha256,
    /// The end of the archive was reached.
    eof: bool,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        // Redraw every MiB, not on every read.
        if self.read - self.shown_at >= 1 << 20 {
            self.shown_at = self.read;
            self.spinner.set_message(format!("Reading {} ({})", self.shown, human_bytes(self.read)));
        }
        Ok(n)
    }
}
