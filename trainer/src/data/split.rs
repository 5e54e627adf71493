//! The validation split: a seeded, class-balanced sample of the training images.

use anyhow::{ensure, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Chooses `size` training images for validation, the same number from every class
/// (the remainder goes to the lowest class indices), each class shuffled with a seed
/// derived from `seed`. Returns sorted indices.
pub fn class_balanced(labels: &[u8], classes: usize, size: usize, seed: u64) -> Result<Vec<u32>> {
    if size == 0 {
        return Ok(Vec::new());
    }
    let mut by_class: Vec<Vec<u32>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i as u32);
    }
    let (per, extra) = (size / classes, size % classes);
    let mut out = Vec::with_capacity(size);
    for (c, members) in by_class.iter_mut().enumerate() {
        let want = per + usize::from(c < extra);
        ensure!(
            want < members.len() || (want == 0),
            "cannot hold out {want} validation images of class {c}: it has only {} (lower --val-size)",
            members.len()
        );
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(c as u64 + 1)));
        members.shuffle(&mut rng);
        out.extend_from_slice(&members[..want]);
    }
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_deterministic_and_seed_dependent() {
        let labels: Vec<u8> = (0..1000).map(|i| (i % 10) as u8).collect();
        let a = class_balanced(&labels, 10, 105, 7).unwrap();
        assert_eq!(a, class_balanced(&labels, 10, 105, 7).unwrap());
        assert_ne!(a, class_balanced(&labels, 10, 105, 8).unwrap());
        assert_eq!(a.len(), 105);
        let mut counts = [0; 10];
        for &i in &a {
            counts[labels[i as usize] as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c == 10 || c == 11), "{counts:?}");
        assert!(a.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn refuses_a_split_larger_than_a_class() {
        let labels = vec![0u8, 0, 1, 1];
        assert!(class_balanced(&labels, 2, 4, 0).is_err());
    }
}
