//! The application side of the driver: what a replicated service implements.

/// An application state machine replicated by the driver: implement this to run your own service on
/// Raft.
///
/// The driver calls [`apply`](StateMachine::apply) once for every committed log entry carrying an
/// application command, in log order, on every replica. For replicas to agree, `apply` must be
/// **deterministic**: its effect and its return value may depend only on the current state, `index` and
/// `command`, never on the local clock, randomness, thread scheduling, environment, or the iteration order
/// of a randomly seeded `HashMap`. If you need time, have the proposer put a timestamp in the command
/// (as raftkv's `KvRequest::now_ms` does).
///
/// `apply` must not panic on any input, including malformed commands (for example bytes written by an
/// older or newer version of your application): a panic would stop the replica, and the same entry would
/// stop every other replica too. Return an error response instead.
///
/// The simulator (`raft-sim`) drives the same trait, so a state machine that is pure (no IO in
/// `apply`) can be run under its seeded faults exactly as the real driver runs it.
///
/// Snapshot and restore methods will be added to this trait so that logs can be compacted; keep your state
/// serializable.
pub trait StateMachine: Send + 'static {
    /// What `apply` answers. On the leader it is handed to the client that proposed the command (if it
    /// is still waiting); on followers it is dropped, so it should be cheap to produce.
    type Response: Send + 'static;

    /// Applies the committed command at log `index` and returns its response.
    ///
    /// `index` strictly increases from call to call.
    fn apply(&mut self, index: u64, command: &[u8]) -> Self::Response;
}
