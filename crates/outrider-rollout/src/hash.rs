//! Deterministic hashing: a fast hasher for the planner's maps (no random state, so the same
//! input is processed the same way every time) and a stable hash of names.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

/// A multiply-rotate hasher (the `FxHash` scheme): much faster than SipHash on the small
/// integer keys and short names the planner hashes millions of times. Not DoS-resistant, which
/// does not matter here: the keys come from the fleet the manager already admitted.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// The 64-bit FNV-1a hash of `name`: stable across runs, platforms and releases, and spread
/// well enough that picking by it is not picking alphabetically.
pub(crate) fn stable_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_fnv1a() {
        // Reference values of FNV-1a 64.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn fast_map_works_with_str_lookups() {
        let mut m: FastMap<String, u32> = FastMap::default();
        m.insert("boe".into(), 1);
        m.insert("a-longer-region-name".into(), 2);
        assert_eq!(m.get("boe"), Some(&1));
        assert_eq!(m.get("a-longer-region-name"), Some(&2));
        assert_eq!(m.get("sg"), None);
    }
}
