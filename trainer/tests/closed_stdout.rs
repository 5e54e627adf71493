//! A closed stdout (`trainer ... | head -1`) is a normal end: status 0, no panic.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(rel)
}

fn images() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixture("images")).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[test]
fn every_command_that_prints_ends_quietly_when_stdout_closes() {
    let tmp = tempdir();
    let data = synthetic_dataset(tmp.path(), 12, 20);
    let model = fixture("models/tiny-int8.cifar");
    let cmds: Vec<Vec<String>> = vec![
        vec!["--help".into()],
        vec!["fit".into(), "--help".into()],
        vec!["inspect".into(), model.display().to_string()],
        [
            vec!["classify".into(), "--json".into(), "--logits".into(), model.display().to_string()],
            images().iter().map(|p| p.display().to_string()).collect(),
        ]
        .concat(),
        vec!["data".into(), "stats".into(), data.display().to_string()],
        vec!["data".into(), "verify".into(), data.display().to_string()],
        vec!["eval".into(), "--model".into(), model.display().to_string(), "--data".into(), data.display().to_string()],
        vec![
            "drift".into(),
            "--model".into(),
            model.display().to_string(),
            "--images".into(),
            fixture("images").display().to_string(),
        ],
    ];
    for args in &cmds {
        let make = || {
            let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
            c.args(args);
            c
        };
        cifar_cli_io::check::closed_stdout_is_a_quiet_end(make, 3).unwrap();
    }
}
