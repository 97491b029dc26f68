//! The build context: the files a build sends (`.dockerignore` applied), so
//! that rules can look at what `COPY . .` copies and read the requirement
//! files and start scripts a Dockerfile names.
//!
//! The walk does not follow symbolic links (a build sends them as links) and
//! stops after [`MAX_FILES`] files; a file is read only when it is a regular
//! file of at most [`MAX_READ`] bytes.

use std::io::Read as _;
use std::path::{Component, Path, PathBuf};

/// The most files listed; a larger context is checked in part, and says so.
pub const MAX_FILES: usize = 200_000;

/// The largest file read (requirement files and scripts are far smaller).
pub const MAX_READ: u64 = 1 << 20;

/// A build context on disk.
#[derive(Debug)]
pub struct BuildContext {
    root: PathBuf,
    /// Every file the build sends, relative, `/`-separated, sorted.
    files: Vec<String>,
    /// Whether the walk stopped at [`MAX_FILES`].
    truncated: bool,
    /// The ignore file applied, by name.
    ignore_file: Option<String>,
}

impl BuildContext {
    /// Lists the context at `root`: its `.dockerignore`, or the
    /// `<dockerfile name>.dockerignore` that BuildKit prefers when the
    /// Dockerfile is in the context's root, applied.
    pub fn open(root: &Path, dockerfile: Option<&Path>) -> std::io::Result<BuildContext> {
        let root = root.to_path_buf();
        std::fs::read_dir(&root)?;
        let mut names = Vec::new();
        if let Some(name) = dockerfile.and_then(Path::file_name).and_then(|n| n.to_str()) {
            names.push(format!("{name}.dockerignore"));
        }
        names.push(".dockerignore".to_owned());
        let mut ignore = Ignore::default();
        let mut ignore_file = None;
        for name in names {
            if let Some(text) = read_small(&root.join(&name)) {
                ignore = Ignore::parse(&text);
                ignore_file = Some(name);
                break;
            }
        }
        let mut context = BuildContext { root, files: Vec::new(), truncated: false, ignore_file };
        context.walk(&ignore);
        Ok(context)
    }

    fn walk(&mut self, ignore: &Ignore) {
        let mut pending = vec![String::new()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(self.root.join(&dir)) else { continue };
            for entry in entries.flatten() {
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
                let path = if dir.is_empty() { name } else { format!("{dir}/{name}") };
                let Ok(kind) = entry.file_type() else { continue };
                if kind.is_dir() {
                    // A directory excluded with no exception under it is not sent at all.
                    if !ignore.prunes(&path) {
                        pending.push(path);
                    }
                } else if !ignore.excludes(&path) {
                    if self.files.len() == MAX_FILES {
                        self.truncated = true;
                        return;
                    }
                    self.files.push(path);
                }
            }
        }
        self.files.sort_unstable();
    }

    /// The files the build sends, relative and sorted.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Whether the walk stopped at [`MAX_FILES`].
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The ignore file applied, if any.
    pub fn ignore_file(&self) -> Option<&str> {
        self.ignore_file.as_deref()
    }

    /// Whether the build sends `path` (a file).
    pub fn has(&self, path: &str) -> bool {
        self.files.binary_search_by(|f| f.as_str().cmp(path)).is_ok()
    }

    /// The files the source of a `COPY`/`ADD` names: the file, everything
    /// under a directory, or what a wildcard matches (and what is under the
    /// directories it matches).
    pub fn sources(&self, source: &str) -> Vec<&str> {
        let Some(source) = clean(source) else { return Vec::new() };
        if source.is_empty() {
            return self.files.iter().map(String::as_str).collect();
        }
        let pattern: Vec<&str> = source.split('/').collect();
        let wildcard = source.contains(['*', '?', '[']);
        self.files
            .iter()
            .filter(|file| {
                let parts: Vec<&str> = file.split('/').collect();
                if wildcard {
                    // The pattern names a file, or a directory the file is under.
                    parts.len() >= pattern.len()
                        && pattern.iter().zip(&parts).all(|(p, f)| segment_matches(p.as_bytes(), f.as_bytes()))
                } else {
                    parts.len() >= pattern.len() && pattern.iter().zip(&parts).all(|(p, f)| p == f)
                }
            })
            .map(String::as_str)
            .collect()
    }

    /// The text of a file the build sends (`None` when it does not, or it is
    /// not a regular file, or larger than [`MAX_READ`]); bytes that are not
    /// UTF-8 read as U+FFFD.
    pub fn read(&self, path: &str) -> Option<String> {
        let path = clean(path)?;
        if !self.has(&path) {
            return None;
        }
        read_small(&self.root.join(path))
    }
}

/// A context-relative path without `.`, leading `/` or trailing `/`; `None`
/// when it climbs out (`..` past the root).
pub fn clean(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(parts.join("/"))
}

fn read_small(path: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_READ {
        return None;
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path).ok()?.take(MAX_READ).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// `.dockerignore` patterns, as Docker reads them: one per line, `#`
/// comments, `!` for exceptions, paths cleaned and relative to the root;
/// the last pattern that matches a path or any directory above it decides.
#[derive(Debug, Default)]
pub struct Ignore {
    patterns: Vec<(bool, Vec<String>)>,
}

impl Ignore {
    /// Reads a `.dockerignore`.
    pub fn parse(text: &str) -> Ignore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let Some(pattern) = clean(pattern) else { continue };
            if pattern.is_empty() {
                continue;
            }
            patterns.push((exception, pattern.split('/').map(str::to_owned).collect()));
        }
        Ignore { patterns }
    }

    /// Whether the build leaves `path` out.
    pub fn excludes(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        let mut excluded = false;
        for (exception, pattern) in &self.patterns {
            // A pattern matches the path or a directory above it.
            let matched = (1..=parts.len()).any(|n| path_matches(pattern, &parts[..n]));
            if matched {
                excluded = !exception;
            }
        }
        excluded
    }

    /// Whether nothing under the directory `path` can be sent: it is
    /// excluded and no exception could bring a file under it back.
    fn prunes(&self, path: &str) -> bool {
        self.excludes(path) && !self.patterns.iter().any(|(exception, _)| *exception)
    }
}

/// Whether a pattern's segments match a path's: `**` is any number of
/// segments, the others are matched as shell wildcards within a segment.
fn path_matches(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => (0..=path.len()).any(|skip| path_matches(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((segment, path_rest)) => {
                segment_matches(first.as_bytes(), segment.as_bytes()) && path_matches(rest, path_rest)
            }
            None => false,
        },
    }
}

/// Whether `name` matches the shell wildcard `pattern` (`*` here also
/// matches `/`: for names that have none, and for image names).
pub fn wildcard_matches(pattern: &str, name: &str) -> bool {
    segment_matches(pattern.as_bytes(), name.as_bytes())
}

/// Go's `filepath.Match` within one segment: `*`, `?`, `[...]` (with `^`
/// or `!` to negate, and ranges), and `\` to escape.
fn segment_matches(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| segment_matches(rest, &name[skip..])),
        Some((b'?', rest)) => !name.is_empty() && segment_matches(rest, &name[1..]),
        Some((b'[', rest)) => {
            let Some((&c, name_rest)) = name.split_first() else { return false };
            let Some(close) = rest.iter().skip(1).position(|&b| b == b']').map(|p| p + 1) else {
                return false;
            };
            let (class, after) = (&rest[..close], &rest[close + 1..]);
            let (negated, class) = match class.split_first() {
                Some((b'^' | b'!', class)) => (true, class),
                _ => (false, class),
            };
            let mut found = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    found |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    found |= class[i] == c;
                    i += 1;
                }
            }
            found != negated && segment_matches(after, name_rest)
        }
        Some((b'\\', rest)) if !rest.is_empty() => {
            name.first() == rest.first() && segment_matches(&rest[1..], &name[1..])
        }
        Some((&p, rest)) => name.first() == Some(&p) && segment_matches(rest, &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_patterns_match_as_docker_does() {
        let ignore = Ignore::parse("# comment\n*.csv\n/data\n**/secret*\n!data/README.md\nnot[0-9].txt\n\\#x\n");
        for excluded in ["a.csv", "data/x.parquet", "data/sub/y", "deep/er/secret.key", "secret", "not5.txt", "#x"] {
            assert!(ignore.excludes(excluded), "{excluded}");
        }
        for sent in ["sub/a.csv", "data/README.md", "notes.txt", "notx.txt", "app.py"] {
            assert!(!ignore.excludes(sent), "{sent}");
        }
        // The last match decides: an exception then a broader exclusion.
        assert!(Ignore::parse("!keep.csv\n*.csv\n").excludes("keep.csv"));
        assert!(!Ignore::parse("*\n!src\n").excludes("src/main.py"));
        assert!(Ignore::parse("*\n!src\n").excludes("data.csv"));
        // Only `..` past the root is dropped.
        assert_eq!(clean("./a/../b/").as_deref(), Some("b"));
        assert_eq!(clean("../x"), None);
    }

    #[test]
    fn copy_sources_name_files_directories_and_wildcards() {
        let dir = std::env::temp_dir().join(format!("ces-lint-context-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for file in ["app.py", "data/a.csv", "data/b/c.parquet", "models/m.pt", "node_modules/x.js", "x.csv"] {
            let path = dir.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x").unwrap();
        }
        std::fs::write(dir.join(".dockerignore"), "node_modules\nx.csv\n").unwrap();
        let context = BuildContext::open(&dir, None).unwrap();
        assert_eq!(context.ignore_file(), Some(".dockerignore"));
        assert!(!context.has("node_modules/x.js") && !context.has("x.csv") && context.has(".dockerignore"));
        assert_eq!(context.sources("./data/"), ["data/a.csv", "data/b/c.parquet"]);
        assert_eq!(context.sources("*.py"), ["app.py"]);
        assert_eq!(context.sources("d*"), ["data/a.csv", "data/b/c.parquet"]);
        assert_eq!(context.sources(".").len(), 5);
        assert_eq!(context.read("app.py").as_deref(), Some("x"));
        assert_eq!(context.read("x.csv"), None);
        assert_eq!(context.read("../etc/passwd"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
