//! `ces rmi`: forget images; `ces gc`: delete what no image uses.

use crate::printer::{Printer, counted, human_bytes};
use crate::settings::Settings;

/// Removes each image's name, then collects unreferenced blobs and rootfs.
pub fn rmi(settings: &Settings, printer: &Printer, images: &[String]) -> anyhow::Result<()> {
    let store = settings.store()?;
    let lock = lock(&store, printer)?;
    for query in images {
        let record = store.lookup(query)?;
        store.remove_ref(&record, &lock)?;
        println!("Untagged: {}", record.reference);
    }
    report(printer, &store.gc(&lock)?);
    Ok(())
}

/// Collects unreferenced blobs and rootfs.
pub fn gc(settings: &Settings, printer: &Printer) -> anyhow::Result<()> {
    let store = settings.store()?;
    let lock = lock(&store, printer)?;
    report(printer, &store.gc(&lock)?);
    Ok(())
}

/// The store, locked for removals; says so where that waits.
fn lock(store: &ces_image::Store, printer: &Printer) -> anyhow::Result<ces_image::store::StoreLock> {
    Ok(store.lock_exclusive_saying(|| {
        printer.status(
            "Waiting for the ces runs, pulls and loads using the store to end (ces ps lists the runs; Ctrl-C stops waiting)",
        )
    })?)
}

fn report(printer: &Printer, stats: &ces_image::store::GcStats) {
    let (at_least, uncounted) = match stats.unreadable {
        0 => ("", String::new()),
        1 => ("at least ", " (1 file or directory could not be counted)".to_owned()),
        n => ("at least ", format!(" ({n} files or directories could not be counted)")),
    };
    printer.status(format!(
        "Deleted {}, {} and {}: {at_least}{} of disk freed{uncounted}",
        counted(stats.blobs, "blob"),
        counted(stats.rootfs, "unpacked filesystem"),
        counted(stats.layers, "unpacked layer"),
        human_bytes(stats.freed)
    ));
}
