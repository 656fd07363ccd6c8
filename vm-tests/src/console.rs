//! The guest's serial console (ttyS0), which QEMU appends to a file in the test's directory. The
//! file survives domain restarts, so waits after a reset look only at text past a [`ConsoleMark`].
//! The guest's /init prints the [`markers`].

use std::fs;
use std::io;
use std::path::Path;

/// The console markers the guest's scripts print at the start of a line: /init
/// (`scripts/guest/init`, whose header says what each means and carries) and the power button
/// (`scripts/guest/power-button`). Named here once for the harness; a test checks that the
/// scripts print exactly these.
pub mod markers {
    /// /init started: `APPMON-INIT boot_id=<id> uptime=<s>`.
    pub const INIT: &str = "APPMON-INIT";
    /// The kernel command line, as the guest programs see it.
    pub const CMDLINE: &str = "APPMON-CMDLINE";
    /// A kernel module did not load.
    pub const INIT_ERROR: &str = "APPMON-INIT-ERROR";
    pub const MODULES_LOADED: &str = "APPMON-MODULES-LOADED";
    /// A program left out by `appmon.skip=`.
    pub const SKIP: &str = "APPMON-SKIP";
    /// A program was (re)started: `APPMON-START <name> uptime=<s>`.
    pub const START: &str = "APPMON-START";
    /// A program ended: `APPMON-EXIT <name> rc=<code> uptime=<s>`.
    pub const EXIT: &str = "APPMON-EXIT";
    /// Modules loaded, programs started: `APPMON-GUEST-READY boot_id=<id> uptime=<s>`.
    pub const GUEST_READY: &str = "APPMON-GUEST-READY";
    /// The ACPI power button was pressed; the guest powers off.
    pub const POWER_BUTTON: &str = "APPMON-POWER-BUTTON";

    /// Every marker above.
    pub const ALL: [&str; 9] = [
        INIT,
        CMDLINE,
        INIT_ERROR,
        MODULES_LOADED,
        SKIP,
        START,
        EXIT,
        GUEST_READY,
        POWER_BUTTON,
    ];
}

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
    use std::collections::BTreeSet;

    const GUEST_SCRIPTS: [(&str, &str); 2] = [
        (
            "scripts/guest/init",
            include_str!("../../scripts/guest/init"),
        ),
        (
            "scripts/guest/power-button",
            include_str!("../../scripts/guest/power-button"),
        ),
    ];

    /// The `APPMON-…` word each `echo "APPMON-…` in the scripts' code starts its line with.
    fn printed_markers() -> BTreeSet<String> {
        GUEST_SCRIPTS
            .iter()
            .flat_map(|(_, text)| text.lines())
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split("echo \"").skip(1))
            .filter(|printed| printed.starts_with("APPMON-"))
            .map(|printed| {
                printed
                    .split([' ', '"'])
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn the_guest_scripts_print_exactly_the_named_markers() {
        let named: BTreeSet<String> = markers::ALL.iter().map(|m| m.to_string()).collect();
        assert_eq!(printed_markers(), named);
    }

    #[test]
    fn the_init_header_lists_exactly_the_named_markers() {
        let (_, init) = GUEST_SCRIPTS[0];
        let listed: BTreeSet<String> = init
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("#   APPMON-"))
            .map(|rest| format!("APPMON-{}", rest.split(' ').next().unwrap_or_default()))
            .collect();
        let named: BTreeSet<String> = markers::ALL.iter().map(|m| m.to_string()).collect();
        assert_eq!(listed, named);
    }

    const LOG: &str = "noise\r\nAPPMON-INIT boot_id=aaa uptime=1.5\nAPPMON-INITX no\n\
                       [vsock-echo] APPMON-GUEST-READY not a marker\nAPPMON-GUEST-READY boot_id=aaa uptime=2.0\n";

    #[test]
    fn marker_lines_match_only_whole_markers_at_line_start() {
        let lines: Vec<_> = marker_lines(LOG, markers::INIT).collect();
        assert_eq!(lines, ["APPMON-INIT boot_id=aaa uptime=1.5"]);
        assert_eq!(marker_lines(LOG, markers::GUEST_READY).count(), 1);
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
