//! `sdk-bench` and `bench-gate` end quietly when their stdout is closed.

use std::path::Path;
use std::process::Command;

#[test]
fn closed_stdout_is_a_normal_end() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models/tiny-int8.cifar");
    let bench = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sdk-bench"));
        c.arg("--model").arg(&model).args(["--seconds", "0.01"]);
        c
    };
    cifar_cli_io::check::closed_stdout_is_a_quiet_end(bench, 1).unwrap();
    for bin in [env!("CARGO_BIN_EXE_sdk-bench"), env!("CARGO_BIN_EXE_bench-gate")] {
        let help = || {
            let mut c = Command::new(bin);
            c.arg("--help");
            c
        };
        cifar_cli_io::check::closed_stdout_is_a_quiet_end(help, 3).unwrap();
    }
}
