//! Core throughput: the anchor workload of docs/benchmarks.md. A 3-node
//! cluster in one thread, in-memory "disks" that sync at once, messages
//! delivered in memory. The leader proposes N entries of P bytes, at most B
//! new proposals per round; one round = every node's outputs are carried out,
//! then every queued message is delivered. Prints committed-and-applied
//! entries per second, counted when all 3 nodes have applied all N.
//!
//! `cargo run --release -p raft-sim --example core_bench -- N P B [single]`
//! (`single`: one `Propose` event per entry instead of one `ProposeBatch`).

use std::collections::VecDeque;
use std::time::Instant;

use raft_core::{Action, Bytes, Config, Event, Node, Role};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (n, payload, batch) = (arg(0, 1_000_000), arg(1, 128) as usize, arg(2, 64));
    let single = args.iter().any(|a| a == "single");

    let mut nodes: Vec<Node> = (1..=3u64)
        .map(|id| {
            let mut c = Config::new(id, vec![1, 2, 3]);
            c.max_bytes_per_msg = 1 << 20;
            c.max_inflight_msgs = 256;
            Node::new(c, id).expect("config")
        })
        .collect();
    let mut net: VecDeque<(u64, Event)> = VecDeque::new();
    let mut applied = [0u64; 3];
    let mut buf = Vec::new();

    step(&mut nodes, 1, Event::Campaign, &mut net, &mut applied, &mut buf);
    while nodes[0].role() != Role::Leader || !net.is_empty() {
        pump(&mut nodes, &mut net, &mut applied, &mut buf);
    }
    let base = applied;
    let data = vec![7u8; payload];
    let start = Instant::now();
    let mut proposed = 0u64;
    let mut messages = 0u64;
    let mut rounds = 0u64;
    while applied.iter().zip(&base).any(|(a, b)| a - b < n) {
        let k = batch.min(n - proposed);
        if k > 0 {
            if single {
                for _ in 0..k {
                    let e = Event::Propose { data: Bytes::from(data.clone()) };
                    step(&mut nodes, 1, e, &mut net, &mut applied, &mut buf);
                }
            } else {
                let batch: Vec<Bytes> = (0..k).map(|_| Bytes::from(data.clone())).collect();
                step(&mut nodes, 1, Event::ProposeBatch { data: batch }, &mut net, &mut applied, &mut buf);
            }
            proposed += k;
        }
        messages += pump(&mut nodes, &mut net, &mut applied, &mut buf);
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "raft-core: {n} entries x {payload} B, batch {batch}{}: {secs:.3} s, {:.0} entries/s, {messages} messages, {rounds} rounds",
        if single { " (one Propose per entry)" } else { "" },
        n as f64 / secs
    );
}

/// Steps one node and routes its actions: sends to the network, writes
/// acknowledged at once (an instant disk), applies counted.
fn step(
    nodes: &mut [Node],
    id: u64,
    event: Event,
    net: &mut VecDeque<(u64, Event)>,
    applied: &mut [u64; 3],
    buf: &mut Vec<Action>,
) {
    nodes[id as usize - 1].step_into(event, buf);
    for a in buf.drain(..) {
        match a {
            Action::Send { to, message } => net.push_back((to, Event::Message { from: id, message })),
            Action::Persist(p) => net.push_back((id, Event::Persisted { seq: p.seq })),
            Action::Apply { entries } => {
                applied[id as usize - 1] += entries.iter().filter(|e| !e.data.is_empty()).count() as u64
            }
            _ => {}
        }
    }
}

/// One round: deliver everything queued (and everything that produces),
/// like the anchor's pump. Returns messages delivered.
fn pump(nodes: &mut [Node], net: &mut VecDeque<(u64, Event)>, applied: &mut [u64; 3], buf: &mut Vec<Action>) -> u64 {
    let mut delivered = 0;
    let mut pending: Vec<(u64, Event)> = net.drain(..).collect();
    while !pending.is_empty() {
        for (to, event) in pending.drain(..) {
            if matches!(event, Event::Message { .. }) {
                delivered += 1;
            }
            step(nodes, to, event, net, applied, buf);
        }
        pending.extend(net.drain(..));
    }
    delivered
}
