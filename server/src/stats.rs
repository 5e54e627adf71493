//! Per-model inference statistics in Triton's shapes (`GET /v2/models/{m}/stats`, gRPC
//! `ModelStatistics`): what tritonclient's `get_inference_statistics` and perf_analyzer
//! read. Each loaded model generation keeps its own, as Triton keeps them per version.
//!
//! What a CPU server can fill honestly: `success` (count, end-to-end request time),
//! `fail` (count; its time is not measured and stays 0), `queue` (time waiting for a
//! worker), `compute_infer` (the compute time of the batch each request ran in, which
//! includes normalizing the pixels: there is no separate input copy), and per batch size
//! the batches executed and their compute time. `compute_input` and `compute_output` stay
//! zero: this engine has no separate input or output transfer to time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// A count and a cumulative duration.
#[derive(Debug, Default)]
struct DurationStat {
    count: AtomicU64,
    ns: AtomicU64,
}

impl DurationStat {
    fn add(&self, count: u64, d: Duration) {
        self.count.fetch_add(count, Ordering::Relaxed);
        self.ns.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn get(&self) -> StatisticDuration {
        StatisticDuration { count: self.count.load(Ordering::Relaxed), ns: self.ns.load(Ordering::Relaxed) }
    }
}

/// The live counters of one model generation.
#[derive(Debug, Default)]
pub struct ModelStats {
    success: DurationStat,
    fail: DurationStat,
    queue: DurationStat,
    compute_infer: DurationStat,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    last_inference_ms: AtomicU64,
    /// Batch size -> (batches, compute time).
    batches: Mutex<BTreeMap<u64, (u64, u64)>>,
}

impl ModelStats {
    /// A request of `images` images succeeded.
    pub fn record_success(&self, images: usize, total: Duration, queue: Duration, compute: Duration) {
        self.success.add(1, total);
        self.queue.add(1, queue);
        self.compute_infer.add(1, compute);
        self.inference_count.fetch_add(images as u64, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        self.last_inference_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// A request failed.
    pub fn record_failure(&self) {
        self.fail.add(1, Duration::ZERO);
    }

    /// A worker ran a batch of `images` images.
    pub fn record_batch(&self, images: usize, compute: Duration) {
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(compute.as_nanos()).unwrap_or(u64::MAX);
        if let Ok(mut b) = self.batches.lock() {
            let e = b.entry(images as u64).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.saturating_add(ns);
        }
    }

    /// The statistics as the protocol reports them.
    pub fn snapshot(&self, name: &str, version: &str) -> ModelStatistics {
        let zero = StatisticDuration::default();
        let batch_stats = self
            .batches
            .lock()
            .map(|b| {
                b.iter()
                    .map(|(&batch_size, &(count, ns))| InferBatchStatistics {
                        batch_size,
                        compute_input: zero,
                        compute_infer: StatisticDuration { count, ns },
                        compute_output: zero,
                    })
                    .collect()
            })
            .unwrap_or_default();
        ModelStatistics {
            name: name.to_string(),
            version: version.to_string(),
            last_inference: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            inference_stats: InferStatistics {
                success: self.success.get(),
                fail: self.fail.get(),
                queue: self.queue.get(),
                compute_input: zero,
                compute_infer: self.compute_infer.get(),
                compute_output: zero,
            },
            batch_stats,
        }
    }
}

/// Triton's `StatisticDuration`.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct StatisticDuration {
    /// How many.
    pub count: u64,
    /// Their total time, in nanoseconds.
    pub ns: u64,
}

/// Triton's `InferStatistics`.
#[derive(Debug, Clone, Serialize)]
pub struct InferStatistics {
    /// Successful requests, end to end.
    pub success: StatisticDuration,
    /// Failed requests.
    pub fail: StatisticDuration,
    /// Time waiting for a worker.
    pub queue: StatisticDuration,
    /// Input preparation (0: part of `compute_infer` here).
    pub compute_input: StatisticDuration,
    /// Compute time of the batches requests ran in.
    pub compute_infer: StatisticDuration,
    /// Output extraction (0: nothing to copy back here).
    pub compute_output: StatisticDuration,
}

/// Triton's `InferBatchStatistics`.
#[derive(Debug, Clone, Serialize)]
pub struct InferBatchStatistics {
    /// Images in the batch.
    pub batch_size: u64,
    /// Always zero here (see the module docs).
    pub compute_input: StatisticDuration,
    /// Batches of this size and their compute time.
    pub compute_infer: StatisticDuration,
    /// Always zero here.
    pub compute_output: StatisticDuration,
}

/// Triton's `ModelStatistics`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatistics {
    /// The model.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Milliseconds since the Unix epoch of the last successful request (0: none yet).
    pub last_inference: u64,
    /// Images inferred.
    pub inference_count: u64,
    /// Batches executed.
    pub execution_count: u64,
    /// Request-level statistics.
    pub inference_stats: InferStatistics,
    /// Per executed batch size.
    pub batch_stats: Vec<InferBatchStatistics>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_durations_accumulate() {
        let s = ModelStats::default();
        s.record_success(4, Duration::from_micros(30), Duration::from_micros(10), Duration::from_micros(15));
        s.record_success(1, Duration::from_micros(20), Duration::from_micros(5), Duration::from_micros(15));
        s.record_batch(5, Duration::from_micros(15));
        s.record_batch(1, Duration::from_micros(7));
        s.record_failure();
        let snap = s.snapshot("m", "1");
        assert_eq!(snap.inference_count, 5);
        assert_eq!(snap.execution_count, 2);
        assert_eq!(snap.inference_stats.success, StatisticDuration { count: 2, ns: 50_000 });
        assert_eq!(snap.inference_stats.queue, StatisticDuration { count: 2, ns: 15_000 });
        assert_eq!(snap.inference_stats.compute_infer, StatisticDuration { count: 2, ns: 30_000 });
        assert_eq!(snap.inference_stats.fail.count, 1);
        let sizes: Vec<(u64, u64)> = snap.batch_stats.iter().map(|b| (b.batch_size, b.compute_infer.count)).collect();
        assert_eq!(sizes, vec![(1, 1), (5, 1)]);
        assert!(snap.last_inference > 0);
    }
}
