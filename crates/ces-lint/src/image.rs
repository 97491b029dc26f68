//! What the final image holds and does, as far as the Dockerfile and its
//! build context tell: the working directory at each instruction, where a
//! path in the image was copied from, which packages arrive (by command, by
//! requirement file, or with the base image), and what the container runs
//! when it starts.

use crate::context::{BuildContext, clean};
use crate::deps::{self, Kind};
use crate::parse::Instruction;
use crate::rules::{program, resolve};
use crate::stages::Stage;

/// An instruction of the final stage's chain with the working directory it
/// runs in.
pub struct Step<'a> {
    /// The instruction.
    pub instruction: &'a Instruction,
    /// `WORKDIR` at this instruction, absolute.
    pub workdir: String,
    /// The `ENV` and `ARG` values known here, for `$VAR` in paths.
    pub env: std::rc::Rc<Vec<(String, String)>>,
}

impl Step<'_> {
    /// `text` with this step's `$VAR`s substituted (as written when one is unknown).
    pub fn expand(&self, text: &str) -> String {
        crate::stages::expand(text, &self.env).unwrap_or_else(|| text.to_owned())
    }
}

/// The final chain's instructions in build order, each with its `WORKDIR`
/// (`$VAR`s substituted) and the variables set before it.
pub fn steps<'a>(chain: &[&Stage<'a>]) -> Vec<Step<'a>> {
    let mut workdir = "/".to_owned();
    let mut env = std::rc::Rc::new(Vec::new());
    let mut steps = Vec::new();
    for instruction in chain.iter().rev().flat_map(|s| s.instructions.iter()) {
        match instruction.keyword.as_str() {
            "ENV" | "ARG" => {
                // ENV as the rules read it (both of its forms); ARG's defaults.
                let set = match instruction.keyword.as_str() {
                    "ENV" => crate::rules::env_values(std::iter::once(instruction)),
                    _ => instruction
                        .words()
                        .iter()
                        .filter_map(|w| w.split_once('='))
                        .map(|(n, v)| (n.to_owned(), v.to_owned()))
                        .collect(),
                };
                let mut more = (*env).clone();
                for (name, value) in set {
                    let value = crate::stages::expand(&value, &more).unwrap_or(value);
                    more.push((name, value));
                }
                env = std::rc::Rc::new(more);
            }
            "WORKDIR" => {
                let written = instruction.words().join(" ");
                let written = crate::stages::expand(&written, &env).unwrap_or(written);
                workdir = resolve(&workdir, &written);
            }
            _ => {}
        }
        steps.push(Step { instruction, workdir: workdir.clone(), env: env.clone() });
    }
    steps
}

/// A `COPY` or `ADD` from the build context.
#[derive(Debug)]
pub struct Copy {
    /// The instruction's line.
    pub line: usize,
    /// Each source, cleaned (`""` is the context's root), and whether it
    /// was written as a directory.
    pub sources: Vec<(String, bool)>,
    /// The destination, absolute, without a trailing `/`.
    pub dest: String,
    /// Whether the destination is a directory the sources go into.
    pub into_dir: bool,
}

/// The copies from the build context among `steps`, in build order (not
/// `--from`, URLs or heredocs).
pub fn copies(steps: &[Step<'_>]) -> Vec<Copy> {
    let mut out = Vec::new();
    for step in steps {
        let i = step.instruction;
        if !matches!(i.keyword.as_str(), "COPY" | "ADD") || i.flag("from").is_some() {
            continue;
        }
        let words = i.words();
        let Some((dest, sources)) = words.split_last() else { continue };
        let sources: Vec<(String, bool)> = sources
            .iter()
            .filter(|s| !s.starts_with("<<") && !s.contains("://") && !s.starts_with("git@"))
            .filter_map(|s| Some((clean(s)?, s.ends_with('/') || s.ends_with('.'))))
            .collect();
        if sources.is_empty() {
            continue;
        }
        let resolved = resolve(&step.workdir, &step.expand(dest));
        // A destination is a directory when written as one (`/app/`, `.`),
        // when it is the working directory, or when several files go there.
        let into_dir = dest.ends_with('/')
            || dest == "."
            || dest.ends_with("/.")
            || resolved == step.workdir
            || sources.len() > 1
            || sources.iter().any(|(s, _)| s.contains('*'));
        out.push(Copy { line: i.line, sources, dest: resolved, into_dir });
    }
    out
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_owned() } else { format!("{dir}/{name}") }
}

/// Where the file at `image_path` in the image came from: its path in the
/// build context and the line of the copy, as the last copy that puts
/// something there says; with a context, the last one whose file the
/// context has (`COPY src/ /app/` then `COPY conf/ /app/` put different
/// files there), else the last candidate. `None` when no copy can have put
/// it there (the base image or a `RUN` made it).
pub fn origin(copies: &[Copy], context: Option<&BuildContext>, image_path: &str) -> Option<(String, usize)> {
    let mut first: Option<(String, usize)> = None;
    for copy in copies.iter().rev() {
        for (source, written_dir) in copy.sources.iter().rev() {
            let is_dir = match context {
                Some(c) => {
                    source.is_empty() || (!c.has(source) && !source.contains('*') && !c.sources(source).is_empty())
                }
                None => source.is_empty() || *written_dir || !basename(source).contains(['.', '*']),
            };
            let found = if is_dir {
                // `COPY dir dest` copies what is in dir into dest.
                let under = match copy.dest.as_str() {
                    "/" => image_path.strip_prefix('/'),
                    dest => image_path.strip_prefix(dest).and_then(|r| r.strip_prefix('/')),
                };
                under.filter(|r| !r.is_empty()).map(|r| join(source, r))
            } else if copy.into_dir || copy.dest.ends_with(basename(source)) && image_path != copy.dest {
                let (dir, name) = image_path.rsplit_once('/').unwrap_or(("", image_path));
                let dest = if copy.into_dir { copy.dest.as_str() } else { "" };
                (dir == dest || dir.is_empty() && dest == "/").then(|| source_named(context, source, name)).flatten()
            } else {
                (image_path == copy.dest).then(|| source.clone())
            };
            if let Some(found) = found {
                if context.is_none_or(|c| c.has(&found)) {
                    return Some((found, copy.line));
                }
                first.get_or_insert((found, copy.line));
            }
        }
    }
    first
}

/// The file a (possibly wildcard) source names when its base name is `name`.
fn source_named(context: Option<&BuildContext>, source: &str, name: &str) -> Option<String> {
    if !source.contains(['*', '?', '[']) {
        return (basename(source) == name).then(|| source.to_owned());
    }
    match context {
        Some(c) => c.sources(source).into_iter().find(|f| basename(f) == name).map(str::to_owned),
        None => {
            let dir = source.rsplit_once('/').map_or("", |(d, _)| d);
            crate::context::wildcard_matches(basename(source), name).then(|| join(dir, name))
        }
    }
}

/// Where a package came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A `pip`/`conda`/`uv` command names it.
    Command,
    /// A requirement file (its path in the build context).
    File(String),
    /// The base image has it.
    Base(String),
    /// A `RUN` imports it.
    Import,
    /// An `ENV` that places the Hub's cache (its name).
    Env(String),
}

/// A package the final image has.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The instruction that brings it.
    pub line: usize,
    /// pip's name for it.
    pub package: String,
    /// How it arrives.
    pub via: Via,
}

/// Base images that ship model libraries, by repository: `*` matches any
/// text within the name.
const BASES_WITH_MODELS: &[(&str, &[&str])] = &[
    ("huggingface/*", &["transformers"]),
    ("*transformers*", &["transformers"]),
    ("*text-generation-inference*", &["transformers"]),
    ("*text-embeddings-inference*", &["sentence-transformers"]),
    ("vllm/*", &["vllm"]),
    ("*/vllm-openai*", &["vllm"]),
    ("nvidia/nemo*", &["transformers"]),
    ("ollama/ollama", &["ollama"]),
    ("*/spacy*", &["spacy"]),
];

/// The model libraries the base image `repository` ships.
pub fn base_packages(repository: &str) -> &'static [&'static str] {
    let repository = repository.to_ascii_lowercase();
    let repository = repository.strip_prefix("library/").unwrap_or(&repository);
    BASES_WITH_MODELS
        .iter()
        .find(|(pattern, _)| crate::context::wildcard_matches(pattern, repository))
        .map_or(&[], |(_, packages)| packages)
}

/// The packages a command installs with pip, conda, uv or poetry, normalised.
pub fn command_packages(command: &[String]) -> Vec<String> {
    let managers = ["pip", "pip3", "conda", "mamba", "micromamba", "uv", "poetry", "pipx"];
    if !command.iter().any(|w| managers.contains(&program(w)) || program(w).starts_with("pip3.")) {
        return Vec::new();
    }
    // `conda create -n env pkg...` installs too.
    let conda = command.iter().any(|w| ["conda", "mamba", "micromamba"].contains(&program(w)));
    let Some(at) = command.iter().position(|w| w == "install" || w == "add" || conda && w == "create") else {
        return Vec::new();
    };
    let mut packages = Vec::new();
    let mut skip_next = false;
    for word in &command[at + 1..] {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        if word.starts_with('-') {
            // Options that take a value: the value is not a package.
            skip_next = !word.contains('=')
                && [
                    "-r",
                    "--requirement",
                    "-c",
                    "--constraint",
                    "-f",
                    "--file",
                    "-i",
                    "--index-url",
                    "--extra-index-url",
                    "-n",
                    "--name",
                    "-p",
                    "--prefix",
                    "--target",
                    "-t",
                    "--find-links",
                    "--channel",
                ]
                .contains(&word.as_str());
            continue;
        }
        if word.contains('$') || word == "." {
            continue;
        }
        if word.contains('/') && !word.contains("::") {
            packages.extend(path_package(word));
            continue;
        }
        let name = word.split(['=', '<', '>', '!', '[', '~', ';', '@']).next().unwrap_or(word);
        packages.push(deps::normalise(name.rsplit("::").next().unwrap_or(name)));
    }
    packages
}

/// The package a path or URL installs, by its name: `#egg=NAME`, a
/// checkout (`./transformers[torch]`, `git+https://.../detectron2.git@v1`),
/// or a wheel or sdist (`/wheels/torch-2.3.0-cp311-...whl`).
fn path_package(word: &str) -> Option<String> {
    if let Some(egg) = word.split("#egg=").nth(1) {
        return Some(deps::normalise(egg.split(['&', '[']).next().unwrap_or(egg)));
    }
    let word = word.split(['[', '#', '?']).next().unwrap_or(word).trim_end_matches('/');
    let last = word.rsplit('/').next().unwrap_or(word);
    // `repo.git@ref`: the ref is not the name.
    let last = last.split('@').next().unwrap_or(last).trim_end_matches(".git");
    let archive = [".whl", ".tar.gz", ".zip", ".tgz"].iter().any(|e| last.ends_with(e));
    let name = if archive { last.split('-').next().unwrap_or(last) } else { last };
    let valid = !name.is_empty() && !name.starts_with('.') && !name.contains(['*', '$']);
    valid.then(|| deps::normalise(name))
}

/// The requirement files a command installs from, as written, with their kind:
/// `pip install -r F`, `conda env create -f F`, `conda install --file F`,
/// `uv pip sync F`; and a project directory's `pyproject.toml` for
/// `pip install .`, `poetry install`, `uv sync`, `pdm install`.
pub fn command_files(command: &[String]) -> Vec<(String, Kind)> {
    let mut files = Vec::new();
    let tools = ["pip", "pip3", "conda", "mamba", "micromamba", "uv", "poetry", "pdm"];
    let Some(tool_at) = command.iter().position(|w| tools.contains(&program(w)) || program(w).starts_with("pip3."))
    else {
        return files;
    };
    let tool = program(&command[tool_at]);
    let rest = &command[tool_at + 1..];
    let conda = ["conda", "mamba", "micromamba"].contains(&tool);
    let mut words = rest.iter().peekable();
    while let Some(word) = words.next() {
        let (option, inline) = match word.split_once('=') {
            Some((o, v)) if o.starts_with("--") => (o, Some(v.to_owned())),
            _ => (word.as_str(), None),
        };
        let takes_file = match option {
            "-r" | "--requirement" => true,
            "-f" | "--file" => conda,
            _ => false,
        };
        if takes_file {
            if let Some(value) = inline.or_else(|| words.next().cloned()) {
                let kind = if conda && !value.ends_with(".txt") { Kind::Conda } else { Kind::Requirements };
                let kind = deps::Kind::of(&value).unwrap_or(kind);
                files.push((value, kind));
            }
        } else if let Some(file) = word.strip_prefix("-r").filter(|f| !f.is_empty() && !word.starts_with("--")) {
            files.push((file.to_owned(), Kind::Requirements));
        }
    }
    let installs = rest.iter().any(|w| w == "install" || w == "sync");
    if tool == "uv" && rest.first().is_some_and(|w| w == "pip") && rest.get(1).is_some_and(|w| w == "sync") {
        files.extend(rest.get(2).map(|f| (f.clone(), Kind::Requirements)));
    } else if ["poetry", "pdm"].contains(&tool) && installs || tool == "uv" && rest.first().is_some_and(|w| w == "sync")
    {
        files.push(("pyproject.toml".to_owned(), Kind::Pyproject));
    } else if installs && !conda {
        // `pip install .`, `pip install -e ./pkg`, `pip install /app`.
        let dirs = rest.iter().map(|w| w.split('[').next().unwrap_or(w));
        for dir in dirs.filter(|w| *w == "." || w.starts_with("./") || w.starts_with('/')) {
            let dir = dir.trim_end_matches('/');
            let dir = if dir.is_empty() { "/" } else { dir };
            if !dir.ends_with(".whl") && !dir.ends_with(".tar.gz") && !dir.ends_with(".txt") {
                files.push((format!("{dir}/pyproject.toml"), Kind::Pyproject));
            }
        }
    }
    files
}

/// The packages of a requirement file in the build context, following
/// `-r` includes (up to a depth of four); `None` when the context does not
/// have it.
pub fn file_packages(context: &BuildContext, path: &str, kind: Kind) -> Option<Vec<String>> {
    let text = context.read(path)?;
    Some(match kind {
        Kind::Requirements => {
            // Each file once, and at most 64: `-r` loops and fans end.
            let mut all = Vec::new();
            let mut read = vec![path.to_owned()];
            let mut pending = vec![(path.to_owned(), text, 0)];
            while let Some((path, text, depth)) = pending.pop() {
                let (packages, includes) = deps::requirements(&text);
                all.extend(packages);
                let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                for include in includes.into_iter().filter(|_| depth < 4) {
                    let Some(included) = clean(&join(dir, &include)) else { continue };
                    if read.len() >= 64 || read.contains(&included) {
                        continue;
                    }
                    read.push(included.clone());
                    if let Some(text) = context.read(&included) {
                        pending.push((included, text, depth + 1));
                    }
                }
            }
            all.sort_unstable();
            all.dedup();
            all
        }
        Kind::Conda => deps::conda(&text),
        Kind::Pyproject => deps::pyproject(&text).unwrap_or_default(),
    })
}

/// The directories a program named without a `/` is looked for in.
const PATH_DIRS: [&str; 5] = ["/usr/local/bin", "/usr/local/sbin", "/usr/bin", "/bin", "/usr/sbin"];

/// The scripts a start command names (`python app.py`, `/entrypoint.sh`,
/// `entrypoint.sh` on the `PATH`, `uvicorn app.main:api`, `python -m app`),
/// as image paths resolved against `workdir`, each with whether it is
/// certainly a file the command runs (a guess, such as a module that may be
/// installed rather than copied, is no gap when it is not found).
pub fn start_scripts(words: &[String], workdir: &str) -> Vec<(String, bool)> {
    let mut scripts = Vec::new();
    let script_like = [".py", ".sh", ".r", ".bash", ".jl", ".pl", ".rb"];
    // A Python name: `app.main`, not `0.0.0.0`.
    let is_name = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|part| {
                part.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
    };
    let mut words_iter = words.iter().enumerate().peekable();
    while let Some((at, word)) = words_iter.next() {
        let lower = word.to_ascii_lowercase();
        if word == "-m" {
            if let Some((_, module)) = words_iter.next() {
                let path = module.replace('.', "/");
                scripts.push((resolve(workdir, &format!("{path}.py")), false));
                scripts.push((resolve(workdir, &format!("{path}/__main__.py")), false));
            }
        } else if at == 0 && !word.contains('/') {
            // A program named alone is looked for on the PATH, not here.
            scripts.extend(PATH_DIRS.iter().map(|dir| (format!("{dir}/{word}"), false)));
        } else if script_like.iter().any(|e| lower.ends_with(e)) && !word.starts_with('-') {
            scripts.push((resolve(workdir, word), true));
        } else if let Some((module, attr)) = word.split_once(':') {
            // `uvicorn app.main:api`.
            if is_name(module) && is_name(attr) {
                scripts.push((resolve(workdir, &format!("{}.py", module.replace('.', "/"))), false));
            }
        } else if at == 0 && (word.starts_with('/') || word.starts_with("./")) {
            // A path without a script's extension runs only as the program
            // (`/entrypoint`), not as an argument (`[ -f /app/local.env ]`).
            scripts.push((resolve(workdir, word), true));
        }
    }
    scripts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn install_commands_name_packages_and_files() {
        assert_eq!(
            command_packages(&words("pip install --no-cache-dir -r req.txt -i https://x torch transformers==4")),
            ["torch", "transformers"]
        );
        assert_eq!(command_packages(&words("conda install -y -c conda-forge conda-forge::spacy")), ["spacy"]);
        assert_eq!(command_packages(&words("/opt/conda/bin/pip install nltk")), ["nltk"]);
        assert_eq!(command_packages(&words("pip install . /wheels/*.whl $PKG")), Vec::<String>::new());
        assert_eq!(
            command_packages(&words(
                "pip install -e ./transformers[dev-torch] git+https://github.com/facebookresearch/detectron2.git@v0.6 \
                 /w/torch-2.3.0-cp311-linux_x86_64.whl https://x/spacy-3.7.5.tar.gz git+https://h/r#egg=My_Pkg"
            )),
            ["transformers", "detectron2", "torch", "spacy", "my-pkg"]
        );
        let files = |s: &str| command_files(&words(s)).into_iter().map(|(f, _)| f).collect::<Vec<_>>();
        assert_eq!(
            files("pip install -r requirements.txt --requirement=b.txt -rc.txt"),
            ["requirements.txt", "b.txt", "c.txt"]
        );
        assert_eq!(files("conda env create -f environment.yml"), ["environment.yml"]);
        assert_eq!(command_files(&words("mamba install --file pkgs.txt"))[0].1, Kind::Requirements);
        assert_eq!(files("pip install -e .[dev]"), ["./pyproject.toml"]);
        assert_eq!(files("pip install /app"), ["/app/pyproject.toml"]);
        assert_eq!(files("poetry install --no-root"), ["pyproject.toml"]);
        assert_eq!(files("uv pip sync requirements.lock"), ["requirements.lock"]);
        assert_eq!(files("pip install -c constraints.txt numpy"), Vec::<String>::new());
    }

    #[test]
    fn start_commands_name_their_scripts() {
        let paths = |s: &str, dir: &str| start_scripts(&words(s), dir).into_iter().map(|(p, _)| p).collect::<Vec<_>>();
        assert!(paths("python app.py --port 8080", "/app").contains(&"/app/app.py".to_owned()));
        assert_eq!(start_scripts(&words("/entrypoint.sh"), "/"), [("/entrypoint.sh".to_owned(), true)]);
        assert!(paths("gunicorn -b 0.0.0.0:8000 api.main:app", "/srv").ends_with(&["/srv/api/main.py".to_owned()]));
        assert!(
            paths("python -m serve", "/w").ends_with(&["/w/serve.py".to_owned(), "/w/serve/__main__.py".to_owned()])
        );
        assert!(paths("entrypoint.sh", "/app").contains(&"/usr/local/bin/entrypoint.sh".to_owned()));
        assert!(!paths("entrypoint.sh", "/app").contains(&"/app/entrypoint.sh".to_owned()));
        assert!(start_scripts(&words("bash -c echo"), "/").iter().all(|(_, certain)| !certain));
    }
}
