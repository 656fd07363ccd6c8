//! The guest's serial console (ttyS0), which QEMU appends to a file in the test's directory. The
//! file survives domain restarts, so waits after a reset look only at text past a [`ConsoleMark`].

use std::fs;
use std::io;
use std::path::Path;

/// A position in the console log. Text before it belongs to earlier boots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConsoleMark(pub u64);

/// Reads the whole console log; an absent file (the domain never started) reads as empty.
pub fn read_console(path: &Path) -> io::Result<String> {
    match fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

/// The text past `mark`.
pub fn since(text: &str, mark: ConsoleMark) -> &str {
    let start = usize::try_from(mark.0)
        .unwrap_or(usize::MAX)
        .min(text.len());
    // A mark taken by byte length can fall inside a character that lossy decoding widened.
    let start = (start..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    &text[start..]
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut cut = body.len();
    for _ in 0..n {
        match body[..cut].rfind('\n') {
            Some(i) => cut = i,
            None => return text,
        }
    }
    &text[cut + 1..]
}

/// Lines that contain `marker` as a whole word at the line's start (after console noise such as
/// `\r`), in order.
pub fn marker_lines<'a>(text: &'a str, marker: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.lines()
        .map(|l| l.trim_start_matches('\r'))
        .filter(move |l| {
            l.strip_prefix(marker)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
        })
}

/// The value of `key=` on a marker line (`APPMON-INIT boot_id=... uptime=...`).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "noise\r\nAPPMON-INIT boot_id=aaa uptime=1.5\nAPPMON-INITX no\n\
                       [vsock-echo] APPMON-GUEST-READY not a marker\nAPPMON-GUEST-READY boot_id=aaa uptime=2.0\n";

    #[test]
    fn marker_lines_match_only_whole_markers_at_line_start() {
        let lines: Vec<_> = marker_lines(LOG, "APPMON-INIT").collect();
        assert_eq!(lines, ["APPMON-INIT boot_id=aaa uptime=1.5"]);
        assert_eq!(marker_lines(LOG, "APPMON-GUEST-READY").count(), 1);
    }

    #[test]
    fn field_reads_key_value_words() {
        assert_eq!(
            field("APPMON-INIT boot_id=aaa uptime=1.5", "boot_id"),
            Some("aaa")
        );
        assert_eq!(
            field("APPMON-INIT boot_id=aaa uptime=1.5", "uptime"),
            Some("1.5")
        );
        assert_eq!(field("APPMON-INIT boot_id=aaa", "boot"), None);
    }

    #[test]
    fn since_skips_text_before_the_mark() {
        assert_eq!(since("abcdef", ConsoleMark(4)), "ef");
        assert_eq!(since("abc", ConsoleMark(99)), "");
        assert_eq!(since("aé", ConsoleMark(2)), "");
    }

    #[test]
    fn tail_returns_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a\nb\n", 5), "a\nb\n");
        assert_eq!(tail("", 3), "");
    }
}
