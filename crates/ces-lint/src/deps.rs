//! The packages a requirement file installs: pip's `requirements.txt`,
//! conda's `environment.yml` (and its `pip:` list), and `pyproject.toml`
//! (PEP 621 `dependencies` and Poetry's). Names are normalised as pip
//! compares them: lower case, `_` and `.` as `-`.

/// The kinds of file, by how they are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `requirements.txt`: one requirement per line, `-r` includes.
    Requirements,
    /// `environment.yml`: the `dependencies:` list (and `pip:` under it).
    Conda,
    /// `pyproject.toml`.
    Pyproject,
}

impl Kind {
    /// The kind of a file by its name; `None` for files that are not
    /// requirement files.
    pub fn of(path: &str) -> Option<Kind> {
        let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
        if name == "pyproject.toml" {
            Some(Kind::Pyproject)
        } else if (name.starts_with("environment") || name.starts_with("conda") || name.ends_with("environment.yml"))
            && (name.ends_with(".yml") || name.ends_with(".yaml"))
        {
            Some(Kind::Conda)
        } else if name.ends_with(".txt") && (name.starts_with("requirements") || name.contains("requirements")) {
            Some(Kind::Requirements)
        } else {
            None
        }
    }
}

/// pip's form of a package name.
pub fn normalise(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace(['_', '.'], "-")
}

/// The name at the start of a requirement (`torch>=2; python_version>"3"`,
/// `transformers[torch]==4.4`, `pkg @ https://...`).
fn requirement_name(text: &str) -> Option<String> {
    let text = text.trim();
    let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))).unwrap_or(text.len());
    (end > 0).then(|| normalise(&text[..end]))
}

/// The packages of a `requirements.txt`, and the files it includes with
/// `-r` (relative to its own directory, as pip reads them).
pub fn requirements(text: &str) -> (Vec<String>, Vec<String>) {
    let mut packages = Vec::new();
    let mut includes = Vec::new();
    for line in text.lines() {
        // A comment starts at `#` after whitespace (or at the start).
        let line = match line.find(" #").or_else(|| line.starts_with('#').then_some(0)) {
            Some(at) => &line[..at],
            None => line,
        };
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("-r").or_else(|| line.strip_prefix("--requirement")) {
            includes.push(rest.trim_start_matches('=').trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("-e").or_else(|| line.strip_prefix("--editable")) {
            // `-e git+https://...#egg=name`: the egg names it.
            if let Some(egg) = rest.split("#egg=").nth(1) {
                packages.extend(requirement_name(egg));
            }
        } else if !line.starts_with('-') && !line.contains("://") {
            packages.extend(requirement_name(line));
        } else if let Some(egg) = line.split("#egg=").nth(1) {
            // `git+https://host/repo#egg=name`.
            packages.extend(requirement_name(egg));
        } else if let Some((name, _)) = line.split_once('@').filter(|(name, _)| !name.contains("://")) {
            // `name @ https://...` and `name@https://...`.
            packages.extend(requirement_name(name));
        }
    }
    (packages, includes)
}

/// The packages of a conda environment file: the items of its top-level
/// `dependencies:` list and of the `pip:` list inside it (`conda-forge::x`,
/// `x=1.2`, `x>=1`).
pub fn conda(text: &str) -> Vec<String> {
    let mut packages = Vec::new();
    let mut in_dependencies = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if !line.starts_with([' ', '\t', '-']) {
            // A top-level key; `dependencies: [a, b]` lists them in place.
            in_dependencies = trimmed.starts_with("dependencies:");
            if let Some(list) = trimmed.strip_prefix("dependencies:").map(str::trim).and_then(|l| l.strip_prefix('[')) {
                let list = list.trim_end_matches(']');
                packages.extend(list.split(',').filter_map(|item| {
                    let item = item.trim().trim_matches(['"', '\'']);
                    requirement_name(item.rsplit("::").next().unwrap_or(item))
                }));
            }
            continue;
        }
        let Some(item) = trimmed.strip_prefix('-').map(str::trim) else { continue };
        if !in_dependencies || item.starts_with("pip:") || item.is_empty() {
            continue;
        }
        let item = item.trim_matches(['"', '\'']);
        let item = item.rsplit("::").next().unwrap_or(item);
        if item.starts_with('-') {
            continue;
        }
        packages.extend(requirement_name(item));
    }
    packages
}

/// The packages of a `pyproject.toml`: `[project] dependencies` and
/// `[tool.poetry.dependencies]` (not optional groups: they are installed
/// only when asked for). `None` when it is not TOML.
pub fn pyproject(text: &str) -> Option<Vec<String>> {
    let doc: toml::Table = text.parse().ok()?;
    let mut packages = Vec::new();
    let project = doc.get("project").and_then(|p| p.get("dependencies")).and_then(|d| d.as_array());
    for dependency in project.into_iter().flatten() {
        packages.extend(dependency.as_str().and_then(requirement_name));
    }
    let poetry =
        doc.get("tool").and_then(|t| t.get("poetry")).and_then(|p| p.get("dependencies")).and_then(|d| d.as_table());
    for name in poetry.into_iter().flat_map(|t| t.keys()) {
        if name != "python" {
            packages.push(normalise(name));
        }
    }
    Some(packages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_files_of_every_kind() {
        let (packages, includes) = requirements(
            "# models\nTransformers[torch]==4.44 # pinned\nsentence_transformers>=2\n-r base.txt\n\
             --requirement=dev.txt\n--index-url https://x\n-e git+https://github.com/a/b#egg=My.Pkg\n\
             spacy @ https://files/spacy.whl\ntorch ; python_version > '3'\nhttps://x/y.whl\n\
             nltk@https://x/nltk.tar.gz\ngit+https://github.com/a/b#egg=diffusers\n",
        );
        assert_eq!(
            packages,
            ["transformers", "sentence-transformers", "my-pkg", "spacy", "torch", "nltk", "diffusers"]
        );
        assert_eq!(conda("name: x\ndependencies: [python=3.11, \"conda-forge::spacy\"]\n"), ["python", "spacy"]);
        assert_eq!(includes, ["base.txt", "dev.txt"]);
        let env = "name: x\nchannels:\n  - conda-forge\n  - pytorch\ndependencies:\n  - python=3.11\n  \
                   - conda-forge::nltk>=3\n  - pip\n  - pip:\n      - huggingface_hub==0.24\n      - -r extra.txt\n\
                   variables:\n  - notapackage\n";
        assert_eq!(conda(env), ["python", "nltk", "pip", "huggingface-hub"]);
        let toml = "[project]\nname='x'\ndependencies = [\"Datasets>=2\", \"numpy\"]\n\
                    [project.optional-dependencies]\nml = [\"torch\"]\n\
                    [tool.poetry.dependencies]\npython = '^3.11'\nspacy = '^3'\n";
        assert_eq!(pyproject(toml).unwrap(), ["datasets", "numpy", "spacy"]);
        assert_eq!(pyproject("not = [toml"), None);
        assert_eq!(Kind::of("app/requirements-gpu.txt"), Some(Kind::Requirements));
        assert_eq!(Kind::of("environment.yaml"), Some(Kind::Conda));
        assert_eq!(Kind::of("src/pyproject.toml"), Some(Kind::Pyproject));
        assert_eq!(Kind::of("notes.txt"), None);
    }
}
