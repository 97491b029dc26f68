//! `ces load`: import the images of an OCI archive or a `docker save`
//! tarball (as brought in through a TRE's airlock) into the store, then
//! unpack their root filesystems, as a pull would.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use ces_image::archive::{self, LoadOptions};
use ces_image::manifest::Platform;
use ces_image::{ImageReference, Store};
use indicatif::ProgressBar;

use crate::cli::LoadArgs;
use crate::commands::pull::{human_bytes, unpack};
use crate::printer::Printer;
use crate::settings::Settings;

/// Loads the archive, prints the pinned reference of each image on stdout,
/// and unpacks them unless asked not to.
pub fn load(settings: &Settings, printer: &Printer, args: LoadArgs) -> anyhow::Result<()> {
    let name = args.tag.as_deref().map(str::parse::<ImageReference>).transpose()?;
    let from_stdin = args.file == Path::new("-");
    let shown = if from_stdin { "standard input".to_owned() } else { args.file.display().to_string() };
    let input: Box<dyn Read> = if from_stdin {
        Box::new(io::stdin().lock())
    } else {
        Box::new(File::open(&args.file).with_context(|| format!("cannot open {shown}"))?)
    };
    let store = Store::open(&settings.storage_root)?;
    printer.status(format!("Loading {shown}"));

    let started = Instant::now();
    let spinner = printer.spinner(format!("Reading {shown}"));
    let counting = Counting { inner: input, read: 0, shown_at: 0, spinner: &spinner, shown: &shown };
    let result = archive::load(&store, counting, &LoadOptions { name, platform: Platform::host() });
    spinner.finish_and_clear();
    let outcome = result.with_context(|| format!("cannot load {shown}"))?;
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

    if !args.no_unpack {
        let mut unpacked = Vec::new();
        for record in &outcome.images {
            if !unpacked.contains(&record.digest) {
                unpack(&store, printer, &record.digest)?;
                unpacked.push(record.digest.clone());
            }
        }
    }
    for record in &outcome.images {
        println!("{}", record.reference.with_digest(record.digest.clone()));
    }
    Ok(())
}

/// The archive as it is read, counted on the spinner.
struct Counting<'a, R> {
    inner: R,
    read: u64,
    shown_at: u64,
    spinner: &'a ProgressBar,
    shown: &'a str,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        // Redraw every MiB, not on every read.
        if self.read - self.shown_at >= 1 << 20 {
            self.shown_at = self.read;
            self.spinner.set_message(format!("Reading {} ({})", self.shown, human_bytes(self.read)));
        }
        Ok(n)
    }
}
