//! A `/monapi` URL as MON's clients write it, parsed into what it asks for, or a 400 that says
//! what was wrong.
//!
//! ```text
//! /monapi/desc                         the appliances (domains)
//! /monapi/desc/<apps>                  their entities
//! /monapi/desc/<apps>/<ents>           their counters' names
//! /monapi/desc/<apps>/<ents>/<cnts>    the counters' descriptions
//! /monapi/val[/<apps>[/<ents>[/<cnts>]]]   values; an omitted part means `*`
//! ?fmt=xml|json|udl                    XML when left out
//! ```
//!
//! Each part is a name, a comma list of names, or `*`. The path is split into parts and lists
//! before %-decoding, so `%2F` and `%2C` are a slash and a comma inside a name. Bounds: the URL
//! at most [`MAX_URL`] bytes, at most [`MAX_NAMES`] names in a list (so a query's work is
//! bounded by what it asks and what there is), names at most [`MAX_NAME`] bytes (a counter
//! name's limit on the wire). `.` and `..` parts are refused: MON names no files, but a client
//! that sends them is confused or probing.

use std::collections::HashSet;

/// The longest URL (path and query) taken.
pub const MAX_URL: usize = 4096;
/// The most names one comma list may hold.
pub const MAX_NAMES: usize = 256;
/// The longest name, after %-decoding (the wire's counter and entity name limit; domain names
/// are shorter).
pub const MAX_NAME: usize = 128;

/// What a `/monapi` URL asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonQuery {
    pub call: Call,
    pub apps: Selector,
    pub ents: Selector,
    pub cnts: Selector,
    pub format: Format,
}

/// Which call, and for `desc` how deep it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `/monapi/desc...`: the appliances, their entities, their counters' names, or (with
    /// `<cnts>`) the counters' descriptions.
    Desc(Depth),
    /// `/monapi/val...`: the counters' latest values.
    Val,
}

/// How much of the tree a `desc` call shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Depth {
    Appliances,
    Entities,
    CounterNames,
    Descriptions,
}

/// Names asked for in one part of the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    All,
    /// Distinct names, in the order asked.
    Names(Vec<String>),
}

impl Selector {
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Selector::All => true,
            Selector::Names(names) => names.iter().any(|n| n == name),
        }
    }
}

/// The answer's format (`?fmt=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Xml,
    Json,
    Udl,
}

impl Format {
    /// The HTTP content type of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Xml => "application/xml; charset=utf-8",
            Format::Json => "application/json",
            Format::Udl => "text/plain; charset=utf-8",
        }
    }
}

/// Why a URL is not a `/monapi` call (HTTP 400, the message in the body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the URL is {len} bytes long; at most {MAX_URL} are taken")]
    TooLong { len: usize },
    #[error("{path:?} is not a /monapi call (/monapi/desc[/apps[/ents[/cnts]]] or /monapi/val[/apps[/ents[/cnts]]])")]
    UnknownCall { path: String },
    #[error("part {part} of the path is `{raw}`: `.` and `..` name nothing here")]
    Traversal { part: usize, raw: String },
    #[error("part {part} of the path has a bad %-encoding or is not UTF-8: {raw:?}")]
    BadEncoding { part: usize, raw: String },
    #[error("part {part} of the path has an empty name")]
    EmptyName { part: usize },
    #[error("part {part} of the path has a name longer than {MAX_NAME} bytes")]
    NameTooLong { part: usize },
    #[error("part {part} of the path lists more than {MAX_NAMES} names")]
    TooManyNames { part: usize },
    #[error("fmt={value:?} is not xml, json or udl")]
    BadFormat { value: String },
    #[error("unknown query parameter {name:?} (only fmt is taken)")]
    UnknownParameter { name: String },
}

/// Parses `path` and the query string (without the `?`).
pub fn parse(path: &str, query: Option<&str>) -> Result<MonQuery, QueryError> {
    let len = path.len() + query.map_or(0, |q| q.len() + 1);
    if len > MAX_URL {
        return Err(QueryError::TooLong { len });
    }
    let format = parse_format(query)?;
    let unknown = || QueryError::UnknownCall {
        path: path.chars().take(200).collect(),
    };
    let rest = path.strip_prefix("/monapi/").ok_or_else(unknown)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut parts = rest.split('/');
    let call = parts.next().unwrap_or_default();
    let parts: Vec<&str> = parts.collect();
    if parts.len() > 3 {
        return Err(unknown());
    }
    let call = match call {
        "desc" => Call::Desc(match parts.len() {
            0 => Depth::Appliances,
            1 => Depth::Entities,
            2 => Depth::CounterNames,
            _ => Depth::Descriptions,
        }),
        "val" => Call::Val,
        _ => return Err(unknown()),
    };
    let mut selectors = [Selector::All, Selector::All, Selector::All];
    for (i, raw) in parts.iter().enumerate() {
        selectors[i] = selector(i + 1, raw)?;
    }
    let [apps, ents, cnts] = selectors;
    Ok(MonQuery {
        call,
        apps,
        ents,
        cnts,
        format,
    })
}

fn parse_format(query: Option<&str>) -> Result<Format, QueryError> {
    let mut format = Format::Xml;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "fmt" {
            return Err(QueryError::UnknownParameter {
                name: decode(name).unwrap_or_else(|| name.to_owned()),
            });
        }
        format = match decode(value)
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("xml") => Format::Xml,
            Some("json") => Format::Json,
            Some("udl") => Format::Udl,
            _ => {
                return Err(QueryError::BadFormat {
                    value: value.chars().take(64).collect(),
                })
            }
        };
    }
    Ok(format)
}

/// One part of the path: `*`, or a comma list of %-encoded names.
fn selector(part: usize, raw: &str) -> Result<Selector, QueryError> {
    if raw == "." || raw == ".." {
        return Err(QueryError::Traversal {
            part,
            raw: raw.to_owned(),
        });
    }
    let mut names = Vec::new();
    let mut seen = HashSet::new();
    for (n, item) in raw.split(',').enumerate() {
        if n >= MAX_NAMES {
            return Err(QueryError::TooManyNames { part });
        }
        if item == "*" {
            return Ok(Selector::All);
        }
        let name = decode(item).ok_or_else(|| QueryError::BadEncoding {
            part,
            raw: item.chars().take(64).collect(),
        })?;
        if name.is_empty() {
            return Err(QueryError::EmptyName { part });
        }
        if name == "." || name == ".." {
            return Err(QueryError::Traversal { part, raw: name });
        }
        if name.len() > MAX_NAME {
            return Err(QueryError::NameTooLong { part });
        }
        if seen.insert(name.clone()) {
            names.push(name);
        }
    }
    Ok(Selector::Names(names))
}

/// %-decodes `text`; `None` for a bad escape or bytes that are not UTF-8.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Selector {
        Selector::Names(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn calls_and_depths_as_the_seed_lists_them() {
        let cases = [
            ("/monapi/desc", Call::Desc(Depth::Appliances)),
            ("/monapi/desc/", Call::Desc(Depth::Appliances)),
            ("/monapi/desc/main.web", Call::Desc(Depth::Entities)),
            ("/monapi/desc/*/CPU", Call::Desc(Depth::CounterNames)),
            ("/monapi/desc/*/*/*", Call::Desc(Depth::Descriptions)),
            ("/monapi/val", Call::Val),
            ("/monapi/val/main.web", Call::Val),
            ("/monapi/val/a/b/c", Call::Val),
        ];
        for (path, call) in cases {
            assert_eq!(parse(path, None).map(|q| q.call), Ok(call), "{path}");
        }
    }

    #[test]
    fn omitted_parts_mean_all_and_lists_are_split_before_decoding() {
        let q = parse("/monapi/val/main.web,a%2Cb/Terminal%20in", None).expect("parses");

        assert_eq!(q.apps, names(&["main.web", "a,b"]));
        assert_eq!(q.ents, names(&["Terminal in"]));
        assert_eq!(q.cnts, Selector::All);
        assert_eq!(q.format, Format::Xml);
        assert_eq!(
            parse("/monapi/val/x,*,y", None).map(|q| q.apps),
            Ok(Selector::All)
        );
        assert_eq!(
            parse("/monapi/val/a%2Fb", None).map(|q| q.apps),
            Ok(names(&["a/b"]))
        );
    }

    #[test]
    fn formats_are_chosen_by_fmt() {
        for (query, format) in [
            (None, Format::Xml),
            (Some("fmt=xml"), Format::Xml),
            (Some("fmt=json"), Format::Json),
            (Some("fmt=UDL"), Format::Udl),
        ] {
            assert_eq!(parse("/monapi/desc", query).map(|q| q.format), Ok(format));
        }
    }

    #[test]
    fn malformed_urls_are_refused_saying_what_was_wrong() {
        let long = format!("/monapi/val/{}", "a".repeat(MAX_URL));
        let many = format!(
            "/monapi/val/{}",
            (0..10_000)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let cases: Vec<(&str, Option<&str>, QueryError)> = vec![
            (
                "/monapi/val/../etc",
                None,
                QueryError::Traversal {
                    part: 1,
                    raw: "..".into(),
                },
            ),
            (
                "/monapi/val/%2e%2e",
                None,
                QueryError::Traversal {
                    part: 1,
                    raw: "..".into(),
                },
            ),
            (
                "/monapi/val/a/%zz",
                None,
                QueryError::BadEncoding {
                    part: 2,
                    raw: "%zz".into(),
                },
            ),
            (
                "/monapi/val/%ff",
                None,
                QueryError::BadEncoding {
                    part: 1,
                    raw: "%ff".into(),
                },
            ),
            ("/monapi/val/a,,b", None, QueryError::EmptyName { part: 1 }),
            (
                "/monapi/desc",
                Some("fmt=yaml"),
                QueryError::BadFormat {
                    value: "yaml".into(),
                },
            ),
            (
                "/monapi/desc",
                Some("x=1"),
                QueryError::UnknownParameter { name: "x".into() },
            ),
            (
                "/monapi/nope",
                None,
                QueryError::UnknownCall {
                    path: "/monapi/nope".into(),
                },
            ),
            (
                "/monapi/val/a/b/c/d",
                None,
                QueryError::UnknownCall {
                    path: "/monapi/val/a/b/c/d".into(),
                },
            ),
            (
                "/elsewhere",
                None,
                QueryError::UnknownCall {
                    path: "/elsewhere".into(),
                },
            ),
            (&long, None, QueryError::TooLong { len: long.len() }),
        ];
        for (path, query, want) in cases {
            assert_eq!(parse(path, query), Err(want), "{path}");
        }
        assert!(matches!(
            parse(&many[..MAX_URL.min(many.len())], None),
            Err(QueryError::TooManyNames { part: 1 })
        ));
    }
}
