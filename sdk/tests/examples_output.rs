//! The examples end quietly when their stdout is closed (`latency ... | head -1`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// `cargo test` builds the examples next to the test binaries: `<profile>/examples/`.
fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    path.exists().then_some(path)
}

#[test]
fn latency_ends_quietly_when_stdout_closes() {
    let Some(latency) = example("latency") else {
        eprintln!("skipped: the latency example is not built next to this test");
        return;
    };
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models/tiny-int8.cifar");
    let make = || {
        let mut c = Command::new(&latency);
        c.arg(&model).arg(&model).env("ITERS", "5").env("THREADS", "1");
        c
    };
    cifar_cli_io::check::closed_stdout_is_a_quiet_end(make, 3).unwrap();
}
