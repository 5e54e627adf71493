//! Pooling over CNHW planes (`planes = channels * batch` planes of `in_plane` elements).
//! Max pooling works on f32 and on u8 codes alike: quantization is monotonic, so the
//! max of the codes is the code of the max.

use super::Window;

/// Max pooling; padded cells are ignored.
pub fn max_pool<T: Copy + PartialOrd>(x: &[T], planes: usize, win: &Window, out: &mut [T]) {
    if win.padding == [0, 0] && win.kernel == win.stride && win.kernel == [2, 2] {
        return max_pool_2x2(x, planes, win, out);
    }
    let [oh, ow] = win.out_hw;
    let [kh, kw] = win.kernel;
    let iw = win.in_hw[1];
    for (src, dst) in x.chunks_exact(win.in_plane()).zip(out.chunks_exact_mut(win.out_plane())).take(planes) {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best: Option<T> = None;
                for ky in 0..kh {
                    let Some(iy) = win.src(0, oy, ky) else { continue };
                    for kx in 0..kw {
                        let Some(ix) = win.src(1, ox, kx) else { continue };
                        if let Some(&v) = src.get(iy * iw + ix) {
                            if best.is_none_or(|b| v > b) {
                                best = Some(v);
                            }
                        }
                    }
                }
                if let (Some(d), Some(b)) = (dst.get_mut(oy * ow + ox), best) {
                    *d = b;
                }
            }
        }
    }
}

/// The common 2x2, stride 2, unpadded case: no window bookkeeping per element.
fn max_pool_2x2<T: Copy + PartialOrd>(x: &[T], planes: usize, win: &Window, out: &mut [T]) {
    let max = |a: T, b: T| if b > a { b } else { a };
    let [oh, ow] = win.out_hw;
    let iw = win.in_hw[1];
    for (src, dst) in x.chunks_exact(win.in_plane()).zip(out.chunks_exact_mut(win.out_plane())).take(planes) {
        for (oy, drow) in dst.chunks_exact_mut(ow).enumerate().take(oh) {
            let (r0, r1) = (src.get(2 * oy * iw..).unwrap_or(&[]), src.get((2 * oy + 1) * iw..).unwrap_or(&[]));
            for ((d, a), b) in drow.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
                if let ([a0, a1], [b0, b1]) = (a, b) {
                    *d = max(max(*a0, *a1), max(*b0, *b1));
                }
            }
        }
    }
}

/// Average pooling: calls `emit(index, mean)` for every output element, where padded
/// cells count as `pad` (PyTorch's `count_include_pad`).
pub fn avg_pool<T: Copy + Into<f32>>(x: &[T], planes: usize, win: &Window, pad: f32, mut emit: impl FnMut(usize, f32)) {
    let [oh, ow] = win.out_hw;
    let [kh, kw] = win.kernel;
    let iw = win.in_hw[1];
    let area = (kh * kw) as f32;
    for (p, src) in x.chunks_exact(win.in_plane()).take(planes).enumerate() {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut sum = 0.0f32;
                for ky in 0..kh {
                    for kx in 0..kw {
                        sum += match (win.src(0, oy, ky), win.src(1, ox, kx)) {
                            (Some(iy), Some(ix)) => src.get(iy * iw + ix).map(|&v| v.into()).unwrap_or(pad),
                            _ => pad,
                        };
                    }
                }
                emit((p * oh + oy) * ow + ox, sum / area);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_2x2_fast_path_matches_the_general_one() {
        // 31 -> 15 (the odd last row and column are dropped), two planes.
        let win = Window { in_hw: [31, 31], out_hw: [15, 15], kernel: [2, 2], stride: [2, 2], padding: [0, 0] };
        let x: Vec<f32> = (0..2 * 961).map(|v| ((v * 7919) % 1013) as f32).collect();
        let mut fast = vec![0.0; 2 * 225];
        max_pool(&x, 2, &win, &mut fast);
        for p in 0..2 {
            for oy in 0..15 {
                for ox in 0..15 {
                    let at = |y: usize, x2: usize| x[p * 961 + y * 31 + x2];
                    let want = at(2 * oy, 2 * ox)
                        .max(at(2 * oy, 2 * ox + 1))
                        .max(at(2 * oy + 1, 2 * ox))
                        .max(at(2 * oy + 1, 2 * ox + 1));
                    assert_eq!(fast[p * 225 + oy * 15 + ox], want);
                }
            }
        }
    }

    #[test]
    fn pools_a_small_plane() {
        // Two 3x3 planes, 2x2 windows, stride 2, padding 1 -> 2x2 outputs.
        let win = Window { in_hw: [3, 3], out_hw: [2, 2], kernel: [2, 2], stride: [2, 2], padding: [1, 1] };
        let x: Vec<f32> = (0..18).map(|v| v as f32).collect();
        let mut out = vec![0.0; 8];
        max_pool(&x, 2, &win, &mut out);
        assert_eq!(out, vec![0.0, 2.0, 6.0, 8.0, 9.0, 11.0, 15.0, 17.0]);
        let xq: Vec<u8> = (0..18).map(|v| 200 - v as u8).collect();
        let mut outq = vec![0u8; 8];
        max_pool(&xq, 2, &win, &mut outq);
        assert_eq!(outq, vec![200, 199, 197, 196, 191, 190, 188, 187]);
        let mut avg = [0.0; 8];
        avg_pool(&x, 2, &win, 0.0, |i, v| avg[i] = v);
        assert_eq!(avg[0], 0.0 / 4.0);
        assert_eq!(avg[3], (4.0 + 5.0 + 7.0 + 8.0) / 4.0);
        assert_eq!(avg[1], (1.0 + 2.0) / 4.0);
    }
}
