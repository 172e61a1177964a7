//! Golden-trace scenario tests: each `testdata/*.txt` script runs through
//! the scenario language and its trace is pinned with an insta snapshot.
//! Scripts also carry `expect` lines, so a broken core fails even if someone
//! blindly accepts a new snapshot.
//!
//! One test per script, named after its file, so a failure names the script
//! and `cargo test -p raft-sim 09_figure8` runs just that one.

use std::path::{Path, PathBuf};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata")
}

/// Runs `testdata/<name>.txt` and compares its trace with the snapshot
/// `scenarios__<name>.snap`.
fn scenario(name: &str) {
    let path = testdata().join(format!("{name}.txt"));
    let script = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let trace = match raft_sim::scenario::run(&script) {
        Ok(trace) => trace,
        Err(e) => panic!("scenario {name} failed at {e}"),
    };
    insta::assert_snapshot!(name, trace);
}

/// One `#[test]` per script, and the list of every script they cover.
macro_rules! scenarios {
    ($($test:ident => $name:literal,)*) => {
        $(
            #[test]
            fn $test() {
                scenario($name);
            }
        )*
        const SCRIPTS: &[&str] = &[$($name),*];
    };
}

scenarios! {
    scenario_01_election => "01_election",
    scenario_02_split_vote => "02_split_vote",
    scenario_03_prevote => "03_prevote",
    scenario_04_prevote_off_disrupts => "04_prevote_off_disrupts",
    scenario_05_check_quorum => "05_check_quorum",
    scenario_06_replication => "06_replication",
    scenario_07_conflict_truncation => "07_conflict_truncation",
    scenario_08_backtracking => "08_backtracking",
    scenario_09_figure8 => "09_figure8",
    scenario_10_restart => "10_restart",
    scenario_11_unpersisted_no_ack => "11_unpersisted_no_ack",
    scenario_12_prevote_without_check_quorum => "12_prevote_without_check_quorum",
    scenario_13_check_quorum_lease => "13_check_quorum_lease",
    scenario_14_duplicate_prevote_grants => "14_duplicate_prevote_grants",
    scenario_15_snapshot_slow_follower => "15_snapshot_slow_follower",
    scenario_16_snapshot_while_probing => "16_snapshot_while_probing",
    scenario_17_snapshot_newer_term_in_flight => "17_snapshot_newer_term_in_flight",
    scenario_18_stale_install_snapshot_ignored => "18_stale_install_snapshot_ignored",
    scenario_19_crash_mid_install => "19_crash_mid_install",
    scenario_20_add_learner_promote => "20_add_learner_promote",
    scenario_21_remove_follower => "21_remove_follower",
    scenario_22_joint_replace => "22_joint_replace",
    scenario_23_leader_removes_itself => "23_leader_removes_itself",
    scenario_24_joint_interrupted_by_leader_crash => "24_joint_interrupted_by_leader_crash",
    scenario_25_transfer_leadership => "25_transfer_leadership",
    scenario_26_transfer_times_out => "26_transfer_times_out",
    scenario_27_membership_refusals => "27_membership_refusals",
    scenario_28_removed_leader_finishes_its_change => "28_removed_leader_finishes_its_change",
    scenario_29_read_index => "29_read_index",
    scenario_30_follower_read => "30_follower_read",
    scenario_31_read_partitioned_old_leader => "31_read_partitioned_old_leader",
    scenario_32_read_across_step_down => "32_read_across_step_down",
    scenario_33_lease_read => "33_lease_read",
    scenario_34_lease_clock_drift => "34_lease_clock_drift",
    scenario_35_lease_rules => "35_lease_rules",
    scenario_36_repair_lost_synced_entries => "36_repair_lost_synced_entries",
    scenario_37_joint_election_needs_both_majorities => "37_joint_election_needs_both_majorities",
    scenario_38_election_restriction_compares_terms_first => "38_election_restriction_compares_terms_first",
    scenario_39_explored_stale_append_refused => "39_explored_stale_append_refused",
    scenario_40_explored_vote_needs_up_to_date_log => "40_explored_vote_needs_up_to_date_log",
}

/// Every script in `testdata` has a test above (and every test a script),
/// so a new script cannot be silently skipped.
#[test]
fn every_script_has_a_test() {
    let mut on_disk: Vec<String> = std::fs::read_dir(testdata())
        .expect("testdata")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .map(|p| p.file_stem().expect("stem").to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = SCRIPTS.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "tests/testdata and the scenarios! list differ: add a line for each new script");
}
