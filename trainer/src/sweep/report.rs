//! What a sweep leaves for people: `trials.md` (the table, the best trial, how each
//! parameter relates to the metric), `best.toml` and `sweep.png`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::spec::{override_of, Distribution, Goal, SweepSpec};
use super::{State, Status, Trial};
use crate::config::Config;
use crate::plot::{have_font, plot_err as err};

/// The best finished trial.
pub fn best<'a>(spec: &SweepSpec, state: &'a State) -> Option<&'a Trial> {
    let better = |a: f64, b: f64| match spec.goal() {
        Goal::Maximize => a > b,
        Goal::Minimize => a < b,
    };
    state.trials.iter().filter(|t| t.status == Status::Finished && t.metric.is_some_and(f64::is_finite)).fold(
        None,
        |acc: Option<&Trial>, t| match acc {
            Some(b) if !better(t.metric.unwrap_or(f64::NAN), b.metric.unwrap_or(f64::NAN)) => Some(b),
            _ => Some(t),
        },
    )
}

/// Writes `trials.md`, `best.toml` (when a trial finished) and `sweep.png`.
pub fn write(dir: &Path, spec: &SweepSpec, state: &State, base: &Config) -> Result<()> {
    cifar_sdk::write_atomic(&dir.join("trials.md"), table(spec, state, dir).as_bytes())?;
    if let Some(b) = best(spec, state) {
        let mut o: Vec<String> = b.params.iter().map(|(k, v)| override_of(k, v)).collect();
        o.push(override_of("name", &toml::Value::String(format!("{}-best", spec.name))));
        let cfg = base.with_overrides(&o)?;
        let text = format!(
            "# The best trial of sweep {:?}: {} ({} {:.4}).\n# `trainer fit --config {}` trains it again.\n{}",
            spec.name,
            b.id,
            spec.metric.name,
            b.metric.unwrap_or(f64::NAN),
            dir.join("best.toml").display(),
            cfg.to_toml()?
        );
        cifar_sdk::write_atomic(&dir.join("best.toml"), text.as_bytes())?;
    }
    if let Err(e) = chart(&dir.join("sweep.png"), spec, state) {
        errln!("warning: could not draw sweep.png: {e:#}");
    }
    Ok(())
}

/// The lines printed at the end of a sweep.
pub fn summary_text(spec: &SweepSpec, state: &State) -> String {
    let count = |s: Status| state.trials.iter().filter(|t| t.status == s).count();
    let mut out = format!(
        "sweep {:?}: {} finished, {} stopped early, {} failed",
        spec.name,
        count(Status::Finished),
        count(Status::Stopped),
        count(Status::Failed)
    );
    match best(spec, state) {
        Some(b) => {
            let _ = write!(out, "\nbest: {} with {} {:.4}:", b.id, spec.metric.name, b.metric.unwrap_or(f64::NAN));
            for (k, v) in &b.params {
                let _ = write!(out, " {k}={v}");
            }
        }
        None => out.push_str("\nno trial finished"),
    }
    out
}

fn table(spec: &SweepSpec, state: &State, dir: &Path) -> String {
    let mut s = format!("# Sweep `{}`\n\n", spec.name);
    if !spec.description.is_empty() {
        let _ = writeln!(s, "{}\n", spec.description);
    }
    let _ = write!(
        s,
        "Method `{}`, {} trials, metric `{}` ({}).",
        format!("{:?}", spec.method).to_lowercase(),
        state.trials.len(),
        spec.metric.name,
        format!("{:?}", spec.goal()).to_lowercase()
    );
    match &spec.early_terminate {
        Some(e) => {
            let _ = writeln!(
                s,
                " Early termination: hyperband (asynchronous successive halving), min_iter {} epochs, eta {}: \
                 at epochs {}, {}, ... (before its last) a trial goes on only among the best ceil(n/{}) of the n trials there so far.\n",
                e.min_iter,
                e.eta,
                e.min_iter,
                e.min_iter * e.eta,
                e.eta
            );
        }
        None => s.push_str(" No early termination.\n\n"),
    }
    let keys: Vec<&String> = spec.parameters.keys().collect();
    let best_id = best(spec, state).map(|b| b.id.clone());
    let _ = write!(s, "| trial | status | {} | epochs |", spec.metric.name);
    for k in &keys {
        let _ = write!(s, " {k} |");
    }
    s.push_str(" time |\n|---|---|---|---|");
    for _ in &keys {
        s.push_str("---|");
    }
    s.push_str("---|\n");
    for t in &state.trials {
        let status = match t.status {
            Status::Stopped => format!("stopped at epoch {}", t.stopped_at.unwrap_or(0)),
            Status::Finished if Some(&t.id) == best_id.as_ref() => "**finished, best**".into(),
            other => format!("{other:?}").to_lowercase(),
        };
        let metric = t.metric.map(|m| format!("{m:.4}")).unwrap_or_else(|| "-".into());
        let epochs = if t.epochs == 0 { "-".to_string() } else { t.epochs.to_string() };
        let _ = write!(s, "| {} | {status} | {metric} | {epochs} |", t.id);
        for k in &keys {
            let _ = write!(s, " {} |", t.params.get(*k).map(|v| v.to_string()).unwrap_or_default());
        }
        let _ = writeln!(s, " {:.0}s |", t.secs);
    }
    let failed: Vec<&Trial> = state.trials.iter().filter(|t| t.status == Status::Failed).collect();
    if !failed.is_empty() {
        s.push_str("\n## Failed trials\n\n");
        for t in failed {
            let _ = writeln!(s, "- {}: {}", t.id, t.error);
        }
    }
    if let Some(b) = best(spec, state) {
        let _ = writeln!(
            s,
            "\n## Best\n\n{}: {} {:.4}. Its run: `{}`; its config: `{}`.",
            b.id,
            spec.metric.name,
            b.metric.unwrap_or(f64::NAN),
            dir.join("trials").join(&b.id).display(),
            dir.join("best.toml").display()
        );
    }
    s.push_str("\n## Parameters and the metric (finished trials)\n\n");
    s.push_str(&relations(spec, state));
    s
}

/// How each parameter relates to the metric over finished trials: Pearson's r for
/// numbers (of the logarithm for log-uniform parameters), the mean metric per value for
/// the rest.
fn relations(spec: &SweepSpec, state: &State) -> String {
    let done: Vec<&Trial> =
        state.trials.iter().filter(|t| t.status == Status::Finished && t.metric.is_some_and(f64::is_finite)).collect();
    if done.len() < 3 {
        return format!("Too few finished trials ({}) to relate parameters to the metric.\n", done.len());
    }
    let mut s = String::from("| parameter | relation to the metric |\n|---|---|\n");
    for (key, p) in &spec.parameters {
        let log = matches!(p.distribution, Some(Distribution::LogUniformValues | Distribution::LogUniform));
        let xs: Option<Vec<f64>> = done
            .iter()
            .map(|t| match t.params.get(key) {
                Some(toml::Value::Float(f)) => Some(if log { f.ln() } else { *f }),
                Some(toml::Value::Integer(i)) => Some(*i as f64),
                _ => None,
            })
            .collect();
        let ys: Vec<f64> = done.iter().map(|t| t.metric.unwrap_or(f64::NAN)).collect();
        let text = match xs {
            Some(xs) => match pearson(&xs, &ys) {
                Some(r) => format!("r = {r:+.2}{}", if log { " (of its logarithm)" } else { "" }),
                None => "constant".into(),
            },
            None => {
                let mut by: BTreeMap<String, (f64, usize)> = BTreeMap::new();
                for t in &done {
                    let e = by.entry(t.params.get(key).map(|v| v.to_string()).unwrap_or_default()).or_default();
                    e.0 += t.metric.unwrap_or(f64::NAN);
                    e.1 += 1;
                }
                by.iter()
                    .map(|(v, (sum, n))| format!("{v}: {:.4} (n={n})", sum / *n as f64))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        };
        let _ = writeln!(s, "| {key} | {text} |");
    }
    s
}

fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// A colour from red (worst) to green (best) for `f` in [0, 1].
fn shade(f: f64) -> RGBColor {
    let f = f.clamp(0.0, 1.0);
    RGBColor((220.0 * (1.0 - f)) as u8 + 20, (170.0 * f) as u8 + 40, 60)
}

/// `sweep.png`: left, the metric per epoch of every trial (stopped trials end early,
/// dashed in grey at their stop); right, parallel coordinates: one axis per parameter and
/// one for the metric, a line per finished or stopped trial coloured by its metric.
fn chart(path: &Path, spec: &SweepSpec, state: &State) -> Result<()> {
    let text = have_font();
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(620);
    let pts: Vec<(usize, f64)> = state.trials.iter().flat_map(|t| t.history.iter().copied()).collect();
    let finals: Vec<f64> = state.trials.iter().filter_map(|t| t.metric).filter(|m| m.is_finite()).collect();
    let (mut y0, mut y1) = (f64::MAX, f64::MIN);
    for v in pts.iter().map(|p| p.1).chain(finals.iter().copied()) {
        y0 = y0.min(v);
        y1 = y1.max(v);
    }
    if y0 > y1 {
        root.present().map_err(err)?;
        return Ok(());
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let x1 = pts.iter().map(|p| p.0).max().unwrap_or(1).max(1) as f64 + 1.0;
    // Colours and the metric axis span the finished trials' metrics (stopped trials,
    // judged early, sit at the worst end), or every final metric before any finished.
    let finished: Vec<f64> = state
        .trials
        .iter()
        .filter(|t| t.status == Status::Finished)
        .filter_map(|t| t.metric)
        .filter(|m| m.is_finite())
        .collect();
    let span = if finished.is_empty() { &finals } else { &finished };
    let (f0, f1) = span.iter().fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    let rank = |v: f64| {
        let f = if f1 > f0 { ((v - f0) / (f1 - f0)).clamp(0.0, 1.0) } else { 1.0 };
        if spec.goal() == Goal::Maximize {
            f
        } else {
            1.0 - f
        }
    };
    {
        let mut b = ChartBuilder::on(&left);
        b.margin(15).x_label_area_size(if text { 40 } else { 5 }).y_label_area_size(if text { 60 } else { 5 });
        if text {
            b.caption(format!("{} per epoch (end: final)", spec.metric.name), ("sans-serif", 20));
        }
        let mut c = b.build_cartesian_2d(0.5..x1 + 0.5, (y0 - pad)..(y1 + pad)).map_err(err)?;
        let mut mesh = c.configure_mesh();
        if text {
            mesh.x_desc("epoch").y_desc(spec.metric.name.as_str());
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(err)?;
        for t in &state.trials {
            let mut line: Vec<(f64, f64)> = t.history.iter().map(|(e, v)| (*e as f64, *v)).collect();
            if t.status == Status::Finished {
                if let Some(m) = t.metric {
                    line.push((x1, m));
                }
            }
            let color = match t.status {
                Status::Stopped => RGBColor(150, 150, 150),
                _ => shade(rank(t.metric.unwrap_or(y0))),
            };
            c.draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2))).map_err(err)?;
            if t.status == Status::Stopped {
                if let Some(&(x, y)) = line.last() {
                    c.draw_series(std::iter::once(Cross::new((x, y), 5, RGBColor(200, 40, 40).stroke_width(2))))
                        .map_err(err)?;
                }
            }
        }
    }
    // Parallel coordinates.
    // Constants (`value`) get no axis.
    let keys: Vec<&String> = spec.parameters.iter().filter(|(_, p)| p.value.is_none()).map(|(k, _)| k).collect();
    let axes = keys.len() + 1;
    let mut b = ChartBuilder::on(&right);
    b.margin(25).x_label_area_size(if text { 40 } else { 5 });
    if text {
        b.caption("parameters (x: stopped early)", ("sans-serif", 20));
    }
    let mut c = b.build_cartesian_2d(-0.2..(axes as f64 - 0.8), -0.05..1.1).map_err(err)?;
    let position = |key: &str, v: &toml::Value| -> f64 {
        let all: Vec<String> = {
            let mut a: Vec<String> =
                state.trials.iter().filter_map(|t| t.params.get(key)).map(|v| v.to_string()).collect();
            a.sort();
            a.dedup();
            a
        };
        let nums: Option<Vec<f64>> = state.trials.iter().filter_map(|t| t.params.get(key)).map(number).collect();
        match (nums, number(v)) {
            (Some(ns), Some(x)) => {
                let log = ns.iter().all(|n| *n > 0.0)
                    && ns.iter().cloned().fold(0.0, f64::max) / ns.iter().cloned().fold(f64::MAX, f64::min) > 20.0;
                let f = |n: f64| if log { n.ln() } else { n };
                let (lo, hi) = ns.iter().fold((f64::MAX, f64::MIN), |(a, b), n| (a.min(f(*n)), b.max(f(*n))));
                if hi > lo {
                    (f(x) - lo) / (hi - lo)
                } else {
                    0.5
                }
            }
            _ => {
                let i = all.iter().position(|a| *a == v.to_string()).unwrap_or(0);
                if all.len() > 1 {
                    i as f64 / (all.len() - 1) as f64
                } else {
                    0.5
                }
            }
        }
    };
    for i in 0..axes {
        c.draw_series(LineSeries::new([(i as f64, 0.0), (i as f64, 1.0)], BLACK.mix(0.5))).map_err(err)?;
        if text {
            let label = keys.get(i).map_or(spec.metric.name.as_str(), |k| k.as_str());
            // Backend coordinates; labels alternate in height so that long names do not overlap.
            let at = c.backend_coord(&(i as f64, 1.0));
            let y = at.1 - if i % 2 == 0 { 18 } else { 34 };
            root.draw(&Text::new(label.to_string(), (at.0 - 40, y), ("sans-serif", 13))).map_err(err)?;
        }
    }
    for t in &state.trials {
        let Some(m) = t.metric.filter(|m| m.is_finite()) else { continue };
        let mut line: Vec<(f64, f64)> =
            keys.iter().enumerate().filter_map(|(i, k)| Some((i as f64, position(k, t.params.get(*k)?)))).collect();
        line.push(((axes - 1) as f64, rank(m)));
        let color = shade(rank(m));
        let style = if t.status == Status::Stopped { color.mix(0.35).stroke_width(1) } else { color.stroke_width(2) };
        c.draw_series(LineSeries::new(line.iter().copied(), style)).map_err(err)?;
        if t.status == Status::Stopped {
            c.draw_series(std::iter::once(Cross::new(((axes - 1) as f64, rank(m)), 4, RGBColor(200, 40, 40))))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

fn number(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Float(f) => Some(*f),
        toml::Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}
