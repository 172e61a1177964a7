//! `raftkv`: a Redis-compatible key-value store replicated with Raft.
//!
//! - `raftkv node --id N --config cluster.toml --data-dir DIR [--no-fsync]` runs one member.
//! - `raftkv cluster --nodes 3 [--data-dir DIR] [--port 6379]` runs a whole local cluster as child
//!   processes (the zero-configuration demo); Ctrl-C stops it.
//! - `raftkv inspect --data-dir DIR` prints the WAL's persisted state and health as JSON.
//! - `raftkv admin --addr ADDR members | add-learner | promote | remove | replace | transfer-leader`
//!   changes the membership through any node (it forwards to the leader).
//! - `raftkv node --id N --config cluster.toml --join ADDR --peer-addr P --client-addr C` starts an
//!   empty node that asks the cluster at ADDR to add it as a learner.
//!
//! Logs go to stderr through `tracing`; filter them with `RUST_LOG` (default `info`).

/// mimalloc instead of glibc's malloc: entries are allocated by the client connection threads and freed
/// by the node thread, a pattern under which glibc's per-thread arenas fragment: measured, the leader's
/// RSS grew steadily with the number of writes (59 to 186 MiB over 1,000,000 SETs on 100,000 keys) while
/// heaptrack showed its live heap staying near 80 MiB; with mimalloc it stayed between 112 and 158 MiB
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use raft_driver_std::members::{MemberAddr, Members};
use raft_driver_std::node::{NodeOptions, RaftNode};
use raft_driver_std::raftkv::config::ReadMode;
use raft_driver_std::raftkv::config::{ClusterConfig, NodeAddrs};
use raft_driver_std::raftkv::resp::Reply;
use raft_driver_std::raftkv::server::{Server, ServerOptions, admin};
use raft_driver_std::raftkv::store::KvStore;
use raft_driver_std::{snapshot_file, wal};

#[derive(Parser)]
#[command(name = "raftkv", version, about = "A Redis-compatible key-value store replicated with Raft")]
struct Cli {
    /// Log lines as human-readable text, or one JSON object per line (for log shippers). Either
    /// way they go to stderr, filtered by RUST_LOG (default `info`).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one cluster member: Raft peer port plus Redis client port.
    Node {
        /// This node's id (as listed in the cluster file).
        #[arg(long)]
        id: u64,
        /// The cluster file (TOML; see examples/cluster.toml).
        #[arg(long)]
        config: PathBuf,
        /// Where this node keeps its WAL (created if missing).
        #[arg(long)]
        data_dir: PathBuf,
        /// Never fsync the WAL: writes are acknowledged once they are in the page cache. What this gives
        /// up: a power loss or kernel crash (not a process crash) can lose writes this node acknowledged
        /// and votes it cast; a node restarted after such a loss may have lost entries it acknowledged,
        /// and if several nodes lose them, committed writes can vanish from the cluster. For tests and
        /// benchmarks only (see docs/errors.md and docs/operating.md).
        #[arg(long)]
        no_fsync: bool,
        /// Milliseconds a command is retried without a leader before `-TRYAGAIN` (certainly not applied) or
        /// `-UNCERTAIN` (may have been applied; see docs/errors.md).
        #[arg(long, default_value_t = 2000)]
        retry_ms: u64,
        /// Redis' `requirepass`: clients must AUTH with it (the same on every node: followers use it
        /// to forward to the leader). Also read from the RAFTKV_REQUIREPASS environment variable,
        /// which keeps it out of the process list.
        #[arg(long)]
        requirepass: Option<String>,
        /// A file holding the cluster secret (its bytes, a trailing newline removed): peers must prove
        /// they hold the same one, or their connections to the peer port are refused (see
        /// docs/operating.md). Also read from the RAFTKV_CLUSTER_SECRET environment variable.
        #[arg(long)]
        cluster_secret_file: Option<PathBuf>,
        /// Exit when standard input reaches end of file (used by `raftkv cluster`, so that nodes do not
        /// outlive their parent).
        #[arg(long, hide = true)]
        exit_on_stdin_eof: bool,
        /// Join the running cluster one of whose nodes serves clients at this address: start empty,
        /// outside the configuration, and ask to be added as a learner (promote it with `raftkv admin
        /// promote` once it has caught up).
        #[arg(long)]
        join: Option<SocketAddr>,
        /// This node's peer address (needed when the cluster file does not list it).
        #[arg(long)]
        peer_addr: Option<SocketAddr>,
        /// This node's client address (needed when the cluster file does not list it).
        #[arg(long)]
        client_addr: Option<SocketAddr>,
        /// Serve metrics in the Prometheus text format at http://ADDR/metrics (docs/operating.md
        /// lists them). Off by default.
        #[arg(long)]
        metrics_addr: Option<SocketAddr>,
    },
    /// Change or show the cluster's membership through any node (followers forward to the leader).
    Admin {
        /// Client address of any node.
        #[arg(long, default_value = "127.0.0.1:6379")]
        addr: SocketAddr,
        /// How long to keep retrying while the answer is `-TRYAGAIN` (a learner still catching up,
        /// another change in progress, an election).
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
        #[command(subcommand)]
        command: AdminCmd,
    },
    /// Start a local cluster of child processes on 127.0.0.1 and stop it on Ctrl-C.
    Cluster {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Data directory (default: a fresh temporary directory, removed on exit).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Client port of node 1; node i listens on port+i-1, its peer port is port+1000+i-1.
        #[arg(long, default_value_t = 6379)]
        port: u16,
        /// Pass --no-fsync to every node.
        #[arg(long)]
        no_fsync: bool,
        /// How read-only commands are served: index (ReadIndex, the default), lease, or log (the
        /// cluster file's `[reads] mode`).
        #[arg(long, default_value = "index", value_parser = parse_read_mode)]
        read_mode: ReadMode,
        /// Serve each node's metrics: node i at http://127.0.0.1:PORT+i-1/metrics.
        #[arg(long)]
        metrics_port: Option<u16>,
    },
    /// The cluster at a glance, from any one node: each member's role, term, indexes, lag behind
    /// the highest commit index and health (exit 1 unless every member answers and one leader is
    /// known to all).
    Status {
        /// Client address of any node.
        #[arg(default_value = "127.0.0.1:6379")]
        addr: SocketAddr,
    },
    /// Print the WAL's persisted term, vote, log range and health as JSON (exit 1 if corrupt).
    Inspect {
        /// The node's data directory (or its `wal` subdirectory).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Show the configuration: every member, its role and its addresses.
    Members,
    /// Add a new node as a learner (it receives the log but does not vote).
    AddLearner {
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// Its peer address.
        #[arg(long)]
        peer_addr: SocketAddr,
        /// Its client address.
        #[arg(long)]
        client_addr: SocketAddr,
    },
    /// Make a learner a voter once it has caught up.
    Promote {
        /// The learner's id.
        #[arg(long)]
        id: u64,
    },
    /// Remove a voter (the leader included) or a learner.
    Remove {
        /// The member's id.
        #[arg(long)]
        id: u64,
    },
    /// Replace voter OLD by NEW in one joint change; with addresses, NEW is first added as a learner.
    Replace {
        /// The voter to remove.
        #[arg(long)]
        old: u64,
        /// The node to make a voter.
        #[arg(long)]
        new: u64,
        /// NEW's peer address (to add it as a learner first).
        #[arg(long, requires = "client_addr")]
        peer_addr: Option<SocketAddr>,
        /// NEW's client address.
        #[arg(long, requires = "peer_addr")]
        client_addr: Option<SocketAddr>,
    },
    /// Hand leadership to a voter.
    TransferLeader {
        /// The voter to lead next.
        #[arg(long)]
        id: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter());
    if cli.log_format == "json" {
        logs.json().with_current_span(false).init();
    } else {
        logs.init();
    }
    match cli.command {
        Cmd::Node {
            id,
            config,
            data_dir,
            no_fsync,
            retry_ms,
            requirepass,
            cluster_secret_file,
            exit_on_stdin_eof,
            join,
            peer_addr,
            client_addr,
            metrics_addr,
        } => {
            let cluster_secret = match cluster_secret(cluster_secret_file.as_deref()) {
                Ok(secret) => secret,
                Err(e) => return fail(e),
            };
            let node = NodeArgs {
                cluster_secret,
                id,
                config,
                data_dir,
                fsync: !no_fsync,
                retry: Duration::from_millis(retry_ms),
                requirepass: requirepass.or_else(|| std::env::var("RAFTKV_REQUIREPASS").ok()).filter(|p| !p.is_empty()),
                watch_stdin: exit_on_stdin_eof,
                join,
                peer_addr,
                client_addr,
                metrics_addr,
            };
            run_node(&node)
        }
        Cmd::Admin { addr, wait_secs, command } => run_admin(addr, Duration::from_secs(wait_secs), &command),
        Cmd::Cluster { nodes, data_dir, port, no_fsync, read_mode, metrics_port } => {
            run_cluster(nodes, data_dir, port, no_fsync, read_mode, metrics_port)
        }
        Cmd::Inspect { data_dir } => run_inspect(&data_dir),
        Cmd::Status { addr } => run_status(addr),
    }
}

/// One member as `raftkv status` sees it.
struct MemberView {
    id: u64,
    client: Option<SocketAddr>,
    /// `INFO replication` and `persistence` fields, or why they could not be read.
    info: Result<std::collections::BTreeMap<String, String>, String>,
}

fn run_status(addr: SocketAddr) -> ExitCode {
    let members = match members_of(addr) {
        Ok(m) => m,
        Err(e) => return fail(format!("cannot read the membership from {addr}: {e}")),
    };
    let views: Vec<MemberView> = members
        .iter()
        .map(|&(id, _, client)| {
            let info = client
                .ok_or_else(|| "no client address known".to_owned())
                .and_then(|c| call(c, &["INFO", "replication", "persistence"], Duration::from_secs(3)))
                .map(|text| {
                    text.lines()
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
                        .collect()
                });
            MemberView { id, client, info }
        })
        .collect();
    let num = |v: &MemberView, key: &str| -> u64 {
        v.info.as_ref().ok().and_then(|i| i.get(key)).and_then(|x| x.parse().ok()).unwrap_or(0)
    };
    let top_commit = views.iter().map(|v| num(v, "commit_index")).max().unwrap_or(0);
    let top_term = views.iter().map(|v| num(v, "term")).max().unwrap_or(0);
    println!(
        "{:>4}  {:<13} {:>6} {:>10} {:>10} {:>10} {:>8}  {:<21} health",
        "id", "role", "term", "commit", "applied", "last", "lag", "client"
    );
    let mut leaders = std::collections::BTreeSet::new();
    let mut healthy = 0;
    for v in &views {
        let client = v.client.map_or_else(|| "-".to_owned(), |c| c.to_string());
        match &v.info {
            Ok(info) => {
                let field = |k: &str| info.get(k).cloned().unwrap_or_default();
                if let Ok(l) = field("leader_id").parse::<u64>() {
                    leaders.insert(l);
                }
                let lag = top_commit.saturating_sub(num(v, "applied_index"));
                let health = if num(v, "repairing_lost_log_through") > 0 {
                    "repairing a lost log".to_owned()
                } else if field("leader_id") == "none" {
                    "no leader known".to_owned()
                } else if num(v, "term") < top_term {
                    "behind in term".to_owned()
                } else {
                    healthy += 1;
                    "ok".to_owned()
                };
                println!(
                    "{:>4}  {:<13} {:>6} {:>10} {:>10} {:>10} {:>8}  {:<21} {health}",
                    v.id,
                    field("raft_role"),
                    field("term"),
                    field("commit_index"),
                    field("applied_index"),
                    field("last_log_index"),
                    lag,
                    client
                );
            }
            Err(e) => println!(
                "{:>4}  {:<13} {:>6} {:>10} {:>10} {:>10} {:>8}  {client:<21} unreachable: {e}",
                v.id, "?", "?", "?", "?", "?", "?"
            ),
        }
    }
    let leader = match leaders.len() {
        1 => format!("leader {}", leaders.iter().next().expect("one")),
        0 => "no leader".to_owned(),
        _ => format!("members disagree on the leader ({leaders:?})"),
    };
    println!("{leader}, term {top_term}, commit {top_commit}, {healthy}/{} members healthy", views.len());
    if healthy == views.len() && leaders.len() == 1 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The WAL lives in `DATA_DIR/wal`, leaving room for snapshots and other files next to it.
fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    tracing::error!("{message}");
    eprintln!("raftkv: error: {message}");
    ExitCode::FAILURE
}

/// The cluster secret from `--cluster-secret-file` or `RAFTKV_CLUSTER_SECRET` (an empty one is
/// refused: it would look configured and protect nothing).
fn cluster_secret(file: Option<&Path>) -> Result<Option<raft_driver_std::transport::auth::Secret>, String> {
    let bytes = match file {
        Some(path) => {
            let mut bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            bytes
        }
        None => match std::env::var_os("RAFTKV_CLUSTER_SECRET") {
            Some(value) => value.into_encoded_bytes(),
            None => return Ok(None),
        },
    };
    if bytes.is_empty() {
        return Err("the cluster secret is empty".into());
    }
    Ok(Some(raft_driver_std::transport::auth::Secret::new(bytes)))
}

/// What `raftkv node` was asked.
struct NodeArgs {
    cluster_secret: Option<raft_driver_std::transport::auth::Secret>,
    id: u64,
    config: PathBuf,
    data_dir: PathBuf,
    fsync: bool,
    retry: Duration,
    requirepass: Option<String>,
    watch_stdin: bool,
    join: Option<SocketAddr>,
    peer_addr: Option<SocketAddr>,
    client_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
}

fn run_node(args: &NodeArgs) -> ExitCode {
    let NodeArgs { id, ref config, ref data_dir, fsync, retry, watch_stdin, join, .. } = *args;
    let cluster = match ClusterConfig::load(config) {
        Ok(cluster) => cluster,
        Err(e) => return fail(format!("{}: {e}", config.display())),
    };
    let me = match (cluster.node(id).cloned(), args.peer_addr, args.client_addr) {
        (_, Some(peer_addr), Some(client_addr)) => NodeAddrs { id, peer_addr, client_addr },
        (Some(me), None, None) => me,
        (None, _, _) => {
            return fail(format!(
                "node {id} is not listed in {}: give its --peer-addr and --client-addr (and --join to add it)",
                config.display()
            ));
        }
        _ => return fail("give both --peer-addr and --client-addr, or neither"),
    };
    // A joining node learns the members (and where they are) from the node it joins through.
    let joined = match join {
        Some(addr) => match members_of(addr) {
            Ok(members) => Some(members),
            Err(e) => return fail(format!("cannot join through {addr}: {e}")),
        },
        None => None,
    };
    if let Err(e) = std::fs::create_dir_all(data_dir) {
        return fail(format!("cannot create data directory {}: {e}", data_dir.display()));
    }
    // Bind the client port before touching the WAL: a second process started on the same node fails
    // here instead of writing into the first one's log.
    let listener = match raft_driver_std::raftkv::server::bind_client_port(me.client_addr) {
        Ok(listener) => listener,
        Err(e) => return fail(format!("cannot listen for clients on {}: {e}", me.client_addr)),
    };
    let mut options = NodeOptions::new(id, cluster.cluster_id, me.peer_addr, cluster.peers_of(id), wal_dir(data_dir));
    options.voters = cluster.voters();
    let mut book: std::collections::BTreeMap<u64, MemberAddr> =
        cluster.nodes.iter().map(|n| (n.id, MemberAddr { peer: n.peer_addr, service: Some(n.client_addr) })).collect();
    book.insert(id, MemberAddr { peer: me.peer_addr, service: Some(me.client_addr) });
    if let Some(members) = &joined {
        // Outside the configuration until the leader adds it: no voters of its own.
        options.voters = Vec::new();
        options.peers = members.iter().filter(|m| m.0 != id).map(|m| (m.0, m.1)).collect();
        for &(mid, peer, client) in members {
            book.insert(mid, MemberAddr { peer, service: client });
        }
    } else if !options.voters.contains(&id) {
        return fail(format!("node {id} is not a voter of {}: start it with --join", config.display()));
    }
    options.members = Members(book);
    options.service_addr = Some(me.client_addr);
    options.timing = cluster.timing;
    options.limits = cluster.limits;
    options.snapshot_dir = data_dir.join("snapshots");
    options.snapshot = cluster.snapshot.policy();
    options.wal = options.wal.clone().with_segment_size(cluster.snapshot.wal_segment_bytes);
    options.fsync = fsync;
    options.lease_reads = cluster.reads.mode == ReadMode::Lease;
    options.max_clock_drift_ticks = cluster.reads.max_clock_drift_ticks;
    options.cluster_secret = args.cluster_secret.clone();
    if !fsync {
        tracing::warn!(
            "--no-fsync: writes are acknowledged before they are durable; a power loss or kernel crash can lose \
             acknowledged writes, and on several nodes at once committed writes"
        );
    }
    let node = match RaftNode::start(options, KvStore::new()) {
        Ok(node) => node,
        Err(e) => return fail(e),
    };
    let server_options = ServerOptions {
        retry_bound: retry,
        limits: cluster.limits,
        requirepass: args.requirepass.clone().map(bytes::Bytes::from),
        ..ServerOptions::default()
    };
    let server = match Server::start(listener, node.handle(), cluster, id, server_options) {
        Ok(server) => server,
        Err(e) => return fail(format!("cannot start client server: {e}")),
    };
    let metrics = match args.metrics_addr.map(|addr| server.serve_metrics(addr).map_err(|e| (addr, e))).transpose() {
        Ok(m) => m,
        Err((addr, e)) => return fail(format!("cannot serve metrics on {addr}: {e}")),
    };
    if let Some(m) = &metrics {
        tracing::info!(node = id, metrics = %m.local_addr(), "serving metrics at /metrics");
    }
    tracing::info!(node = id, client = %server.local_addr(), peer = %me.peer_addr, fsync, "raftkv node ready");
    if let Some(addr) = join {
        let me = me.clone();
        std::thread::spawn(move || ask_to_join(addr, &me));
    }
    if watch_stdin {
        std::thread::spawn(|| {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            tracing::info!("standard input closed; exiting");
            // The WAL is crash-safe, so exiting without a shutdown loses nothing acknowledged (a process
            // exit keeps the page cache, so this holds with --no-fsync too).
            std::process::exit(0);
        });
    }
    // The node thread only returns on a fatal error (the WAL failed).
    let result = node.wait();
    drop(server);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Prints the WAL report (`wal::inspect`) and, under `snapshots`, every snapshot file with its
/// metadata or what is wrong with it. Fails when the node would refuse to start: a WAL that is corrupt
/// or of another version, or a snapshot file that the WAL's newest snapshot record names and that is
/// missing or damaged.
fn run_inspect(data_dir: &Path) -> ExitCode {
    let wal = wal_dir(data_dir);
    let dir = if wal.is_dir() { wal } else { data_dir.to_path_buf() };
    let report = match wal::inspect(&dir) {
        Ok(report) => report,
        Err(e) => return fail(e),
    };
    let snapshots = snapshot_file::inspect_dir(&data_dir.join("snapshots")).unwrap_or_default();
    let wanted = report.wal.snapshot_index;
    let snapshot_error = (wanted > 0
        && !snapshots.iter().any(|s| s.last_included_index == Some(wanted) && s.error.is_none()))
    .then(|| format!("the WAL starts from snapshot {wanted}, but no valid snapshot file for it exists"));
    let refused = report.health.refuses_to_open() || snapshot_error.is_some();
    let mut json = match serde_json::to_value(&report) {
        Ok(json) => json,
        Err(e) => return fail(format!("cannot encode report: {e}")),
    };
    json["snapshots"] = serde_json::to_value(&snapshots).unwrap_or_default();
    json["snapshot_error"] = serde_json::to_value(&snapshot_error).unwrap_or_default();
    match serde_json::to_string_pretty(&json) {
        Ok(text) => println!("{text}"),
        Err(e) => return fail(format!("cannot encode report: {e}")),
    }
    if refused { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Sends one `RAFT ...` command to `addr` and returns the reply (`Err` for an error reply or no
/// answer).
fn admin_call(addr: SocketAddr, args: &[&str]) -> Result<String, String> {
    let mut request = vec!["RAFT"];
    request.extend_from_slice(args);
    call(addr, &request, Duration::from_secs(15))
}

/// Sends one command to `addr` and returns its simple or bulk reply (an error reply as `Err`).
fn call(addr: SocketAddr, request: &[&str], timeout: Duration) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut out = bytes::BytesMut::new();
    raft_driver_std::raftkv::resp::encode_request(request, &mut out);
    stream.write_all(&out).map_err(|e| format!("write {addr}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match admin::parse_simple_reply(&buf) {
            Ok(Some(Reply::Error(e))) => return Err(e),
            Ok(Some(Reply::Simple(s))) => return Ok(s),
            Ok(Some(Reply::Bulk(b))) => return Ok(String::from_utf8_lossy(&b).into_owned()),
            Ok(Some(other)) => return Err(format!("unexpected reply {other:?}")),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
        let n = stream.read(&mut chunk).map_err(|e| format!("read {addr}: {e}"))?;
        if n == 0 {
            return Err(format!("{addr} closed the connection"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `admin_call`, retried while the answer is `-TRYAGAIN`, for at most `wait`.
fn admin_call_retrying(addr: SocketAddr, args: &[&str], wait: Duration) -> Result<String, String> {
    let deadline = Instant::now() + wait;
    loop {
        match admin_call(addr, args) {
            Err(e) if e.starts_with("TRYAGAIN") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

fn run_admin(addr: SocketAddr, wait: Duration, command: &AdminCmd) -> ExitCode {
    let result = match command {
        AdminCmd::Members => admin_call(addr, &["MEMBERS"]),
        AdminCmd::AddLearner { id, peer_addr, client_addr } => admin_call_retrying(
            addr,
            &["ADD-LEARNER", &id.to_string(), &peer_addr.to_string(), &client_addr.to_string()],
            wait,
        ),
        AdminCmd::Promote { id } => admin_call_retrying(addr, &["PROMOTE", &id.to_string()], wait),
        AdminCmd::Remove { id } => admin_call_retrying(addr, &["REMOVE", &id.to_string()], wait),
        AdminCmd::Replace { old, new, peer_addr, client_addr } => {
            let added = match (peer_addr, client_addr) {
                (Some(p), Some(c)) => {
                    match admin_call_retrying(
                        addr,
                        &["ADD-LEARNER", &new.to_string(), &p.to_string(), &c.to_string()],
                        wait,
                    ) {
                        Ok(_) => Ok(()),
                        Err(e) if e.contains("already a member") => Ok(()),
                        Err(e) => Err(e),
                    }
                }
                _ => Ok(()),
            };
            added.and_then(|()| admin_call_retrying(addr, &["REPLACE", &old.to_string(), &new.to_string()], wait))
        }
        AdminCmd::TransferLeader { id } => admin_call_retrying(addr, &["TRANSFER-LEADER", &id.to_string()], wait),
    };
    match result {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// The members `RAFT MEMBERS` at `addr` lists: (id, peer address, client address).
fn members_of(addr: SocketAddr) -> Result<Vec<(u64, SocketAddr, Option<SocketAddr>)>, String> {
    let text = admin_call(addr, &["MEMBERS"])?;
    let mut members = Vec::new();
    for line in text.lines().skip(1) {
        let field = |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name)).map(str::to_owned);
        let id = field("id=").and_then(|v| v.parse().ok()).ok_or_else(|| format!("bad member line {line:?}"))?;
        let peer = field("peer=").and_then(|v| v.parse().ok()).ok_or_else(|| format!("no peer address in {line:?}"))?;
        let client = field("client=").and_then(|v| v.parse().ok());
        members.push((id, peer, client));
    }
    if members.is_empty() {
        return Err(format!("{addr} lists no members"));
    }
    Ok(members)
}

/// Asks the cluster at `addr` to add this node as a learner, retrying while it says to.
fn ask_to_join(addr: SocketAddr, me: &NodeAddrs) {
    let args = ["ADD-LEARNER", &me.id.to_string(), &me.peer_addr.to_string(), &me.client_addr.to_string()];
    match admin_call_retrying(addr, &args, Duration::from_secs(60)) {
        Ok(m) => {
            tracing::info!(node = me.id, membership = %m, "added as a learner; promote with `raftkv admin promote`")
        }
        Err(e) if e.contains("already a member") => tracing::info!(node = me.id, "already a member"),
        Err(e) => tracing::error!(node = me.id, error = %e, "could not join"),
    }
}

/// Kills the children when dropped, so that no exit path leaves nodes running.
struct Children(Vec<(u64, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
        }
        for (_, child) in &mut self.0 {
            let _ = child.wait();
        }
    }
}

fn parse_read_mode(s: &str) -> Result<ReadMode, String> {
    match s {
        "index" => Ok(ReadMode::Index),
        "lease" => Ok(ReadMode::Lease),
        "log" => Ok(ReadMode::Log),
        other => Err(format!("unknown read mode {other:?}: index, lease or log")),
    }
}

fn run_cluster(
    nodes: u64,
    data_dir: Option<PathBuf>,
    port: u16,
    no_fsync: bool,
    read_mode: ReadMode,
    metrics_port: Option<u16>,
) -> ExitCode {
    if nodes == 0 || nodes > 255 {
        return fail("--nodes must be between 1 and 255");
    }
    // The data of an existing cluster keeps its membership: starting it with another node count
    // would silently change the voters without any membership change.
    if let Some(dir) = &data_dir {
        let existing = dir.join("cluster.toml");
        if let Ok(old) = ClusterConfig::load(&existing) {
            if old.nodes.len() as u64 != nodes {
                return fail(format!(
                    "{} holds a {}-node cluster; to change its size, keep it running with --nodes {} and use \
                     `raftkv admin add-learner` / `promote` / `remove` (see docs/operating.md)",
                    dir.display(),
                    old.nodes.len(),
                    old.nodes.len()
                ));
            }
        }
    }
    let mut cluster = match ClusterConfig::local(nodes, port) {
        Ok(cluster) => cluster,
        Err(e) => return fail(e),
    };
    cluster.reads.mode = read_mode;
    let (dir, temporary) = match data_dir {
        Some(dir) => (dir, false),
        None => (std::env::temp_dir().join(format!("raftkv-cluster-{}", std::process::id())), true),
    };
    let config_path = dir.join("cluster.toml");
    let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&config_path, cluster.to_toml()));
    if let Err(e) = written {
        return fail(format!("cannot write {}: {e}", config_path.display()));
    }
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    }) {
        return fail(format!("cannot install Ctrl-C handler: {e}"));
    }
    println!("raftkv cluster: {nodes} nodes, data in {}", dir.display());
    let mut children = Children(Vec::new());
    for n in &cluster.nodes {
        let metrics = metrics_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p + (n.id - 1) as u16)));
        match spawn_node(n, &dir, &config_path, no_fsync, metrics) {
            Ok(child) => children.0.push((n.id, child)),
            Err(e) => return fail(e),
        }
    }
    show_leader(&cluster);
    println!("try: redis-cli -p {port} SET hello world   (Ctrl-C stops the cluster)");
    let code = supervise(&mut children, &stop_rx);
    drop(children);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    code
}

/// Starts `raftkv node` for `n` as a child process logging to `DIR/node-N.log`.
fn spawn_node(
    n: &NodeAddrs,
    dir: &Path,
    config_path: &Path,
    no_fsync: bool,
    metrics: Option<SocketAddr>,
) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let log_path = dir.join(format!("node-{}.log", n.id));
    let log = std::fs::File::create(&log_path).map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let mut command = Command::new(exe);
    command
        .arg("node")
        .arg("--id")
        .arg(n.id.to_string())
        .arg("--config")
        .arg(config_path)
        .arg("--data-dir")
        .arg(dir.join(format!("node-{}", n.id)))
        .arg("--exit-on-stdin-eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log);
    if no_fsync {
        command.arg("--no-fsync");
    }
    if let Some(addr) = metrics {
        command.arg(format!("--metrics-addr={addr}"));
    }
    let child = command.spawn().map_err(|e| format!("cannot start node {}: {e}", n.id))?;
    println!(
        "  node {}: clients {}  peers {}  log {}  pid {}",
        n.id,
        n.client_addr,
        n.peer_addr,
        log_path.display(),
        child.id()
    );
    Ok(child)
}

/// Waits (bounded) for an election, then shows who leads.
fn show_leader(cluster: &ClusterConfig) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let roles: Vec<(u64, Option<String>)> =
            cluster.nodes.iter().map(|n| (n.id, info_field(n.client_addr, "raft_role"))).collect();
        if roles.iter().any(|(_, r)| r.as_deref() == Some("leader")) {
            for (id, role) in roles {
                println!("  node {id}: {}", role.as_deref().unwrap_or("unreachable"));
            }
            return;
        }
    }
    println!("  no leader elected yet; see the node logs");
}

/// Runs until Ctrl-C/SIGTERM (success) or until a node exits on its own (failure).
fn supervise(children: &mut Children, stop: &crossbeam_channel::Receiver<()>) -> ExitCode {
    loop {
        if stop.recv_timeout(Duration::from_millis(200)).is_ok() {
            println!("stopping cluster");
            return ExitCode::SUCCESS;
        }
        let exited = children.0.iter_mut().find_map(|(id, c)| c.try_wait().ok().flatten().map(|s| (*id, s)));
        if let Some((id, status)) = exited {
            eprintln!("raftkv: node {id} exited ({status}); stopping the cluster");
            return ExitCode::FAILURE;
        }
    }
}

/// Reads one field of a node's `INFO` over a short-lived RESP connection (`None` if unreachable).
fn info_field(addr: SocketAddr, field: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream.write_all(b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n").ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // The reply is one bulk string; read until its announced length has arrived.
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        let (header, body) = text.split_once("\r\n")?;
        let len: usize = header.strip_prefix('$')?.parse().ok()?;
        if body.len() >= len {
            let prefix = format!("{field}:");
            return body.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().to_owned());
        }
    }
}
