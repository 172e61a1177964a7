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
/// # Snapshots
///
/// So that the log can be compacted, the driver regularly asks for a [`snapshot`](StateMachine::snapshot)
/// of the state and stores it in a snapshot file; a replica that restarts, or that fell too far behind the
/// leader, [`restore`](StateMachine::restore)s from one instead of replaying the whole history.
///
/// `snapshot` runs **on the node thread**, which meanwhile neither answers peers nor applies entries, so it
/// must be cheap: it captures a frozen view of the state (a copy-on-write clone, a version number into a
/// multi-version store, a handle to a forked image) and returns it as a [`SnapshotImage`]; the expensive
/// part, [`SnapshotImage::encode`], runs on a background thread while the node goes on applying. raftkv's
/// store keeps its maps in persistent (structurally shared) B-trees for exactly this: taking a snapshot
/// is O(1) and later writes copy only the tree nodes they touch. A state machine small enough to
/// serialize in well under a tick (say, below a megabyte) can simply return its encoded bytes.
pub trait StateMachine: Send + 'static {
    /// What `apply` answers. On the leader it is handed to the client that proposed the command (if it
    /// is still waiting); on followers it is dropped, so it should be cheap to produce.
    type Response: Send + 'static;

    /// A frozen view of the state as of the last applied index, encoded off the node thread.
    type Snapshot: SnapshotImage;

    /// Applies the committed command at log `index` and returns its response.
    ///
    /// `index` strictly increases from call to call.
    fn apply(&mut self, index: u64, command: &[u8]) -> Self::Response;

    /// Captures the state as of the last applied entry (cheaply: see [Snapshots](#snapshots)).
    ///
    /// Replicas that applied the same log prefix must produce byte-identical
    /// [encodings](SnapshotImage::encode): the simulator checks it.
    fn snapshot(&self) -> Self::Snapshot;

    /// Replaces the whole state with the one `image` encodes (an [`encode`](SnapshotImage::encode)d
    /// snapshot of this state machine, possibly produced by another replica). On error the state must be
    /// unchanged; the driver then keeps its log and refuses the snapshot.
    ///
    /// `image` comes from a checksummed snapshot file, but a file written by another version of the
    /// application is still possible: refuse what you cannot read, never panic on it.
    fn restore(&mut self, image: &[u8]) -> Result<(), RestoreError>;
}

/// A frozen state captured by [`StateMachine::snapshot`], turned into bytes on a background thread.
pub trait SnapshotImage: Send + 'static {
    /// The image's bytes, as [`StateMachine::restore`] reads them back. Deterministic: the same state
    /// always encodes to the same bytes. Include a format version of your own, since the bytes outlive
    /// the binary that wrote them.
    fn encode(&self) -> Vec<u8>;
}

/// An already-encoded image (for state machines that serialize cheaply on the node thread).
impl SnapshotImage for Vec<u8> {
    fn encode(&self) -> Vec<u8> {
        self.clone()
    }
}

/// Why [`StateMachine::restore`] refused an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreError(pub String);

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot restore the state machine from its snapshot image: {}", self.0)
    }
}

impl std::error::Error for RestoreError {}
