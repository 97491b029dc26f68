//! The rules: each with a stable code, a severity and a one-line fix. Rules
//! about what the image is at run time (directories, user, offline models,
//! files hidden by mounts) look at the final stage and the stages it builds
//! on; rules about how it is built look at every stage.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::parse::{Arguments, Dockerfile, Instruction, unquote};
use crate::stages::{Stage, final_chain, stages};

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
        fix: "keep data out of images: the TRE provides project data read-only under /safe_data",
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
];

/// The rule with this code.
pub fn rule(code: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.code == code)
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

/// Extensions of data files that do not belong in an image.
const DATA_EXTENSIONS: &[&str] = &[
    "csv", "tsv", "parquet", "sav", "zsav", "por", "dta", "sas7bdat", "xpt", "xlsx", "xls", "rds", "rdata", "rda",
    "feather", "arrow", "nii", "nii.gz", "dcm", "h5", "hdf5", "mat", "sqlite", "sqlite3",
];

/// Archives that `ADD` unpacks (where ADD is the right instruction).
const ARCHIVE_EXTENSIONS: &[&str] =
    &["tar", "tar.gz", "tgz", "tar.bz2", "tbz2", "tar.xz", "txz", "tar.zst", "tar.lz4", "gz", "bz2", "xz"];

/// Libraries that fetch models from the Hugging Face Hub.
const HF_LIBRARIES: &[&str] =
    &["transformers", "huggingface-hub", "sentence-transformers", "diffusers", "timm", "datasets", "optimum", "peft"];

/// Other libraries that download models or data on first use.
const OTHER_MODEL_LIBRARIES: &[&str] = &["spacy", "easyocr", "stanza", "flair", "nltk", "openai-whisper"];

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

/// Runs every rule.
pub fn check(file: &Dockerfile) -> Vec<Finding> {
    let stages = stages(file);
    let chain = final_chain(&stages);
    // ENV PIP_NO_CACHE_DIR anywhere turns pip's cache off for every RUN.
    let pip_cache_off = env_values(file.instructions.iter()).iter().any(|(k, _)| k == "PIP_NO_CACHE_DIR");
    let mut findings = Vec::new();
    for stage in &stages {
        base_image(stage, &mut findings);
        platform(stage, &mut findings);
        consecutive_runs(stage, &mut findings);
    }
    for instruction in &file.instructions {
        match instruction.keyword.as_str() {
            "ADD" => add(instruction, &mut findings),
            "RUN" => packages(instruction, pip_cache_off, &mut findings),
            _ => {}
        }
        if matches!(instruction.keyword.as_str(), "ADD" | "COPY") && instruction.flag("from").is_none() {
            data_files(instruction, &mut findings);
        }
    }
    tre_directories(&chain, &mut findings);
    user(&chain, &mut findings);
    models(&stages, &chain, &mut findings);
    findings.sort_by(|a, b| (a.line, a.code).cmp(&(b.line, b.code)));
    findings
}

fn finding(out: &mut Vec<Finding>, code: &'static str, line: usize, message: String) {
    let rule = rule(code).unwrap_or(&RULES[0]);
    out.push(Finding { line, code, severity: rule.severity, message, fix: rule.fix.to_owned() });
}

/// A base image reference's parts.
struct BaseRef<'a> {
    registry: Option<&'a str>,
    repository: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

fn base_ref(image: &str) -> BaseRef<'_> {
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
    let parts = base_ref(image);
    if parts.registry.is_none() {
        finding(out, "CES001", line, format!("base image {image} does not name its registry (docker.io is assumed)"));
    }
    if parts.digest.is_none() {
        finding(out, "CES002", line, format!("base image {image} is not pinned by digest"));
        match parts.tag {
            Some("latest") => finding(out, "CES003", line, format!("base image {image} uses the latest tag")),
            None => finding(out, "CES003", line, format!("base image {image} has no tag (latest is assumed)")),
            Some(_) => {}
        }
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
            finding(out, "CES016", line, format!("base image {image} is built for {arch}: the TRE runs linux/amd64"));
        }
    }
}

fn is_amd64(platform: &str) -> bool {
    let platform = platform.to_ascii_lowercase();
    platform == "linux/amd64" || platform.starts_with("linux/amd64/") || platform == "linux/x86_64"
}

fn consecutive_runs(stage: &Stage<'_>, out: &mut Vec<Finding>) {
    for pair in stage.instructions.windows(2) {
        let [first, second] = pair else { continue };
        // RUNs with different mounts or network settings cannot simply be joined.
        if first.keyword == "RUN" && second.keyword == "RUN" && first.flags.is_empty() && second.flags.is_empty() {
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

/// Whether `path` names a data file by its extension (`csv`, `parquet`, `sav`, ...).
pub fn is_data_file(path: &str) -> bool {
    has_extension(path, DATA_EXTENSIONS)
}

fn has_extension(path: &str, extensions: &[&str]) -> bool {
    let path = path.trim_end_matches('/').to_ascii_lowercase();
    extensions.iter().any(|ext| path.strip_suffix(ext).is_some_and(|stem| stem.ends_with('.')))
}

fn data_files(copy: &Instruction, out: &mut Vec<Finding>) {
    let words = copy.words();
    let Some((_, sources)) = words.split_last() else { return };
    for source in sources.iter().filter(|s| !s.starts_with("<<")) {
        if has_extension(source, DATA_EXTENSIONS) {
            finding(out, "CES008", copy.line, format!("{} copies data file {source} into the image", copy.keyword));
        }
    }
}

/// Commands of a script, split at `&&`, `||`, `;`, `|` and newlines, as words.
fn commands(script: &str) -> Vec<Vec<String>> {
    script
        .replace("&&", "\n")
        .replace("||", "\n")
        .replace([';', '|'], "\n")
        .lines()
        .map(|c| c.split_whitespace().map(unquote).collect::<Vec<_>>())
        .filter(|c| !c.is_empty())
        .collect()
}

fn has(command: &[String], word: &str) -> bool {
    command.iter().any(|w| w == word)
}

fn is_apt_install(command: &[String]) -> bool {
    (has(command, "apt-get") || has(command, "apt")) && has(command, "install")
}

fn is_apt_update(command: &[String]) -> bool {
    (has(command, "apt-get") || has(command, "apt")) && has(command, "update")
}

/// A word's program name: `/opt/conda/bin/pip` is `pip`.
fn program(word: &str) -> &str {
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
        let cleaned = commands.iter().any(|c| has(c, "rm") && c.iter().any(|w| w.starts_with("/var/lib/apt/lists")));
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
fn env_values<'a>(instructions: impl Iterator<Item = &'a Instruction>) -> Vec<(String, String)> {
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
fn resolve(workdir: &str, path: &str) -> String {
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
fn tre_directories(chain: &[&Stage<'_>], out: &mut Vec<Finding>) {
    let Some(last) = chain.first() else { return };
    let mut created: Vec<&str> = Vec::new();
    let mut workdir = "/".to_owned();
    for instruction in chain_instructions(chain) {
        match instruction.keyword.as_str() {
            "WORKDIR" => {
                workdir = resolve(&workdir, &instruction.words().join(" "));
                created.extend(tre_dir(&workdir));
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
                let dest = resolve(&workdir, dest);
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

fn user(chain: &[&Stage<'_>], out: &mut Vec<Finding>) {
    let Some(last) = chain.first() else { return };
    match chain_instructions(chain).into_iter().rev().find(|i| i.keyword == "USER") {
        None => finding(out, "CES009", last.from.line, "the final stage sets no USER, so it runs as root".to_owned()),
        Some(user) => {
            let words = user.words();
            let name = words.first().map(|w| w.split(':').next().unwrap_or(w)).unwrap_or_default();
            if name == "root" || name == "0" {
                finding(out, "CES009", user.line, format!("USER {name}: the final stage runs as root"));
            }
        }
    }
}

/// The packages a command installs with pip, conda, uv or poetry, normalised.
fn installed_packages(command: &[String]) -> Vec<String> {
    let managers = ["pip", "pip3", "conda", "mamba", "micromamba", "uv", "poetry", "pipx"];
    if !command.iter().any(|w| managers.contains(&w.as_str()) || w.starts_with("pip3.")) {
        return Vec::new();
    }
    let Some(at) = command.iter().position(|w| w == "install" || w == "add") else { return Vec::new() };
    command[at + 1..]
        .iter()
        .filter(|w| !w.starts_with('-'))
        .map(|w| {
            let name = w.split(['=', '<', '>', '!', '[', '~', ';', '@']).next().unwrap_or(w);
            name.to_ascii_lowercase().replace('_', "-")
        })
        .collect()
}

/// CES014 and CES015.
fn models(stages: &[Stage<'_>], chain: &[&Stage<'_>], out: &mut Vec<Finding>) {
    let instructions = chain_instructions(chain);
    let mut hf: Option<(usize, String)> = None;
    let mut any: Option<(usize, String)> = None;
    for run in instructions.iter().filter(|i| i.keyword == "RUN") {
        for package in commands(&run.script()).iter().flat_map(|c| installed_packages(c)) {
            if HF_LIBRARIES.contains(&package.as_str()) {
                hf.get_or_insert((run.line, package.clone()));
            }
            if HF_LIBRARIES.contains(&package.as_str()) || OTHER_MODEL_LIBRARIES.contains(&package.as_str()) {
                any.get_or_insert((run.line, package));
            }
        }
    }
    let offline = env_values(instructions.iter().copied()).iter().any(|(k, v)| {
        (k == "HF_HUB_OFFLINE" || k == "TRANSFORMERS_OFFLINE") && ["1", "true", "yes", "on"].contains(&v.as_str())
    });
    if let Some((line, package)) = hf.filter(|_| !offline) {
        finding(
            out,
            "CES014",
            line,
            format!(
                "{package} is installed but HF_HUB_OFFLINE=1 is not set: it will try huggingface.co, which the TRE blocks"
            ),
        );
    }
    let cached = stages.iter().flat_map(|s| s.instructions.iter()).any(|i| match i.keyword.as_str() {
        "RUN" => {
            let script = i.script().to_ascii_lowercase();
            CACHE_STEPS.iter().any(|step| script.contains(step))
        }
        "COPY" | "ADD" => {
            let words = i.words().join(" ").to_ascii_lowercase();
            ["model", "huggingface", "/.cache"].iter().any(|m| words.contains(m))
        }
        _ => false,
    });
    if let Some((line, package)) = any.filter(|_| !cached) {
        finding(
            out,
            "CES015",
            line,
            format!(
                "{package} is installed but no build step caches its model: it would download on first use, which fails in the TRE"
            ),
        );
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
        assert!(has_extension("scans/*.NII.GZ", DATA_EXTENSIONS));
        assert!(has_extension("data/x.csv/", DATA_EXTENSIONS));
        assert!(!has_extension("notcsv", DATA_EXTENSIONS));
        assert!(has_extension("a.tar.gz", ARCHIVE_EXTENSIONS));
    }

    #[test]
    fn packages_are_normalised() {
        let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            installed_packages(&words("pip install -U Sentence_Transformers>=2 huggingface_hub[cli]==0.24")),
            ["sentence-transformers", "huggingface-hub"]
        );
        assert!(installed_packages(&words("apt-get install spacy")).is_empty());
    }

    #[test]
    fn relative_paths_resolve_against_the_workdir() {
        assert_eq!(resolve("/scratch", "."), "/scratch");
        assert_eq!(resolve("/scratch/", "./a/"), "/scratch/a");
        assert_eq!(resolve("/app", "/safe_data"), "/safe_data");
        assert_eq!(tre_dir("/safe_datax"), None);
    }
}
