//! An idle session burns no CPU: its pool's threads park between runs. (A test binary of
//! its own: the process's CPU time must be this test's alone.)

mod common;

use cifar_sdk::{DevicePolicy, Model, ModelOptions};
use common::*;

/// CPU time (user + system) of this process, in clock ticks, from /proc/self/stat.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[test]
fn an_idle_session_burns_no_cpu() {
    let Some(_) = cpu_ticks() else {
        eprintln!("skipped: no /proc/self/stat on this system");
        return;
    };
    let g = zoo_graph();
    let bytes = f32_writer(&g, &random_weights(&g, 44)).to_bytes().unwrap();
    let model =
        Model::from_bytes(&bytes, &ModelOptions { device: DevicePolicy::Cpu, threads: 4, max_batch: 16 }).unwrap();
    let mut s = model.session().unwrap();
    let px = random_rgb8(16, 45);
    for _ in 0..20 {
        s.logits_rgb8(&px, 16).unwrap();
    }
    // The pool's threads spin briefly after a run, then park.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let before = cpu_ticks().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let used = cpu_ticks().unwrap() - before;
    // Clock ticks are 10 ms: a spinning pool of 3 workers would use ~300 over 1 s.
    assert!(used <= 2, "an idle session with 4 threads used {used} ticks of CPU in 1 s");
    // And the session still works after its threads parked.
    assert_eq!(s.logits_rgb8(&px, 16).unwrap().len(), 16 * CLASSES);
}
