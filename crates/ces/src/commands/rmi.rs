//! `ces rmi`: forget images; `ces gc`: delete what no image uses.

use crate::printer::{Printer, counted, human_bytes};
use crate::settings::Settings;

/// Removes each image's name, then collects unreferenced blobs and rootfs.
pub fn rmi(settings: &Settings, printer: &Printer, images: &[String]) -> anyhow::Result<()> {
    let store = settings.store()?;
    let lock = store.lock_exclusive()?;
    for query in images {
        let record = store.lookup(query)?;
        store.remove_ref(&record.reference, &lock)?;
        println!("Untagged: {}", record.reference);
    }
    report(printer, &store.gc(&lock)?);
    Ok(())
}

/// Collects unreferenced blobs and rootfs.
pub fn gc(settings: &Settings, printer: &Printer) -> anyhow::Result<()> {
    let store = settings.store()?;
    let lock = store.lock_exclusive()?;
    report(printer, &store.gc(&lock)?);
    Ok(())
}

fn report(printer: &Printer, stats: &ces_image::store::GcStats) {
    let unread = match stats.unreadable {
        0 => String::new(),
        n => format!(" at least ({n} files or directories could not be read first)"),
    };
    printer.status(format!(
        "Deleted {}, {} and {}: {} of disk freed{unread}",
        counted(stats.blobs, "blob"),
        counted(stats.rootfs, "unpacked filesystem"),
        counted(stats.layers, "unpacked layer"),
        human_bytes(stats.freed)
    ));
}
