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

/// Knowledge distillation's loss: `T^2 * mean over the batch of KL(softmax(teacher / T)
/// || softmax(student / T))` (the `T^2` keeps its gradients' scale independent of `T`).
pub fn distillation_loss(student: &Tensor, teacher: &Tensor, temperature: f64) -> candle_core::Result<Tensor> {
    let ls = candle_nn::ops::log_softmax(&(student / temperature)?, D::Minus1)?;
    let lt = candle_nn::ops::log_softmax(&(teacher.detach() / temperature)?, D::Minus1)?;
    let kl = (lt.exp()? * (lt - ls)?)?.sum(D::Minus1)?.mean_all()?;
    kl * (temperature * temperature)
}

/// What computes a teacher's logits.
pub enum TeacherNet {
    /// The teacher compiled to int8 and run by the SDK (training on the CPU: several
    /// times faster than the trainer's forward pass).
    Sdk(cifar_sdk::Session),
    /// The trainer's own forward pass in evaluation mode (training on a GPU).
    Trainer(Box<dyn Network>),
}

/// A trained net whose logits the step's net also learns from (`train.distill_from`).
pub struct Teacher {
    pub net: TeacherNet,
    pub weight: f64,
    pub temperature: f64,
}

impl Teacher {
    /// The teacher's logits `[N, classes]` for the batch `x` (on `x`'s device).
    pub fn logits(&mut self, x: &Tensor) -> Result<Tensor> {
        match &mut self.net {
            TeacherNet::Sdk(session) => {
                let n = x.dim(0)?;
                let logits = session.logits_nchw(&x.flatten_all()?.to_vec1::<f32>()?, n)?;
                let classes = logits.len() / n.max(1);
                Ok(Tensor::from_vec(logits, (n, classes), x.device())?)
            }
            TeacherNet::Trainer(net) => net.forward(x, false),
        }
    }
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
    /// `Some` when `train.distill_from` names a run.
    pub teacher: Option<Teacher>,
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
            teacher: None,
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
        let mut loss = smoothed_cross_entropy(&logits, y, self.cfg.label_smoothing)?;
        if let Some(t) = &mut self.teacher {
            let target = t.logits(x)?;
            let kd = distillation_loss(&logits, &target, t.temperature)?;
            loss = ((loss * (1.0 - t.weight))? + (kd * t.weight)?)?;
        }
        let grads = loss.backward()?;
        self.sgd.step(net.params(), &grads, lr)?;
        if let Some(la) = &mut self.lookahead {
            la.update(net.params(), step + 1, self.total_steps)?;
        }
        Ok(StepOut { loss: loss.to_scalar::<f32>()? as f64, lr, grads })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The distillation term against a direct computation, and zero when the student
    /// already matches its teacher.
    #[test]
    fn distillation_loss_is_temperature_scaled_kl() {
        let dev = Device::Cpu;
        let s = Tensor::new(&[[1.0f32, 2.0, 0.5], [0.0, -1.0, 3.0]], &dev).unwrap();
        let t = Tensor::new(&[[2.0f32, 0.0, 1.0], [1.0, 1.0, 1.0]], &dev).unwrap();
        let temp = 2.0;
        let got = distillation_loss(&s, &t, temp).unwrap().to_scalar::<f32>().unwrap();
        let softmax = |v: &[f32]| {
            let e: Vec<f64> = v.iter().map(|x| (f64::from(*x) / temp).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(|x| x / z).collect::<Vec<_>>()
        };
        let (sv, tv) = (s.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
        let kl: f64 = sv
            .iter()
            .zip(&tv)
            .map(|(a, b)| {
                let (p, q) = (softmax(b), softmax(a));
                p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum::<f64>()
            })
            .sum::<f64>()
            / 2.0;
        assert!((f64::from(got) - temp * temp * kl).abs() < 1e-5, "{got} vs {}", temp * temp * kl);
        let same = distillation_loss(&s, &s, temp).unwrap().to_scalar::<f32>().unwrap();
        assert!(same.abs() < 1e-6, "{same}");
    }
}
