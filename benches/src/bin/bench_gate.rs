//! The speed regression gate. Builds the Criterion benchmarks of this checkout and of a
//! base revision (default: the previous commit, checked out in a git worktree), runs the
//! gated benchmarks of both in alternating rounds in this one job, and compares them
//! round by round.
//!
//! Verdict per benchmark, from the per-round ratios `new / old` (each pair measured back
//! to back, so slow phases of a noisy machine hit both sides):
//! - the ratio is the median over rounds; its uncertainty `u` is two standard errors of
//!   that median, from the robust spread of the per-round log ratios
//!   (`u = 2 x 1.2533 x 1.4826 x MAD / sqrt(rounds)`);
//! - FAIL when `ratio - 1 > threshold + u`: slower by more than the threshold, beyond the
//!   measured noise;
//! - TOO NOISY when `u` alone exceeds the threshold and the benchmark did not fail: the run
//!   cannot tell, and says so instead of failing at random;
//! - otherwise PASS.
//!
//! A benchmark the base revision cannot run (a new benchmark, or a model file of a newer
//! format than its code reads) has no baseline: it is reported as such and passes, and
//! so does everything when the base's benchmarks cannot run at all.
//!
//! Exit status: 1 if any benchmark failed, 0 otherwise (also when there is no base to
//! compare with).
//!
//!   cargo run --release -p cifar-benches --bin bench-gate -- [--base REV] [--rounds 6] [--threshold 0.10]

#![deny(clippy::print_stdout, clippy::print_stderr)]

use cifar_cli_io::{errln, outln};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;

/// Benchmarks the gate judges (a regex over Criterion ids).
const GATED: &str = "^(latency/(cpu|resnet)/(f32|int8)/t[12]/b1|throughput/(cpu|resnet)/(f32|int8)/t2/b64)$";

/// Speed regression gate: this checkout against a base revision, interleaved.
#[derive(Debug, Parser)]
#[command(name = "bench-gate", version, about)]
struct Args {
    /// Revision to compare with.
    #[arg(long, default_value = "HEAD~1")]
    base: String,
    /// Alternating rounds (each runs both builds once).
    #[arg(long, default_value_t = 8)]
    rounds: usize,
    /// Allowed slowdown (0.10 = 10%) beyond the measured noise.
    #[arg(long, default_value_t = 0.10)]
    threshold: f64,
    /// Criterion measurement time per benchmark and round, in seconds.
    #[arg(long, default_value_t = 0.6)]
    measurement_time: f64,
    /// Build this checkout with the test-only `slow-kernels` feature (every GEMM runs
    /// twice): shows that the gate catches a slowdown.
    #[arg(long)]
    slow_new: bool,
    /// Compare this checkout with itself instead of a base revision (shows the gate's
    /// noise floor; with --slow-new, a pure slowdown test).
    #[arg(long)]
    self_compare: bool,
}

struct Build {
    label: &'static str,
    exe: PathBuf,
}

fn main() -> std::process::ExitCode {
    cifar_cli_io::exit_status(run())
}

fn run() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let repo = git_root()?;
    let work = target_dir(&repo).join("bench-gate");
    std::fs::create_dir_all(&work)?;
    let models = repo.join("fixtures/models");

    let new = build(&repo, &repo, args.slow_new, "new")?;
    let (old, worktree) = if args.self_compare {
        (build(&repo, &repo, false, "old"), None::<PathBuf>)
    } else {
        let rev = match git(&repo, &["rev-parse", "--verify", "--quiet", &format!("{}^{{commit}}", args.base)]) {
            Ok(rev) => rev,
            Err(_) => {
                outln!(
                    "bench-gate: no baseline: revision `{}` is not available (shallow clone?); nothing to compare",
                    args.base
                )?;
                return Ok(());
            }
        };
        let dir = work.join(format!("base-{}", &rev[..12.min(rev.len())]));
        if !dir.join("benches/Cargo.toml").exists() {
            let _ = std::fs::remove_dir_all(&dir);
            let _ = git(&repo, &["worktree", "prune"]);
            git(&repo, &["worktree", "add", "--detach", "--force", path_str(&dir)?, &rev])
                .with_context(|| format!("cannot check out {rev} into {}", dir.display()))?;
        }
        if !dir.join("benches/benches/inference.rs").exists() {
            outln!("bench-gate: no baseline: {} ({rev}) has no benchmarks yet; nothing to compare", args.base)?;
            remove_worktree(&repo, &dir);
            return Ok(());
        }
        let old = build(&repo, &dir, false, "old");
        (old, Some(dir))
    };
    let old = match old {
        Ok(b) => b,
        Err(e) => {
            if let Some(dir) = &worktree {
                remove_worktree(&repo, dir);
            }
            outln!("bench-gate: no baseline: the base revision's benchmarks do not build ({e:#}); nothing to compare")?;
            return Ok(());
        }
    };
    outln!(
        "bench-gate: {} rounds of {GATED}, threshold {:.0}% beyond noise{}",
        args.rounds,
        args.threshold * 100.0,
        if args.slow_new { "; new build has slow-kernels" } else { "" }
    )?;
    // medians[label][bench] = one median (ns) per round
    let mut medians: BTreeMap<&str, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let mut no_baseline: Option<String> = None;
    for round in 0..args.rounds {
        let order: [&Build; 2] = if round % 2 == 0 { [&old, &new] } else { [&new, &old] };
        for b in order {
            if b.label == "old" && no_baseline.is_some() {
                continue;
            }
            let home = work.join(format!("criterion-{}-{round}", b.label));
            let _ = std::fs::remove_dir_all(&home);
            let run = Command::new(&b.exe)
                .args(["--bench", "--noplot", "--warm-up-time", "0.3"])
                .args(["--measurement-time", &args.measurement_time.to_string()])
                .arg(GATED)
                .env("CRITERION_HOME", &home)
                .env("CIFAR_BENCH_MODELS", &models)
                .stdout(Stdio::null())
                .output()
                .with_context(|| format!("cannot run {}", b.exe.display()))?;
            if !run.status.success() {
                if b.label == "old" {
                    // The base revision's code cannot run today's benchmark models (a
                    // format change): every benchmark is without a baseline.
                    no_baseline = Some(format!("{}: {}", run.status, last_line(&run.stderr)));
                    continue;
                }
                bail!("the {} benchmarks failed ({}):\n{}", b.label, run.status, String::from_utf8_lossy(&run.stderr));
            }
            for (id, ns) in read_medians(&home)? {
                medians.entry(b.label).or_default().entry(id).or_default().push(ns);
            }
        }
        errln!("bench-gate: round {}/{} done ({:.0} s)", round + 1, args.rounds, started.elapsed().as_secs_f64());
    }
    if let Some(dir) = &worktree {
        remove_worktree(&repo, dir);
    }
    let Some(new_m) = medians.get("new") else {
        bail!("no benchmark results were found (did the filter {GATED} match nothing?)");
    };
    let empty = BTreeMap::new();
    let old_m = medians.get("old").unwrap_or(&empty);
    if let Some(why) = &no_baseline {
        outln!("bench-gate: the base revision cannot run these benchmarks ({why}): no baseline for any")?;
    }
    outln!("{:<32} {:>12} {:>12} {:>8} {:>8}  verdict", "benchmark", "old", "new", "ratio", "+-u")?;
    let mut failed = 0;
    for (id, news) in new_m {
        let Some(olds) = old_m.get(id) else {
            outln!(
                "{id:<32} {:>12} {:>12} {:>8} {:>8}  no baseline: the base cannot run it",
                "-",
                fmt_ns(median(news)),
                "-",
                "-"
            )?;
            continue;
        };
        let logs: Vec<f64> = olds.iter().zip(news).map(|(o, n)| (n / o).ln()).collect();
        let ratio = median(&logs).exp();
        let center = median(&logs);
        let sigma = 1.4826 * median(&logs.iter().map(|l| (l - center).abs()).collect::<Vec<_>>());
        let noise = 2.0 * 1.2533 * sigma / (logs.len() as f64).sqrt();
        let verdict = if ratio - 1.0 > args.threshold + noise {
            failed += 1;
            "FAIL: slower"
        } else if noise > args.threshold {
            "TOO NOISY to judge"
        } else {
            "pass"
        };
        outln!(
            "{id:<32} {:>12} {:>12} {:>8.3} {:>7.1}%  {verdict}",
            fmt_ns(median(olds)),
            fmt_ns(median(news)),
            ratio,
            noise * 100.0
        )?;
    }
    outln!("bench-gate: {} in {:.0} s", if failed > 0 { "FAILED" } else { "passed" }, started.elapsed().as_secs_f64())?;
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// The last non-empty line of a program's output (the reason it stopped).
fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} us", ns / 1e3)
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git").current_dir(dir).args(args).output().context("cannot run git")?;
    if !out.status.success() {
        bail!("git {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git_root() -> Result<PathBuf> {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(PathBuf::from(git(&here, &["rev-parse", "--show-toplevel"])?))
}

fn remove_worktree(repo: &Path, dir: &Path) {
    if let Ok(d) = path_str(dir) {
        let _ = git(repo, &["worktree", "remove", "--force", d]);
    }
}

/// The target directory both builds share: `CARGO_TARGET_DIR` where the user (or
/// scripts/bench-gate.sh, from `cargo metadata`) set it, else the repository's `target/`.
fn target_dir(repo: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo.join("target"))
}

/// Builds the `inference` bench of the checkout at `src` into the shared target
/// directory (dependencies are shared between the two builds) and returns its executable.
fn build(repo: &Path, src: &Path, slow: bool, label: &'static str) -> Result<Build> {
    errln!("bench-gate: building the {label} benchmarks ({})", src.display());
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(src)
        .args(["bench", "--no-run", "--locked", "-p", "cifar-benches", "--bench", "inference", "--message-format=json"])
        .env("CARGO_TARGET_DIR", target_dir(repo))
        .stderr(Stdio::inherit());
    if slow {
        cmd.args(["--features", "slow-kernels"]);
    }
    let out = cmd.output().context("cannot run cargo")?;
    if !out.status.success() {
        bail!("cargo bench --no-run failed in {}", src.display());
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let is_bench = msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bench"));
        if msg["reason"] == "compiler-artifact" && is_bench {
            if let Some(exe) = msg["executable"].as_str() {
                return Ok(Build { label, exe: PathBuf::from(exe) });
            }
        }
    }
    bail!("cargo did not report the benchmark executable for {}", src.display())
}

/// `(benchmark id, median ns)` of every benchmark Criterion recorded under `home`.
fn read_medians(home: &Path) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    let mut stack = vec![home.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.ends_with("new/benchmark.json") {
                let bench: serde_json::Value = serde_json::from_slice(&std::fs::read(&p)?)?;
                let estimates: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(p.with_file_name("estimates.json"))?)?;
                if let (Some(id), Some(ns)) =
                    (bench["full_id"].as_str(), estimates["median"]["point_estimate"].as_f64())
                {
                    out.push((id.to_string(), ns));
                }
            }
        }
    }
    Ok(out)
}
