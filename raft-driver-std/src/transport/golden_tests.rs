//! Golden tests of wire format version 1: the committed files in
//! `tests/golden/wire-v1-*.bin` are decoded and compared with the expected
//! values, and the values are encoded and compared with the files.
//!
//! There is one frame for every `Message` variant (a match below fails to
//! compile when raft-core grows one), every field of a case has a value no
//! other field of it has, both booleans of a vote response are tried both
//! ways, and the integers span one-, two-, three- and ten-byte varints: an
//! encoder that swaps fields, variants or integer encodings cannot produce
//! the same bytes by accident.

use raft_core::{
    AppendEntries, AppendEntriesResponse, Bytes, Entry, EntryKind, InstallSnapshot, Membership, Message, MessageBody,
    ReadIndex, ReadIndexResponse, RequestVote, RequestVoteResponse, SnapshotMeta,
};

use super::frame::{ACK_LEN, AckStatus, HANDSHAKE_LEN, Handshake, HandshakeError};
use super::wire::WireError;
use super::{DEFAULT_MAX_FRAME_BYTES, FrameError, decode_frame, encode_frame};
use crate::golden;

const HANDSHAKE: &str = "wire-v1-handshake.bin";
const HANDSHAKE_V2: &str = "wire-v2-handshake.bin";
const ACKS: &str = "wire-v1-acks.bin";
/// The status added with the cluster secret (`transport::auth`).
const ACK_SECRET_REQUIRED: &str = "wire-ack-secret-required.bin";
const APPEND_ENTRIES: &str = "wire-v1-frame-append-entries.bin";

fn message(term: u64, body: MessageBody) -> Message {
    Message { term, body }
}

fn vote(pre_vote: bool, last_log_index: u64, last_log_term: u64) -> MessageBody {
    MessageBody::RequestVote(RequestVote { pre_vote, last_log_index, last_log_term, transfer: false })
}

fn vote_response(pre_vote: bool, granted: bool) -> MessageBody {
    MessageBody::RequestVoteResponse(RequestVoteResponse { pre_vote, granted })
}

fn append(prev_log_index: u64, prev_log_term: u64, entries: Vec<Entry>, leader_commit: u64) -> MessageBody {
    MessageBody::AppendEntries(AppendEntries { prev_log_index, prev_log_term, entries, leader_commit })
}

fn install_snapshot(last_included_index: u64, last_included_term: u64, membership: Membership) -> MessageBody {
    MessageBody::InstallSnapshot(InstallSnapshot {
        meta: SnapshotMeta { last_included_index, last_included_term, membership },
    })
}

fn golden_membership() -> Membership {
    Membership {
        voters: vec![1, 2, 300],
        outgoing: vec![1, 2, 3],
        learners: vec![70_000],
        context: Bytes::from_static(b"ctx"),
    }
}

/// A frame an older build sent that this build still decodes (to the
/// message given) but no longer sends: tag 4, a snapshot offer with a voter
/// list.
const INSTALL_SNAPSHOT_VOTERS: &str = "wire-v1-frame-install-snapshot.bin";

fn entry(term: u64, index: u64, kind: EntryKind, data: &'static [u8]) -> Entry {
    Entry { term, index, kind, data: Bytes::from_static(data) }
}

/// Every frame case: its file and the message it holds.
fn frame_cases() -> Vec<(&'static str, Message)> {
    let entries = vec![
        entry(12, 1001, EntryKind::Normal, b"SET k v"),
        entry(12, 1002, EntryKind::Noop, b""),
        entry(12, 1003, EntryKind::Normal, b""),
    ];
    let reject = |rejected_index, conflict_term, conflict_index| {
        MessageBody::AppendEntriesResponse(AppendEntriesResponse::Reject {
            rejected_index,
            conflict_term,
            conflict_index,
        })
    };
    vec![
        ("wire-v1-frame-request-vote.bin", message(300, vote(false, 70_000, 299))),
        ("wire-v1-frame-pre-vote.bin", message(301, vote(true, 5, 4))),
        ("wire-v1-frame-request-vote-response.bin", message(302, vote_response(false, true))),
        ("wire-v1-frame-pre-vote-response.bin", message(303, vote_response(true, false))),
        (APPEND_ENTRIES, message(12, append(1000, 11, entries, 999))),
        ("wire-v1-frame-heartbeat.bin", message(u64::MAX, append(2000, 13, vec![], 1999))),
        (
            "wire-v1-frame-append-entries-response-success.bin",
            message(14, MessageBody::AppendEntriesResponse(AppendEntriesResponse::Success { match_index: 70_001 })),
        ),
        ("wire-v1-frame-append-entries-response-reject.bin", message(15, reject(500, Some(7), 450))),
        ("wire-v1-frame-append-entries-response-reject-short-log.bin", message(16, reject(600, None, 42))),
        ("wire-v1-frame-install-snapshot-config.bin", message(17, install_snapshot(80_000, 16, golden_membership()))),
        ("wire-v1-frame-timeout-now.bin", message(18, MessageBody::TimeoutNow)),
        (
            "wire-v1-frame-request-vote-transfer.bin",
            message(
                19,
                MessageBody::RequestVote(RequestVote {
                    pre_vote: false,
                    last_log_index: 700,
                    last_log_term: 18,
                    transfer: true,
                }),
            ),
        ),
        (
            "wire-v1-frame-append-entries-config.bin",
            message(
                20,
                append(
                    900,
                    19,
                    vec![Entry { term: 20, index: 901, kind: EntryKind::Config, data: golden_membership().encode() }],
                    899,
                ),
            ),
        ),
        ("wire-v1-frame-read-index.bin", message(21, MessageBody::ReadIndex(ReadIndex { ctx: 70_002 }))),
        (
            "wire-v1-frame-read-index-response.bin",
            message(22, MessageBody::ReadIndexResponse(ReadIndexResponse { ctx: 300, index: Some(u64::MAX) })),
        ),
        (
            "wire-v1-frame-read-index-refused.bin",
            message(23, MessageBody::ReadIndexResponse(ReadIndexResponse { ctx: 5, index: None })),
        ),
        ("wire-v1-frame-read-round.bin", message(24, MessageBody::ReadRound { seq: 129 })),
        ("wire-v1-frame-read-round-ack.bin", message(25, MessageBody::ReadRoundAck { seq: 1 << 21 })),
    ]
}

/// Tag 4 still decodes, as a configuration of the voters it lists.
#[test]
fn transport_golden_old_install_snapshot_frame_still_decodes() {
    let committed = std::fs::read(golden::dir().join(INSTALL_SNAPSHOT_VOTERS)).expect("committed file");
    let (decoded, used) = decode_frame(&committed, DEFAULT_MAX_FRAME_BYTES).unwrap().unwrap();
    assert_eq!(used, committed.len());
    assert_eq!(decoded, message(17, install_snapshot(80_000, 16, Membership::new(vec![1, 2, 300]))));
}

/// A snapshot offer whose configuration does not decode is a frame error.
#[test]
fn transport_golden_install_snapshot_with_bad_configuration_is_refused() {
    let name = "wire-v1-frame-install-snapshot-config.bin";
    let mut bytes = check_frame(name);
    // len (4) | term 17 | tag 5 | index 80000 (80 f1 04) | term 16 | length | version 1
    assert_eq!(bytes[4..12], [17, 5, 0x80, 0xf1, 0x04, 16, 18, 1]);
    bytes[11] = 9;
    let err = decode_frame(&bytes, DEFAULT_MAX_FRAME_BYTES).unwrap_err();
    assert!(err.to_string().contains("configuration format version 9"), "{err}");
}

fn golden_handshake() -> Handshake {
    Handshake { cluster_id: 0x0102_0304_0506_0708, from: 3, to: 0x1122, listen: None }
}

/// Checks the frame case `name` against its committed file; returns the
/// committed bytes.
fn check_frame(name: &str) -> Vec<u8> {
    let (_, message) = frame_cases().into_iter().find(|(n, _)| *n == name).expect("a frame case");
    golden::check(name, &encode_frame(&message, DEFAULT_MAX_FRAME_BYTES).unwrap())
}

#[test]
fn transport_golden_files_are_exactly_the_tested_cases() {
    let mut names: Vec<&str> = frame_cases().iter().map(|(name, _)| *name).collect();
    names.extend([HANDSHAKE, HANDSHAKE_V2, ACKS, ACK_SECRET_REQUIRED, INSTALL_SNAPSHOT_VOTERS]);
    golden::assert_complete("wire-", &names);
}

/// Adding a variant to raft-core's `MessageBody` or `AppendEntriesResponse`
/// breaks this match; the new arm needs a golden frame of its own.
#[test]
fn transport_golden_frames_cover_every_message_variant() {
    let mut covered = [false; 12];
    for (_, m) in frame_cases() {
        let slot = match m.body {
            MessageBody::RequestVote(r) if r.transfer => 6,
            MessageBody::RequestVote(_) => 0,
            MessageBody::RequestVoteResponse(_) => 1,
            MessageBody::AppendEntries(_) => 2,
            MessageBody::AppendEntriesResponse(AppendEntriesResponse::Success { .. }) => 3,
            MessageBody::AppendEntriesResponse(AppendEntriesResponse::Reject { .. }) => 4,
            MessageBody::InstallSnapshot(_) => 5,
            MessageBody::TimeoutNow => 7,
            MessageBody::ReadIndex(_) => 8,
            MessageBody::ReadIndexResponse(_) => 9,
            MessageBody::ReadRound { .. } => 10,
            MessageBody::ReadRoundAck { .. } => 11,
        };
        covered[slot] = true;
    }
    assert_eq!(covered, [true; 12]);
}

#[test]
fn transport_golden_frames_decode_and_encode() {
    for (name, message) in frame_cases() {
        let committed = check_frame(name);
        let (decoded, used) = decode_frame(&committed, DEFAULT_MAX_FRAME_BYTES)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: incomplete frame"));
        assert_eq!((decoded, used), (message, committed.len()), "{name}");
    }
}

#[test]
fn transport_golden_handshake_and_acks() {
    // Version 1, as older builds send it: still accepted.
    let committed = golden::check(HANDSHAKE, &golden_handshake().encode_common(1));
    // Spelled out as well, so that the constants it is built from cannot
    // drift together with the file: magic, version 1, then the ids.
    assert_eq!(committed[..6], *b"RFTx\x00\x01");
    let raw: [u8; HANDSHAKE_LEN] = committed.try_into().expect("handshake length");
    assert_eq!(Handshake::decode(&raw), Ok(golden_handshake()));
    assert_eq!(Handshake::extra_len(1), 0);

    // Version 2 appends the listen address: family 4, the IPv4 address in
    // 16 bytes, the port.
    let v2 = Handshake { listen: Some("127.0.0.1:7001".parse().unwrap()), ..golden_handshake() };
    let committed = golden::check(HANDSHAKE_V2, &v2.encode());
    assert_eq!(committed[..6], *b"RFTx\x00\x02");
    assert_eq!(committed[30..35], [4, 127, 0, 0, 1]);
    assert_eq!(committed[47..], 7001u16.to_be_bytes());
    let raw: [u8; HANDSHAKE_LEN] = committed[..HANDSHAKE_LEN].try_into().unwrap();
    assert_eq!(Handshake::extra_len(Handshake::version_of(&raw)), committed.len() - HANDSHAKE_LEN);
    let listen = Handshake::decode_listen(committed[HANDSHAKE_LEN..].try_into().unwrap()).unwrap();
    assert_eq!(Handshake { listen, ..Handshake::decode(&raw).unwrap() }, v2);
    let mut bad = [0u8; 19];
    bad[0] = 5;
    assert_eq!(Handshake::decode_listen(&bad), Err(HandshakeError::BadAddress { family: 5 }));
    let v6 = Handshake { listen: Some("[::1]:9".parse().unwrap()), ..golden_handshake() }.encode();
    assert_eq!(Handshake::decode_listen(v6[30..].try_into().unwrap()).unwrap(), Some("[::1]:9".parse().unwrap()));

    // The statuses every version has (the file predates the cluster secret), then the ones added
    // since, each in a file of its own: a status is only ever added, never renumbered.
    let acks: Vec<u8> = AckStatus::ALL[..6].iter().flat_map(|status| status.encode()).collect();
    let mut committed = golden::check(ACKS, &acks);
    committed.extend(golden::check(ACK_SECRET_REQUIRED, &AckStatus::SecretRequired.encode()));
    assert_eq!(committed.len(), AckStatus::ALL.len() * ACK_LEN, "a golden file for every status");
    for (i, chunk) in committed.chunks(ACK_LEN).enumerate() {
        let status = AckStatus::decode(chunk.try_into().unwrap());
        assert_eq!(status, Some(AckStatus::ALL[i]));
        assert_eq!(chunk[4] as usize, i, "status bytes are 0, 1, 2, ... in order");
    }
}

/// Changing the version in the committed handshake gives the clear error,
/// naming the version found and the versions supported; a peer gets the
/// `UnsupportedVersion` status.
#[test]
fn transport_golden_handshake_of_unknown_version_is_refused() {
    let raw: [u8; HANDSHAKE_LEN] =
        golden::check(HANDSHAKE, &golden_handshake().encode_common(1)).try_into().expect("handshake length");
    for found in [0u16, 3, 0x0100, u16::MAX] {
        let mut bytes = raw;
        bytes[4..6].copy_from_slice(&found.to_be_bytes());
        let err = Handshake::decode(&bytes).unwrap_err();
        assert_eq!(err, HandshakeError::UnsupportedVersion { found });
        assert_eq!(err.status(), AckStatus::UnsupportedVersion);
        let message = err.to_string();
        assert!(message.contains(&format!("version {found}")), "{message}");
        assert!(message.contains("version(s) [1, 2]"), "{message}");
    }
    let mut bytes = raw;
    bytes[3] = b'y';
    let err = Handshake::decode(&bytes).unwrap_err();
    assert_eq!((err, err.status()), (HandshakeError::BadMagic { found: *b"RFTy" }, AckStatus::BadProtocol));
}

/// The layout is the documented one (docs/formats.md walks through this
/// frame), and an entry kind or message tag no version defines is an
/// error, not a default.
#[test]
fn transport_golden_install_snapshot_frame_is_tag_4() {
    // Spelled out, so that re-creating the file cannot move the tag: length
    // 11 | term 17 | tag 4 | index 80000 (80 f1 04) | term 16 | 3 voters 1 2 300 (ac 02).
    let bytes = std::fs::read(golden::dir().join(INSTALL_SNAPSHOT_VOTERS)).unwrap();
    assert_eq!(bytes, [0, 0, 0, 11, 17, 4, 0x80, 0xf1, 0x04, 16, 3, 1, 2, 0xac, 0x02]);
}

#[test]
fn transport_golden_new_tags_are_appended() {
    // TimeoutNow: length 2 | term 18 | tag 6.
    assert_eq!(check_frame("wire-v1-frame-timeout-now.bin"), [0, 0, 0, 2, 18, 6]);
    // A transfer's vote request: tag 7, then the same fields as tag 0.
    let transfer = check_frame("wire-v1-frame-request-vote-transfer.bin");
    assert_eq!(transfer, [0, 0, 0, 6, 19, 7, 0, 0xbc, 0x05, 18]);
    // A snapshot offer with the whole configuration: tag 5.
    assert_eq!(check_frame("wire-v1-frame-install-snapshot-config.bin")[5], 5);
    // Reads: tags 8 to 11. ReadIndex: term 21 | tag 8 | ctx 70002 (f2 a2 04).
    assert_eq!(check_frame("wire-v1-frame-read-index.bin"), [0, 0, 0, 5, 21, 8, 0xf2, 0xa2, 0x04]);
    // The refusal: term 23 | tag 9 | ctx 5 | None.
    assert_eq!(check_frame("wire-v1-frame-read-index-refused.bin"), [0, 0, 0, 4, 23, 9, 5, 0]);
    // An answer: ctx 300 (ac 02) | Some | u64::MAX (ten bytes).
    let answer = check_frame("wire-v1-frame-read-index-response.bin");
    assert_eq!(answer[4..10], [22, 9, 0xac, 0x02, 1, 0xff]);
    assert_eq!(answer.len(), 4 + 5 + 10);
    assert_eq!(check_frame("wire-v1-frame-read-round.bin"), [0, 0, 0, 4, 24, 10, 0x81, 0x01]);
    assert_eq!(check_frame("wire-v1-frame-read-round-ack.bin"), [0, 0, 0, 6, 25, 11, 0x80, 0x80, 0x80, 0x01]);
}

#[test]
fn transport_golden_frame_with_unknown_kind_or_tag_is_refused() {
    let bytes = check_frame(APPEND_ENTRIES);
    // len (4) | term 12 | tag 2 AppendEntries | prev_log_index 1000 (e8 07)
    // | prev_log_term 11 | 3 entries | term 12 | index 1001 (e9 07) | kind 0
    assert_eq!(bytes[4..14], [12, 2, 0xe8, 0x07, 11, 3, 12, 0xe9, 0x07, 0]);

    let mut unknown_kind = bytes.clone();
    unknown_kind[13] = 3;
    let err = decode_frame(&unknown_kind, DEFAULT_MAX_FRAME_BYTES).unwrap_err();
    assert!(matches!(err, FrameError::Invalid(WireError::UnknownEntryKind { index: 1001, kind: 3 })), "{err}");
    assert!(err.to_string().contains("entry 1001 has unknown kind 3"), "{err}");

    let mut unknown_tag = bytes;
    unknown_tag[5] = 12;
    let err = decode_frame(&unknown_tag, DEFAULT_MAX_FRAME_BYTES).unwrap_err();
    assert!(matches!(err, FrameError::Decode(_)), "{err}");
}
