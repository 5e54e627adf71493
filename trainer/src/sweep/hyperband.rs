//! Early termination: asynchronous successive halving, the rule W&B's `hyperband`
//! early-terminate runs (Li et al., "A System for Massively Parallel Hyperparameter
//! Tuning", 2020).
//!
//! Rungs sit at epochs `min_iter * eta^k`. When a trial reports its metric at a rung, it
//! goes on only if that value is among the best `ceil(n / eta)` of the `n` values all
//! trials reported at that rung so far (itself included). Nothing waits for a rung to
//! fill: the first trial at a rung always goes on, and a trial that started later is
//! judged against everything recorded before it. With trials run one after another the
//! decisions are deterministic.

use super::spec::Goal;

/// The rule's parameters.
#[derive(Debug, Clone, Copy)]
pub struct Halving {
    pub min_iter: usize,
    pub eta: usize,
    pub goal: Goal,
}

impl Halving {
    /// Whether `epoch` is a rung.
    pub fn is_rung(&self, epoch: usize) -> bool {
        let mut r = self.min_iter;
        while r <= epoch {
            if r == epoch {
                return true;
            }
            r = match r.checked_mul(self.eta) {
                Some(next) => next,
                None => return false,
            };
        }
        false
    }

    /// Whether a trial whose value at a rung is `value` goes on, given `others` (the
    /// values every other trial recorded at the same rung).
    pub fn keeps(&self, value: f64, others: &[f64]) -> bool {
        if !value.is_finite() {
            return false;
        }
        let n = others.len() + 1;
        let keep = n.div_ceil(self.eta).max(1);
        let better = others
            .iter()
            .filter(|o| match self.goal {
                Goal::Maximize => **o > value,
                Goal::Minimize => **o < value,
            })
            .count();
        better < keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rungs_are_powers_of_eta() {
        let h = Halving { min_iter: 1, eta: 2, goal: Goal::Maximize };
        let rungs: Vec<usize> = (0..20).filter(|e| h.is_rung(*e)).collect();
        assert_eq!(rungs, vec![1, 2, 4, 8, 16]);
        let h = Halving { min_iter: 2, eta: 3, goal: Goal::Maximize };
        assert_eq!((0..40).filter(|e| h.is_rung(*e)).collect::<Vec<_>>(), vec![2, 6, 18]);
    }

    #[test]
    fn the_best_share_goes_on() {
        let h = Halving { min_iter: 1, eta: 2, goal: Goal::Maximize };
        assert!(h.keeps(0.1, &[]), "the first trial at a rung goes on");
        assert!(!h.keeps(0.4, &[0.5]), "1 of 2 goes on: the better one");
        assert!(h.keeps(0.6, &[0.5]));
        assert!(h.keeps(0.5, &[0.5]), "ties go on");
        assert!(h.keeps(0.45, &[0.5, 0.4]), "2 of 3 go on");
        assert!(!h.keeps(0.3, &[0.5, 0.4]));
        assert!(!h.keeps(f64::NAN, &[]), "a diverged trial stops");
        let h = Halving { goal: Goal::Minimize, ..h };
        assert!(h.keeps(0.4, &[0.5]) && !h.keeps(0.6, &[0.5]));
    }
}
