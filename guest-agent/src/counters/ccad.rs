//! `/etc/ccad.conf`: custom counters declared as AppLogic's ccad declares them, in its UDL
//! syntax, and fed through named pipes ([`super::pipe`]).
//!
//! ```text
//! counters Apache                      # a block: its name is an entity in MON
//!    {
//!    pace = 1000                       # ms; how often the block's values go out (default 1000)
//!    pipe = /tmp/cca                   # the named pipe the agent reads (default /tmp/cca)
//!    counter Total_Accesses            # the name a feeder writes into the pipe
//!       {
//!       name  = "Total hits"           # what MON shows (default: the counter's own name)
//!       desc  = "Total number of hits"
//!       units = "#"
//!       type  = "MAX"
//!       }
//!    counter tree: desc = "Any tree", units = "#"     # the one-line form
//!    group Fruits                      # a group: an entity of its own, named by its desc
//!       {
//!       desc = "Delicious Fruits!!!"
//!       counter pears: desc = "Number of pears", units = "pears"
//!       }
//!    }
//! ```
//!
//! The grammar: a file is `counters NAME { ... }` blocks. Inside a block: attributes `key =
//! value`, `counter NAME` entities and `group NAME { ... }` entities; inside a group: attributes
//! and counters. A counter has a block of attributes (`{` may stand on the next line), or a
//! colon and attributes separated by commas up to the end of the line (a comma at the end of a
//! line continues it), or nothing. A value is a bare word or a `"string"` (escapes `\"`, `\\`,
//! `\n`, `\t`). `#` starts a comment outside strings. Attributes are separated by line ends or
//! commas.
//!
//! Attributes: a block takes `pace` (milliseconds, 100 to 3600000), `pipe` (an absolute path)
//! and `desc`; a group `desc` (its entity's name; the group's own name without one); a counter
//! `name`, `desc`, `units`, `type`, `range_lower` and `range_upper` (numbers). An attribute
//! this agent does not know is a warning, so a file written for ccad still loads; a repeated
//! one is an error. Counter names must be unique in the whole file (ccad's rule: a pipe line
//! names a counter by it), and so must the names MON shows within each entity and the entities'
//! names; a duplicate is an error naming both places. Several blocks may share a pipe; a line
//! `.` on it then ends the set of each of them.
//!
//! [`parse`] is pure: the text in, the configuration (and its warnings) or the first error out,
//! every error naming the file, line and column.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use appmon_wire::escape;
use appmon_wire::report::locate;
use appmon_wire::text::{limits, Limit, Text};

/// Where the custom counters are declared unless guest.toml says otherwise.
pub const DEFAULT_CCAD_CONF: &str = "/etc/ccad.conf";
/// A block's pipe when it names none (ccad's default).
pub const DEFAULT_PIPE: &str = "/tmp/cca";
/// A block's pace when it names none (ccad's default).
pub const DEFAULT_PACE_MS: u32 = 1000;
/// The fastest pace a block may ask for.
pub const MIN_PACE_MS: u32 = 100;
/// The slowest pace a block may ask for: an hour.
pub const MAX_PACE_MS: u32 = 3_600_000;
/// The most custom counters one file may declare (the host keeps an hour of each).
pub const MAX_COUNTERS: usize = 1024;
/// The largest file read.
pub const MAX_FILE_LEN: u64 = 1 << 20;

/// The custom counters of one ccad.conf.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CcadConfig {
    pub blocks: Vec<Block>,
}

/// One `counters NAME { ... }` block.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// The block's name: the name of its own entity.
    pub name: Text<limits::CounterName>,
    pub pace_ms: u32,
    pub pipe: PathBuf,
    /// The block's own entity first (when it has counters of its own), then one per group.
    pub entities: Vec<Entity>,
    /// Where the block starts, for messages.
    pub line: usize,
}

/// A group of counters as MON shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub name: Text<limits::CounterName>,
    pub counters: Vec<Counter>,
}

/// One custom counter.
#[derive(Debug, Clone, PartialEq)]
pub struct Counter {
    /// The name a feeder writes into the pipe (`Total_Accesses`).
    pub key: String,
    /// The name MON shows (`name = "Total hits"`, else the key).
    pub name: Text<limits::CounterName>,
    pub description: Text<limits::Description>,
    pub units: Text<limits::Units>,
    pub kind: Text<limits::CounterKind>,
    pub range_lower: Option<f64>,
    pub range_upper: Option<f64>,
    pub line: usize,
    pub column: usize,
}

impl CcadConfig {
    /// Every counter with the block it belongs to, in file order.
    pub fn counters(&self) -> impl Iterator<Item = (&Block, &Entity, &Counter)> {
        self.blocks.iter().flat_map(|b| {
            b.entities
                .iter()
                .flat_map(move |e| e.counters.iter().map(move |c| (b, e, c)))
        })
    }
}

/// Something in the file this agent does not use, said once when the file loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CcadWarning {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A file and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub config: CcadConfig,
    pub warnings: Vec<CcadWarning>,
}

/// A ccad.conf that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CcadError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_FILE_LEN} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "{path}:{line}:{column}: {what} `{name}` is defined twice: first at line {first_line}, \
         column {first_column}"
    )]
    Duplicate {
        path: PathBuf,
        what: &'static str,
        name: String,
        line: usize,
        column: usize,
        first_line: usize,
        first_column: usize,
    },
}

/// Reads and parses the file at `path`; `Ok(None)` when there is none (ccad.conf is optional).
pub fn load(path: &Path) -> Result<Option<Parsed>, CcadError> {
    use std::io::Read;
    let read_error = |source| CcadError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(CcadError::TooLarge {
            path: path.to_owned(),
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
        syntax(path, &text, at, "the file is not UTF-8 text".into())
    })?;
    parse(&text, path).map(Some)
}

/// Parses `text`; `path` only names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Parsed, CcadError> {
    let tokens = tokenize(text).map_err(|(at, message)| syntax(path, text, at, message))?;
    let mut parser = Parser {
        text,
        path,
        tokens,
        next: 0,
        warnings: Vec::new(),
        places: Places::default(),
    };
    let config = parser.file()?;
    check_unique(&config, text, path, &parser.places)?;
    parser.warnings.sort_by_key(|w| (w.line, w.column));
    Ok(Parsed {
        config,
        warnings: parser.warnings,
    })
}

fn syntax(path: &Path, text: &str, at: usize, message: String) -> CcadError {
    let pos = locate(text, at);
    CcadError::Syntax {
        path: path.to_owned(),
        line: pos.line,
        column: pos.column,
        message,
    }
}

// ---- tokens ------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Open,
    Close,
    Eq,
    Colon,
    Comma,
    Newline,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("`{}`", escape(w)),
            Tok::Str(s) => format!("the string \"{}\"", escape(s)),
            Tok::Open => "`{`".into(),
            Tok::Close => "`}`".into(),
            Tok::Eq => "`=`".into(),
            Tok::Colon => "`:`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Newline => "the end of the line".into(),
            Tok::End => "the end of the file".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// Byte offset in the text.
    at: usize,
}

fn is_word_char(c: char) -> bool {
    !c.is_whitespace() && !matches!(c, '{' | '}' | '=' | ':' | ',' | '"' | '#')
}

fn tokenize(text: &str) -> Result<Vec<Token>, (usize, String)> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let tok = match c {
            '\n' => Tok::Newline,
            c if c.is_whitespace() => continue,
            '#' => {
                while chars.next_if(|&(_, c)| c != '\n').is_some() {}
                continue;
            }
            '{' => Tok::Open,
            '}' => Tok::Close,
            '=' => Tok::Eq,
            ':' => Tok::Colon,
            ',' => Tok::Comma,
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None | Some((_, '\n')) => {
                            return Err((at, "this string is not closed on its line".into()))
                        }
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => s.push('\n'),
                            Some((_, 't')) => s.push('\t'),
                            Some((_, c @ ('"' | '\\'))) => s.push(c),
                            Some((_, '\n')) | None => {
                                return Err((at, "this string is not closed on its line".into()))
                            }
                            Some((_, c)) => {
                                s.push('\\');
                                s.push(c);
                            }
                        },
                        Some((_, c)) => s.push(c),
                    }
                }
                Tok::Str(s)
            }
            c => {
                let mut w = String::from(c);
                while let Some((_, c)) = chars.next_if(|&(_, c)| is_word_char(c)) {
                    w.push(c);
                }
                Tok::Word(w)
            }
        };
        tokens.push(Token { tok, at });
    }
    tokens.push(Token {
        tok: Tok::End,
        at: text.len(),
    });
    Ok(tokens)
}

// ---- the parser --------------------------------------------------------------------------------

/// An attribute as written.
#[derive(Debug, Clone)]
struct Attr {
    key: String,
    key_at: usize,
    value: String,
    value_at: usize,
}

/// Where an entity or a counter was declared (a byte offset), for duplicate errors.
#[derive(Debug, Clone, Copy)]
struct Place {
    at: usize,
}

/// The places of every entity and counter of the configuration, in its order: what
/// [`check_unique`] names, while the configuration itself carries only lines and columns.
#[derive(Debug, Default)]
struct Places {
    entities: Vec<Place>,
    counters: Vec<Place>,
}

struct Parser<'a> {
    text: &'a str,
    path: &'a Path,
    tokens: Vec<Token>,
    next: usize,
    warnings: Vec<CcadWarning>,
    places: Places,
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        // The token list always ends with `End`, and `next` never passes it.
        &self.tokens[self.next.min(self.tokens.len() - 1)]
    }

    fn bump(&mut self) -> Token {
        let token = self.peek().clone();
        if token.tok != Tok::End {
            self.next += 1;
        }
        token
    }

    fn skip_newlines(&mut self) {
        while self.peek().tok == Tok::Newline {
            self.next += 1;
        }
    }

    fn error(&self, at: usize, message: String) -> CcadError {
        syntax(self.path, self.text, at, message)
    }

    fn unexpected(&self, token: &Token, wanted: &str) -> CcadError {
        self.error(
            token.at,
            format!("expected {wanted}, found {}", token.tok.describe()),
        )
    }

    fn warn(&mut self, at: usize, message: String) {
        let pos = locate(self.text, at);
        self.warnings.push(CcadWarning {
            line: pos.line,
            column: pos.column,
            message,
        });
    }

    fn file(&mut self) -> Result<CcadConfig, CcadError> {
        let mut config = CcadConfig::default();
        loop {
            self.skip_newlines();
            let token = self.bump();
            match &token.tok {
                Tok::End => break,
                Tok::Word(w) if w == "counters" => config.blocks.push(self.block(token.at)?),
                _ => return Err(self.unexpected(&token, "`counters NAME {`")),
            }
        }
        let total: usize = config
            .blocks
            .iter()
            .flat_map(|b| &b.entities)
            .map(|e| e.counters.len())
            .sum();
        if total > MAX_COUNTERS {
            return Err(self.error(
                0,
                format!("{total} counters are declared; at most {MAX_COUNTERS} are allowed"),
            ));
        }
        Ok(config)
    }

    /// A name after `counters`, `group` or `counter`.
    fn name(&mut self, after: &str) -> Result<(String, usize), CcadError> {
        let token = self.bump();
        match token.tok {
            Tok::Word(w) | Tok::Str(w) if !w.is_empty() => Ok((w, token.at)),
            _ => Err(self.unexpected(&token, &format!("a name after `{after}`"))),
        }
    }

    fn open(&mut self, what: &str) -> Result<usize, CcadError> {
        self.skip_newlines();
        let token = self.bump();
        match token.tok {
            Tok::Open => Ok(token.at),
            _ => Err(self.unexpected(&token, &format!("`{{` to open {what}"))),
        }
    }

    fn block(&mut self, start: usize) -> Result<Block, CcadError> {
        let (name, name_at) = self.name("counters")?;
        let name = self.text_value::<limits::CounterName>(name, name_at, "a block's name")?;
        let open_at = self.open(&format!("block `{name}`"))?;
        let mut own = Entity {
            name: name.clone(),
            counters: Vec::new(),
        };
        let own_place = Place { at: name_at };
        let mut counter_places = Vec::new();
        let mut groups: Vec<(Entity, Place, Vec<Place>)> = Vec::new();
        let mut attrs = Vec::new();
        loop {
            self.skip_newlines();
            let token = self.bump();
            match &token.tok {
                Tok::Close => break,
                Tok::End => {
                    return Err(self.error(
                        open_at,
                        format!("the `{{` of block `{name}` is never closed"),
                    ))
                }
                Tok::Word(w) if w == "counter" => {
                    let (counter, place) = self.counter()?;
                    own.counters.push(counter);
                    counter_places.push(place);
                }
                Tok::Word(w) if w == "group" => groups.push(self.group()?),
                Tok::Word(w) => {
                    let key = w.clone();
                    attrs.push(self.attribute(key, token.at)?);
                }
                _ => return Err(self.unexpected(&token, "an attribute, `counter`, `group` or `}`")),
            }
        }
        let mut pace_ms = DEFAULT_PACE_MS;
        let mut pipe = PathBuf::from(DEFAULT_PIPE);
        for attr in self.distinct(attrs)? {
            match attr.key.as_str() {
                "pace" => pace_ms = self.pace(&attr)?,
                "pipe" => pipe = self.pipe(&attr)?,
                "desc" => {}
                other => self.warn(
                    attr.key_at,
                    format!("unknown attribute `{}` of a block ignored", escape(other)),
                ),
            }
        }
        let mut entities = Vec::new();
        let mut entity_places = Vec::new();
        let mut all_counter_places = Vec::new();
        if !own.counters.is_empty() {
            entities.push(own);
            entity_places.push(own_place);
            all_counter_places.extend(counter_places);
        }
        for (group, place, places) in groups {
            entities.push(group);
            entity_places.push(place);
            all_counter_places.extend(places);
        }
        self.places.entities.extend(entity_places);
        self.places.counters.extend(all_counter_places);
        Ok(Block {
            name,
            pace_ms,
            pipe,
            entities,
            line: locate(self.text, start).line,
        })
    }

    fn group(&mut self) -> Result<(Entity, Place, Vec<Place>), CcadError> {
        let (name, name_at) = self.name("group")?;
        let open_at = self.open(&format!("group `{}`", escape(&name)))?;
        let mut counters = Vec::new();
        let mut places = Vec::new();
        let mut attrs = Vec::new();
        loop {
            self.skip_newlines();
            let token = self.bump();
            match &token.tok {
                Tok::Close => break,
                Tok::End => {
                    return Err(self.error(
                        open_at,
                        format!("the `{{` of group `{}` is never closed", escape(&name)),
                    ))
                }
                Tok::Word(w) if w == "counter" => {
                    let (counter, place) = self.counter()?;
                    counters.push(counter);
                    places.push(place);
                }
                Tok::Word(w) if w == "group" => {
                    return Err(self.error(token.at, "groups do not nest".into()))
                }
                Tok::Word(w) => {
                    let key = w.clone();
                    attrs.push(self.attribute(key, token.at)?);
                }
                _ => return Err(self.unexpected(&token, "an attribute, `counter` or `}`")),
            }
        }
        let mut shown = (name, name_at);
        for attr in self.distinct(attrs)? {
            match attr.key.as_str() {
                "desc" => shown = (attr.value, attr.value_at),
                other => self.warn(
                    attr.key_at,
                    format!("unknown attribute `{}` of a group ignored", escape(other)),
                ),
            }
        }
        let entity_name = self.text_value(shown.0, shown.1, "a group's name")?;
        Ok((
            Entity {
                name: entity_name,
                counters,
            },
            Place { at: shown.1 },
            places,
        ))
    }

    fn counter(&mut self) -> Result<(Counter, Place), CcadError> {
        let (key, key_at) = self.name("counter")?;
        let key_text = self.text_value::<limits::CounterName>(key.clone(), key_at, "a counter")?;
        let mut attrs = Vec::new();
        match self.peek().tok {
            Tok::Colon => {
                self.bump();
                self.one_line_attributes(&mut attrs)?;
            }
            Tok::Open => {
                let open_at = self.bump().at;
                self.block_attributes(&key, open_at, &mut attrs)?;
            }
            Tok::Newline => {
                // `{` may stand on a line of its own; otherwise the counter has no attributes.
                let here = self.next;
                self.skip_newlines();
                if self.peek().tok == Tok::Open {
                    let open_at = self.bump().at;
                    self.block_attributes(&key, open_at, &mut attrs)?;
                } else {
                    self.next = here;
                }
            }
            Tok::Close | Tok::End => {}
            _ => {
                let token = self.peek().clone();
                return Err(self.unexpected(&token, "`:` or `{` after the counter's name"));
            }
        }
        let mut counter = Counter {
            name: key_text,
            key,
            description: Text::default(),
            units: Text::default(),
            kind: Text::default(),
            range_lower: None,
            range_upper: None,
            line: 0,
            column: 0,
        };
        for attr in self.distinct(attrs)? {
            match attr.key.as_str() {
                "name" => counter.name = self.text_value(attr.value, attr.value_at, "`name`")?,
                "desc" => {
                    counter.description = self.text_value(attr.value, attr.value_at, "`desc`")?
                }
                "units" => counter.units = self.text_value(attr.value, attr.value_at, "`units`")?,
                "type" => counter.kind = self.text_value(attr.value, attr.value_at, "`type`")?,
                "range_lower" => counter.range_lower = Some(self.number(&attr)?),
                "range_upper" => counter.range_upper = Some(self.number(&attr)?),
                other => self.warn(
                    attr.key_at,
                    format!("unknown attribute `{}` of a counter ignored", escape(other)),
                ),
            }
        }
        let pos = locate(self.text, key_at);
        counter.line = pos.line;
        counter.column = pos.column;
        Ok((counter, Place { at: key_at }))
    }

    /// `a = b, c = d` up to the end of the line (a trailing comma continues it).
    fn one_line_attributes(&mut self, attrs: &mut Vec<Attr>) -> Result<(), CcadError> {
        if matches!(self.peek().tok, Tok::Newline | Tok::End | Tok::Close) {
            return Ok(());
        }
        loop {
            let token = self.bump();
            let Tok::Word(key) = token.tok.clone() else {
                return Err(self.unexpected(&token, "an attribute name"));
            };
            attrs.push(self.attribute(key, token.at)?);
            if self.peek().tok == Tok::Comma {
                self.bump();
                self.skip_newlines();
                continue;
            }
            return Ok(());
        }
    }

    /// Attributes up to the `}` that closes a counter's block.
    fn block_attributes(
        &mut self,
        key: &str,
        open_at: usize,
        attrs: &mut Vec<Attr>,
    ) -> Result<(), CcadError> {
        loop {
            self.skip_newlines();
            let token = self.bump();
            match token.tok {
                Tok::Close => return Ok(()),
                Tok::Comma => {}
                Tok::End => {
                    return Err(self.error(
                        open_at,
                        format!("the `{{` of counter `{}` is never closed", escape(key)),
                    ))
                }
                Tok::Word(ref w) if w == "counter" || w == "group" => {
                    return Err(self.error(
                        token.at,
                        format!("`{w}` inside counter `{}`: is a `}}` missing?", escape(key)),
                    ))
                }
                Tok::Word(k) => attrs.push(self.attribute(k, token.at)?),
                _ => return Err(self.unexpected(&token, "an attribute or `}`")),
            }
        }
    }

    /// `= value` after an attribute's name, up to a line end, a comma or a `}`.
    fn attribute(&mut self, key: String, key_at: usize) -> Result<Attr, CcadError> {
        let eq = self.bump();
        if eq.tok != Tok::Eq {
            return Err(self.unexpected(&eq, &format!("`=` after `{}`", escape(&key))));
        }
        let token = self.bump();
        let value = match token.tok {
            Tok::Word(v) | Tok::Str(v) => v,
            _ => return Err(self.unexpected(&token, &format!("a value for `{}`", escape(&key)))),
        };
        match self.peek().tok {
            Tok::Newline | Tok::Comma | Tok::Close | Tok::End => Ok(Attr {
                key,
                key_at,
                value,
                value_at: token.at,
            }),
            _ => {
                let next = self.peek().clone();
                Err(self.unexpected(
                    &next,
                    &format!(
                        "the end of `{}`'s value (quote a value with spaces)",
                        escape(&key)
                    ),
                ))
            }
        }
    }

    /// The attributes, refusing any given twice.
    fn distinct(&self, attrs: Vec<Attr>) -> Result<Vec<Attr>, CcadError> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for attr in &attrs {
            if let Some(first) = seen.insert(attr.key.as_str(), attr.key_at) {
                let (pos, first) = (locate(self.text, attr.key_at), locate(self.text, first));
                return Err(CcadError::Duplicate {
                    path: self.path.to_owned(),
                    what: "attribute",
                    name: escape(&attr.key).into_owned(),
                    line: pos.line,
                    column: pos.column,
                    first_line: first.line,
                    first_column: first.column,
                });
            }
        }
        Ok(attrs)
    }

    fn text_value<L: Limit>(
        &self,
        value: String,
        at: usize,
        what: &str,
    ) -> Result<Text<L>, CcadError> {
        Text::new(value).map_err(|e| {
            self.error(
                at,
                format!(
                    "{what} of {} bytes is longer than the {} bytes a {} may have",
                    e.len, e.limit, e.field
                ),
            )
        })
    }

    fn pace(&self, attr: &Attr) -> Result<u32, CcadError> {
        match attr.value.parse::<u32>() {
            Ok(ms) if (MIN_PACE_MS..=MAX_PACE_MS).contains(&ms) => Ok(ms),
            _ => Err(self.error(
                attr.value_at,
                format!(
                    "pace `{}` is not a number of milliseconds from {MIN_PACE_MS} to {MAX_PACE_MS}",
                    escape(&attr.value)
                ),
            )),
        }
    }

    fn pipe(&self, attr: &Attr) -> Result<PathBuf, CcadError> {
        let path = PathBuf::from(&attr.value);
        if !path.is_absolute() {
            return Err(self.error(
                attr.value_at,
                format!("pipe `{}` is not an absolute path", escape(&attr.value)),
            ));
        }
        Ok(path)
    }

    fn number(&self, attr: &Attr) -> Result<f64, CcadError> {
        match attr.value.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(self.error(
                attr.value_at,
                format!(
                    "`{}` of `{}` is not a number",
                    escape(&attr.value),
                    escape(&attr.key)
                ),
            )),
        }
    }
}

/// Counter names unique in the file; entity names unique, and not a standard entity's; the
/// names MON shows unique within each entity.
fn check_unique(
    config: &CcadConfig,
    text: &str,
    path: &Path,
    places: &Places,
) -> Result<(), CcadError> {
    let duplicate = |what: &'static str, name: &str, at: usize, first: usize| {
        // Name them in the order they stand in the file.
        let (first, at) = (first.min(at), first.max(at));
        let (pos, first) = (locate(text, at), locate(text, first));
        CcadError::Duplicate {
            path: path.to_owned(),
            what,
            name: escape(name).into_owned(),
            line: pos.line,
            column: pos.column,
            first_line: first.line,
            first_column: first.column,
        }
    };
    let mut entity_places = places.entities.iter();
    let mut counter_places = places.counters.iter();
    let mut entities: HashMap<&str, usize> = HashMap::new();
    let mut keys: HashMap<&str, usize> = HashMap::new();
    for block in &config.blocks {
        for entity in &block.entities {
            let at = entity_places.next().map_or(0, |p| p.at);
            if super::standard::is_standard_entity(entity.name.as_str()) {
                return Err(syntax(
                    path,
                    text,
                    at,
                    format!(
                        "entity `{}` is a name the standard counters use",
                        entity.name
                    ),
                ));
            }
            if let Some(first) = entities.insert(entity.name.as_str(), at) {
                return Err(duplicate("entity", entity.name.as_str(), at, first));
            }
            let mut shown: HashMap<&str, usize> = HashMap::new();
            for counter in &entity.counters {
                let at = counter_places.next().map_or(0, |p| p.at);
                if let Some(first) = keys.insert(counter.key.as_str(), at) {
                    return Err(duplicate("counter", &counter.key, at, first));
                }
                if let Some(first) = shown.insert(counter.name.as_str(), at) {
                    return Err(duplicate(
                        "counter name in one entity",
                        counter.name.as_str(),
                        at,
                        first,
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
