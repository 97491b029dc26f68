//! The shape of a CSV or TSV file: how many rows and columns, counted as the
//! bytes stream past (the file is hashed in the same pass, never held whole).
//!
//! Quoting follows RFC 4180 for both separators: a field that starts with
//! `"` runs to the next lone `"`, and may hold separators, `""` (a quote)
//! and line breaks. A line break is `\n`, `\r\n` or a lone `\r`. A blank
//! line (no bytes at all) is not a row, as Python's `csv` module and pandas
//! read it; a line of separators is a row of empty fields.

use serde::{Deserialize, Serialize};

/// What [`Counter`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// `,` or a tab.
    pub delimiter: String,
    /// Every row, the header row included (a file with a header and two
    /// records has 3): ces cannot know whether the first row is a header.
    pub rows_including_header: u64,
    /// The number of fields in the widest row.
    pub columns: u64,
    /// Whether some rows have fewer fields than others.
    pub ragged: bool,
    /// Whether the file ends inside a quoted field (the counts are then
    /// those of a reader that stops at the end of the file).
    pub unclosed_quote: bool,
}

/// The file kinds ces counts, by extension (case-insensitive).
pub fn delimiter_for(name: &[u8]) -> Option<u8> {
    let dot = name.iter().rposition(|b| *b == b'.')?;
    let ext = &name[dot + 1..];
    if ext.eq_ignore_ascii_case(b"csv") {
        Some(b',')
    } else if ext.eq_ignore_ascii_case(b"tsv") {
        Some(b'\t')
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a row (nothing of it seen yet).
    RowStart,
    /// At the start of a field after a separator.
    FieldStart,
    /// In an unquoted field.
    Unquoted,
    /// In a quoted field.
    Quoted,
    /// Just after a `"` in a quoted field: the end of the field, or the first
    /// half of `""`.
    QuoteInQuoted,
    /// Just after a `\r` that ended a row (a `\n` next belongs to it).
    AfterCr,
}

/// Counts rows and columns of a CSV or TSV fed in pieces.
#[derive(Debug, Clone)]
pub struct Counter {
    delimiter: u8,
    state: State,
    fields: u64,
    rows: u64,
    min: Option<u64>,
    max: u64,
}

impl Counter {
    /// A counter for this separator (`,` or `\t`).
    pub fn new(delimiter: u8) -> Counter {
        Counter { delimiter, state: State::RowStart, fields: 0, rows: 0, min: None, max: 0 }
    }

    /// Feeds the next bytes of the file.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.byte(b);
        }
    }

    fn byte(&mut self, b: u8) {
        use State::*;
        let d = self.delimiter;
        self.state = match (self.state, b) {
            (AfterCr, b'\n') => RowStart,
            (AfterCr, _) => {
                self.state = RowStart;
                return self.byte(b);
            }
            (RowStart, b'\n') => RowStart,
            (RowStart, b'\r') => AfterCr,
            (Quoted, b'"') => QuoteInQuoted,
            (Quoted, _) => Quoted,
            (QuoteInQuoted, b'"') => Quoted,
            (RowStart | FieldStart, b'"') => Quoted,
            (_, b'\n') => {
                self.end_row();
                RowStart
            }
            (_, b'\r') => {
                self.end_row();
                AfterCr
            }
            (_, c) if c == d => {
                self.fields += 1;
                FieldStart
            }
            // A quote inside an unquoted field, or text after a closing
            // quote, is kept as it is (as Python's csv reader does).
            (RowStart | FieldStart | Unquoted | QuoteInQuoted, _) => Unquoted,
        };
    }

    fn end_row(&mut self) {
        let fields = self.fields + 1;
        self.rows += 1;
        self.max = self.max.max(fields);
        self.min = Some(self.min.map_or(fields, |m| m.min(fields)));
        self.fields = 0;
    }

    /// The counts, once the whole file has been fed.
    pub fn finish(mut self) -> Table {
        let unclosed_quote = self.state == State::Quoted;
        if !matches!(self.state, State::RowStart | State::AfterCr) {
            self.end_row(); // the last row has no line break
        }
        Table {
            delimiter: char::from(self.delimiter).to_string(),
            rows_including_header: self.rows,
            columns: self.max,
            ragged: self.min.is_some_and(|min| min != self.max),
            unclosed_quote,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(delimiter: u8, text: &str) -> (u64, u64, bool, bool) {
        // Fed one byte at a time as well, to cross every piece boundary.
        let mut whole = Counter::new(delimiter);
        whole.feed(text.as_bytes());
        let mut bytewise = Counter::new(delimiter);
        for b in text.as_bytes() {
            bytewise.feed(std::slice::from_ref(b));
        }
        let t = whole.finish();
        assert_eq!(t, bytewise.finish());
        (t.rows_including_header, t.columns, t.ragged, t.unclosed_quote)
    }

    #[test]
    fn plain_csv_counts_the_header_as_a_row() {
        assert_eq!(count(b',', "a,b,c\n1,2,3\n4,5,6\n"), (3, 3, false, false));
        assert_eq!(count(b',', "a,b,c\n1,2,3"), (2, 3, false, false), "no final newline");
        assert_eq!(count(b',', ""), (0, 0, false, false));
        assert_eq!(count(b',', "x\n"), (1, 1, false, false));
    }

    #[test]
    fn quoted_fields_hold_separators_quotes_and_newlines() {
        let text = "name,comment\n\"Smith, J\",\"said \"\"hi\"\"\nthen left\"\nb,\"\"\n";
        assert_eq!(count(b',', text), (3, 2, false, false));
        assert_eq!(count(b',', "a,\"b\r\nc\"\r\n1,2\r\n"), (2, 2, false, false), "CRLF");
        assert_eq!(count(b',', "a,\"never closed\n1,2\n"), (1, 2, false, true));
    }

    #[test]
    fn line_endings_blank_lines_and_ragged_rows() {
        assert_eq!(count(b',', "a,b\r1,2\r"), (2, 2, false, false), "old Mac CR");
        assert_eq!(count(b',', "a,b\n\n1,2\n\n"), (2, 2, false, false), "blank lines are not rows");
        assert_eq!(count(b',', "a,b,c\n1\n,,\n"), (3, 3, true, false));
        assert_eq!(count(b',', "a\"b,c\n"), (1, 2, false, false), "a quote inside a field is text");
    }

    #[test]
    fn tsv_uses_tabs_and_the_same_quoting() {
        assert_eq!(count(b'\t', "a\tb\n1\t\"x\ty\"\n"), (2, 2, false, false));
        assert_eq!(count(b'\t', "a,b\tc\n"), (1, 2, false, false), "commas are text in a TSV");
    }

    #[test]
    fn extensions() {
        assert_eq!(delimiter_for(b"t.csv"), Some(b','));
        assert_eq!(delimiter_for(b"T.CSV"), Some(b','));
        assert_eq!(delimiter_for(b"x.tsv"), Some(b'\t'));
        assert_eq!(delimiter_for(b"csv"), None);
        assert_eq!(delimiter_for(b"x.csv.gz"), None);
    }
}
