//! Golden-trace scenario tests: each `testdata/*.txt` script runs through
//! the scenario language and its trace is pinned with an insta snapshot.
//! Scripts also carry `expect` lines, so a broken core fails even if someone
//! blindly accepts a new snapshot.

use std::path::Path;

#[test]
fn scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata");
    let mut paths: Vec<_> = std::fs::read_dir(&dir).expect("testdata").map(|e| e.expect("entry").path()).collect();
    paths.sort();
    assert!(paths.len() >= 10, "expected the scenario files, found {}", paths.len());
    for path in paths {
        let name = path.file_stem().expect("stem").to_string_lossy().to_string();
        let script = std::fs::read_to_string(&path).expect("read script");
        let trace = match raft_sim::scenario::run(&script) {
            Ok(trace) => trace,
            Err(e) => panic!("scenario {name} failed at {e}"),
        };
        insta::assert_snapshot!(name, trace);
    }
}
