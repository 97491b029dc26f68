//! `ces inspect`: an image's config, layers and where it came from.

use std::collections::BTreeMap;

use ces_image::Provenance;
use ces_image::quote::{MAX_QUOTED, escape_message, quote};
use ces_image::rootfs::Rootfs;

use crate::printer::human_bytes;
use crate::settings::Settings;

/// What `ces inspect --json` prints.
#[derive(Debug, serde::Serialize)]
struct Inspection {
    reference: String,
    digest: String,
    index_digest: Option<String>,
    pulled_at: Option<String>,
    platform: String,
    created: Option<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    user: Option<String>,
    workdir: Option<String>,
    labels: BTreeMap<String, String>,
    /// Where it came from: its OCI labels and base annotations.
    provenance: Provenance,
    layers: Vec<Layer>,
    /// The image's assembled root filesystem; `null` when it is kept as its
    /// layers (`rootfs_layers`) or not unpacked.
    rootfs: Option<String>,
    /// The directories of an image kept as its layers, bottom (its first
    /// layer) first: an overlay's `lowerdir` lists them the other way.
    rootfs_layers: Option<Vec<String>>,
}

#[derive(Debug, serde::Serialize)]
struct Layer {
    digest: String,
    size: u64,
    media_type: String,
}

/// Prints the inspection on stdout.
pub fn inspect(settings: &Settings, query: &str, json: bool) -> anyhow::Result<()> {
    let store = settings.store()?;
    let record = store.lookup(query)?;
    let manifest = store.manifest(&record.digest)?;
    let config = store.config(&manifest)?;
    let run = config.config().clone().unwrap_or_default();
    let unpacked = store.unpacked(&record.digest);
    let inspection = Inspection {
        reference: record.reference.to_string(),
        digest: record.digest.to_string(),
        index_digest: record.index_digest.as_ref().map(ToString::to_string),
        pulled_at: record.pulled_at.map(|t| t.to_string()),
        platform: format!("{}/{}", config.os(), config.architecture()),
        created: config.created().clone(),
        entrypoint: run.entrypoint().clone().unwrap_or_default(),
        cmd: run.cmd().clone().unwrap_or_default(),
        env: run.env().clone().unwrap_or_default(),
        user: run.user().clone().filter(|u| !u.is_empty()),
        workdir: run.working_dir().clone().filter(|w| !w.is_empty()),
        labels: run.labels().clone().unwrap_or_default().into_iter().collect(),
        // From the content-addressed blobs (the index's copy could be edited).
        provenance: Provenance::of(&manifest, &config),
        layers: manifest
            .layers()
            .iter()
            .map(|l| Layer { digest: l.digest().to_string(), size: l.size(), media_type: l.media_type().to_string() })
            .collect(),
        rootfs: match &unpacked {
            Some(Rootfs::Tree(tree)) => Some(tree.display().to_string()),
            _ => None,
        },
        rootfs_layers: match &unpacked {
            Some(Rootfs::Layers(layers)) => Some(layers.dirs.iter().map(|d| d.display().to_string()).collect()),
            _ => None,
        },
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&inspection)?);
        return Ok(());
    }
    let i = &inspection;
    let none = || "-".to_owned();
    println!("Reference:   {}", i.reference);
    println!("Digest:      {}", i.digest);
    if let Some(index) = &i.index_digest {
        println!("Index:       {index}");
    }
    println!("Platform:    {}", quote(&i.platform));
    println!("Created:     {}", i.created.as_deref().map_or_else(none, printable));
    println!("Pulled:      {}", i.pulled_at.clone().unwrap_or_else(none));
    println!("Entrypoint:  {}", argv(&i.entrypoint)?);
    println!("Cmd:         {}", argv(&i.cmd)?);
    println!("User:        {}", i.user.as_deref().map_or_else(|| "(root)".to_owned(), printable));
    println!("WorkingDir:  {}", i.workdir.as_deref().map_or_else(none, printable));
    println!("Env:");
    for var in &i.env {
        println!("  {}", quote(var));
    }
    println!("Labels:");
    for (key, value) in &i.labels {
        println!("  {}={}", quote(key), quote(value));
    }
    println!("Provenance:");
    let p = &i.provenance;
    for (what, value) in [
        ("Source", &p.source),
        ("Revision", &p.revision),
        ("Created", &p.created),
        ("Version", &p.version),
        ("Base image", &p.base_name),
        ("Base digest", &p.base_digest),
    ] {
        println!("  {:<12} {}", format!("{what}:"), value.as_deref().map_or_else(|| "-".to_owned(), printable));
    }
    println!("Layers:");
    for layer in &i.layers {
        println!("  {}  {:>9}  {}", layer.digest, human_bytes(layer.size), quote(&layer.media_type));
    }
    // The tree's path, or "N layers in DIR".
    println!("Rootfs:      {}", unpacked.as_ref().map_or_else(|| "(not unpacked)".to_owned(), ToString::to_string));
    Ok(())
}

/// An argv from the image as a JSON array whose every element is also
/// quoted: JSON escapes only C0 controls, so C1 controls (`\u{9b}` starts a
/// terminal sequence), DEL and bidirectional overrides would reach the
/// terminal as themselves, and an element may be any length. Backslashes
/// are JSON's own (doubled), so an escape from [`escape_message`] (`\u{9b}`,
/// braces, one backslash) cannot be confused with text in the element.
fn argv(args: &[String]) -> serde_json::Result<String> {
    let quoted = args
        .iter()
        .map(|arg| Ok(escape_message(&serde_json::to_string(arg)?, MAX_QUOTED)))
        .collect::<serde_json::Result<Vec<_>>>()?;
    Ok(format!("[{}]", quoted.join(",")))
}

/// A value from the image, safe to print: cut short, control characters
/// escaped (a label is the builder's free text, and must not drive the
/// terminal: an OSC 8 hyperlink in it would render live).
fn printable(value: &str) -> String {
    quote(value).to_string()
}
