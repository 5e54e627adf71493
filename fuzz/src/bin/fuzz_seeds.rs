//! `fuzz-seeds DIR`: writes each target's starting corpus into `DIR/<target>/`.
//! `fuzz-seeds --list`: prints each target's name, libFuzzer `-max_len` and the crate
//! feature that builds it, one per line (what scripts/fuzz.sh iterates over).

use std::process::ExitCode;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--list") => {
            let list: String =
                cifar_fuzz::targets().iter().map(|t| format!("{} {} {}\n", t.name, t.max_len, t.feature)).collect();
            match std::io::Write::write_all(&mut std::io::stdout(), list.as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }
        }
        Some(dir) if !dir.starts_with('-') => match write(std::path::Path::new(dir)) {
            Ok(n) => {
                eprintln!("wrote {n} seeds under {dir}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fuzz-seeds: {e:#}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: fuzz-seeds DIR    (writes DIR/<target>/<seed>)\n       fuzz-seeds --list");
            ExitCode::from(2)
        }
    }
}

fn write(dir: &std::path::Path) -> anyhow::Result<usize> {
    use anyhow::Context;
    let seeds = cifar_fuzz::seeds::all()?;
    for (target, name, bytes) in &seeds {
        let folder = dir.join(target);
        std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
        std::fs::write(folder.join(name), bytes).with_context(|| format!("cannot write {target}/{name}"))?;
    }
    Ok(seeds.len())
}
