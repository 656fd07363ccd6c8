//! `appmonctl enable --config FILE`: the monitoring element written into a domain XML file, the
//! `config=` of a Pacemaker `ocf:heartbeat:VirtualDomain` resource. The cluster creates the
//! domain from that file at every start (transient), so metadata written to the live domain is
//! lost on the next start and the file is where the policy survives.

use appmon_libvirt_backend::spec::METADATA_URI;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

/// Where the parts of a domain XML document that matter here are, as byte offsets.
#[derive(Debug, Default)]
struct Layout {
    name: Option<String>,
    /// `<metadata>`: the start of its end tag; or an empty
    /// `<metadata/>` element's span.
    metadata: Option<Metadata>,
    /// Our `<monitor>` inside `<metadata>`: its span.
    monitor: Option<(usize, usize)>,
    /// The start of `</domain>`.
    domain_end: Option<usize>,
}

#[derive(Debug)]
enum Metadata {
    Open { inner_end: usize },
    Empty { start: usize, end: usize },
}

fn layout(xml: &str) -> Result<Layout, String> {
    let mut reader = NsReader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut out = Layout::default();
    let mut monitor_start = None;
    loop {
        let before = reader.buffer_position() as usize;
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|e| format!("not well-formed XML at byte {before}: {e}"))?;
        let ours = matches!(ns, ResolveResult::Bound(n) if n.as_ref() == METADATA_URI.as_bytes());
        let after = reader.buffer_position() as usize;
        match event {
            Event::Start(e) => {
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if path == ["domain", "metadata"] && local == "monitor" && ours {
                    monitor_start = Some(before);
                }
                if path == ["domain"] && local == "metadata" {
                    out.metadata = Some(Metadata::Open { inner_end: after });
                }
                path.push(local);
            }
            Event::Empty(e) => {
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if path == ["domain", "metadata"] && local == "monitor" && ours {
                    out.monitor = Some((before, after));
                }
                if path == ["domain"] && local == "metadata" {
                    out.metadata = Some(Metadata::Empty {
                        start: before,
                        end: after,
                    });
                }
            }
            Event::Text(t) if path == ["domain", "name"] => {
                let text = t.unescape().map_err(|e| format!("<name>: {e}"))?;
                out.name = Some(text.trim().to_string());
            }
            Event::End(_) => {
                let closed = path.pop();
                match (path.as_slice(), closed.as_deref()) {
                    ([d, m], Some("monitor")) if d == "domain" && m == "metadata" => {
                        if let Some(start) = monitor_start.take() {
                            out.monitor = Some((start, after));
                        }
                    }
                    ([d], Some("metadata")) if d == "domain" => {
                        if let Some(Metadata::Open { inner_end, .. }) = &mut out.metadata {
                            *inner_end = before;
                        }
                    }
                    ([], Some("domain")) => out.domain_end = Some(before),
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

/// `xml` (a domain XML document) with `monitor` (the element as `MonitorSpec::to_xml` writes
/// it) as its appmon metadata, replacing any there was; the document must be the domain
/// `domain`.
pub fn with_monitor(xml: &str, domain: &str, monitor: &str) -> Result<String, String> {
    let l = layout(xml)?;
    let Some(end) = l.domain_end else {
        return Err("not a domain XML document (no <domain> element)".into());
    };
    match l.name.as_deref() {
        Some(name) if name == domain => {}
        Some(name) => return Err(format!("it defines the domain {name:?}, not {domain:?}")),
        None => return Err("its <domain> has no <name>".into()),
    }
    let mut out = String::with_capacity(xml.len() + monitor.len() + 32);
    match (l.monitor, l.metadata) {
        (Some((start, stop)), _) => {
            out.push_str(&xml[..start]);
            out.push_str(monitor);
            out.push_str(&xml[stop..]);
        }
        (None, Some(Metadata::Open { inner_end, .. })) => {
            out.push_str(&xml[..inner_end]);
            out.push_str(monitor);
            out.push_str(&xml[inner_end..]);
        }
        (None, Some(Metadata::Empty { start, end })) => {
            out.push_str(&xml[..start]);
            out.push_str(&format!("<metadata>{monitor}</metadata>"));
            out.push_str(&xml[end..]);
        }
        (None, None) => {
            out.push_str(&xml[..end]);
            out.push_str(&format!("  <metadata>{monitor}</metadata>\n"));
            out.push_str(&xml[end..]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use appmon_libvirt_backend::spec::{MonitorSpec, Transport};

    fn spec(resource: &str) -> MonitorSpec {
        let mut s = MonitorSpec::with_transport(Transport::Vsock {
            cid: Some(5),
            port: 5315,
        });
        s.cluster_resource = Some(resource.into());
        s
    }

    fn monitor_in(xml: &str) -> MonitorSpec {
        let l = layout(xml).unwrap();
        let (a, b) = l.monitor.expect("a monitor element");
        MonitorSpec::from_xml(&xml[a..b]).unwrap()
    }

    #[test]
    fn adds_metadata_to_a_domain_without_any() {
        let xml = "<domain type='qemu'>\n  <name>vm1</name>\n</domain>\n";
        let out = with_monitor(xml, "vm1", &spec("r1").to_xml()).unwrap();
        assert_eq!(monitor_in(&out), spec("r1"));
        assert!(out.starts_with("<domain type='qemu'>\n  <name>vm1</name>\n  <metadata>"));
    }

    #[test]
    fn replaces_our_element_and_keeps_everyone_elses() {
        let other = r#"<x:keep xmlns:x="urn:other">1</x:keep>"#;
        let xml = format!(
            "<domain><name>vm1</name><metadata>{other}{}</metadata><devices/></domain>",
            spec("old").to_xml()
        );
        let out = with_monitor(&xml, "vm1", &spec("new").to_xml()).unwrap();
        assert_eq!(monitor_in(&out), spec("new"));
        assert!(out.contains(other));
        assert!(!out.contains("old"));
        assert!(out.ends_with("</metadata><devices/></domain>"));
    }

    #[test]
    fn fills_an_empty_metadata_element() {
        let xml = "<domain><name>vm1</name><metadata/></domain>";
        let out = with_monitor(xml, "vm1", &spec("r").to_xml()).unwrap();
        assert_eq!(monitor_in(&out), spec("r"));
    }

    #[test]
    fn refuses_another_domain_and_what_is_not_a_domain() {
        let err = with_monitor("<domain><name>vm2</name></domain>", "vm1", "<m/>").unwrap_err();
        assert!(err.contains("\"vm2\", not \"vm1\""), "{err}");
        assert!(with_monitor("<network/>", "vm1", "<m/>").is_err());
        assert!(with_monitor("<domain><name>vm1</domain>", "vm1", "<m/>").is_err());
    }
}
