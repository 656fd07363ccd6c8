//! Strings and byte strings a peer sends are data: bounded when they are decoded, escaped when
//! they are shown.
//!
//! Every string field of a message is a [`Text`] with a [`Limit`]: the field's name for error
//! messages and its maximum length in bytes. Decoding a longer one fails right there, before
//! anything is allocated for it, and the frame decoder reports the field, the length and the
//! limit ([`crate::FrameError::TooLong`]). So a new message kind cannot forget a bound: a plain
//! `String` field would not fit the pattern of this module, and review catches that; a `Text`
//! carries its bound with its type.
//!
//! Showing a `Text` goes through [`std::fmt::Display`], which escapes ([`escape`]): control
//! characters (a newline would forge a log line, an ESC drive the operator's terminal), the
//! Unicode format characters that reorder or hide text (right-to-left overrides, zero-width
//! characters), and the backslash itself, so the escaped form is unambiguous. The raw string is
//! there for programs ([`Text::as_str`]), never for a log line or a terminal.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A field's bound: its name, as error messages give it, and its largest length in bytes.
pub trait Limit {
    /// What the field is, in words: `"agent name"`.
    const FIELD: &'static str;
    /// The largest length in bytes (UTF-8 bytes for a [`Text`]).
    const MAX: usize;
}

macro_rules! limits {
    ($($(#[$doc:meta])* $name:ident = $field:literal, $max:expr;)*) => {
        /// The limits of every bounded field of the protocol (the primer lists them).
        pub mod limits {
            $(
                $(#[$doc])*
                #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
                pub struct $name;
                impl super::Limit for $name {
                    const FIELD: &'static str = $field;
                    const MAX: usize = $max;
                }
            )*

            /// Every limit, as (field, bytes): for the primer's table and its test.
            pub const ALL: &[(&str, usize)] = &[$(($field, $max)),*];
        }
    };
}

limits! {
    /// `Hello::agent`: program name and version.
    AgentName = "agent name", 128;
    /// `WireError::message`.
    ErrorMessage = "error message", 512;
    /// A counter's or an entity's name.
    CounterName = "counter name", 128;
    /// A counter's or a monitor's description.
    Description = "description", 512;
    /// A counter's units.
    Units = "units", 32;
    /// A counter's type as its configuration names it (ccad.conf `type = "MAX"`).
    CounterKind = "counter type", 32;
    /// The id the host gives a launched process.
    ProcessId = "process id", 64;
    /// One argument of a launched process, an environment value, a working directory.
    Argument = "argument", 4096;
    /// An environment variable's name.
    EnvName = "environment variable name", 256;
    /// A user name.
    UserName = "user name", 64;
    /// A process's command line as the guest summarises it for listings.
    Command = "command", 256;
    /// Why something failed (a process that could not start, a monitor's failure).
    Reason = "reason", 512;
    /// An application monitor's name.
    MonitorName = "monitor name", 128;
    /// One chunk of a launched process's output.
    OutputChunk = "output chunk", 16 * 1024;
}

/// A received string longer than its field allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{field} of {len} bytes exceeds its limit of {limit} bytes")]
pub struct TooLong {
    pub field: &'static str,
    pub len: usize,
    pub limit: usize,
}

thread_local! {
    /// postcard keeps no message for a custom decode error; the field that was too long is left
    /// here for the frame decoder, which runs on the same thread right after.
    static LAST_TOO_LONG: Cell<Option<TooLong>> = const { Cell::new(None) };
}

/// Takes the [`TooLong`] the last failed decode on this thread left behind.
pub(crate) fn take_too_long() -> Option<TooLong> {
    LAST_TOO_LONG.with(Cell::take)
}

fn too_long<L: Limit, E: de::Error>(len: usize) -> E {
    let err = TooLong {
        field: L::FIELD,
        len,
        limit: L::MAX,
    };
    LAST_TOO_LONG.with(|c| c.set(Some(err)));
    E::custom(err)
}

/// A string of at most `L::MAX` bytes. See the module documentation.
pub struct Text<L> {
    text: Box<str>,
    _limit: PhantomData<L>,
}

impl<L: Limit> Text<L> {
    /// The text, or why it is too long.
    pub fn new(text: impl Into<String>) -> Result<Self, TooLong> {
        let text = text.into();
        if text.len() > L::MAX {
            return Err(TooLong {
                field: L::FIELD,
                len: text.len(),
                limit: L::MAX,
            });
        }
        Ok(Self::unchecked(text))
    }

    /// The text cut to the limit at a character boundary: for strings this side makes itself
    /// (a path, an error of its own) that must go out even when long.
    pub fn truncating(text: impl Into<String>) -> Self {
        let mut text = text.into();
        if text.len() > L::MAX {
            let mut cut = L::MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        Self::unchecked(text)
    }

    fn unchecked(text: String) -> Self {
        Text {
            text: text.into_boxed_str(),
            _limit: PhantomData,
        }
    }
}

impl<L> Text<L> {
    /// The raw text, for programs: never for a log line, a terminal or a page (use `Display`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The raw text as an owned string.
    pub fn into_string(self) -> String {
        self.text.into_string()
    }

    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

impl<L> Clone for Text<L> {
    fn clone(&self) -> Self {
        Text {
            text: self.text.clone(),
            _limit: PhantomData,
        }
    }
}

impl<L> PartialEq for Text<L> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<L> Eq for Text<L> {}

impl<L> PartialOrd for Text<L> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<L> Ord for Text<L> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl<L> std::hash::Hash for Text<L> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl<L> PartialEq<str> for Text<L> {
    fn eq(&self, other: &str) -> bool {
        &*self.text == other
    }
}

impl<L> PartialEq<&str> for Text<L> {
    fn eq(&self, other: &&str) -> bool {
        &*self.text == *other
    }
}

impl<L> Default for Text<L> {
    fn default() -> Self {
        Text {
            text: Box::from(""),
            _limit: PhantomData,
        }
    }
}

/// Literals in code and tests. Panics if the literal is over the limit: a programming error.
impl<L: Limit> From<&'static str> for Text<L> {
    fn from(text: &'static str) -> Self {
        match Self::new(text) {
            Ok(t) => t,
            Err(e) => panic!("a literal {e}"),
        }
    }
}

/// Escaped: see [`escape`].
impl<L> fmt::Display for Text<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(&self.text))
    }
}

impl<L> fmt::Debug for Text<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl<L> Serialize for Text<L> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de, L: Limit> Deserialize<'de> for Text<L> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bounded<L>(PhantomData<L>);
        impl<L: Limit> Visitor<'_> for Bounded<L> {
            type Value = Text<L>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a {} of at most {} bytes", L::FIELD, L::MAX)
            }

            // postcard hands over the string in place: its length is checked before anything
            // is copied.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v.len() > L::MAX {
                    return Err(too_long::<L, E>(v.len()));
                }
                Ok(Text::unchecked(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                if v.len() > L::MAX {
                    return Err(too_long::<L, E>(v.len()));
                }
                Ok(Text::unchecked(v))
            }
        }
        d.deserialize_str(Bounded(PhantomData))
    }
}

/// Bytes of at most `L::MAX`: a chunk of a process's output. Shown through [`escape_bytes`].
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Blob<L> {
    bytes: Vec<u8>,
    _limit: PhantomData<L>,
}

impl<L: Limit> Blob<L> {
    /// The bytes, or why they are too many.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, TooLong> {
        let bytes = bytes.into();
        if bytes.len() > L::MAX {
            return Err(TooLong {
                field: L::FIELD,
                len: bytes.len(),
                limit: L::MAX,
            });
        }
        Ok(Blob {
            bytes,
            _limit: PhantomData,
        })
    }
}

impl<L> Blob<L> {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl<L> fmt::Debug for Blob<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.bytes.len())
    }
}

impl<L> Serialize for Blob<L> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.bytes)
    }
}

impl<'de, L: Limit> Deserialize<'de> for Blob<L> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bounded<L>(PhantomData<L>);
        impl<'de, L: Limit> Visitor<'de> for Bounded<L> {
            type Value = Blob<L>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a {} of at most {} bytes", L::FIELD, L::MAX)
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                if v.len() > L::MAX {
                    return Err(too_long::<L, E>(v.len()));
                }
                Ok(Blob {
                    bytes: v.to_vec(),
                    _limit: PhantomData,
                })
            }

            // Human-readable formats (JSON) write bytes as a sequence of numbers.
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut bytes = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    if bytes.len() == L::MAX {
                        return Err(too_long::<L, A::Error>(L::MAX + 1));
                    }
                    bytes.push(b);
                }
                Ok(Blob {
                    bytes,
                    _limit: PhantomData,
                })
            }
        }
        d.deserialize_bytes(Bounded(PhantomData))
    }
}

/// Whether `c` must not reach a log line, a terminal or a page as it is: control characters,
/// and the format characters that reorder, hide or join text (bidirectional overrides and
/// isolates, zero-width characters, the byte order mark, the Arabic letter mark).
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(c,
            '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}')
}

/// A string made safe to show: `\n`, `\r`, `\t`, `\\` and `\u{..}` for everything
/// [`needs_escape`] names. Borrowed when there is nothing to escape (nearly always).
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    use std::fmt::Write;
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\\' => out.push_str("\\\\"),
        c if needs_escape(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// Bytes made safe to show: valid UTF-8 as [`escape`] does it, every invalid byte as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => escape(text),
        Err(_) => {
            let mut out = String::with_capacity(bytes.len() + 8);
            for chunk in bytes.utf8_chunks() {
                for c in chunk.valid().chars() {
                    push_escaped(&mut out, c);
                }
                for b in chunk.invalid() {
                    use std::fmt::Write;
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
            Cow::Owned(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Name = Text<limits::AgentName>;

    #[test]
    fn plain_text_is_shown_as_it_is_without_a_copy() {
        assert!(matches!(escape("appmon-guest 0.1.0 ✓"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_newline_cannot_start_a_log_line_of_its_own() {
        let forged = "x\nERROR resetting domain=other";

        let shown = escape(forged);

        assert_eq!(shown, "x\\nERROR resetting domain=other");
        assert!(!shown.contains('\n'));
    }

    #[test]
    fn terminal_escapes_and_reordering_characters_are_escaped() {
        let cases = [
            ("\u{1b}[31mred", "\\u{1b}[31mred"),
            ("abc\u{202e}fed", "abc\\u{202e}fed"),
            ("a\u{200b}b", "a\\u{200b}b"),
            ("tab\there", "tab\\there"),
            ("back\\slash", "back\\\\slash"),
            ("\u{7f}\u{85}", "\\u{7f}\\u{85}"),
            ("\u{2066}iso\u{2069}", "\\u{2066}iso\\u{2069}"),
        ];
        for (raw, shown) in cases {
            assert_eq!(escape(raw), shown, "{raw:?}");
        }
    }

    #[test]
    fn invalid_utf8_bytes_are_shown_as_hex() {
        assert_eq!(escape_bytes(b"ok\xff\n"), "ok\\xff\\n");
        assert_eq!(escape_bytes(b"fine"), "fine");
    }

    #[test]
    fn display_escapes_and_as_str_is_raw() {
        let name = Name::new("a\nb").expect("short");

        assert_eq!(name.to_string(), "a\\nb");
        assert_eq!(name.as_str(), "a\nb");
    }

    #[test]
    fn a_text_over_its_limit_is_refused_with_field_length_and_limit() {
        let err = Name::new("x".repeat(129)).expect_err("too long");

        assert_eq!(
            err,
            TooLong {
                field: "agent name",
                len: 129,
                limit: 128
            }
        );
        assert_eq!(
            err.to_string(),
            "agent name of 129 bytes exceeds its limit of 128 bytes"
        );
    }

    #[test]
    fn truncating_cuts_at_a_character_boundary() {
        let long = "é".repeat(100); // 200 bytes

        let cut = Name::truncating(long);

        assert_eq!(cut.len(), 128);
        assert!(cut.as_str().chars().all(|c| c == 'é'));
    }

    #[test]
    fn decoding_refuses_an_overlong_text_and_leaves_the_reason() {
        let bytes = postcard::to_allocvec(&"y".repeat(200)).expect("encodes");

        let decoded = postcard::from_bytes::<Name>(&bytes);

        assert!(decoded.is_err());
        assert_eq!(
            take_too_long(),
            Some(TooLong {
                field: "agent name",
                len: 200,
                limit: 128
            })
        );
        assert_eq!(take_too_long(), None);
    }

    #[test]
    fn json_keeps_the_bound_too() {
        let json = serde_json::to_string(&"z".repeat(129)).expect("json");

        let err = serde_json::from_str::<Name>(&json).expect_err("too long");

        assert!(
            err.to_string().contains("exceeds its limit of 128"),
            "{err}"
        );
    }

    #[test]
    fn blobs_are_bounded_in_both_formats() {
        type Chunk = Blob<limits::OutputChunk>;
        let big = vec![7u8; limits::OutputChunk::MAX + 1];
        let bytes = postcard::to_allocvec(&serde_bytes_like(&big)).expect("encodes");
        assert!(postcard::from_bytes::<Chunk>(&bytes).is_err());
        let fits = Chunk::new(vec![1, 2, 3]).expect("fits");
        let back: Chunk =
            postcard::from_bytes(&postcard::to_allocvec(&fits).expect("encodes")).expect("decodes");
        assert_eq!(back.as_bytes(), &[1, 2, 3]);
        let json = serde_json::to_string(&fits).expect("json");
        assert_eq!(serde_json::from_str::<Chunk>(&json).expect("back"), fits);
    }

    /// Serialises a byte slice as serde bytes (as `Blob` does), without the size check.
    fn serde_bytes_like(bytes: &[u8]) -> impl Serialize + '_ {
        struct B<'a>(&'a [u8]);
        impl Serialize for B<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(bytes)
    }
}

#[cfg(test)]
mod primer {
    use super::limits;

    #[test]
    fn the_primer_lists_every_limit_as_it_is() {
        let primer = include_str!("lib.rs");
        for (field, max) in limits::ALL {
            let row = primer
                .lines()
                .find(|l| l.starts_with(&format!("//! | {field} ")))
                .unwrap_or_else(|| panic!("the primer has no row for {field}"));
            assert!(row.ends_with(&format!("| {max} |")), "{row} (limit {max})");
        }
    }
}
