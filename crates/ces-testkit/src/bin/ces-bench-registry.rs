//! Starts a local Docker Distribution registry holding the pull benchmark's
//! image (`bench/pull`): writes a ces config that allows it, prints the image
//! reference on stdout, and serves until its standard input closes.
//!
//! Usage: `ces-bench-registry CONFIG_OUT STORE_ROOT`
//!
//! The image stands in for a real analysis image (a Debian base, a Python
//! runtime, scientific packages, the analysis with its model and data): four
//! gzip layers of 19, 45, 64 and 73 MB, 200 MB in all, which is what a pull
//! downloads. Unpacked they hold 420 MB in some 14,000 files, of three kinds,
//! as in such images:
//!
//! - text (sources, docs, configs): many small files of words drawn from a
//!   skewed vocabulary, in lines of code, which gzip shrinks ~3.5x;
//! - code (executables, shared libraries): runs of random bytes, small
//!   integers and repeats of earlier runs, which gzip shrinks ~2.5x;
//! - packed data (model weights, compressed data files, wheels): random
//!   bytes, which gzip cannot shrink.
//!
//! Everything comes from a seeded PRNG, so every run pushes the same image
//! with the same digests. Layers are compressed at gzip's default level (6),
//! as `docker build`, BuildKit and buildah write them. A summary of each layer
//! goes to stderr.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use ces_testkit::image::sha256_digest;
use ces_testkit::{AuthMode, Compression, Entry, ImageSpec, Layer, Registry};

/// The image's repository and tag in the registry.
const REPOSITORY: &str = "bench/analysis";
const TAG: &str = "1.0";
/// The seed of everything generated.
const SEED: u64 = 0x00ce_5be7_c400_0001;

/// What a file holds.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Lines of code and prose: compresses ~3.5x.
    Text,
    /// Machine code and tables: compresses ~2.5x.
    Code,
    /// Already-compressed data: does not compress.
    Packed,
}

/// A group of similar files under one directory tree.
struct Group {
    /// Directory the files go under (no leading or trailing slash).
    dir: &'static str,
    /// File name suffix (`.py`, `.so`).
    suffix: &'static str,
    /// How many files.
    count: usize,
    /// Sizes are drawn log-uniformly from `min..max` bytes.
    min: usize,
    max: usize,
    kind: Kind,
    /// Spread the files over this many subdirectories (packages).
    subdirs: usize,
}

const fn group(
    dir: &'static str,
    suffix: &'static str,
    count: usize,
    (min, max): (usize, usize),
    kind: Kind,
    subdirs: usize,
) -> Group {
    Group { dir, suffix, count, min, max, kind, subdirs }
}

const KB: usize = 1024;
const MB: usize = 1024 * 1024;

/// The four layers, bottom first: a name for the summary, and file groups.
fn layer_plan() -> Vec<(&'static str, Vec<Group>)> {
    use Kind::{Code, Packed, Text};
    vec![
        (
            "base system",
            vec![
                group("etc", ".conf", 150, (100, 4 * KB), Text, 12),
                group("usr/bin", "", 120, (16 * KB, 400 * KB), Code, 1),
                group("usr/lib/x86_64-linux-gnu", ".so", 160, (16 * KB, 600 * KB), Code, 6),
                group("usr/share/doc", ".txt", 1500, (200, 16 * KB), Text, 300),
                group("usr/share/locale", ".mo", 120, (4 * KB, 60 * KB), Packed, 40),
            ],
        ),
        (
            "python runtime",
            vec![
                group("usr/local/bin", "", 3, (2 * MB, 6 * MB), Code, 1),
                group("usr/local/lib", ".so", 5, (MB, 8 * MB), Code, 1),
                group("usr/local/lib/python3.11", ".py", 3800, (400, 60 * KB), Text, 180),
                group("usr/local/lib/python3.11/lib-dynload", ".so", 70, (30 * KB, 1500 * KB), Code, 1),
                group("usr/local/lib/python3.11/ensurepip", ".whl", 3, (MB, 3 * MB), Packed, 1),
            ],
        ),
        (
            "scientific packages",
            vec![
                group("usr/local/lib/python3.11/site-packages", ".py", 6000, (300, 40 * KB), Text, 400),
                group("usr/local/lib/python3.11/site-packages", ".so", 150, (60 * KB, 2 * MB), Code, 60),
                group("usr/local/lib/python3.11/site-packages", ".npz", 40, (20 * KB, 1000 * KB), Packed, 20),
                group("usr/local/lib/R/library", ".R", 1500, (300, 24 * KB), Text, 60),
            ],
        ),
        (
            "analysis, model and data",
            vec![
                group("opt/analysis/src", ".py", 400, (500, 30 * KB), Text, 20),
                group("opt/analysis/lib", ".so", 10, (MB, 8 * MB), Code, 4),
                group("opt/analysis/model", ".bin", 3, (8 * MB, 16 * MB), Packed, 1),
                group("opt/analysis/data", ".parquet", 32, (200 * KB, 2 * MB), Packed, 4),
            ],
        ),
    ]
}

/// SplitMix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the bias is negligible for our n).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform in `min..max`.
    fn log_uniform(&mut self, min: usize, max: usize) -> usize {
        let (lo, hi) = ((min as f64).ln(), (max as f64).ln());
        (lo + (hi - lo) * self.unit()).exp() as usize
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Words of the generated text: keywords and punctuation that code repeats,
/// then pseudo-words. Drawn with a skew, so that a few are very common.
struct Vocabulary {
    words: Vec<Vec<u8>>,
    /// Where the pseudo-words start (file names use only those).
    common: usize,
}

impl Vocabulary {
    fn new(rng: &mut Rng) -> Vocabulary {
        const COMMON: &[&str] = &[
            "the", "self", "=", "(", ")", ":", "return", "if", "def", "in", "for", "None", "import", "from", "not",
            "is", "and", "a", "of", "to", "+", "-", "[", "]", ",", "else", "True", "False", "raise", "value", "data",
            "#", "with", "as", "class", "np", "x", "i", "0", "1",
        ];
        let mut words: Vec<Vec<u8>> = COMMON.iter().map(|w| w.as_bytes().to_vec()).collect();
        while words.len() < 6000 {
            let len = 2 + rng.below(7) + rng.below(6);
            let word = (0..len)
                .map(|_| match rng.below(30) {
                    0 => b'_',
                    _ => b'a' + rng.below(26) as u8,
                })
                .collect();
            words.push(word);
        }
        Vocabulary { words, common: COMMON.len() }
    }

    fn word(&self, rng: &mut Rng) -> &[u8] {
        // u^3 puts most draws on the first words, as in real text.
        let u = rng.unit();
        &self.words[(u * u * u * self.words.len() as f64) as usize]
    }

    /// A pseudo-word for a file or directory name.
    fn name(&self, rng: &mut Rng) -> String {
        let word = &self.words[self.common + rng.below(self.words.len() - self.common)];
        String::from_utf8_lossy(word).into_owned()
    }
}

/// `size` bytes of lines of code. A file uses a few identifiers of its own
/// over and over, and repeats some of its lines, as source files do.
fn text(rng: &mut Rng, vocabulary: &Vocabulary, size: usize) -> Vec<u8> {
    let local: Vec<&[u8]> = (0..48).map(|_| vocabulary.word(rng)).collect();
    let mut out = Vec::with_capacity(size + 128);
    let mut lines: Vec<(usize, usize)> = Vec::new();
    while out.len() < size {
        let start = out.len();
        if lines.len() > 8 && rng.below(5) == 0 {
            let (from, to) = lines[lines.len() - 1 - rng.below(lines.len().min(64))];
            out.extend_from_within(from..to);
        } else {
            let indent = [0, 4, 4, 8, 8, 12][rng.below(6)];
            out.extend(std::iter::repeat_n(b' ', indent));
            for i in 0..3 + rng.below(10) {
                if i > 0 {
                    out.push(b' ');
                }
                let u = rng.unit();
                match rng.below(10) {
                    0..=5 => out.extend_from_slice(local[(u * u * local.len() as f64) as usize]),
                    _ => out.extend_from_slice(vocabulary.word(rng)),
                }
            }
            out.push(b'\n');
        }
        lines.push((start, out.len()));
    }
    out.truncate(size);
    out
}

/// `size` bytes like machine code: random runs, small integers, and repeats
/// of earlier runs.
fn code(rng: &mut Rng, size: usize) -> Vec<u8> {
    const RUN: usize = 64;
    let mut out = vec![0u8; size];
    let mut at = 0;
    while at < size {
        let end = (at + RUN).min(size);
        match rng.below(20) {
            0..=4 => rng.fill(&mut out[at..end]),
            5..=10 => {
                for word in out[at..end].chunks_mut(4) {
                    word[0] = rng.below(256) as u8;
                }
            }
            _ if at >= RUN => {
                let back = RUN * (1 + rng.below((at / RUN).min(400)));
                out.copy_within(at - back..end - back, at);
            }
            _ => {}
        }
        at = end;
    }
    out
}

/// `size` random bytes.
fn packed(rng: &mut Rng, size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size];
    rng.fill(&mut out);
    out
}

/// The entries of one layer: every directory first, then the files.
fn layer_entries(rng: &mut Rng, vocabulary: &Vocabulary, groups: &[Group]) -> Vec<Entry> {
    let mut dirs = BTreeSet::new();
    let mut files = Vec::new();
    for g in groups {
        let packages: Vec<String> = (0..g.subdirs)
            .map(|i| match g.subdirs {
                1 => g.dir.to_owned(),
                _ => format!("{}/{}{i}", g.dir, vocabulary.name(rng)),
            })
            .collect();
        for i in 0..g.count {
            let dir = &packages[rng.below(packages.len())];
            let name = vocabulary.name(rng);
            let path = format!("{dir}/{name}_{i}{}", g.suffix);
            let size = rng.log_uniform(g.min, g.max);
            let (data, mode) = match g.kind {
                Kind::Text => (text(rng, vocabulary, size), 0o644),
                Kind::Code => (code(rng, size), 0o755),
                Kind::Packed => (packed(rng, size), 0o644),
            };
            files.push(Entry::file_mode(&path, data, mode));
            // Shared libraries come with their soname links.
            if g.suffix == ".so" {
                files.push(Entry::symlink(&format!("{path}.1"), &format!("{name}_{i}{}", g.suffix)));
            }
        }
        for dir in &packages {
            let mut prefix = String::new();
            for part in dir.split('/') {
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
                dirs.insert(prefix.clone());
            }
        }
    }
    let mut entries: Vec<Entry> = dirs.iter().map(|d| Entry::dir(d)).collect();
    entries.extend(files);
    entries
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 2), flate2::Compression::default());
    encoder.write_all(data).expect("gzip to memory");
    encoder.finish().expect("gzip to memory")
}

/// Builds the image: plain tar layers from [`ImageSpec`] (their digests are
/// the diff_ids), then each compressed with gzip level 6 and the manifest
/// rewritten to name the gzip blobs.
fn build_image() -> ces_testkit::BuiltImage {
    let mut rng = Rng::new(SEED);
    let vocabulary = Vocabulary::new(&mut rng);
    let mut names = Vec::new();
    let mut layers = Vec::new();
    for (name, groups) in layer_plan() {
        let entries = layer_entries(&mut rng, &vocabulary, &groups);
        names.push((name, entries.iter().filter(|e| matches!(e, Entry::File { .. })).count()));
        layers.push(Layer::new(entries).compressed(Compression::None));
    }
    let spec = ImageSpec::new(layers)
        .env(&["PATH=/opt/analysis/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
        .cmd(&["/opt/analysis/bin/run"])
        .label("org.opencontainers.image.source", "https://github.com/ces-tre/bench-analysis")
        .label("org.opencontainers.image.version", TAG);
    let mut image = spec.build();
    drop(spec);

    let tars: Vec<(String, Vec<u8>)> = image.blobs.split_off(1);
    let compressed: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let handles: Vec<_> = tars.iter().map(|(_, tar)| scope.spawn(|| gzip(tar))).collect();
        handles.into_iter().map(|h| h.join().expect("gzip thread")).collect()
    });
    let mut manifest: serde_json::Value = serde_json::from_slice(&image.manifest).expect("manifest JSON");
    image.layer_digests.clear();
    for (i, ((_, tar), blob)) in tars.iter().zip(compressed).enumerate() {
        let digest = sha256_digest(&blob);
        let descriptor = &mut manifest["layers"][i];
        descriptor["mediaType"] = Compression::Gzip.oci_media_type().into();
        descriptor["digest"] = digest.clone().into();
        descriptor["size"] = blob.len().into();
        eprintln!(
            "layer {}: {} ({} files): {:.1} MB uncompressed, {:.1} MB gzip",
            i + 1,
            names[i].0,
            names[i].1,
            tar.len() as f64 / 1e6,
            blob.len() as f64 / 1e6
        );
        image.layer_digests.push(digest.clone());
        image.blobs.push((digest, blob));
    }
    image.manifest = serde_json::to_vec_pretty(&manifest).expect("manifest JSON");
    image.digest = sha256_digest(&image.manifest);
    image
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config_out, store_root] = args.as_slice() else {
        eprintln!("usage: ces-bench-registry CONFIG_OUT STORE_ROOT");
        std::process::exit(2);
    };
    let started = Instant::now();
    let registry = Registry::start(AuthMode::Anonymous);
    let image = build_image();
    let total: usize = image.blobs.iter().skip(1).map(|(_, blob)| blob.len()).sum();
    eprintln!(
        "image: {} gzip layers, {:.1} MB to download, built in {:.1}s",
        image.layer_digests.len(),
        total as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    registry.push(&image, REPOSITORY, TAG);
    drop(image);
    let host = registry.host();
    let config = format!(
        "# Written by ces-bench-registry for bench/pull.\n[registries]\nallowed = [\"{host}\"]\ninsecure = [\"{host}\"]\n\n[storage]\nroot = {:?}\n",
        PathBuf::from(store_root).display().to_string()
    );
    std::fs::write(config_out, config).unwrap_or_else(|e| panic!("cannot write {config_out}: {e}"));
    println!("{host}/{REPOSITORY}:{TAG}");
    // Serve until the caller closes our stdin (or exits).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}
