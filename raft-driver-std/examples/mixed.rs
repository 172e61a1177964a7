//! A mixed read/write load against any Redis-protocol server (raftkv or redis-server), for the
//! figures in docs/benchmarks.md: `CLIENTS` connections spread round-robin over the given ports, each
//! sending one command at a time for `SECONDS`, `READ_PCT`% `GET` and the rest `SET` of a 128-byte
//! value, over 10,000 keys. Prints requests per second and the p50/p99 latency of each kind.
//!
//! ```text
//! cargo run --release -p raft-driver-std --example mixed -- CLIENTS SECONDS READ_PCT PORT [PORT...]
//! ```
//!
//! `redis-benchmark` runs one command kind per test, so it cannot produce the mix.

use std::time::{Duration, Instant};

use rand::Rng;

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: mixed CLIENTS SECONDS READ_PCT PORT [PORT...]");
        std::process::exit(2);
    }
    let clients: usize = args[0].parse().expect("CLIENTS");
    let seconds: u64 = args[1].parse().expect("SECONDS");
    let read_pct: u32 = args[2].parse().expect("READ_PCT");
    let ports: Vec<u16> = args[3..].iter().map(|p| p.parse().expect("PORT")).collect();
    let value = "v".repeat(128);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let port = ports[c % ports.len()];
            let value = value.clone();
            std::thread::spawn(move || {
                let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client");
                let mut conn = client.get_connection().expect("connect");
                let mut rng = rand::thread_rng();
                let (mut reads, mut writes, mut errors) = (Vec::new(), Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let key = format!("key:{}", rng.gen_range(0..10_000));
                    let read = rng.gen_range(0..100) < read_pct;
                    let start = Instant::now();
                    let ok = if read {
                        redis::cmd("GET").arg(&key).query::<Option<String>>(&mut conn).is_ok()
                    } else {
                        redis::cmd("SET").arg(&key).arg(&value).query::<()>(&mut conn).is_ok()
                    };
                    let micros = start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    match (ok, read) {
                        (false, _) => errors += 1,
                        (true, true) => reads.push(micros),
                        (true, false) => writes.push(micros),
                    }
                }
                (reads, writes, errors)
            })
        })
        .collect();
    let (mut reads, mut writes, mut errors) = (Vec::new(), Vec::new(), 0);
    for w in workers {
        let (r, wr, e) = w.join().expect("worker");
        reads.extend(r);
        writes.extend(wr);
        errors += e;
    }
    reads.sort_unstable();
    writes.sort_unstable();
    let secs = seconds as f64;
    println!(
        "clients={clients} read_pct={read_pct} ports={ports:?} total_rps={:.0} get_rps={:.0} set_rps={:.0} \
         get_p50_ms={:.3} get_p99_ms={:.3} set_p50_ms={:.3} set_p99_ms={:.3} errors={errors}",
        (reads.len() + writes.len()) as f64 / secs,
        reads.len() as f64 / secs,
        writes.len() as f64 / secs,
        percentile(&reads, 0.5),
        percentile(&reads, 0.99),
        percentile(&writes, 0.5),
        percentile(&writes, 0.99),
    );
}
