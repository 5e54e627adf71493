//! One training step, the same code for `trainer fit` and `trainer trace`: the step's
//! learning rate, forward, loss, backward, the SGD update (with the stem bias frozen
//! after `train.whiten_bias_epochs`) and airbench's lookahead.

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, D};

use crate::config::TrainConfig;
use crate::model::{airbench::WHITEN_BIAS, Network};
use crate::optim::{lr_at, Lookahead, Sgd};

/// Cross-entropy with label smoothing `eps`: `(1 - eps) * nll + eps * mean(-log p)`,
/// averaged over the batch (PyTorch's `label_smoothing`; airbench sums over the batch
/// instead, which our learning rates absorb).
pub fn smoothed_cross_entropy(logits: &Tensor, labels: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = logp.gather(&labels.unsqueeze(1)?, 1)?.neg()?.mean_all()?;
    if eps == 0.0 {
        return Ok(nll);
    }
    let smooth = logp.mean(D::Minus1)?.neg()?.mean_all()?;
    (nll * (1.0 - eps))? + (smooth * eps)?
}

/// What a step reports.
pub struct StepOut {
    /// The batch's mean loss before the update.
    pub loss: f64,
    pub lr: f64,
    /// Gradients of the loss (before the update).
    pub grads: GradStore,
}

/// The optimizer state of a run and the schedule it follows.
pub struct Stepper {
    pub cfg: TrainConfig,
    pub sgd: Sgd,
    /// `Some` when `train.lookahead` is on.
    pub lookahead: Option<Lookahead>,
    pub total_steps: usize,
    pub steps_per_epoch: usize,
}

impl Stepper {
    /// The state for a run of `cfg.epochs` over `train_images` images (whole batches
    /// only: the last partial batch of an epoch is dropped).
    pub fn for_run(cfg: &TrainConfig, train_images: usize) -> Self {
        let steps_per_epoch = (train_images / cfg.batch_size.max(1)).max(1);
        // Rounded up, as airbench's `ceil(len(loader) * epochs)`.
        let total_steps = ((cfg.epochs * steps_per_epoch as f64 - 1e-9).ceil() as usize).max(1);
        Self {
            cfg: cfg.clone(),
            sgd: Sgd::new(cfg),
            lookahead: cfg.lookahead.then(Lookahead::default),
            total_steps,
            steps_per_epoch,
        }
    }

    /// Trains on one batch as step `step` (0-based) of the run.
    pub fn step(&mut self, net: &dyn Network, x: &Tensor, y: &Tensor, step: usize) -> Result<StepOut> {
        let lr = lr_at(&self.cfg, step, self.total_steps, self.steps_per_epoch);
        let epoch = step / self.steps_per_epoch.max(1);
        let freeze = self.cfg.whiten_bias_epochs > 0 && epoch >= self.cfg.whiten_bias_epochs;
        self.sgd.frozen = if freeze { vec![WHITEN_BIAS.to_string()] } else { Vec::new() };
        if let Some(la) = &mut self.lookahead {
            la.start(net.params())?;
        }
        let logits = net.forward(x, true)?;
        let loss = smoothed_cross_entropy(&logits, y, self.cfg.label_smoothing)?;
        let grads = loss.backward()?;
        self.sgd.step(net.params(), &grads, lr)?;
        if let Some(la) = &mut self.lookahead {
            la.update(net.params(), step + 1, self.total_steps)?;
        }
        Ok(StepOut { loss: loss.to_scalar::<f32>()? as f64, lr, grads })
    }
}
