//! The `<appmon:monitor>` element in a domain's `<metadata>`: whether and how appmon monitors the
//! domain. It lives in the domain definition, so the policy travels with the domain on
//! migration. Host-wide defaults fill whatever the element leaves out.
//!
//! ```xml
//! <appmon:monitor xmlns:appmon="https://appmon.dev/xmlns/monitor/1">
//!   <appmon:policy failure-interval="30s" min-uptime="2m" max-resets="3" reset-window="1h"
//!                  reset-method="power-cycle"/>
//!   <appmon:hybrid-vsock path="/run/appmon/vm1.vsock" port="5315"/>
//! </appmon:monitor>
//! ```
//!
//! The transport is one of `<appmon:vsock [cid=".."] [port=".."]/>` (kernel vhost-vsock; the
//! CID comes from the domain's `<vsock>` device when left out), `<appmon:hybrid-vsock
//! path=".." [port=".."]/>` (a vhost-user-vsock backend's Unix socket), or `<appmon:channel
//! [path=".."] [name=".."]/>` (a virtio-serial channel's host-side Unix socket; without a path,
//! the one libvirt generated for the channel `name` in the live XML).
//!
//! Any number of `<appmon:application>` elements name the managed applications the host agent
//! has the guest launch and keeps running ([`application`]).
//!
//! `<appmon:cluster resource=".."/>` says the domain is a Pacemaker resource
//! (`ocf:heartbeat:VirtualDomain`) of that id: what appmon cannot do in place (a power-cycle of a
//! transient domain, recovery after the reset budget is spent) it hands to the cluster
//! (host-agent README, "Inside a Pacemaker cluster").

pub mod application;

use std::path::PathBuf;
use std::time::Duration;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

pub use appmon_control::ResetMethod;
use appmon_wire::DEFAULT_VSOCK_PORT;

pub use application::{ApplicationSpec, OnFailure};

/// The XML namespace of appmon's metadata element.
pub const METADATA_URI: &str = "https://appmon.dev/xmlns/monitor/1";
/// The namespace prefix libvirt writes the element with.
pub const METADATA_KEY: &str = "appmon";
/// The virtio-serial channel name the guest agent opens by default.
pub const DEFAULT_CHANNEL_NAME: &str = "org.appmon.agent.0";

/// A domain's monitoring settings. `None` fields take the host's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorSpec {
    pub failure_interval: Option<Duration>,
    pub min_uptime: Option<Duration>,
    pub max_resets: Option<u32>,
    pub reset_window: Option<Duration>,
    pub reset_method: Option<ResetMethod>,
    pub transport: Transport,
    /// Managed applications, in the element's order, names unique.
    pub applications: Vec<ApplicationSpec>,
    /// The id of the Pacemaker resource that runs this domain, when a cluster does.
    pub cluster_resource: Option<String>,
}

/// How the host agent reaches the guest agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Kernel vhost-vsock: AF_VSOCK to the guest's CID.
    Vsock { cid: Option<u32>, port: u32 },
    /// Hybrid vsock: the Unix socket of a vhost-user-vsock backend, `CONNECT <port>`.
    HybridVsock { path: PathBuf, port: u32 },
    /// A virtio-serial channel's host-side Unix socket.
    Channel { path: Option<PathBuf>, name: String },
}

/// What is wrong with a metadata element. Each names the element or attribute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("metadata is not well-formed XML: {0}")]
    Xml(String),
    #[error("metadata has no <monitor> element in namespace {METADATA_URI}")]
    NoMonitorElement,
    #[error("<{element}> attribute {attribute}={value:?}: {problem}")]
    BadAttribute {
        element: String,
        attribute: String,
        value: String,
        problem: &'static str,
    },
    #[error("<{element}> has an attribute {attribute} appmon does not know")]
    UnknownAttribute { element: String, attribute: String },
    #[error("<{element}> is not an element appmon knows inside <monitor>")]
    UnknownElement { element: String },
    #[error("<{element}> needs the attribute {attribute}")]
    MissingAttribute {
        element: &'static str,
        attribute: &'static str,
    },
    #[error("<monitor> names no transport (vsock, hybrid-vsock or channel)")]
    NoTransport,
    #[error("<monitor> names more than one transport")]
    TwoTransports,
    #[error("<application name=\"{name}\">: {problem}")]
    BadApplication { name: String, problem: String },
    #[error("two <application> elements are named {0:?}")]
    DuplicateApplication(String),
    #[error("<monitor> has more than one <cluster> element")]
    TwoClusterElements,
}

/// Parses a duration as operators write it: `500ms`, `30s`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let value: u64 = text[..digits].parse().ok()?;
    let millis = match &text[digits..] {
        "ms" => value,
        "" | "s" => value.checked_mul(1_000)?,
        "m" => value.checked_mul(60_000)?,
        "h" => value.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

/// Writes a duration in the largest unit that represents it exactly.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1_000 == 0 {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

impl MonitorSpec {
    /// A spec with every policy field left to the host's defaults.
    pub fn with_transport(transport: Transport) -> Self {
        MonitorSpec {
            failure_interval: None,
            min_uptime: None,
            max_resets: None,
            reset_window: None,
            reset_method: None,
            transport,
            applications: Vec::new(),
            cluster_resource: None,
        }
    }

    /// Parses the element, in either of two forms:
    ///
    /// - as libvirt returns it from virDomainGetMetadata: libvirt strips our namespace from the
    ///   element and its children (`<monitor><vsock cid="5"/></monitor>`, possibly with a stray
    ///   `xmlns:appmon` declaration left on the root);
    /// - as it stands in the domain XML and as [`MonitorSpec::to_xml`] writes it, in namespace
    ///   [`METADATA_URI`] under any prefix.
    ///
    /// A `<monitor>` in another namespace is not ours ([`SpecError::NoMonitorElement`]).
    pub fn from_xml(xml: &str) -> Result<Self, SpecError> {
        let mut reader = NsReader::from_str(xml);
        reader.config_mut().trim_text(true);
        let mut in_monitor = false;
        let mut seen_monitor = false;
        // Whether the <monitor> we read carries our namespace (domain XML form) or none (the
        // stripped form virDomainGetMetadata returns). Its children are ours on the same terms.
        let mut namespaced = true;
        let mut spec = MonitorSpec::with_transport(Transport::Vsock {
            cid: None,
            port: DEFAULT_VSOCK_PORT,
        });
        let mut transports = 0;
        loop {
            let event = reader
                .read_resolved_event()
                .map_err(|e| SpecError::Xml(e.to_string()))?;
            let empty = matches!(event.1, Event::Empty(_));
            match event {
                (ns, Event::Start(e)) | (ns, Event::Empty(e)) => {
                    let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                    if !in_monitor {
                        if local == "monitor" {
                            if is_our_namespace(&ns) {
                                namespaced = true;
                            } else if matches!(ns, ResolveResult::Unbound) {
                                namespaced = false;
                            } else {
                                continue;
                            }
                            in_monitor = true;
                            seen_monitor = true;
                        }
                        continue;
                    }
                    let ours = is_our_namespace(&ns)
                        || (!namespaced && matches!(ns, ResolveResult::Unbound));
                    if !ours {
                        return Err(SpecError::UnknownElement { element: local });
                    }
                    match local.as_str() {
                        "policy" => read_policy(&e, &mut spec)?,
                        "vsock" | "hybrid-vsock" | "channel" => {
                            transports += 1;
                            spec.transport = read_transport(&local, &e)?;
                        }
                        "cluster" => {
                            if spec.cluster_resource.is_some() {
                                return Err(SpecError::TwoClusterElements);
                            }
                            spec.cluster_resource = Some(read_cluster(&e)?);
                        }
                        "application" => {
                            let app = application::read(&mut reader, &e, empty, |ns| {
                                is_our_namespace(ns)
                                    || (!namespaced && matches!(ns, ResolveResult::Unbound))
                            })?;
                            if spec.applications.iter().any(|a| a.name == app.name) {
                                return Err(SpecError::DuplicateApplication(app.name));
                            }
                            spec.applications.push(app);
                        }
                        _ => return Err(SpecError::UnknownElement { element: local }),
                    }
                }
                (ns, Event::End(e)) => {
                    let ours = is_our_namespace(&ns)
                        || (!namespaced && matches!(ns, ResolveResult::Unbound));
                    if ours && e.local_name().as_ref() == b"monitor" {
                        in_monitor = false;
                    }
                }
                (_, Event::Eof) => break,
                _ => {}
            }
        }
        match (seen_monitor, transports) {
            (false, _) => Err(SpecError::NoMonitorElement),
            (true, 0) => Err(SpecError::NoTransport),
            (true, 1) => Ok(spec),
            (true, _) => Err(SpecError::TwoTransports),
        }
    }

    /// The element's XML as it stands in a domain's `<metadata>`: `<appmon:monitor
    /// xmlns:appmon="...">`, for documents and for showing operators.
    ///
    /// Not for virDomainSetMetadata: libvirt puts the element into the namespace itself and
    /// refuses one that already declares the prefix [`METADATA_KEY`] ("failed to create a new
    /// XML namespace"). Use [`MonitorSpec::to_metadata_xml`] there.
    pub fn to_xml(&self) -> String {
        self.write_xml(Some(METADATA_KEY))
    }

    /// The element without namespace (`<monitor><policy/><vsock port="5315"/></monitor>`), as
    /// virDomainSetMetadata takes it together with key [`METADATA_KEY`] and namespace
    /// [`METADATA_URI`]; libvirt puts every element of it into that namespace.
    pub fn to_metadata_xml(&self) -> String {
        self.write_xml(None)
    }

    fn write_xml(&self, prefix: Option<&str>) -> String {
        let (p, declaration) = match prefix {
            Some(k) => (format!("{k}:"), format!(" xmlns:{k}=\"{METADATA_URI}\"")),
            None => (String::new(), String::new()),
        };
        let mut policy = String::new();
        let mut attr = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                policy.push_str(&format!(" {name}=\"{}\"", escape(&v)));
            }
        };
        attr(
            "failure-interval",
            self.failure_interval.map(format_duration),
        );
        attr("min-uptime", self.min_uptime.map(format_duration));
        attr("max-resets", self.max_resets.map(|n| n.to_string()));
        attr("reset-window", self.reset_window.map(format_duration));
        attr(
            "reset-method",
            self.reset_method.map(|m| m.as_str().to_string()),
        );
        let transport = match &self.transport {
            Transport::Vsock { cid, port } => {
                let cid = cid.map(|c| format!(" cid=\"{c}\"")).unwrap_or_default();
                format!("<{p}vsock{cid} port=\"{port}\"/>")
            }
            Transport::HybridVsock { path, port } => format!(
                "<{p}hybrid-vsock path=\"{}\" port=\"{port}\"/>",
                escape(&path.to_string_lossy())
            ),
            Transport::Channel { path, name } => {
                let path = path
                    .as_ref()
                    .map(|p| format!(" path=\"{}\"", escape(&p.to_string_lossy())))
                    .unwrap_or_default();
                format!("<{p}channel{path} name=\"{}\"/>", escape(name))
            }
        };
        let cluster = self
            .cluster_resource
            .as_ref()
            .map(|r| format!("<{p}cluster resource=\"{}\"/>", escape(r)))
            .unwrap_or_default();
        let mut applications = String::new();
        for app in &self.applications {
            app.write(&p, &mut applications);
        }
        format!(
            "<{p}monitor{declaration}><{p}policy{policy}/>{transport}{cluster}{applications}</{p}monitor>"
        )
    }
}

fn is_our_namespace(ns: &ResolveResult<'_>) -> bool {
    matches!(ns, ResolveResult::Bound(n) if n.as_ref() == METADATA_URI.as_bytes())
}

fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

fn attributes(e: &BytesStart<'_>) -> Result<Vec<(String, String)>, SpecError> {
    let element = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
    e.attributes()
        .map(|a| {
            let a = a.map_err(|err| SpecError::Xml(format!("<{element}>: {err}")))?;
            let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
            let value = a
                .unescape_value()
                .map_err(|err| SpecError::Xml(format!("<{element}> {key}: {err}")))?
                .into_owned();
            Ok((key, value))
        })
        .collect()
}

fn bad(element: &str, attribute: &str, value: &str, problem: &'static str) -> SpecError {
    SpecError::BadAttribute {
        element: element.to_string(),
        attribute: attribute.to_string(),
        value: value.to_string(),
        problem,
    }
}

fn read_policy(e: &BytesStart<'_>, spec: &mut MonitorSpec) -> Result<(), SpecError> {
    const DURATION: &str = "expected a duration such as 500ms, 30s, 2m or 1h";
    for (key, value) in attributes(e)? {
        let duration =
            || parse_duration(&value).ok_or_else(|| bad("policy", &key, &value, DURATION));
        match key.as_str() {
            "failure-interval" => {
                let d = duration()?;
                if d.is_zero() {
                    return Err(bad("policy", &key, &value, "must be more than zero"));
                }
                spec.failure_interval = Some(d);
            }
            "min-uptime" => spec.min_uptime = Some(duration()?),
            "reset-window" => {
                let d = duration()?;
                if d.is_zero() {
                    return Err(bad("policy", &key, &value, "must be more than zero"));
                }
                spec.reset_window = Some(d);
            }
            "max-resets" => {
                spec.max_resets = Some(
                    value
                        .parse()
                        .map_err(|_| bad("policy", &key, &value, "expected a whole number"))?,
                )
            }
            "reset-method" => {
                spec.reset_method =
                    Some(ResetMethod::parse(&value).ok_or_else(|| {
                        bad("policy", &key, &value, "expected reset or power-cycle")
                    })?)
            }
            _ => {
                return Err(SpecError::UnknownAttribute {
                    element: "policy".into(),
                    attribute: key,
                })
            }
        }
    }
    Ok(())
}

/// Whether `id` is a Pacemaker resource id: an XML ID (a letter or `_`, then letters, digits,
/// `_`, `-` and `.`), which is also what keeps it from reading as an option on a command line.
pub fn is_resource_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && id.len() <= 128
}

fn read_cluster(e: &BytesStart<'_>) -> Result<String, SpecError> {
    let mut resource = None;
    for (key, value) in attributes(e)? {
        match key.as_str() {
            "resource" => {
                if !is_resource_id(&value) {
                    return Err(bad(
                        "cluster",
                        &key,
                        &value,
                        "expected a Pacemaker resource id (a letter or _, then letters, digits, _ - .)",
                    ));
                }
                resource = Some(value);
            }
            _ => {
                return Err(SpecError::UnknownAttribute {
                    element: "cluster".into(),
                    attribute: key,
                })
            }
        }
    }
    resource.ok_or(SpecError::MissingAttribute {
        element: "cluster",
        attribute: "resource",
    })
}

fn read_transport(element: &str, e: &BytesStart<'_>) -> Result<Transport, SpecError> {
    let (mut cid, mut port, mut path, mut name) = (None, None, None, None);
    for (key, value) in attributes(e)? {
        match (element, key.as_str()) {
            ("vsock", "cid") => {
                let n: u32 = value
                    .parse()
                    .map_err(|_| bad(element, &key, &value, "expected a number"))?;
                if n < 3 {
                    return Err(bad(element, &key, &value, "guest CIDs start at 3"));
                }
                cid = Some(n);
            }
            ("vsock" | "hybrid-vsock", "port") => {
                port = Some(
                    value
                        .parse::<u32>()
                        .map_err(|_| bad(element, &key, &value, "expected a number"))?,
                )
            }
            ("hybrid-vsock" | "channel", "path") => {
                if !value.starts_with('/') {
                    return Err(bad(element, &key, &value, "expected an absolute path"));
                }
                path = Some(PathBuf::from(value));
            }
            ("channel", "name") => {
                if value.is_empty() {
                    return Err(bad(element, &key, &value, "must not be empty"));
                }
                name = Some(value)
            }
            _ => {
                return Err(SpecError::UnknownAttribute {
                    element: element.to_string(),
                    attribute: key,
                })
            }
        }
    }
    let port = port.unwrap_or(DEFAULT_VSOCK_PORT);
    Ok(match element {
        "vsock" => Transport::Vsock { cid, port },
        "hybrid-vsock" => Transport::HybridVsock {
            path: path.ok_or(SpecError::MissingAttribute {
                element: "hybrid-vsock",
                attribute: "path",
            })?,
            port,
        },
        _ => Transport::Channel {
            path,
            name: name.unwrap_or_else(|| DEFAULT_CHANNEL_NAME.to_string()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(inner: &str) -> String {
        format!("<appmon:monitor xmlns:appmon=\"{METADATA_URI}\">{inner}</appmon:monitor>")
    }

    #[test]
    fn cluster_resource_round_trips_in_both_forms() {
        let mut spec = MonitorSpec::with_transport(Transport::Vsock {
            cid: Some(9),
            port: 5315,
        });
        spec.cluster_resource = Some("vm_web-1.a".into());
        assert_eq!(MonitorSpec::from_xml(&spec.to_xml()), Ok(spec.clone()));
        assert_eq!(
            MonitorSpec::from_xml(&spec.to_metadata_xml()),
            Ok(spec.clone())
        );
    }

    #[test]
    fn a_cluster_element_needs_a_resource_id() {
        for (inner, expect) in [
            (
                r#"<appmon:vsock/><appmon:cluster/>"#,
                "<cluster> needs the attribute resource",
            ),
            (
                r#"<appmon:vsock/><appmon:cluster resource="--force"/>"#,
                "expected a Pacemaker resource id",
            ),
            (
                r#"<appmon:vsock/><appmon:cluster resource="a"/><appmon:cluster resource="b"/>"#,
                "more than one <cluster>",
            ),
            (
                r#"<appmon:vsock/><appmon:cluster resource="a" node="n"/>"#,
                "attribute node appmon does not know",
            ),
        ] {
            let err = MonitorSpec::from_xml(&wrap(inner)).unwrap_err().to_string();
            assert!(err.contains(expect), "{inner}: {err}");
        }
    }

    #[test]
    fn full_spec_round_trips_through_xml() {
        let spec = MonitorSpec {
            failure_interval: Some(Duration::from_secs(5)),
            min_uptime: Some(Duration::from_millis(1500)),
            max_resets: Some(2),
            reset_window: Some(Duration::from_secs(3600)),
            reset_method: Some(ResetMethod::PowerCycle),
            transport: Transport::HybridVsock {
                path: "/run/vm & co/vsock.uds".into(),
                port: 5315,
            },
            applications: Vec::new(),
            cluster_resource: None,
        };
        assert_eq!(MonitorSpec::from_xml(&spec.to_xml()), Ok(spec));
    }

    #[test]
    fn every_transport_round_trips() {
        for transport in [
            Transport::Vsock {
                cid: Some(7),
                port: 1,
            },
            Transport::Vsock {
                cid: None,
                port: 5315,
            },
            Transport::HybridVsock {
                path: "/a".into(),
                port: 9,
            },
            Transport::Channel {
                path: Some("/b".into()),
                name: "x".into(),
            },
            Transport::Channel {
                path: None,
                name: DEFAULT_CHANNEL_NAME.into(),
            },
        ] {
            let spec = MonitorSpec::with_transport(transport);
            assert_eq!(
                MonitorSpec::from_xml(&spec.to_metadata_xml()),
                Ok(spec.clone())
            );
            assert_eq!(MonitorSpec::from_xml(&spec.to_xml()), Ok(spec));
        }
    }

    #[test]
    fn any_prefix_for_our_namespace_is_accepted() {
        let xml = format!("<m:monitor xmlns:m=\"{METADATA_URI}\"><m:vsock cid=\"4\"/></m:monitor>");
        let spec = MonitorSpec::from_xml(&xml).expect("valid");
        assert_eq!(
            spec.transport,
            Transport::Vsock {
                cid: Some(4),
                port: DEFAULT_VSOCK_PORT
            }
        );
    }

    #[test]
    fn the_form_libvirt_returns_without_namespace_is_read() {
        // virDomainGetMetadata strips our namespace and may leave the declaration behind.
        let cases = [
            "<monitor><vsock cid=\"5\"/></monitor>".to_string(),
            format!("<monitor xmlns:appmon=\"{METADATA_URI}\">\n  <policy/>\n  <vsock cid=\"5\"/>\n</monitor>"),
        ];
        for xml in cases {
            let spec = MonitorSpec::from_xml(&xml).expect(&xml);
            assert_eq!(
                spec.transport,
                Transport::Vsock {
                    cid: Some(5),
                    port: DEFAULT_VSOCK_PORT
                },
                "{xml}"
            );
        }
    }

    #[test]
    fn metadata_form_has_no_namespace_and_round_trips() {
        let spec = MonitorSpec {
            failure_interval: Some(Duration::from_secs(30)),
            min_uptime: None,
            max_resets: Some(3),
            reset_window: None,
            reset_method: Some(ResetMethod::Reset),
            transport: Transport::Channel {
                path: None,
                name: "org.appmon.agent.0".into(),
            },
            applications: Vec::new(),
            cluster_resource: None,
        };
        let xml = spec.to_metadata_xml();
        assert!(xml.starts_with("<monitor><policy "), "{xml}");
        assert!(!xml.contains("xmlns"), "{xml}");
        assert_eq!(MonitorSpec::from_xml(&xml), Ok(spec));
    }

    #[test]
    fn broken_specs_say_what_is_wrong() {
        let cases = [
            (
                wrap("<appmon:policy failure-interval=\"soon\"/><appmon:vsock/>"),
                "failure-interval",
            ),
            (
                wrap("<appmon:policy failure-interval=\"0s\"/><appmon:vsock/>"),
                "more than zero",
            ),
            (
                wrap("<appmon:policy max-resets=\"-1\"/><appmon:vsock/>"),
                "whole number",
            ),
            (
                wrap("<appmon:policy reset-method=\"reboot\"/><appmon:vsock/>"),
                "reset or power-cycle",
            ),
            (
                wrap("<appmon:policy colour=\"red\"/><appmon:vsock/>"),
                "colour",
            ),
            (wrap("<appmon:vsock cid=\"2\"/>"), "CIDs start at 3"),
            (
                wrap("<appmon:hybrid-vsock port=\"1\"/>"),
                "needs the attribute path",
            ),
            (
                wrap("<appmon:hybrid-vsock path=\"rel/x\"/>"),
                "absolute path",
            ),
            (wrap("<appmon:policy/>"), "no transport"),
            (
                wrap("<appmon:vsock/><appmon:channel/>"),
                "more than one transport",
            ),
            (wrap("<appmon:watchdog/>"), "<watchdog>"),
            (
                "<monitor xmlns=\"urn:other\"><vsock/></monitor>".to_string(),
                "no <monitor> element",
            ),
            ("<monitor><vsock/></monitor".to_string(), "well-formed"),
            (
                "<monitor><x:vsock xmlns:x=\"urn:other\"/></monitor>".to_string(),
                "<vsock>",
            ),
            (
                "<appmon:monitor xmlns:appmon=\"x\">".to_string(),
                "no <monitor>",
            ),
            (wrap("<appmon:vsock cid=\"3\">"), "well-formed"),
        ];
        for (xml, needle) in cases {
            let err = MonitorSpec::from_xml(&xml).expect_err(&xml).to_string();
            assert!(err.contains(needle), "{xml}: {err}");
        }
    }

    fn app_xml(app: &str) -> String {
        wrap(&format!("<appmon:vsock/>{app}"))
    }

    #[test]
    fn applications_round_trip_in_both_forms() {
        let full = ApplicationSpec {
            name: "db-1.main_x".into(),
            argv: vec![
                "/usr/sbin/mydb".into(),
                "--config".into(),
                "line one\n\tline \"two\" & <three>".into(),
            ],
            env: vec![
                ("MYDB_MODE".into(), "fast".into()),
                ("EMPTY".into(), String::new()),
            ],
            user: Some("mydb".into()),
            cwd: Some("/var/lib/mydb".into()),
            poll_interval: Some(Duration::from_secs(5)),
            max_restarts: Some(0),
            restart_window: Some(Duration::from_secs(600)),
            restart_delay: Some(Duration::ZERO),
            on_failure: Some(OnFailure::Reset),
        };
        let minimal = ApplicationSpec::new("web", vec!["/usr/bin/web".into()]);
        let spec = MonitorSpec {
            applications: vec![full, minimal],
            ..MonitorSpec::with_transport(Transport::Vsock {
                cid: Some(3),
                port: 5315,
            })
        };
        assert_eq!(MonitorSpec::from_xml(&spec.to_xml()), Ok(spec.clone()));
        assert_eq!(MonitorSpec::from_xml(&spec.to_metadata_xml()), Ok(spec));
    }

    #[test]
    fn the_documented_application_parses() {
        let xml = app_xml(
            r#"<appmon:application name="db" user="mydb" cwd="/var/lib/mydb" poll-interval="5s"
                     max-restarts="3" restart-window="10m" restart-delay="1s" on-failure="reset">
                 <appmon:arg value="/usr/sbin/mydb"/>
                 <appmon:arg value="--config"/>
                 <appmon:arg value="/etc/mydb/main.conf"/>
                 <appmon:env name="MYDB_MODE" value="fast"/>
               </appmon:application>"#,
        );
        let spec = MonitorSpec::from_xml(&xml).expect("valid");
        let app = &spec.applications[0];
        assert_eq!(
            app.argv,
            ["/usr/sbin/mydb", "--config", "/etc/mydb/main.conf"]
        );
        assert_eq!(app.env, [("MYDB_MODE".to_string(), "fast".to_string())]);
        assert_eq!(app.restart_window, Some(Duration::from_secs(600)));
        assert_eq!(app.on_failure, Some(OnFailure::Reset));
    }

    #[test]
    fn broken_applications_say_which_and_what() {
        let cases = [
            ("<appmon:application><appmon:arg value=\"/bin/x\"/></appmon:application>", "needs the attribute name"),
            ("<appmon:application name=\"a b\"><appmon:arg value=\"/bin/x\"/></appmon:application>", "letters, digits"),
            ("<appmon:application name=\"a\"/>", "<application name=\"a\">: has no <arg>"),
            ("<appmon:application name=\"a\"><appmon:arg value=\"x\"/></appmon:application>", "not an absolute path"),
            ("<appmon:application name=\"a\" poll-interval=\"0s\"><appmon:arg value=\"/x\"/></appmon:application>", "more than zero"),
            ("<appmon:application name=\"a\" max-restarts=\"many\"><appmon:arg value=\"/x\"/></appmon:application>", "whole number"),
            ("<appmon:application name=\"a\" on-failure=\"reboot\"><appmon:arg value=\"/x\"/></appmon:application>", "give-up or reset"),
            ("<appmon:application name=\"a\" cwd=\"rel\"><appmon:arg value=\"/x\"/></appmon:application>", "cwd"),
            ("<appmon:application name=\"a\" colour=\"red\"><appmon:arg value=\"/x\"/></appmon:application>", "unknown attribute colour"),
            ("<appmon:application name=\"a\"><appmon:arg/></appmon:application>", "<arg> needs a value"),
            ("<appmon:application name=\"a\"><appmon:arg value=\"/x\"/><appmon:env name=\"A=B\" value=\"1\"/></appmon:application>", "without '='"),
            ("<appmon:application name=\"a\"><appmon:script value=\"/x\"/></appmon:application>", "<script> is not an element"),
            ("<appmon:application name=\"a\"><appmon:arg value=\"/x\"/></appmon:application><appmon:application name=\"a\"><appmon:arg value=\"/y\"/></appmon:application>", "two <application> elements are named \"a\""),
            ("<appmon:application name=\"a\"><appmon:arg value=\"/x\"/>", "well-formed"),
        ];
        for (app, needle) in cases {
            let xml = app_xml(app);
            let err = MonitorSpec::from_xml(&xml).expect_err(app).to_string();
            assert!(err.contains(needle), "{app}: {err}");
        }
    }

    #[test]
    fn durations_parse_in_operator_units() {
        let cases = [
            ("500ms", Some(500)),
            ("30s", Some(30_000)),
            ("30", Some(30_000)),
            ("2m", Some(120_000)),
            ("1h", Some(3_600_000)),
            ("", None),
            ("1.5s", None),
            ("s", None),
            ("10d", None),
            ("99999999999999999999h", None),
        ];
        for (text, ms) in cases {
            assert_eq!(
                parse_duration(text),
                ms.map(Duration::from_millis),
                "{text:?}"
            );
        }
    }

    #[test]
    fn durations_format_in_the_largest_exact_unit() {
        for (ms, text) in [
            (0, "0s"),
            (1500, "1500ms"),
            (30_000, "30s"),
            (120_000, "2m"),
            (7_200_000, "2h"),
        ] {
            assert_eq!(format_duration(Duration::from_millis(ms)), text);
        }
    }
}
