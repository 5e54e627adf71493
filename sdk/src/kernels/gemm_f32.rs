//! f32 matrix product through the `gemm` crate (runtime-dispatched AVX2/FMA/AVX-512
//! micro-kernels; measured as the fastest f32 GEMM available to us on this CPU).

use crate::{Error, Result};

/// `c[m][n] = a[m][k] * b[k][n]`, all row-major and dense. `threads > 1` splits the work
/// over the current rayon pool.
pub fn matmul(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32], threads: usize) -> Result<()> {
    matmul_strided(m, n, k, a, b, c, n, threads)
}

/// Like [`matmul`], with the rows of `c` `ldc >= n` elements apart (a column block of a
/// wider matrix).
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
    threads: usize,
) -> Result<()> {
    let need = |x: usize, y: usize| x.checked_mul(y).ok_or_else(|| Error::Input("matrix size overflows".into()));
    let c_len =
        if m == 0 { 0 } else { need(m - 1, ldc)?.checked_add(n).ok_or_else(|| Error::Input("overflow".into()))? };
    if ldc < n || a.len() < need(m, k)? || b.len() < need(k, n)? || c.len() < c_len {
        return Err(Error::Input(format!(
            "matmul {m}x{k} * {k}x{n}: operands of {}, {} and {} elements are too short",
            a.len(),
            b.len(),
            c.len()
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        c.chunks_mut(ldc).take(m).for_each(|row| row.iter_mut().take(n).for_each(|v| *v = 0.0));
        return Ok(());
    }
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // With the test-only `slow-kernels` feature the product is computed twice (same
    // result), so the speed gate can be shown to catch a 2x slower GEMM.
    for _ in 0..super::GEMM_REPEAT {
        // SAFETY: the checks above guarantee that `a` holds m*k and `b` k*n elements and
        // that `c` reaches (m-1)*ldc + n, which is exactly what the strides below address
        // (row-major: column stride 1, row strides k, n and ldc). `c` is exclusively borrowed and does not alias
        // `a` or `b`. With read_dst = false, `c` is only written.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                ldc as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_naive_product_on_random_inputs() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for &(m, n, k) in &[(1, 1, 1), (7, 13, 5), (32, 961, 12), (10, 3, 128), (64, 50, 288)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            for threads in [1, 2] {
                let mut c = vec![f32::NAN; m * n];
                matmul(m, n, k, &a, &b, &mut c, threads).unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let want: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                        assert!((c[i * n + j] - want).abs() < 1e-4, "{m}x{n}x{k} at {i},{j}");
                    }
                }
            }
        }
        assert!(matmul(2, 2, 2, &[0.0; 3], &[0.0; 4], &mut [0.0; 4], 1).is_err());
    }
}
