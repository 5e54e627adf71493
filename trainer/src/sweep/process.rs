//! The trial processes: stopping one, the locks that keep two processes out of one
//! directory, and a trial's watch on the sweep that started it.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{Running, EXIT_WITH_PARENT_ENV};
use crate::train::INTERRUPTED;

/// Asks a trial to save a checkpoint and stop (SIGTERM: `fit`'s interrupt handler).
pub(super) fn terminate(r: &mut Running) {
    if r.stopping.is_some() {
        return;
    }
    r.stopping = Some(Instant::now());
    let asked = Command::new("kill")
        .args(["-TERM", &r.child.id().to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !asked {
        let _ = r.child.kill();
    }
}

/// Holds the sweep directory's lock for as long as the sweep runs: a second `trainer
/// sweep` on the same directory is refused instead of running every trial twice.
pub(super) fn lock(dir: &Path) -> Result<File> {
    crate::run::lock_file(&dir.join(".lock"), "trainer sweep")
}

/// Waits (up to two minutes) until no `fit` process holds run `dir`'s lock.
pub(super) fn wait_for_run_lock(dir: &Path) -> Result<()> {
    let path = dir.join(crate::run::LOCK_FILE);
    let Ok(f) = File::open(&path) else { return Ok(()) };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut said = false;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                if !said {
                    errln!("waiting for the old trial process in {} to save its checkpoint and stop", dir.display());
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                bail!("a `fit` process still runs in {} after two minutes; stop it, then resume", dir.display())
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e).context("cannot lock a trial's run directory"),
        }
    }
}

/// In a `fit` started by a sweep (`CIFAR_EXIT_WITH_PARENT=<the sweep's pid>`): stop when
/// the sweep process goes away, so that no orphan keeps training beside a resumed sweep.
/// Called first thing in `fit`: if the sweep is already gone the process exits at once;
/// later, before the run directory is locked, it exits (nothing worth keeping exists
/// yet), and after that it saves a checkpoint and stops, as on Ctrl-C.
pub fn exit_with_parent() {
    let Some(parent) = std::env::var(EXIT_WITH_PARENT_ENV).ok().and_then(|p| p.parse::<u32>().ok()) else {
        return;
    };
    let gone = move || std::os::unix::process::parent_id() != parent;
    if gone() {
        errln!("the sweep that started this trial has stopped; not starting");
        std::process::exit(130);
    }
    let _ = std::thread::Builder::new().name("parent-watch".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_millis(100));
        if gone() {
            if !RUN_LOCKED.load(Ordering::SeqCst) {
                errln!("the sweep that started this trial has stopped; stopping before training");
                std::process::exit(130);
            }
            errln!("the sweep that started this trial has stopped: saving a checkpoint and stopping");
            INTERRUPTED.store(true, Ordering::SeqCst);
            return;
        }
    });
}

/// Set by `fit` once it holds its run directory's lock.
pub static RUN_LOCKED: AtomicBool = AtomicBool::new(false);
