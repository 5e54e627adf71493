//! im2col for CNHW activations: `cols[(c, ky, kx)][(n, oy, ox)]`, padded cells filled
//! with `pad` (0.0 for f32; the zero point for u8, which encodes 0.0 exactly).

use super::Window;

/// Fills `cols` (`channels * kh * kw` rows of `batch * out_plane` columns) from the
/// `channels` planes of `x` (`[channels][batch][in_plane]`). Slices that are too short
/// leave the rest of `cols` untouched (the plan sizes them; see the tests).
pub fn im2col<T: Copy>(x: &[T], channels: usize, batch: usize, win: &Window, pad: T, cols: &mut [T]) {
    im2col_images(x, channels, batch, 0..batch, win, pad, cols)
}

/// Like [`im2col`] for the images `images` of an `x` holding `x_batch` images per
/// channel: `cols` gets `images.len() * out_plane` columns. Convolving a batch a few
/// images at a time keeps the im2col matrix in cache.
pub fn im2col_images<T: Copy>(
    x: &[T],
    channels: usize,
    x_batch: usize,
    images: std::ops::Range<usize>,
    win: &Window,
    pad: T,
    cols: &mut [T],
) {
    let batch = images.len();
    let [kh, kw] = win.kernel;
    let [oh, ow] = win.out_hw;
    let [_, iw] = win.in_hw;
    let (in_plane, out_plane) = (win.in_plane(), win.out_plane());
    let ncols = batch * out_plane;
    let mut rows = cols.chunks_exact_mut(ncols.max(1));
    for c in 0..channels {
        let first = c * x_batch + images.start;
        let xc = x.get(first * in_plane..(first + batch) * in_plane).unwrap_or(&[]);
        for ky in 0..kh {
            for kx in 0..kw {
                let Some(row) = rows.next() else { return };
                for (dst, src) in row.chunks_exact_mut(out_plane).zip(xc.chunks_exact(in_plane)) {
                    for oy in 0..oh {
                        let drow = dst.get_mut(oy * ow..(oy + 1) * ow).unwrap_or(&mut []);
                        match win.src(0, oy, ky) {
                            None => drow.fill(pad),
                            Some(iy) => {
                                let srow = src.get(iy * iw..(iy + 1) * iw).unwrap_or(&[]);
                                if win.stride[1] == 1 {
                                    // A contiguous run: pad the edges, copy the middle.
                                    let pw = win.padding[1];
                                    let lo = pw.saturating_sub(kx).min(ow);
                                    let hi = (iw + pw).saturating_sub(kx).clamp(lo, ow);
                                    let (left, rest) = drow.split_at_mut(lo);
                                    let (mid, right) = rest.split_at_mut(hi - lo);
                                    left.fill(pad);
                                    right.fill(pad);
                                    let s0 = lo + kx - pw;
                                    match srow.get(s0..s0 + mid.len()) {
                                        Some(s) => mid.copy_from_slice(s),
                                        None => mid.fill(pad),
                                    }
                                } else {
                                    for (ox, d) in drow.iter_mut().enumerate() {
                                        *d = win.src(1, ox, kx).and_then(|ix| srow.get(ix).copied()).unwrap_or(pad);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(h: usize, w: usize, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) {
        let (c, b) = (2, 3);
        let oh = (h + 2 * padding[0] - kernel[0]) / stride[0] + 1;
        let ow = (w + 2 * padding[1] - kernel[1]) / stride[1] + 1;
        let win = Window { in_hw: [h, w], out_hw: [oh, ow], kernel, stride, padding };
        let x: Vec<i32> = (0..(c * b * h * w) as i32).collect();
        let k = kernel[0] * kernel[1];
        let mut cols = vec![-7; c * k * b * oh * ow];
        im2col(&x, c, b, &win, -1, &mut cols);
        for ci in 0..c {
            for ky in 0..kernel[0] {
                for kx in 0..kernel[1] {
                    for n in 0..b {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let iy = (oy * stride[0] + ky) as isize - padding[0] as isize;
                                let ix = (ox * stride[1] + kx) as isize - padding[1] as isize;
                                let inside = iy >= 0 && iy < h as isize && ix >= 0 && ix < w as isize;
                                let want =
                                    if inside { x[((ci * b + n) * h + iy as usize) * w + ix as usize] } else { -1 };
                                let row = (ci * kernel[0] + ky) * kernel[1] + kx;
                                assert_eq!(cols[row * b * oh * ow + (n * oh + oy) * ow + ox], want);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn image_ranges_are_column_blocks_of_the_whole_batch() {
        let win = Window { in_hw: [5, 6], out_hw: [5, 6], kernel: [3, 3], stride: [1, 1], padding: [1, 1] };
        let (c, b) = (3, 4);
        let x: Vec<i32> = (0..(c * b * 30) as i32).collect();
        let mut all = vec![0; c * 9 * b * 30];
        im2col(&x, c, b, &win, -1, &mut all);
        let mut part = vec![0; c * 9 * 2 * 30];
        im2col_images(&x, c, b, 1..3, &win, -1, &mut part);
        for row in 0..c * 9 {
            assert_eq!(&part[row * 60..(row + 1) * 60], &all[row * 120 + 30..row * 120 + 90]);
        }
    }

    #[test]
    fn matches_direct_indexing() {
        check(5, 4, [3, 2], [2, 2], [1, 0]);
        check(6, 7, [3, 3], [1, 1], [1, 1]);
        check(6, 7, [2, 2], [1, 1], [0, 0]);
        check(4, 4, [1, 1], [2, 2], [0, 0]);
        check(3, 5, [3, 3], [1, 2], [2, 2]);
    }
}
