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

/// The most entries (files and directories, sent or left out) looked at.
pub const MAX_ENTRIES: usize = 1_000_000;

/// The most `.dockerignore` patterns read.
pub const MAX_PATTERNS: usize = 4096;

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
    /// Lists the context at `root` with its ignore file applied: the
    /// `<Dockerfile>.dockerignore` next to the Dockerfile, which BuildKit
    /// prefers, else the context's `.dockerignore`.
    pub fn open(root: &Path, dockerfile: Option<&Path>) -> std::io::Result<BuildContext> {
        let root = root.to_path_buf();
        std::fs::read_dir(&root)?;
        let mut candidates: Vec<(PathBuf, String)> = Vec::new();
        if let Some(name) = dockerfile.and_then(Path::file_name).and_then(|n| n.to_str()) {
            let path = dockerfile.map(|d| d.with_file_name(format!("{name}.dockerignore"))).unwrap_or_default();
            candidates.push((path, format!("{name}.dockerignore")));
        }
        candidates.push((root.join(".dockerignore"), ".dockerignore".to_owned()));
        let mut ignore = Ignore::default();
        let mut ignore_file = None;
        for (path, name) in candidates {
            if let Some(text) = read_small(&path) {
                ignore = Ignore::parse(&text);
                ignore_file = Some(name);
                break;
            }
        }
        let truncated = ignore.truncated;
        let mut context = BuildContext { root, files: Vec::new(), truncated, ignore_file };
        context.walk(&ignore);
        Ok(context)
    }

    fn walk(&mut self, ignore: &Ignore) {
        let mut pending = vec![String::new()];
        // Every entry looked at counts, sent or not: excluded trees that an
        // exception keeps from being pruned cost time too.
        let mut seen = 0;
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(self.root.join(&dir)) else { continue };
            for entry in entries.flatten() {
                seen += 1;
                if seen > MAX_ENTRIES || self.files.len() == MAX_FILES {
                    self.truncated = true;
                    pending.clear();
                    break;
                }
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
                let path = if dir.is_empty() { name } else { format!("{dir}/{name}") };
                let Ok(kind) = entry.file_type() else { continue };
                if kind.is_dir() {
                    // A directory excluded with no exception under it is not sent at all.
                    if !ignore.prunes(&path) {
                        pending.push(path);
                    }
                } else if !ignore.excludes(&path) {
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
        let compiled: Vec<Vec<Token>> = pattern.iter().map(|p| compile(p)).collect();
        let wildcard = source.contains(['*', '?', '[']);
        self.files
            .iter()
            .filter(|file| {
                let parts: Vec<&str> = file.split('/').collect();
                // The source names the file, or a directory the file is under.
                parts.len() >= pattern.len()
                    && if wildcard {
                        compiled.iter().zip(&parts).all(|(p, f)| tokens_match(p, &f.chars().collect::<Vec<_>>()))
                    } else {
                        pattern.iter().zip(&parts).all(|(p, f)| p == f)
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
/// comments (at the line's very start), `!` for exceptions, paths cleaned
/// and relative to the root; the last pattern that matches a path or any
/// directory above it decides.
#[derive(Debug, Default)]
pub struct Ignore {
    patterns: Vec<(bool, Vec<Segment>)>,
    /// Whether patterns past [`MAX_PATTERNS`] were left unread.
    truncated: bool,
}

/// A pattern's segment between `/`s.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    /// `**`: any number of segments.
    Any,
    /// A shell wildcard within one segment.
    Name(Vec<Token>),
}

/// A shell wildcard's parts.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// `*`: any text.
    Star,
    /// `?`: one character.
    One,
    /// `[...]`, `[^...]`: one character in (or not in) the ranges.
    Class(bool, Vec<(char, char)>),
    /// A character as it is (also `\x`).
    Char(char),
}

impl Ignore {
    /// Reads a `.dockerignore`.
    pub fn parse(text: &str) -> Ignore {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        let mut truncated = false;
        for line in text.lines() {
            // As Docker: a comment is a line that starts with `#`, before trimming.
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim();
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let Some(pattern) = clean(pattern) else { continue };
            if pattern.is_empty() {
                continue;
            }
            let mut segments: Vec<Segment> = Vec::new();
            for part in pattern.split('/') {
                let segment = if part == "**" { Segment::Any } else { Segment::Name(compile(part)) };
                // `**/**` is `**`.
                if !(segment == Segment::Any && segments.last() == Some(&Segment::Any)) {
                    segments.push(segment);
                }
            }
            if patterns.len() == MAX_PATTERNS {
                // Past what any real .dockerignore has: the rest is not read.
                truncated = true;
                break;
            }
            patterns.push((exception, segments));
        }
        Ignore { patterns, truncated }
    }

    /// Whether the build leaves `path` out.
    pub fn excludes(&self, path: &str) -> bool {
        let parts: Vec<Vec<char>> = path.split('/').map(|p| p.chars().collect()).collect();
        let mut excluded = false;
        for (exception, pattern) in &self.patterns {
            // A pattern matches the path or a directory above it.
            if (1..=parts.len()).any(|n| path_matches(pattern, &parts[..n])) {
                excluded = !exception;
            }
        }
        excluded
    }

    /// Whether nothing under the directory `path` can be sent: it is
    /// excluded and no exception could bring back a file under it.
    fn prunes(&self, path: &str) -> bool {
        if !self.excludes(path) {
            return false;
        }
        let parts: Vec<Vec<char>> = path.split('/').map(|p| p.chars().collect()).collect();
        !self.patterns.iter().any(|(exception, pattern)| *exception && could_match_under(pattern, &parts))
    }
}

/// Whether `pattern` could match something under the directory `dir`.
fn could_match_under(pattern: &[Segment], dir: &[Vec<char>]) -> bool {
    for (i, part) in dir.iter().enumerate() {
        match pattern.get(i) {
            Some(Segment::Any) => return true,
            Some(Segment::Name(tokens)) if tokens_match(tokens, part) => {}
            _ => return false,
        }
    }
    true
}

/// A shell wildcard compiled: runs of `*` are one, `\x` is `x`, a `[`
/// never closed is itself.
fn compile(pattern: &str) -> Vec<Token> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => {
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
            }
            '?' => tokens.push(Token::One),
            '\\' if i + 1 < chars.len() => {
                i += 1;
                tokens.push(Token::Char(chars[i]));
            }
            '[' => match chars[i + 1..].iter().skip(1).position(|c| *c == ']').map(|p| i + 2 + p) {
                Some(close) => {
                    let mut class = &chars[i + 1..close];
                    // Go's `filepath.Match` negates with `^` only.
                    let negated = class.first() == Some(&'^');
                    if negated {
                        class = &class[1..];
                    }
                    let mut ranges = Vec::new();
                    let mut k = 0;
                    while k < class.len() {
                        if k + 2 < class.len() && class[k + 1] == '-' {
                            ranges.push((class[k], class[k + 2]));
                            k += 3;
                        } else {
                            ranges.push((class[k], class[k]));
                            k += 1;
                        }
                    }
                    tokens.push(Token::Class(negated, ranges));
                    i = close;
                }
                None => tokens.push(Token::Char('[')),
            },
            c => tokens.push(Token::Char(c)),
        }
        i += 1;
    }
    tokens
}

/// Whether `name` matches the wildcard: iterative, backtracking only to the
/// last `*`, so its time is at most the product of the two lengths.
fn tokens_match(tokens: &[Token], name: &[char]) -> bool {
    let one = |token: &Token, c: char| match token {
        Token::One => true,
        Token::Char(t) => *t == c,
        Token::Class(negated, ranges) => ranges.iter().any(|(a, b)| *a <= c && c <= *b) != *negated,
        Token::Star => false,
    };
    let (mut t, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if t < tokens.len() && tokens[t] == Token::Star {
            star = Some((t, n));
            t += 1;
        } else if t < tokens.len() && one(&tokens[t], name[n]) {
            t += 1;
            n += 1;
        } else if let Some((st, sn)) = star {
            // The last `*` takes one more character.
            t = st + 1;
            n = sn + 1;
            star = Some((st, sn + 1));
        } else {
            return false;
        }
    }
    tokens[t..].iter().all(|token| *token == Token::Star)
}

/// Whether a pattern's segments match a path's: `**` is any number of
/// segments (backtracking only to the last `**`, as above).
fn path_matches(pattern: &[Segment], path: &[Vec<char>]) -> bool {
    let (mut s, mut p) = (0, 0);
    let mut any: Option<(usize, usize)> = None;
    while p < path.len() {
        match pattern.get(s) {
            Some(Segment::Any) => {
                any = Some((s, p));
                s += 1;
            }
            Some(Segment::Name(tokens)) if tokens_match(tokens, &path[p]) => {
                s += 1;
                p += 1;
            }
            _ => match any {
                Some((as_, ap)) => {
                    s = as_ + 1;
                    p = ap + 1;
                    any = Some((as_, ap + 1));
                }
                None => return false,
            },
        }
    }
    pattern[s..].iter().all(|segment| *segment == Segment::Any)
}

/// Whether `name` matches the shell wildcard `pattern` (`*` here also
/// matches `/`: for names that have none, and for image names).
pub fn wildcard_matches(pattern: &str, name: &str) -> bool {
    tokens_match(&compile(pattern), &name.chars().collect::<Vec<_>>())
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
        // As Docker: a byte-order mark is not part of the first pattern; a
        // comment starts at the line's start; `[!a]` is `!` or `a`; `?` is
        // one character, not one byte.
        let ignore = Ignore::parse("\u{feff}x.csv\n  # y.csv\n[!a].txt\ncaf?.tsv\n");
        assert!(ignore.excludes("x.csv") && ignore.excludes("# y.csv") && !ignore.excludes("y.csv"));
        assert!(ignore.excludes("!.txt") && ignore.excludes("a.txt") && !ignore.excludes("b.txt"));
        assert!(ignore.excludes("café.tsv") && !ignore.excludes("caf.tsv"));
        assert!(Ignore::parse("[^a].txt").excludes("b.txt") && !Ignore::parse("[^a].txt").excludes("a.txt"));
        // Only `..` past the root is dropped.
        assert_eq!(clean("./a/../b/").as_deref(), Some("b"));
        assert_eq!(clean("../x"), None);
    }

    /// Patterns that take exponential time (or stack) when every `*` and
    /// `**` tries every split: linear-ish here, and answered.
    #[test]
    fn pathological_patterns_are_answered_quickly() {
        let name = "b".repeat(200);
        let stars = format!("{}a", "*".repeat(30));
        assert!(!Ignore::parse(&stars).excludes(&name));
        assert!(!wildcard_matches(&stars, &name));
        let deep: String = (0..30).map(|_| "**/").collect::<String>() + "x";
        let path: String = (0..30).map(|i| format!("d{i}/")).collect::<String>() + "y";
        assert!(!Ignore::parse(&deep).excludes(&path));
        assert!(Ignore::parse(&deep).excludes(&(path.trim_end_matches('y').to_owned() + "x")));
        // 300,000 stars are one star.
        assert!(Ignore::parse(&"*".repeat(300_000)).excludes("anything"));
        assert!(Ignore::parse("**/*.csv").excludes("a/b/c.csv") && Ignore::parse("**/*.csv").excludes("c.csv"));
        assert!(!Ignore::parse("a/**/z").excludes("a/b/c") && Ignore::parse("a/**/z").excludes("a/z"));
    }

    /// A link in the context that points outside it (to a file or a
    /// directory) is listed as the link it is: never entered, never read.
    #[test]
    fn links_out_of_the_context_are_neither_entered_nor_read() {
        let base = std::env::temp_dir().join(format!("ces-lint-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (dir, outside) = (base.join("ctx"), base.join("outside"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(outside.join("data")).unwrap();
        std::fs::write(outside.join("data/cohort.csv"), "secret").unwrap();
        std::fs::write(outside.join("requirements.txt"), "transformers").unwrap();
        std::os::unix::fs::symlink(outside.join("data"), dir.join("data")).unwrap();
        std::os::unix::fs::symlink(outside.join("requirements.txt"), dir.join("requirements.txt")).unwrap();
        let context = BuildContext::open(&dir, None).unwrap();
        assert_eq!(context.files(), ["data", "requirements.txt"], "the links themselves, nothing under them");
        assert_eq!(context.read("requirements.txt"), None);
        assert_eq!(context.read("data/cohort.csv"), None);
        std::fs::remove_dir_all(&base).unwrap();
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
        // An ignore file for one Dockerfile, next to it (not in the context's root), comes first.
        std::fs::create_dir_all(dir.join("docker")).unwrap();
        std::fs::write(dir.join("docker/app.Dockerfile.dockerignore"), "data\n").unwrap();
        let own = BuildContext::open(&dir, Some(&dir.join("docker/app.Dockerfile"))).unwrap();
        assert_eq!(own.ignore_file(), Some("app.Dockerfile.dockerignore"));
        assert!(own.has("x.csv") && !own.has("data/a.csv"));
        std::fs::remove_dir_all(dir.join("docker")).unwrap();
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
