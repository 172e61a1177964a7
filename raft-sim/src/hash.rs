//! Deterministic hashing for the simulator's own maps.

use std::hash::{BuildHasherDefault, Hasher};

/// Deterministic hasher (FxHash mixing plus a final avalanche). The standard `RandomState` is
/// seeded per process, which would make memo iteration order, and with it anything derived from
/// it, vary between runs; determinism is a project rule. The avalanche matters because
/// hashbrown picks buckets from the low bits and two bitsets often differ only in high bits.
#[derive(Default, Clone, Copy)]
pub struct FixedHasher {
    hash: u64,
}

impl FixedHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FixedHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn write_isize(&mut self, i: isize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // murmur3 fmix64
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// Builds [`FixedHasher`]s: the hasher state for deterministic maps and sets.
pub type FixedState = BuildHasherDefault<FixedHasher>;

/// A 64-bit content hash of `bytes`, a word at a time (FxHash mixing plus the avalanche): the
/// safety checks fingerprint every entry they see several times, so this is on the hot path.
pub fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = FixedHasher { hash: seed };
    h.write_usize(bytes.len());
    h.write(bytes);
    h.finish()
}
