//! The random streams: one per branch, seeded from its path in the fork tree.

/// SplitMix64: tiny, fast, and good enough to draw one token per step.
///
/// The field is the whole state: the sampler seeds it with `branch_seed`, its tests with a
/// constant.
#[derive(Debug, Clone)]
pub(super) struct SplitMix64(pub(super) u64);

impl SplitMix64 {
    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(super) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Seed of a branch's random stream from the session seed and the branch path.
pub(super) fn branch_seed(seed: u64, path: &[u32]) -> u64 {
    let mut mix = SplitMix64(seed ^ 0x5041_5244_4543_0001); // "PARDEC"
    let mut h = mix.next_u64();
    for &step in path {
        let mut m = SplitMix64(h ^ u64::from(step).wrapping_mul(0xA24B_AED4_963E_E407));
        h = m.next_u64();
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_seeds_differ_by_path_and_repeat_by_value() {
        assert_eq!(branch_seed(1, &[0, 1]), branch_seed(1, &[0, 1]));
        assert_ne!(branch_seed(1, &[0, 1]), branch_seed(1, &[0, 2]));
        assert_ne!(branch_seed(1, &[0, 1]), branch_seed(2, &[0, 1]));
        assert_ne!(branch_seed(1, &[1]), branch_seed(1, &[1, 0]));
    }
}
