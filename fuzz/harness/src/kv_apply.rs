//! `kv_apply`: command sequences into the real raftkv store, as the server builds them (Redis
//! arguments through the command parser, encoded as log entries, applied through the driver's
//! `StateMachine` trait), each result checked against a model (a map of byte strings) for the
//! commands both implement: SET (plain, NX, XX, GET), GET, DEL, EXISTS, INCRBY, APPEND, STRLEN,
//! SETNX, GETDEL, MSET, MGET, DBSIZE. At any point the input may snapshot the store and go on
//! with a store restored from that image, which must be the same state (same image, same
//! answers from then on); apply raw bytes as an entry (a damaged or hostile log entry), which
//! must be refused without touching the data; or restore raw bytes as a snapshot image (from a
//! damaged file or a hostile peer), which is refused leaving the store exactly as it was, or
//! accepted as a state that encodes and restores to itself.

use std::collections::BTreeMap;

use arbitrary::{Result, Unstructured};
use bytes::Bytes;
use raft_driver_std::raftkv::command::{ParsedCommand, parse_command};
use raft_driver_std::raftkv::store::{KvRequest, KvResult, KvStore};
use raft_driver_std::{SnapshotImage, StateMachine};

const KEYS: [&[u8]; 4] = [b"a", b"b", b"c", b"counter"];

/// Runs one input; returns the commands checked against the model.
pub fn run(data: &[u8]) -> u64 {
    let mut checked = 0;
    let mut u = Unstructured::new(data);
    let mut store = KvStore::new();
    let mut model = Model::default();
    let mut index = 0;
    while !u.is_empty() && index < 1_000 {
        let Ok(step) = Step::pick(&mut u) else { break };
        index += 1;
        match step {
            Step::Command(args, expected) => {
                let got = apply(&mut store, index, &args);
                let want = expected(&mut model);
                assert_eq!(got, want, "{:?} at entry {index}", printable(&args));
                checked += 1;
            }
            Step::Restore => {
                let image = StateMachine::snapshot(&store).encode();
                let mut restored = KvStore::new();
                restored.restore(&image).expect("an image the store made restores");
                assert_eq!(restored.image(), image, "a restored store encodes to a different image");
                store = restored;
            }
            Step::Image(bytes) => {
                let before = store.image();
                let mut target = store.clone();
                match target.restore(&bytes) {
                    Ok(()) => {
                        let again = target.image();
                        let mut copy = KvStore::new();
                        copy.restore(&again).expect("an image the store made restores");
                        assert_eq!(copy.image(), again, "an accepted image does not restore to itself");
                    }
                    Err(_) => assert_eq!(target.image(), before, "a refused image changed the store"),
                }
            }
            Step::Raw(bytes) => {
                let before = store.image();
                let result = store.apply(index, &bytes);
                if KvRequest::decode(&bytes).is_err() {
                    assert!(matches!(result, KvResult::Error(_)), "undecodable entry answered {result:?}");
                    // Only the applied index may move.
                    let mut expected = KvStore::new();
                    expected.restore(&before).expect("restore");
                    expected.apply(index, b"");
                    assert_eq!(store.image(), expected.image(), "an undecodable entry changed the data");
                } else {
                    // A real command from the fuzzer's bytes: the model cannot follow; start over.
                    store = KvStore::new();
                    model = Model::default();
                }
            }
        }
    }
    checked
}

/// The model: live keys and their string values.
#[derive(Default)]
struct Model(BTreeMap<Vec<u8>, Vec<u8>>);

impl Model {
    fn get(&self, k: &[u8]) -> KvResult {
        self.0.get(k).map_or(KvResult::Nil, |v| KvResult::Value(Bytes::from(v.clone())))
    }
}

type Expect = Box<dyn FnOnce(&mut Model) -> KvResult>;

enum Step {
    Command(Vec<Bytes>, Expect),
    Restore,
    Raw(Vec<u8>),
    Image(Vec<u8>),
}

impl Step {
    fn pick(u: &mut Unstructured<'_>) -> Result<Step> {
        let key = |u: &mut Unstructured<'_>| -> Result<Vec<u8>> { Ok(KEYS[u.choose_index(KEYS.len())?].to_vec()) };
        let k = key(u)?;
        let k2 = key(u)?;
        let v = value(u)?;
        let cmd = |parts: &[&[u8]]| parts.iter().map(|p| Bytes::copy_from_slice(p)).collect::<Vec<_>>();
        let int = |n: usize| KvResult::Integer(n as i64);
        Ok(match u.int_in_range(0u8..=16)? {
            0 => {
                let (kk, vv) = (k.clone(), v.clone());
                Step::Command(
                    cmd(&[b"SET", &k, &v]),
                    Box::new(move |m| {
                        m.0.insert(kk, vv);
                        KvResult::Ok
                    }),
                )
            }
            1 => Step::Command(cmd(&[b"GET", &k]), Box::new(move |m| m.get(&k))),
            2 => Step::Command(
                cmd(&[b"DEL", &k, &k2]),
                Box::new(move |m| int(usize::from(m.0.remove(&k).is_some()) + usize::from(m.0.remove(&k2).is_some()))),
            ),
            3 => Step::Command(
                cmd(&[b"EXISTS", &k, &k2]),
                Box::new(move |m| int(usize::from(m.0.contains_key(&k)) + usize::from(m.0.contains_key(&k2)))),
            ),
            4 => {
                let delta: i64 = match u.int_in_range(0u8..=3)? {
                    0 => 1,
                    1 => -1,
                    2 => i64::from(u.arbitrary::<i16>()?),
                    _ => u.arbitrary()?,
                };
                let d = delta.to_string();
                Step::Command(cmd(&[b"INCRBY", &k, d.as_bytes()]), Box::new(move |m| incr(m, k, delta)))
            }
            5 => Step::Command(
                cmd(&[b"APPEND", &k, &v]),
                Box::new(move |m| {
                    let e = m.0.entry(k).or_default();
                    e.extend_from_slice(&v);
                    int(e.len())
                }),
            ),
            6 => Step::Command(cmd(&[b"STRLEN", &k]), Box::new(move |m| int(m.0.get(&k).map_or(0, Vec::len)))),
            7 => Step::Command(
                cmd(&[b"SETNX", &k, &v]),
                Box::new(move |m| int(usize::from(!m.0.contains_key(&k) && m.0.insert(k, v).is_none()))),
            ),
            8 => Step::Command(
                cmd(&[b"SET", &k, &v, b"NX"]),
                Box::new(move |m| {
                    if m.0.contains_key(&k) {
                        return KvResult::Nil;
                    }
                    m.0.insert(k, v);
                    KvResult::Ok
                }),
            ),
            9 => Step::Command(
                cmd(&[b"SET", &k, &v, b"XX", b"GET"]),
                Box::new(move |m| {
                    let old = m.get(&k);
                    if let Some(slot) = m.0.get_mut(&k) {
                        *slot = v;
                    }
                    old
                }),
            ),
            10 => Step::Command(
                cmd(&[b"GETDEL", &k]),
                Box::new(move |m| {
                    let old = m.get(&k);
                    m.0.remove(&k);
                    old
                }),
            ),
            11 => {
                let v2 = value(u)?;
                Step::Command(
                    cmd(&[b"MSET", &k, &v, &k2, &v2]),
                    Box::new(move |m| {
                        m.0.insert(k, v);
                        m.0.insert(k2, v2);
                        KvResult::Ok
                    }),
                )
            }
            12 => Step::Command(
                cmd(&[b"MGET", &k, &k2]),
                Box::new(move |m| {
                    KvResult::Values([&k, &k2].iter().map(|k| m.0.get(*k).map(|v| Bytes::from(v.clone()))).collect())
                }),
            ),
            13 => Step::Command(cmd(&[b"DBSIZE"]), Box::new(move |m| int(m.0.len()))),
            14 => Step::Restore,
            15 => {
                let len = u.int_in_range(0..=64)?;
                Step::Raw(u.bytes(len)?.to_vec())
            }
            _ => {
                // Mostly a real image with a few bytes changed, so that decoding gets past the header.
                let mut image = store_image_hint(u)?;
                for _ in 0..u.int_in_range(0..=3)? {
                    if !image.is_empty() {
                        let at = u.choose_index(image.len())?;
                        image[at] = u.arbitrary()?;
                    }
                }
                Step::Image(image)
            }
        })
    }
}

/// An image to damage: a small real store's, or raw bytes.
fn store_image_hint(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    if u.arbitrary()? {
        let len = u.int_in_range(0..=96)?;
        return Ok(u.bytes(len)?.to_vec());
    }
    let mut kv = KvStore::new();
    for i in 0..u.int_in_range(0u64..=3)? {
        let op =
            raft_driver_std::raftkv::store::KvOp::IncrBy { key: Bytes::from(vec![b'k'; i as usize + 1]), delta: 1 };
        kv.apply(i + 1, &KvRequest { session: 1 + i % 2, seq: i + 1, now_ms: 10, op }.encode());
    }
    Ok(kv.image().to_vec())
}

/// A value: a canonical decimal (so that INCRBY applies) or a short byte string (so that it
/// does not, mostly).
fn value(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    Ok(if u.arbitrary()? {
        i64::from(u.arbitrary::<i8>()?).to_string().into_bytes()
    } else {
        let len = u.int_in_range(0..=6)?;
        u.bytes(len)?.to_vec()
    })
}

/// Redis's rule for a counter: the value must be the canonical decimal of a 64-bit integer.
fn incr(m: &mut Model, key: Vec<u8>, delta: i64) -> KvResult {
    use raft_driver_std::raftkv::store::KvError;
    let current = match m.0.get(&key) {
        None => 0,
        Some(v) => match std::str::from_utf8(v).ok().and_then(|s| s.parse::<i64>().ok().filter(|n| n.to_string() == s))
        {
            Some(n) => n,
            None => return KvResult::Error(KvError::NotAnInteger),
        },
    };
    let Some(new) = current.checked_add(delta) else { return KvResult::Error(KvError::IncrementOverflow) };
    m.0.insert(key, new.to_string().into_bytes());
    KvResult::Integer(new)
}

/// Parses and applies one command as the server and the driver would: no session, the leader's
/// clock fixed.
fn apply(store: &mut KvStore, index: u64, args: &[Bytes]) -> KvResult {
    let op = match parse_command(args) {
        Ok(ParsedCommand::Replicate(op)) => op,
        other => panic!("{:?} does not parse to a log operation: {other:?}", printable(args)),
    };
    let request = KvRequest { session: 0, seq: 0, now_ms: 1_000_000, op };
    store.apply(index, &request.encode())
}

fn printable(args: &[Bytes]) -> Vec<String> {
    args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}
