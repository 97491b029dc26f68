//! A Dockerfile parser that keeps what the rules need: parser directives (the
//! escape character), line continuations, comments (and `# ces-lint ignore=`
//! lines), exec (JSON) and shell forms, flags, and heredocs, each instruction
//! with the line it starts on.

/// The instructions Docker knows; any other keyword is a parse error.
const KEYWORDS: [&str; 18] = [
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "MAINTAINER",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
];

/// Instructions that take `--flag[=value]` before their arguments.
const TAKES_FLAGS: [&str; 4] = ["FROM", "RUN", "COPY", "ADD"];

/// Instructions whose arguments may open heredocs.
const TAKES_HEREDOCS: [&str; 3] = ["RUN", "COPY", "ADD"];

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The escape character (`\`, or `` ` `` by the `# escape=` directive).
    pub escape: char,
    /// The instructions, in order.
    pub instructions: Vec<Instruction>,
}

/// One instruction, continuations joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// The line (1-based) the instruction starts on.
    pub line: usize,
    /// The keyword, upper-cased.
    pub keyword: String,
    /// The flags before the arguments (`--platform=...`, `--from=...`, `--mount=...`).
    pub flags: Vec<Flag>,
    /// The arguments.
    pub args: Arguments,
    /// The heredocs the arguments open, in order.
    pub heredocs: Vec<Heredoc>,
    /// Codes that a `# ces-lint ignore=` comment before the instruction silences.
    pub ignores: Vec<String>,
}

/// A `--name[=value]` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// The name, without the dashes.
    pub name: String,
    /// The value after `=`, if any.
    pub value: Option<String>,
}

/// The two forms of arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arguments {
    /// A JSON array: `["python", "app.py"]`.
    Exec(Vec<String>),
    /// Anything else, as written (continuations joined).
    Shell(String),
}

/// A heredoc (`<<EOF` ... `EOF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, without quotes.
    pub delimiter: String,
    /// The line its body starts on.
    pub line: usize,
    /// The body, lines joined with `\n`.
    pub body: String,
}

/// Why a Dockerfile could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// A keyword Docker does not know.
    #[error("unknown instruction {keyword:?}")]
    UnknownInstruction {
        /// The line.
        line: usize,
        /// The keyword as written.
        keyword: String,
    },
    /// An instruction with nothing after its keyword.
    #[error("{keyword} needs arguments")]
    MissingArguments {
        /// The line.
        line: usize,
        /// The keyword.
        keyword: String,
    },
    /// A heredoc whose delimiter never comes.
    #[error("heredoc <<{delimiter} is not closed")]
    UnterminatedHeredoc {
        /// The line of the instruction that opens it.
        line: usize,
        /// The delimiter.
        delimiter: String,
    },
    /// An `# escape=` directive other than `\` or `` ` ``.
    #[error("escape directive {value:?} is not \\ or `")]
    InvalidEscape {
        /// The line.
        line: usize,
        /// The value given.
        value: String,
    },
    /// An instruction other than `ARG` before the first `FROM`.
    #[error("{keyword} before the first FROM")]
    BeforeFrom {
        /// The line.
        line: usize,
        /// The keyword.
        keyword: String,
    },
    /// No `FROM` at all.
    #[error("no FROM instruction")]
    NoFrom {
        /// The last line of the file.
        line: usize,
    },
    /// `--target` names no stage.
    #[error("no stage is named {name:?} (--target)")]
    NoSuchTarget {
        /// The last line of the file.
        line: usize,
        /// The name given.
        name: String,
    },
}

impl ParseError {
    /// The line the error is on.
    pub fn line(&self) -> usize {
        match self {
            ParseError::UnknownInstruction { line, .. }
            | ParseError::MissingArguments { line, .. }
            | ParseError::UnterminatedHeredoc { line, .. }
            | ParseError::InvalidEscape { line, .. }
            | ParseError::BeforeFrom { line, .. }
            | ParseError::NoFrom { line }
            | ParseError::NoSuchTarget { line, .. } => *line,
        }
    }
}

impl Instruction {
    /// Whether the instruction has the flag `name`.
    pub fn flag(&self, name: &str) -> Option<&Flag> {
        self.flags.iter().find(|f| f.name == name)
    }

    /// The words of the arguments: the exec form's elements, or the shell
    /// form split on whitespace with quotes removed.
    pub fn words(&self) -> Vec<String> {
        match &self.args {
            Arguments::Exec(words) => words.clone(),
            Arguments::Shell(text) => text.split_whitespace().map(unquote).collect(),
        }
    }

    /// The command a `RUN` runs: its arguments and its heredocs' bodies.
    pub fn script(&self) -> String {
        let mut text = match &self.args {
            Arguments::Exec(words) => words.join(" "),
            Arguments::Shell(text) => text.clone(),
        };
        for heredoc in &self.heredocs {
            text.push('\n');
            text.push_str(&heredoc.body);
        }
        text
    }
}

/// `"x"` or `'x'` without its quotes.
pub(crate) fn unquote(word: &str) -> String {
    let bytes = word.as_bytes();
    if bytes.len() >= 2 && (bytes[0] == b'"' || bytes[0] == b'\'') && bytes[bytes.len() - 1] == bytes[0] {
        word[1..word.len() - 1].to_owned()
    } else {
        word.to_owned()
    }
}

/// Parses a Dockerfile.
pub fn parse(source: &str) -> Result<Dockerfile, ParseError> {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let lines: Vec<&str> = source.lines().collect();
    let (escape, mut i) = directives(&lines)?;
    let mut instructions = Vec::new();
    let mut ignores = Vec::new();
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if trimmed.is_empty() {
            i += 1;
            continue;
        }
        if trimmed.starts_with('#') {
            ignores.extend(ignore_comment(trimmed));
            i += 1;
            continue;
        }
        let line = i + 1;
        let text = logical_line(&lines, &mut i, escape);
        let text = text.trim();
        let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        let keyword = word.to_ascii_uppercase();
        if !KEYWORDS.contains(&keyword.as_str()) {
            return Err(ParseError::UnknownInstruction { line, keyword: word.to_owned() });
        }
        let mut rest = rest.trim();
        let mut flags = Vec::new();
        if TAKES_FLAGS.contains(&keyword.as_str()) {
            while let Some(flag) = rest.strip_prefix("--") {
                let (word, after) = flag.split_once(char::is_whitespace).unwrap_or((flag, ""));
                let (name, value) = match word.split_once('=') {
                    Some((name, value)) => (name, Some(unquote(value))),
                    None => (word, None),
                };
                flags.push(Flag { name: name.to_owned(), value });
                rest = after.trim_start();
            }
        }
        if rest.is_empty() {
            return Err(ParseError::MissingArguments { line, keyword });
        }
        let heredocs = if TAKES_HEREDOCS.contains(&keyword.as_str()) {
            heredoc_markers(rest)
                .into_iter()
                .map(|(delimiter, strip_tabs)| heredoc(&lines, &mut i, line, delimiter, strip_tabs))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        let args = match rest.starts_with('[').then(|| serde_json::from_str::<Vec<String>>(rest)) {
            Some(Ok(words)) => Arguments::Exec(words),
            _ => Arguments::Shell(rest.to_owned()),
        };
        if instructions.is_empty() && keyword != "FROM" && keyword != "ARG" {
            return Err(ParseError::BeforeFrom { line, keyword });
        }
        instructions.push(Instruction { line, keyword, flags, args, heredocs, ignores: std::mem::take(&mut ignores) });
    }
    if !instructions.iter().any(|i| i.keyword == "FROM") {
        return Err(ParseError::NoFrom { line: lines.len().max(1) });
    }
    Ok(Dockerfile { escape, instructions })
}

/// Reads the parser directives at the top; returns the escape character and
/// the index of the first line after them.
fn directives(lines: &[&str]) -> Result<(char, usize), ParseError> {
    let mut escape = '\\';
    let mut i = 0;
    while let Some((key, value)) = lines.get(i).and_then(|l| directive(l)) {
        if key == "escape" {
            escape = match value {
                "\\" => '\\',
                "`" => '`',
                _ => return Err(ParseError::InvalidEscape { line: i + 1, value: value.to_owned() }),
            };
        }
        i += 1;
    }
    Ok((escape, i))
}

/// `# key=value` where key is a directive Docker knows.
fn directive(line: &str) -> Option<(String, &str)> {
    let (key, value) = line.trim().strip_prefix('#')?.split_once('=')?;
    let key = key.trim().to_ascii_lowercase();
    ["escape", "syntax", "check"].contains(&key.as_str()).then_some((key, value.trim()))
}

/// The codes in a `# ces-lint ignore=CES001,CES002` comment.
fn ignore_comment(comment: &str) -> Vec<String> {
    let codes = comment
        .trim_start_matches('#')
        .trim()
        .strip_prefix("ces-lint")
        .and_then(|rest| rest.trim_start().strip_prefix("ignore="));
    codes
        .map(|codes| {
            codes.split(',').map(|c| c.trim().to_ascii_uppercase()).filter(|c| !c.is_empty()).collect::<Vec<_>>()
        })
        .unwrap_or_default()
}

/// Joins the lines of one instruction: a line ending with the escape
/// character continues on the next; comment and empty lines in between are
/// dropped, as Docker does.
fn logical_line(lines: &[&str], i: &mut usize, escape: char) -> String {
    let mut text = String::new();
    while let Some(line) = lines.get(*i) {
        *i += 1;
        match line.trim_end().strip_suffix(escape) {
            Some(body) => {
                text.push_str(body);
                while lines.get(*i).is_some_and(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
                    *i += 1;
                }
            }
            None => {
                text.push_str(line);
                break;
            }
        }
    }
    text
}

/// The heredocs a line opens, each with whether leading tabs are stripped
/// from its body. As in BuildKit, a heredoc is a word (outside quotes) that
/// starts with `<<` (after an optional fd number): `<<EOF`, `<<-EOF`,
/// `<<"EOF"`, `2<<'EOF'`. Here strings (`<<<`), shifts (`$((1<<2))`) and
/// quoted text (`echo "<<EOF"`) open none.
fn heredoc_markers(text: &str) -> Vec<(String, bool)> {
    let mut markers = Vec::new();
    let mut quote: Option<char> = None;
    let mut word_start = true;
    for (at, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if word_start => {
                if let Some(marker) = heredoc_marker(text[at..].trim_start_matches(|c: char| c.is_ascii_digit())) {
                    markers.push(marker);
                }
            }
            None => {}
        }
        word_start = quote.is_none() && c.is_whitespace();
    }
    markers
}

/// `<<[-]["']WORD["']...` at the start of `word`: the delimiter and whether tabs are stripped.
fn heredoc_marker(word: &str) -> Option<(String, bool)> {
    let rest = word.strip_prefix("<<")?;
    if rest.starts_with('<') {
        return None;
    }
    let strip_tabs = rest.starts_with('-');
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let rest = rest.strip_prefix(['"', '\'']).unwrap_or(rest);
    let delimiter: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    delimiter.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_').then_some((delimiter, strip_tabs))
}

/// Reads one heredoc's body, up to its delimiter line.
fn heredoc(
    lines: &[&str],
    i: &mut usize,
    line: usize,
    delimiter: String,
    strip_tabs: bool,
) -> Result<Heredoc, ParseError> {
    let start = *i + 1;
    let mut body = Vec::new();
    while let Some(text) = lines.get(*i) {
        *i += 1;
        let text = if strip_tabs { text.trim_start_matches('\t') } else { text };
        if text == delimiter {
            return Ok(Heredoc { delimiter, line: start, body: body.join("\n") });
        }
        body.push(text);
    }
    Err(ParseError::UnterminatedHeredoc { line, delimiter })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(source: &str) -> Instruction {
        let file = parse(&format!("FROM scratch\n{source}")).unwrap();
        file.instructions[1].clone()
    }

    #[test]
    fn continuations_join_lines_and_skip_comments() {
        let file = parse("FROM a\nRUN apt-get update \\\n  # a comment\n\n  && echo hi\nUSER 1000\n").unwrap();
        let run = &file.instructions[1];
        assert_eq!((run.line, run.keyword.as_str()), (2, "RUN"));
        assert_eq!(run.args, Arguments::Shell("apt-get update   && echo hi".to_owned()));
        assert_eq!(file.instructions[2].line, 6);
    }

    #[test]
    fn escape_directive_changes_the_continuation_character() {
        let file = parse("# escape=`\nFROM a\nRUN dir c:\\ `\n  /b\nCOPY x c:\\y\\\n").unwrap();
        assert_eq!(file.escape, '`');
        assert_eq!(file.instructions[1].args, Arguments::Shell("dir c:\\   /b".to_owned()));
        assert_eq!((file.instructions[2].line, file.instructions[2].words()[1].as_str()), (5, "c:\\y\\"));
        assert_eq!(
            parse("# escape=x\nFROM a\n").unwrap_err(),
            ParseError::InvalidEscape { line: 1, value: "x".into() }
        );
    }

    #[test]
    fn directives_only_count_at_the_top() {
        let file = parse("FROM a\n# escape=`\nRUN a \\\n b\n").unwrap();
        assert_eq!(file.escape, '\\');
        assert_eq!(file.instructions[1].args, Arguments::Shell("a  b".to_owned()));
    }

    #[test]
    fn keywords_are_case_insensitive_and_unknown_ones_fail() {
        assert_eq!(only("run echo").keyword, "RUN");
        assert_eq!(
            parse("FROM a\nRUNN x\n").unwrap_err(),
            ParseError::UnknownInstruction { line: 2, keyword: "RUNN".into() }
        );
        assert_eq!(parse("RUN x\n").unwrap_err(), ParseError::BeforeFrom { line: 1, keyword: "RUN".into() });
        assert_eq!(parse("# only\n").unwrap_err(), ParseError::NoFrom { line: 1 });
        assert_eq!(parse("FROM\n").unwrap_err(), ParseError::MissingArguments { line: 1, keyword: "FROM".into() });
    }

    #[test]
    fn exec_and_shell_forms() {
        assert_eq!(only(r#"CMD ["python", "app.py"]"#).args, Arguments::Exec(vec!["python".into(), "app.py".into()]));
        assert_eq!(only("CMD [not json").args, Arguments::Shell("[not json".into()));
        assert_eq!(only(r#"COPY ["a b.csv", "/x/"]"#).words(), ["a b.csv", "/x/"]);
    }

    #[test]
    fn flags_come_before_arguments() {
        let run = only("RUN --mount=type=cache,target=/root/.cache --network=none pip install x");
        assert_eq!(run.flag("mount").and_then(|f| f.value.as_deref()), Some("type=cache,target=/root/.cache"));
        assert_eq!(run.args, Arguments::Shell("pip install x".into()));
        let from = parse("FROM --platform=linux/arm64 a AS b\n").unwrap();
        assert_eq!(from.instructions[0].flag("platform").and_then(|f| f.value.as_deref()), Some("linux/arm64"));
    }

    #[test]
    fn heredocs_are_read_to_their_delimiter() {
        let file =
            parse("FROM a\nRUN <<EOF\napt-get install x\nEOF\nCOPY <<-'CFG' /etc/x.conf\n\tkey=1\n\tCFG\nUSER 1\n")
                .unwrap();
        let run = &file.instructions[1];
        assert_eq!(run.heredocs, [Heredoc { delimiter: "EOF".into(), line: 3, body: "apt-get install x".into() }]);
        assert!(run.script().contains("apt-get install x"));
        let copy = &file.instructions[2];
        assert_eq!((copy.line, copy.heredocs[0].body.as_str()), (5, "key=1"));
        assert_eq!((file.instructions[3].keyword.as_str(), file.instructions[3].line), ("USER", 8));
        assert!(only("RUN cat <<< hi && echo $((1<<2)) \"<<EOF\" '<<EOF' x<<EOF").heredocs.is_empty());
        let two = only("RUN <<A 3<<-\"B\" cat\nrun\nA\n\tB\nUSER 1\n");
        assert_eq!(
            two.heredocs.iter().map(|h| (h.delimiter.as_str(), h.line)).collect::<Vec<_>>(),
            [("A", 3), ("B", 5)]
        );
        assert_eq!(
            parse("FROM a\nRUN <<EOF\necho\n").unwrap_err(),
            ParseError::UnterminatedHeredoc { line: 2, delimiter: "EOF".into() }
        );
    }

    #[test]
    fn ignore_comments_attach_to_the_next_instruction() {
        let file = parse("FROM a\n# ces-lint ignore=CES003, ces007\nRUN x\nRUN y\n").unwrap();
        assert_eq!(file.instructions[1].ignores, ["CES003", "CES007"]);
        assert!(file.instructions[2].ignores.is_empty());
    }
}
