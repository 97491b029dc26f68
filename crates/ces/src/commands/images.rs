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
}

/// Prints the table (or JSON) on stdout.
pub fn images(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let store = settings.store()?;
    let mut rows = Vec::new();
    for record in store.images()? {
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
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let width = rows.iter().map(|r| r.reference.len()).max().unwrap_or(0).max("REFERENCE".len());
    println!("{:width$}  {:12}  {:>9}  PULLED", "REFERENCE", "DIGEST", "SIZE");
    for row in rows {
        let short = row.digest.strip_prefix("sha256:").unwrap_or(&row.digest);
        let pulled = row.pulled_at.as_deref().map(|t| t.split('.').next().unwrap_or(t)).unwrap_or("-");
        println!(
            "{:width$}  {:12}  {:>9}  {pulled}",
            row.reference,
            &short[..12.min(short.len())],
            human_bytes(row.size)
        );
    }
    Ok(())
}
