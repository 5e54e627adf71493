//! How cifar-edge's command-line programs write to the terminal.
//!
//! `println!` panics when stdout is a closed pipe (`trainer inspect m.cifar | head -1`),
//! and `eprintln!` panics when stderr is closed. A command-line program must treat a
//! closed stdout as a normal end, as ripgrep and the coreutils do, and a failed
//! diagnostic write must never stop it. So our binaries print through these macros
//! (the `print_stdout`/`print_stderr` lints keep `println!` out of them):
//!
//! - [`outln!`] / [`out!`] write to stdout and return `std::io::Result<()>`: propagate
//!   it with `?`, so that a closed pipe unwinds the program normally (destructors run,
//!   temporary files are removed) up to `main`;
//! - [`errln!`] writes a diagnostic line to stderr and ignores a failure to do so;
//! - [`exit_status`] turns `main`'s result into the exit status: success, or success
//!   when the error is a broken pipe on the way (status 0, not SIGPIPE's 141, which
//!   `set -o pipefail` would count as a failure), status 3 for a [`CheckFailed`] (a
//!   gate that ran and failed: `trainer robustness`, `trainer drift --fail-on-drift`),
//!   or the error on stderr and status 1.

use std::io::Write;
use std::process::ExitCode;

/// Writes formatted text to stdout (used by [`outln!`] and [`out!`]).
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    std::io::stdout().lock().write_fmt(args)
}

/// Writes formatted text to stderr, ignoring failures (used by [`errln!`]).
pub fn write_stderr(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// Flushes stdout; a broken pipe is reported like any write error.
pub fn flush_stdout() -> std::io::Result<()> {
    std::io::stdout().lock().flush()
}

/// Like `println!`, returning `std::io::Result<()>` instead of panicking.
#[macro_export]
macro_rules! outln {
    () => { $crate::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Like `print!`, returning `std::io::Result<()>` instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*)) };
}

/// Like `eprintln!`, but a closed stderr is ignored instead of panicking.
#[macro_export]
macro_rules! errln {
    () => { $crate::write_stderr(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::write_stderr(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Whether `e` (or any error in its chain) is a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// The error of a check that ran to the end and failed (a model under a quality gate,
/// input that drifted): exit status [`CHECK_FAILED`], so that scripts can tell it from
/// a command that could not run (status 1).
#[derive(Debug)]
pub struct CheckFailed(pub String);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailed {}

/// The exit status of a [`CheckFailed`].
pub const CHECK_FAILED: u8 = 3;

/// The exit status for `main`'s result: 0 on success and when stdout was closed by the
/// reader (a normal end for a command-line program); [`CHECK_FAILED`] for a failed
/// check; otherwise the error, with its causes, on stderr and status 1.
pub fn exit_status(result: anyhow::Result<()>) -> ExitCode {
    let result = result.and_then(|()| flush_stdout().map_err(anyhow::Error::from));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<CheckFailed>().is_some() => {
            errln!("check failed: {e}");
            ExitCode::from(CHECK_FAILED)
        }
        Err(e) => {
            errln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Checks for the tests of every binary: that a closed stdout is a quiet, successful end.
pub mod check {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    /// Runs the command made by `make` with its stdout closed in two ways, `rounds`
    /// times each: a pipe whose read end is closed right after the start (before a
    /// program normally writes, so its first write fails), and a pipe read like `head -1`
    /// reads it (one line, then closed, so a later write fails, whenever the program
    /// makes it). Every run must exit with status 0 and print nothing that looks like a
    /// panic. Returns what went wrong, if anything.
    pub fn closed_stdout_is_a_quiet_end(mut make: impl FnMut() -> Command, rounds: usize) -> Result<(), String> {
        for round in 0..rounds {
            for head in [false, true] {
                let mut cmd = make();
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
                let what = format!("{cmd:?} (round {round}, {})", if head { "| head -1" } else { "stdout closed" });
                let mut child = cmd.spawn().map_err(|e| format!("{what}: cannot start: {e}"))?;
                let stdout = child.stdout.take();
                if head {
                    let mut line = String::new();
                    if let Some(out) = stdout {
                        let _ = BufReader::new(out).read_line(&mut line);
                    }
                } else {
                    drop(stdout);
                }
                let out = child.wait_with_output().map_err(|e| format!("{what}: {e}"))?;
                let stderr = String::from_utf8_lossy(&out.stderr);
                if !out.status.success() || stderr.contains("panicked") || stderr.contains("Broken pipe") {
                    return Err(format!("{what}: exited with {}:\n{stderr}", out.status));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_anywhere_in_the_chain_is_recognized() {
        let pipe = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "closed");
        assert!(is_broken_pipe(&anyhow::Error::from(pipe).context("writing the report")));
        let other = std::io::Error::new(std::io::ErrorKind::StorageFull, "disk full");
        assert!(!is_broken_pipe(&anyhow::Error::from(other)));
        assert!(!is_broken_pipe(&anyhow::anyhow!("not an io error")));
        assert_eq!(exit_status(Err(anyhow::anyhow!("bad"))), ExitCode::FAILURE);
    }
}
