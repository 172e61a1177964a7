//! An SVG timeline of one run: a lane per node (coloured by role), an arrow
//! per message from send to delivery (a short stub for a lost one), and the
//! faults. `raft-sim replay --seed S --svg run.svg` writes one.

use std::fmt::Write;

use raft_core::{NodeId, Role, Term};

/// Something that happened, as drawn on the timeline.
#[derive(Clone, Debug, PartialEq)]
pub enum Mark {
    /// A message between nodes; `arrive_us` is `None` if it was lost.
    Message {
        /// Sender.
        from: NodeId,
        /// Receiver.
        to: NodeId,
        /// When it was sent.
        sent_us: u64,
        /// When it arrives, if it does.
        arrive_us: Option<u64>,
        /// Its kind (see [`crate::fmt::kind`]).
        kind: &'static str,
    },
    /// A node's role changed.
    Role {
        /// The node.
        node: NodeId,
        /// When.
        at_us: u64,
        /// Its new role.
        role: Role,
        /// Its term.
        term: Term,
    },
    /// A node crashed (`up: false`) or restarted (`up: true`).
    Power {
        /// The node.
        node: NodeId,
        /// When.
        at_us: u64,
        /// Whether it came up.
        up: bool,
    },
    /// A fault was injected.
    Fault {
        /// When.
        at_us: u64,
        /// What.
        label: String,
    },
}

fn colour(kind: &str) -> &'static str {
    match kind {
        "PreVote" | "RequestVote" => "#d97706",
        "VoteGranted" => "#16a34a",
        "VoteRejected" => "#dc2626",
        "AppendEntries" => "#2563eb",
        "Heartbeat" => "#93c5fd",
        "AppendOk" => "#64748b",
        _ => "#be123c",
    }
}

fn role_colour(role: Role) -> &'static str {
    match role {
        Role::Leader => "#16a34a",
        Role::Candidate => "#d97706",
        Role::PreCandidate => "#fbbf24",
        Role::Follower => "#cbd5e1",
    }
}

/// Renders the marks between `from_us` and `to_us` for nodes `1..=nodes`.
pub fn svg(marks: &[Mark], nodes: u64, from_us: u64, to_us: u64) -> String {
    let to_us = to_us.max(from_us + 1);
    let (left, width, lane, top) = (70.0, 1500.0, 90.0, 60.0);
    let x = |t: u64| left + (t.saturating_sub(from_us)).min(to_us - from_us) as f64 / (to_us - from_us) as f64 * width;
    let y = |n: NodeId| top + (n - 1) as f64 * lane;
    let height = top + nodes as f64 * lane;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="monospace" font-size="11">"#,
        left + width + 20.0
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{left}" y="18">time {from_us}us .. {to_us}us</text>"#);
    for (i, k) in
        ["RequestVote", "VoteGranted", "VoteRejected", "AppendEntries", "Heartbeat", "AppendOk", "AppendReject"]
            .iter()
            .enumerate()
    {
        let lx = left + 200.0 + i as f64 * 150.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="14" x2="{}" y2="14" stroke="{}" stroke-width="3"/>"#,
            lx + 20.0,
            colour(k)
        );
        let _ = writeln!(s, r#"<text x="{}" y="18">{k}</text>"#, lx + 24.0);
    }
    // Lanes, coloured by role over time.
    for n in 1..=nodes {
        let _ = writeln!(s, r#"<text x="8" y="{}">node {n}</text>"#, y(n) + 4.0);
        // (start, role or None while down, term)
        let mut segments: Vec<(u64, Option<Role>, Term)> = vec![(0, Some(Role::Follower), 0)];
        for m in marks {
            match m {
                Mark::Role { node, at_us, role, term } if *node == n => segments.push((*at_us, Some(*role), *term)),
                Mark::Power { node, at_us, up } if *node == n => {
                    let term = segments.last().map_or(0, |seg| seg.2);
                    segments.push((*at_us, up.then_some(Role::Follower), term));
                }
                _ => {}
            }
        }
        for (i, &(start, role, term)) in segments.iter().enumerate() {
            let end = segments.get(i + 1).map_or(to_us, |seg| seg.0);
            if end < from_us || start > to_us {
                continue;
            }
            let (colour, w, dash, title) = match role {
                Some(r) => (role_colour(r), if r == Role::Leader { 6 } else { 3 }, "", format!("{r} term {term}")),
                None => ("#dc2626", 2, r#" stroke-dasharray="6,4""#, "down".to_string()),
            };
            let _ = writeln!(
                s,
                r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{colour}" stroke-width="{w}"{dash}><title>{title}</title></line>"#,
                x(start.max(from_us)),
                y(n),
                x(end),
                y(n),
            );
        }
    }
    for m in marks {
        match m {
            Mark::Message { from, to, sent_us, arrive_us, kind } => {
                if *sent_us < from_us || *sent_us > to_us || *from > nodes || *to > nodes {
                    continue;
                }
                let (x1, y1) = (x(*sent_us), y(*from));
                let (x2, y2, dash) = match arrive_us {
                    Some(a) => (x(*a), y(*to), ""),
                    // Lost: a short dashed stub towards the receiver.
                    None => (x1 + 6.0, y1 + (y(*to) - y1) * 0.25, r#" stroke-dasharray="2,2""#),
                };
                let _ = writeln!(
                    s,
                    r#"<line x1="{x1:.1}" y1="{y1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{}" stroke-width="1"{dash}><title>{from}->{to} {kind} at {sent_us}us</title></line>"#,
                    colour(kind)
                );
            }
            Mark::Fault { at_us, label } if *at_us >= from_us && *at_us <= to_us => {
                let fx = x(*at_us);
                let _ = writeln!(
                    s,
                    r##"<line x1="{fx:.1}" y1="{}" x2="{fx:.1}" y2="{height}" stroke="#7c3aed" stroke-dasharray="4,3"/><text x="{:.1}" y="{}" fill="#7c3aed">{label}</text>"##,
                    top - 20.0,
                    fx + 3.0,
                    top - 22.0
                );
            }
            _ => {}
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_lanes_messages_losses_and_faults_in_the_window() {
        let marks = vec![
            Mark::Role { node: 1, at_us: 100, role: Role::Leader, term: 2 },
            Mark::Message { from: 1, to: 2, sent_us: 150, arrive_us: Some(180), kind: "AppendEntries" },
            Mark::Message { from: 1, to: 3, sent_us: 150, arrive_us: None, kind: "AppendEntries" },
            Mark::Message { from: 2, to: 1, sent_us: 5_000, arrive_us: Some(5_100), kind: "AppendOk" },
            Mark::Power { node: 3, at_us: 200, up: false },
            Mark::Fault { at_us: 200, label: "Crash(3)".into() },
        ];
        let s = svg(&marks, 3, 0, 1_000);
        assert_eq!(s.matches("1-&gt;2").count() + s.matches("1->2").count(), 1, "one delivered message drawn");
        assert_eq!(s.matches("stroke-dasharray=\"2,2\"").count(), 1, "one lost message drawn as a stub");
        assert!(!s.contains("2->1"), "messages outside the window are left out");
        assert!(s.contains("leader term 2"), "leader lane segment");
        assert!(s.contains("<title>down</title>"), "crashed node's lane");
        assert!(s.contains("Crash(3)"), "fault label");
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
    }
}
