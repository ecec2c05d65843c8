//! The one CSV writer of the daemon and its command line: every CSV the daemon or its CLI writes
//! goes through it, so that no cell a partner sent can run as a spreadsheet formula.

use rust_decimal::Decimal;

/// One cell of a CSV row: text from anywhere (neutralised), or a number this writer made.
pub enum Cell<'a> {
    /// Text: a cell that begins with `=`, `+`, `-`, `@`, tab or carriage return gets a leading
    /// `'`, so that a spreadsheet shows it instead of running it as a formula.
    Text(&'a str),
    /// A number (amount, points, rate, count): written as it is, so it stays a number.
    Number(String),
}

impl<'a> From<&'a str> for Cell<'a> {
    fn from(s: &'a str) -> Self {
        Cell::Text(s)
    }
}

impl From<Decimal> for Cell<'_> {
    fn from(d: Decimal) -> Self {
        // Zero has one spelling: a cancelled sum keeps Decimal's sign bit, which prints `-0`.
        let d = if d.is_zero() {
            Decimal::new(0, d.scale())
        } else {
            d
        };
        Cell::Number(d.to_string())
    }
}

impl From<i64> for Cell<'_> {
    fn from(n: i64) -> Self {
        Cell::Number(n.to_string())
    }
}

/// Whether a written text holds a negative zero number (`-0`, `-0.00`): what a check of any
/// output looks for, since zero must have one spelling.
pub fn has_negative_zero(text: &str) -> bool {
    text.match_indices("-0").any(|(i, _)| {
        let number: String = text[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let starts = i == 0 || !text.as_bytes()[i - 1].is_ascii_alphanumeric();
        starts && !number.is_empty() && number.chars().all(|c| c == '0' || c == '.')
    })
}

/// Whether a spreadsheet would read `s` as the start of a formula (OWASP CSV injection).
pub fn formula_like(s: &str) -> bool {
    s.starts_with(['=', '+', '-', '@', '\t', '\r'])
}

/// The one CSV writer of the daemon and its command line: RFC 4180 quoting by the `csv` crate,
/// text cells neutralised (see [`Cell::Text`]), numbers left as numbers. In memory by default
/// (exports), or onto any writer (a result file of a million lines).
pub struct CsvWriter<W: std::io::Write = Vec<u8>> {
    inner: csv::Writer<W>,
}

impl Default for CsvWriter {
    fn default() -> Self {
        CsvWriter::to_writer(Vec::new())
    }
}

impl<W: std::io::Write> CsvWriter<W> {
    /// A writer onto `w`.
    pub fn to_writer(w: W) -> Self {
        CsvWriter {
            inner: csv::WriterBuilder::new()
                .terminator(csv::Terminator::Any(b'\n'))
                .from_writer(w),
        }
    }

    /// Writes one row, or says why the underlying writer could not take it.
    pub fn try_row<'a>(&mut self, cells: impl IntoIterator<Item = Cell<'a>>) -> csv::Result<()> {
        let fields: Vec<std::borrow::Cow<'a, str>> = cells
            .into_iter()
            .map(|c| match c {
                Cell::Text(t) if formula_like(t) => format!("'{t}").into(),
                Cell::Text(t) => t.into(),
                Cell::Number(n) => n.into(),
            })
            .collect();
        self.inner.write_record(fields.iter().map(|f| f.as_bytes()))
    }

    /// The header row (plain names), or why the writer could not take it.
    pub fn try_header(&mut self, names: &[&str]) -> csv::Result<()> {
        self.inner.write_record(names)
    }

    /// Flushes what is buffered to the underlying writer.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl CsvWriter {
    /// Writes one row.
    pub fn row<'a>(&mut self, cells: impl IntoIterator<Item = Cell<'a>>) {
        // Writing into a Vec cannot fail.
        let _ = self.try_row(cells);
    }

    /// The header row (plain names).
    pub fn header(&mut self, names: &[&str]) {
        let _ = self.try_header(names);
    }

    /// The file's text.
    pub fn finish(self) -> String {
        let bytes = self
            .inner
            .into_inner()
            .unwrap_or_else(|e| e.into_inner().get_ref().clone());
        String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}
