//! How appmon's programs report errors, shared so that every binary and every configuration
//! error reads alike: an error with its causes on one line, and a position in a text file as
//! `file:line:column: key ...`.

/// The exit codes every appmon command line shares, so that a script reads `appmon` in a guest
/// and `appmonctl` on a host alike. Each command adds its own codes from 4 on.
pub mod exit {
    /// Bad usage: an unknown command, a missing or wrong argument (clap's own code).
    pub const USAGE: u8 = 2;
    /// The agent is not reachable: no socket, nobody listening, no answer in time.
    pub const UNREACHABLE: u8 = 3;
}

/// An error and its sources, joined with ": ", as a binary prints it once.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// A place in a text file: 1-based line and column, and the key of the `key = value` line
/// there, if it is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextPosition {
    pub line: usize,
    pub column: usize,
    pub key: Option<String>,
}

/// Where byte `at` of `text` is (clamped to the text, and back to a character boundary).
pub fn locate(text: &str, at: usize) -> TextPosition {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_text = text[line_start..].lines().next().unwrap_or("");
    TextPosition {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
        key: key_of_line(line_text),
    }
}

/// The bare or quoted key of a `key = value` line; none for a `[table]` header or a line that
/// assigns nothing.
fn key_of_line(line: &str) -> Option<String> {
    let line = line.trim_start();
    if !line.contains('=') {
        return None;
    }
    let key = if let Some(rest) = line.strip_prefix('"') {
        rest.split('"').next()?
    } else {
        let end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
            .unwrap_or(line.len());
        &line[..end]
    };
    (!key.is_empty()).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[test]
    fn error_chain_joins_every_source() {
        assert_eq!(error_chain(&Outer(Inner)), "outer: inner");
    }

    #[test]
    fn positions_name_line_column_and_key() {
        let text = "a = 1\n  port = \"x\"\n[table]\n\"odd key\" = 2\ngarbage\n";
        let cases = [
            (0, 1, 1, Some("a")),
            (9, 2, 4, Some("port")),
            (21, 3, 3, None),
            (27, 4, 1, Some("odd key")),
            (41, 5, 1, None),
            (999, 6, 1, None),
        ];
        for (at, line, column, key) in cases {
            let got = locate(text, at);
            assert_eq!(
                (got.line, got.column, got.key.as_deref()),
                (line, column, key),
                "byte {at}"
            );
        }
    }

    #[test]
    fn a_position_inside_a_character_moves_back_to_its_start() {
        let got = locate("ä = 1", 1);
        assert_eq!((got.line, got.column), (1, 1));
    }
}
