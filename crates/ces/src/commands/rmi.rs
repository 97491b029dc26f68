//! `ces rmi`: forget images; `ces gc`: delete what no image uses.

use crate::printer::{Printer, human_bytes};
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
    printer.status(format!(
        "Deleted {} blobs ({}), {} unpacked filesystems and {} unpacked layers",
        stats.blobs,
        human_bytes(stats.bytes),
        stats.rootfs,
        stats.layers
    ));
}
