//! `ces images`: what the store holds.

use crate::printer::human_bytes;
use crate::settings::Settings;

/// One row of `ces images`.
#[derive(Debug, serde::Serialize)]
struct Row {
    reference: String,
    digest: String,
    size: u64,
    pulled_at: Option<String>,
    index_digest: Option<String>,
    /// The uid of the user who loaded it (`ces load`), or `None` (pulled).
    loaded_by: Option<u32>,
}

/// Prints the table (or JSON) on stdout.
pub fn images(settings: &Settings, json: bool, disk: bool) -> anyhow::Result<()> {
    let store = settings.store()?;
    if disk {
        return disk_use(&store, json);
    }
    let mut rows = Vec::new();
    // The names that resolve for this user: pulled ones and their own
    // loads (not another user's, in a store several users share).
    for record in store.own_images()? {
        // The download size: manifest, config and layers as stored.
        let size = store.manifest(&record.digest).map_or(record.manifest_size, |m| {
            record.manifest_size + m.config().size() + m.layers().iter().map(|l| l.size()).sum::<u64>()
        });
        rows.push(Row {
            reference: record.reference.to_string(),
            digest: record.digest.to_string(),
            size,
            pulled_at: record.pulled_at.map(|t| t.to_string()),
            index_digest: record.index_digest.map(|d| d.to_string()),
            loaded_by: record.loaded_by,
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let width = reference_width(rows.iter().map(|r| r.reference.as_str()));
    println!("{:width$}  {:12}  {:>9}  PULLED", "REFERENCE", "DIGEST", "SIZE");
    for row in rows {
        let pulled = row.pulled_at.as_deref().map(|t| t.split('.').next().unwrap_or(t)).unwrap_or("-");
        let loaded = if row.loaded_by.is_some() { " (loaded)" } else { "" };
        println!(
            "{:width$}  {:12}  {:>9}  {pulled}{loaded}",
            row.reference,
            short_digest(&row.digest),
            human_bytes(row.size)
        );
    }
    Ok(())
}

/// The width of a table's REFERENCE column.
fn reference_width<'a>(references: impl Iterator<Item = &'a str>) -> usize {
    references.map(str::len).max().unwrap_or(0).max("REFERENCE".len())
}

/// A digest as the tables show it: its first 12 hex digits.
fn short_digest(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..12.min(hex.len())]
}

/// `ces images --disk`: what each image takes on disk, and what removing
/// it would free.
fn disk_use(store: &ces_image::Store, json: bool) -> anyhow::Result<()> {
    let usage = store.disk_use()?;
    // The quota that holds the store's writes, where one does: what a
    // quota-limited home has left for images.
    let quota = ces_registry::quota::tightest(store.root());
    if json {
        #[derive(serde::Serialize)]
        struct WithQuota<'a> {
            #[serde(flatten)]
            usage: &'a ces_image::store::DiskUse,
            quota: Option<ces_registry::quota::Quota>,
        }
        println!("{}", serde_json::to_string_pretty(&WithQuota { usage: &usage, quota })?);
        return Ok(());
    }
    let width = reference_width(usage.images.iter().map(|i| i.reference.as_str()));
    println!("{:width$}  {:12}  {:>9}  {:>11}", "REFERENCE", "DIGEST", "DISK", "UNIQUE");
    for image in &usage.images {
        let unique = match image.names {
            1 => human_bytes(image.unique),
            n => format!("0 ({n} names)"),
        };
        println!(
            "{:width$}  {:12}  {:>9}  {:>11}",
            image.reference,
            short_digest(&image.digest),
            human_bytes(image.disk),
            unique
        );
    }
    println!(
        "Store {}: {} in blobs, layers and root filesystems; {} of it kept by no image (`ces gc` frees it).",
        store.root().display(),
        human_bytes(usage.total),
        human_bytes(usage.reclaimable)
    );
    println!(
        "DISK includes what an image shares with others (so the column adds up to more than the store); \
         UNIQUE is what `ces rmi` of it frees on top of what no image keeps (an image with several names: \
         once its last name goes)."
    );
    if usage.unreadable > 0 {
        println!("{} files or directories could not be read: the figures are lower bounds.", usage.unreadable);
    }
    if let Some(quota) = quota {
        println!(
            "On the store's file system, {} disk quota: {} used of {}, {} left.",
            quota.holder,
            human_bytes(quota.used),
            human_bytes(quota.limit),
            human_bytes(quota.left)
        );
    }
    Ok(())
}
