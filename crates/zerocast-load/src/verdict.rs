//! Whether a run measured what it set out to: a run that measured nothing, lost connections,
//! or got replies that do not match its scenario must not look like a success. The command
//! line prints these problems and exits non-zero.

use crate::report::Report;
use crate::run::PROBE_ID;

/// Connections that may fail to open, or be closed during the run, before the run fails: 1 %
/// of the connections asked for (a handful of resets on a loaded loopback is noise; a server
/// that refuses or drops players is not).
pub const DEFAULT_MAX_FAILED: f64 = 0.01;

/// The first frame that did not match the scenario: its packet id and length on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unexpected {
    /// Packet id from the header (0 for the raw scenario, which has no frames).
    pub id: u16,
    /// Frame length, header included.
    pub len: usize,
}

/// What a server that sent `frame` seems to speak, judged by the packet ids of the protocols in
/// docs/PROTOCOL.md and by what the generator sent (`size`-byte probes). Returns the kind of
/// server and the `zerocast load` scenario that drives it.
pub fn guess_server(frame: Unexpected, size: usize) -> (String, Option<&'static str>) {
    const SENDER_ID_LEN: usize = 8;
    let Unexpected { id, len } = frame;
    match id {
        PROBE_ID if len == size => (
            "an echo server (our messages came back unchanged)".into(),
            Some("echo"),
        ),
        PROBE_ID if len == size + SENDER_ID_LEN => (
            "a broadcast server (our messages came back with an 8-byte sender id)".into(),
            Some("broadcast"),
        ),
        0x0101..=0x01ff => (
            format!("an echo server (our own world packet {id:#06x} came back)"),
            Some("echo"),
        ),
        0x0201..=0x02ff => (
            format!("a world server (it sent world-protocol packet {id:#06x}, {len} bytes)"),
            Some("world"),
        ),
        _ => (
            format!("an unknown protocol (packet id {id:#06x}, {len} bytes)"),
            None,
        ),
    }
}

impl Report {
    /// Why this run's figures cannot be trusted, one sentence each; empty when the run
    /// measured what it set out to. `max_failed` is the share of connections that may fail
    /// to open or be closed during the run (see [`DEFAULT_MAX_FAILED`]).
    pub fn problems(&self, max_failed: f64) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(m) = &self.mismatch {
            out.push(m.clone());
        } else if self.corrupt > 0 {
            out.push(format!(
                "{} replies did not match the {} scenario",
                self.corrupt, self.scenario
            ));
        }
        let allowed = (self.connections as f64 * max_failed).floor() as u64;
        if self.connect_errors > allowed {
            out.push(format!(
                "{} of {} connections failed to open (first error: {})",
                self.connect_errors,
                self.connections,
                self.connect_error.as_deref().unwrap_or("unknown")
            ));
        }
        if self.disconnects > allowed {
            let reasons: Vec<String> = self
                .disconnect_reasons
                .iter()
                .map(|(r, n)| format!("{r}: {n}"))
                .collect();
            out.push(format!(
                "{} of {} sessions were closed during the run ({})",
                self.disconnects,
                self.connections,
                reasons.join(", ")
            ));
            if self.received_total == 0 && self.disconnects >= self.connected && self.corrupt == 0 {
                out.push(format!(
                    "the server closed every session without a single reply: it does not seem \
                     to speak the {} protocol",
                    self.scenario
                ));
            }
        }
        if let Some(w) = &self.world {
            let welcomed_enough = w.joined + allowed >= self.connected;
            if !welcomed_enough {
                out.push(format!(
                    "only {} of {} bots were welcomed into the world",
                    w.joined, self.connected
                ));
            }
            if w.out_of_range > 0 {
                out.push(format!(
                    "{} moves were delivered from players out of range (the area of interest \
                     leaks)",
                    w.out_of_range
                ));
            }
        }
        let measures_traffic = self.scenario != "idle";
        if measures_traffic && self.received == 0 {
            out.push(
                "nothing was measured: no reply or delivery arrived inside the measurement \
                 window"
                    .into(),
            );
        } else if !measures_traffic && self.connected == 0 {
            out.push("no connection was held".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guesses_name_the_protocol_and_the_scenario_to_use() {
        let g = |id, len| guess_server(Unexpected { id, len }, 64);
        assert_eq!(g(PROBE_ID, 64).1, Some("echo"));
        assert_eq!(g(PROBE_ID, 72).1, Some("broadcast"));
        assert_eq!(g(0x0101, 6).1, Some("echo"));
        assert!(g(0x0209, 20).0.contains("world server"));
        assert_eq!(g(0x0209, 20).1, Some("world"));
        assert_eq!(g(0x7777, 9).1, None);
    }

    #[test]
    fn a_run_that_measured_nothing_or_lost_sessions_fails() {
        let ok = Report {
            scenario: "echo".into(),
            connections: 100,
            connected: 100,
            received: 5,
            received_total: 5,
            ..Report::default()
        };
        assert!(ok.problems(DEFAULT_MAX_FAILED).is_empty());
        let nothing = Report {
            received: 0,
            ..ok.clone()
        };
        assert_eq!(nothing.problems(DEFAULT_MAX_FAILED).len(), 1);
        let one_lost = Report {
            disconnects: 1,
            ..ok.clone()
        };
        assert!(
            one_lost.problems(DEFAULT_MAX_FAILED).is_empty(),
            "1 % is tolerated"
        );
        let many_lost = Report {
            disconnects: 2,
            ..ok.clone()
        };
        assert_eq!(many_lost.problems(DEFAULT_MAX_FAILED).len(), 1);
        let all_closed = Report {
            disconnects: 100,
            received: 0,
            received_total: 0,
            ..ok
        };
        let p = all_closed.problems(DEFAULT_MAX_FAILED);
        assert!(
            p.iter().any(|p| p.contains("does not seem to speak")),
            "{p:?}"
        );
    }
}
