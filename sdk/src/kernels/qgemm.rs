//! The int8 matrix product: i8 weights times u8 activations, accumulated in i32.
//!
//! Each u8 x i8 product fits in i16 (at most 255 * 128 in magnitude), so the inner
//! loop multiplies in 16 bits and widens once, which the compiler turns into packed
//! 16-bit multiplies; sums of up to 2^16 products fit in i32 (the graph validator caps
//! the reduction length). The same body is compiled for AVX2 and for the baseline
//! target and chosen at run time.

/// Rows per register block.
const MR: usize = 4;
/// Columns per block (the accumulators, MR x NC i32, stay in L1).
const NC: usize = 256;

#[inline(always)]
fn body<F: FnMut(usize, usize, &[i32])>(w: &[i8], x: &[u8], m: usize, k: usize, n: usize, epi: &mut F) {
    let mut acc = [[0i32; NC]; MR];
    let mut c0 = 0;
    while c0 < n {
        let nc = NC.min(n - c0);
        let mut r0 = 0;
        while r0 < m {
            let mr = MR.min(m - r0);
            for a in acc.iter_mut() {
                a.fill(0);
            }
            for kk in 0..k {
                let xr = x.get(kk * n + c0..kk * n + c0 + nc).unwrap_or(&[]);
                for (r, a) in acc.iter_mut().enumerate().take(mr) {
                    let wv = i16::from(w.get((r0 + r) * k + kk).copied().unwrap_or(0));
                    for (a, &xv) in a.iter_mut().zip(xr) {
                        *a += i32::from(wv * i16::from(xv));
                    }
                }
            }
            for (r, a) in acc.iter().enumerate().take(mr) {
                epi(r0 + r, c0, a.get(..nc).unwrap_or(&[]));
            }
            r0 += MR;
        }
        c0 += NC;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn body_avx2<F: FnMut(usize, usize, &[i32])>(w: &[i8], x: &[u8], m: usize, k: usize, n: usize, epi: &mut F) {
    body(w, x, m, k, n, epi)
}

/// Computes `acc[r][c] = sum_k w[r][k] * x[k][c]` for `w` `[m][k]` and `x` `[k][n]`
/// (row-major) and hands each row's accumulators to `epi(row, first_column, acc)` in
/// blocks of up to 256 columns. Missing elements of short slices count as 0.
pub fn qgemm<F: FnMut(usize, usize, &[i32])>(w: &[i8], x: &[u8], m: usize, k: usize, n: usize, mut epi: F) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: AVX2 and FMA were detected on this CPU, the only requirement of the
        // target-feature function; the body itself is safe code.
        unsafe { body_avx2(w, x, m, k, n, &mut epi) };
        return;
    }
    body(w, x, m, k, n, &mut epi)
}

/// The portable build, for tests that compare the two.
pub fn qgemm_portable<F: FnMut(usize, usize, &[i32])>(w: &[i8], x: &[u8], m: usize, k: usize, n: usize, mut epi: F) {
    body(w, x, m, k, n, &mut epi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_the_naive_product_in_both_builds() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for &(m, k, n) in &[(1, 1, 1), (5, 27, 300), (64, 1152, 9), (10, 128, 1), (7, 3, 513)] {
            let w: Vec<i8> = (0..m * k).map(|_| rng.gen()).collect();
            let mut x: Vec<u8> = (0..k * n).map(|_| rng.gen()).collect();
            // Extremes: the largest products must not overflow.
            if let Some(v) = x.first_mut() {
                *v = 255;
            }
            let want: Vec<i32> = (0..m * n)
                .map(|i| (0..k).map(|p| i32::from(w[(i / n) * k + p]) * i32::from(x[p * n + i % n])).sum())
                .collect();
            for portable in [false, true] {
                let mut got = vec![i32::MIN; m * n];
                let mut store =
                    |r: usize, c0: usize, acc: &[i32]| got[r * n + c0..r * n + c0 + acc.len()].copy_from_slice(acc);
                if portable {
                    qgemm_portable(&w, &x, m, k, n, &mut store);
                } else {
                    qgemm(&w, &x, m, k, n, &mut store);
                }
                assert_eq!(got, want, "{m}x{k}x{n} portable={portable}");
            }
        }
        // All-extreme operands: 255 * -128 summed over the longest allowed reduction.
        let k = 1 << 12;
        let mut total = 0;
        qgemm(&vec![-128i8; k], &vec![255u8; k], 1, k, 1, |_, _, a: &[i32]| total = a[0]);
        assert_eq!(total, -128 * 255 * k as i32);
    }
}
