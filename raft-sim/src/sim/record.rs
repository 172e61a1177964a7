//! What a run records for people: trace lines (with `trace`) and timeline
//! marks (with `timeline`). Recording never draws from the RNG, so turning
//! it on does not change the run.

use crate::timeline::Mark;

/// The trace and timeline of one run; each is collected only if asked for.
pub(super) struct Recorder {
    trace_on: bool,
    timeline_on: bool,
    /// One human-readable line per noted event.
    pub(super) trace: Vec<String>,
    /// Messages, roles, power changes and faults, for the SVG timeline.
    pub(super) timeline: Vec<Mark>,
}

impl Recorder {
    /// Records the trace if `trace_on`, the timeline if `timeline_on`.
    pub(super) fn new(trace_on: bool, timeline_on: bool) -> Recorder {
        Recorder { trace_on, timeline_on, trace: Vec::new(), timeline: Vec::new() }
    }

    /// Whether timeline marks are recorded.
    pub(super) fn timeline_on(&self) -> bool {
        self.timeline_on
    }

    /// Adds a trace line stamped with virtual time `now_us`; `line` is only
    /// formatted when tracing.
    pub(super) fn note(&mut self, now_us: u64, line: impl FnOnce() -> String) {
        if self.trace_on {
            let l = line();
            self.trace.push(format!("{now_us:>9}us {l}"));
        }
    }

    /// Adds a timeline mark; `mark` is only built when recording one.
    pub(super) fn mark(&mut self, mark: impl FnOnce() -> Mark) {
        if self.timeline_on {
            self.timeline.push(mark());
        }
    }
}
