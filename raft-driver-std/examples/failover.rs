//! Measures leader failover: the time from `kill -9` of the leader of a local 3-node `raftkv` cluster
//! to the first write acknowledged by the survivors, over several trials, and prints the median.
//!
//! ```text
//! cargo build --release -p raft-driver-std --bin raftkv --example failover
//! target/release/examples/failover [TRIALS] [PATH/TO/raftkv]
//! ```
//!
//! The `raftkv` binary defaults to the one next to this example's directory (`target/<profile>/raftkv`).
//! Each trial uses a fresh data directory and ports 23000+ (below the ephemeral range); fsync is on.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Child processes killed on drop, so an early exit leaves nothing running.
struct Nodes(Vec<Option<Child>>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in self.0.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn role(port: u16) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut conn = client.get_connection_with_timeout(Duration::from_millis(500)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let info: String = redis::cmd("INFO").arg("replication").query(&mut conn).ok()?;
    info.lines().find_map(|l| l.strip_prefix("raft_role:")).map(|r| r.trim().to_owned())
}

fn trial(raftkv: &PathBuf, base: u16) -> Result<Duration, String> {
    let ports: Vec<u16> = (base..base + 6).collect();
    for &p in &ports {
        TcpListener::bind(("127.0.0.1", p)).map_err(|e| format!("port {p} busy: {e}"))?;
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut toml = String::from("cluster_id = 1\n");
    for i in 0..3 {
        toml.push_str(&format!(
            "[[nodes]]\nid = {}\npeer_addr = \"127.0.0.1:{}\"\nclient_addr = \"127.0.0.1:{}\"\n",
            i + 1,
            ports[3 + i],
            ports[i]
        ));
    }
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, toml).map_err(|e| e.to_string())?;
    let mut nodes = Nodes(Vec::new());
    for id in 1..=3 {
        let child = Command::new(raftkv)
            .args(["node", "--id", &id.to_string(), "--exit-on-stdin-eof", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join(format!("node-{id}")))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", raftkv.display()))?;
        nodes.0.push(Some(child));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        if let Some(i) = (0..3).find(|&i| role(ports[i]).as_deref() == Some("leader")) {
            break i;
        }
        if Instant::now() > deadline {
            return Err("no leader elected".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut conns = Vec::new();
    for &i in &survivors {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", ports[i])).map_err(|e| e.to_string())?;
        let conn = client.get_connection_with_timeout(Duration::from_secs(1)).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        conns.push(conn);
    }
    // Warm up: the survivors have forwarded a write to the leader before it dies.
    for conn in &mut conns {
        redis::cmd("SET").arg("warm").arg("up").query::<()>(conn).map_err(|e| e.to_string())?;
    }
    let mut old = nodes.0[leader].take().ok_or("leader not running")?;
    old.kill().map_err(|e| e.to_string())?;
    let killed = Instant::now();
    let _ = old.wait();
    for attempt in 0..20 {
        if redis::cmd("SET").arg("after").arg(attempt).query::<()>(&mut conns[attempt % 2]).is_ok() {
            return Ok(killed.elapsed());
        }
    }
    Err("no write acknowledged after the crash".into())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let trials: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let raftkv = args.next().map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().unwrap_or_default();
        exe.parent().and_then(|examples| examples.parent()).map(|p| p.join("raftkv")).unwrap_or_default()
    });
    let mut times = Vec::new();
    for t in 0..trials {
        match trial(&raftkv, 23_000 + (t as u16 % 50) * 10) {
            Ok(elapsed) => {
                println!("trial {t}: first acknowledged write {:.0} ms after kill -9", elapsed.as_secs_f64() * 1e3);
                times.push(elapsed);
            }
            Err(e) => println!("trial {t}: failed: {e}"),
        }
    }
    if times.is_empty() {
        eprintln!("no successful trial");
        std::process::exit(1);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "failover over {} trials: median {:.0} ms, min {:.0} ms, max {:.0} ms",
        times.len(),
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1])
    );
}
