//! A server keeps serving when its stdout and stderr are closed (a failed log write must
//! never stop it), and `cifar-load` ends quietly when its stdout is closed.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn cifar_serve_keeps_serving_with_closed_stdout_and_stderr() {
    let model = fixture("models/tiny-int8.cifar");
    // Debug level: a log line for every request.
    let mut server = Server::start_with(
        tempfile::tempdir().unwrap(),
        &model,
        &[],
        Stdio::piped(),
        Stdio::piped(),
        &[("RUST_LOG", "debug")],
    );
    // Close the read ends: from now on every log line fails with EPIPE.
    drop((server.child.stdout.take(), server.child.stderr.take()));
    let png = std::fs::read(&sample_images()[0]).unwrap();
    for i in 0..50 {
        let r = client().post(server.at("/v1/classify")).body(png.clone()).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "request {i}");
        let _ = client().post(server.at("/v1/classify")).body("not an image").send().unwrap();
    }
    assert_eq!(server.get_json("/v2/health/ready").0, 200);
    assert!(server.child.try_wait().unwrap().is_none(), "the server stopped");
    // And it still shuts down cleanly.
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(30)), "SIGTERM ends the server with status 0");
}

#[test]
fn cifar_load_ends_quietly_when_stdout_closes() {
    let server = Server::start(&fixture("models/tiny-int8.cifar"), &[]);
    let image = sample_images()[0].clone();
    let load = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cifar-load"));
        c.args([
            "--url",
            &server.url,
            "--model",
            "model",
            "--endpoint",
            "classify",
            "--requests",
            "20",
            "--warmup",
            "0",
        ])
        .arg("--image")
        .arg(&image);
        c
    };
    cifar_cli_io::check::closed_stdout_is_a_quiet_end(load, 2).unwrap();
    let help = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cifar-load"));
        c.arg("--help");
        c
    };
    cifar_cli_io::check::closed_stdout_is_a_quiet_end(help, 3).unwrap();
}
