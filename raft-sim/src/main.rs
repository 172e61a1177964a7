//! `raft-sim`: sweep seeds, replay one, or run a scenario script.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use raft_sim::profile::Profile;
use raft_sim::sim::{RunReport, SimConfig, run};
use raft_sim::sweep::{SweepSpec, sweep};

#[derive(Parser)]
#[command(name = "raft-sim", about = "Deterministic simulation of raft-core under faults")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The knobs that decide what one seed's run looks like. A replay must
/// repeat exactly those of the failing run.
#[derive(clap::Args, Clone)]
struct RunShape {
    /// Cluster size (default: 3 or 5, by seed).
    #[arg(long)]
    nodes: Option<usize>,
    /// Fault profile: calm, lossy, partitions, crashes, chaos, or lease (chaos with lease reads; never chosen by seed) (default: by seed).
    #[arg(long)]
    profile: Option<String>,
    /// Run length in ticks (default 300).
    #[arg(long)]
    ticks: Option<u64>,
    /// Every node snapshots every this many applied entries; 0 never
    /// (default: by seed).
    #[arg(long)]
    snapshot_every: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a range of seeds and summarise them.
    Run {
        /// Seeds as A..B (B exclusive).
        #[arg(long, default_value = "0..1000")]
        seeds: String,
        #[command(flatten)]
        shape: RunShape,
        /// Worker threads (default: all cores).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Replay one seed exactly.
    Replay {
        /// The seed.
        #[arg(long)]
        seed: u64,
        #[command(flatten)]
        shape: RunShape,
        /// Print every event.
        #[arg(long)]
        trace: bool,
        /// Write the client history as JSON to this file.
        #[arg(long)]
        history: Option<String>,
        /// Write an SVG timeline (lanes per node, an arrow per message) to this file.
        #[arg(long)]
        svg: Option<String>,
        /// The timeline's window in virtual microseconds, A..B (default: the
        /// 300 ms before a failure, else the first 300 ms).
        #[arg(long)]
        window: Option<String>,
    },
    /// Run a scenario script and print its trace.
    Scenario {
        /// The script file.
        file: String,
    },
    /// Explore every interleaving of a small cluster's events up to a depth, checking safety in
    /// every state (depth-first, states deduplicated; see raft_sim::explore). A violation is
    /// printed with its shortest path as a scenario script.
    Explore {
        /// Voters.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Choices per path at most (0: no bound; then --clock must bound the search).
        #[arg(long, default_value_t = 10)]
        depth: usize,
        /// Distinct states kept at most (the search stops, incomplete, beyond it).
        #[arg(long, default_value_t = 2_000_000)]
        max_states: usize,
        /// Proposals per path.
        #[arg(long, default_value_t = 1)]
        proposals: u32,
        /// Crashes per path.
        #[arg(long, default_value_t = 1)]
        crashes: u32,
        /// Message drops per path.
        #[arg(long, default_value_t = 0)]
        drops: u32,
        /// Message duplications per path.
        #[arg(long, default_value_t = 0)]
        duplicates: u32,
        /// Linearizable reads (ReadIndex) per path.
        #[arg(long, default_value_t = 0)]
        reads: u32,
        /// Snapshots taken per path (then transfers to install or abort are choices too).
        #[arg(long, default_value_t = 0)]
        snapshots: u32,
        /// Election timeout in ticks (randomised up to twice that, as always).
        #[arg(long, default_value_t = 2)]
        election_ticks: u32,
        /// Run with PreVote and CheckQuorum on.
        #[arg(long)]
        pre_vote: bool,
        /// Jump to a node's next timeout instead of ticking one tick at a time (more per choice,
        /// many more states per level).
        #[arg(long)]
        timeouts: bool,
        /// Clock choices (ticks, or timeouts with --timeouts) per path; with it a large --depth
        /// explores every run with at most that many timeouts.
        #[arg(long, default_value_t = u32::MAX)]
        clock: u32,
        /// Deliveries out of send order on their link per path (default: any order; 0: FIFO
        /// links, as over TCP).
        #[arg(long, default_value_t = u32::MAX)]
        reorders: u32,
        /// Membership changes per path (add the spare node as a learner, promote, remove).
        #[arg(long, default_value_t = 0)]
        changes: u32,
        /// Where to write a violation's scenario script (it is printed too).
        #[arg(long)]
        script: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let profile = match &cli.command {
        Command::Run { shape, .. } | Command::Replay { shape, .. } => shape.profile.as_deref(),
        Command::Scenario { .. } | Command::Explore { .. } => None,
    };
    if let Some(p) = profile.filter(|p| Profile::named(p).is_none()) {
        eprintln!("unknown profile {p:?}; one of {:?} or {:?}", Profile::NAMES, Profile::EXTRA);
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Run { seeds, shape: RunShape { nodes, profile, ticks, snapshot_every }, jobs } => {
            let Some((from, to)) = parse_range(&seeds) else {
                eprintln!("--seeds must look like A..B");
                return ExitCode::from(2);
            };
            let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let spec = SweepSpec { from, to, profile, nodes, ticks, snapshot_every, jobs };
            run_sweep(&spec)
        }
        Command::Replay {
            seed,
            shape: RunShape { nodes, profile, ticks, snapshot_every },
            trace,
            history,
            svg,
            window,
        } => {
            let spec = SweepSpec { from: seed, to: seed + 1, profile, nodes, ticks, snapshot_every, jobs: 1 };
            let mut cfg = spec.config(seed);
            cfg.trace = trace;
            cfg.timeline = svg.is_some();
            let report = run(cfg.clone());
            if let Some(path) = svg {
                let (from, to) = match window.as_deref().map(parse_range) {
                    Some(Some(w)) => w,
                    Some(None) => {
                        eprintln!("--window must look like A..B");
                        return ExitCode::from(2);
                    }
                    None => {
                        report.failure.as_ref().map_or((0, 300_000), |f| (f.time_us.saturating_sub(300_000), f.time_us))
                    }
                };
                let picture = raft_sim::timeline::svg(&report.timeline, cfg.nodes as u64, from, to);
                if let Err(e) = std::fs::write(&path, picture) {
                    eprintln!("cannot write {path}: {e}");
                    return ExitCode::from(2);
                }
            }
            if trace {
                for line in &report.trace {
                    println!("{line}");
                }
            }
            if let Some(path) = history {
                if let Err(e) = std::fs::write(&path, raft_sim::history::to_json(&report.history)) {
                    eprintln!("cannot write {path}: {e}");
                    return ExitCode::from(2);
                }
            }
            print_run(&cfg, &report);
            if report.failure.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
        }
        Command::Explore {
            nodes,
            depth,
            max_states,
            proposals,
            crashes,
            drops,
            duplicates,
            reads,
            snapshots,
            election_ticks,
            pre_vote,
            timeouts,
            clock,
            reorders,
            changes,
            script,
        } => {
            let mut cfg = raft_sim::explore::ExploreConfig::small(nodes, depth);
            cfg.max_states = max_states;
            (cfg.proposals, cfg.crashes, cfg.drops, cfg.duplicates) = (proposals, crashes, drops, duplicates);
            (cfg.reads, cfg.snapshots) = (reads, snapshots);
            cfg.template.election_ticks = election_ticks;
            cfg.template.pre_vote = pre_vote;
            cfg.template.check_quorum = pre_vote;
            (cfg.timeouts, cfg.clock, cfg.changes, cfg.reorders) = (timeouts, clock, changes, reorders);
            if depth == 0 && clock == u32::MAX {
                eprintln!("--depth 0 (no bound) needs a --clock budget, or the search never ends");
                return ExitCode::from(2);
            }
            run_explore(&cfg, script.as_deref())
        }
        Command::Scenario { file } => {
            let script = match std::fs::read_to_string(&file) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("cannot read {file}: {e}");
                    return ExitCode::from(2);
                }
            };
            match raft_sim::scenario::run(&script) {
                Ok(trace) => {
                    print!("{trace}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_explore(cfg: &raft_sim::explore::ExploreConfig, script_file: Option<&str>) -> ExitCode {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("template"));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let report = raft_sim::explore::explore(cfg, |r| {
        bar.set_message(format!(
            "depth {}/{}: {} distinct states, {} transitions, {:.0} states/s",
            r.depth,
            cfg.depth,
            r.distinct,
            r.transitions,
            r.states_per_second()
        ));
    });
    bar.finish_and_clear();
    let rss_mib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_owned())))
        .unwrap_or_else(|| "?".into());
    println!(
        "explored={} distinct={} transitions={} depth={}{} states/s={:.0} peak_rss={} violations={} ({:.1}s)",
        report.explored,
        report.distinct,
        report.transitions,
        report.depth,
        if report.complete { "" } else { " (incomplete: --max-states reached)" },
        report.states_per_second(),
        rss_mib,
        u8::from(report.violation.is_some()),
        report.seconds
    );
    match &report.violation {
        None => ExitCode::SUCCESS,
        Some((path, v)) => {
            println!("violation: {}: {}", v.property, v.detail);
            println!(
                "first found after {:.1}s; shortest path found by bisecting the depth",
                report.first_found.unwrap_or(report.seconds)
            );
            println!("path ({} choices):", path.len());
            for (i, c) in path.iter().enumerate() {
                println!("  {:>3}. {c:?}", i + 1);
            }
            let script = report.script(cfg).unwrap_or_default();
            println!("as a scenario script (replay: raft-sim scenario FILE):\n{script}");
            if let Some(file) = script_file {
                if let Err(e) = std::fs::write(file, &script) {
                    eprintln!("cannot write {file}: {e}");
                }
            }
            ExitCode::FAILURE
        }
    }
}

fn parse_range(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once("..")?;
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    (a < b).then_some((a, b))
}

fn run_sweep(spec: &SweepSpec) -> ExitCode {
    let bar = ProgressBar::new(spec.to - spec.from);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} seeds {per_sec} [{elapsed}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let events = std::sync::atomic::AtomicU64::new(0);
    let failures = std::sync::atomic::AtomicU64::new(0);
    let summary = sweep(spec, &|r: &RunReport| {
        use std::sync::atomic::Ordering::Relaxed;
        let e = events.fetch_add(r.events, Relaxed) + r.events;
        let f = failures.fetch_add(u64::from(r.failure.is_some()), Relaxed) + u64::from(r.failure.is_some());
        bar.inc(1);
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{:.2}M events/s, {f} failures", e as f64 / secs / 1e6));
    });
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    for r in &summary.failures {
        let cfg = spec.config(r.seed);
        print_run(&cfg, r);
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "seeds={} events={} events/s={:.0} linearizable ops={} undecided={} elections={} snapshots={}/{} reconfigs={} reads={}/{} disk_losses={}/{} old_msgs={} stalled={}/{} flaps={} peak_log={} failures={} ({:.1}s, {} jobs)",
        summary.seeds,
        summary.events,
        summary.events as f64 / secs.max(1e-9),
        summary.linearizable_ops,
        summary.undecided,
        summary.elections,
        summary.snapshots.0,
        summary.snapshots.1,
        summary.reconfigs,
        summary.reads.0,
        summary.reads.1,
        summary.disk_losses.0,
        summary.disk_losses.1,
        summary.situations.old_messages,
        summary.situations.stalled.0,
        summary.situations.stalled.1,
        summary.situations.leader_flaps,
        summary.peak_log_len,
        summary.failures.len(),
        secs,
        spec.jobs
    );
    if summary.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Prints a run's verdict; for a failure, the last events before it and the
/// command that replays it.
fn print_run(cfg: &SimConfig, r: &RunReport) {
    let replay = format!(
        "cargo run --release -p raft-sim -- replay --seed {} --profile {} --nodes {} --ticks {} --snapshot-every {}",
        cfg.seed,
        cfg.profile.name,
        cfg.nodes,
        cfg.ticks,
        cfg.snapshot_every.unwrap_or(0)
    );
    let Some(f) = &r.failure else {
        println!(
            "seed {} ({} nodes, {}): ok, {} events, {} ops ({} completed), {} elections, {} committed, {} duplicate applications suppressed, snapshots {} taken / {} installed / {} aborted, {} membership operations, peak log {}",
            cfg.seed,
            cfg.nodes,
            cfg.profile.name,
            r.events,
            r.ops,
            r.completed_ops,
            r.elections,
            r.committed,
            r.duplicates_suppressed,
            r.snapshots.0,
            r.snapshots.1,
            r.snapshots.2,
            r.reconfigs,
            r.peak_log_len
        );
        return;
    };
    println!(
        "FAIL seed {} ({} nodes, {}): {} violated at event {} ({}us)",
        cfg.seed, cfg.nodes, cfg.profile.name, f.property, f.event, f.time_us
    );
    println!("  {}", f.detail);
    let mut traced = cfg.clone();
    traced.trace = true;
    let again = run(traced);
    let tail = again.trace.len().saturating_sub(25);
    println!("  last events:");
    for line in &again.trace[tail..] {
        println!("    {line}");
    }
    println!("  replay: {replay} --trace");
}
