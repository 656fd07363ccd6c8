//! Counters from a real nested guest: the guest agent's schema and values, read over hybrid
//! vsock by speaking the wire protocol as a host that takes counters (the host agent does not
//! keep counters yet). A custom counter is fed through the named pipe by a guest script, the
//! seed's loop in busybox sh; the demo application burns CPU and `CPU Total` shows it.
#![cfg(feature = "vm")]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use appmon_vm_tests::{
    TestVm, VmConfig, DEFAULT_BOOT_TIMEOUT, DEMO_COMMAND_TIMEOUT, GUEST_AGENT_PORT,
};
use appmon_wire::{
    decode_all, encode_frame, Capabilities, CounterSchema, CounterValues, Frame, GuestMsg, Hello,
    HostMsg,
};

/// The pace of the standard counters and of the custom block.
const PACE: Duration = Duration::from_secs(1);
/// From boot to the guest agent's session; generous for TCG on a loaded machine.
const SESSION_TIMEOUT: Duration = Duration::from_secs(90);

const CCAD_CONF: &str = "counters Demo\n   {\n   pace = 1000\n   pipe = /tmp/cca\n   \
    counter requests: desc = \"Requests served\", units = \"#\"\n   }\n";

/// The seed's feeder loop for busybox: a value a second, each set ended by a `.`.
const FEEDER: &str = "#!/bin/sh\n\
    while [ ! -p /tmp/cca ]; do sleep 0.2; done\n\
    i=0\n\
    while true; do\n\
    \x20 i=$((i + 1))\n\
    \x20 echo \"requests = $i\" > /tmp/cca\n\
    \x20 echo \".\" > /tmp/cca\n\
    \x20 sleep 1\n\
    done\n";

/// A host's end of a session with the guest agent, reading frames off the hybrid stream.
struct Session<'a> {
    vm: &'a TestVm,
    conn: UnixStream,
    buf: Vec<u8>,
    schema: Vec<CounterSchema>,
}

impl<'a> Session<'a> {
    fn open(vm: &'a TestVm) -> Session<'a> {
        let mut conn = vm.connect(GUEST_AGENT_PORT, SESSION_TIMEOUT);
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap_or_else(|e| vm.fail(e));
        let hello = Hello::new(
            "vm-tests counters",
            [0x43; 16],
            Capabilities::HEARTBEAT | Capabilities::COUNTERS,
        );
        let bytes = encode_frame(&Frame::event(HostMsg::Hello(hello)))
            .unwrap_or_else(|e| vm.fail(format!("encoding Hello: {e}")));
        conn.write_all(&bytes).unwrap_or_else(|e| vm.fail(e));
        Session {
            vm,
            conn,
            buf: Vec::new(),
            schema: Vec::new(),
        }
    }

    /// The next frame's message; the schema parts are gathered on the way.
    fn next(&mut self) -> GuestMsg {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == 0) {
                let frame: Vec<u8> = self.buf.drain(..=end).collect();
                if frame.len() == 1 {
                    continue;
                }
                match decode_all::<GuestMsg>(&frame).pop() {
                    Some(Ok(frame)) => {
                        if let GuestMsg::CounterSchema(part) = &frame.msg {
                            if self.schema.last().is_some_and(|p| p.complete)
                                || self
                                    .schema
                                    .first()
                                    .is_some_and(|p| p.generation != part.generation)
                            {
                                self.schema.clear();
                            }
                            self.schema.push(part.clone());
                        }
                        return frame.msg;
                    }
                    other => self
                        .vm
                        .fail(format!("a frame from the guest agent: {other:?}")),
                }
            }
            let mut chunk = [0u8; 4096];
            match self.conn.read(&mut chunk) {
                Ok(0) => self.vm.fail("the guest agent closed the session"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => self.vm.fail(format!("reading from the guest agent: {e}")),
            }
        }
    }

    fn complete_schema(&self) -> Option<&[CounterSchema]> {
        self.schema
            .last()
            .is_some_and(|p| p.complete)
            .then_some(self.schema.as_slice())
    }

    fn id_of(&self, entity: &str, counter: &str) -> Option<u32> {
        self.schema
            .iter()
            .flat_map(|p| &p.entities)
            .filter(|e| e.name.as_str() == entity)
            .flat_map(|e| &e.counters)
            .find(|c| c.name.as_str() == counter)
            .map(|c| c.id)
    }

    /// Values frames of the current schema until `pick` takes one, or `timeout`.
    fn values_until<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pick: impl FnMut(&Self, &CounterValues) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let GuestMsg::CounterValues(v) = self.next() {
                let current = self.schema.first().map(|p| p.generation);
                if current == Some(v.generation) {
                    if let Some(found) = pick(self, &v) {
                        return found;
                    }
                }
            }
        }
        self.vm
            .fail(format!("timed out after {timeout:?} waiting for {what}"))
    }
}

fn value(v: &CounterValues, id: Option<u32>) -> Option<f64> {
    let id = id?;
    v.values
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, value)| *value)
}

#[test]
fn guest_counters_standard_and_custom_reach_a_host_and_cpu_total_follows_a_burn() {
    let vm = TestVm::new(
        VmConfig::new("counters")
            .guest_config("vsock = true\nport = 5315\n[counters]\npace_ms = 1000\n")
            .guest_file("/etc/ccad.conf", CCAD_CONF)
            .guest_script("/etc/appmon/init.d/feeder", FEEDER),
    );
    vm.rig().require_guest_program("appmon-guest");
    vm.rig().require_guest_program("appmon-demo");
    vm.start_measured(DEFAULT_BOOT_TIMEOUT);
    let mut session = Session::open(&vm);

    // The schema follows the Hello and the State, and names every counter once.
    let deadline = Instant::now() + SESSION_TIMEOUT;
    while session.complete_schema().is_none() {
        assert!(Instant::now() < deadline, "no counter schema");
        session.next();
    }
    let parts = session.complete_schema().unwrap_or_default().to_vec();
    let entities: Vec<&str> = parts
        .iter()
        .flat_map(|p| &p.entities)
        .map(|e| e.name.as_str())
        .collect();
    for want in ["CPU", "CPU#0", "File System", "Memory", "Scheduler", "Demo"] {
        assert!(entities.contains(&want), "{want} in {entities:?}");
    }
    let names: Vec<(&str, &str)> = parts
        .iter()
        .flat_map(|p| &p.entities)
        .flat_map(|e| {
            e.counters
                .iter()
                .map(move |c| (e.name.as_str(), c.name.as_str()))
        })
        .collect();
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "each counter once: {names:?}");
    assert!(
        !names.contains(&("Memory", "High Total")),
        "a 64-bit guest kernel has no high memory: absent, not zero"
    );
    let requests = session.id_of("Demo", "requests");
    assert!(requests.is_some(), "the custom counter is in the schema");
    println!(
        "schema: {} counters in {} entities",
        names.len(),
        entities.len()
    );

    // The guest script's counter: each new value within two paces of the last.
    let mut seen: Vec<(Instant, f64)> = Vec::new();
    session.values_until(
        Duration::from_secs(30),
        "four values of the custom counter",
        |_, v| {
            let n = value(v, requests)?;
            if seen.last().is_none_or(|(_, last)| n > *last) {
                seen.push((Instant::now(), n));
            }
            (seen.len() >= 4).then_some(())
        },
    );
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].0 - w[0].0).collect();
    println!(
        "custom counter values {:?}, gaps {gaps:?}",
        seen.iter().map(|s| s.1).collect::<Vec<_>>()
    );
    for gap in &gaps {
        assert!(
            *gap <= 2 * PACE,
            "a new value within two paces: gaps {gaps:?}"
        );
    }

    // CPU Total: low while the guest idles, high while the demo application burns a CPU.
    let cpu_total = session.id_of("CPU", "CPU Total");
    let idle = session.values_until(Duration::from_secs(60), "an idle CPU Total", |_, v| {
        value(v, cpu_total).filter(|t| *t < 50.0)
    });
    let answer = vm
        .try_demo_command("burn 10", DEMO_COMMAND_TIMEOUT)
        .unwrap_or_else(|e| vm.fail(appmon_wire::report::error_chain(&e)));
    let burning_since = Instant::now();
    let busy = session.values_until(
        Duration::from_secs(8),
        "CPU Total of a burning guest",
        |_, v| value(v, cpu_total).filter(|t| *t >= 80.0),
    );
    println!(
        "CPU Total idle {idle:.1} %, burning {busy:.1} % after {:?} ({answer})",
        burning_since.elapsed()
    );
}
