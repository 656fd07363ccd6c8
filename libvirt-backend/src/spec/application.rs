//! `<appmon:application>`: a managed application inside `<appmon:monitor>`, a command the host
//! agent has the guest launch, polls, and restarts by a policy (Serviceguard's cmappmgr). It
//! travels with the domain like the rest of the element.
//!
//! ```xml
//! <appmon:application name="db" user="mydb" cwd="/var/lib/mydb" poll-interval="5s"
//!                     max-restarts="3" restart-window="10m" restart-delay="1s"
//!                     on-failure="reset">
//!   <appmon:arg value="/usr/sbin/mydb"/>
//!   <appmon:arg value="--config"/>
//!   <appmon:arg value="/etc/mydb/main.conf"/>
//!   <appmon:env name="MYDB_MODE" value="fast"/>
//! </appmon:application>
//! ```
//!
//! The argv is one `<arg>` per argument (no shell, no quoting to get wrong), the first an
//! absolute path; the guest's allowlist decides whether it may run. `name` is unique in the
//! domain (letters, digits, `.`, `_`, `-`; at most 32): the host names its launches after it.
//! Every other attribute is optional; [`ApplicationSpec`] leaves what is left out to the host
//! agent's defaults. `on-failure` is what happens once `max-restarts` restarts within
//! `restart-window` are spent: `give-up` (the default) or `reset` (the VM, through its reset
//! budget).

use std::time::Duration;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

use super::{attributes, format_duration, parse_duration, SpecError};

/// The longest application name.
pub const MAX_NAME: usize = 32;
/// The most arguments an application's argv may have (the guest agent's own bound).
pub const MAX_ARGS: usize = 256;

/// What happens when an application's restarts are spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnFailure {
    /// Stop restarting, log and raise it; the VM is left alone.
    GiveUp,
    /// Ask for a reset of the VM (through the VM's reset budget).
    Reset,
}

impl OnFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::GiveUp => "give-up",
            OnFailure::Reset => "reset",
        }
    }

    pub fn parse(text: &str) -> Option<OnFailure> {
        match text {
            "give-up" => Some(OnFailure::GiveUp),
            "reset" => Some(OnFailure::Reset),
            _ => None,
        }
    }
}

/// One managed application as the metadata states it. `None` takes the host's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplicationSpec {
    pub name: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub cwd: Option<String>,
    pub poll_interval: Option<Duration>,
    pub max_restarts: Option<u32>,
    pub restart_window: Option<Duration>,
    pub restart_delay: Option<Duration>,
    pub on_failure: Option<OnFailure>,
}

impl ApplicationSpec {
    /// An application with this name and argv and every policy left to the defaults.
    pub fn new(name: impl Into<String>, argv: Vec<String>) -> ApplicationSpec {
        ApplicationSpec {
            name: name.into(),
            argv,
            env: Vec::new(),
            user: None,
            cwd: None,
            poll_interval: None,
            max_restarts: None,
            restart_window: None,
            restart_delay: None,
            on_failure: None,
        }
    }

    /// The element, with `prefix` (`"appmon:"` or `""`) on every name.
    pub(super) fn write(&self, p: &str, out: &mut String) {
        let mut attrs = format!(" name=\"{}\"", escape_attr(&self.name));
        let mut attr = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                attrs.push_str(&format!(" {name}=\"{}\"", escape_attr(&v)));
            }
        };
        attr("user", self.user.clone());
        attr("cwd", self.cwd.clone());
        attr("poll-interval", self.poll_interval.map(format_duration));
        attr("max-restarts", self.max_restarts.map(|n| n.to_string()));
        attr("restart-window", self.restart_window.map(format_duration));
        attr("restart-delay", self.restart_delay.map(format_duration));
        attr("on-failure", self.on_failure.map(|f| f.as_str().to_owned()));
        out.push_str(&format!("<{p}application{attrs}>"));
        for arg in &self.argv {
            out.push_str(&format!("<{p}arg value=\"{}\"/>", escape_attr(arg)));
        }
        for (name, value) in &self.env {
            out.push_str(&format!(
                "<{p}env name=\"{}\" value=\"{}\"/>",
                escape_attr(name),
                escape_attr(value)
            ));
        }
        out.push_str(&format!("</{p}application>"));
    }
}

/// Reads one `<application>` element whose start is `start`; for a start tag (`empty` false)
/// everything up to its end tag. `ours` says whether a child element is in our namespace.
pub(super) fn read(
    reader: &mut NsReader<&[u8]>,
    start: &BytesStart<'_>,
    empty: bool,
    ours: impl Fn(&ResolveResult<'_>) -> bool,
) -> Result<ApplicationSpec, SpecError> {
    let attrs = attributes(start)?;
    let name = attrs
        .iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.clone())
        .ok_or(SpecError::MissingAttribute {
            element: "application",
            attribute: "name",
        })?;
    let valid_name = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !valid_name {
        return Err(SpecError::BadAttribute {
            element: "application".into(),
            attribute: "name".into(),
            value: name,
            problem: "expected 1 to 32 letters, digits, '.', '_' or '-'",
        });
    }
    let bad = |problem: String| SpecError::BadApplication {
        name: name.clone(),
        problem,
    };
    let mut app = ApplicationSpec::new(name.clone(), Vec::new());
    for (key, value) in attrs {
        let duration = |nonzero: bool| match parse_duration(&value) {
            Some(d) if !(nonzero && d.is_zero()) => Ok(d),
            Some(_) => Err(bad(format!("{key}=\"{value}\" must be more than zero"))),
            None => Err(bad(format!(
                "{key}=\"{value}\" is not a duration such as 500ms, 30s, 2m or 1h"
            ))),
        };
        match key.as_str() {
            "name" => {}
            "user" if !value.is_empty() => app.user = Some(value),
            "cwd" if value.starts_with('/') => app.cwd = Some(value),
            "cwd" => return Err(bad(format!("cwd=\"{value}\" is not an absolute path"))),
            "poll-interval" => app.poll_interval = Some(duration(true)?),
            "restart-window" => app.restart_window = Some(duration(true)?),
            "restart-delay" => app.restart_delay = Some(duration(false)?),
            "max-restarts" => {
                app.max_restarts =
                    Some(value.parse().map_err(|_| {
                        bad(format!("max-restarts=\"{value}\" is not a whole number"))
                    })?)
            }
            "on-failure" => {
                app.on_failure = Some(OnFailure::parse(&value).ok_or_else(|| {
                    bad(format!("on-failure=\"{value}\": expected give-up or reset"))
                })?)
            }
            _ => return Err(bad(format!("unknown attribute {key}=\"{value}\""))),
        }
    }
    if !empty {
        read_children(reader, &mut app, &bad, &ours)?;
    }
    match app.argv.first() {
        None => Err(bad("has no <arg>: the first names the program".into())),
        Some(program) if !program.starts_with('/') => Err(bad(format!(
            "the program \"{program}\" is not an absolute path"
        ))),
        Some(_) if app.argv.len() > MAX_ARGS => Err(bad(format!(
            "has {} arguments; at most {MAX_ARGS}",
            app.argv.len()
        ))),
        Some(_) => Ok(app),
    }
}

fn read_children(
    reader: &mut NsReader<&[u8]>,
    app: &mut ApplicationSpec,
    bad: &impl Fn(String) -> SpecError,
    ours: &impl Fn(&ResolveResult<'_>) -> bool,
) -> Result<(), SpecError> {
    loop {
        let event = reader
            .read_resolved_event()
            .map_err(|e| SpecError::Xml(e.to_string()))?;
        match event {
            (ns, Event::Start(e)) | (ns, Event::Empty(e)) => {
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if !ours(&ns) || !matches!(local.as_str(), "arg" | "env") {
                    return Err(bad(format!("<{local}> is not an element of <application>")));
                }
                let mut value = None;
                let mut name = None;
                for (key, v) in attributes(&e)? {
                    match (local.as_str(), key.as_str()) {
                        (_, "value") => value = Some(v),
                        ("env", "name") => name = Some(v),
                        _ => return Err(bad(format!("<{local}> has no attribute {key}"))),
                    }
                }
                let value = value.ok_or_else(|| bad(format!("<{local}> needs a value")))?;
                if local == "arg" {
                    app.argv.push(value);
                } else {
                    let name = name
                        .filter(|n| !n.is_empty() && !n.contains(['=', '\0']))
                        .ok_or_else(|| bad("<env> needs a name without '='".into()))?;
                    app.env.push((name, value));
                }
            }
            (_, Event::End(e)) if e.local_name().as_ref() == b"application" => return Ok(()),
            (_, Event::Eof) => return Err(SpecError::Xml("<application> is not closed".into())),
            _ => {}
        }
    }
}

/// Escapes an attribute value so that it survives a round trip through libxml2 (libvirt's
/// parser), which turns a literal newline or tab in an attribute into a space.
fn escape_attr(text: &str) -> String {
    quick_xml::escape::escape(text)
        .replace('\n', "&#10;")
        .replace('\r', "&#13;")
        .replace('\t', "&#9;")
}
