//! SGD with (Nesterov) momentum and L2 weight decay, per-group learning rates, the
//! learning-rate schedule, and an exponential moving average of the weights.
//!
//! candle-nn's SGD has no momentum, and its AdamW is not what fast CIFAR recipes use.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::Tensor;

use crate::config::{Schedule, TrainConfig};
use crate::model::{Group, Params};

/// Learning rate at `step` (0-based) of `total` steps.
pub fn lr_at(cfg: &TrainConfig, step: usize, total: usize, steps_per_epoch: usize) -> f64 {
    // Whole steps, rounded down, as airbench's `int(0.23 * total)`: the same count when
    // `warmup_epochs` is 23% of `epochs` (configs/gpu-speedrun.toml), up to rounding.
    let warmup = (cfg.warmup_epochs * steps_per_epoch as f64 + 1e-9).floor() as usize;
    let s = step as f64;
    if step < warmup {
        let t = s / warmup as f64;
        return cfg.lr * (cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * t);
    }
    let span = (total.saturating_sub(warmup)).max(1) as f64;
    let t = ((s - warmup as f64) / span).clamp(0.0, 1.0);
    let end = cfg.end_lr_factor;
    let f = match cfg.schedule {
        Schedule::Linear => 1.0 - (1.0 - end) * t,
        Schedule::Cosine => end + (1.0 - end) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
    };
    cfg.lr * f
}

/// SGD state: one momentum buffer per trainable parameter.
#[derive(Debug, Default)]
pub struct Sgd {
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub bias_lr_mult: f64,
    pub bias_weight_decay: f64,
    pub buffers: HashMap<String, Tensor>,
    /// Parameters left alone for now (airbench freezes the stem's bias after a few
    /// epochs): no update, no momentum, no decay, as PyTorch does for a parameter
    /// without a gradient.
    pub frozen: Vec<String>,
}

impl Sgd {
    pub fn new(cfg: &TrainConfig) -> Self {
        Self {
            momentum: cfg.momentum,
            nesterov: cfg.nesterov,
            weight_decay: cfg.weight_decay,
            bias_lr_mult: cfg.bias_lr_mult,
            bias_weight_decay: cfg.bias_weight_decay,
            buffers: HashMap::new(),
            frozen: Vec::new(),
        }
    }

    /// One update with learning rate `lr`:
    /// `g += wd * w; b = m * b + g; w -= lr * (nesterov ? g + m * b : b)`.
    pub fn step(&mut self, params: &Params, grads: &GradStore, lr: f64) -> Result<()> {
        for p in params.trainable() {
            if self.frozen.contains(&p.name) {
                continue;
            }
            let Some(g) = grads.get(p.var.as_tensor()) else { continue };
            // Gradients of candle's built-in ops can still carry a backprop graph; a
            // momentum buffer built from one would keep every step's graph (and its
            // activations) alive: gigabytes after a few hundred steps.
            let g = g.detach();
            let w = p.var.as_tensor();
            let (lr_p, wd) = match p.group {
                Group::Bias => (lr * self.bias_lr_mult, self.bias_weight_decay),
                _ => (lr, self.weight_decay),
            };
            let w = w.detach();
            let g = if wd > 0.0 { (g + (&w * wd)?)? } else { g };
            let update = if self.momentum > 0.0 {
                let buf = match self.buffers.get(&p.name) {
                    Some(b) => ((b * self.momentum)? + &g)?,
                    None => g.clone(),
                };
                let u = if self.nesterov { (&g + (&buf * self.momentum)?)? } else { buf.clone() };
                self.buffers.insert(p.name.clone(), buf);
                u
            } else {
                g
            };
            p.var.set(&(&w - (update * lr_p)?)?)?;
        }
        Ok(())
    }
}

/// Exponential moving average of every parameter (running statistics included).
#[derive(Debug, Default)]
pub struct Ema {
    pub decay: f64,
    pub every: usize,
    pub values: HashMap<String, Tensor>,
}

impl Ema {
    pub fn new(decay: f64, every: usize) -> Self {
        Self { decay, every: every.max(1), values: HashMap::new() }
    }

    pub fn enabled(&self) -> bool {
        self.decay > 0.0
    }

    /// Called after optimizer step number `step` (1-based count of steps done).
    pub fn update(&mut self, params: &Params, step: usize) -> Result<()> {
        if !self.enabled() || !step.is_multiple_of(self.every) {
            return Ok(());
        }
        let d = self.decay.powi(self.every as i32);
        for p in &params.list {
            let w = p.var.as_tensor();
            let v = match self.values.get(&p.name) {
                Some(e) => ((e * d)? + (w * (1.0 - d))?)?,
                None => w.copy()?,
            };
            self.values.insert(p.name.clone(), v.detach());
        }
        Ok(())
    }
}

/// Steps between two lookahead updates (airbench's `ema_update_freq`).
pub const LOOKAHEAD_EVERY: usize = 5;

/// airbench's lookahead: every [`LOOKAHEAD_EVERY`] steps a running average of the
/// weights moves toward them and the weights are reset to it. The average's memory grows
/// with the cube of training progress, `0.95^5 (step / total)^3`, so early training is
/// barely touched, and the last step leaves the weights at the average. Unlike
/// [`Ema`], it changes what the optimizer trains; running statistics are averaged too.
#[derive(Debug, Default)]
pub struct Lookahead {
    pub values: HashMap<String, Tensor>,
}

impl Lookahead {
    /// The average's weight on its past after step `step` of `total`.
    pub fn decay(step: usize, total: usize) -> f64 {
        0.95f64.powi(LOOKAHEAD_EVERY as i32) * (step as f64 / total.max(1) as f64).min(1.0).powi(3)
    }

    /// Starts the average from the current weights, unless it has started (called
    /// before each step: the first call sees the weights before training, as airbench's).
    pub fn start(&mut self, params: &Params) -> Result<()> {
        if self.values.is_empty() {
            for p in &params.list {
                self.values.insert(p.name.clone(), p.var.as_tensor().detach().copy()?);
            }
        }
        Ok(())
    }

    /// Called after optimizer step number `step` (1-based count of steps done) of
    /// `total`, with [`Lookahead::start`] called before the first step.
    pub fn update(&mut self, params: &Params, step: usize, total: usize) -> Result<()> {
        let due = step.is_multiple_of(LOOKAHEAD_EVERY);
        if !due && step < total {
            return Ok(());
        }
        // At the last step (not itself due) the weights just take the average.
        let d = if due { Self::decay(step, total) } else { 1.0 };
        for p in &params.list {
            let w = p.var.as_tensor();
            let avg = match self.values.get(&p.name) {
                Some(a) if d < 1.0 => ((a * d)? + (w * (1.0 - d))?)?,
                Some(a) => a.clone(),
                None => w.copy()?,
            };
            p.var.set(&avg)?;
            self.values.insert(p.name.clone(), avg.detach());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_end_factor() {
        let cfg = TrainConfig {
            lr: 1.0,
            warmup_epochs: 1.0,
            warmup_start_factor: 0.1,
            end_lr_factor: 0.0,
            ..Default::default()
        };
        assert!((lr_at(&cfg, 0, 100, 10) - 0.1).abs() < 1e-9);
        assert!((lr_at(&cfg, 10, 100, 10) - 1.0).abs() < 1e-9);
        assert!((lr_at(&cfg, 55, 100, 10) - 0.5).abs() < 1e-9);
        assert!(lr_at(&cfg, 100, 100, 10).abs() < 1e-9);
        let cos = TrainConfig { schedule: Schedule::Cosine, ..cfg };
        assert!((lr_at(&cos, 55, 100, 10) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn nesterov_sgd_matches_the_formula() {
        use crate::model::Params;
        use candle_core::{Device, Tensor};
        let dev = Device::Cpu;
        let mut params = Params::default();
        let w = params.add("w", Tensor::new(&[1.0f32, -2.0], &dev).unwrap(), Group::Weight).unwrap();
        let mut sgd = Sgd { momentum: 0.9, nesterov: true, weight_decay: 0.1, bias_lr_mult: 1.0, ..Default::default() };
        // loss = sum(w^2) / 2, gradient = w
        let (mut wr, mut buf) = ([1.0f64, -2.0], [0.0f64; 2]);
        for step in 0..3 {
            let loss = (w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
            let grads = loss.backward().unwrap();
            sgd.step(&params, &grads, 0.5).unwrap();
            for i in 0..2 {
                let g = wr[i] + 0.1 * wr[i];
                buf[i] = if step == 0 { g } else { 0.9 * buf[i] + g };
                wr[i] -= 0.5 * (g + 0.9 * buf[i]);
            }
            assert!(sgd.buffers.values().all(|b| !b.track_op()), "momentum buffers must not hold a graph");
            let got = w.as_tensor().to_vec1::<f32>().unwrap();
            for i in 0..2 {
                assert!((got[i] as f64 - wr[i]).abs() < 1e-5, "step {step}: {got:?} vs {wr:?}");
            }
        }
    }

    #[test]
    fn lookahead_pulls_the_weights_to_their_average_on_airbench_steps() {
        use candle_core::{Device, Tensor};
        let dev = Device::Cpu;
        let mut params = crate::model::Params::default();
        let w = params.add("w", Tensor::new(&[0.0f32], &dev).unwrap(), Group::Weight).unwrap();
        let mut la = Lookahead::default();
        let total = 10;
        let set = |v: f32| w.set(&Tensor::new(&[v], &dev).unwrap()).unwrap();
        let get = || w.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
        set(1.0);
        la.start(&params).unwrap(); // the average starts at 1
        la.update(&params, 1, total).unwrap(); // not due
        set(2.0);
        la.update(&params, 4, total).unwrap(); // not due: untouched
        assert_eq!(get(), 2.0);
        la.update(&params, 5, total).unwrap();
        let d = 0.95f64.powi(5) * 0.125;
        assert!((get() - (d * 1.0 + (1.0 - d) * 2.0)).abs() < 1e-6);
        let avg = get();
        set(7.0);
        la.update(&params, 9, total).unwrap();
        assert_eq!(get(), 7.0);
        set(3.0);
        la.update(&params, 10, total).unwrap(); // last step, due: decay 0.95^5
        let d = 0.95f64.powi(5);
        assert!((get() - (d * avg + (1.0 - d) * 3.0)).abs() < 1e-5, "{}", get());
    }

    #[test]
    fn frozen_parameters_are_not_updated() {
        use crate::model::Params;
        use candle_core::{Device, Tensor};
        let dev = Device::Cpu;
        let mut params = Params::default();
        let w = params.add("w", Tensor::new(&[1.0f32], &dev).unwrap(), Group::Weight).unwrap();
        let mut sgd = Sgd { momentum: 0.9, weight_decay: 0.1, frozen: vec!["w".into()], ..Default::default() };
        let grads = w.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        sgd.step(&params, &grads, 0.5).unwrap();
        assert_eq!(w.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0]);
        assert!(sgd.buffers.is_empty());
    }

    #[test]
    fn ema_follows_the_weights_with_the_configured_decay() {
        use candle_core::{Device, Tensor};
        let dev = Device::Cpu;
        let mut params = crate::model::Params::default();
        let w = params.add("w", Tensor::new(&[0.0f32], &dev).unwrap(), Group::Weight).unwrap();
        let mut ema = Ema::new(0.5, 2);
        ema.update(&params, 2).unwrap(); // first update copies
        w.set(&Tensor::new(&[1.0f32], &dev).unwrap()).unwrap();
        ema.update(&params, 3).unwrap(); // not a multiple of `every`: skipped
        ema.update(&params, 4).unwrap(); // decay 0.5^2 = 0.25: 0.25 * 0 + 0.75 * 1
        let v = ema.values["w"].to_vec1::<f32>().unwrap()[0];
        assert!((v - 0.75).abs() < 1e-6, "{v}");
        assert!(!Ema::new(0.0, 1).enabled());
    }
}
