//! The greedy pick over a full logit row, vectorised: it runs once per branch per step over
//! the whole vocabulary.

/// Index of the largest logit (first on ties; NaN never wins). This runs once per branch
/// per step over the whole vocabulary and must stay small next to a decode step (a GPU step
/// takes 1–5 ms; README "Measured"), so it uses AVX2 where the CPU has it (checked once at run time; the portable build
/// targets baseline x86-64 without it).
pub fn argmax(logits: &[f32]) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { argmax_avx2(logits) };
        }
    }
    argmax_lanes(logits)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn argmax_avx2(logits: &[f32]) -> usize {
    argmax_lanes(logits)
}

/// Two vector-friendly passes: the maximum over independent lanes, then the first chunk
/// holding it (tested branch-free per chunk). Keeping an index per lane in one pass defeats
/// auto-vectorisation and measured ~9× slower here.
#[inline(always)]
fn argmax_lanes(logits: &[f32]) -> usize {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for chunk in logits.chunks_exact(LANES) {
        for l in 0..LANES {
            lanes[l] = if chunk[l] > lanes[l] { chunk[l] } else { lanes[l] };
        }
    }
    let mut max = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let tail_start = logits.len() - logits.len() % LANES;
    for &v in &logits[tail_start..] {
        max = if v > max { v } else { max };
    }
    if max == f32::NEG_INFINITY {
        // Every value is NaN or -inf: the plain scan's answer.
        return scalar_argmax(logits, 0);
    }
    for (c, chunk) in logits.chunks_exact(LANES).enumerate() {
        if chunk.iter().fold(false, |hit, &v| hit | (v == max)) {
            return c * LANES + chunk.iter().position(|&v| v == max).unwrap_or(0);
        }
    }
    tail_start + logits[tail_start..].iter().position(|&v| v == max).unwrap_or(0)
}

/// Largest value (NaN ignored), over 16 independent lanes so that it vectorises: a single
/// running maximum is a serial chain the compiler may not reorder.
#[inline(always)]
pub(super) fn lanes_max(values: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for l in 0..LANES {
            lanes[l] = if chunk[l] > lanes[l] { chunk[l] } else { lanes[l] };
        }
    }
    let tail = chunks.remainder().iter();
    lanes.iter().chain(tail).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

fn scalar_argmax(values: &[f32], offset: usize) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    offset + best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_matches_scalar_scan_and_prefers_first_tie() {
        let mut v: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1013) as f32 * 0.01).collect();
        assert_eq!(argmax(&v), scalar_argmax(&v, 0));
        v[3] = 100.0;
        v[700] = 100.0;
        assert_eq!(argmax(&v), 3);
        v[999] = 101.0;
        assert_eq!(argmax(&v), 999);
        assert_eq!(argmax(&[1.0, 3.0, 2.0]), 1);
        // Lengths that are multiples of the lane count have no scalar tail.
        let mut w = vec![0.0f32; 64];
        w[63] = 1.0;
        assert_eq!(argmax(&w), 63);
        // Ties resolve to the first index, across lanes and the tail.
        let mut t = vec![0.0f32; 37];
        t[20] = 5.0;
        t[3] = 5.0;
        t[36] = 5.0;
        assert_eq!(argmax(&t), 3);
        let mut n = vec![f32::NAN; 40];
        n[33] = -1.0;
        assert_eq!(argmax(&n), 33);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 20]), 0);
        let big: Vec<f32> = (0..262_144u32).map(|i| ((i.wrapping_mul(2_654_435_761)) % 100_003) as f32).collect();
        assert_eq!(argmax(&big), scalar_argmax(&big, 0));
    }
}
