//! The int8 matrix product: i8 weights times u8 activations, accumulated in i32.
//!
//! The activations are first packed into panels of 16 columns whose rows hold pairs of
//! consecutive-k values as i16 (`[panel][k/2][16 columns][2]`), so that one AVX2
//! `vpmaddwd` multiplies 16 pairs and adds each pair into an i32 lane: 16 exact
//! multiply-adds per instruction, no saturation (unlike `vpmaddubsw`, whose i16 pair sums
//! overflow for u8 x s8), accumulators in registers for the whole reduction. Sums of up
//! to 2^16 products fit in i32 (the graph validator caps the reduction length).
//!
//! The portable build runs the same packed layout with scalar loops; tests compare both
//! with a naive product.

/// Columns per panel.
pub const NR: usize = 16;
/// Rows per register block.
const MR: usize = 4;

/// Length of the packed buffer for `k x n` activations.
pub fn packed_len(k: usize, n: usize) -> usize {
    k.div_ceil(2) * 2 * n.div_ceil(NR) * NR
}

/// Packs `x` (`[k][n]` u8, row-major) into `out` (at least [`packed_len`] elements).
/// Columns past `n` and the odd row past `k` are zero.
pub fn pack(x: &[u8], k: usize, n: usize, out: &mut [i16]) {
    pack_block(x, k, n, 0, n, out)
}

/// Packs columns `c0..c0 + width` of `x` (`[k][ld]` u8, row-major) like [`pack`].
pub fn pack_block(x: &[u8], k: usize, ld: usize, c0: usize, width: usize, out: &mut [i16]) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: AVX2 was detected; the function's memory accesses are checked slices.
        unsafe { pack_block_avx2(x, k, ld, c0, width, out) };
        return;
    }
    pack_block_portable(x, k, ld, c0, width, out)
}

fn pack_block_portable(x: &[u8], k: usize, ld: usize, c0: usize, width: usize, out: &mut [i16]) {
    let k2 = k.div_ceil(2);
    for (p, panel) in out.chunks_exact_mut(k2 * 2 * NR).take(width.div_ceil(NR)).enumerate() {
        let n0 = c0 + p * NR;
        let nc = NR.min(c0 + width - n0);
        for (kp, dst) in panel.chunks_exact_mut(2 * NR).enumerate() {
            let row = |kk: usize| if kk < k { x.get(kk * ld + n0..kk * ld + n0 + nc).unwrap_or(&[]) } else { &[] };
            let (a, b) = (row(2 * kp), row(2 * kp + 1));
            for (j, pair) in dst.chunks_exact_mut(2).enumerate() {
                if let [lo, hi] = pair {
                    *lo = a.get(j).map_or(0, |&v| i16::from(v));
                    *hi = b.get(j).map_or(0, |&v| i16::from(v));
                }
            }
        }
    }
}

/// Full 16-column panels with both rows present interleave with four vector ops; the
/// ragged edges (last panel, odd last row) take the portable path.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn pack_block_avx2(x: &[u8], k: usize, ld: usize, c0: usize, width: usize, out: &mut [i16]) {
    use std::arch::x86_64::*;
    let k2 = k.div_ceil(2);
    let full = width / NR;
    for (p, panel) in out.chunks_exact_mut(k2 * 2 * NR).take(width.div_ceil(NR)).enumerate() {
        let n0 = c0 + p * NR;
        if p >= full {
            pack_block_portable(x, k, ld, n0, c0 + width - n0, panel);
            continue;
        }
        for (kp, dst) in panel.chunks_exact_mut(2 * NR).enumerate() {
            let a = x.get(2 * kp * ld + n0..2 * kp * ld + n0 + NR);
            let b = if 2 * kp + 1 < k { x.get((2 * kp + 1) * ld + n0..(2 * kp + 1) * ld + n0 + NR) } else { None };
            match (a, b, dst.get_mut(..2 * NR)) {
                (Some(a), Some(b), Some(d)) => {
                    // SAFETY: `a` and `b` hold 16 bytes each (one 128-bit load), `d` 32
                    // i16 (two 256-bit stores); all unaligned.
                    unsafe {
                        let za = _mm256_cvtepu8_epi16(_mm_loadu_si128(a.as_ptr().cast()));
                        let zb = _mm256_cvtepu8_epi16(_mm_loadu_si128(b.as_ptr().cast()));
                        let lo = _mm256_unpacklo_epi16(za, zb);
                        let hi = _mm256_unpackhi_epi16(za, zb);
                        _mm256_storeu_si256(d.as_mut_ptr().cast(), _mm256_permute2x128_si256(lo, hi, 0x20));
                        _mm256_storeu_si256(d.as_mut_ptr().add(NR).cast(), _mm256_permute2x128_si256(lo, hi, 0x31));
                    }
                }
                _ => {
                    for (j, pair) in dst.chunks_exact_mut(2).enumerate() {
                        if let [lo, hi] = pair {
                            *lo = a.and_then(|a| a.get(j)).map_or(0, |&v| i16::from(v));
                            *hi = b.and_then(|b| b.get(j)).map_or(0, |&v| i16::from(v));
                        }
                    }
                }
            }
        }
    }
}

/// Weight pairs of one row: `(w[2kp], w[2kp+1])` as two i16 in an i32.
#[inline(always)]
fn row_pair(row: &[i8], kp: usize) -> i32 {
    let lo = i16::from(row.get(2 * kp).copied().unwrap_or(0));
    let hi = i16::from(row.get(2 * kp + 1).copied().unwrap_or(0));
    i32::from(lo as u16) | (i32::from(hi as u16) << 16)
}

#[inline(always)]
fn portable<F: FnMut(usize, usize, &[i32])>(w: &[i8], xp: &[i16], m: usize, k: usize, n: usize, epi: &mut F) {
    let k2 = k.div_ceil(2);
    for (p, panel) in xp.chunks_exact(k2 * 2 * NR).take(n.div_ceil(NR)).enumerate() {
        let nc = NR.min(n - p * NR);
        for r in 0..m {
            let mut acc = [0i32; NR];
            let wr = w.get(r * k..(r + 1) * k).unwrap_or(&[]);
            for (kp, pairs) in panel.chunks_exact(2 * NR).enumerate() {
                let wp = row_pair(wr, kp);
                let (wl, wh) = (i32::from(wp as i16), i32::from((wp >> 16) as i16));
                for (a, pair) in acc.iter_mut().zip(pairs.chunks_exact(2)) {
                    if let [lo, hi] = pair {
                        *a += wl * i32::from(*lo) + wh * i32::from(*hi);
                    }
                }
            }
            epi(r, p * NR, acc.get(..nc).unwrap_or(&[]));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn avx2<F: FnMut(usize, usize, &[i32])>(
    w: &[i8],
    xp: &[i16],
    m: usize,
    k: usize,
    n: usize,
    wbuf: &mut [i32],
    epi: &mut F,
) {
    use std::arch::x86_64::*;
    let k2 = k.div_ceil(2);
    let panel_len = k2 * 2 * NR;
    let load = |pairs: &[i16]| match pairs.get(..2 * NR) {
        // SAFETY: `p` holds exactly 32 i16, i.e. two 32-byte vectors; unaligned loads
        // have no alignment requirement.
        Some(p) => unsafe { (_mm256_loadu_si256(p.as_ptr().cast()), _mm256_loadu_si256(p.as_ptr().add(NR).cast())) },
        None => (_mm256_setzero_si256(), _mm256_setzero_si256()),
    };
    let mut out = [0i32; NR];
    let mut emit = |r: usize, c0: usize, nc: usize, lo: __m256i, hi: __m256i, epi: &mut F| {
        if r < m {
            // SAFETY: `out` is 16 i32 = two 32-byte vectors; unaligned stores.
            unsafe {
                _mm256_storeu_si256(out.as_mut_ptr().cast(), lo);
                _mm256_storeu_si256(out.as_mut_ptr().add(8).cast(), hi);
            }
            epi(r, c0, out.get(..nc).unwrap_or(&[]));
        }
    };
    let wbuf = match wbuf.get_mut(..k2 * MR) {
        Some(b) => b,
        None => return portable(w, xp, m, k, n, epi),
    };
    let mut r0 = 0;
    while r0 < m {
        // The block's weight pairs, ready to broadcast: built once, used for every panel.
        for (kp, slot) in wbuf.chunks_exact_mut(MR).enumerate() {
            for (j, s) in slot.iter_mut().enumerate() {
                *s = if r0 + j < m { row_pair(w.get((r0 + j) * k..(r0 + j + 1) * k).unwrap_or(&[]), kp) } else { 0 };
            }
        }
        let wb: &[i32] = wbuf;
        for (p, panel) in xp.chunks_exact(panel_len).take(n.div_ceil(NR)).enumerate() {
            let (c0, nc) = (p * NR, NR.min(n - p * NR));
            let z = _mm256_setzero_si256();
            // Four rows x 16 columns: eight accumulators stay in registers.
            let (mut a0, mut b0, mut a1, mut b1, mut a2, mut b2, mut a3, mut b3) = (z, z, z, z, z, z, z, z);
            for (pairs, wq) in panel.chunks_exact(2 * NR).zip(wb.chunks_exact(MR)) {
                let (x0, x1) = load(pairs);
                if let [q0, q1, q2, q3] = *wq {
                    let v = _mm256_set1_epi32(q0);
                    a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(x0, v));
                    b0 = _mm256_add_epi32(b0, _mm256_madd_epi16(x1, v));
                    let v = _mm256_set1_epi32(q1);
                    a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(x0, v));
                    b1 = _mm256_add_epi32(b1, _mm256_madd_epi16(x1, v));
                    let v = _mm256_set1_epi32(q2);
                    a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(x0, v));
                    b2 = _mm256_add_epi32(b2, _mm256_madd_epi16(x1, v));
                    let v = _mm256_set1_epi32(q3);
                    a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(x0, v));
                    b3 = _mm256_add_epi32(b3, _mm256_madd_epi16(x1, v));
                }
            }
            emit(r0, c0, nc, a0, b0, epi);
            emit(r0 + 1, c0, nc, a1, b1, epi);
            emit(r0 + 2, c0, nc, a2, b2, epi);
            emit(r0 + 3, c0, nc, a3, b3, epi);
        }
        r0 += MR;
    }
}

/// Length of the weight-pair scratch [`qgemm`] needs for reductions of length `k`.
pub fn wbuf_len(k: usize) -> usize {
    k.div_ceil(2) * MR
}

/// Computes `acc[r][c] = sum_k w[r][k] * x[k][c]` for `w` `[m][k]` (row-major) and the
/// packed activations `xp` ([`pack`]) and hands each row's accumulators to
/// `epi(row, first_column, acc)` in blocks of up to 16 columns. `xp` shorter than
/// [`packed_len`] computes fewer columns. `wbuf` is scratch of [`wbuf_len`] elements.
pub fn qgemm<F: FnMut(usize, usize, &[i32])>(
    w: &[i8],
    xp: &[i16],
    m: usize,
    k: usize,
    n: usize,
    wbuf: &mut [i32],
    mut epi: F,
) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // The test-only `slow-kernels` feature computes the product an extra time first
        // (the speed gate's demonstration); normally this branch is compiled out.
        if super::GEMM_REPEAT > 1 {
            // `black_box` keeps the compiler from deleting the unused products.
            // SAFETY: AVX2 and FMA were detected on this CPU, the only requirement of the
            // target-feature function; its memory accesses are bounds-checked slices.
            unsafe {
                avx2(w, xp, m, k, n, wbuf, &mut |_: usize, _: usize, acc: &[i32]| {
                    std::hint::black_box(acc);
                })
            };
        }
        // SAFETY: AVX2 and FMA were detected on this CPU, the only requirement of the
        // target-feature function; its memory accesses are bounds-checked slices.
        unsafe { avx2(w, xp, m, k, n, wbuf, &mut epi) };
        return;
    }
    let _ = wbuf;
    portable(w, xp, m, k, n, &mut epi)
}

/// The portable build, for tests that compare the two.
pub fn qgemm_portable<F: FnMut(usize, usize, &[i32])>(w: &[i8], xp: &[i16], m: usize, k: usize, n: usize, mut epi: F) {
    portable(w, xp, m, k, n, &mut epi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn run(w: &[i8], x: &[u8], m: usize, k: usize, n: usize, portable: bool) -> Vec<i32> {
        let mut xp = vec![-1i16; packed_len(k, n)];
        pack(x, k, n, &mut xp);
        let mut got = vec![i32::MIN; m * n];
        let mut store = |r: usize, c0: usize, acc: &[i32]| got[r * n + c0..r * n + c0 + acc.len()].copy_from_slice(acc);
        if portable {
            qgemm_portable(w, &xp, m, k, n, &mut store);
        } else {
            qgemm(w, &xp, m, k, n, &mut vec![0; wbuf_len(k)], &mut store);
        }
        got
    }

    #[test]
    fn matches_the_naive_product_in_both_builds() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for &(m, k, n) in &[(1, 1, 1), (5, 27, 300), (64, 1152, 9), (10, 128, 1), (7, 3, 513), (9, 216, 47)] {
            let w: Vec<i8> = (0..m * k).map(|_| rng.gen()).collect();
            let x: Vec<u8> = (0..k * n).map(|_| rng.gen()).collect();
            let want: Vec<i32> = (0..m * n)
                .map(|i| (0..k).map(|p| i32::from(w[(i / n) * k + p]) * i32::from(x[p * n + i % n])).sum())
                .collect();
            for portable in [false, true] {
                assert_eq!(run(&w, &x, m, k, n, portable), want, "{m}x{k}x{n} portable={portable}");
            }
        }
    }

    #[test]
    fn both_packers_agree() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(10);
        for &(k, ld, c0, width) in
            &[(5, 40, 0, 40), (6, 70, 3, 50), (1, 16, 0, 16), (216, 961, 0, 961), (7, 33, 17, 16)]
        {
            let x: Vec<u8> = (0..k * ld).map(|_| rng.gen()).collect();
            let mut a = vec![-7i16; packed_len(k, width)];
            let mut b = vec![-9i16; packed_len(k, width)];
            pack_block(&x, k, ld, c0, width, &mut a);
            pack_block_portable(&x, k, ld, c0, width, &mut b);
            assert_eq!(a, b, "k {k} ld {ld} c0 {c0} width {width}");
        }
    }

    #[test]
    fn extreme_operands_do_not_overflow() {
        // 255 * -128 summed over a long reduction: i16 pair sums would saturate.
        let k = 1 << 12;
        for portable in [false, true] {
            let got = run(&vec![-128i8; k], &vec![255u8; k], 1, k, 1, portable);
            assert_eq!(got, vec![-128 * 255 * k as i32]);
        }
    }
}
