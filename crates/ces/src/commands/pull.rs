//! `ces pull` and `ces-pull`: fetch an image from an allowed registry into the
//! store, then unpack its root filesystem into the cache.

use std::collections::HashMap;
use std::io::BufRead as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::Context as _;
use ces_image::follow::{Feed, follow};
use ces_image::{Digest, ImageReference, Provenance, Store, StoreError};
use ces_registry::{Client, ClientConfig, Credentials, Secret};

use crate::commands::audit;
use crate::policy;
use crate::printer::{Printer, human_bytes};
use crate::settings::Settings;

/// A pull, as asked for on either command line.
#[derive(Debug)]
pub struct PullRequest {
    /// The reference as typed.
    pub reference: String,
    /// Who to pull as.
    pub credentials: Credentials,
    /// Unpack the root filesystem after the pull.
    pub unpack: bool,
}

/// Reads a token from standard input (one line; the newline is not part of it).
pub fn token_from_stdin() -> anyhow::Result<Secret> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("cannot read the token from standard input")?;
    Ok(Secret::new(line.trim_end_matches(['\r', '\n'])))
}

/// The token from `CES_REGISTRY_TOKEN`, if set.
pub fn token_from_env() -> Option<Secret> {
    std::env::var("CES_REGISTRY_TOKEN").ok().filter(|t| !t.is_empty()).map(Secret::new)
}

/// Runs the pull, records it in the audit log (whatever its outcome), and
/// prints the pinned reference on stdout.
pub fn pull(settings: &Settings, printer: &Printer, request: PullRequest) -> anyhow::Result<()> {
    // Nothing is pulled that could not be recorded.
    audit::log(settings).check_writable()?;
    // Pulls of this log whose ces died get their end first.
    audit::close_lost_pulls(settings);
    let mut started = None;
    let result = fetch(settings, printer, &request, &mut started);
    let attempt = audit::PullAttempt {
        pull_id: started.as_ref().map(|s: &audit::PullStarted| s.id.as_str()),
        reference: &request.reference,
        registry: request.reference.parse::<ImageReference>().ok().map(|r| r.registry().to_owned()),
        registry_user: request.credentials.user(),
        provenance: result.as_ref().ok().map(|pulled| &pulled.provenance),
        endpoint: settings.registries.mirror.clone(),
    };
    let recorded = audit::record_pull(settings, attempt, result.as_ref().map(|pulled| pulled.pinned.digest()));
    if let (Some(started), Ok(())) = (started, &recorded) {
        started.close();
    }
    let Pulled { pinned, .. } = match (result, recorded) {
        (result, Ok(())) => result?,
        (Ok(_), Err(error)) => return Err(error),
        (Err(pull), Err(error)) => {
            return Err(error.context(format!("the pull failed ({})", crate::diagnostics::message(&pull))));
        }
    };
    println!("{pinned}");
    Ok(())
}

/// What a pull stored.
#[derive(Debug)]
struct Pulled {
    /// The reference, pinned to the manifest pulled.
    pinned: ImageReference,
    /// Where the image says it came from.
    provenance: Provenance,
}

/// Pulls into the store (if the policy allows) and returns the pinned
/// reference. Before the registry is contacted, the pull's start is recorded
/// (`started`): a pull refused here leaves only its end.
fn fetch(
    settings: &Settings,
    printer: &Printer,
    request: &PullRequest,
    started: &mut Option<audit::PullStarted>,
) -> anyhow::Result<Pulled> {
    // Refusals come before the store is opened or the network touched.
    policy::check_pull_enabled(settings)?;
    let reference: ImageReference = request.reference.parse()?;
    policy::check_pull_reference(settings, &reference)?;
    let client = Client::new(ClientConfig {
        allowed: settings.registries.allowed.clone(),
        insecure: settings.registries.insecure.clone(),
        redirect_hosts: None,
        mirror: mirror(settings)?,
    })?;
    client.check_allowed(reference.registry())?;
    *started = Some(audit::record_pull_start(settings, &reference, request.credentials.user())?);
    let store = settings.store()?;
    let lock = store.lock_shared()?;
    printer.status(format!(
        "Pulling {reference}{}",
        request.credentials.user().map(|u| format!(" as {u}")).unwrap_or_default()
    ));

    let started = Instant::now();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    let progress = printer.pull_reporter();
    let fetch = |reference: &ImageReference, all_layer_blobs, reporter: &dyn ces_registry::PullReporter| {
        let options = ces_registry::PullOptions { all_layer_blobs, ..policy::pull_options(settings) };
        runtime.block_on(ces_registry::pull(
            &client,
            &store,
            &lock,
            reference,
            &request.credentials,
            &options,
            reporter,
        ))
    };
    // Each layer is unpacked on a thread of its own as its bytes arrive
    // (or, for a layer the store had, at once), while the others are still
    // being fetched.
    let options = ces_image::unpack::UnpackOptions::for_current_user();
    let (queue, layers) = std::sync::mpsc::channel();
    let (assembly, events) = std::sync::mpsc::channel();
    let ahead = Ahead::new(&progress);
    let (layers, budget) = (Mutex::new(layers), store.layer_budget());
    // Set when the fetch failed: what is queued is left (and gc frees what
    // was made).
    let cancelled = std::sync::atomic::AtomicBool::new(false);
    let fetched = std::thread::scope(|scope| {
        // However this scope ends (a panic too), the workers hear that no
        // more layers come, or the scope would wait for them for ever.
        struct Done<'a, 'b>(&'a Ahead<'b>);
        impl Drop for Done<'_, '_> {
            fn drop(&mut self) {
                self.0.done();
            }
        }
        let done = Done(&ahead);
        // Two layers at once (one per core, at most 2: the downloads run
        // beside them, and each holds a decompressor's window), all within
        // one budget. A worker that cannot be started is done without.
        let workers =
            if request.unpack { std::thread::available_parallelism().map_or(1, |n| n.get()).min(2) } else { 0 };
        let unpackers: Vec<_> = (0..workers)
            .filter_map(|_| {
                let (store, options, layers, budget, cancelled) = (&store, &options, &layers, &budget, &cancelled);
                let ready = assembly.clone();
                std::thread::Builder::new()
                    .name("ces-unpack-ahead".to_owned())
                    .spawn_scoped(scope, move || unpack_ahead(store, options, layers, budget, cancelled, ready))
                    .ok()
            })
            .collect();
        // The root filesystem is assembled beside them, each layer linked
        // as soon as it is unpacked and those before it are linked.
        let assembler = match unpackers.is_empty() {
            true => None,
            false => std::thread::Builder::new()
                .name("ces-assemble-ahead".to_owned())
                .spawn_scoped(scope, || assemble_ahead(&store, &options, events, &cancelled))
                .ok(),
        };
        if !unpackers.is_empty() {
            ahead.start(queue, assembler.is_some().then_some(assembly));
        }
        let fetched = fetch(&reference, false, &ahead);
        cancelled.store(fetched.is_err(), std::sync::atomic::Ordering::Relaxed);
        drop(done);
        let mut unpacked = HashMap::new();
        for unpacker in unpackers {
            unpacked.extend(unpacker.join().unwrap_or_default());
        }
        let rootfs = assembler.and_then(|assembler| assembler.join().ok().flatten());
        fetched.map(|outcome| (outcome, unpacked, rootfs))
    });
    let (outcome, unpacked_ahead, rootfs_ahead) = fetched?;
    let retried = match outcome.retries {
        0 => String::new(),
        n => format!(
            ", {n} {}, {} fetched again",
            if n == 1 { "retry" } else { "retries" },
            human_bytes(outcome.refetched)
        ),
    };
    printer.status(format!(
        "Pulled {} layer{} ({} new, {}{retried}) in {:.2}s",
        outcome.layers,
        if outcome.layers == 1 { "" } else { "s" },
        outcome.layers - outcome.reused,
        human_bytes(outcome.downloaded),
        started.elapsed().as_secs_f64()
    ));

    // Named only once usable: an image whose layers cannot be unpacked
    // (a corrupt or malicious layer) is not left in `ces images`.
    if request.unpack {
        match unpack_after(&store, printer, &outcome.record.digest, &unpacked_ahead, rootfs_ahead) {
            // Layers the store had unpacked were not fetched (it keeps no
            // layer blobs), but this image can only be unpacked from its
            // blobs (a hard link across layers): fetched now, the same
            // image by its digest, and unpacked again.
            Err(e) if matches!(e.downcast_ref::<StoreError>(), Some(StoreError::LayerBlobDropped { .. })) => {
                printer.status("Fetching the layer blobs this image needs to unpack");
                fetch(&reference.with_digest(outcome.record.digest.clone()), true, &progress)?;
                unpack(&store, printer, &outcome.record.digest)?;
            }
            result => result?,
        }
    }
    drop(runtime);
    store.add_ref(&outcome.record)?;
    drop(lock);
    Ok(Pulled { pinned: reference.with_digest(outcome.record.digest.clone()), provenance: outcome.record.provenance })
}

/// The pull proxy of `[registries] mirror`, with the user's credentials for
/// it from `CES_PROXY_USER` and `CES_PROXY_PASSWORD` (none: anonymous).
fn mirror(settings: &Settings) -> anyhow::Result<Option<ces_registry::Mirror>> {
    let Some(url) = &settings.registries.mirror else { return Ok(None) };
    let url = ces_registry::Url::parse(url).with_context(|| format!("[registries] mirror {url:?} is not a URL"))?;
    // The user's password and registry tokens cross this connection.
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let loopback = url
        .host_str()
        .is_some_and(|h| h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()));
    anyhow::ensure!(
        url.scheme() == "https" || loopback || settings.registries.insecure.contains(&host),
        "[registries] mirror {url} is plain http to another host: passwords and tokens would cross the network in clear (use https, or list {host} in [registries] insecure)"
    );
    let credentials = ces_registry::Credentials::from_parts(
        std::env::var("CES_PROXY_USER").ok(),
        std::env::var("CES_PROXY_PASSWORD").ok().map(ces_registry::Secret::new),
    );
    Ok(Some(ces_registry::Mirror { url, credentials }))
}

/// A layer for the unpacking ahead, with its diff_id.
enum Layer {
    /// Its blob is stored (or the store had the layer).
    Stored(Digest, String),
    /// Its blob is being downloaded into `file`, `size` bytes, as `feed`
    /// tells.
    Arriving { digest: Digest, diff_id: String, file: std::fs::File, size: u64, feed: Arc<Feed> },
}

/// One worker of the unpacking ahead: each layer it takes from `layers`
/// (until the pull is done with them), unless the fetch failed. What
/// unpacking did, by layer blob, for those unpacked now.
fn unpack_ahead(
    store: &Store,
    options: &ces_image::unpack::UnpackOptions,
    layers: &Mutex<std::sync::mpsc::Receiver<Layer>>,
    budget: &ces_image::store::LayerBudget,
    cancelled: &std::sync::atomic::AtomicBool,
    ready: std::sync::mpsc::Sender<Assembly>,
) -> HashMap<Digest, ces_image::unpack::UnpackStats> {
    let mut unpacked = HashMap::new();
    loop {
        let next = layers.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(layer) = next else { return unpacked };
        if cancelled.load(std::sync::atomic::Ordering::Relaxed) {
            continue;
        }
        let (digest, diff_id, arriving) = match layer {
            Layer::Stored(digest, diff_id) => (digest, diff_id, None),
            // Downloaded whole before a worker came to it (the registry is
            // faster than unpacking): from the stored blob, verified once.
            Layer::Arriving { digest, diff_id, feed, .. } if feed.is_complete() => (digest, diff_id, None),
            Layer::Arriving { digest, diff_id, file, size, feed } => (digest, diff_id, Some(follow(file, size, feed))),
        };
        // Should following fail because the download started again in
        // another file, that file is followed in turn.
        let result = match arriving {
            Some(source) => store.unpack_layer_following(&digest, &diff_id, options, budget, source),
            None => store.unpack_layer_ahead(&digest, &diff_id, options, budget),
        };
        match result {
            Ok(stats) => {
                // The store had it (or it came twice) when there are no stats.
                unpacked.extend(stats.map(|stats| (digest, stats)));
                let _ = ready.send(Assembly::LayerReady);
            }
            // Unpacked again, and reported, with the image.
            Err(e) => tracing::debug!(layer = %digest, error = %e, "not unpacked ahead"),
        }
    }
}

/// What the assembly of the root filesystem during the pull hears.
enum Assembly {
    /// The image (its manifest) and its layers, blob and diff_id, in order.
    Image(Digest, Vec<(Digest, String)>),
    /// A layer was unpacked, or found in the store.
    LayerReady,
}

/// Assembles the image's root filesystem while it is pulled
/// ([`Store::assemble_ahead`]): each layer is linked as soon as the store
/// has it and those before it are linked. What was begun, for the unpack to
/// finish; nothing if the fetch failed.
fn assemble_ahead(
    store: &Store,
    options: &ces_image::unpack::UnpackOptions,
    events: std::sync::mpsc::Receiver<Assembly>,
    cancelled: &std::sync::atomic::AtomicBool,
) -> Option<ces_image::store::RootfsAhead> {
    let mut rootfs = None;
    for event in events {
        if cancelled.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        if let (Assembly::Image(digest, layers), None) = (event, &rootfs) {
            rootfs = store.assemble_ahead(&digest, &layers);
        }
        if let Some(rootfs) = &mut rootfs {
            store.link_ready(rootfs, options);
        }
    }
    rootfs
}

/// The layers a pull fetches, each as its download starts (or, for a layer
/// the store had, at once), with its diff_id: what is unpacked ahead
/// ([`Store::unpack_layer_following`], [`Store::unpack_layer_ahead`]). The
/// progress of the pull is reported through it.
struct Ahead<'a> {
    progress: &'a dyn ces_registry::PullReporter,
    /// Each layer's diff_id and size.
    layers: Mutex<HashMap<Digest, (String, Option<u64>)>>,
    /// The feeds of the blobs being downloaded, by digest, with the bytes
    /// received since their reader was last told.
    feeds: Mutex<HashMap<Digest, (Arc<Feed>, u64)>>,
    /// `None` without workers (nothing unpacked now).
    queue: Mutex<Option<std::sync::mpsc::Sender<Layer>>>,
    /// The image's manifest, once resolved.
    image: Mutex<Option<Digest>>,
    /// Where the image's layers are told for assembly (`None` without).
    assembly: Mutex<Option<std::sync::mpsc::Sender<Assembly>>>,
}

/// Bytes received between two wake-ups of a blob's reader: the client
/// writes the file through a buffer of this size.
const FEED_STEP: u64 = 256 << 10;

impl<'a> Ahead<'a> {
    /// Nothing is queued until [`Ahead::start`].
    fn new(progress: &'a dyn ces_registry::PullReporter) -> Ahead<'a> {
        Ahead {
            progress,
            layers: Mutex::new(HashMap::new()),
            feeds: Mutex::new(HashMap::new()),
            queue: Mutex::new(None),
            image: Mutex::new(None),
            assembly: Mutex::new(None),
        }
    }

    /// Layers go to `queue` from now on (its workers are running), and the
    /// image's to `assembly`.
    fn start(&self, queue: std::sync::mpsc::Sender<Layer>, assembly: Option<std::sync::mpsc::Sender<Assembly>>) {
        *self.queue.lock().unwrap_or_else(PoisonError::into_inner) = Some(queue);
        *self.assembly.lock().unwrap_or_else(PoisonError::into_inner) = assembly;
    }

    fn send(&self, layer: Layer) {
        if let Some(queue) = &*self.queue.lock().unwrap_or_else(PoisonError::into_inner) {
            let _ = queue.send(layer);
        }
    }

    /// No more layers: the unpacking threads end after the last, and no
    /// more bytes come to a blob not complete by now.
    fn done(&self) {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).take();
        self.assembly.lock().unwrap_or_else(PoisonError::into_inner).take();
        for (feed, _) in self.feeds.lock().unwrap_or_else(PoisonError::into_inner).values() {
            feed.end();
        }
    }
}

impl ces_registry::PullReporter for Ahead<'_> {
    fn resolved(&self, reference: &ImageReference, digest: &ces_image::Digest) {
        *self.image.lock().unwrap_or_else(PoisonError::into_inner) = Some(digest.clone());
        self.progress.resolved(reference, digest);
    }
    fn layers(&self, layers: &[(Digest, String)]) {
        self.layers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(layers.iter().map(|(digest, diff_id)| (digest.clone(), (diff_id.clone(), None))));
        let image = self.image.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let (Some(assembly), Some(image)) = (&*self.assembly.lock().unwrap_or_else(PoisonError::into_inner), image) {
            let _ = assembly.send(Assembly::Image(image, layers.to_vec()));
        }
        self.progress.layers(layers);
    }
    fn layer_start(&self, digest: &Digest, size: u64, reused: bool) {
        if let Some((_, known)) = self.layers.lock().unwrap_or_else(PoisonError::into_inner).get_mut(digest) {
            *known = Some(size);
        }
        self.progress.layer_start(digest, size, reused);
    }
    fn layer_progress(&self, digest: &Digest, bytes: u64) {
        if let Some((feed, received)) = self.feeds.lock().unwrap_or_else(PoisonError::into_inner).get_mut(digest) {
            *received += bytes;
            if *received >= FEED_STEP {
                *received %= FEED_STEP;
                feed.progressed();
            }
        }
        self.progress.layer_progress(digest, bytes);
    }
    fn layer_done(&self, digest: &Digest) {
        self.progress.layer_done(digest);
        // A blob downloaded: its follower reads the rest. One the store had:
        // its layer now.
        if let Some((feed, _)) = self.feeds.lock().unwrap_or_else(PoisonError::into_inner).get(digest) {
            feed.complete();
            return;
        }
        let diff_id = self.layers.lock().unwrap_or_else(PoisonError::into_inner).get(digest).map(|(d, _)| d.clone());
        if let Some(diff_id) = diff_id {
            self.send(Layer::Stored(digest.clone(), diff_id));
        }
    }
    fn retrying(&self, retry: &ces_registry::Retry<'_>) {
        self.progress.retrying(retry);
    }
    fn layer_restarted(&self, digest: &ces_image::Digest, discarded: u64) {
        self.progress.layer_restarted(digest, discarded);
    }
    fn blob_file(&self, digest: &Digest, path: &std::path::Path) {
        self.progress.blob_file(digest, path);
        // The download (again, in a new file: the old one gets no more).
        if self.queue.lock().unwrap_or_else(PoisonError::into_inner).is_none() {
            return;
        }
        let mut feeds = self.feeds.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((old, _)) = feeds.remove(digest) {
            old.end();
        }
        let known = self.layers.lock().unwrap_or_else(PoisonError::into_inner).get(digest).cloned();
        let Some((diff_id, Some(size))) = known else { return };
        // Without a file to read, the layer waits for its stored blob.
        let Ok(file) = std::fs::File::open(path) else { return };
        let feed = Feed::new();
        feeds.insert(digest.clone(), (feed.clone(), 0));
        drop(feeds);
        self.send(Layer::Arriving { digest: digest.clone(), diff_id, file, size, feed });
    }
}

/// Unpacks the image's root filesystem into the cache, with a spinner.
pub fn unpack(store: &Store, printer: &Printer, digest: &ces_image::Digest) -> anyhow::Result<()> {
    unpack_after(store, printer, digest, &HashMap::new(), None)
}

/// [`unpack`], some layers of which were unpacked ahead (what that did, by
/// layer blob: their warnings are said with the others'), and whose root
/// filesystem may have been begun (`rootfs`, [`assemble_ahead`]).
fn unpack_after(
    store: &Store,
    printer: &Printer,
    digest: &ces_image::Digest,
    ahead: &HashMap<ces_image::Digest, ces_image::unpack::UnpackStats>,
    rootfs: Option<ces_image::store::RootfsAhead>,
) -> anyhow::Result<()> {
    if store.unpacked(digest).is_some() {
        return Ok(());
    }
    let started = Instant::now();
    let options = ces_image::unpack::UnpackOptions::for_current_user();
    let spinner = printer.spinner("Unpacking");
    let mut on_layer = |i, n| spinner.set_message(format!("Unpacking layer {}/{n}", i + 1));
    let result = match rootfs {
        Some(rootfs) => store.unpack_assembled(digest, rootfs, &options, &mut on_layer),
        None => store.unpack(digest, &options, &mut on_layer),
    };
    spinner.finish_and_clear();
    let unpacked = result?;
    let count = unpacked.layers.len();
    let blobs: Vec<Option<ces_image::Digest>> = match ahead.is_empty() {
        true => Vec::new(),
        false => {
            store.manifest(digest)?.layers().iter().map(|l| ces_image::manifest::descriptor_digest(l).ok()).collect()
        }
    };
    for (i, stats) in unpacked.layers.iter().enumerate() {
        let stats = match blobs.get(i).cloned().flatten().and_then(|blob| ahead.get(&blob)) {
            Some(early) if *stats == ces_image::unpack::UnpackStats::default() => early,
            _ => stats,
        };
        if let Some(line) = dropped_summary(stats) {
            printer.status(format!("warning: layer {}/{count}: {line}", i + 1));
        }
    }
    let place = match &unpacked.rootfs {
        ces_image::rootfs::Rootfs::Tree(tree) => tree.display().to_string(),
        layers => format!("{layers} (kept as they are, mounted at run time)"),
    };
    printer.status(format!("Unpacked to {place} in {:.2}s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// One line saying what a layer carried that was not unpacked (extended
/// attributes, device nodes), or `None` when nothing was left out.
fn dropped_summary(stats: &ces_image::unpack::UnpackStats) -> Option<String> {
    let mut parts = Vec::new();
    if !stats.dropped_xattrs.is_empty() {
        let names: Vec<String> = stats
            .dropped_xattrs
            .iter()
            .map(|(name, n)| format!("{name} ({n} {})", if *n == 1 { "entry" } else { "entries" }))
            .collect();
        parts.push(format!(
            "extended attributes not set: {} (only user.* is kept, not user.overlay.*, where the file system takes it)",
            names.join(", ")
        ));
    }
    if let Some(first) = stats.skipped_devices.first() {
        let more = stats.skipped_devices.len() - 1;
        let more = if more == 0 { String::new() } else { format!(" and {more} more") };
        parts.push(format!("device nodes skipped (creating devices needs root): {first}{more}"));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}
