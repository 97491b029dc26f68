//! Quoting text that images and registries control (entry names, labels,
//! annotations, registry messages) wherever ces prints or records it.
//!
//! Such text may be a gigabyte long and hold terminal escape sequences (an
//! OSC 8 hyperlink, a cursor move that hides the line before it) or Unicode
//! bidirectional overrides that reorder what a reviewer reads. [`quote`]
//! shows it cut to [`MAX_QUOTED`] bytes, with every control character,
//! invisible format character and byte of invalid UTF-8 escaped (`\x1b`,
//! `\u{202e}`, `\xff`) and `\` doubled, so that what is shown is plain,
//! short and unambiguous. Every crate of the workspace depends on this one,
//! so the one helper serves them all.

use std::fmt::{self, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// How many bytes of the escaped text [`quote`] shows before it cuts.
pub const MAX_QUOTED: usize = 256;

/// Text to show quoted: [`fmt::Display`] escapes and cuts it.
#[derive(Clone, Copy)]
pub struct Quoted<'a> {
    text: &'a [u8],
    limit: usize,
    /// Whether `\` is doubled: yes for one quoted string, no for a message
    /// whose quoted parts already have theirs doubled.
    double_backslash: bool,
}

/// `text` (any bytes), escaped and cut to [`MAX_QUOTED`] bytes when shown.
pub fn quote<T: AsRef<[u8]> + ?Sized>(text: &T) -> Quoted<'_> {
    Quoted { text: text.as_ref(), limit: MAX_QUOTED, double_backslash: true }
}

/// A path, escaped and cut to [`MAX_QUOTED`] bytes when shown.
pub fn quote_path(path: &Path) -> Quoted<'_> {
    Quoted { text: path.as_os_str().as_bytes(), limit: MAX_QUOTED, double_backslash: true }
}

/// A whole message (an error's chain, say) as it may be recorded or
/// printed: control and format characters escaped, cut at `limit` bytes,
/// but `\` left alone, so that the parts already quoted read the same.
pub fn escape_message(text: &str, limit: usize) -> String {
    Quoted { text: text.as_bytes(), limit, double_backslash: false }.to_string()
}

impl Quoted<'_> {
    /// The same text, cut at `limit` bytes instead of [`MAX_QUOTED`].
    pub fn limit(self, limit: usize) -> Self {
        Quoted { limit, ..self }
    }
}

/// Whether `c` must not reach a terminal or a reviewer's eyes as itself:
/// every control (general category Cc: C0, DEL, C1), every format
/// character (Cf: bidirectional overrides and isolates, zero-width and
/// invisible characters, the soft hyphen, the byte order mark, tag
/// characters that hide text) and the line and paragraph separators
/// (Zl, Zp). Any of them can reorder, hide or forge what is shown.
fn needs_escape(c: char) -> bool {
    c.is_control() || is_format_or_separator(c)
}

/// General categories Cf, Zl and Zp. std has no general-category API and no
/// crate in the lock file gives one, so the Cf list is spelled out: it is
/// Unicode 15.1's, from `DerivedGeneralCategory.txt`
/// (<https://www.unicode.org/Public/15.1.0/ucd/extracted/DerivedGeneralCategory.txt>).
/// U+2028 (Zl) and U+2029 (Zp) sit inside the U+2028–202E range below.
fn is_format_or_separator(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{600}'..='\u{605}'
            | '\u{61c}'
            | '\u{6dd}'
            | '\u{70f}'
            | '\u{890}'..='\u{891}'
            | '\u{8e2}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0001}'
            | '\u{e0020}'..='\u{e007f}'
    )
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let mut consumed = 0;
        for chunk in self.text.utf8_chunks() {
            for c in chunk.valid().chars() {
                let before = out.len();
                match c {
                    '\\' if self.double_backslash => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\t' => out.push_str("\\t"),
                    '\r' => out.push_str("\\r"),
                    c if needs_escape(c) && (c as u32) < 0x80 => write!(out, "\\x{:02x}", c as u32)?,
                    c if needs_escape(c) => write!(out, "\\u{{{:x}}}", c as u32)?,
                    c => out.push(c),
                }
                if out.len() > self.limit {
                    out.truncate(before);
                    return write!(f, "{out}… ({} bytes in all)", self.text.len());
                }
                consumed += c.len_utf8();
            }
            for byte in chunk.invalid() {
                let before = out.len();
                write!(out, "\\x{byte:02x}")?;
                if out.len() > self.limit {
                    out.truncate(before);
                    return write!(f, "{out}… ({} bytes in all)", self.text.len());
                }
                consumed += 1;
            }
        }
        debug_assert_eq!(consumed, self.text.len());
        f.write_str(&out)
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_shown_as_is() {
        assert_eq!(quote("usr/lib/libc.so.6").to_string(), "usr/lib/libc.so.6");
        assert_eq!(quote("café/日本").to_string(), "café/日本");
    }

    #[test]
    fn controls_format_characters_and_bad_bytes_are_escaped() {
        assert_eq!(quote("a\x1b]8;;http://x\x07b").to_string(), "a\\x1b]8;;http://x\\x07b");
        assert_eq!(quote("x\u{9b}31m").to_string(), "x\\u{9b}31m");
        assert_eq!(quote("evil\u{202e}txt.exe").to_string(), "evil\\u{202e}txt.exe");
        assert_eq!(quote(b"a\xffb\n\\").to_string(), "a\\xffb\\n\\\\");
        assert_eq!(quote("\x7f").to_string(), "\\x7f");
    }

    #[test]
    fn every_format_character_and_separator_is_escaped() {
        // The ones the first list missed: Arabic letter mark, soft hyphen,
        // tag characters (which can spell hidden text), interlinear
        // annotation marks, the Mongolian vowel separator.
        assert_eq!(quote("a\u{61c}b").to_string(), "a\\u{61c}b");
        assert_eq!(quote("re\u{ad}view").to_string(), "re\\u{ad}view");
        assert_eq!(quote("x\u{e0001}\u{e0068}\u{e007f}").to_string(), "x\\u{e0001}\\u{e0068}\\u{e007f}");
        assert_eq!(quote("\u{fff9}a\u{fffa}b\u{fffb}").to_string(), "\\u{fff9}a\\u{fffa}b\\u{fffb}");
        assert_eq!(quote("\u{180e}\u{2028}\u{2029}\u{206a}").to_string(), "\\u{180e}\\u{2028}\\u{2029}\\u{206a}");
        for c in [
            '\u{600}',
            '\u{6dd}',
            '\u{70f}',
            '\u{890}',
            '\u{8e2}',
            '\u{2064}',
            '\u{110bd}',
            '\u{13430}',
            '\u{1bca3}',
            '\u{1d17a}',
        ] {
            assert_eq!(quote(&c.to_string()).to_string(), format!("\\u{{{:x}}}", c as u32));
        }
        // Their neighbours are ordinary letters and marks.
        for c in ['\u{ac}', '\u{61b}', '\u{2065}', '\u{fff8}', '\u{e0000}', '\u{e0080}', 'é'] {
            assert_eq!(quote(&c.to_string()).to_string(), c.to_string());
        }
    }

    #[test]
    fn messages_keep_their_backslashes_and_escape_the_rest() {
        let message = format!("cannot apply layer entry {}", quote("a\x1b"));
        assert_eq!(escape_message(&message, 100), "cannot apply layer entry a\\x1b");
        assert_eq!(escape_message("bad\x1b[2Jline\n", 100), "bad\\x1b[2Jline\\n");
        assert_eq!(escape_message(&"x".repeat(50), 10), "xxxxxxxxxx… (50 bytes in all)");
    }

    #[test]
    fn long_text_is_cut_and_says_its_length() {
        let long = "\x1b".repeat(1 << 20);
        let shown = quote(&long).to_string();
        assert!(shown.len() < MAX_QUOTED + 40, "{}", shown.len());
        assert!(shown.ends_with("… (1048576 bytes in all)"), "{shown}");
        assert!(!shown.bytes().any(|b| b.is_ascii_control()));
        assert_eq!(quote(&"é".repeat(10)).limit(5).to_string(), "éé… (20 bytes in all)");
    }
}
