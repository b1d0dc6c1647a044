//! Host-side token selection cost per branch and step: `cargo bench --bench argmax`.
//! (Printed numbers, not a pass/fail test.)

use std::time::Instant;

#[inline(never)]
fn max_only(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 16];
    let c = x.chunks_exact(16);
    for ch in c {
        for l in 0..16 {
            m[l] = if ch[l] > m[l] { ch[l] } else { m[l] };
        }
    }
    m.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

fn main() {
    for &n in &[49_152usize, 128_256, 262_144] {
        let logits: Vec<f32> =
            (0..n as u32).map(|i| ((i.wrapping_mul(2_654_435_761)) % 100_003) as f32 * 1e-3).collect();
        let reps = 2000;
        let t = Instant::now();
        let mut acc = 0;
        for _ in 0..reps {
            acc += pardec::session::argmax(std::hint::black_box(&logits));
        }
        let per = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
        let t = Instant::now();
        let mut m = 0.0;
        for _ in 0..reps {
            m += max_only(std::hint::black_box(&logits));
        }
        let per_max = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
        println!("argmax over {n:>7} logits: {per:8.1} µs  (a bare max pass: {per_max:.1} µs) [{acc} {m}]");
    }
}
