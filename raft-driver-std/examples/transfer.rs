//! Measures leadership transfer on the generic driver: three in-process nodes on 127.0.0.1 (real
//! threads, TCP, fsynced WALs in a temporary directory, default timing: 50 ms ticks, heartbeats every
//! 2 ticks), leadership handed round the cluster `TRIALS` times, idle and under a write load. For
//! each transfer it prints the time without a leader (from the moment the old leader stops leading
//! to the moment the target leads, both observed by polling the nodes' status every 100 µs) and the
//! time the `transfer_leadership` call took (which includes bringing the target up to date).
//!
//! ```text
//! cargo run --release -p raft-driver-std --example transfer -- [TRIALS]
//! ```

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::Role;
use raft_driver_std::{NodeOptions, RaftHandle, RaftNode, RestoreError, StateMachine};

/// Counts commands.
#[derive(Default)]
struct Counter(u64);

impl StateMachine for Counter {
    type Response = u64;
    type Snapshot = Vec<u8>;

    fn apply(&mut self, _index: u64, _command: &[u8]) -> u64 {
        self.0 += 1;
        self.0
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.to_be_bytes().to_vec()
    }

    fn restore(&mut self, image: &[u8]) -> Result<(), RestoreError> {
        let bytes: [u8; 8] = image.try_into().map_err(|_| RestoreError("not 8 bytes".into()))?;
        self.0 = u64::from_be_bytes(bytes);
        Ok(())
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let trials: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().expect("tempdir");
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let nodes: Vec<RaftNode<Counter>> = (1..=3u64)
        .map(|id| {
            let peers = (1..=3u64).filter(|&p| p != id).map(|p| (p, addrs[p as usize - 1])).collect();
            let options = NodeOptions::new(id, 1, addrs[id as usize - 1], peers, dir.path().join(format!("n{id}")));
            RaftNode::start(options, Counter::default()).expect("start")
        })
        .collect();
    let handles: Vec<RaftHandle<Counter>> = nodes.iter().map(RaftNode::handle).collect();
    let leader = || handles.iter().position(|h| h.status().role == Role::Leader);
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader().is_none() {
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("transfer: 3 nodes, 127.0.0.1, fsync on, tick 50 ms, heartbeat 100 ms, {trials} transfers per run");
    for load in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..if load { 4 } else { 0 })
            .map(|_| {
                let (handles, stop) = (handles.clone(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut acked = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let Some(l) = handles.iter().find(|h| h.status().role == Role::Leader) else { continue };
                        if l.propose_wait(Bytes::from_static(b"x"), Duration::from_secs(2)).is_ok() {
                            acked += 1;
                        }
                    }
                    acked
                })
            })
            .collect();
        let (mut gaps, mut calls) = (Vec::new(), Vec::new());
        for _ in 0..trials {
            let from = leader().expect("a leader");
            let to = (from + 1) % 3;
            let started = Instant::now();
            let (h_from, h_to) = (handles[from].clone(), handles[to].clone());
            let watcher = std::thread::spawn(move || {
                let mut stepped_down = None;
                let limit = Instant::now() + Duration::from_secs(5);
                while Instant::now() < limit {
                    if stepped_down.is_none() && h_from.status().role != Role::Leader {
                        stepped_down = Some(Instant::now());
                    }
                    if h_to.status().role == Role::Leader {
                        let now = Instant::now();
                        return Some(now.duration_since(stepped_down.unwrap_or(now)));
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                None
            });
            let result = handles[from].transfer_leadership(to as u64 + 1, Duration::from_secs(5));
            calls.push(started.elapsed().as_secs_f64() * 1e3);
            let gap = watcher.join().expect("watcher");
            match (result, gap) {
                (Ok(()), Some(gap)) => gaps.push(gap.as_secs_f64() * 1e3),
                (r, g) => println!("  transfer {from}->{to} failed: {r:?} gap {g:?}"),
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        stop.store(true, Ordering::SeqCst);
        let acked: u64 = writers.into_iter().map(|w| w.join().expect("writer")).sum();
        gaps.sort_by(f64::total_cmp);
        calls.sort_by(f64::total_cmp);
        if gaps.is_empty() {
            println!("{}: no successful transfer", if load { "under load" } else { "idle" });
            continue;
        }
        println!(
            "{:<11} without a leader: median {:.1} ms, p90 {:.1} ms, max {:.1} ms | call: median {:.1} ms, max {:.1} ms | {}/{} ok{}",
            if load { "under load" } else { "idle" },
            percentile(&gaps, 0.5),
            percentile(&gaps, 0.9),
            gaps[gaps.len() - 1],
            percentile(&calls, 0.5),
            calls[calls.len() - 1],
            gaps.len(),
            trials,
            if load { format!(" | {acked} writes acknowledged meanwhile") } else { String::new() }
        );
    }
}
