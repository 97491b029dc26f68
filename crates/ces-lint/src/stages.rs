//! Build stages: each `FROM` with its base image resolved (global `ARG`
//! defaults substituted), the stage it builds on when it names an earlier one,
//! and its instructions.

use crate::parse::{Arguments, Dockerfile, Instruction, unquote};

/// One build stage.
#[derive(Debug)]
pub struct Stage<'a> {
    /// The `FROM` instruction.
    pub from: &'a Instruction,
    /// The base as written (`${BASE}`).
    pub written: String,
    /// The base with global `ARG` defaults substituted; `None` when a
    /// variable has no default.
    pub base: Option<String>,
    /// The `--platform` flag, substituted; `None` when absent or unresolved.
    pub platform: Option<String>,
    /// The stage's name (`AS name`), lower-cased.
    pub name: Option<String>,
    /// The earlier stage this one builds on, by index.
    pub parent: Option<usize>,
    /// The instructions after `FROM`, up to the next `FROM`.
    pub instructions: &'a [Instruction],
}

impl Stage<'_> {
    /// Whether the base is an image from a registry (not `scratch`, not an
    /// earlier stage, not unresolved).
    pub fn external_base(&self) -> Option<&str> {
        let base = self.base.as_deref()?;
        (self.parent.is_none() && !base.eq_ignore_ascii_case("scratch")).then_some(base)
    }
}

/// The build arguments `FROM` can use: BuildKit's target platform ones,
/// then the global `ARG` defaults.
pub fn global_args(file: &Dockerfile) -> Vec<(String, String)> {
    // BuildKit's target platform arguments, for the platform the TRE runs:
    // `FROM runtime-$TARGETARCH` is the amd64 stage. (The build machine's,
    // `$BUILDPLATFORM`, is not known.)
    let mut globals: Vec<(String, String)> =
        [("TARGETPLATFORM", "linux/amd64"), ("TARGETOS", "linux"), ("TARGETARCH", "amd64"), ("TARGETVARIANT", "")]
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .to_vec();
    for arg in file.instructions.iter().take_while(|i| i.keyword == "ARG") {
        for (name, value) in arg_defaults(arg) {
            // A default may use earlier ARGs; one that cannot be resolved leaves the name unset.
            if let Some(value) = expand(&value, &globals) {
                globals.push((name, value));
            }
        }
    }
    globals
}

/// Splits a Dockerfile into its stages.
pub fn stages(file: &Dockerfile) -> Vec<Stage<'_>> {
    let globals = global_args(file);
    let starts: Vec<usize> =
        file.instructions.iter().enumerate().filter(|(_, i)| i.keyword == "FROM").map(|(n, _)| n).collect();
    let mut stages: Vec<Stage<'_>> = Vec::new();
    for (k, &start) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(file.instructions.len());
        let from = &file.instructions[start];
        let words = from.words();
        let written = words.first().cloned().unwrap_or_default();
        let name = match words.as_slice() {
            [_, r#as, name, ..] if r#as.eq_ignore_ascii_case("as") => Some(name.to_ascii_lowercase()),
            _ => None,
        };
        let base = expand(&written, &globals);
        let platform = from.flag("platform").and_then(|f| f.value.as_deref()).and_then(|p| expand(p, &globals));
        let parent = base.as_deref().and_then(|b| {
            let b = b.to_ascii_lowercase();
            stages
                .iter()
                .position(|s| s.name.as_deref() == Some(b.as_str()))
                .or_else(|| b.parse::<usize>().ok().filter(|n| *n < stages.len()))
        });
        stages.push(Stage {
            from,
            written,
            base,
            platform,
            name,
            parent,
            instructions: &file.instructions[start + 1..end],
        });
    }
    stages
}

/// The stage a build makes: the one named `target` (as `docker build
/// --target` picks it), else the last; `None` when no stage has that name.
pub fn target(stages: &[Stage<'_>], target: Option<&str>) -> Option<usize> {
    match target {
        None => stages.len().checked_sub(1),
        Some(name) => {
            let name = name.to_ascii_lowercase();
            stages.iter().position(|s| s.name.as_deref() == Some(name.as_str()))
        }
    }
}

/// The final stage and the stages it builds on, final first.
pub fn final_chain<'s, 'a>(stages: &'s [Stage<'a>]) -> Vec<&'s Stage<'a>> {
    chain_of(stages, stages.len().checked_sub(1))
}

/// The stage `last` and the stages it builds on, `last` first.
pub fn chain_of<'s, 'a>(stages: &'s [Stage<'a>], last: Option<usize>) -> Vec<&'s Stage<'a>> {
    let mut chain = Vec::new();
    let mut next = last;
    // A parent is always an earlier stage, so this ends.
    while let Some(n) = next {
        chain.push(&stages[n]);
        next = stages[n].parent;
    }
    chain
}

/// Which stages a build of stage `last` builds: its chain, and the stages
/// those copy from (`COPY --from`) or mount (`RUN --mount=from=`), and so on.
/// BuildKit skips the others, so no rule looks at them.
pub fn needed(stages: &[Stage<'_>], last: usize, globals: &[(String, String)]) -> Vec<bool> {
    let mut needed = vec![false; stages.len()];
    let mut pending = vec![last];
    while let Some(n) = pending.pop() {
        if needed[n] {
            continue;
        }
        needed[n] = true;
        pending.extend(stages[n].parent);
        for instruction in stages[n].instructions {
            let mut names: Vec<String> = instruction.flag("from").and_then(|f| f.value.clone()).into_iter().collect();
            for mount in instruction.flags.iter().filter(|f| f.name == "mount") {
                let value = mount.value.as_deref().unwrap_or_default();
                names.extend(value.split(',').filter_map(|kv| kv.strip_prefix("from=")).map(str::to_owned));
            }
            for name in names {
                // `--from=$BUILDER`: the global ARG's default.
                let name = expand(&name, globals).unwrap_or(name).to_ascii_lowercase();
                pending.extend(stage_named(&stages[..n], &name));
            }
        }
    }
    needed
}

/// The stage among `earlier` that `--from=name` means: by its name (any
/// case) or by its index.
pub fn stage_named(earlier: &[Stage<'_>], name: &str) -> Option<usize> {
    let name = name.to_ascii_lowercase();
    earlier
        .iter()
        .position(|s| s.name.as_deref() == Some(name.as_str()))
        .or_else(|| name.parse::<usize>().ok().filter(|i| *i < earlier.len()))
}

/// `ARG A=1 B` as `[(A, 1)]`: only names with defaults.
fn arg_defaults(arg: &Instruction) -> Vec<(String, String)> {
    let Arguments::Shell(text) = &arg.args else { return Vec::new() };
    text.split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(name, value)| (name.to_owned(), unquote(value)))
        .collect()
}

/// Substitutes `$NAME`, `${NAME}`, `${NAME:-default}` and `${NAME:+alt}`;
/// `None` when a variable has no value and no default.
pub fn expand(text: &str, vars: &[(String, String)]) -> Option<String> {
    let lookup = |name: &str| vars.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(braced) = rest.strip_prefix('{') {
            let close = braced.find('}')?;
            let inner = &braced[..close];
            rest = &braced[close + 1..];
            let (name, op, word) = match inner.find([':', '-', '+']) {
                Some(p) => {
                    let op_len = if inner[p..].starts_with(":-") || inner[p..].starts_with(":+") { 2 } else { 1 };
                    (&inner[..p], &inner[p..p + op_len], &inner[p + op_len..])
                }
                None => (inner, "", ""),
            };
            let value = lookup(name).filter(|v| !v.is_empty() || op == "-");
            match (op, value) {
                (":+" | "+", Some(_)) => out.push_str(word),
                (":+" | "+", None) => {}
                (":-" | "-", None) => out.push_str(word),
                (_, Some(v)) => out.push_str(v),
                (_, None) => return None,
            }
        } else {
            let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            if len == 0 {
                out.push('$');
                continue;
            }
            out.push_str(lookup(&rest[..len])?);
            rest = &rest[len..];
        }
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    #[test]
    fn expands_variables_like_docker() {
        let v = vars(&[("BASE", "python"), ("TAG", "3.12"), ("EMPTY", "")]);
        assert_eq!(expand("$BASE:${TAG}", &v).as_deref(), Some("python:3.12"));
        assert_eq!(expand("${NOPE:-x}/${EMPTY:-y}/${TAG:+z}", &v).as_deref(), Some("x/y/z"));
        assert_eq!(expand("a$", &v).as_deref(), Some("a$"));
        assert_eq!(expand("$NOPE", &v), None);
    }

    #[test]
    fn arg_defaults_substitute_in_from_and_stages_link_by_name() {
        let file = parse(
            "ARG REG=ghcr.io\nARG BASE=\"${REG}/org/py:1\" OTHER\nFROM $BASE AS Build\nRUN make\n\
             from build\nUSER 1000\nFROM ${MISSING}\n",
        )
        .unwrap();
        let stages = stages(&file);
        assert_eq!(stages.len(), 3);
        assert_eq!((stages[0].base.as_deref(), stages[0].name.as_deref()), (Some("ghcr.io/org/py:1"), Some("build")));
        assert_eq!(stages[0].instructions.len(), 1);
        assert_eq!((stages[1].parent, stages[1].external_base()), (Some(0), None));
        assert_eq!((stages[2].base.as_deref(), stages[2].written.as_str()), (None, "${MISSING}"));
        let file = parse("FROM a AS one\nFROM one AS two\nFROM two\n").unwrap();
        let stages = super::stages(&file);
        let chain: Vec<usize> = final_chain(&stages).iter().map(|s| s.from.line).collect();
        assert_eq!(chain, [3, 2, 1]);
    }
}
