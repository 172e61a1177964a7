//! Runs one scenario script and prints its trace: `cargo run -p raft-sim --example scenario FILE`.
fn main() {
    let path = std::env::args().nth(1).expect("usage: scenario FILE");
    let script = std::fs::read_to_string(&path).expect("read script");
    match raft_sim::scenario::run(&script) {
        Ok(trace) => print!("{trace}"),
        Err(e) => {
            print!("{e}");
            std::process::exit(1);
        }
    }
}
