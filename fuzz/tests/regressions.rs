//! Every saved fuzz input, on stable, in the ordinary suite: the seeds (built from the
//! fixtures), the corpus the fuzzers grew (`fuzz/corpus/<target>/`, minimized) and the
//! inputs of every finding (`fuzz/regressions/<target>/`, each the minimized input of a
//! bug that was fixed). A target's body panics on a finding, so this passing means none
//! of them reproduces.

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = cifar_fuzz::seeds::all()
        .expect("seeds")
        .into_iter()
        .filter(|(t, _, _)| *t == target)
        .map(|(_, name, bytes)| (format!("seed {name}"), bytes))
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for folder in ["corpus", "regressions"] {
        let dir = root.join(folder).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_file() {
                let bytes = std::fs::read(&path).expect("input");
                out.push((format!("{folder}/{target}/{}", path.file_name().unwrap().to_string_lossy()), bytes));
            }
        }
    }
    out
}

/// Seeds made to be refused (the malformed and old-format model files); every other
/// seed is a valid input, and must get all the way through (else the fuzzer would start
/// from inputs that stop at the first check).
fn refused_by_design(name: &str) -> bool {
    name.starts_with("seed malformed-") || name.starts_with("seed old-format-")
}

fn replay(target: &str) {
    let t = cifar_fuzz::target(target).expect("a known target");
    let inputs = inputs(target);
    assert!(!inputs.is_empty(), "{target} has no seeds");
    let mut accepted = 0;
    for (name, bytes) in &inputs {
        let outcome = std::panic::catch_unwind(|| (t.run)(bytes));
        let Ok(ok) = outcome else { panic!("{target}: {name} fails its target again") };
        if name.starts_with("seed ") {
            assert_eq!(ok, !refused_by_design(name), "{target}: {name} accepted: {ok}");
        }
        accepted += usize::from(ok);
    }
    eprintln!("{target}: {} inputs replayed, {accepted} accepted", inputs.len());
}

#[test]
fn model_file() {
    replay("model_file");
}

#[test]
fn model_graph() {
    replay("model_graph");
}

#[cfg(feature = "server")]
#[test]
fn oip_json() {
    replay("oip_json");
}

#[cfg(feature = "server")]
#[test]
fn oip_binary() {
    replay("oip_binary");
}

#[cfg(feature = "server")]
#[test]
fn classify_body() {
    replay("classify_body");
}

#[cfg(feature = "server")]
#[test]
fn grpc_infer() {
    replay("grpc_infer");
}

#[cfg(feature = "trainer")]
#[test]
fn dataset_tar() {
    replay("dataset_tar");
}

#[cfg(feature = "trainer")]
#[test]
fn config() {
    replay("config");
}

#[cfg(feature = "trainer")]
#[test]
fn onnx_import() {
    replay("onnx_import");
}

#[test]
fn every_target_is_replayed() {
    const TESTED: [&str; 9] = [
        "model_file",
        "model_graph",
        "oip_json",
        "oip_binary",
        "classify_body",
        "grpc_infer",
        "dataset_tar",
        "config",
        "onnx_import",
    ];
    for t in cifar_fuzz::targets() {
        assert!(TESTED.contains(&t.name), "{} has no replay test", t.name);
    }
}

/// The bound of `bounded_alloc` holds in this (stable, replaying) build too: a 2 GiB
/// reservation aborts the process with a message naming the bound.
#[test]
fn an_oversized_allocation_aborts_with_a_message() {
    const NAME: &str = "an_oversized_allocation_aborts_with_a_message";
    if std::env::var_os("CIFAR_FUZZ_ALLOCATE").is_some() {
        let reserved: Vec<u8> = Vec::with_capacity(2 << 30);
        std::hint::black_box(&reserved);
        return;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env("CIFAR_FUZZ_ALLOCATE", "1")
        .output()
        .expect("the test binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a 2 GiB allocation went through: {stderr}");
    assert!(stderr.contains("an allocation of 2147483648 bytes, over the 1 GiB bound"), "{stderr}");
}
