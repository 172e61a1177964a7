//! Writes the committed seed corpora (`fuzz/seeds/TARGET/`): inputs that reach deep into each
//! target at once (real frames, real WAL files, real RESP pipelines, long choice sequences), so a
//! fuzzing run starts past the parsers' first bytes. Run after changing a format:
//! `cargo test -p raft-fuzz-harness -- --ignored write_seeds`; the replay test checks them all.

use std::path::PathBuf;

use bytes::BytesMut;
use raft_core::{Bytes, Config, Entry, EntryKind, HardState, Membership, Message, Persist, SnapshotMeta};
use raft_driver_std::raftkv::resp::encode_request;
use raft_driver_std::snapshot_file;
use raft_driver_std::transport::encode_frame;
use raft_driver_std::wal::{Wal, WalOptions};
use raft_sim::cluster::{Choice, Cluster};

/// Deterministic filler bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Messages a real three-node cluster sends while it elects a leader and replicates.
fn real_messages() -> Vec<Message> {
    let mut template = Config::new(1, vec![1]);
    template.election_ticks = 3;
    template.heartbeat_ticks = 1;
    let mut c = Cluster::new(&template, 3, 0, 9);
    let mut seen = Vec::new();
    for round in 0..12 {
        for id in c.ids() {
            c.apply(Choice::Tick(id)).expect("tick");
            if round > 4 {
                c.apply(Choice::Propose(id)).expect("propose");
            }
            c.apply(Choice::Sync(id)).expect("sync");
        }
        while let Some(m) = c.in_flight().first() {
            if seen.len() < 64 {
                seen.push(m.message.clone());
            }
            c.apply(Choice::Deliver(0)).expect("deliver");
            for id in c.ids() {
                c.apply(Choice::Sync(id)).expect("sync");
            }
        }
    }
    seen
}

/// A `core_events` input in which the cluster mostly works: ticks, fsyncs and deliveries in
/// rounds, proposals from round 4 on, and now and then a fault, a read, a snapshot or a change
/// (opcodes as `core_events::choice` reads them).
fn busy(seed: u64, flags: u8, rounds: usize) -> Vec<u8> {
    let dice = noise(seed + 1000, rounds * 8);
    let mut out = vec![flags, dice[0] & 0x0F];
    for round in 0..rounds {
        let d = &dice[round * 8..round * 8 + 8];
        for n in 0..3 {
            out.extend_from_slice(&[9, n, 12, n]);
        }
        if round >= 4 {
            out.extend_from_slice(&[14, d[1] % 3, 14, d[2] % 3]);
        }
        for k in 0..12u8 {
            out.extend_from_slice(&[0, d[3].wrapping_add(k) % 3, 12, k % 3]);
        }
        let extra: &[u8] = match d[4] % 16 {
            0 => &[17, d[5] % 3],
            1 => &[18, 0, 18, 1, 18, 2],
            2 => &[19, d[5] % 3],
            3 => &[20, d[5] % 3],
            4 => &[21, d[5] % 3],
            5 => &[22, d[5] % 3, d[6], d[7]],
            6 => &[23, d[5]],
            7 => &[7, d[5], 8, d[6]],
            _ => &[],
        };
        out.extend_from_slice(extra);
    }
    out
}

fn entries(n: u64) -> Vec<Entry> {
    (1..=n)
        .map(|i| Entry { term: 1 + i / 4, index: i, kind: EntryKind::Normal, data: Bytes::from(noise(i, 12)) })
        .collect()
}

fn wal_files() -> (Vec<u8>, Vec<u8>) {
    let dir = crate::scratch_dir();
    let (mut wal, _, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
    for (seq, chunk) in entries(12).chunks(3).enumerate() {
        let hard_state = Some(HardState { term: chunk[0].term, vote: Some(2) });
        let p =
            Persist { seq: seq as u64 + 1, hard_state, snapshot: None, truncate_from: None, entries: chunk.to_vec() };
        wal.write(&p).expect("write");
        wal.sync().expect("sync");
    }
    drop(wal);
    let segment = std::fs::read(dir.path().join("wal-0000000000000001.log")).expect("segment");
    let state = std::fs::read(dir.path().join("raft-state")).unwrap_or_default();
    (segment, state)
}

#[test]
#[ignore = "writes fuzz/seeds; run by hand after a format change"]
fn write_seeds() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../seeds");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(name), bytes).expect("write seed");
    };
    let messages = real_messages();
    for (i, len) in [64, 256, 512, 1024, 2048, 4096, 8192, 16384].into_iter().enumerate() {
        write("core_events", &format!("noise-{len}"), &noise(i as u64 + 1, len));
        write("kv_apply", &format!("noise-{len}"), &noise(i as u64 + 100, len));
    }
    for (i, flags) in [0u8, 0b0000_0011, 0b0101_0100, 0b1110_1000, 0b0011_1100, 0b1000_0001].into_iter().enumerate() {
        write("core_events", &format!("busy-{i}"), &busy(i as u64, flags, 60));
    }
    // node_messages: real messages as the target frames them (op 9, length, postcard), between
    // ticks (0), fsync reports (2) and proposals (1).
    for (i, group) in messages.chunks(8).enumerate() {
        let mut input = Vec::new();
        for m in group {
            let bytes = postcard::to_allocvec(m).expect("encode");
            if bytes.len() < 256 {
                input.extend_from_slice(&[0, 2, 1, 9, bytes.len() as u8]);
                input.extend_from_slice(&bytes);
            }
        }
        write("node_messages", &format!("real-{i}"), &input);
    }
    // frame_decode: streams of real frames (even selector), and handshakes (odd).
    for (i, group) in messages.chunks(8).enumerate() {
        let mut input = vec![0];
        for m in group {
            input.extend_from_slice(&encode_frame(m, 1 << 20).expect("frame"));
        }
        write("frame_decode", &format!("frames-{i}"), &input);
    }
    for (i, selector) in [1u8, 3, 5, 7].into_iter().enumerate() {
        let mut input = vec![selector];
        input.extend_from_slice(b"RFTh");
        input.extend_from_slice(&noise(i as u64 + 7, 96));
        write("frame_decode", &format!("handshake-{i}"), &input);
    }
    // resp_parse: pipelines of real commands, inline commands, and broken ones.
    let pipelines: [&[&[&[u8]]]; 4] = [
        &[&[b"SET", b"a", b"1"], &[b"GET", b"a"], &[b"INCR", b"n"]],
        &[&[b"MULTI"], &[b"SET", b"k", b"v", b"EX", b"10"], &[b"EXEC"]],
        &[&[b"HSET", b"h", b"f", b"v"], &[b"HGETALL", b"h"], &[b"SCAN", b"0", b"MATCH", b"*"]],
        &[&[b"EVAL", b"return redis.call('GET', KEYS[1])", b"1", b"a"], &[b"MSET", b"a", b"1", b"b", b"2"]],
    ];
    for (i, pipeline) in pipelines.iter().enumerate() {
        let mut out = BytesMut::new();
        for args in pipeline.iter() {
            encode_request(args, &mut out);
        }
        let mut input = vec![i as u8 * 37];
        input.extend_from_slice(&out);
        write("resp_parse", &format!("pipeline-{i}"), &input);
    }
    let raw: [&[u8]; 4] = [
        b"PING\r\nGET a\r\n\r\nSET \"x y\" 'z'\r\n",
        b"*2\r\n$3\r\nGET\r\n$-1\r\n",
        b"*-1\r\n*0\r\n*1\r\n$4\r\nPING\r\n",
        b"*99999999999\r\n",
    ];
    for (i, bytes) in raw.iter().enumerate() {
        let mut input = vec![1 + i as u8];
        input.extend_from_slice(bytes);
        write("resp_parse", &format!("raw-{i}"), &input);
    }
    // wal_recover: a real segment's records (0), a real state file (1), a real snapshot file (2),
    // and inputs for the write-then-damage mode (3).
    let (segment, state) = wal_files();
    let mut input = vec![0];
    input.extend_from_slice(&segment[16..]);
    write("wal_recover", "segment", &input);
    let mut input = vec![1];
    input.extend_from_slice(&state);
    write("wal_recover", "state-file", &input);
    let meta =
        SnapshotMeta { last_included_index: 9, last_included_term: 2, membership: Membership::new(vec![1, 2, 3]) };
    let mut input = vec![2];
    input.extend_from_slice(&snapshot_file::encode(&meta, &noise(3, 40)));
    write("wal_recover", "snapshot-file", &input);
    for len in [64, 256, 1024] {
        let mut input = vec![3];
        input.extend_from_slice(&noise(len as u64, len));
        write("wal_recover", &format!("damaged-{len}"), &input);
    }
}
