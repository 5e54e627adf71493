//! The session's thread pool: `threads - 1` workers plus the calling thread.
//!
//! A job is a number of work units and a function run on ranges of them; threads claim
//! ranges from a shared counter until none are left (dynamic scheduling), so a thread
//! that is slow to start or gets preempted (machines are shared) delays nobody: the job
//! ends when its units are done, and a worker that wakes up late finds nothing left and
//! never touches it. Results do not depend on who ran which unit.
//!
//! Waiting is spin-then-park: between the layers of one inference the next job arrives
//! within microseconds, so workers spin for a short while ([`SPIN`]) before they park;
//! an idle pool is parked and burns no CPU (tested: `sdk/tests/idle.rs`). A panic in a
//! job is caught and reported as an error, never propagated.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How long a waiting thread spins before it parks.
const SPIN: Duration = Duration::from_micros(200);

/// A job: `(thread, units) -> result`, where `thread` is 0 for the caller and `1..` for
/// the workers. Borrowed for the duration of one [`Pool::run`].
type Job<'a> = &'a (dyn Fn(usize, Range<usize>) -> Result<()> + Sync);

/// An atomic counter alone on its cache line.
#[repr(align(64))]
struct Padded(AtomicUsize);

struct Shared {
    /// Incremented to publish a job.
    generation: AtomicUsize,
    /// The current job: a pointer to the caller's `Job`, valid while `open` holds the
    /// job's generation.
    job: AtomicPtr<Job<'static>>,
    /// The generation workers may still enter (0: none).
    open: AtomicUsize,
    /// Workers inside the current job.
    active: AtomicUsize,
    /// The next unclaimed unit and the units done, each on a cache line of its own (the
    /// threads update them; nothing else should move with them).
    next: Padded,
    done: Padded,
    /// The units of the job and units per claim.
    units: AtomicUsize,
    grain: AtomicUsize,
    /// The first error of the current job (`failed` says whether there is one).
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
    /// A job is running (a second `run` at the same time is refused).
    busy: AtomicBool,
    /// The thread waiting in `run`, woken when the last unit is done.
    caller: Mutex<Option<Thread>>,
    shutdown: AtomicBool,
}

/// A fixed set of worker threads.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("threads", &self.threads()).finish()
    }
}

/// Locks `m`, ignoring poisoning: a panic under the lock has already come back as an error.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Spins until `done()` (or [`SPIN`] passes), then parks until it holds. Someone must
/// `unpark` this thread after making `done()` true.
fn wait(done: impl Fn() -> bool) {
    let start = Instant::now();
    let mut spins = 0u32;
    while !done() {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(64) && start.elapsed() > SPIN {
            while !done() {
                std::thread::park();
            }
            return;
        }
        std::hint::spin_loop();
    }
}

/// Runs `job` on `units`, turning a panic into an error.
pub(crate) fn call(job: Job<'_>, thread: usize, units: Range<usize>) -> Result<()> {
    let (start, end) = (units.start, units.end);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(thread, units))) {
        Ok(r) => r,
        Err(_) => Err(Error::Internal(format!("a thread panicked running units {start}..{end}"))),
    }
}

impl Shared {
    /// Claims and runs ranges of the current job until none are left; wakes the caller
    /// when the last unit is done.
    fn work(&self, job: Job<'_>, thread: usize) {
        let (units, grain) = (self.units.load(Ordering::Acquire), self.grain.load(Ordering::Acquire).max(1));
        let mut mine = 0;
        loop {
            if self.failed.load(Ordering::Acquire) {
                // Units left unclaimed after an error are skipped, not run.
                let left = units.saturating_sub(self.next.0.swap(units, Ordering::AcqRel));
                mine += left;
                break;
            }
            let start = self.next.0.fetch_add(grain, Ordering::AcqRel);
            if start >= units {
                break;
            }
            let end = units.min(start + grain);
            if let Err(e) = call(job, thread, start..end) {
                lock(&self.error).get_or_insert(e);
                self.failed.store(true, Ordering::Release);
            }
            mine += end - start;
        }
        // One update of the shared count per thread and job.
        if mine > 0 && self.done.0.fetch_add(mine, Ordering::AcqRel) + mine == units && thread != 0 {
            if let Some(t) = lock(&self.caller).as_ref() {
                t.unpark();
            }
        }
    }
}

impl Pool {
    /// A pool for `threads` threads in all (`threads - 1` workers are started).
    pub fn new(threads: usize) -> Result<Self> {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            open: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            next: Padded(AtomicUsize::new(0)),
            done: Padded(AtomicUsize::new(0)),
            units: AtomicUsize::new(0),
            grain: AtomicUsize::new(1),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            busy: AtomicBool::new(false),
            caller: Mutex::new(None),
            shutdown: AtomicBool::new(false),
        });
        // Workers join the pool as they start, so that if one cannot be started the pool's
        // Drop stops those already running.
        let mut pool = Self { shared, workers: Vec::new() };
        for thread in 1..threads.max(1) {
            let s = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new()
                .name(format!("cifar-sdk-{thread}"))
                .spawn(move || worker(&s, thread))
                .map_err(|e| Error::Options(format!("cannot start {threads} threads: {e}")))?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Threads in all, the caller's included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(thread, range)` over ranges covering `0..units`, about `grain` units each,
    /// on the calling thread and whichever workers join; returns the first error.
    pub fn run(
        &self,
        units: usize,
        grain: usize,
        f: &(dyn Fn(usize, Range<usize>) -> Result<()> + Sync),
    ) -> Result<()> {
        if self.workers.is_empty() || units <= 1 {
            return call(f, 0, 0..units);
        }
        let s = &*self.shared;
        if s.busy.swap(true, Ordering::AcqRel) {
            // The pool is shared by reference (`Sync`); two jobs at once would share one
            // set of counters. Sessions never do this; refuse rather than race.
            return Err(Error::Internal("the thread pool was asked to run two jobs at once".into()));
        }
        let result = self.run_exclusive(units, grain, f);
        s.busy.store(false, Ordering::Release);
        result
    }

    /// [`Pool::run`] once `busy` is held.
    fn run_exclusive(
        &self,
        units: usize,
        grain: usize,
        f: &(dyn Fn(usize, Range<usize>) -> Result<()> + Sync),
    ) -> Result<()> {
        let s = &*self.shared;
        {
            let mut caller = lock(&s.caller);
            if caller.as_ref().is_none_or(|t| t.id() != std::thread::current().id()) {
                *caller = Some(std::thread::current());
            }
        }
        s.units.store(units, Ordering::Release);
        s.grain.store(grain.max(1), Ordering::Release);
        s.next.0.store(0, Ordering::Release);
        s.done.0.store(0, Ordering::Release);
        // SAFETY: workers only call the job between entering (counted in `active`, while
        // `open` holds this generation) and leaving; this function closes the job and
        // waits for `active` to reach 0 before it returns, so the borrowed closure (and
        // `job`, on this stack) outlive every use; the 'static is never observed past
        // this call.
        let job: Job<'static> = unsafe { std::mem::transmute::<Job<'_>, Job<'static>>(f) };
        let generation = s.generation.load(Ordering::Acquire).wrapping_add(1).max(1);
        s.job.store(std::ptr::from_ref(&job).cast_mut(), Ordering::SeqCst);
        s.open.store(generation, Ordering::SeqCst);
        s.generation.store(generation, Ordering::SeqCst);
        for w in &self.workers {
            w.thread().unpark();
        }
        s.work(f, 0);
        wait(|| s.done.0.load(Ordering::Acquire) >= units);
        // No worker may enter any more; wait for those inside to leave. (SeqCst on both
        // sides: a worker either sees `open` closed, or is counted in `active` here.)
        s.open.store(0, Ordering::SeqCst);
        let mut spins = 0u32;
        while s.active.load(Ordering::SeqCst) > 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                // A worker inside was preempted: let it run.
                std::thread::yield_now();
            }
            std::hint::spin_loop();
        }
        s.job.store(std::ptr::null_mut(), Ordering::SeqCst);
        if s.failed.swap(false, Ordering::AcqRel) {
            return lock(&s.error).take().map_or(Ok(()), Err);
        }
        Ok(())
    }
}

fn worker(s: &Shared, thread: usize) {
    let mut seen = 0usize;
    loop {
        wait(|| s.shutdown.load(Ordering::Acquire) || s.generation.load(Ordering::Acquire) != seen);
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        seen = s.generation.load(Ordering::Acquire);
        s.active.fetch_add(1, Ordering::SeqCst);
        if s.open.load(Ordering::SeqCst) == seen {
            let ptr = s.job.load(Ordering::SeqCst);
            // SAFETY: while this worker is counted in `active` and the job is open, the
            // caller keeps `job` (and the closure it borrows) alive and does not return.
            if let Some(job) = unsafe { ptr.as_ref() } {
                s.work(*job, thread);
            }
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        for w in &self.workers {
            w.thread().unpark();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_runs_once_and_errors_come_back() {
        let pool = Pool::new(3).unwrap();
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        for round in 0..300 {
            pool.run(1000, 1 + round % 50, &|_, r| {
                r.for_each(|u| {
                    hits[u].fetch_add(1, Ordering::Relaxed);
                });
                Ok(())
            })
            .unwrap();
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 300));
        let e = pool.run(100, 1, &|_, r| if r.start == 57 { Err(Error::Internal("x".into())) } else { Ok(()) });
        assert!(matches!(e, Err(Error::Internal(_))));
        let e = pool.run(100, 1, &|_, r| if r.start == 3 { panic!("boom") } else { Ok(()) });
        assert!(matches!(e, Err(Error::Internal(_))), "a panic becomes an error");
        pool.run(10, 1, &|_, _| Ok(())).unwrap();
    }

    #[test]
    fn threads_are_numbered_and_the_caller_is_zero() {
        let pool = Pool::new(2).unwrap();
        let seen: Vec<AtomicUsize> = (0..2).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..200 {
            pool.run(64, 1, &|t, _| {
                seen[t].fetch_add(1, Ordering::Relaxed);
                std::hint::spin_loop();
                Ok(())
            })
            .unwrap();
        }
        assert!(seen[0].load(Ordering::Relaxed) > 0, "the caller works too");
    }
}

#[cfg(test)]
mod overhead {
    use super::*;

    #[test]
    #[ignore = "prints the cost of an empty job (a measurement, run by hand)"]
    fn empty_job_cost() {
        let pool = Pool::new(2).unwrap();
        for round in 0..3 {
            let n = 20000;
            let t = Instant::now();
            for _ in 0..n {
                pool.run(16, 4, &|_, _| Ok(())).unwrap();
            }
            eprintln!("round {round}: {:.2} us per job", t.elapsed().as_secs_f64() * 1e6 / n as f64);
        }
    }
}
