//! Output: JSON documents, tables, key/value blocks and QR codes drawn with half blocks.

use qrcode::{Color, QrCode};
use serde_json::Value;
use std::io::Write;
use whatisup::wkt::Timestamp;

/// A line on stdout. A closed stdout (`| head`) is not an error worth a panic: the write is dropped, and
/// `events tail` checks `emit` to stop.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Like `say!`, without the newline.
macro_rules! say_raw {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

pub(crate) use {say, say_raw};

/// One JSON document on one line (NDJSON-friendly).
pub fn json(v: &Value) {
    say!("{v}");
}

/// One line of a stream; false when stdout is gone.
pub fn emit(line: &str) -> bool {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

/// Server text shown to a terminal: control characters (escape sequences) are made visible, never obeyed.
pub fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub fn time(t: &Option<Timestamp>) -> String {
    t.and_then(Timestamp::to_datetime)
        .map(whatisup::wkt::rfc3339)
        .unwrap_or_else(|| "-".into())
}

pub fn opt(s: &Option<String>) -> String {
    match s.as_deref() {
        None | Some("") => "-".into(),
        Some(s) => s.to_string(),
    }
}

pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// Aligned columns; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                s.push_str(c);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line(headers.to_vec()));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
}

/// "key  value" lines, keys aligned.
pub fn fields(pairs: &[(&str, String)]) {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for (k, v) in pairs {
        let _ = writeln!(out, "{k:<w$}  {}", clean(v));
    }
}

/// Modules of quiet zone around the code (the QR standard asks for 4).
const QUIET: usize = 4;

/// The QR code of `data` as text: two rows of modules per line with half blocks. Light modules are drawn,
/// dark ones are blank; with `ansi` the colours are forced (white on black), so the code scans on light and
/// dark terminals alike.
pub fn qr_text(data: &str, ansi: bool) -> Option<String> {
    let code = QrCode::new(data.as_bytes()).ok()?;
    let w = code.width();
    let colors = code.to_colors();
    let side = w + 2 * QUIET;
    let light = |x: usize, y: usize| -> bool {
        if x < QUIET || y < QUIET || x >= QUIET + w || y >= QUIET + w {
            return true;
        }
        colors[(y - QUIET) * w + (x - QUIET)] == Color::Light
    };
    let mut s = String::new();
    for y in (0..side).step_by(2) {
        if ansi {
            s.push_str("\x1b[97;40m");
        }
        for x in 0..side {
            let top = light(x, y);
            // The odd row past the bottom edge is quiet zone too.
            let bottom = y + 1 >= side || light(x, y + 1);
            s.push(match (top, bottom) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        if ansi {
            s.push_str("\x1b[0m");
        }
        s.push('\n');
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes the drawing back to modules and compares them with the code.
    #[test]
    fn draws_every_module_with_a_quiet_zone() {
        let data = "2@abc,def,ghi,jkl";
        let text = qr_text(data, false).unwrap();
        let code = QrCode::new(data.as_bytes()).unwrap();
        let w = code.width();
        let side = w + 2 * QUIET;
        let lines: Vec<Vec<char>> = text.lines().map(|l| l.chars().collect()).collect();
        assert_eq!(lines.len(), side.div_ceil(2));
        let mut modules = vec![vec![true; side]; side + 1];
        for (row, l) in lines.iter().enumerate() {
            assert_eq!(l.len(), side);
            for (x, c) in l.iter().enumerate() {
                let (t, b) = match c {
                    '█' => (true, true),
                    '▀' => (true, false),
                    '▄' => (false, true),
                    ' ' => (false, false),
                    other => panic!("unexpected {other:?}"),
                };
                modules[2 * row][x] = t;
                modules[2 * row + 1][x] = b;
            }
        }
        let colors = code.to_colors();
        for y in 0..side {
            for x in 0..side {
                let inside = (QUIET..QUIET + w).contains(&x) && (QUIET..QUIET + w).contains(&y);
                let want = !inside || colors[(y - QUIET) * w + (x - QUIET)] == Color::Light;
                assert_eq!(modules[y][x], want, "module {x},{y}");
            }
        }
        assert!(qr_text(data, true).unwrap().starts_with("\x1b[97;40m"));
        assert_eq!(clean("a\x1b[2Jb"), "a\\u{1b}[2Jb");
    }
}
