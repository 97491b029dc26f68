//! The rules: each with a stable code, a severity and a one-line fix. Rules
//! about what the image is at run time (directories, user, offline models,
//! files hidden by mounts) look at the final stage and the stages it builds
//! on; rules about how it is built look at every stage.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::context::BuildContext;
use crate::deps;
use crate::image::{self, Installed, Step, Via};
use crate::parse::{Arguments, Dockerfile, Instruction, unquote};
use crate::stages::{Stage, chain_of};

/// How much a finding matters. Ordered: `Info < Warning < Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; the image works.
    Info,
    /// Likely to cause trouble in a TRE, or bad practice.
    Warning,
    /// Will not work, or puts data at risk, in a TRE.
    Error,
}

impl Severity {
    /// The name used on the command line and in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A severity name that is not `error`, `warning` or `info`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown severity {0:?} (expected error, warning or info)")]
pub struct UnknownSeverity(pub String);

impl FromStr for Severity {
    type Err = UnknownSeverity;

    fn from_str(s: &str) -> Result<Severity, UnknownSeverity> {
        match s.to_ascii_lowercase().as_str() {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "error" => Ok(Severity::Error),
            _ => Err(UnknownSeverity(s.to_owned())),
        }
    }
}

/// A rule's fixed description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The stable code (`CES001`).
    pub code: &'static str,
    /// The severity of its findings.
    pub severity: Severity,
    /// What it checks, in one line.
    pub summary: &'static str,
    /// How to fix a finding, in one line.
    pub fix: &'static str,
}

/// Every rule, in code order.
pub const RULES: &[Rule] = &[
    Rule {
        code: "CES001",
        severity: Severity::Warning,
        summary: "base image does not name its registry",
        fix: "write the registry in full, e.g. FROM docker.io/library/python:3.12-slim",
    },
    Rule {
        code: "CES002",
        severity: Severity::Warning,
        summary: "base image is not pinned by digest",
        fix: "pin the base: FROM registry/name:tag@sha256:<digest> (the TRE rebuilds the same image)",
    },
    Rule {
        code: "CES003",
        severity: Severity::Warning,
        summary: "base image uses the latest tag or no tag",
        fix: "name a version tag, e.g. :3.12-slim, and pin its digest",
    },
    Rule {
        code: "CES004",
        severity: Severity::Warning,
        summary: "final stage does not create /safe_data, /safe_outputs and /scratch",
        fix: "add RUN mkdir -p /safe_data /safe_outputs /scratch to the final stage",
    },
    Rule {
        code: "CES005",
        severity: Severity::Error,
        summary: "files copied into /safe_data, /safe_outputs or /scratch are hidden by the TRE's mounts",
        fix: "copy code and assets elsewhere (e.g. /app); the TRE mounts project data and outputs over these directories",
    },
    Rule {
        code: "CES006",
        severity: Severity::Warning,
        summary: "ADD used where COPY does",
        fix: "use COPY: ADD only differs for URLs and archives, which it fetches or unpacks",
    },
    Rule {
        code: "CES007",
        severity: Severity::Warning,
        summary: "ADD downloads a URL without a checksum",
        fix: "add --checksum=sha256:<digest>, or download and verify in a RUN step",
    },
    Rule {
        code: "CES008",
        severity: Severity::Error,
        summary: "data files copied into the image",
        fix: "keep data out of images (list it in .dockerignore, or copy only what the image needs): the TRE provides project data read-only under /safe_data",
    },
    Rule {
        code: "CES009",
        severity: Severity::Warning,
        summary: "final stage runs as root",
        fix: "create a user and end with USER <name or uid> (not root or 0)",
    },
    Rule {
        code: "CES010",
        severity: Severity::Info,
        summary: "consecutive RUN instructions",
        fix: "join them with && into one RUN (one layer, and cleanup in the same step)",
    },
    Rule {
        code: "CES011",
        severity: Severity::Warning,
        summary: "apt-get install without removing /var/lib/apt/lists in the same RUN",
        fix: "end the RUN with && rm -rf /var/lib/apt/lists/*",
    },
    Rule {
        code: "CES012",
        severity: Severity::Info,
        summary: "apt-get install without --no-install-recommends",
        fix: "add --no-install-recommends (a smaller image), and install what you need by name",
    },
    Rule {
        code: "CES013",
        severity: Severity::Warning,
        summary: "pip install without --no-cache-dir",
        fix: "add --no-cache-dir (or ENV PIP_NO_CACHE_DIR=1)",
    },
    Rule {
        code: "CES014",
        severity: Severity::Warning,
        summary: "Hugging Face libraries installed without the offline environment",
        fix: "add ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 after caching the models in the image",
    },
    Rule {
        code: "CES015",
        severity: Severity::Warning,
        summary: "model libraries installed without a build step that caches the model",
        fix: "download the model at build time (e.g. RUN python -c \"...snapshot_download(...)\" or python -m spacy download ...)",
    },
    Rule {
        code: "CES016",
        severity: Severity::Error,
        summary: "platform is not linux/amd64",
        fix: "build for the TRE's platform: FROM --platform=linux/amd64 ... (or drop --platform)",
    },
    Rule {
        code: "CES017",
        severity: Severity::Warning,
        summary: "the container downloads a model or data when it starts",
        fix: "download it at build time and load it from the image (with HF_HUB_OFFLINE=1 for Hugging Face); `ces test IMAGE` runs the image without network and shows what it tried",
    },
    Rule {
        code: "CES018",
        severity: Severity::Warning,
        summary: "a RUN runs what it downloads without checking it (curl | sh)",
        fix: "download to a file, check it (echo \"<sha256>  file\" | sha256sum -c -), then run it; or install a package",
    },
    Rule {
        code: "CES019",
        severity: Severity::Info,
        summary: "model weights copied into the image from the build context",
        fix: "fine for a published model; weights trained on project data are project data, which stays in the TRE",
    },
    Rule {
        code: "CES020",
        severity: Severity::Warning,
        summary: "a password, token or key set by ENV or ARG",
        fix: "pass secrets with RUN --mount=type=secret,id=... (BuildKit); an ENV or ARG value stays in the image and its history, which leave with it",
    },
];

/// The rule with this code.
pub fn rule(code: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.code == code)
}

/// Something the lint could not check, and why (not a finding: it does
/// not change the exit status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    /// The line (1-based) of the instruction concerned.
    pub line: usize,
    /// What was not checked.
    pub message: String,
}

/// What a lint found, and what it could not check.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The findings, by line then code.
    pub findings: Vec<Finding>,
    /// What was not checked, by line.
    pub notes: Vec<Note>,
}

/// One problem found, on one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The line (1-based) of the instruction concerned.
    pub line: usize,
    /// The rule's code.
    pub code: &'static str,
    /// The rule's severity.
    pub severity: Severity,
    /// What is wrong here.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

/// The TRE's directories, mounted over whatever the image has there.
const TRE_DIRS: [&str; 3] = ["/safe_data", "/safe_outputs", "/scratch"];

/// Extensions of data files that do not belong in an image (also with a
/// compression suffix: `x.csv.gz`).
const DATA_EXTENSIONS: &[&str] = &[
    "csv", "tsv", "parquet", "sav", "zsav", "por", "dta", "sas7bdat", "xpt", "xlsx", "xlsm", "xls", "ods", "rds",
    "rdata", "rda", "feather", "arrow", "nii", "dcm", "h5", "hdf5", "mat", "sqlite", "sqlite3", "pkl", "pickle",
    "joblib", "npy", "npz",
];

/// Compression suffixes a data file may have.
const COMPRESSED: &[&str] = &["gz", "bz2", "xz", "zst", "zip"];

/// Extensions of model weights.
const MODEL_EXTENSIONS: &[&str] = &["pt", "pth", "safetensors", "ckpt", "onnx", "gguf", "keras"];

/// Archives that `ADD` unpacks (where ADD is the right instruction).
const ARCHIVE_EXTENSIONS: &[&str] =
    &["tar", "tar.gz", "tgz", "tar.bz2", "tbz2", "tar.xz", "txz", "tar.zst", "tar.lz4", "gz", "bz2", "xz"];

/// Libraries that fetch models from the Hugging Face Hub.
const HF_LIBRARIES: &[&str] =
    &["transformers", "huggingface-hub", "sentence-transformers", "diffusers", "timm", "datasets", "optimum", "peft"];

/// Variables that place the Hugging Face Hub's cache.
const HUB_CACHE_VARIABLES: &[&str] =
    &["HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "SENTENCE_TRANSFORMERS_HOME"];

/// Other libraries that download models or data on first use.
const OTHER_MODEL_LIBRARIES: &[&str] = &[
    "spacy",
    "easyocr",
    "stanza",
    "flair",
    "nltk",
    "openai-whisper",
    "vllm",
    "ollama",
    "ultralytics",
    "bertopic",
    "keybert",
];

/// What in a build step shows it downloads a model into the image.
const CACHE_STEPS: &[&str] = &[
    "snapshot_download",
    "hf_hub_download",
    "from_pretrained",
    "huggingface-cli download",
    "hf download",
    "sentencetransformer(",
    "pipeline(",
    "spacy download",
    "en_core_",
    "easyocr.reader",
    "torch.hub.load",
    "nltk.download",
    "stanza.download",
    "whisper.load_model",
];

/// Runs every rule; `context` is the build context, when there is one to
/// read.
pub fn check(file: &Dockerfile, stages: &[Stage<'_>], target: usize, context: Option<&BuildContext>) -> Report {
    let chain = chain_of(stages, Some(target));
    let globals = crate::stages::global_args(file);
    let needed = crate::stages::needed(stages, target, &globals);
    let steps = image::steps(&chain);
    let copies = image::copies(&steps);
    // ENV PIP_NO_CACHE_DIR anywhere turns pip's cache off for every RUN.
    let pip_cache_off = env_values(file.instructions.iter()).iter().any(|(k, _)| k == "PIP_NO_CACHE_DIR");
    let mut out = Vec::new();
    let mut unread = Unread::default();
    for stage in stages.iter().zip(&needed).filter_map(|(s, n)| n.then_some(s)) {
        base_image(stage, &mut out);
        platform(stage, &mut out);
        // Layer hygiene matters only in the layers the image keeps: a
        // builder stage's are thrown away.
        let kept = chain.iter().any(|c| std::ptr::eq(*c, stage));
        if kept {
            consecutive_runs(stage, &mut out);
        }
        for instruction in stage.instructions {
            match instruction.keyword.as_str() {
                "ADD" => add(instruction, &mut out),
                "RUN" if kept => packages(instruction, pip_cache_off, &mut out),
                _ => {}
            }
            if instruction.keyword == "RUN" {
                unverified_download(instruction, &mut out);
            }
            if matches!(instruction.keyword.as_str(), "ADD" | "COPY") {
                copied_files(instruction, stages, &globals, context, &mut out, &mut unread);
            }
        }
    }
    tre_directories(&chain, &steps, &mut out);
    user(&chain, &mut out);
    let mut notes = Vec::new();
    let installed = installed(&chain, &steps, &copies, context, &mut notes, &mut unread);
    let offline = models(stages, &needed, &steps, &copies, context, &installed, &mut out);
    start_downloads(&steps, &copies, context, &installed, offline, &mut out, &mut notes, &mut unread);
    secrets(&steps, &mut out);
    notes.extend(unread.notes());
    for note in &mut notes {
        note.message = printable(&note.message);
    }
    out.sort_by(|a, b| (a.line, a.code).cmp(&(b.line, b.code)));
    notes.sort_by_key(|n| n.line);
    Report { findings: out, notes }
}

/// What could not be read because no build context was given, by kind, as
/// the first line concerned.
#[derive(Default)]
struct Unread {
    copies: Option<usize>,
    requirements: Option<usize>,
    scripts: Option<usize>,
}

impl Unread {
    fn notes(&self) -> Vec<Note> {
        let mut notes = Vec::new();
        let mut note = |line: Option<usize>, what: &str| {
            if let Some(line) = line {
                notes.push(Note {
                    line,
                    message: format!("no build context was read (give --context DIR): {what} not checked"),
                });
            }
        };
        note(self.copies, "the files this copies were");
        note(self.requirements, "the packages this requirement file installs were");
        note(self.scripts, "the scripts the container starts were");
        notes
    }
}

fn finding(out: &mut Vec<Finding>, code: &'static str, line: usize, message: String) {
    let rule = rule(code).unwrap_or(&RULES[0]);
    let message = printable(&message);
    out.push(Finding { line, code, severity: rule.severity, message, fix: rule.fix.to_owned() });
}

/// A base image reference's parts.
pub(crate) struct BaseRef<'a> {
    pub(crate) registry: Option<&'a str>,
    pub(crate) repository: &'a str,
    pub(crate) tag: Option<&'a str>,
    pub(crate) digest: Option<&'a str>,
}

pub(crate) fn base_ref(image: &str) -> BaseRef<'_> {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let registry = name
        .split_once('/')
        .map(|(first, _)| first)
        .filter(|first| first.contains('.') || first.contains(':') || *first == "localhost");
    let path = registry.map_or(name, |r| &name[r.len() + 1..]);
    let (repository, tag) = match path.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
        _ => (path, None),
    };
    BaseRef { registry, repository, tag, digest }
}

fn base_image(stage: &Stage<'_>, out: &mut Vec<Finding>) {
    let line = stage.from.line;
    // `FROM base:$TAG` with no default for TAG: the build decides the base,
    // and no digest can be pinned here.
    if stage.base.is_none() && stage.parent.is_none() && stage.written.contains('$') {
        let written = &stage.written;
        finding(
            out,
            "CES002",
            line,
            format!("base image {written} depends on a build argument with no default: it cannot be pinned by digest"),
        );
        return;
    }
    let Some(image) = stage.external_base() else { return };
    image_rules(&format!("base image {}", shown(image)), image, line, out);
}

/// A message as it is printed: names from the Dockerfile and its context
/// are shown, never obeyed, so control characters (a terminal's escapes) are
/// written escaped, and a message is cut at 400 characters.
fn printable(message: &str) -> String {
    let mut out = String::new();
    for (n, c) in message.chars().enumerate() {
        if n == 400 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// An image name for a message: a digest shortened to 12 digits, and at
/// most 100 characters in all.
fn shown(image: &str) -> String {
    let short = match image.split_once("@sha256:") {
        Some((name, digest)) if digest.chars().count() > 12 => {
            format!("{name}@sha256:{}…", digest.chars().take(12).collect::<String>())
        }
        _ => image.to_owned(),
    };
    if short.chars().count() > 100 { format!("{}…", short.chars().take(99).collect::<String>()) } else { short }
}

/// CES001 to CES003 for an image a build starts from or copies from
/// (`what` names it in the message). A digest pins it, whatever the
/// registry: the name says where it is, not what it is.
fn image_rules(what: &str, image: &str, line: usize, out: &mut Vec<Finding>) {
    let parts = base_ref(image);
    if parts.digest.is_some() {
        return;
    }
    if parts.registry.is_none() {
        finding(out, "CES001", line, format!("{what} does not name its registry (docker.io is assumed)"));
    }
    finding(out, "CES002", line, format!("{what} is not pinned by digest"));
    match parts.tag {
        Some("latest") => finding(out, "CES003", line, format!("{what} uses the latest tag")),
        None => finding(out, "CES003", line, format!("{what} has no tag (latest is assumed)")),
        Some(_) => {}
    }
}

fn platform(stage: &Stage<'_>, out: &mut Vec<Finding>) {
    let line = stage.from.line;
    if let Some(platform) = stage.platform.as_deref().filter(|p| !is_amd64(p)) {
        finding(out, "CES016", line, format!("FROM --platform={platform}: the TRE runs linux/amd64"));
    }
    let foreign = ["arm64v8/", "arm32v7/", "arm32v6/", "arm32v5/", "ppc64le/", "s390x/", "i386/", "riscv64/"];
    if let Some(image) = stage.external_base() {
        let repository = base_ref(image).repository;
        let repository = repository.strip_prefix("library/").unwrap_or(repository);
        if let Some(arch) = foreign.iter().find(|f| repository.starts_with(**f)) {
            let arch = arch.trim_end_matches('/');
            let image = shown(image);
            finding(out, "CES016", line, format!("base image {image} is built for {arch}: the TRE runs linux/amd64"));
        }
    }
}

fn is_amd64(platform: &str) -> bool {
    let platform = platform.to_ascii_lowercase();
    platform == "linux/amd64" || platform.starts_with("linux/amd64/") || platform == "linux/x86_64"
}

/// CES010, only where joining is plainly better: two `RUN`s of one simple
/// command each. RUNs that chain commands were split on purpose (a layer
/// to cache), and RUNs with flags (mounts, network) cannot simply be joined.
fn consecutive_runs(stage: &Stage<'_>, out: &mut Vec<Finding>) {
    let short = |run: &Instruction| {
        run.keyword == "RUN" && run.flags.is_empty() && run.heredocs.is_empty() && commands(&run.script()).len() <= 2
    };
    // Related: the same program (`apt-get`, `pip`), an update before its
    // install, or a clean-up after: what the checklists say to group.
    let utilities =
        ["rm", "echo", "mkdir", "cd", "chmod", "chown", "ln", "cp", "mv", "true", ":", "set", "export", "test", "["];
    // A command's program; pip by any of its names (`pip3`, `python -m pip`).
    let name = |c: &Vec<String>| -> Option<String> {
        if c.iter().any(|w| is_pip(w)) {
            return Some("pip".to_owned());
        }
        command_program(c).map(|p| program(p).to_owned())
    };
    let related = |first: &Instruction, second: &Instruction| {
        let (ca, cb) = (commands(&first.script()), commands(&second.script()));
        let a: Vec<String> = ca.iter().filter_map(name).collect();
        let b: Vec<String> = cb.iter().filter_map(name).collect();
        // `RUN ln -s a x` then `RUN ln -s b y`: one program alone in each.
        let same_alone = a.len() == 1 && b.len() == 1 && a[0] == b[0];
        let shared = a.iter().filter(|p| !utilities.contains(&p.as_str())).any(|p| b.contains(p));
        let updates = ca.iter().any(|c| is_apt_update(c) || has(c, "makecache"));
        let cleans = b.first().is_some_and(|p| p == "rm") || cb.iter().any(|c| has(c, "clean"));
        same_alone || shared || updates || cleans
    };
    for pair in stage.instructions.windows(2) {
        let [first, second] = pair else { continue };
        if short(first) && short(second) && related(first, second) {
            finding(out, "CES010", second.line, format!("RUN follows the RUN on line {}", first.line));
        }
    }
}

/// The `ADD` rules: a URL without a checksum, or plain files that COPY does.
fn add(add: &Instruction, out: &mut Vec<Finding>) {
    let words = add.words();
    let Some((_, sources)) = words.split_last() else { return };
    for source in sources.iter().filter(|s| !s.starts_with("<<")) {
        let lower = source.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("git@") {
            if add.flag("checksum").is_none() && !lower.ends_with(".git") && !lower.contains(".git#") {
                finding(
                    out,
                    "CES007",
                    add.line,
                    format!("ADD {source} downloads at build time and does not verify it"),
                );
            }
        } else if !has_extension(&lower, ARCHIVE_EXTENSIONS) {
            finding(out, "CES006", add.line, format!("ADD {source}: neither a URL nor an archive, so COPY does"));
        }
    }
}

/// Whether `path` names a data file by its extension (`csv`, `parquet`,
/// `sav`, ..., also compressed: `x.csv.gz`).
pub fn is_data_file(path: &str) -> bool {
    let lower = path.trim_end_matches('/').to_ascii_lowercase();
    // Lists of what to install (`packages.csv`, `r-requirements.tsv`) are
    // build input, not data.
    let name = lower.rsplit('/').next().unwrap_or(&lower);
    if is_install_list(name) {
        return false;
    }
    let stem = COMPRESSED.iter().find_map(|c| lower.strip_suffix(c).and_then(|s| s.strip_suffix('.')));
    has_extension(&lower, DATA_EXTENSIONS) || stem.is_some_and(|s| has_extension(s, DATA_EXTENSIONS))
}

/// Whether a file name is a list of what to install: a `.csv`, `.tsv` or
/// `.txt` whose name is only such words (`packages.csv`,
/// `r-requirements.tsv`, `cran_packages.csv`; not `requirements_survey.csv`).
fn is_install_list(name: &str) -> bool {
    let Some((stem, extension)) = name.rsplit_once('.') else { return false };
    let words = [
        "packages",
        "package",
        "requirements",
        "dependencies",
        "deps",
        "pkgs",
        "list",
        "install",
        "r",
        "py",
        "python",
        "cran",
        "bioc",
        "bioconductor",
        "github",
        "conda",
        "pip",
        "apt",
        "system",
    ];
    let parts: Vec<&str> = stem.split(['-', '_', '.']).collect();
    ["csv", "tsv", "txt"].contains(&extension)
        && parts.iter().all(|p| words.contains(p))
        && parts.iter().any(|p| ["packages", "package", "requirements", "dependencies", "deps", "pkgs"].contains(p))
}

/// Whether `path` names model weights by their extension.
fn is_model_file(path: &str) -> bool {
    has_extension(path, MODEL_EXTENSIONS)
}

fn has_extension(path: &str, extensions: &[&str]) -> bool {
    let path = path.trim_end_matches('/').to_ascii_lowercase();
    extensions.iter().any(|ext| path.strip_suffix(ext).is_some_and(|stem| stem.ends_with('.')))
}

/// Up to three names, then how many more.
fn some_of(names: &[&str]) -> String {
    let shown: Vec<&str> = names.iter().take(3).copied().collect();
    match names.len() {
        n if n > 3 => format!("{} (and {} more)", shown.join(", "), n - 3),
        _ => shown.join(", "),
    }
}

/// CES008 and CES019 for what a `COPY`/`ADD` copies: its sources by name,
/// and, with a build context, the files under a directory or matched by a
/// wildcard. A `COPY --from` an image (not a stage) is a base image too.
fn copied_files(
    copy: &Instruction,
    stages: &[Stage<'_>],
    globals: &[(String, String)],
    context: Option<&BuildContext>,
    out: &mut Vec<Finding>,
    unread: &mut Unread,
) {
    let words = copy.words();
    let Some((_, sources)) = words.split_last() else { return };
    let keyword = &copy.keyword;
    // `--from=$UV`: the global ARG's default, where it has one.
    let from = copy
        .flag("from")
        .and_then(|f| f.value.as_deref())
        .map(|f| crate::stages::expand(f, globals).unwrap_or_else(|| f.to_owned()));
    let from = from.as_deref();
    if let Some(from) = from.filter(|from| !is_stage(stages, copy.line, from) && !from.contains('$')) {
        let what = format!("COPY --from={} (an image copied from is a base image too)", shown(from));
        image_rules(&what, from, copy.line, out);
    }
    let line = copy.line;
    for source in sources.iter().filter(|s| !s.starts_with("<<")) {
        let lower = source.to_ascii_lowercase();
        if lower.contains("://") || lower.starts_with("git@") {
            continue;
        }
        if is_data_file(source) {
            finding(out, "CES008", line, format!("{keyword} copies data file {source} into the image"));
            continue;
        }
        if from.is_none() && is_model_file(source) {
            finding(out, "CES019", line, format!("{keyword} copies model weights {source} into the image"));
            continue;
        }
        if from.is_some() || has_extension(&lower, ARCHIVE_EXTENSIONS) && keyword == "ADD" {
            continue;
        }
        let Some(context) = context else {
            let whole = source == "." || source.ends_with('/') || source.contains('*') || !source.contains('.');
            if whole {
                unread.copies.get_or_insert(line);
            }
            continue;
        };
        let files = context.sources(source);
        let data: Vec<&str> = files.iter().copied().filter(|f| is_data_file(f)).collect();
        if !data.is_empty() {
            let named = some_of(&data);
            finding(
                out,
                "CES008",
                line,
                format!("{keyword} {source} copies data files from the build context: {named}"),
            );
        }
        let models: Vec<&str> = files.iter().copied().filter(|f| is_model_file(f)).collect();
        if !models.is_empty() {
            let named = some_of(&models);
            finding(
                out,
                "CES019",
                line,
                format!("{keyword} {source} copies model weights from the build context: {named}"),
            );
        }
    }
}

/// Whether `--from=name` names a stage before `line` (by name or index),
/// not an image.
fn is_stage(stages: &[Stage<'_>], line: usize, name: &str) -> bool {
    let before = stages.iter().take_while(|s| s.from.line < line).count();
    crate::stages::stage_named(&stages[..before], name).is_some()
}

/// Commands of a script, split at `&&`, `||`, `;`, `|` and newlines, as words.
pub(crate) fn commands(script: &str) -> Vec<Vec<String>> {
    script
        .replace("&&", "\n")
        .replace("||", "\n")
        .replace([';', '|'], "\n")
        .lines()
        .map(|c| c.split_whitespace().map(unquote).collect::<Vec<_>>())
        .filter(|c| !c.is_empty())
        .collect()
}

pub(crate) fn has(command: &[String], word: &str) -> bool {
    command.iter().any(|w| w == word)
}

fn is_apt_install(command: &[String]) -> bool {
    (has(command, "apt-get") || has(command, "apt")) && has(command, "install")
}

fn is_apt_update(command: &[String]) -> bool {
    (has(command, "apt-get") || has(command, "apt")) && has(command, "update")
}

/// A word's program name: `/opt/conda/bin/pip` is `pip`.
pub(crate) fn program(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// pip by any of its names: `pip`, `pip3`, `pip3.11`, `/opt/conda/bin/pip`,
/// and `python -m pip`.
fn is_pip(word: &str) -> bool {
    let name = program(word);
    name == "pip" || name == "pip3" || name.strip_prefix("pip3.").is_some_and(|v| v.bytes().all(|b| b.is_ascii_digit()))
}

/// A `pip install` (not `uv pip install`, which has a cache of its own).
fn is_pip_install(command: &[String]) -> bool {
    // The program, after any `VAR=value` words.
    let first = command.iter().find(|w| !w.contains('=') || w.starts_with('-'));
    if first.is_some_and(|w| program(w) == "uv") {
        return false;
    }
    command.iter().any(|w| is_pip(w)) && has(command, "install")
}

/// `--no-cache-dir`, or an abbreviation pip takes (`--no-cache`), or the
/// environment variable set on the command.
fn pip_cache_off_here(command: &[String]) -> bool {
    command.iter().any(|w| {
        let option = w.split('=').next().unwrap_or(w);
        (option.len() >= "--no-cache".len() && "--no-cache-dir".starts_with(option))
            || w.starts_with("PIP_NO_CACHE_DIR=")
    })
}

/// pip's cache removed by a command of the same RUN.
fn pip_cache_removed(commands: &[Vec<String>]) -> bool {
    commands.iter().any(|c| {
        (has(c, "rm") && c.iter().any(|w| w.contains(".cache/pip") || w.ends_with(".cache") || w.ends_with(".cache/")))
            || (c.iter().any(|w| is_pip(w)) && has(c, "cache") && (has(c, "purge") || has(c, "remove")))
    })
}

fn cache_mount(run: &Instruction, target: &str) -> bool {
    run.flags.iter().any(|f| {
        f.name == "mount" && f.value.as_deref().is_some_and(|v| v.contains("type=cache") && v.contains(target))
    })
}

/// The apt and pip rules, per RUN.
fn packages(run: &Instruction, pip_cache_off: bool, out: &mut Vec<Finding>) {
    let commands = commands(&run.script());
    if commands.iter().any(|c| is_apt_install(c)) {
        // `rm -rf /var/lib/apt/lists/*`, `rm -rf /var/lib/apt`, or
        // `find /var/lib/apt/lists -type f -delete`.
        let lists = |w: &String| {
            let w = w.trim_end_matches(['/', '*']);
            w.starts_with("/var/lib/apt/lists") || w == "/var/lib/apt" || w == "/var/lib"
        };
        let cleaned =
            commands.iter().any(|c| (has(c, "rm") || has(c, "find") && has(c, "-delete")) && c.iter().any(lists));
        // The lists are this layer's only if this RUN fetched them (an
        // `apt install ./local.deb` alone leaves none).
        let fetched = commands.iter().any(|c| is_apt_update(c));
        if fetched && !cleaned && !cache_mount(run, "/var/lib/apt") {
            finding(out, "CES011", run.line, "apt-get install leaves /var/lib/apt/lists in the layer".to_owned());
        }
        if commands.iter().any(|c| is_apt_install(c) && !has(c, "--no-install-recommends")) {
            finding(out, "CES012", run.line, "apt-get install without --no-install-recommends".to_owned());
        }
    }
    if !pip_cache_off
        && !cache_mount(run, ".cache")
        && !pip_cache_removed(&commands)
        && commands.iter().any(|c| is_pip_install(c) && !pip_cache_off_here(c))
    {
        finding(out, "CES013", run.line, "pip install keeps its download cache in the layer".to_owned());
    }
}

/// The `ENV` settings among these instructions, in order.
pub(crate) fn env_values<'a>(instructions: impl Iterator<Item = &'a Instruction>) -> Vec<(String, String)> {
    let mut values = Vec::new();
    for env in instructions.filter(|i| i.keyword == "ENV") {
        let Arguments::Shell(text) = &env.args else { continue };
        if text.split_whitespace().next().is_some_and(|w| !w.contains('=')) {
            // The old form: ENV NAME value with spaces.
            if let Some((name, value)) = text.split_once(char::is_whitespace) {
                values.push((name.to_owned(), unquote(value.trim())));
            }
            continue;
        }
        for word in text.split_whitespace() {
            if let Some((name, value)) = word.split_once('=') {
                values.push((name.to_owned(), unquote(value)));
            }
        }
    }
    values
}

/// The instructions of the final stage and the stages it builds on, in build order.
fn chain_instructions<'a>(chain: &[&Stage<'a>]) -> Vec<&'a Instruction> {
    chain.iter().rev().flat_map(|s| s.instructions.iter()).collect()
}

fn normalise(path: &str) -> String {
    let path = unquote(path);
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() { "/".to_owned() } else { trimmed.to_owned() }
}

/// `path` made absolute against `workdir`: `.` and `./x` as the shell would.
pub(crate) fn resolve(workdir: &str, path: &str) -> String {
    let path = normalise(path);
    if path.starts_with('/') {
        return path;
    }
    let relative = path.trim_start_matches("./");
    match relative {
        "" | "." => workdir.to_owned(),
        _ => format!("{}/{relative}", workdir.trim_end_matches('/')),
    }
}

fn tre_dir(path: &str) -> Option<&'static str> {
    TRE_DIRS.iter().copied().find(|d| path == *d || path.strip_prefix(d).is_some_and(|rest| rest.starts_with('/')))
}

/// `/{a,b}` as `/a`, `/b` (one brace group, as `mkdir -p /{safe_data,scratch}` has).
fn expand_braces(word: &str) -> Vec<String> {
    match (word.find('{'), word.find('}')) {
        (Some(open), Some(close)) if open < close => word[open + 1..close]
            .split(',')
            .map(|part| format!("{}{part}{}", &word[..open], &word[close + 1..]))
            .collect(),
        _ => vec![word.to_owned()],
    }
}

/// CES004 (the directories are not created) and CES005 (files copied there).
fn tre_directories(chain: &[&Stage<'_>], steps: &[Step<'_>], out: &mut Vec<Finding>) {
    let Some(last) = chain.first() else { return };
    let mut created: Vec<&str> = Vec::new();
    for step in steps {
        let instruction = step.instruction;
        match instruction.keyword.as_str() {
            "WORKDIR" => {
                created.extend(tre_dir(&step.workdir));
            }
            "RUN" => {
                for command in commands(&instruction.script()) {
                    if has(&command, "mkdir") || has(&command, "install") {
                        let words = command.iter().flat_map(|w| expand_braces(w));
                        created.extend(words.filter_map(|w| TRE_DIRS.iter().copied().find(|d| normalise(&w) == *d)));
                    }
                }
            }
            "COPY" | "ADD" => {
                let words = instruction.words();
                let Some(dest) = words.last() else { continue };
                let dest = resolve(&step.workdir, &step.expand(dest));
                if let Some(dir) = tre_dir(&dest) {
                    finding(
                        out,
                        "CES005",
                        instruction.line,
                        format!(
                            "{} into {dest}: {dir} is mounted over at run time, so these files are hidden",
                            instruction.keyword
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    let missing: Vec<&str> = TRE_DIRS.iter().copied().filter(|d| !created.contains(d)).collect();
    if !missing.is_empty() {
        finding(out, "CES004", last.from.line, format!("the final stage does not create {}", missing.join(", ")));
    }
}

/// Base images known to set a user who is not root, by repository (`*`
/// matches any text), and the tag text they need, if any.
const NON_ROOT_BASES: &[(&str, &str)] = &[
    ("jupyter/*", ""),
    ("pangeo/*", ""),
    ("rocker/binder", ""),
    ("mambaorg/micromamba", ""),
    ("bitnami/*", ""),
    ("distroless/*", "nonroot"),
    ("chainguard/*", ""),
];

/// Whether the base image is known to run as a user who is not root.
fn known_non_root(image: &str) -> bool {
    let parts = base_ref(image);
    let repository = parts.repository.to_ascii_lowercase();
    let tag = parts.tag.unwrap_or("latest");
    NON_ROOT_BASES.iter().any(|(pattern, tag_has)| {
        crate::context::wildcard_matches(pattern, &repository) && tag.contains(tag_has) && !tag.contains("-dev")
    })
}

/// CES009. With no `USER`, the base image's user applies: known non-root
/// bases pass; for others the finding says what is not knowable here.
fn user(chain: &[&Stage<'_>], out: &mut Vec<Finding>) {
    let Some(last) = chain.first() else { return };
    match chain_instructions(chain).into_iter().rev().find(|i| i.keyword == "USER") {
        None => {
            let root = chain.last().unwrap_or(last);
            let message = match (root.external_base(), root.base.as_deref()) {
                (Some(base), _) if known_non_root(base) => return,
                (Some(base), _) => format!(
                    "the final stage sets no USER: {}'s user applies, which is root unless that image sets one (`ces test` shows it)",
                    shown(base)
                ),
                (None, Some(base)) if base.eq_ignore_ascii_case("scratch") => {
                    "the final stage sets no USER, so it runs as root".to_owned()
                }
                _ => "the final stage sets no USER: the base image's user applies, which is root unless it sets one"
                    .to_owned(),
            };
            finding(out, "CES009", last.from.line, message);
        }
        Some(user) => {
            let words = user.words();
            let name = words.first().map(|w| w.split(':').next().unwrap_or(w)).unwrap_or_default();
            if name == "root" || name == "0" {
                finding(out, "CES009", user.line, format!("USER {name}: the final stage runs as root"));
            }
        }
    }
}

/// The packages the final image has that matter to the model rules: from
/// its base image, from install commands, and from the requirement files
/// those commands (or copies) name in the build context.
fn installed(
    chain: &[&Stage<'_>],
    steps: &[Step<'_>],
    copies: &[image::Copy],
    context: Option<&BuildContext>,
    notes: &mut Vec<Note>,
    unread: &mut Unread,
) -> Vec<Installed> {
    let mut installed = Vec::new();
    if let Some(root) = chain.last()
        && let Some(base) = root.external_base()
    {
        for package in image::base_packages(base_ref(base).repository) {
            let via = Via::Base(base.to_owned());
            installed.push(Installed { line: root.from.line, package: (*package).to_owned(), via });
        }
    }
    // The Hub's cache set for the image: it is meant to use the Hub.
    for step in steps.iter().filter(|s| s.instruction.keyword == "ENV") {
        for (name, _) in env_values(std::iter::once(step.instruction)) {
            if HUB_CACHE_VARIABLES.contains(&name.as_str()) {
                let via = Via::Env(name);
                installed.push(Installed { line: step.instruction.line, package: "huggingface-hub".to_owned(), via });
            }
        }
    }
    // Requirement files: those install commands name, then those copied.
    let mut files: Vec<(usize, String, String, deps::Kind)> = Vec::new();
    for step in steps.iter().filter(|s| s.instruction.keyword == "RUN") {
        let line = step.instruction.line;
        // `cd /app && pip install -r requirements.txt`: the RUN's own cd.
        let mut workdir = step.workdir.clone();
        for command in commands(&step.instruction.script()) {
            if command.first().is_some_and(|w| w == "cd") {
                if let Some(dir) = command.get(1) {
                    workdir = resolve(&workdir, &step.expand(dir));
                }
                continue;
            }
            for package in image::command_packages(&command) {
                installed.push(Installed { line, package, via: Via::Command });
            }
            for (written, kind) in image::command_files(&command) {
                let path = resolve(&workdir, &step.expand(&written));
                if let Some((origin, _)) = image::origin(copies, context, &path) {
                    files.push((line, written, origin, kind));
                }
            }
        }
    }
    for copy in copies {
        for (source, _) in &copy.sources {
            if let Some(kind) = deps::Kind::of(source)
                && !source.contains('*')
            {
                files.push((copy.line, source.clone(), source.clone(), kind));
            }
        }
    }
    let mut seen = Vec::new();
    for (line, written, origin, kind) in files {
        if seen.contains(&origin) {
            continue;
        }
        seen.push(origin.clone());
        let Some(context) = context else {
            unread.requirements.get_or_insert(line);
            continue;
        };
        match image::file_packages(context, &origin, kind) {
            Some(packages) => installed.extend(packages.into_iter().map(|package| Installed {
                line,
                package,
                via: Via::File(origin.clone()),
            })),
            // A project without a pyproject.toml (setup.py) is not a gap.
            None if kind == deps::Kind::Pyproject => {}
            None => notes.push(Note {
                line,
                message: missing(context, &origin, &written, "the packages it installs were not checked"),
            }),
        }
    }
    // Last, as the least direct evidence: a RUN that imports a Hub library
    // (`python -c "from sentence_transformers import ..."`) shows that the
    // image has it, however it was installed.
    for step in steps.iter().filter(|s| s.instruction.keyword == "RUN") {
        for module in imported(&step.instruction.script()) {
            if HF_MODULES.contains(&module.as_str()) {
                let package = deps::normalise(&module);
                installed.push(Installed { line: step.instruction.line, package, via: Via::Import });
            }
        }
    }
    installed
}

/// The top-level modules Python statements in `script` import: `import a, b.c
/// as d` (a, b) and `from a.b import c` (a); not `from torchvision import
/// datasets`, whose module is torchvision.
fn imported(script: &str) -> Vec<String> {
    let mut modules = Vec::new();
    for statement in script.split(['\n', ';', '"', '\'']) {
        let statement = statement.trim();
        let top = |name: &str| name.trim().split(['.', ' ']).next().unwrap_or_default().to_owned();
        if let Some(names) = statement.strip_prefix("import ") {
            modules.extend(names.split(',').map(top));
        } else if let Some(rest) = statement.strip_prefix("from ") {
            modules.push(top(rest));
        }
    }
    modules
}

/// The note for a file of the context that could not be read.
fn missing(context: &BuildContext, path: &str, written: &str, what: &str) -> String {
    if context.has(path) {
        return format!("{written} could not be read (a permission, or larger than 1 MiB): {what}");
    }
    let ignored = context.ignore_file().map(|f| format!(" (or {f} leaves it out)")).unwrap_or_default();
    format!("{written} is not in the build context{ignored}: {what}")
}

/// How a package arrives, for messages.
fn arrives(installed: &Installed) -> String {
    match &installed.via {
        Via::Command => format!("{} is installed", installed.package),
        Via::File(file) => format!("{} is installed (from {file})", installed.package),
        Via::Base(base) => format!("base image {} has {}", shown(base), installed.package),
        Via::Import => format!("{} is in the image (a RUN imports it)", installed.package),
        Via::Env(name) => format!("ENV {name} shows the image uses the Hugging Face Hub"),
    }
}

/// Whether the Hugging Face offline environment is set.
fn hf_offline(steps: &[Step<'_>]) -> bool {
    env_values(steps.iter().map(|s| s.instruction)).iter().any(|(k, v)| {
        // huggingface_hub reads the value without regard to case.
        (k == "HF_HUB_OFFLINE" || k == "TRANSFORMERS_OFFLINE")
            && ["1", "true", "yes", "on"].contains(&v.to_ascii_lowercase().as_str())
    })
}

/// Whether a build step caches a model: a `RUN` (of a stage the build
/// makes) that downloads one, or runs a script from the build context that
/// does, or a copy of a model directory.
fn model_cached(
    stages: &[Stage<'_>],
    needed: &[bool],
    steps: &[Step<'_>],
    copies: &[image::Copy],
    context: Option<&BuildContext>,
) -> bool {
    let caches = |text: &str| {
        let text = text.to_ascii_lowercase();
        CACHE_STEPS.iter().any(|step| text.contains(step))
    };
    let built = stages.iter().zip(needed).filter(|(_, n)| **n).flat_map(|(s, _)| s.instructions.iter());
    let by_instruction = built.clone().any(|i| match i.keyword.as_str() {
        "RUN" => caches(&i.script()),
        "COPY" | "ADD" => {
            // A model directory or cache, not `models.py`.
            let code = [".py", ".r", ".sh", ".ipynb", ".txt", ".json", ".yaml", ".yml", ".toml"];
            i.words().iter().any(|w| {
                let w = w.to_ascii_lowercase();
                ["model", "huggingface", "/.cache"].iter().any(|m| w.contains(m))
                    && !code.iter().any(|e| w.ends_with(e))
            })
        }
        _ => false,
    });
    by_instruction || build_scripts(steps, copies, context).iter().any(|text| caches(text))
}

/// The text of the scripts the final chain's `RUN`s run from the build
/// context (`RUN python download_models.py`), where the context has them.
fn build_scripts(steps: &[Step<'_>], copies: &[image::Copy], context: Option<&BuildContext>) -> Vec<String> {
    let Some(context) = context else { return Vec::new() };
    let runs = steps.iter().filter(|s| s.instruction.keyword == "RUN");
    let paths = runs.flat_map(|step| {
        let commands = commands(&step.instruction.script());
        commands.iter().flat_map(|c| image::start_scripts(c, &step.workdir)).collect::<Vec<_>>()
    });
    // Each script once, and at most 16 of them.
    let mut origins: Vec<String> = Vec::new();
    for (path, _) in paths {
        if let Some((origin, _)) = image::origin(copies, Some(context), &path)
            && context.has(&origin)
            && !origins.contains(&origin)
            && origins.len() < 16
        {
            origins.push(origin);
        }
    }
    origins.iter().filter_map(|origin| context.read(origin)).collect()
}

/// Whether the build copied `path` (a file, or a directory) into the image
/// from the build context.
fn copied_in(copies: &[image::Copy], context: Option<&BuildContext>, path: &str) -> bool {
    match image::origin(copies, context, path) {
        Some((origin, _)) => context.is_none_or(|c| !c.sources(&origin).is_empty()),
        None => false,
    }
}

/// CES014 and CES015; says whether the offline environment is set.
fn models(
    stages: &[Stage<'_>],
    needed: &[bool],
    steps: &[Step<'_>],
    copies: &[image::Copy],
    context: Option<&BuildContext>,
    installed: &[Installed],
    out: &mut Vec<Finding>,
) -> bool {
    let hf = installed.iter().find(|i| HF_LIBRARIES.contains(&i.package.as_str()));
    let any = installed
        .iter()
        .find(|i| HF_LIBRARIES.contains(&i.package.as_str()) || OTHER_MODEL_LIBRARIES.contains(&i.package.as_str()));
    let offline = hf_offline(steps);
    if let Some(hf) = hf.filter(|_| !offline) {
        let what = arrives(hf);
        finding(
            out,
            "CES014",
            hf.line,
            format!("{what} but HF_HUB_OFFLINE=1 is not set: it will try huggingface.co, which the TRE blocks"),
        );
    }
    if let Some(any) = any.filter(|_| !model_cached(stages, needed, steps, copies, context)) {
        let what = arrives(any);
        finding(
            out,
            "CES015",
            any.line,
            format!(
                "{what} but no build step caches its model: it would download on first use, which fails in the TRE"
            ),
        );
    }
    offline
}

/// Calls that download a model or data when they run, and whether the
/// Hugging Face offline environment stops them (it does for the Hub's
/// libraries, which then read their cache).
const START_DOWNLOADS: &[(&str, bool)] = &[
    ("from_pretrained(", true),
    ("snapshot_download(", true),
    ("hf_hub_download(", true),
    ("SentenceTransformer(", true),
    ("pipeline(", true),
    ("load_dataset(", true),
    ("huggingface-cli download", true),
    ("hf download", true),
    ("nltk.download(", false),
    ("spacy.cli.download(", false),
    ("spacy download", false),
    ("ollama pull", false),
    ("ollama run", false),
    ("torch.hub.load(", false),
    ("load_state_dict_from_url(", false),
    ("whisper.load_model(", false),
    ("stanza.download(", false),
    ("easyocr.Reader(", false),
    ("gensim.downloader", false),
];

/// Modules whose presence makes the Hub calls above what they seem
/// (`pipeline(` is also scikit-learn's `make_pipeline(`).
const HF_MODULES: &[&str] =
    &["transformers", "huggingface_hub", "sentence_transformers", "diffusers", "datasets", "optimum", "peft"];

/// Whether the call at `at` is one: at a word's start (`make_pipeline(` is
/// not `pipeline(`), not in a comment, and not loading a local path
/// (`from_pretrained("/models/x")`, `torch.hub.load(..., source="local")`).
fn counts(text: &str, at: usize, call: &str) -> bool {
    // At most 200 bytes either side: a very long line costs no more.
    let mut from = at.saturating_sub(200);
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    let mut to = (at + call.len() + 200).min(text.len());
    while !text.is_char_boundary(to) {
        to += 1;
    }
    let line_start = text[from..at].rfind('\n').map_or(from, |n| from + n + 1);
    let line_end = text[at..to].find('\n').map_or(to, |n| at + n);
    let line = &text[line_start..line_end];
    let before = &text[line_start..at];
    let argument = text[at + call.len()..].trim_start_matches([' ', '\'', '"']);
    !before.chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_')
        && !before.trim_start().starts_with('#')
        && !before.contains(" #")
        && !(call.ends_with('(') && (argument.starts_with('/') || argument.starts_with("./")))
        && !line.contains("source=\"local\"")
        && !line.contains("source='local'")
}

/// The first start-time download in `text`, with its line in `text`
/// (1-based). Hub calls count only where the text uses a Hub library and
/// the offline environment is not set (here or in the text); no call counts
/// that the build made too (it cached the model).
fn download_in(text: &str, offline: bool, built: &str) -> Option<(&'static str, usize)> {
    let text_offline =
        ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "local_files_only=True"].iter().any(|o| text.contains(o));
    let uses_hub =
        HF_MODULES.iter().any(|m| text.contains(m)) || text.contains("huggingface-cli") || text.contains("hf download");
    let mut first: Option<(usize, &'static str)> = None;
    for (call, hub) in START_DOWNLOADS {
        // A call the build made too has its model cached: at start a Hub
        // library then only asks the network first, which CES014 is about.
        if *hub && (offline || text_offline || !uses_hub) || built.contains(call) {
            continue;
        }
        // The first 64 places it appears are enough to decide.
        let found = text.match_indices(call).map(|(at, _)| at).take(64).find(|&at| counts(text, at, call));
        if let Some(at) = found
            && first.is_none_or(|(f, _)| at < f)
        {
            first = Some((at, call));
        }
    }
    first.map(|(at, call)| (call.trim_end_matches('('), text[..at].matches('\n').count() + 1))
}

/// Variables that name the model an app loads at start.
const MODEL_VARIABLES: &[&str] =
    &["MODEL_ID", "HF_MODEL_ID", "MODEL_NAME", "MODEL_NAME_OR_PATH", "EMBEDDING_MODEL", "HF_MODEL", "MODEL"];

/// Whether `value` looks like a model on the Hub (`org/name`), not a path.
fn hub_id(value: &str) -> bool {
    let mut parts = value.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    };
    !value.starts_with(['.', '/']) && ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// CES017: what the container runs at start (its `ENTRYPOINT` and `CMD`,
/// the scripts they name in the build context, and the scripts those
/// name), and the model variables it is given.
#[allow(clippy::too_many_arguments)]
fn start_downloads(
    steps: &[Step<'_>],
    copies: &[image::Copy],
    context: Option<&BuildContext>,
    installed: &[Installed],
    offline: bool,
    out: &mut Vec<Finding>,
    notes: &mut Vec<Note>,
    unread: &mut Unread,
) {
    // What the build ran, in its RUNs and the scripts they run: a call made
    // there cached what it fetches.
    let mut built: String =
        steps.iter().filter(|s| s.instruction.keyword == "RUN").map(|s| s.instruction.script()).collect();
    built.extend(build_scripts(steps, copies, context));
    let workdir = steps.last().map_or("/", |s| s.workdir.as_str());
    let last = |keyword: &str| steps.iter().rev().find(|s| s.instruction.keyword == keyword);
    for start in [last("ENTRYPOINT"), last("CMD")].into_iter().flatten() {
        let instruction = start.instruction;
        let keyword = &instruction.keyword;
        let script = instruction.script();
        if let Some((call, _)) = download_in(&script, offline, &built) {
            finding(out, "CES017", instruction.line, format!("{keyword} downloads at container start ({call})"));
            continue;
        }
        // The exec form's words, and those of `sh -c "..."` inside it.
        let command_words: Vec<Vec<String>> = commands(&script);
        let words: Vec<String> = command_words.iter().flatten().cloned().collect();
        // `--model org/name` is a Hub model only for an image with the Hub's
        // libraries, and not when the build copied that path in.
        let hub = installed.iter().any(|i| HF_LIBRARIES.contains(&i.package.as_str()) || i.package == "vllm");
        let copied = |value: &str| copied_in(copies, context, &resolve(workdir, value));
        if let Some(model) = words
            .windows(2)
            .find(|w| ["--model-id", "--model"].contains(&w[0].as_str()) && hub_id(&w[1]) && !copied(&w[1]))
            && hub
            && !offline
        {
            let model = &model[1];
            finding(
                out,
                "CES017",
                instruction.line,
                format!("{keyword} serves {model}, fetched from the Hugging Face Hub at start"),
            );
            continue;
        }
        // The scripts, breadth first: at most 32 looked for, 16 read, 8 notes.
        let mut pending: std::collections::VecDeque<(String, bool)> =
            command_words.iter().flat_map(|c| image::start_scripts(c, workdir)).collect();
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        let (mut read, mut noted) = (0, 0);
        while let Some((path, certain)) = pending.pop_front() {
            if seen.len() == 32 || read == 16 {
                break;
            }
            if !seen.insert(path.clone()) {
                continue;
            }
            let Some((origin, _)) = image::origin(copies, context, &path) else { continue };
            let Some(context) = context else {
                unread.scripts.get_or_insert(instruction.line);
                continue;
            };
            let Some(text) = context.read(&origin) else {
                // A guess that is not there (`python -m x`, a program on the
                // PATH) is no gap.
                if certain && noted < 8 {
                    noted += 1;
                    let message = missing(context, &origin, &origin, "what it does at start was not checked");
                    notes.push(Note { line: instruction.line, message });
                }
                continue;
            };
            read += 1;
            if let Some((call, at)) = download_in(&text, offline, &built) {
                finding(
                    out,
                    "CES017",
                    instruction.line,
                    format!("{origin} downloads at container start ({call}, line {at})"),
                );
                break;
            }
            for command in commands(&text) {
                pending.extend(image::start_scripts(&command, workdir));
            }
        }
    }
    let hub = installed.iter().any(|i| HF_LIBRARIES.contains(&i.package.as_str()) || i.package == "vllm");
    if hub && !offline {
        for step in steps.iter().filter(|s| s.instruction.keyword == "ENV") {
            for (name, value) in env_values(std::iter::once(step.instruction)) {
                let copied = copied_in(copies, context, &resolve(&step.workdir, &value));
                if MODEL_VARIABLES.contains(&name.as_str()) && hub_id(&value) && !copied {
                    finding(
                        out,
                        "CES017",
                        step.instruction.line,
                        format!(
                            "{name}={value} names a model on the Hugging Face Hub: it is fetched at start unless cached in the image with HF_HUB_OFFLINE=1"
                        ),
                    );
                }
            }
        }
    }
}

/// Whether a variable's name says it holds a secret: a part (between `_`)
/// that is `PASSWORD`, `TOKEN`, `SECRET`..., or `API_KEY`-like pairs.
/// (`TOKENIZERS_PARALLELISM` is not one.)
fn secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let parts: Vec<&str> = upper.split(['_', '-']).collect();
    // Where the secret is, or how big: `POSTGRES_PASSWORD_FILE`, `MAX_TOKENS`.
    let about = ["FILE", "PATH", "DIR", "LIMIT", "MAX", "MIN", "COUNT", "SIZE", "LEN", "LENGTH", "TYPE", "NAME"];
    if parts.iter().any(|p| about.contains(p)) {
        return false;
    }
    let alone = ["PASSWORD", "PASSWD", "PGPASSWORD", "SECRET", "TOKEN", "APIKEY", "CREDENTIALS"];
    let services = ["GITHUB", "GH", "GITLAB"];
    parts.iter().any(|p| alone.contains(p))
        || parts.windows(2).any(|w| ["API", "ACCESS", "PRIVATE", "SECRET", "AUTH"].contains(&w[0]) && w[1] == "KEY")
        // `GITHUB_PAT`, not `FILE_PAT`.
        || parts.windows(2).any(|w| services.contains(&w[0]) && w[1] == "PAT")
}

/// Whether a value holds a password in a URL (`postgres://user:pw@host/db`).
fn url_with_password(value: &str) -> bool {
    value.split_once("://").is_some_and(|(_, rest)| {
        let authority = rest.split('/').next().unwrap_or(rest);
        authority.split_once('@').is_some_and(|(user, _)| user.split_once(':').is_some_and(|(_, pw)| !pw.is_empty()))
    })
}

/// CES020: secrets in `ENV` (with a value written here) or `ARG` (its value
/// is recorded in the image's history) of the stages the image keeps.
fn secrets(steps: &[Step<'_>], out: &mut Vec<Finding>) {
    for step in steps {
        let instruction = step.instruction;
        match instruction.keyword.as_str() {
            "ENV" => {
                for (name, value) in env_values(std::iter::once(instruction)) {
                    let literal = !value.is_empty() && !value.starts_with('$');
                    if literal && (secret_name(&name) || url_with_password(&value)) {
                        finding(out, "CES020", instruction.line, format!("ENV {name} puts a secret in the image"));
                    }
                }
            }
            "ARG" => {
                for word in instruction.words() {
                    let name = word.split('=').next().unwrap_or(&word);
                    if secret_name(name) {
                        finding(
                            out,
                            "CES020",
                            instruction.line,
                            format!("ARG {name}: the value a build passes is recorded in the image's history"),
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

/// Programs that run a script they are given.
const INTERPRETERS: &[&str] =
    &["sh", "bash", "zsh", "dash", "ash", "ksh", "python", "python3", "python2", "perl", "ruby", "node", "php"];

/// A command's program, after `sudo`, `env` and `VAR=value` words.
fn command_program(command: &[String]) -> Option<&str> {
    // `sudo -u app bash`: an option's value is not the program.
    let mut skip_value = false;
    command.iter().map(String::as_str).find(|w| {
        if std::mem::take(&mut skip_value) {
            return false;
        }
        skip_value = ["-u", "-g", "--user", "--group"].contains(w);
        !w.contains('=')
            && !["sudo", "env", "-E", "exec", "time", "then", "do", "else"].contains(w)
            && !w.starts_with('-')
    })
}

/// The files `curl`/`wget` write in a command (`-o F`, `-O` with the URL's
/// name, wget's default of the URL's name), by base name.
fn downloaded_files(command: &[String]) -> Vec<String> {
    let Some(tool) = command_program(command).map(program) else { return Vec::new() };
    if tool != "curl" && tool != "wget" {
        return Vec::new();
    }
    let url_name = command
        .iter()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .and_then(|u| u.split(['?', '#']).next())
        .map(|u| u.rsplit('/').next().unwrap_or(u).to_owned());
    // The option that names the output file: curl's `-o`, wget's `-O`.
    let output = if tool == "curl" { 'o' } else { 'O' };
    let mut files = Vec::new();
    let mut named = false;
    let mut words = command.iter();
    while let Some(word) = words.next() {
        if let Some(long) = word.strip_prefix("--") {
            match long.split_once('=') {
                Some(("output" | "output-document", value)) => files.push(value.to_owned()),
                None if long == "output" || long == "output-document" => files.extend(words.next().cloned()),
                None if long == "remote-name" => files.extend(url_name.clone()),
                _ => {}
            }
            named |= long.starts_with("output");
        } else if let Some(cluster) = word.strip_prefix('-').filter(|c| !c.is_empty()) {
            // Short options run together: `-fsSLo file`, `-qO-`, `-fsSLO`.
            if let Some(at) = cluster.find(output) {
                named = true;
                let rest = &cluster[at + 1..];
                files.extend(if rest.is_empty() { words.next().cloned() } else { Some(rest.to_owned()) });
            } else if tool == "curl" && cluster.contains('O') {
                files.extend(url_name.clone());
            }
        }
    }
    // `curl URL > file`, `curl URL >file`.
    let mut words = command.iter();
    while let Some(word) = words.next() {
        match word.strip_prefix('>') {
            Some("") => files.extend(words.next().cloned()),
            Some(file) if !file.starts_with('&') && !file.starts_with('>') => files.push(file.to_owned()),
            _ => {}
        }
    }
    files.retain(|f| f != "-" && f != "/dev/null");
    if tool == "wget" && !named {
        files.extend(url_name);
    }
    files.iter().map(|f| program(f).to_owned()).filter(|f| !f.is_empty()).collect()
}

/// Whether a command checks a digest or a signature (`sha256sum -c`,
/// `shasum -a 256 --check`, `gpg --verify`, `cosign verify`, `minisign -V`,
/// `openssl dgst -verify`): printing a digest checks nothing.
fn checks_digest(command: &[String]) -> bool {
    let sums = ["sha256sum", "sha512sum", "sha384sum", "sha1sum", "shasum", "b2sum", "md5sum"];
    // `sha256sum -c`, or a digest compared: `sha256sum f | grep -q $SHA`,
    // `[ "$(sha256sum f | cut -d' ' -f1)" = "$SHA" ]`.
    let check = command.iter().any(|w| {
        ["-c", "--check", "grep", "cmp", "diff", "[", "[[", "test", "=", "==", "!="].contains(&w.as_str())
            || w.starts_with("--check=")
    });
    command.iter().any(|w| sums.contains(&program(w.trim_start_matches(['$', '(', '`'])))) && check
        || has(command, "gpg") && (has(command, "--verify") || has(command, "--verify-files"))
        || has(command, "cosign") && command.iter().any(|w| w.starts_with("verify"))
        || has(command, "minisign") && has(command, "-V")
        || has(command, "openssl") && has(command, "dgst") && command.iter().any(|w| w.starts_with("-verify"))
}

/// The interpreter a command runs (`python3.10` is python).
fn interpreter(command: &[String]) -> Option<&str> {
    let versioned = |p: &str| {
        p.strip_prefix("python").is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
    };
    command_program(command).map(program).filter(|p| INTERPRETERS.contains(p) || versioned(p))
}

/// Whether an interpreter reads its program from standard input: no `-c`,
/// `-e` or `-m`, and no script named (`sh`, `bash -s -- args`, `python3 -`).
fn reads_stdin(command: &[String]) -> bool {
    let Some(at) = command.iter().position(|w| interpreter(std::slice::from_ref(w)).is_some()) else { return false };
    for word in &command[at + 1..] {
        match word.as_str() {
            "-s" | "-" => return true,
            "-c" | "-e" | "-m" | "-E" => return false,
            w if w.starts_with('-') => {}
            _ => return false,
        }
    }
    true
}

/// CES018: a `RUN` that pipes a download into an interpreter that runs it
/// (`curl ... | sh`, not `curl ... | python3 -c 'import json...'`), runs a
/// download (`sh -c "$(curl ...)"`, `bash <(wget -O- ...)`, `eval
/// "$(curl ...)"`), or runs a file it downloaded (`curl -o x.sh ... && sh
/// x.sh`, `curl ... > x.sh`) with no check of its digest or signature
/// before.
fn unverified_download(run: &Instruction, out: &mut Vec<Finding>) {
    let script = run.script();
    // Shell keywords and quotes do not hide a command (`if ...; then curl ... | bash; fi`, `sh -c "curl ... | bash"`).
    let words = |text: &str| -> Vec<String> {
        let keywords = ["then", "do", "else", "if", "!", "{", "(", "elif"];
        let words = text.split_whitespace().map(|w| w.trim_matches(['"', '\'', '(', ')']).to_owned());
        words.filter(|w| !w.is_empty()).skip_while(|w| keywords.contains(&w.as_str())).collect()
    };
    let joined = script.replace("&&", "\n").replace("||", "\n").replace(';', "\n");
    // curl or wget as the command, or as the start of `sh -c "curl ..."`.
    let fetch = |c: &[String]| {
        let is_fetch = |w: &str| program(w) == "curl" || program(w) == "wget";
        command_program(c).is_some_and(is_fetch) || c.windows(2).any(|w| w[0] == "-c" && is_fetch(&w[1]))
    };
    for pipeline in joined.lines() {
        let parts: Vec<Vec<String>> = pipeline.split('|').map(words).collect();
        if let Some(at) = parts.iter().position(|c| fetch(c))
            && let Some(shell) = parts[at + 1..].iter().find(|c| reads_stdin(c)).and_then(|c| interpreter(c))
        {
            finding(out, "CES018", run.line, format!("RUN pipes a download into {shell} without checking it"));
            return;
        }
    }
    // Without quotes, and `$( curl` as `$(curl`.
    let flat = script.replace(['"', '\''], "").replace("$( ", "$(").replace("<( ", "<(");
    for (pattern, tool) in [
        ("-c $(curl", "curl"),
        ("-c $(wget", "wget"),
        ("-c `curl", "curl"),
        ("-c `wget", "wget"),
        ("eval $(curl", "curl"),
        ("eval $(wget", "wget"),
    ] {
        if flat.contains(pattern) {
            finding(out, "CES018", run.line, format!("RUN runs a script {tool} downloads without checking it"));
            return;
        }
    }
    let all: Vec<Vec<String>> = joined.lines().map(words).filter(|c| !c.is_empty()).collect();
    // `bash <(curl ...)`, `source <(wget ...)`: not `gpg --import <(curl ...)`.
    for command in &all {
        let line = command.join(" ").replace("<( ", "<(");
        let runs =
            interpreter(command).is_some() || command_program(command).is_some_and(|p| p == "source" || p == ".");
        if runs && (line.contains("<(curl") || line.contains("<(wget")) {
            finding(out, "CES018", run.line, "RUN runs a script it downloads without checking it".to_owned());
            return;
        }
    }
    let mut downloaded: Vec<String> = Vec::new();
    for command in &all {
        if checks_digest(command) {
            // Checked before it runs: the downloads the check names (all of
            // them when it names none, as `sha256sum -c sums.txt`).
            let named: Vec<&String> = command.iter().filter(|w| downloaded.contains(&program(w).to_owned())).collect();
            if named.is_empty() {
                downloaded.clear();
            } else {
                let named: Vec<String> = named.iter().map(|w| program(w).to_owned()).collect();
                downloaded.retain(|d| !named.contains(d));
            }
            continue;
        }
        downloaded.extend(downloaded_files(command));
        let Some(first) = command_program(command) else { continue };
        let run_file = if interpreter(command).is_some() {
            // `sh install.sh`: the first word after the interpreter that is not an option.
            command.iter().skip_while(|w| w.as_str() != first).nth(1).filter(|w| !w.starts_with('-'))
        } else {
            command.iter().find(|w| w.as_str() == first).filter(|w| w.starts_with("./") || w.starts_with('/'))
        };
        if let Some(file) = run_file.map(|f| program(f)).filter(|f| downloaded.iter().any(|d| d == f)) {
            finding(
                out,
                "CES018",
                run.line,
                format!("RUN runs {file}, downloaded in the same step, without checking it"),
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pip_by_any_name_and_its_cache_by_any_means() {
        let pip_flagged = |script: &str| {
            let commands = commands(script);
            !pip_cache_removed(&commands) && commands.iter().any(|c| is_pip_install(c) && !pip_cache_off_here(c))
        };
        for flagged in [
            "pip install numpy",
            "python -m pip install numpy",
            "python3 -m pip install -r requirements.txt",
            "/opt/conda/bin/pip install torch",
            "pip3.11 install pandas",
            "pip install uv",
            "pip install numpy && echo uv",
        ] {
            assert!(pip_flagged(flagged), "{flagged}");
        }
        for quiet in [
            "pip install --no-cache-dir numpy",
            "pip install --no-cache numpy",
            "pip install --no-cache-dir=1 numpy",
            "PIP_NO_CACHE_DIR=1 pip install numpy",
            "pip install numpy && rm -rf /root/.cache/pip",
            "pip install numpy && rm -rf ~/.cache",
            "pip install numpy && pip cache purge",
            "uv pip install numpy",
            "UV_LINK_MODE=copy uv pip install --system numpy",
            "pipx install black",
            "pip3x install numpy",
        ] {
            assert!(!pip_flagged(quiet), "{quiet}");
        }
        assert!(!is_apt_update(&commands("apt-get install -y ./local.deb")[0]));
        assert!(is_apt_update(&commands("apt update")[0]));
    }

    #[test]
    fn downloads_run_unchecked_and_not() {
        let flagged = |script: &str| {
            let file = crate::parse::parse(&format!("FROM x\nRUN {script}\n")).unwrap();
            let mut out = Vec::new();
            unverified_download(&file.instructions[1], &mut out);
            !out.is_empty()
        };
        for bad in [
            "curl -fsSL https://x/i.sh | sh",
            "wget -qO- https://x/i.sh | bash -s -- --yes",
            "curl -fsSL https://x/get.py | python3 -",
            "if [ -n x ]; then curl -fsSL https://x/i.sh | bash; fi",
            "sh -c \"curl -fsSL https://x/i.sh | bash\"",
            "sh -c \"$(curl -fsSL https://x/i.sh)\"",
            "bash <(wget -qO- https://x/i.sh)",
            "eval \"$(curl -fsSL https://x/env)\"",
            "curl -fsSL https://x/i.sh > i.sh && sh i.sh",
            "curl -fsSLO https://x/i.sh && chmod +x i.sh && ./i.sh",
            "curl -o i.sh https://x/i.sh && sha256sum i.sh && sh i.sh",
            "curl https://x/i.sh | sh && sha256sum -c sums",
            "curl -o /tmp/get-pip.py https://x/get-pip.py; python3.10 /tmp/get-pip.py",
            "curl -fsSL https://x/i.sh | sudo -u app bash",
            "sh -c \"$( curl -fsSL https://x/i.sh)\"",
            "curl -o a.tar.gz https://x/a.tar.gz && curl -o i.sh https://x/i.sh && echo \"x  a.tar.gz\" | sha256sum -c - && sh i.sh",
        ] {
            assert!(flagged(bad), "{bad}");
        }
        for fine in [
            "curl -s https://api.github.com/repos/a/b/releases/latest | python3 -c 'import json,sys; print(1)'",
            "wget -O- https://x/v.json | python3 -m json.tool",
            "VER=$(curl -fsSL https://x/v.txt) && pip install t==$VER && python -c 'import t'",
            "curl -fsSL https://x/a.tar.gz | tar -xz -C /opt",
            "curl -fsSLo i.sh https://x/i.sh && echo \"abc  i.sh\" | sha256sum -c - && sh i.sh",
            "curl -o i.sh https://x/i.sh && gpg --verify i.sh.asc i.sh && bash i.sh",
            "curl -fsSL https://x/key | gpg --dearmor -o /usr/share/keyrings/x.gpg",
            "curl -o m.sh https://x/m.sh && sha256sum m.sh | grep -q \"$SHA\" && bash m.sh",
            "curl -o x.sh https://x/x.sh && [ \"$(sha256sum x.sh | cut -d' ' -f1)\" = \"$SHA\" ] && sh x.sh",
            "gpg --import <(curl -fsSL https://x/key.asc)",
        ] {
            assert!(!flagged(fine), "{fine}");
        }
    }

    #[test]
    fn codes_are_unique_and_in_order() {
        let codes: Vec<&str> = RULES.iter().map(|r| r.code).collect();
        let mut sorted = codes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(codes, sorted);
    }

    #[test]
    fn base_references_split_into_registry_tag_and_digest() {
        let parts = |s| {
            let r = base_ref(s);
            (r.registry, r.repository, r.tag, r.digest)
        };
        assert_eq!(parts("python"), (None, "python", None, None));
        assert_eq!(parts("library/python:3"), (None, "library/python", Some("3"), None));
        assert_eq!(parts("localhost:5000/a/b"), (Some("localhost:5000"), "a/b", None, None));
        assert_eq!(parts("ghcr.io/a/b:1@sha256:ab"), (Some("ghcr.io"), "a/b", Some("1"), Some("sha256:ab")));
    }

    #[test]
    fn extensions_match_whole_suffixes_in_any_case() {
        assert!(is_data_file("scans/*.NII.GZ") && is_data_file("x.csv.zst") && is_data_file("m.PKL"));
        assert!(!is_data_file("x.gz") && !is_data_file("notes.txt.gz"));
        assert!(!is_data_file("r/packages.csv") && !is_data_file("requirements.tsv") && is_data_file("pkg/x.csv"));
        assert!(!is_data_file("cran_packages.csv") && is_data_file("requirements_survey.csv"));
        assert!(is_data_file("packaged_meals_survey.sav") && is_data_file("patient_dependency_scores.parquet"));
        assert!(has_extension("data/x.csv/", DATA_EXTENSIONS));
        assert!(!has_extension("notcsv", DATA_EXTENSIONS));
        assert!(has_extension("a.tar.gz", ARCHIVE_EXTENSIONS));
    }

    #[test]
    fn packages_are_normalised() {
        let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            image::command_packages(&words("pip install -U Sentence_Transformers>=2 huggingface_hub[cli]==0.24")),
            ["sentence-transformers", "huggingface-hub"]
        );
        assert!(image::command_packages(&words("apt-get install spacy")).is_empty());
    }

    #[test]
    fn relative_paths_resolve_against_the_workdir() {
        assert_eq!(resolve("/scratch", "."), "/scratch");
        assert_eq!(resolve("/scratch/", "./a/"), "/scratch/a");
        assert_eq!(resolve("/app", "/safe_data"), "/safe_data");
        assert_eq!(tre_dir("/safe_datax"), None);
    }
}
