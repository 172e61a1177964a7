//! End-to-end tests: real `raftkv` processes on 127.0.0.1, driven with the `redis` crate.
//!
//! Every cluster lives in its own temporary directory and port range; every child process is killed
//! when its [`TestCluster`] is dropped (and exits on its own if the test process dies, through
//! `--exit-on-stdin-eof`); every wait has a deadline.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft_driver_std::Timing;
use raft_driver_std::raftkv::config::{ClusterConfig, NodeAddrs, ReadMode, ReadsConfig, SnapshotConfig};
use raft_driver_std::raftkv::store::{KvError, KvOp, KvRequest, KvResult};

const RAFTKV: &str = env!("CARGO_BIN_EXE_raftkv");

/// Hands out port ranges below the Linux ephemeral range (32768+), so that no outgoing connection of
/// a parallel test can be holding one of them; each range is checked free before use.
fn free_ports(count: u16) -> Vec<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let salt = (std::process::id() % 50) as u16 * 200;
    for _ in 0..200 {
        let base = 20_000 + (salt + NEXT.fetch_add(count, Ordering::SeqCst)) % 12_000;
        let ports: Vec<u16> = (base..base + count).collect();
        let listeners: Vec<_> = ports.iter().map(|&p| TcpListener::bind(("127.0.0.1", p))).collect();
        if listeners.iter().all(Result::is_ok) {
            return ports;
        }
    }
    panic!("no free port range found");
}

/// Per-link TCP proxies for a partitionable cluster: node `a` reaches node `b` through proxy `(a, b)`
/// (its cluster file lists the proxy as `b`'s peer address), so a test can cut any directed link while
/// every process, and every client connection, stays up. A cut link closes its connections and refuses
/// new ones, as a partition that resets connections would.
struct Links {
    cut: Mutex<std::collections::BTreeSet<(u64, u64)>>,
    stop: AtomicBool,
}

impl Links {
    fn is_cut(&self, from: u64, to: u64) -> bool {
        self.stop.load(Ordering::Relaxed) || self.cut.lock().expect("lock").contains(&(from, to))
    }

    /// Cuts every link to and from `id`.
    fn isolate(&self, id: u64, all: &[u64]) {
        let mut cut = self.cut.lock().expect("lock");
        for &other in all.iter().filter(|&&o| o != id) {
            cut.insert((id, other));
            cut.insert((other, id));
        }
        drop(cut);
        // Every pump re-checks the cut at least every read timeout (20 ms): once this returns, no
        // byte crosses a cut link (a read that was in progress is dropped, see `serve`).
        std::thread::sleep(Duration::from_millis(60));
    }

    fn heal(&self) {
        self.cut.lock().expect("lock").clear();
    }

    /// Accepts on `listener` (the proxy of link `from -> to`) and pumps each connection to `target`.
    fn serve(self: Arc<Self>, from: u64, to: u64, listener: TcpListener, target: std::net::SocketAddr) {
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            while !self.stop.load(Ordering::Relaxed) {
                let Ok((inbound, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                if self.is_cut(from, to) {
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(target) else { continue };
                let _ = inbound.set_nonblocking(false);
                for (mut src, mut dst) in
                    [(inbound.try_clone().expect("clone"), outbound.try_clone().expect("clone")), (outbound, inbound)]
                {
                    let links = Arc::clone(&self);
                    std::thread::spawn(move || {
                        let _ = src.set_read_timeout(Some(Duration::from_millis(20)));
                        let mut buf = [0u8; 64 * 1024];
                        while !links.is_cut(from, to) {
                            match src.read(&mut buf) {
                                Ok(0) => break,
                                // Cut while this read was in progress: the bytes are lost, as on a real cut.
                                Ok(_) if links.is_cut(from, to) => break,
                                Ok(n) => {
                                    if dst.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = src.shutdown(std::net::Shutdown::Both);
                        let _ = dst.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
    }
}

/// A cluster of `raftkv node` processes.
struct TestCluster {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    /// Per-node cluster files (a partitionable cluster's nodes each see the others through proxies).
    node_config_paths: Vec<PathBuf>,
    links: Option<Arc<Links>>,
    config: ClusterConfig,
    /// Nodes not in the cluster file (ids after its nodes), for membership changes.
    spares: Vec<NodeAddrs>,
    children: Vec<Option<Child>>,
    /// The nodes' `requirepass` (RAFTKV_REQUIREPASS), used by this harness's own connections too.
    password: Option<String>,
    /// Each node's cluster secret (`RAFTKV_CLUSTER_SECRET`), by id; none when missing.
    secrets: Vec<Option<String>>,
    /// More arguments for every `raftkv node` started from here on.
    extra_args: Vec<String>,
    /// Each node's metrics port (`--metrics-addr`), by id - 1; none when empty.
    metrics_ports: Vec<u16>,
}

type Info = HashMap<String, String>;

impl TestCluster {
    fn start(n: u64) -> TestCluster {
        TestCluster::start_with(n, SnapshotConfig::default())
    }

    fn start_with(n: u64, snapshot: SnapshotConfig) -> TestCluster {
        TestCluster::start_with_spares(n, 0, snapshot)
    }

    /// `n` nodes in the cluster file, plus `spares` that are not (started with
    /// [`TestCluster::spawn_joining`]).
    fn start_with_spares(n: u64, spares: u64, snapshot: SnapshotConfig) -> TestCluster {
        let total = (n + spares) as usize;
        let ports = free_ports(2 * total as u16);
        let mut nodes: Vec<NodeAddrs> = (0..total)
            .map(|i| NodeAddrs {
                id: i as u64 + 1,
                client_addr: format!("127.0.0.1:{}", ports[i]).parse().expect("addr"),
                peer_addr: format!("127.0.0.1:{}", ports[total + i]).parse().expect("addr"),
            })
            .collect();
        let spare_nodes = nodes.split_off(n as usize);
        let config = ClusterConfig {
            cluster_id: 7,
            timing: Timing::default(),
            limits: Default::default(),
            snapshot,
            nodes,
            reads: Default::default(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, config.to_toml()).expect("write config");
        let mut cluster = TestCluster {
            dir,
            config_path,
            node_config_paths: Vec::new(),
            links: None,
            config,
            spares: spare_nodes,
            children: (0..n + spares).map(|_| None).collect(),
            password: None,
            secrets: Vec::new(),
            extra_args: Vec::new(),
            metrics_ports: Vec::new(),
        };
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster
    }

    /// `n` nodes, each serving metrics on a port of its own.
    fn start_with_metrics(n: u64) -> TestCluster {
        let mut cluster = TestCluster::start_with_spares(0, n, SnapshotConfig::default());
        cluster.config.nodes = std::mem::take(&mut cluster.spares);
        std::fs::write(&cluster.config_path, cluster.config.to_toml()).expect("write config");
        cluster.metrics_ports = free_ports(n as u16);
        cluster.extra_args = vec!["--log-format=json".into()];
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster
    }

    /// Node `id`'s metrics page, parsed: `name{labels}` to value. Panics on a line that is neither a
    /// comment nor a sample with a number.
    fn metrics(&self, id: u64) -> HashMap<String, f64> {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_ports[id as usize - 1])).expect("metrics port");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").expect("request");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("reply");
        let (head, body) = reply.split_once("\r\n\r\n").expect("HTTP reply");
        assert!(head.starts_with("HTTP/1.1 200 OK") && head.contains("text/plain; version=0.0.4"), "{head}");
        let mut samples = HashMap::new();
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
            let value =
                if value == "+Inf" { f64::INFINITY } else { value.parse().unwrap_or_else(|_| panic!("{line:?}")) };
            assert!(samples.insert(name.to_owned(), value).is_none(), "sample {name} twice");
        }
        for line in body.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().expect("name"), parts.next().expect("kind"));
            assert!(body.contains(&format!("# HELP {name} ")), "{name} has no HELP");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name} is a {kind}");
        }
        samples
    }

    /// `n` nodes that require `password` of every client.
    fn start_with_password(n: u64, password: &str) -> TestCluster {
        let mut cluster = TestCluster::start_with_spares(0, n, SnapshotConfig::default());
        cluster.config.nodes = std::mem::take(&mut cluster.spares);
        std::fs::write(&cluster.config_path, cluster.config.to_toml()).expect("write config");
        cluster.password = Some(password.to_owned());
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster
    }

    /// `n` nodes whose peer links run through [`Links`] proxies, reading with `reads`.
    fn start_partitionable(n: u64, reads: ReadsConfig) -> TestCluster {
        TestCluster::start_partitionable_with(n, reads, &[])
    }

    /// [`TestCluster::start_partitionable`], every node started with `args` too.
    fn start_partitionable_with(n: u64, reads: ReadsConfig, args: &[&str]) -> TestCluster {
        let links = Arc::new(Links { cut: Mutex::new(Default::default()), stop: AtomicBool::new(false) });
        let ports = free_ports(2 * n as u16);
        let addr = |port: u16| -> std::net::SocketAddr { format!("127.0.0.1:{port}").parse().expect("addr") };
        let nodes: Vec<NodeAddrs> = (0..n as usize)
            .map(|i| NodeAddrs {
                id: i as u64 + 1,
                client_addr: addr(ports[i]),
                peer_addr: addr(ports[n as usize + i]),
            })
            .collect();
        let config = ClusterConfig {
            cluster_id: 7,
            timing: Timing::default(),
            limits: Default::default(),
            snapshot: SnapshotConfig::default(),
            nodes: nodes.clone(),
            reads,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, config.to_toml()).expect("write config");
        let mut node_config_paths = Vec::new();
        for a in 1..=n {
            let mut own = config.clone();
            for node in own.nodes.iter_mut().filter(|node| node.id != a) {
                let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
                let target = node.peer_addr;
                node.peer_addr = listener.local_addr().expect("addr");
                Arc::clone(&links).serve(a, node.id, listener, target);
            }
            let path = dir.path().join(format!("cluster-{a}.toml"));
            std::fs::write(&path, own.to_toml()).expect("write config");
            node_config_paths.push(path);
        }
        let mut cluster = TestCluster {
            dir,
            config_path,
            node_config_paths,
            links: Some(links),
            config,
            spares: Vec::new(),
            children: (0..n).map(|_| None).collect(),
            password: None,
            secrets: Vec::new(),
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            metrics_ports: Vec::new(),
        };
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster
    }

    fn links(&self) -> &Links {
        self.links.as_deref().expect("a partitionable cluster")
    }

    fn ids(&self) -> Vec<u64> {
        (1..=self.children.len() as u64).collect()
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    fn stderr_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.stderr"))
    }

    fn command(&self, id: u64) -> Command {
        let stderr =
            std::fs::OpenOptions::new().create(true).append(true).open(self.stderr_path(id)).expect("open stderr log");
        let mut command = Command::new(RAFTKV);
        command
            .args(["node", "--id", &id.to_string(), "--exit-on-stdin-eof", "--config"])
            .arg(self.node_config_paths.get(id as usize - 1).unwrap_or(&self.config_path))
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(&self.extra_args)
            .args(self.metrics_ports.get(id as usize - 1).map(|p| format!("--metrics-addr=127.0.0.1:{p}")))
            .env("RUST_LOG", "info")
            .env("RAFTKV_REQUIREPASS", self.password.as_deref().unwrap_or(""))
            .env_remove("RAFTKV_CLUSTER_SECRET")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr);
        command
    }

    fn spawn(&mut self, id: u64) {
        self.spawn_with_failpoints(id, "");
    }

    /// `n` nodes, each with the cluster secret named for it.
    fn start_with_secrets(secrets: &[Option<&str>]) -> TestCluster {
        let n = secrets.len() as u64;
        let mut cluster = TestCluster::start_with_spares(0, n, SnapshotConfig::default());
        cluster.config.nodes = std::mem::take(&mut cluster.spares);
        std::fs::write(&cluster.config_path, cluster.config.to_toml()).expect("write config");
        cluster.secrets = secrets.iter().map(|s| s.map(str::to_owned)).collect();
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster
    }

    /// Spawns node `id` with `RAFT_FAILPOINTS` set (empty: none armed).
    fn spawn_with_failpoints(&mut self, id: u64, failpoints: &str) {
        assert!(self.children[id as usize - 1].is_none(), "node {id} already running");
        let mut command = self.command(id);
        if let Some(Some(secret)) = self.secrets.get(id as usize - 1) {
            command.env("RAFTKV_CLUSTER_SECRET", secret);
        }
        let child = command.env("RAFT_FAILPOINTS", failpoints).spawn().expect("spawn raftkv");
        self.children[id as usize - 1] = Some(child);
    }

    /// Waits until node `id`'s process has exited on its own; returns whether it did.
    fn wait_exit(&mut self, id: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let child = self.children[id as usize - 1].as_mut().expect("running");
            if child.try_wait().expect("try_wait").is_some() {
                self.children[id as usize - 1] = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Resident memory of node `id`'s process, in KiB (Linux).
    fn rss_kib(&self, id: u64) -> u64 {
        let pid = self.children[id as usize - 1].as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
        line.split_whitespace().nth(1).expect("value").parse().expect("number")
    }

    /// Threads of node `id`'s process (Linux).
    fn threads(&self, id: u64) -> u64 {
        let pid = self.children[id as usize - 1].as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
        let line = status.lines().find(|l| l.starts_with("Threads:")).expect("Threads line");
        line.split_whitespace().nth(1).expect("value").parse().expect("number")
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children[id as usize - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, id: u64, signal: &str) {
        let pid = self.children[id as usize - 1].as_ref().expect("running").id();
        let status = Command::new("sh").arg("-c").arg(format!("kill -{signal} {pid}")).status().expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    fn addrs(&self, id: u64) -> &NodeAddrs {
        self.config.node(id).or_else(|| self.spares.iter().find(|n| n.id == id)).expect("node")
    }

    fn port(&self, id: u64) -> u16 {
        self.addrs(id).client_addr.port()
    }

    fn peer_port(&self, id: u64) -> u16 {
        self.addrs(id).peer_addr.port()
    }

    /// Starts spare `id` with `--join` through node `via`: it asks to be added as a learner.
    fn spawn_joining(&mut self, id: u64, via: u64) {
        assert!(self.children[id as usize - 1].is_none(), "node {id} already running");
        let a = self.addrs(id).clone();
        let via = format!("127.0.0.1:{}", self.port(via));
        let mut command = self.command(id);
        command.args([
            "--join",
            &via,
            "--peer-addr",
            &a.peer_addr.to_string(),
            "--client-addr",
            &a.client_addr.to_string(),
        ]);
        self.children[id as usize - 1] = Some(command.spawn().expect("spawn raftkv"));
    }

    /// `RAFT args...` on node `id`: the reply text, or the error.
    fn admin(&self, id: u64, args: &[&str]) -> Result<String, String> {
        let mut conn = self.conn(id).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(Duration::from_secs(15))).map_err(|e| e.to_string())?;
        let reply: redis::Value = redis::cmd("RAFT").arg(args).query(&mut conn).map_err(|e| e.to_string())?;
        match reply {
            redis::Value::Okay => Ok("OK".into()),
            redis::Value::SimpleString(s) => Ok(s),
            redis::Value::BulkString(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            other => Err(format!("unexpected reply {other:?}")),
        }
    }

    /// [`TestCluster::admin`], retried while the answer is `TRYAGAIN` (a learner catching up, an
    /// election, another change), for at most `timeout`.
    fn admin_retrying(&self, id: u64, args: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self.admin(id, args) {
                Ok(reply) => return reply,
                // The redis crate shows the `TRYAGAIN` code as its error kind, `TryAgain`.
                Err(e) if (e.contains("TRYAGAIN") || e.contains("TryAgain")) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("RAFT {args:?} on node {id}: {e}"),
            }
        }
    }

    /// Waits until INFO on every node of `among` shows `voters` and `learners` (comma-separated).
    fn wait_membership(&self, among: &[u64], voters: &str, learners: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            let seen: Vec<Option<(String, String)>> =
                among.iter().map(|&id| self.info(id).map(|i| (i["voters"].clone(), i["learners"].clone()))).collect();
            if seen.iter().all(|s| s.as_ref().is_some_and(|(v, l)| v == voters && l == learners)) {
                return;
            }
            last = seen;
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nodes {among:?} never showed voters={voters} learners={learners}; last {last:?}");
    }

    fn conn(&self, id: u64) -> redis::RedisResult<redis::Connection> {
        let auth = self.password.as_ref().map_or_else(String::new, |p| format!(":{p}@"));
        let client = redis::Client::open(format!("redis://{auth}127.0.0.1:{}/", self.port(id)))?;
        let conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(6)))?;
        conn.set_write_timeout(Some(Duration::from_secs(6)))?;
        Ok(conn)
    }

    fn info(&self, id: u64) -> Option<Info> {
        let mut conn = self.conn(id).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        let text: String = redis::cmd("INFO").query(&mut conn).ok()?;
        Some(text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_owned(), v.trim().to_owned())).collect())
    }

    /// Waits until exactly one of `among` leads and all of them agree on it and on the term.
    fn wait_leader(&self, among: &[u64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            let infos: Vec<Option<Info>> = among.iter().map(|&id| self.info(id)).collect();
            if infos.iter().all(Option::is_some) {
                let infos: Vec<Info> = infos.into_iter().flatten().collect();
                let leaders: Vec<u64> =
                    among.iter().zip(&infos).filter(|(_, i)| i["raft_role"] == "leader").map(|(&id, _)| id).collect();
                let terms: Vec<&String> = infos.iter().map(|i| &i["term"]).collect();
                if leaders.len() == 1
                    && infos.iter().all(|i| i["leader_id"] == leaders[0].to_string())
                    && terms.iter().all(|t| *t == terms[0])
                {
                    return leaders[0];
                }
                last =
                    infos.iter().map(|i| (i["raft_role"].clone(), i["leader_id"].clone(), i["term"].clone())).collect();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no agreed leader among {among:?} within {timeout:?}; last seen {last:?}");
    }

    /// `(applied index, digest)` of node `id`'s local state machine.
    fn digest(&self, id: u64) -> Option<(u64, String)> {
        let mut conn = self.conn(id).ok()?;
        redis::cmd("RAFTKV.DIGEST").query(&mut conn).ok()
    }

    /// Waits until every node in `among` reports the same state digest.
    fn wait_converged(&self, among: &[u64], timeout: Duration) -> (u64, String) {
        let deadline = Instant::now() + timeout;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            let digests: Vec<Option<(u64, String)>> = among.iter().map(|&id| self.digest(id)).collect();
            if digests.iter().all(|d| d.is_some() && *d == digests[0]) {
                return digests[0].clone().expect("some");
            }
            last = digests;
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nodes {among:?} did not converge within {timeout:?}: {last:?}");
    }

    fn set(&self, id: u64, key: &str, value: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn(id)?;
        redis::cmd("SET").arg(key).arg(value).query(&mut conn)
    }

    fn get(&self, id: u64, key: &str) -> redis::RedisResult<Option<String>> {
        let mut conn = self.conn(id)?;
        redis::cmd("GET").arg(key).query(&mut conn)
    }

    fn stderr(&self, id: u64) -> String {
        std::fs::read_to_string(self.stderr_path(id)).unwrap_or_default()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for id in self.ids() {
            self.kill(id);
        }
        if let Some(links) = &self.links {
            links.stop.store(true, Ordering::Relaxed);
        }
    }
}

fn segments(wal_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(wal_dir)
        .expect("read wal dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("wal-")))
        .collect();
    files.sort();
    files
}

/// (1) Three nodes elect exactly one leader; a SET on any node is read on every node.
#[test]
fn elects_one_leader_and_serves_reads_everywhere() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let leaders: Vec<u64> =
        cluster.ids().into_iter().filter(|&id| cluster.info(id).is_some_and(|i| i["raft_role"] == "leader")).collect();
    assert_eq!(leaders, vec![leader]);
    for writer in cluster.ids() {
        cluster.set(writer, &format!("key-{writer}"), &format!("value-{writer}")).expect("SET");
        for reader in cluster.ids() {
            let value = cluster.get(reader, &format!("key-{writer}")).expect("GET");
            assert_eq!(value.as_deref(), Some(format!("value-{writer}").as_str()), "written on {writer}");
        }
    }
    let info = cluster.info(leader).expect("INFO");
    for field in ["node_id", "role", "leader_id", "term", "commit_index", "applied_index", "last_log_index"] {
        assert!(info.contains_key(field), "INFO lacks {field}");
    }
    cluster.wait_converged(&cluster.ids(), Duration::from_secs(5));
}

/// Connection-level commands, pipelining and RESP3.
#[test]
fn resp_commands_pipelining_and_hello3() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("follower");
    let mut conn = cluster.conn(follower).expect("connect");
    let mut pipe = redis::pipe();
    for i in 0..50 {
        pipe.cmd("INCR").arg("counter").cmd("APPEND").arg("log").arg(i.to_string());
    }
    pipe.cmd("GET").arg("counter");
    let replies: Vec<redis::Value> = pipe.query(&mut conn).expect("pipeline");
    assert_eq!(replies.len(), 101);
    assert_eq!(replies[98], redis::Value::Int(50));
    assert_eq!(replies[100], redis::Value::BulkString(b"50".to_vec()));
    let pong: String = redis::cmd("PING").query(&mut conn).expect("PING");
    assert_eq!(pong, "PONG");
    let echo: String = redis::cmd("ECHO").arg("hi").query(&mut conn).expect("ECHO");
    assert_eq!(echo, "hi");
    let _: () = redis::cmd("SELECT").arg(0).query(&mut conn).expect("SELECT 0");
    assert!(redis::cmd("SELECT").arg(16).query::<()>(&mut conn).is_err());
    // Database 3 is its own key space, on every node (through the log, from a follower too).
    let _: () = redis::cmd("SELECT").arg(3).query(&mut conn).expect("SELECT 3");
    let counter: Option<String> = redis::cmd("GET").arg("counter").query(&mut conn).expect("GET in db 3");
    assert_eq!(counter, None);
    let _: () = redis::cmd("SET").arg("counter").arg("db3").query(&mut conn).expect("SET in db 3");
    let _: () = redis::cmd("SELECT").arg(0).query(&mut conn).expect("SELECT 0");
    let counter: String = redis::cmd("GET").arg("counter").query(&mut conn).expect("GET in db 0");
    assert_eq!(counter, "50");
    let _: () = redis::cmd("CLIENT").arg("SETNAME").arg("tester").query(&mut conn).expect("SETNAME");
    let name: String = redis::cmd("CLIENT").arg("GETNAME").query(&mut conn).expect("GETNAME");
    assert_eq!(name, "tester");
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut conn).expect("CLIENT ID");
    assert!(id > 0);
    let _: redis::Value = redis::cmd("COMMAND").query(&mut conn).expect("COMMAND");

    // HELLO 3 switches this connection to RESP3: a map reply, and later replies in RESP3 (`_` for nil).
    let mut raw = TcpStream::connect(("127.0.0.1", cluster.port(follower))).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    raw.write_all(b"HELLO 3\r\nGET missing-key\r\nQUIT\r\n").expect("write");
    let mut text = Vec::new();
    raw.read_to_end(&mut text).expect("read until QUIT closes");
    let text = String::from_utf8_lossy(&text);
    assert!(text.starts_with("%7\r\n"), "HELLO 3 reply: {text:?}");
    assert!(text.ends_with("_\r\n+OK\r\n"), "RESP3 null then QUIT's OK: {text:?}");
}

/// (2) kill -9 the leader: a new leader serves writes within 2 s, the old node catches up on restart,
/// no acknowledged write is lost.
#[test]
fn leader_crash_fails_over_within_two_seconds() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    for i in 0..20 {
        cluster.set(1 + i % 3, &format!("k{i}"), &format!("v{i}")).expect("SET before crash");
    }
    let survivors: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != leader).collect();
    let mut conns: Vec<redis::Connection> = survivors.iter().map(|&id| cluster.conn(id).expect("conn")).collect();
    cluster.kill(leader);
    let killed = Instant::now();
    // The survivors retry internally (same session and sequence) until a new leader takes the write.
    let mut acked_after = None;
    for attempt in 0..10 {
        let conn = &mut conns[attempt % 2];
        if redis::cmd("SET").arg("after").arg("crash").query::<()>(conn).is_ok() {
            acked_after = Some(killed.elapsed());
            break;
        }
        if killed.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    let elapsed = acked_after.expect("a write was acknowledged after the crash");
    assert!(elapsed < Duration::from_secs(2), "failover took {elapsed:?}");
    eprintln!("failover: first write acknowledged {elapsed:?} after kill -9");

    cluster.spawn(leader);
    cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    cluster.wait_converged(&cluster.ids(), Duration::from_secs(10));
    for i in 0..20 {
        assert_eq!(cluster.get(leader, &format!("k{i}")).expect("GET").as_deref(), Some(format!("v{i}").as_str()));
    }
    assert_eq!(cluster.get(leader, "after").expect("GET").as_deref(), Some("crash"));
}

/// (3) A stopped follower does not stop writes, and catches up when restarted.
#[test]
fn follower_restart_catches_up() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("follower");
    let other = cluster.ids().into_iter().find(|&id| id != leader && id != follower).expect("other");
    cluster.set(follower, "early", "1").expect("SET");
    cluster.kill(follower);
    for i in 0..30 {
        let via = if i % 2 == 0 { leader } else { other };
        cluster.set(via, &format!("k{i}"), &format!("v{i}")).expect("writes continue with one follower down");
    }
    cluster.spawn(follower);
    let (applied, _) = cluster.wait_converged(&cluster.ids(), Duration::from_secs(10));
    assert!(applied >= 31, "applied index {applied}");
    for i in 0..30 {
        assert_eq!(cluster.get(follower, &format!("k{i}")).expect("GET").as_deref(), Some(format!("v{i}").as_str()));
    }
}

/// (4) A leader frozen with SIGSTOP past the election timeout is replaced; after SIGCONT it steps down,
/// and a write it received while frozen is either acknowledged and everywhere, or not acknowledged.
#[test]
fn frozen_leader_steps_down_and_nothing_uncommitted_is_applied() {
    let cluster = TestCluster::start(3);
    let old = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != old).collect();
    cluster.set(old, "x", "before").expect("SET");
    let old_term: u64 = cluster.info(old).expect("info")["term"].parse().expect("term");

    let mut frozen_conn = cluster.conn(old).expect("conn");
    frozen_conn.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    cluster.signal(old, "STOP");
    // Sent while the leader is frozen: it is processed (or not) when the process resumes.
    let result = Arc::new(Mutex::new(None));
    let writer = {
        let result = Arc::clone(&result);
        std::thread::spawn(move || {
            let r: redis::RedisResult<()> = redis::cmd("SET").arg("x").arg("from-frozen").query(&mut frozen_conn);
            *result.lock().expect("lock") = Some(r);
        })
    };

    let new = cluster.wait_leader(&others, Duration::from_secs(5));
    assert_ne!(new, old);
    cluster.set(others[0], "y", "new-leader").expect("SET on the new leader");
    std::thread::sleep(Duration::from_millis(200));
    cluster.signal(old, "CONT");

    writer.join().expect("writer thread");
    let outcome = result.lock().expect("lock").take().expect("writer finished");
    // The old leader steps down and follows the new term.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let info = cluster.info(old);
        if let Some(info) = info {
            let term: u64 = info["term"].parse().expect("term");
            if info["raft_role"] != "leader" && term > old_term {
                break;
            }
        }
        assert!(Instant::now() < deadline, "old leader did not step down");
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    cluster.wait_converged(&cluster.ids(), Duration::from_secs(10));
    let values: Vec<Option<String>> = cluster.ids().into_iter().map(|id| cluster.get(id, "x").expect("GET")).collect();
    match outcome {
        Ok(()) => assert!(values.iter().all(|v| v.as_deref() == Some("from-frozen")), "{values:?}"),
        Err(e) => {
            // Not acknowledged. UNCERTAIN: either value is allowed, but every node agrees. TRYAGAIN
            // promises the write certainly did not happen.
            assert!(matches!(e.code(), Some("TRYAGAIN" | "UNCERTAIN")), "unexpected error {e}");
            assert!(values.iter().all(|v| *v == values[0]), "{values:?}");
            if e.code() == Some("TRYAGAIN") {
                assert!(values.iter().all(|v| v.as_deref() != Some("from-frozen")), "TRYAGAIN but applied: {values:?}");
            }
        }
    }
    assert_eq!(cluster.get(old, "y").expect("GET").as_deref(), Some("new-leader"));
}

/// (5) With two of three nodes down, commands fail with -TRYAGAIN within the bound; restarting one
/// restores service with nothing lost or diverged.
#[test]
fn minority_refuses_writes_then_recovers() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    cluster.set(leader, "k1", "before").expect("SET");
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != leader).collect();
    cluster.kill(followers[0]);
    cluster.kill(followers[1]);
    // The first write is appended on the stranded leader, which then steps down: its outcome is
    // unknown (an old leader that comes back may still commit it). Once the leader has stepped down,
    // nothing is appended and the answer is a definite TRYAGAIN.
    let mut certainly_not = Vec::new();
    for key in ["k2", "k3", "k4"] {
        let started = Instant::now();
        let err = cluster.set(leader, key, "during").expect_err("no quorum: must fail");
        let elapsed = started.elapsed();
        assert!(matches!(err.code(), Some("TRYAGAIN" | "UNCERTAIN")), "{err}");
        assert!(elapsed < Duration::from_millis(2600), "{err} after {elapsed:?}");
        if err.code() == Some("TRYAGAIN") {
            certainly_not.push(key);
        }
    }
    assert!(certainly_not.contains(&"k4"), "a write to a node that knows it does not lead: {certainly_not:?}");
    let err = cluster.get(leader, "k1").expect_err("reads need a quorum too");
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");

    cluster.spawn(followers[0]);
    let survivors = [leader, followers[0]];
    cluster.wait_leader(&survivors, Duration::from_secs(10));
    cluster.set(followers[0], "k5", "after").expect("service restored");
    assert_eq!(cluster.get(leader, "k1").expect("GET").as_deref(), Some("before"));
    for key in certainly_not {
        assert_eq!(cluster.get(leader, key).expect("GET"), None, "{key} was answered TRYAGAIN but applied");
    }
    assert_eq!(cluster.get(followers[0], "k5").expect("GET").as_deref(), Some("after"));
    cluster.wait_converged(&survivors, Duration::from_secs(10));
}

/// (6) kill -9 of every node under write load loses no acknowledged write.
#[test]
fn crash_of_all_nodes_under_load_keeps_acknowledged_writes() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = cluster
        .ids()
        .into_iter()
        .flat_map(|id| [(id, 0), (id, 1)])
        .map(|(id, n)| {
            let conn = cluster.conn(id).expect("conn");
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut acked = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let key = format!("w{id}-{n}-{i}");
                    match redis::cmd("SET").arg(&key).arg(i).query::<()>(&mut conn) {
                        Ok(()) => acked.push((key, i)),
                        Err(_) => break,
                    }
                    i += 1;
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    for id in cluster.ids() {
        cluster.kill(id);
    }
    stop.store(true, Ordering::SeqCst);
    let acked: Vec<(String, u64)> = writers.into_iter().flat_map(|w| w.join().expect("writer")).collect();
    assert!(acked.len() > 20, "load too small: {} writes", acked.len());

    for id in cluster.ids() {
        cluster.spawn(id);
    }
    cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let mut conn = cluster.conn(1).expect("conn");
    for chunk in acked.chunks(200) {
        let keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
        let values: Vec<Option<u64>> = redis::cmd("MGET").arg(&keys).query(&mut conn).expect("MGET");
        for ((key, expected), value) in chunk.iter().zip(values) {
            assert_eq!(value, Some(*expected), "acknowledged write {key} lost");
        }
    }
    eprintln!("{} acknowledged writes survived kill -9 of all nodes", acked.len());
}

/// (7) Garbage on the client and peer ports closes only that connection; a torn WAL tail is recovered;
/// a corrupt record in the middle of the WAL is refused at startup naming file and offset.
#[test]
fn garbage_input_and_wal_damage() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    for i in 0..10 {
        cluster.set(leader, &format!("k{i}"), "v").expect("SET");
    }

    // Client port: malformed and oversized requests get a protocol error and a closed connection.
    for garbage in
        [&b"*abc\r\n"[..], b"*1\r\n$99999999999\r\n", b"*2\r\n$3\r\nGET\r\n:1\r\n", b"\xff\x00*-\r\n\r\n*x\r\n"]
    {
        let mut raw = TcpStream::connect(("127.0.0.1", cluster.port(leader))).expect("connect");
        raw.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        raw.write_all(garbage).expect("write");
        let mut reply = Vec::new();
        raw.read_to_end(&mut reply).expect("connection closed by the server");
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.contains("-ERR Protocol error"), "reply to {garbage:?}: {reply:?}");
    }
    // Peer port: a bad handshake is refused and the connection closed.
    let mut raw = TcpStream::connect(("127.0.0.1", cluster.peer_port(leader))).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    raw.write_all(&[0xAB; 200]).expect("write");
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink); // EOF or reset: either way closed
    cluster.set(leader, "still", "serving").expect("node keeps serving after garbage");

    // Torn tail: half a record at the end of a follower's last segment is cut off on restart.
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("follower");
    cluster.kill(follower);
    let wal_dir = cluster.data_dir(follower).join("wal");
    let last = segments(&wal_dir).pop().expect("a segment");
    let mut file = std::fs::OpenOptions::new().append(true).open(&last).expect("open segment");
    // A record header announcing 1000 bytes followed by only a few of them.
    file.write_all(&[0xE8, 0x03, 0, 0, 1, 2, 3, 4, 3, 9, 9, 9]).expect("append");
    drop(file);
    let inspect = Command::new(RAFTKV).arg("inspect").arg("--data-dir").arg(cluster.data_dir(follower)).output();
    let inspect = inspect.expect("run inspect");
    let report: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("inspect prints JSON");
    assert_eq!(report["health"], "torn_tail", "{report}");
    cluster.spawn(follower);
    cluster.wait_converged(&cluster.ids(), Duration::from_secs(10));
    assert!(cluster.stderr(follower).contains("torn tail"), "{}", cluster.stderr(follower));

    // Corruption in the middle: the node refuses to start, naming file and offset.
    cluster.kill(follower);
    let first = segments(&wal_dir).remove(0);
    let mut bytes = std::fs::read(&first).expect("read segment");
    bytes[16 + 8] ^= 0x5A; // the kind byte of the first record: its CRC no longer matches
    std::fs::write(&first, &bytes).expect("write segment");
    let output = cluster.command(follower).stderr(Stdio::piped()).output().expect("run node");
    assert!(!output.status.success(), "a corrupt WAL must be refused");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let file_name = first.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(stderr.contains(file_name) && stderr.contains("offset 16"), "stderr: {stderr}");
    let inspect = Command::new(RAFTKV).arg("inspect").arg("--data-dir").arg(cluster.data_dir(follower)).output();
    let inspect = inspect.expect("run inspect");
    assert!(!inspect.status.success());
    let report: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("inspect prints JSON");
    assert_eq!(report["health"], "corrupt");
    assert_eq!(report["corrupt_offset"], 16);
    // The two healthy nodes still form a majority.
    cluster.set(leader, "after-corruption", "ok").expect("SET");
}

/// (8) The same `(session, seq)` forwarded twice is applied once; an older sequence is refused.
#[test]
fn duplicated_forwarded_request_applies_once() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let mut conn = cluster.conn(leader).expect("conn");
    let request = |seq: u64| {
        KvRequest { session: 0x00AB_CDEF, seq, now_ms: 1, op: KvOp::IncrBy { key: "ctr".into(), delta: 1 } }
            .encode()
            .to_vec()
    };
    let mut forward = |seq: u64| -> KvResult {
        let bytes: Vec<u8> = redis::cmd("RAFTKV.FORWARD").arg(request(seq)).query(&mut conn).expect("FORWARD");
        KvResult::decode(&bytes).expect("postcard result")
    };
    assert_eq!(forward(1), KvResult::Integer(1));
    assert_eq!(forward(1), KvResult::Integer(1), "duplicate answered from the session cache");
    assert_eq!(forward(2), KvResult::Integer(2));
    assert_eq!(forward(1), KvResult::Error(KvError::StaleSequence));
    for id in cluster.ids() {
        assert_eq!(cluster.get(id, "ctr").expect("GET").as_deref(), Some("2"));
    }
    // A follower does not forward a forwarded request again: it asks the sender to retry.
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("follower");
    let mut conn = cluster.conn(follower).expect("conn");
    let err = redis::cmd("RAFTKV.FORWARD").arg(request(3)).query::<Vec<u8>>(&mut conn).expect_err("not leader");
    assert_eq!(err.code(), Some("TRYAGAIN"));
}

/// (9) A value larger than a log entry may be is refused at once, on the leader and on a follower,
/// with an error naming the limit and saying nothing was applied; values that fit still work.
#[test]
fn oversized_values_are_refused_at_once_naming_the_limit() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("follower");
    let limit = raft_driver_std::Limits::default().max_entry_bytes;
    for id in [leader, follower] {
        // Larger than any bulk may be: refused while parsing, before the value has even arrived whole.
        let mut conn = cluster.conn(id).expect("conn");
        let started = Instant::now();
        let huge = vec![b'x'; 20 << 20];
        let err = redis::cmd("SET").arg("huge").arg(&huge).query::<()>(&mut conn).expect_err("too large");
        assert!(started.elapsed() < Duration::from_secs(1), "refused after {:?}", started.elapsed());
        let text = err.to_string();
        assert!(text.contains("max_entry_bytes") && text.contains(&limit.to_string()), "{text}");
        // Fits a bulk, but not an entry once wrapped with its key and session: refused by the same limit.
        let mut conn = cluster.conn(id).expect("conn");
        let started = Instant::now();
        let err = redis::cmd("SET").arg("edge").arg(vec![b'y'; limit]).query::<()>(&mut conn).expect_err("too large");
        assert!(started.elapsed() < Duration::from_secs(1), "refused after {:?}", started.elapsed());
        let text = err.to_string();
        assert!(text.contains("max_entry_bytes") && text.contains("nothing was applied"), "{text}");
        // The connection stays usable and a large value that fits is replicated.
        let _: () = redis::cmd("SET").arg("big").arg(vec![b'z'; 1 << 20]).query(&mut conn).expect("1 MiB SET");
    }
    for id in cluster.ids() {
        assert_eq!(cluster.get(id, "huge").expect("GET"), None);
        assert_eq!(cluster.get(id, "edge").expect("GET"), None);
    }
    cluster.wait_converged(&cluster.ids(), Duration::from_secs(10));
}

/// The zero-configuration demo: `raftkv cluster` starts the nodes, reports a leader, serves clients,
/// and stops every node on SIGINT.
#[test]
fn cluster_subcommand_runs_and_stops_on_sigint() {
    use std::io::BufRead;
    // Client ports base..base+3 and peer ports base+1000..base+1003 must all be free.
    let base = (0..100)
        .map(|_| free_ports(3)[0])
        .find(|&b| (b + 1000..b + 1003).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()))
        .expect("free ports");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut parent = Command::new(RAFTKV)
        .args(["cluster", "--nodes", "3", "--port", &base.to_string(), "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cluster");
    struct KillOnDrop(Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = parent.stdout.take().expect("stdout");
    let mut parent = KillOnDrop(parent);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("redis-cli")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("cluster did not report readiness: {lines:?}"),
        }
    }
    assert_eq!(lines.iter().filter(|l| l.ends_with(": leader")).count(), 1, "{lines:?}");
    assert!(dir.path().join("cluster.toml").exists());
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", base + 2)).expect("client");
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let _: () = redis::cmd("SET").arg("demo").arg("1").query(&mut conn).expect("SET");

    let pid = parent.0.id();
    let status = Command::new("sh").arg("-c").arg(format!("kill -INT {pid}")).status().expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while parent.0.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "cluster did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every node is gone: its client port refuses connections.
    for port in base..base + 3 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(Instant::now() < deadline, "node on port {port} still running");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Bytes under `dir`, recursively.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| {
                let path = e.path();
                if path.is_dir() { dir_bytes(&path) } else { e.metadata().map_or(0, |m| m.len()) }
            })
            .sum()
    })
}

/// `SET key value` for every `(key, value)`, over `threads` connections to node `via`; returns the
/// acknowledged ones.
fn write_all(cluster: &TestCluster, via: u64, writes: Vec<(String, String)>, threads: usize) -> Vec<(String, String)> {
    let chunk = writes.len().div_ceil(threads);
    let workers: Vec<_> = writes
        .chunks(chunk)
        .map(|part| {
            let part = part.to_vec();
            let mut conn = cluster.conn(via).expect("conn");
            std::thread::spawn(move || {
                let mut acked = Vec::with_capacity(part.len());
                for (k, v) in part {
                    if redis::cmd("SET").arg(&k).arg(&v).query::<()>(&mut conn).is_ok() {
                        acked.push((k, v));
                    }
                }
                acked
            })
        })
        .collect();
    workers.into_iter().flat_map(|w| w.join().expect("writer")).collect()
}

/// Every `(key, value)` reads back on node `id` (a local read after convergence).
fn assert_present(cluster: &TestCluster, id: u64, writes: &[(String, String)]) {
    let mut conn = cluster.conn(id).expect("conn");
    for chunk in writes.chunks(500) {
        let keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(&mut conn).expect("MGET");
        for ((key, expected), value) in chunk.iter().zip(values) {
            assert_eq!(value.as_deref(), Some(expected.as_str()), "acknowledged write {key} missing on node {id}");
        }
    }
}

fn info_u64(info: &Info, key: &str) -> u64 {
    info.get(key).unwrap_or_else(|| panic!("INFO has no {key}")).parse().expect("number")
}

/// (snapshots) A follower down while 100,000 writes happen restarts and catches up by installing the
/// leader's snapshot (its log was compacted past the follower's); every acknowledged write is on it.
#[test]
fn follower_down_for_100k_writes_catches_up_by_snapshot() {
    let snapshot = SnapshotConfig {
        every_entries: 10_000,
        trailing_entries: 1000,
        wal_segment_bytes: 1 << 20,
        ..Default::default()
    };
    let mut cluster = TestCluster::start_with(3, snapshot);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("follower");
    cluster.kill(follower);
    let writes: Vec<(String, String)> = (0..100_000).map(|i| (format!("key:{i}"), format!("value-{i}"))).collect();
    let started = Instant::now();
    let acked = write_all(&cluster, leader, writes, 32);
    assert_eq!(acked.len(), 100_000, "a healthy majority acknowledges every write");
    eprintln!("100,000 SETs with one follower down in {:?}", started.elapsed());
    let info = cluster.info(leader).expect("INFO");
    assert!(info_u64(&info, "snapshots_taken") >= 5, "{info:?}");
    assert!(info_u64(&info, "log_first_index") > 80_000, "the leader's log is compacted: {info:?}");

    cluster.spawn(follower);
    let started = Instant::now();
    let others: Vec<u64> = cluster.ids();
    cluster.wait_converged(&others, Duration::from_secs(60));
    eprintln!("follower caught up in {:?}", started.elapsed());
    let info = cluster.info(follower).expect("INFO");
    assert_eq!(info_u64(&info, "snapshots_installed"), 1, "caught up by one snapshot: {info:?}");
    assert_present(&cluster, follower, &acked);
    // Every data dir holds about one snapshot and a few segments, not the 100,000-write history.
    for id in cluster.ids() {
        let info = cluster.info(id).expect("INFO");
        let bound = 2 * info_u64(&info, "snapshot_bytes") + 6 * (1 << 20);
        let used = dir_bytes(&cluster.data_dir(id));
        assert!(used <= bound, "node {id}: data dir {used} bytes, bound {bound}");
    }
}

/// (snapshots) Overwriting the same 2,000 keys: memory and disk after 60,000 writes are what they
/// were after 20,000 (within slack), since both are bounded by the data, not the number of writes.
#[test]
fn disk_and_memory_stay_bounded_by_the_data_not_the_history() {
    let snapshot = SnapshotConfig {
        every_entries: 5_000,
        trailing_entries: 500,
        wal_segment_bytes: 1 << 20,
        ..Default::default()
    };
    let cluster = TestCluster::start_with(3, snapshot);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let round = |r: usize| -> Vec<(String, String)> {
        (0..20_000).map(|i| (format!("key:{}", i % 2_000), format!("{r}-{i}-{}", "x".repeat(100)))).collect()
    };
    let measure = |cluster: &TestCluster| -> Vec<(u64, u64)> {
        cluster.wait_converged(&cluster.ids(), Duration::from_secs(30));
        cluster.ids().into_iter().map(|id| (cluster.rss_kib(id), dir_bytes(&cluster.data_dir(id)))).collect()
    };
    write_all(&cluster, leader, round(0), 16);
    let after_first = measure(&cluster);
    for r in 1..3 {
        write_all(&cluster, leader, round(r), 16);
    }
    let after_third = measure(&cluster);
    eprintln!("(RSS KiB, data dir bytes) per node after 20k writes {after_first:?}, after 60k {after_third:?}");
    for (id, ((rss1, disk1), (rss3, disk3))) in after_first.iter().zip(&after_third).enumerate() {
        // Three times the writes; a bound growing with them would at least double.
        assert!(*rss3 <= rss1 + rss1 / 2 + 8 * 1024, "node {}: RSS {rss1} KiB -> {rss3} KiB", id + 1);
        assert!(*disk3 <= disk1 + disk1 / 2 + (2 << 20), "node {}: disk {disk1} -> {disk3} bytes", id + 1);
    }
}

/// (snapshots) kill -9 (an abort at a failpoint) at every step of writing a snapshot and of
/// installing one loses no acknowledged write, and the node restarts cleanly and catches up.
#[test]
fn crash_at_every_snapshot_step_loses_nothing() {
    let snapshot =
        SnapshotConfig { every_entries: 300, trailing_entries: 20, wal_segment_bytes: 64 << 10, ..Default::default() };
    let mut cluster = TestCluster::start_with(3, snapshot);
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut batch = 0;
    let mut write = |cluster: &TestCluster, acked: &mut Vec<(String, String)>, via: u64, n: usize| {
        batch += 1;
        let writes = (0..n).map(|i| (format!("b{batch}:{i}"), format!("v{i}"))).collect();
        let done = write_all(cluster, via, writes, 8);
        assert_eq!(done.len(), n, "the other two nodes acknowledge every write");
        acked.extend(done);
    };
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let victim = cluster.ids().into_iter().find(|&id| id != leader).expect("follower");
    // Writing: the victim dies while taking its own snapshot.
    for point in [
        "snapshot-write-before-tmp",
        "snapshot-write-mid-tmp",
        "snapshot-write-before-rename",
        "snapshot-write-before-dir-fsync",
        "snapshot-before-taken",
    ] {
        cluster.kill(victim);
        cluster.spawn_with_failpoints(victim, point);
        let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
        let via = if leader == victim { cluster.ids().into_iter().find(|&id| id != victim).unwrap() } else { leader };
        write(&cluster, &mut acked, via, 400);
        assert!(cluster.wait_exit(victim, Duration::from_secs(10)), "failpoint {point} was not reached");
        assert!(cluster.stderr(victim).contains(&format!("failpoint {point} reached")));
        cluster.spawn(victim);
        cluster.wait_converged(&cluster.ids(), Duration::from_secs(20));
        assert_present(&cluster, victim, &acked);
    }
    // Installing: the victim misses compacted entries and dies while installing the leader's snapshot.
    for point in ["install-before-restore", "install-after-restore"] {
        cluster.kill(victim);
        let leader = cluster.wait_leader(
            &cluster.ids().into_iter().filter(|&id| id != victim).collect::<Vec<_>>(),
            Duration::from_secs(10),
        );
        write(&cluster, &mut acked, leader, 700);
        cluster.spawn_with_failpoints(victim, point);
        assert!(cluster.wait_exit(victim, Duration::from_secs(20)), "failpoint {point} was not reached");
        cluster.spawn(victim);
        cluster.wait_converged(&cluster.ids(), Duration::from_secs(20));
        assert_present(&cluster, victim, &acked);
        let info = cluster.info(victim).expect("INFO");
        assert!(info_u64(&info, "snapshot_index") > 0, "{info:?}");
    }
    // And the survivors restart cleanly from their own snapshots too.
    for id in cluster.ids() {
        cluster.kill(id);
    }
    for id in cluster.ids() {
        cluster.spawn(id);
    }
    cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    cluster.wait_converged(&cluster.ids(), Duration::from_secs(20));
    for id in cluster.ids() {
        assert_present(&cluster, id, &acked);
    }
}

/// Writes `SET mk<i> v<i>` through node `via` until `stop`, keeping the acknowledged ones.
fn background_writes(
    cluster: &TestCluster,
    via: u64,
    stop: Arc<AtomicBool>,
    progress: Arc<std::sync::atomic::AtomicUsize>,
) -> std::thread::JoinHandle<Vec<(String, String)>> {
    let url = format!("redis://127.0.0.1:{}/", cluster.port(via));
    std::thread::spawn(move || {
        let client = redis::Client::open(url).expect("client");
        let mut acked = Vec::new();
        let mut conn = None;
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            if conn.is_none() {
                conn = client.get_connection_with_timeout(Duration::from_secs(1)).ok();
                if let Some(c) = &conn {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(6)));
                }
            }
            let Some(c) = conn.as_mut() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let (k, v) = (format!("mk{i}"), format!("v{i}"));
            i += 1;
            match redis::cmd("SET").arg(&k).arg(&v).query::<()>(c) {
                Ok(()) => {
                    acked.push((k, v));
                    progress.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) if e.is_io_error() || e.is_timeout() => conn = None,
                Err(_) => {} // -TRYAGAIN (an election): not acknowledged
            }
        }
        acked
    })
}

/// (membership) Under a write load: grow 3 to 5 (each new node joins empty as a learner, catches up,
/// is promoted), then replace node 1 by a sixth (learner, then one joint change), then stop node 1.
/// No acknowledged write is lost, and node 1 is refused by the others' handshakes.
#[test]
fn grow_three_to_five_then_replace_a_node_under_load() {
    let mut cluster = TestCluster::start_with_spares(3, 3, SnapshotConfig::default());
    let wait = Duration::from_secs(30);
    cluster.wait_leader(&[1, 2, 3], wait);
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = background_writes(&cluster, 3, Arc::clone(&stop), Arc::clone(&progress));
    for id in [4, 5] {
        cluster.spawn_joining(id, 1);
        let learners = id.to_string();
        let voters = if id == 4 { "1,2,3" } else { "1,2,3,4" };
        cluster.wait_membership(&[1, 2, 3, id], voters, &learners, wait);
        let reply = cluster.admin_retrying(2, &["PROMOTE", &id.to_string()], wait);
        assert!(reply.contains(&format!("voters={voters},{id}")), "{reply}");
    }
    cluster.wait_membership(&[1, 2, 3, 4, 5], "1,2,3,4,5", "", wait);

    // Replace 1 by 6: 6 joins as a learner, then one joint change swaps them.
    cluster.spawn_joining(6, 4);
    cluster.wait_membership(&[2, 6], "1,2,3,4,5", "6", wait);
    let reply = cluster.admin_retrying(5, &["REPLACE", "1", "6"], wait);
    assert!(reply.contains("voters=2,3,4,5,6 learners="), "{reply}");
    // The reply means the leader committed the leave; node 6 applies it a moment later.
    let deadline = Instant::now() + wait;
    loop {
        let members = cluster.admin(6, &["MEMBERS"]).unwrap_or_default();
        if members.contains("joint=no") && members.contains("id=6 role=voter") {
            break;
        }
        assert!(Instant::now() < deadline, "node 6 never left the joint configuration: {members}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The load keeps committing after the replacement: 20 more writes acknowledged.
    let (at_replace, deadline) = (progress.load(Ordering::SeqCst), Instant::now() + wait);
    while progress.load(Ordering::SeqCst) < at_replace + 20 {
        assert!(Instant::now() < deadline, "the load stopped committing after the replacement");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    let acked = writer.join().expect("writer");
    assert!(at_replace > 0, "the load committed while the cluster grew");
    let survivors = [2, 3, 4, 5, 6];
    cluster.wait_converged(&survivors, wait);
    for id in survivors {
        assert_present(&cluster, id, &acked);
    }
    // Node 1 was removed: the others refuse it.
    let deadline = Instant::now() + wait;
    let rejected = || -> u64 {
        survivors.iter().map(|&id| info_u64(&cluster.info(id).expect("info"), "peer_handshakes_rejected")).sum()
    };
    while rejected() == 0 {
        assert!(Instant::now() < deadline, "node 1 is still accepted by the others");
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.kill(1);
    cluster.set(2, "after", "1").expect("a write after node 1 is gone");
}

/// (membership) The leader removes itself: it steps down once the change commits and another node
/// leads within a moment; a learner that crashes never blocks commits.
#[test]
fn remove_the_leader_and_a_learner_crash_never_blocks_commits() {
    let mut cluster = TestCluster::start_with_spares(3, 1, SnapshotConfig::default());
    let wait = Duration::from_secs(30);
    let leader = cluster.wait_leader(&[1, 2, 3], wait);
    let stop = Arc::new(AtomicBool::new(false));
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    let writer = background_writes(&cluster, others[0], Arc::clone(&stop), Arc::default());
    let reply = cluster.admin_retrying(leader, &["REMOVE", &leader.to_string()], wait);
    let voters = others.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    assert!(reply.contains(&format!("voters={voters}")), "{reply}");
    let next = cluster.wait_leader(&others, wait);
    assert_ne!(next, leader);
    // The configuration is durable: `raftkv inspect` reads it from the WAL.
    let out =
        Command::new(RAFTKV).args(["inspect", "--data-dir"]).arg(cluster.data_dir(next)).output().expect("inspect");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    assert_eq!(report["membership"]["voters"], serde_json::json!(others), "{report}");

    // A learner joins, then crashes: the two voters still commit.
    cluster.spawn_joining(4, others[0]);
    cluster.wait_membership(&others, &voters, "4", wait);
    cluster.kill(4);
    for i in 0..20 {
        cluster.set(others[1], &format!("after-crash-{i}"), "x").expect("commits without the learner");
    }
    stop.store(true, Ordering::SeqCst);
    let acked = writer.join().expect("writer");
    cluster.wait_converged(&others, wait);
    for &id in &others {
        assert_present(&cluster, id, &acked);
    }
    // Restarted, the learner catches up.
    cluster.spawn_joining(4, others[0]);
    let deadline = Instant::now() + wait;
    while cluster.digest(4) != cluster.digest(others[0]) {
        assert!(Instant::now() < deadline, "learner 4 did not catch up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (membership) Leadership moves to the node asked for; a transfer to a non-voter is refused with
/// nothing changed; `raftkv cluster --nodes 5` refuses a 3-node data directory, naming the admin
/// commands.
#[test]
fn transfer_leadership_and_refusals() {
    let cluster = TestCluster::start(3);
    let wait = Duration::from_secs(30);
    let leader = cluster.wait_leader(&[1, 2, 3], wait);
    let target = if leader == 3 { 1 } else { 3 };
    let started = Instant::now();
    let reply = cluster.admin_retrying(2, &["TRANSFER-LEADER", &target.to_string()], wait);
    let took = started.elapsed();
    assert!(reply.contains(&format!("node {target} leads")), "{reply}");
    assert_eq!(cluster.wait_leader(&[1, 2, 3], wait), target);
    eprintln!("transfer to node {target} took {took:?} end to end (through a follower)");
    let err = cluster.admin(target, &["TRANSFER-LEADER", "9"]).unwrap_err();
    assert!(err.contains("not a voter") && err.contains("nothing changed"), "{err}");
    let err = cluster.admin(target, &["REMOVE", "9"]).unwrap_err();
    assert!(err.contains("not a member") && err.contains("nothing changed"), "{err}");
    cluster.set(1, "still", "works").expect("write");

    let dir = tempfile::tempdir().expect("tempdir");
    let three = ClusterConfig::local(3, 6379).expect("config");
    std::fs::write(dir.path().join("cluster.toml"), three.to_toml()).expect("write");
    let out = Command::new(RAFTKV)
        .args(["cluster", "--nodes", "5", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run raftkv cluster");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3-node cluster") && stderr.contains("raftkv admin"), "{stderr}");
}

/// (reads) A leader cut off from its peers, with a client still connected to it, never answers that
/// client with a value older than a write the majority acknowledged before the read was sent: with
/// ReadIndex its read rounds reach no one, with a lease the lease runs out before the others can elect
/// anyone (the clocks of one machine drift far less than the bound). Once the links heal, the same
/// connection reads the new value.
#[test]
fn a_partitioned_leader_never_serves_a_stale_read() {
    for mode in [ReadMode::Index, ReadMode::Lease] {
        let cluster = TestCluster::start_partitionable(3, ReadsConfig { mode, ..ReadsConfig::default() });
        let ids = cluster.ids();
        let old = cluster.wait_leader(&ids, Duration::from_secs(10));
        assert_eq!(cluster.info(old).expect("info")["read_mode"], mode.to_string());
        cluster.set(old, "x", "old").expect("SET");
        assert_eq!(cluster.get(old, "x").expect("GET").as_deref(), Some("old"));
        let mut conn = cluster.conn(old).expect("conn");
        conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");

        cluster.links().isolate(old, &ids);
        let start = Instant::now();
        // Reads on the old leader's connection, all through the partition and the new write.
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    let invoked = start.elapsed();
                    let r: redis::RedisResult<Option<String>> = redis::cmd("GET").arg("x").query(&mut conn);
                    seen.push((invoked, r.map_err(|e| format!("{} {e}", e.code().unwrap_or("?")))));
                }
                (conn, seen)
            })
        };
        let others: Vec<u64> = ids.iter().copied().filter(|&id| id != old).collect();
        let new = cluster.wait_leader(&others, Duration::from_secs(10));
        cluster.set(new, "x", "new").expect("SET on the majority");
        let acked = start.elapsed();
        std::thread::sleep(Duration::from_secs(3));
        done.store(true, Ordering::SeqCst);
        let (mut conn, seen) = reader.join().expect("reader");
        let after: Vec<_> = seen.iter().filter(|(invoked, _)| *invoked > acked).collect();
        assert!(!after.is_empty(), "{mode}: no read was sent after the write: {seen:?}");
        for (invoked, result) in &seen {
            match result {
                Ok(Some(v)) if v == "old" => {
                    assert!(*invoked < acked, "{mode}: stale read sent {invoked:?} after the write at {acked:?}")
                }
                Ok(Some(v)) => assert_eq!(v, "new", "{mode}"),
                Ok(None) => panic!("{mode}: x vanished"),
                Err(e) => assert!(e.contains("TRYAGAIN"), "{mode}: a read fails only with TRYAGAIN: {e}"),
            }
        }

        cluster.links().heal();
        cluster.wait_leader(&ids, Duration::from_secs(10));
        let value: Option<String> = redis::cmd("GET").arg("x").query(&mut conn).expect("GET after the heal");
        assert_eq!(value.as_deref(), Some("new"), "{mode}");
    }
}

/// (reads) Read-only commands on every node, followers included, write nothing: no log entry, not a
/// byte of WAL, while every read sees the writes acknowledged before it.
#[test]
fn reads_on_every_node_never_write_the_log() {
    let cluster = TestCluster::start(3);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, Duration::from_secs(10));
    let writes: Vec<(String, String)> = (0..50).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
    assert_eq!(write_all(&cluster, leader, writes.clone(), 2).len(), writes.len());
    cluster.wait_converged(&ids, Duration::from_secs(10));
    let before: Vec<(u64, u64)> = ids
        .iter()
        .map(|&id| {
            (info_u64(&cluster.info(id).expect("info"), "last_log_index"), dir_bytes(&cluster.data_dir(id).join("wal")))
        })
        .collect();
    let readers: Vec<_> = ids
        .iter()
        .map(|&id| {
            let mut conn = cluster.conn(id).expect("conn");
            let writes = writes.clone();
            std::thread::spawn(move || {
                for round in 0..100 {
                    let (key, value) = &writes[round % writes.len()];
                    let got: Option<String> = redis::cmd("GET").arg(key).query(&mut conn).expect("GET");
                    assert_eq!(got.as_ref(), Some(value), "node {id}");
                    let keys: Vec<&str> = writes.iter().take(5).map(|(k, _)| k.as_str()).collect();
                    let got: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(&mut conn).expect("MGET");
                    assert!(got.iter().all(Option::is_some), "node {id}: {got:?}");
                    let n: i64 = redis::cmd("EXISTS").arg(key).arg("missing").query(&mut conn).expect("EXISTS");
                    assert_eq!(n, 1);
                    let len: i64 = redis::cmd("STRLEN").arg(key).query(&mut conn).expect("STRLEN");
                    assert_eq!(len as usize, value.len());
                    let size: i64 = redis::cmd("DBSIZE").query(&mut conn).expect("DBSIZE");
                    assert_eq!(size, 50);
                }
            })
        })
        .collect();
    for r in readers {
        r.join().expect("reader");
    }
    for (&id, &(last, wal)) in ids.iter().zip(&before) {
        let info = cluster.info(id).expect("info");
        assert_eq!(info["read_mode"], "index");
        assert_eq!(info_u64(&info, "last_log_index"), last, "node {id} appended to its log for reads");
        assert_eq!(dir_bytes(&cluster.data_dir(id).join("wal")), wal, "node {id}'s WAL grew under reads");
    }
    // A write after all those reads still works and is seen everywhere.
    cluster.set(leader, "after", "reads").expect("SET");
    for &id in &ids {
        assert_eq!(cluster.get(id, "after").expect("GET").as_deref(), Some("reads"), "node {id}");
    }
}

/// Byte offsets where each record of a WAL segment starts, and its end.
fn record_boundaries(segment: &[u8]) -> Vec<usize> {
    let mut at = 16;
    let mut out = vec![at];
    while at + 8 <= segment.len() {
        let len = u32::from_le_bytes(segment[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += 8 + len;
        if at > segment.len() {
            break;
        }
        out.push(at);
    }
    out
}

/// (issue 18, items 2 and 3) A follower's disk loses entries it had synced and acknowledged: first its
/// segment is cut at a record boundary, then to its bare header. Before, recovery called both
/// `health ok` (the second forgetting term and vote), and the follower then rejected every append
/// forever: the leader never went below the match index it had recorded. Now the WAL's state file
/// shows the loss, the node says so, keeps its vote, and the leader repairs it.
#[test]
fn a_follower_whose_disk_lost_acknowledged_entries_is_repaired() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("follower");
    for i in 0..20 {
        cluster.set(leader, &format!("k{i}"), "v").expect("SET");
    }
    cluster.wait_converged(&cluster.ids(), Duration::from_secs(10));
    let term_before = info_u64(&cluster.info(follower).expect("INFO"), "term");
    let wal_dir = cluster.data_dir(follower).join("wal");
    for (round, cut) in ["record boundary", "header"].into_iter().enumerate() {
        // Let the synced mark catch up with the log (it may lag by up to 100 ms).
        std::thread::sleep(Duration::from_millis(300));
        cluster.set(leader, &format!("mark{round}"), "v").expect("SET");
        std::thread::sleep(Duration::from_millis(300));
        cluster.kill(follower);
        let last = segments(&wal_dir).pop().expect("a segment");
        let bytes = std::fs::read(&last).expect("read segment");
        let keep = match cut {
            "header" => 16,
            _ => {
                let b = record_boundaries(&bytes);
                b[b.len() / 2]
            }
        };
        std::fs::OpenOptions::new().write(true).open(&last).expect("open").set_len(keep as u64).expect("cut");
        let inspect = Command::new(RAFTKV).arg("inspect").arg("--data-dir").arg(cluster.data_dir(follower)).output();
        let report: serde_json::Value =
            serde_json::from_slice(&inspect.expect("run inspect").stdout).expect("inspect prints JSON");
        assert_eq!(report["health"], "lost_synced", "cut at the {cut}: {report}");
        cluster.spawn(follower);
        for i in 0..5 {
            cluster.set(leader, &format!("after{round}-{i}"), "v").expect("writes go on");
        }
        let (applied, _) = cluster.wait_converged(&cluster.ids(), Duration::from_secs(15));
        assert!(applied >= 26, "applied {applied}");
        let info = cluster.info(follower).expect("INFO");
        assert_eq!(info_u64(&info, "repairing_lost_log_through"), 0, "repaired after the cut at the {cut}");
        assert!(info_u64(&info, "term") >= term_before, "term forgotten after the cut at the {cut}");
        assert!(cluster.stderr(follower).contains("lost synced"), "{}", cluster.stderr(follower));
        assert_eq!(cluster.get(follower, "k3").expect("GET").as_deref(), Some("v"));
    }
    assert_eq!(cluster.wait_leader(&cluster.ids(), Duration::from_secs(5)), leader, "the leader stayed");
    assert!(info_u64(&cluster.info(leader).expect("INFO"), "follower_regressions") >= 1);
}

/// The `(session, seq)` an `-UNCERTAIN` reply names for an exactly-once retry.
fn uncertain_session(err: &redis::RedisError) -> (String, String) {
    let text = err.to_string();
    let mut words = text.split_whitespace().skip_while(|w| *w != "RAFTKV.SESSION").skip(1);
    match (words.next(), words.next()) {
        (Some(id), Some(seq)) => (id.to_owned(), seq.to_owned()),
        _ => panic!("an -UNCERTAIN write must name its session: {text}"),
    }
}

/// Issue 18: a write answered `-TRYAGAIN` was never applied, and a write answered `-UNCERTAIN`, resent
/// on a new connection after `RAFTKV.SESSION <id> <seq>`, is applied exactly once in all.
#[test]
fn tryagain_writes_never_apply_and_uncertain_ones_resume_exactly_once() {
    let cluster = TestCluster::start_partitionable(3, ReadsConfig::default());
    let ids = cluster.ids();
    let old = cluster.wait_leader(&ids, Duration::from_secs(10));

    // Resuming a session whose last write was applied answers its reply again and applies nothing.
    let mut first = cluster.conn(old).expect("conn");
    let n: i64 = redis::cmd("INCR").arg("once").query(&mut first).expect("INCR");
    assert_eq!(n, 1);
    let session: Vec<String> = redis::cmd("RAFTKV.SESSION").query(&mut first).expect("RAFTKV.SESSION");
    let last_seq = (session[1].parse::<u64>().expect("seq") - 1).to_string();
    let other = ids.iter().copied().find(|&id| id != old).expect("a follower");
    let mut resumed = cluster.conn(other).expect("conn");
    let () = redis::cmd("RAFTKV.SESSION").arg(&session[0]).arg(&last_seq).query(&mut resumed).expect("resume");
    let again: i64 = redis::cmd("INCR").arg("once").query(&mut resumed).expect("resent INCR");
    assert_eq!(again, 1, "the resent INCR is answered from the session, not applied again");
    let next: i64 = redis::cmd("INCR").arg("once").query(&mut resumed).expect("next INCR");
    assert_eq!(next, 2, "the session goes on");

    // Writes to a leader cut off from the others, one connection (one session) each.
    cluster.links().isolate(old, &ids);
    let started = Instant::now();
    let (mut tryagain, mut uncertain) = (0, Vec::new());
    while started.elapsed() < Duration::from_secs(6) {
        let mut conn = cluster.conn(old).expect("conn");
        match redis::cmd("INCR").arg("n").query::<i64>(&mut conn) {
            Ok(n) => panic!("an isolated leader committed INCR n = {n}"),
            Err(e) if e.code() == Some("TRYAGAIN") => tryagain += 1,
            Err(e) if e.code() == Some("UNCERTAIN") => uncertain.push(uncertain_session(&e)),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert!(tryagain > 0, "a node that knows it does not lead answers TRYAGAIN ({} uncertain)", uncertain.len());

    cluster.links().heal();
    cluster.wait_leader(&ids, Duration::from_secs(10));
    // Resolve every uncertain write by resending it in its own session, on a fresh connection.
    for (id, seq) in &uncertain {
        let mut conn = cluster.conn(other).expect("conn");
        let () = redis::cmd("RAFTKV.SESSION").arg(id).arg(seq).query(&mut conn).expect("resume");
        let _: i64 = redis::cmd("INCR").arg("n").query(&mut conn).expect("resent INCR after healing");
    }
    let n: Option<i64> = redis::cmd("GET").arg("n").query(&mut cluster.conn(other).expect("conn")).expect("GET");
    assert_eq!(
        n.unwrap_or(0),
        uncertain.len() as i64,
        "each uncertain write applied exactly once, none of the {tryagain} answered TRYAGAIN"
    );
    cluster.wait_converged(&ids, Duration::from_secs(10));
}

/// A write the leader's event loop proposed is answered by the retry bound even while that node
/// still believes it leads (cut off, it steps down only an election timeout later): `-UNCERTAIN`
/// (it was appended, it may apply), naming its session, and not after the step-down.
#[test]
fn a_write_on_a_cut_off_leader_is_answered_by_the_retry_bound() {
    // The bound far below the election timeout (500 ms; CheckQuorum steps down after one to two).
    let cluster = TestCluster::start_partitionable_with(3, ReadsConfig::default(), &["--retry-ms", "150"]);
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, Duration::from_secs(10));
    let mut conn = cluster.conn(leader).expect("conn");
    let () = redis::cmd("SET").arg("k").arg("before").query(&mut conn).expect("SET before the cut");
    cluster.links().isolate(leader, &ids);
    let started = Instant::now();
    let error = redis::cmd("SET").arg("k").arg("cut-off").query::<()>(&mut conn).expect_err("no quorum");
    let elapsed = started.elapsed();
    assert_eq!(error.code(), Some("UNCERTAIN"), "{error}");
    uncertain_session(&error);
    assert!(elapsed < Duration::from_millis(450), "answered after {elapsed:?}, not by the 150 ms bound");
    // A read there cannot be confirmed either: `-TRYAGAIN` (a read never takes effect), by the bound.
    let started = Instant::now();
    let error = redis::cmd("GET").arg("k").query::<Option<String>>(&mut conn).expect_err("no quorum to confirm");
    let elapsed = started.elapsed();
    assert_eq!(error.code(), Some("TRYAGAIN"), "{error}");
    assert!(elapsed < Duration::from_millis(450), "read answered after {elapsed:?}, not by the 150 ms bound");
    cluster.links().heal();
    cluster.wait_leader(&ids, Duration::from_secs(10));
    cluster.wait_converged(&ids, Duration::from_secs(10));
}

/// MULTI/EXEC/WATCH as redis-rs drives them (`pipe().atomic()`), through a follower and on the
/// leader: a transaction applies all its writes in one entry or none; a queuing error discards it
/// (`EXECABORT`) with nothing applied; an op failing at run time fails alone; a changed watched key
/// aborts it. Then an expiry-heavy load leaves every replica with the same state at the same index.
#[test]
fn transactions_and_expiry_as_redis_clients_use_them() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("follower");
    for via in [follower, leader] {
        let mut conn = cluster.conn(via).expect("connect");
        let k = |s: &str| format!("{s}-{via}");
        // All or nothing, replies in order.
        let (set, n, got): (String, i64, String) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(k("a"))
            .arg("1")
            .cmd("INCRBY")
            .arg(k("n"))
            .arg(5)
            .cmd("GET")
            .arg(k("a"))
            .query(&mut conn)
            .expect("atomic pipeline");
        assert_eq!((set.as_str(), n, got.as_str()), ("OK", 5, "1"));
        // A queuing error: EXECABORT, and the valid command queued before it did not run.
        let queued: String = redis::cmd("MULTI").query(&mut conn).expect("MULTI");
        assert_eq!(queued, "OK");
        let q: String = redis::cmd("SET").arg(k("b")).arg("x").query(&mut conn).expect("queued");
        assert_eq!(q, "QUEUED");
        let e = redis::cmd("SET").arg(k("b")).query::<()>(&mut conn).expect_err("arity error");
        assert!(e.to_string().contains("wrong number of arguments"), "{e}");
        let e = redis::cmd("EXEC").query::<redis::Value>(&mut conn).expect_err("EXECABORT");
        assert_eq!(e.code(), Some("EXECABORT"), "{e}");
        let b: Option<String> = redis::cmd("GET").arg(k("b")).query(&mut conn).expect("GET");
        assert_eq!(b, None, "nothing of a discarded transaction applies");
        // A run-time error fails alone; the others apply (redis-rs reports the element's error).
        let e = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(k("s"))
            .arg("text")
            .cmd("INCR")
            .arg(k("s"))
            .cmd("SET")
            .arg(k("t"))
            .arg("y")
            .query::<redis::Value>(&mut conn)
            .expect_err("INCR on text fails inside EXEC");
        assert!(e.to_string().contains("not an integer"), "{e}");
        let s_value: Option<String> = redis::cmd("GET").arg(k("s")).query(&mut conn).expect("GET");
        assert_eq!(s_value.as_deref(), Some("text"));
        let t: Option<String> = redis::cmd("GET").arg(k("t")).query(&mut conn).expect("GET");
        assert_eq!(t.as_deref(), Some("y"));
        // WATCH: another client changes the key between WATCH and EXEC, so EXEC returns nil and
        // nothing runs; unchanged, it runs.
        let _: () = redis::cmd("WATCH").arg(k("w")).query(&mut conn).expect("WATCH");
        cluster.set(leader, &k("w"), "theirs").expect("concurrent SET");
        let aborted: Option<(String,)> =
            redis::pipe().atomic().cmd("SET").arg(k("w")).arg("mine").query(&mut conn).expect("EXEC");
        assert_eq!(aborted, None);
        assert_eq!(cluster.get(via, &k("w")).expect("GET").as_deref(), Some("theirs"));
        let _: () = redis::cmd("WATCH").arg(k("w")).query(&mut conn).expect("WATCH");
        let ran: Option<(String,)> =
            redis::pipe().atomic().cmd("SET").arg(k("w")).arg("mine").query(&mut conn).expect("EXEC");
        assert_eq!(ran, Some(("OK".to_owned(),)));
        let e = redis::cmd("EXEC").query::<redis::Value>(&mut conn).expect_err("EXEC without MULTI");
        assert!(e.to_string().contains("EXEC without MULTI"), "{e}");
    }
    // Expiry-heavy load from several connections: TTLs of 1 to 60 ms, EXPIRE and PERSIST, hashes.
    std::thread::scope(|s| {
        for via in cluster.ids() {
            let cluster = &cluster;
            s.spawn(move || {
                let mut conn = cluster.conn(via).expect("connect");
                for i in 0..150 {
                    let key = format!("e{}", i % 40);
                    let mut pipe = redis::pipe();
                    pipe.cmd("SET").arg(&key).arg(i).arg("PX").arg(1 + i % 60).ignore();
                    pipe.cmd("HSET").arg(format!("h{}", i % 7)).arg(i % 5).arg(i).ignore();
                    pipe.cmd("PEXPIRE").arg(format!("h{}", i % 7)).arg(5 + i % 30).ignore();
                    if i % 3 == 0 {
                        pipe.cmd("PERSIST").arg(format!("h{}", (i + 1) % 7)).ignore();
                    }
                    let _: () = pipe.query(&mut conn).expect("expiry load");
                }
            });
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    // One more write moves every replica's logged clock past every deadline.
    cluster.set(leader, "last", "1").expect("SET");
    let (applied, digest) = cluster.wait_converged(&cluster.ids(), Duration::from_secs(10));
    assert!(applied >= 450, "applied {applied}: each pipeline of the load is one entry");
    let mut conn = cluster.conn(leader).expect("connect");
    let ttl: i64 = redis::cmd("TTL").arg("e1").query(&mut conn).expect("TTL");
    assert_eq!(ttl, -2, "every short TTL has passed (digest {digest})");
}

/// The everyday calls of redis-py at its default settings (redis-py 8: RESP3), in groups, against a
/// follower (so every write is forwarded) with WATCH conflicts made through the leader: the script
/// `tests/redis_py/everyday.py`. Skipped, saying so, where python3 or redis-py is missing, except in
/// CI (`.ci/run` installs it), where that fails.
#[test]
fn redis_py_everyday_calls_at_default_settings() {
    let have = Command::new("python3").args(["-c", "import redis"]).output().is_ok_and(|o| o.status.success());
    if !have {
        assert!(std::env::var_os("CI").is_none(), "CI must have python3 with redis-py (.ci/run installs it)");
        eprintln!("skipped: python3 with redis-py is not installed (pip install redis==8.1.0)");
        return;
    }
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("follower");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/redis_py/everyday.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(cluster.port(follower).to_string())
        .arg(cluster.port(leader).to_string())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "redis-py script failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("redis-py all groups ok"), "{stdout}");
    // Scripts, transactions and expiry left every replica with the same state.
    cluster.wait_converged(&cluster.ids(), Duration::from_secs(10));
}

/// Reads exactly `len` bytes of replies (failing if the server closes first), as text.
fn read_exactly(raw: &mut TcpStream, len: usize) -> String {
    let mut reply = vec![0u8; len];
    raw.read_exact(&mut reply).expect("the whole reply before a close or the timeout");
    String::from_utf8_lossy(&reply).into_owned()
}

/// Pipelining: the commands a client sent at once are proposed together, as one log entry (one
/// fsync round), and answered in order, with whatever else the pipeline holds (a local reply, an
/// error, a transaction) in its place; reads alone take no log entry at all.
#[test]
fn a_pipeline_is_one_log_entry_answered_in_order() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    cluster.set(leader, "warm", "1").expect("SET");
    let last = |c: &TestCluster| info_u64(&c.info(leader).expect("INFO"), "last_log_index");
    let before = last(&cluster);
    let mut raw = TcpStream::connect(("127.0.0.1", cluster.port(leader))).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut pipeline = String::new();
    for i in 0..100 {
        pipeline.push_str(&format!("*3\r\n$3\r\nSET\r\n$4\r\nk{i:03}\r\n$3\r\nv{i:02}\r\n"));
    }
    pipeline.push_str("*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n");
    raw.write_all(pipeline.as_bytes()).expect("write");
    let want = "+OK\r\n".repeat(100) + ":1\r\n";
    assert_eq!(read_exactly(&mut raw, want.len()), want);
    // One entry when the 3 KiB arrive in one read, as they do on loopback; two if a read splits them.
    let entries = last(&cluster) - before;
    assert!((1..=2).contains(&entries), "101 pipelined writes took {entries} log entries");
    // A mixed pipeline, answered in order: reads, a local reply, an unknown command, a write, a
    // transaction (MULTI ... EXEC), then reads again.
    let before = last(&cluster);
    raw.write_all(
        b"GET k000\r\nPING\r\nNOSUCH x\r\nINCR n\r\nMULTI\r\nINCR n\r\nGET k099\r\nEXEC\r\nGET n\r\nMGET k001 nope\r\n",
    )
    .expect("write");
    let want = "$3\r\nv00\r\n+PONG\r\n-ERR unknown command 'NOSUCH', with args beginning with: 'x' \r\n:2\r\n\
                +OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:3\r\n$3\r\nv99\r\n$1\r\n3\r\n*2\r\n$3\r\nv01\r\n$-1\r\n";
    assert_eq!(read_exactly(&mut raw, want.len()), want);
    // The INCR alone, then the transaction: two entries; the reads took none.
    assert_eq!(last(&cluster), before + 2);
    let before = last(&cluster);
    raw.write_all(b"GET k000\r\nGET k001\r\nEXISTS k002 k003\r\nSTRLEN k004\r\n").expect("write");
    let want = "$3\r\nv00\r\n$3\r\nv01\r\n:2\r\n:3\r\n";
    assert_eq!(read_exactly(&mut raw, want.len()), want);
    assert_eq!(last(&cluster), before, "pipelined reads write nothing");
    // A pipeline of reads longer than one batch (512 commands): every reply, in order, although
    // the bytes of the later ones were read before the first batch was answered.
    let mut long = String::new();
    let mut want = String::new();
    for i in 0..1500 {
        long.push_str(&format!("GET k{:03}\r\n", i % 100));
        want.push_str(&format!("$3\r\nv{:02}\r\n", i % 100));
    }
    raw.write_all(long.as_bytes()).expect("write");
    assert_eq!(read_exactly(&mut raw, want.len()), want);
    assert_eq!(last(&cluster), before, "pipelined reads write nothing");
    // In another database: writes through the log, reads (alone, pipelined, WATCH's versions)
    // without it, each database seeing only its own keys.
    raw.write_all(b"SELECT 1\r\nSET k000 other\r\n").expect("write");
    assert_eq!(read_exactly(&mut raw, 10), "+OK\r\n+OK\r\n");
    let before = last(&cluster);
    raw.write_all(b"GET k000\r\n").expect("write");
    assert_eq!(read_exactly(&mut raw, 11), "$5\r\nother\r\n");
    raw.write_all(b"GET k000\r\nGET k001\r\nDBSIZE\r\nWATCH k000\r\nUNWATCH\r\nSELECT 0\r\nGET k000\r\n")
        .expect("write");
    let want = "$5\r\nother\r\n$-1\r\n:1\r\n+OK\r\n+OK\r\n+OK\r\n$3\r\nv00\r\n";
    assert_eq!(read_exactly(&mut raw, want.len()), want);
    assert_eq!(last(&cluster), before, "reads in database 1 write nothing");
}

/// The cluster secret guards the peer port: nodes sharing one elect a leader and replicate; a
/// node with another secret, or none, gets no entries from them (and cannot disturb them), and
/// restarted with the right one it catches up.
#[test]
fn the_cluster_secret_keeps_out_a_node_without_it() {
    let mut cluster = TestCluster::start_with_secrets(&[Some("s3cret"), Some("s3cret"), Some("guess")]);
    let leader = cluster.wait_leader(&[1, 2], Duration::from_secs(10));
    cluster.set(leader, "k", "v").expect("SET with two of three nodes");
    for secret in [Some("guess".to_owned()), None] {
        if secret.is_none() {
            cluster.kill(3);
            cluster.secrets[2] = None;
            cluster.spawn(3);
        }
        std::thread::sleep(Duration::from_secs(1));
        let info = cluster.info(3).expect("INFO on node 3");
        assert_eq!(info_u64(&info, "commit_index"), 0, "{secret:?}: node 3 learned commits: {info:?}");
        assert_eq!(cluster.wait_leader(&[1, 2], Duration::from_secs(5)), leader, "{secret:?}: leadership moved");
    }
    let text = cluster.stderr(leader);
    assert!(text.contains("cluster secret"), "the leader logs why it refuses node 3");
    cluster.kill(3);
    cluster.secrets[2] = Some("s3cret".into());
    cluster.spawn(3);
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.get(3, "k").ok().flatten().as_deref() != Some("v") {
        assert!(Instant::now() < deadline, "node 3 did not catch up with the right secret");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pipelines mixing reads (answered from the event loop), writes and transactions (run by
/// workers), sent in random chunks by many connections at once to the leader and a follower, are
/// answered in order and read their own writes: every connection counts its own key up and reads
/// it back, so a reply out of place, lost or from a stale read shows as a wrong number.
#[test]
fn mixed_pipelines_in_random_chunks_are_answered_in_order() {
    use rand::{Rng, SeedableRng};
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    let ports = [cluster.port(leader), cluster.port(follower)];
    std::thread::scope(|scope| {
        for t in 0..12u64 {
            let port = ports[(t % 3 == 0) as usize];
            scope.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                let mut raw = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                raw.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
                let key = format!("count{t}");
                let mut count = 0u64;
                let value =
                    |n: u64| if n == 0 { "$-1\r\n".to_owned() } else { format!("${}\r\n{n}\r\n", n.to_string().len()) };
                for round in 0..25 {
                    let (mut request, mut want) = (String::new(), String::new());
                    for _ in 0..rng.gen_range(1..40) {
                        match rng.gen_range(0..5) {
                            0 | 1 => {
                                request.push_str(&format!("GET {key}\r\n"));
                                want.push_str(&value(count));
                            }
                            2 => {
                                count += 1;
                                request.push_str(&format!("INCR {key}\r\n"));
                                want.push_str(&format!(":{count}\r\n"));
                            }
                            3 => {
                                request.push_str("PING\r\n");
                                want.push_str("+PONG\r\n");
                            }
                            _ => {
                                count += 1;
                                request.push_str(&format!("MULTI\r\nINCR {key}\r\nGET {key}\r\nEXEC\r\n"));
                                want.push_str(&format!(
                                    "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:{count}\r\n{}",
                                    value(count)
                                ));
                            }
                        }
                    }
                    let bytes = request.as_bytes();
                    let mut at = 0;
                    while at < bytes.len() {
                        let n = rng.gen_range(1..=bytes.len() - at);
                        raw.write_all(&bytes[at..at + n]).expect("write");
                        at += n;
                        if rng.gen_bool(0.3) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    assert_eq!(read_exactly(&mut raw, want.len()), want, "connection {t}, round {round}");
                }
            });
        }
    });
}

/// The event loop hands a connection to a worker whenever bytes arrive: a request trickling in a
/// byte at a time is answered once complete, a client that sends its commands and half-closes
/// still gets every reply, and a connection killed while idle is closed at once.
#[test]
fn trickled_and_half_closed_requests_are_answered() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let mut raw = TcpStream::connect(("127.0.0.1", cluster.port(leader))).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    raw.set_nodelay(true).expect("nodelay");
    for byte in b"*3\r\n$3\r\nSET\r\n$1\r\nt\r\n$5\r\nbytes\r\n" {
        raw.write_all(&[*byte]).expect("write a byte");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(read_exactly(&mut raw, 5), "+OK\r\n");
    raw.write_all(b"GET t\r\nINCR n\r\nPING\r\n").expect("write");
    raw.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut rest = String::new();
    raw.read_to_string(&mut rest).expect("replies, then the server closes");
    assert_eq!(rest, "$5\r\nbytes\r\n:1\r\n+PONG\r\n");
    assert_eq!(cluster.get(leader, "n").expect("GET"), Some("1".into()));
}

/// Connections are cheap and forwarding is shared: 400 client connections on a follower cost far
/// fewer than 400 threads while idle; all writing at once, they reach the leader over at most four
/// forwarding connections (none of them taking a slot of the leader's client limit), and every
/// write applies once.
#[test]
fn many_follower_clients_share_a_few_forwarding_connections() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    let mut conns: Vec<redis::Connection> = (0..400).map(|_| cluster.conn(follower).expect("connect")).collect();
    let idle_threads = cluster.threads(follower);
    assert!(idle_threads < 60, "{idle_threads} threads for 400 idle connections");
    std::thread::scope(|scope| {
        for (t, chunk) in conns.chunks_mut(50).enumerate() {
            scope.spawn(move || {
                for round in 0..3 {
                    for (i, conn) in chunk.iter_mut().enumerate() {
                        let _: () =
                            redis::cmd("SET").arg(format!("k{t}-{i}-{round}")).arg(round).query(conn).expect("SET");
                    }
                }
            });
        }
    });
    let info = cluster.info(leader).expect("INFO");
    let links = info_u64(&info, "forwarding_connections");
    assert!((1..=4).contains(&links), "{links} forwarding connections for 400 follower clients");
    assert!(info_u64(&info, "connected_clients") <= 1, "only our INFO connection is a client of the leader");
    let mut conn = cluster.conn(leader).expect("connect");
    let keys: Vec<String> =
        (0..8).flat_map(|t| (0..50).flat_map(move |i| (0..3).map(move |r| format!("k{t}-{i}-{r}")))).collect();
    let values: Vec<Option<u64>> = redis::cmd("MGET").arg(&keys).query(&mut conn).expect("MGET");
    for (key, value) in keys.iter().zip(values) {
        assert_eq!(value, key.rsplit('-').next().and_then(|r| r.parse().ok()), "{key}");
    }
    drop(conns);
}

/// `requirepass`: every node refuses commands before AUTH (`-NOAUTH`), refuses a wrong password
/// (`-WRONGPASS`), and once authenticated serves as usual, followers forwarding to the leader with
/// the shared password.
#[test]
fn requirepass_guards_every_node_and_followers_still_forward() {
    let cluster = TestCluster::start_with_password(3, "s3cret");
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    for id in cluster.ids() {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", cluster.port(id))).expect("client");
        let mut anon = client.get_connection_with_timeout(Duration::from_secs(2)).expect("connect without AUTH");
        let e = redis::cmd("GET").arg("k").query::<Option<String>>(&mut anon).expect_err("NOAUTH");
        assert_eq!(e.code(), Some("NOAUTH"), "{e}");
        let e = redis::cmd("AUTH").arg("wrong").query::<()>(&mut anon).expect_err("WRONGPASS");
        assert_eq!(e.code(), Some("WRONGPASS"), "{e}");
        let _: () = redis::cmd("AUTH").arg("default").arg("s3cret").query(&mut anon).expect("AUTH user pass");
        let _: () = redis::cmd("SET").arg(format!("k{id}")).arg(id).query(&mut anon).expect("SET after AUTH");
    }
    // The writes made through followers reached the leader (forwarded with the password).
    let mut conn = cluster.conn(leader).expect("connect with AUTH");
    for id in cluster.ids() {
        let v: Option<u64> = redis::cmd("GET").arg(format!("k{id}")).query(&mut conn).expect("GET");
        assert_eq!(v, Some(id));
    }
    // HELLO with AUTH authenticates and switches protocol at once.
    let mut raw = TcpStream::connect(("127.0.0.1", cluster.port(leader))).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    raw.write_all(b"HELLO 3\r\nHELLO 3 AUTH default s3cret\r\nGET k1\r\nQUIT\r\n").expect("write");
    let mut text = Vec::new();
    raw.read_to_end(&mut text).expect("read");
    let text = String::from_utf8_lossy(&text);
    assert!(text.starts_with("-NOAUTH HELLO must be called"), "{text}");
    assert!(text.contains("%7\r\n") && text.ends_with("$1\r\n1\r\n+OK\r\n"), "{text}");
}

/// What tools rely on: `COMMAND` tells the truth about every command, redis-cli's help works,
/// `INFO` has the sections (and the `role` Redis clients expect), `CLIENT LIST/INFO/KILL` work,
/// and `redis-cli --scan`/`--bigkeys` walk the key space.
#[test]
fn tools_see_a_redis_command_table_info_and_client_list() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10));
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("follower");
    let mut conn = cluster.conn(leader).expect("connect");
    let count: i64 = redis::cmd("COMMAND").arg("COUNT").query(&mut conn).expect("COMMAND COUNT");
    let all: Vec<redis::Value> = redis::cmd("COMMAND").query(&mut conn).expect("COMMAND");
    assert_eq!(all.len() as i64, count);
    assert!(count > 60, "{count}");
    let info: Vec<redis::Value> =
        redis::cmd("COMMAND").arg("INFO").arg("set").arg("nosuch").query(&mut conn).expect("INFO");
    let redis::Value::Array(set) = &info[0] else { panic!("{info:?}") };
    assert_eq!(set[0], redis::Value::BulkString(b"set".to_vec()));
    assert_eq!(set[1], redis::Value::Int(-3));
    assert_eq!(info[1], redis::Value::Nil);
    for (id, role) in [(leader, "master"), (follower, "slave")] {
        let info = cluster.info(id).expect("INFO");
        assert_eq!(info["role"], role);
        for field in ["raft_role", "used_memory", "used_cpu_user", "connected_clients", "total_commands_processed"] {
            assert!(info.contains_key(field), "INFO lacks {field}");
        }
    }
    for i in 0..30 {
        cluster.set(leader, &format!("tool:{i}"), &"x".repeat(i)).expect("SET");
    }
    let _: () = redis::cmd("HSET").arg("tool:h").arg("f").arg("v").query(&mut conn).expect("HSET");
    let info = cluster.info(leader).expect("INFO");
    assert!(info["db0"].starts_with("keys=31,"), "{}", info["db0"]);
    // CLIENT: a named connection appears in the list with its name, CLIENT INFO shows our own line,
    // and CLIENT KILL closes the other.
    let mut victim = cluster.conn(leader).expect("connect");
    let _: () = redis::cmd("CLIENT").arg("SETNAME").arg("victim").query(&mut victim).expect("SETNAME");
    let victim_id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut victim).expect("ID");
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).expect("CLIENT LIST");
    let line = list.lines().find(|l| l.contains("name=victim")).unwrap_or_else(|| panic!("{list}"));
    assert!(line.starts_with(&format!("id={victim_id} ")), "{line}");
    assert!(line.contains(" cmd=client"), "{line}");
    let _: String = redis::cmd("ECHO").arg("x").query(&mut conn).expect("ECHO");
    let me: String = redis::cmd("CLIENT").arg("INFO").query(&mut conn).expect("CLIENT INFO");
    assert!(me.contains(" cmd=client "), "CLIENT INFO names itself, not the ECHO before it: {me}");
    let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(victim_id).query(&mut conn).expect("KILL");
    assert_eq!(killed, 1);
    assert!(redis::cmd("PING").query::<String>(&mut victim).is_err(), "the killed connection is closed");
    // redis-cli, where installed: help from its own table, --scan and --bigkeys over SCAN.
    let cli =
        |args: &[&str]| Command::new("redis-cli").arg("-p").arg(cluster.port(follower).to_string()).args(args).output();
    match cli(&["help", "set"]) {
        Err(_) => eprintln!("redis-cli checks skipped: redis-cli is not installed"),
        Ok(out) => {
            let help = String::from_utf8_lossy(&out.stdout);
            assert!(help.contains("SET") && help.contains("key value [NX|XX]"), "redis-cli help: {help}");
            let scan = cli(&["--scan", "--pattern", "tool:*"]).expect("redis-cli --scan");
            let mut keys: Vec<String> = String::from_utf8_lossy(&scan.stdout).lines().map(str::to_owned).collect();
            keys.sort();
            assert_eq!(keys.len(), 31, "{keys:?}");
            let big = cli(&["--bigkeys"]).expect("redis-cli --bigkeys");
            let text = String::from_utf8_lossy(&big.stdout);
            assert!(text.contains("Biggest string found") && text.contains("tool:29"), "{text}");
            assert!(text.contains("hash"), "{text}");
        }
    }
}

/// Issue 18 item 1, with real packet loss: each node in its own network namespace, a partition
/// that drops every packet of the isolated node for 25 s (`scripts/partition_heal.sh`, which says
/// why and skips where it cannot run: not root, no `ip netns`, no nft, no redis-cli). After the
/// heal all three nodes follow one leader, and a write through the node that was cut off is
/// acknowledged, within 8 s; then the issue's scenario (heal the old leader and cut the new one at
/// once) lets the third node write within 8 s. The transport before issue 18 took 25 s for both
/// (TCP backing off on a stalled connection); a healthy run takes about 1 s. The figures per
/// partition length are in docs/benchmarks.md; this is the bound that separates working from not.
#[test]
fn real_partitions_heal_within_seconds_whatever_their_length() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/partition_heal.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("RAFTKV", RAFTKV)
        .env("PARTITIONS", "25")
        .env("CUT_AFTER", "25")
        .env("LABEL", "test")
        .output()
        .expect("run scripts/partition_heal.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "partition_heal.sh failed:\n{stdout}\n{stderr}");
    if let Some(reason) = stdout.lines().find(|l| l.contains("skipped:")) {
        eprintln!("{reason}");
        return;
    }
    let field = |line: &str, key: &str| -> f64 {
        let value =
            line.split_whitespace().find_map(|w| w.strip_prefix(key)).unwrap_or_else(|| panic!("{key} in {line}"));
        value.parse().unwrap_or(f64::INFINITY) // ">90" (gave up) is infinite
    };
    let results: Vec<&str> = stdout.lines().filter(|l| l.starts_with("result test ")).collect();
    assert_eq!(results.len(), 2, "{stdout}");
    for line in results {
        eprintln!("{line}");
        if line.contains(" heal ") {
            assert!(field(line, "all_follow_one_leader_s=") < 8.0, "{line}");
            assert!(field(line, "first_set_via_isolated_s=") < 8.0, "{line}");
        } else {
            assert!(field(line, "first_set_via_third_s=") < 8.0, "{line}");
        }
    }
}

/// (operating) Every node serves its metrics in the Prometheus text format, and they move with the
/// work: a leader elected, 200 writes committed, applied and fsynced in groups, replicated to each
/// peer with the lag visible, commands counted by name; logs are JSON lines with stable event
/// names; `raftkv status` shows the cluster from any node and fails once a member is down.
#[test]
fn metrics_and_status_follow_the_cluster() {
    let mut cluster = TestCluster::start_with_metrics(3);
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10));
    let before = cluster.metrics(leader);
    assert_eq!(before["raft_role{role=\"leader\"}"], 1.0, "{before:?}");
    assert_eq!(before["raft_role{role=\"follower\"}"], 0.0);
    assert!(before["raft_elections_won_total"] >= 1.0);
    for id in [1, 2, 3] {
        let m = cluster.metrics(id);
        assert_eq!(m["raft_leader_id"], leader as f64, "node {id}");
        assert_eq!(m["raft_up"], 1.0);
    }
    for i in 0..200 {
        cluster.set(leader, &format!("m{i}"), "v").expect("SET");
    }
    let _: Option<String> = redis::cmd("GET").arg("m1").query(&mut cluster.conn(leader).expect("conn")).expect("GET");
    let after = cluster.metrics(leader);
    let grew = |name: &str, by: f64| {
        let (b, a) = (before.get(name).copied().unwrap_or(0.0), after[name]);
        assert!(a >= b + by, "{name} went {b} -> {a}, expected +{by}");
    };
    grew("raft_commit_index", 200.0);
    grew("raft_applied_index", 200.0);
    grew("raft_proposals_total{outcome=\"applied\"}", 200.0);
    grew("raft_wal_writes_total", 200.0);
    grew("raft_wal_sync_duration_seconds_count", 1.0);
    grew("raft_wal_group_size_count", 1.0);
    grew("raftkv_commands_total{command=\"set\"}", 200.0);
    grew("raftkv_commands_total{command=\"get\"}", 1.0);
    assert_eq!(after["raftkv_keys{db=\"0\"}"], 200.0);
    assert_eq!(after["raft_wal_group_size_bucket{le=\"+Inf\"}"], after["raft_wal_group_size_count"]);
    for peer in [1, 2, 3].into_iter().filter(|&p| p != leader) {
        grew(&format!("raft_peer_sent_total{{peer=\"{peer}\"}}"), 200.0);
        let matched = after[&format!("raft_peer_match_index{{peer=\"{peer}\"}}")];
        let lag = after[&format!("raft_peer_replication_lag_entries{{peer=\"{peer}\"}}")];
        assert_eq!(matched + lag, after["raft_last_log_index"], "peer {peer}");
    }
    // A follower has no replication to report, and commits what the leader did.
    let follower = [1, 2, 3].into_iter().find(|&p| p != leader).expect("a follower");
    let f = cluster.metrics(follower);
    assert!(!f.keys().any(|k| k.starts_with("raft_peer_match_index")), "a follower reports no match indexes");
    assert!(f["raft_commit_index"] >= 200.0);

    let status = |port: u16| {
        let out = Command::new(RAFTKV).args(["status", &format!("127.0.0.1:{port}")]).output().expect("raftkv status");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, text) = status(cluster.port(follower));
    assert!(ok, "{text}");
    assert_eq!(text.lines().filter(|l| l.trim_end().ends_with(" ok")).count(), 3, "{text}");
    assert!(text.contains(&format!("leader {leader}, term ")) && text.contains("3/3 members healthy"), "{text}");
    // The logs are JSON lines, and the leader's carry the stable election events.
    let log = std::fs::read_to_string(cluster.stderr_path(leader)).expect("leader log");
    for line in log.lines() {
        assert!(line.starts_with('{') && line.ends_with('}'), "not a JSON line: {line}");
    }
    assert!(log.contains(r#""event":"election_won""#) && log.contains(r#""event":"role_changed""#), "{log}");
    let down = [1, 2, 3].into_iter().rev().find(|&p| p != leader).expect("another follower");
    cluster.kill(down);
    let (ok, text) = status(cluster.port(leader));
    assert!(!ok, "status succeeded with node {down} down: {text}");
    assert!(text.contains("unreachable") && text.contains("2/3 members healthy"), "{text}");
}
