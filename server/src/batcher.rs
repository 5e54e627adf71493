//! Dynamic batching. Requests become [`Job`]s in one bounded queue; each worker thread
//! owns a [`Session`] per model generation, takes the oldest job, adds whatever else is
//! queued (waiting up to `max_queue_delay` for more) until it has `max_batch` images,
//! runs them as one batch and answers every job through its own channel.
//!
//! The queue is bounded: when it is full, [`Batcher::submit`] refuses at once and the
//! caller answers 503, instead of letting latency grow without limit. Jobs whose caller
//! has gone away (timed out, disconnected) are skipped, not computed.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cifar_sdk::Session;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio::sync::oneshot;

use crate::repository::ServedModel;
use crate::telemetry::Telemetry;

/// Input images of one request, in one of the two layouts the model accepts.
#[derive(Debug)]
pub enum Pixels {
    /// `[N][H][W][3]` RGB8, as decoded from image files.
    Rgb8(Vec<u8>),
    /// `[N][3][H][W]` normalized f32, the model's own input.
    Nchw(Vec<f32>),
}

/// One request's work.
#[derive(Debug)]
pub struct Job {
    /// The model generation the request was accepted for.
    pub model: Arc<ServedModel>,
    /// The images.
    pub pixels: Pixels,
    /// How many images.
    pub images: usize,
    /// When it entered the queue.
    pub enqueued: Instant,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<JobOutput, String>>,
}

/// The answer to a [`Job`].
#[derive(Debug)]
pub struct JobOutput {
    /// `[images][classes]` logits.
    pub logits: Vec<f32>,
    /// Time in the queue.
    pub queue: Duration,
    /// Compute time of the batch the job ran in.
    pub compute: Duration,
    /// Images in that batch.
    pub batch_images: usize,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full: try again later.
    Full,
    /// The workers are gone (shutting down).
    Closed,
}

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Images per batch a worker aims for.
    pub max_batch: usize,
    /// How long a worker waits for more jobs after the first.
    pub max_queue_delay: Duration,
    /// Most queued jobs.
    pub max_queue: usize,
}

/// The queue and its workers.
#[derive(Debug)]
pub struct Batcher {
    tx: Sender<Job>,
    rx: Receiver<Job>,
}

impl Batcher {
    /// Starts `workers` threads.
    pub fn start(workers: usize, policy: BatchPolicy, telemetry: Arc<Telemetry>) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(policy.max_queue.max(1));
        for i in 0..workers.max(1) {
            let (rx, telemetry) = (rx.clone(), telemetry.clone());
            std::thread::Builder::new()
                .name(format!("infer-{i}"))
                .spawn(move || Worker { rx, policy, telemetry, sessions: Vec::new() }.run())?;
        }
        Ok(Self { tx, rx })
    }

    /// Queues a job, or says why not (the job is dropped, so its receiver sees it).
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SubmitError::Full),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Closed),
        }
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.rx.len()
    }
}

struct Worker {
    rx: Receiver<Job>,
    policy: BatchPolicy,
    telemetry: Arc<Telemetry>,
    /// One session per model generation seen recently (newest last).
    sessions: Vec<(Arc<ServedModel>, Session)>,
}

impl Worker {
    fn run(mut self) {
        while let Ok(first) = self.rx.recv() {
            let deadline = first.enqueued + self.policy.max_queue_delay;
            let mut images = first.images;
            // Gather up to the first job's model batch size (its `config.toml` may set one
            // below `--max-batch`), so that no worker runs a queue of small chunks alone.
            let limit = self.policy.max_batch.min(first.model.max_batch);
            let mut batch = vec![first];
            while images < limit {
                let next = if self.policy.max_queue_delay.is_zero() {
                    self.rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
                } else {
                    self.rx.recv_deadline(deadline)
                };
                match next {
                    Ok(job) => {
                        images += job.images;
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.telemetry.set_queue_depth(self.rx.len());
            self.run_batch(batch);
            // Sessions of a generation nobody else holds (replaced, no jobs left) go.
            self.sessions.retain(|(m, _)| Arc::strong_count(m) > 1);
        }
    }

    /// Runs the jobs, grouped by model generation and input layout (one session call
    /// per group).
    fn run_batch(&mut self, batch: Vec<Job>) {
        let mut jobs: Vec<Job> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
        while let Some(first) = jobs.first() {
            let model = first.model.clone();
            let rgb = matches!(first.pixels, Pixels::Rgb8(_));
            let (group, rest): (Vec<Job>, Vec<Job>) = jobs
                .into_iter()
                .partition(|j| Arc::ptr_eq(&j.model, &model) && matches!(j.pixels, Pixels::Rgb8(_)) == rgb);
            jobs = rest;
            // At most the model's own batch size per run (its `config.toml` may set one
            // below `--max-batch`); a single larger request still runs whole.
            let mut chunk: Vec<Job> = Vec::new();
            let mut images = 0;
            for job in group {
                if !chunk.is_empty() && images + job.images > model.max_batch {
                    self.run_group(&model, std::mem::take(&mut chunk));
                    images = 0;
                }
                images += job.images;
                chunk.push(job);
            }
            if !chunk.is_empty() {
                self.run_group(&model, chunk);
            }
        }
    }

    fn run_group(&mut self, model: &Arc<ServedModel>, group: Vec<Job>) {
        let images: usize = group.iter().map(|j| j.images).sum();
        let classes = model.model.classes();
        let started = Instant::now();
        let result = self.session(model).and_then(|session| {
            let mut logits = vec![0f32; images * classes];
            match group.first().map(|j| &j.pixels) {
                Some(Pixels::Rgb8(_)) => {
                    let input = gather(&group, |p| if let Pixels::Rgb8(v) = p { Some(v.as_slice()) } else { None });
                    session.run_rgb8(&input, images, &mut logits).map_err(|e| e.to_string())?;
                }
                Some(Pixels::Nchw(_)) => {
                    let input = gather(&group, |p| if let Pixels::Nchw(v) = p { Some(v.as_slice()) } else { None });
                    session.run_nchw(&input, images, &mut logits).map_err(|e| e.to_string())?;
                }
                None => {}
            }
            Ok(logits)
        });
        let compute = started.elapsed();
        self.telemetry.record_batch(model, images, compute);
        let mut offset = 0;
        for job in group {
            let n = job.images * classes;
            let answer = match &result {
                Ok(all) => match all.get(offset..offset + n) {
                    Some(mine) => {
                        self.telemetry.observe_outputs(model, &job.pixels, job.images, mine);
                        Ok(JobOutput {
                            logits: mine.to_vec(),
                            queue: started.saturating_duration_since(job.enqueued),
                            compute,
                            batch_images: images,
                        })
                    }
                    None => Err("internal error: the batch produced fewer logits than expected".to_string()),
                },
                Err(e) => Err(e.clone()),
            };
            offset += n;
            // The caller may have timed out meanwhile; nothing to do then.
            let _ = job.reply.send(answer);
        }
    }

    /// The session for `model`, created on first use.
    fn session(&mut self, model: &Arc<ServedModel>) -> Result<&mut Session, String> {
        let pos = match self.sessions.iter().position(|(m, _)| Arc::ptr_eq(m, model)) {
            Some(pos) => pos,
            None => {
                let session = model.model.session().map_err(|e| e.to_string())?;
                self.sessions.push((model.clone(), session));
                self.sessions.len() - 1
            }
        };
        self.sessions.get_mut(pos).map(|(_, s)| s).ok_or_else(|| "internal error: session cache".to_string())
    }
}

/// The group's inputs of one layout back to back; borrowed when there is one job (the
/// usual case on an idle server), so it is not copied.
fn gather<'a, T: Copy>(group: &'a [Job], pick: impl Fn(&'a Pixels) -> Option<&'a [T]>) -> Cow<'a, [T]> {
    match group {
        [one] => Cow::Borrowed(pick(&one.pixels).unwrap_or(&[])),
        _ => Cow::Owned(group.iter().filter_map(|j| pick(&j.pixels)).flatten().copied().collect()),
    }
}
