//! The Pacemaker shell: the two questions appmon asks a cluster and the one thing it asks of it.
//!
//! - [`placement`] reads `crm_mon --output-as=xml` (pure) and says whether a resource is
//!   started on this node and nothing is under way on it (starting, stopping, migrating): only
//!   then may appmon reset the domain in place, so two agents never act on one domain at once.
//! - [`fail_resource`] runs `crm_resource --fail --resource R --node N`: Pacemaker then recovers
//!   the resource as after a failed monitor (restart here, or a move once its
//!   `migration-threshold` is reached). The decision to escalate is the policy's
//!   ([`crate::policy`], "Inside a cluster"); this module only carries it out.
//!
//! The commands run on the blocking pool (the supervisor's executor), never on the runtime.
//! When no cluster answers at all (`crm_mon` missing or not connected), [`check_reset`] lets the
//! in-place reset go ahead: without a cluster, behaviour stays as it was.

use std::process::Command;

use quick_xml::events::Event;
use quick_xml::Reader;

/// What went wrong asking the cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot run {command}: {error}")]
    Spawn { command: String, error: String },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("crm_mon output is not XML appmon can read: {0}")]
    BadStatus(String),
    #[error("the cluster has no resource {0:?}")]
    NoSuchResource(String),
    #[error("resource {resource} runs the domain {runs:?} (its config= {config}), not {domain:?}")]
    WrongDomain {
        resource: String,
        config: String,
        runs: String,
        domain: String,
    },
    #[error("resource {resource}'s config= file {config}: {error}")]
    Config {
        resource: String,
        config: String,
        error: String,
    },
    #[error("resource {resource} is not started on this node ({node}): {state}")]
    NotHere {
        resource: String,
        node: String,
        state: String,
    },
}

/// Where and how a resource runs, as `crm_mon` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// `role`: Started, Stopped, ...
    pub role: String,
    /// `pending`: an operation under way (Starting, Stopping, Migrating), if any.
    pub pending: Option<String>,
    pub failed: bool,
    /// The nodes it runs on.
    pub nodes: Vec<String>,
}

impl Placement {
    /// Whether appmon may reset the domain in place on `node`: started there, nothing under
    /// way, not failed.
    pub fn started_on(&self, node: &str) -> bool {
        self.role == "Started"
            && !self.failed
            && self.pending.as_deref().is_none_or(|p| p == "Monitoring")
            && self.nodes.iter().any(|n| n == node)
    }

    fn describe(&self) -> String {
        let mut s = format!("role {}", self.role);
        if let Some(p) = &self.pending {
            s.push_str(&format!(", {p}"));
        }
        if self.failed {
            s.push_str(", failed");
        }
        if self.nodes.is_empty() {
            s.push_str(", on no node");
        } else {
            s.push_str(&format!(", on {}", self.nodes.join(" ")));
        }
        s
    }
}

/// The placement of `resource` in `crm_mon --output-as=xml` output; `None` when the cluster has
/// no such resource.
pub fn placement(xml: &str, resource: &str) -> Result<Option<Placement>, ClusterError> {
    let mut reader = Reader::from_str(xml);
    // Inside the resource's element: its placement and how deep below it we are.
    let mut found: Option<(Placement, usize)> = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| ClusterError::BadStatus(e.to_string()))?;
        let (e, empty) = match event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => match &mut found {
                Some((_, 0)) => return Ok(found.map(|(p, _)| p)),
                Some((_, depth)) => {
                    *depth -= 1;
                    continue;
                }
                None => continue,
            },
            Event::Eof => return Ok(found.map(|(p, _)| p)),
            _ => continue,
        };
        let attr = |name: &str| {
            e.try_get_attribute(name)
                .ok()
                .flatten()
                .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
        };
        match &mut found {
            None => {
                if e.local_name().as_ref() != b"resource" || attr("id").as_deref() != Some(resource)
                {
                    continue;
                }
                let p = Placement {
                    role: attr("role").unwrap_or_default(),
                    pending: attr("pending"),
                    failed: attr("failed").as_deref() == Some("true"),
                    nodes: Vec::new(),
                };
                if empty {
                    return Ok(Some(p));
                }
                found = Some((p, 0));
            }
            Some((p, depth)) => {
                if *depth == 0 && e.local_name().as_ref() == b"node" {
                    if let Some(name) = attr("name") {
                        p.nodes.push(name);
                    }
                }
                if !empty {
                    *depth += 1;
                }
            }
        }
    }
}

/// The domain name (`/domain/name`) of a domain XML document.
pub fn domain_name(xml: &str) -> Result<String, String> {
    let mut reader = Reader::from_str(xml);
    let mut path: Vec<Vec<u8>> = Vec::new();
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => path.push(e.local_name().as_ref().to_vec()),
            Event::End(_) => {
                path.pop();
            }
            Event::Text(t) if path == [b"domain".to_vec(), b"name".to_vec()] => {
                return Ok(t.unescape().map_err(|e| e.to_string())?.trim().to_string());
            }
            Event::Eof => return Err("no <domain><name>".into()),
            _ => {}
        }
    }
}

/// Checks that `resource` is the VirtualDomain resource of `domain`: its `config=` file defines
/// that domain. Failing a resource that runs another VM would take down the wrong one.
pub fn check_resource_runs(resource: &str, domain: &str) -> Result<(), ClusterError> {
    let config = run(
        "crm_resource",
        &[
            "--resource",
            resource,
            "--get-parameter",
            "config",
            "--quiet",
        ],
    )?;
    // With --quiet the value alone; its last line either way.
    let config = config
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string();
    let bad = |error: String| ClusterError::Config {
        resource: resource.to_string(),
        config: config.clone(),
        error,
    };
    let xml = std::fs::read_to_string(&config).map_err(|e| bad(e.to_string()))?;
    let runs = domain_name(&xml).map_err(bad)?;
    if runs != domain {
        return Err(ClusterError::WrongDomain {
            resource: resource.to_string(),
            config,
            runs,
            domain: domain.to_string(),
        });
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> Result<String, ClusterError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| ClusterError::Spawn {
            command: command.clone(),
            error: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(ClusterError::Failed {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// This node's name in the cluster (`crm_node -n`).
pub fn local_node() -> Result<String, ClusterError> {
    Ok(run("crm_node", &["-n"])?.trim().to_string())
}

/// Before an in-place reset of a cluster resource's domain: `Ok(true)` when it is started on
/// this node with nothing under way, `Ok(false)` when no cluster answers (the reset goes ahead as
/// without a cluster; the caller logs it), an error when the cluster has the resource elsewhere,
/// in a transition, or not at all.
pub fn check_reset(resource: &str, domain: &str) -> Result<bool, ClusterError> {
    let node = match local_node() {
        Ok(n) => n,
        Err(_) => return Ok(false),
    };
    let xml = match run("crm_mon", &["-1", "--output-as=xml"]) {
        Ok(x) => x,
        Err(_) => return Ok(false),
    };
    match placement(&xml, resource)? {
        None => Err(ClusterError::NoSuchResource(resource.to_string())),
        Some(p) if p.started_on(&node) => check_resource_runs(resource, domain).map(|()| true),
        Some(p) => Err(ClusterError::NotHere {
            resource: resource.to_string(),
            state: p.describe(),
            node,
        }),
    }
}

/// Marks `resource` failed on this node, once it is known to run `domain`: Pacemaker recovers
/// it.
pub fn fail_resource(resource: &str, domain: &str) -> Result<(), ClusterError> {
    let node = local_node()?;
    check_resource_runs(resource, domain)?;
    run(
        "crm_resource",
        &["--fail", "--resource", resource, "--node", &node],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = r#"<pacemaker-result api-version="2.25" request="crm_mon -1 --output-as=xml">
  <nodes>
    <node name="n1" id="1" online="true"/>
  </nodes>
  <resources>
    <resource id="vm_other" resource_agent="ocf:heartbeat:VirtualDomain" role="Stopped" active="false" failed="false" nodes_running_on="0"/>
    <resource id="vm_a" resource_agent="ocf:heartbeat:VirtualDomain" role="Started" active="true" failed="false" nodes_running_on="1">
      <node name="n1" id="1" cached="true"/>
    </resource>
    <resource id="vm_b" resource_agent="ocf:heartbeat:VirtualDomain" role="Started" active="true" failed="false" pending="Stopping" nodes_running_on="1">
      <node name="n1" id="1" cached="true"/>
    </resource>
    <resource id="vm_c" resource_agent="ocf:heartbeat:VirtualDomain" role="Started" active="true" failed="true" nodes_running_on="1">
      <node name="n2" id="2" cached="true"/>
    </resource>
  </resources>
</pacemaker-result>"#;

    #[test]
    fn a_resource_started_here_with_nothing_under_way_may_be_reset() {
        let p = placement(STATUS, "vm_a").unwrap().unwrap();
        assert_eq!(p.nodes, ["n1"]);
        assert!(p.started_on("n1"));
        assert!(!p.started_on("n2"));
    }

    #[test]
    fn a_resource_in_transition_failed_elsewhere_or_stopped_may_not() {
        for (id, node) in [("vm_b", "n1"), ("vm_c", "n2"), ("vm_other", "n1")] {
            let p = placement(STATUS, id).unwrap().unwrap();
            assert!(!p.started_on(node), "{id}: {p:?}");
        }
        assert_eq!(
            placement(STATUS, "vm_other").unwrap().unwrap().nodes,
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_domain_name_is_read_from_domain_name_only() {
        let xml = "<domain type='kvm'><metadata><x:name xmlns:x='urn:x'>no</x:name></metadata>\
                   <name> web1 </name><devices><disk><name>no</name></disk></devices></domain>";
        // Namespaced or nested <name>s elsewhere are not the domain's.
        let xml = xml.replace(
            "<metadata><x:name xmlns:x='urn:x'>no</x:name></metadata>",
            "",
        );
        assert_eq!(domain_name(&xml).unwrap(), "web1");
        assert!(domain_name("<domain><uuid>1</uuid></domain>").is_err());
    }

    #[test]
    fn an_unknown_resource_is_none_and_garbage_is_an_error() {
        assert_eq!(placement(STATUS, "vm_x").unwrap(), None);
        assert!(placement("<a><b></a>", "vm_a").is_err());
    }
}
