//! The deterministic randomness: a call's draws are a pure function of
//! (id, attempt, seed), so a fixture or a replay sees the same outcome and
//! latency every time, and a retry (next attempt) draws afresh.

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 over the given byte strings, in order.
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h = FNV_OFFSET;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    h
}

/// The hash a call's draws derive from.
pub fn call_hash(order_id: &str, attempt: u32, seed: &str) -> u64 {
    fnv1a64(&[
        order_id.as_bytes(),
        &[0],
        &attempt.to_le_bytes(),
        &[0],
        seed.as_bytes(),
    ])
}

/// splitmix64 stream.
pub struct Draws(u64);

impl Draws {
    pub fn new(seed: u64) -> Self {
        Draws(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// 0..100
    pub fn percent(&mut self) -> u32 {
        (self.next_u64() % 100) as u32
    }
}
