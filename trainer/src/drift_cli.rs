//! `trainer drift`: the drift statistics `cifar-serve` reports, computed offline over a
//! folder or archive of images, with a two-sample test per feature and a verdict.
//!
//! The window statistics are the SDK's ([`cifar_sdk::drift::DriftWindow`], the same code
//! the server runs); this command adds what an offline check can afford: a chi-square
//! test of homogeneity per feature between the reference histogram and the images'
//! histogram (are the two samples from one distribution?), next to the PSI (how far
//! apart are they?). With thousands of images the test finds tiny shifts significant,
//! so the verdict follows the PSI thresholds, as the server's alarm does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use cifar_sdk::drift::{
    feature_histogram, DriftConfig, DriftStats, DriftWindow, Histogram, Observation, FEATURE_NAMES,
};
use cifar_sdk::Model;
use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF};

use crate::compile::sdk_options;
use crate::data::{image_folder, IMAGE_BYTES};

/// Images per SDK call.
const CALL_IMAGES: usize = 1024;
/// A feature's PSI under this is read as stable.
pub const PSI_STABLE: f64 = 0.1;

/// `trainer drift`.
#[derive(clap::Args)]
#[command(after_help = "\
The verdict is the server's: drifting when the drift score (the largest PSI over the eight
input features and the top-1 confidence) passes --threshold, or the predicted-class
distribution's Jensen-Shannon divergence passes --class-threshold. Per feature: PSI under 0.1
reads as stable, 0.1-0.25 as a moderate shift, over 0.25 as a significant one; the p-value is
a chi-square test of homogeneity between the reference histogram and the images' histogram.

Examples:
  trainer drift --model model.cifar --images incoming/          # a table and a verdict
  trainer drift --model model.cifar --images batch.tar.gz --json
  trainer drift --model model.cifar --images incoming/ --fail-on-drift   # exit 3 when drifting")]
pub struct DriftArgs {
    /// The compiled model; its file holds the reference profile.
    #[arg(long, value_name = "FILE.cifar")]
    model: PathBuf,
    /// A folder (searched recursively) or a .tar / .tar.gz of images (PNG, JPEG, PPM; any
    /// layout, any size: resized to 32x32 as the importer does).
    #[arg(long, value_name = "DIR|TAR")]
    images: PathBuf,
    /// Drift score (largest PSI) at which the verdict is "drifting"; `cifar-serve
    /// --drift-threshold`.
    #[arg(long, default_value_t = DriftConfig::default().threshold)]
    threshold: f64,
    /// Jensen-Shannon divergence (bits) of the predicted classes at which the verdict is
    /// "drifting"; `cifar-serve --drift-class-threshold`.
    #[arg(long, default_value_t = DriftConfig::default().class_threshold)]
    class_threshold: f64,
    /// Images needed before drift is judged; `cifar-serve --drift-min-images` (PSI over
    /// 20 bins is noise on a handful of images).
    #[arg(long, default_value_t = DriftConfig::default().min_images)]
    min_images: usize,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Exit with status 3 when the verdict is "drifting" (for scripts and CI); status 1
    /// when nothing can be judged (no reference in the model, fewer than --min-images).
    #[arg(long)]
    fail_on_drift: bool,
}

/// One feature's line of the report.
#[derive(Debug, Serialize)]
pub struct FeatureTest {
    /// Feature name.
    pub name: String,
    /// PSI against the reference.
    pub psi: f64,
    /// `stable`, `moderate` or `significant` (PSI under 0.1, up to the threshold, over it).
    pub shift: &'static str,
    /// Chi-square homogeneity statistic.
    pub chi2: f64,
    /// Degrees of freedom of the test.
    pub dof: usize,
    /// Probability of a statistic this large if both samples came from one distribution.
    pub p_value: f64,
    /// Mean over the images.
    pub mean: f64,
    /// Mean of the reference histogram.
    pub reference_mean: f64,
}

/// What `trainer drift --json` prints.
#[derive(Debug, Serialize)]
pub struct DriftCheck {
    /// The model file.
    pub model: String,
    /// The images' source.
    pub images: String,
    /// `drifting`, `stable`, `not judged` (fewer images than the minimum), or `no
    /// reference` (a model file without a profile).
    pub verdict: &'static str,
    /// Per-feature tests (the confidence last).
    pub tests: Vec<FeatureTest>,
    /// The server's statistics over all the images as one window.
    pub stats: DriftStats,
}

/// Logits and drift observations of `n` RGB8 32x32 images.
pub fn classify_and_observe(model: &Arc<Model>, pixels: &[u8], n: usize) -> Result<(Vec<f32>, Vec<Observation>)> {
    let classes = model.classes();
    let mut session = model.session()?;
    let mut logits = Vec::with_capacity(n * classes);
    for part in pixels.chunks(CALL_IMAGES * IMAGE_BYTES) {
        logits.extend(session.logits_rgb8(part, part.len() / IMAGE_BYTES)?);
    }
    let observations = pixels
        .chunks_exact(IMAGE_BYTES)
        .zip(logits.chunks_exact(classes.max(1)))
        .map(|(img, row)| Observation::of_image(img, 32, 32, row))
        .collect();
    Ok((logits, observations))
}

/// One window holding all `n` images (judged from `min_images`, as the server judges).
/// The server's window holds its last 1,000 images; PSI's sampling noise shrinks as a
/// window grows, so scores over many more images read a little lower than the server's.
pub fn whole_window(n: usize, threshold: f64, class_threshold: f64, min_images: usize) -> DriftConfig {
    DriftConfig { window: n.max(1), threshold, class_threshold, min_images }
}

/// Chi-square test of homogeneity of two histograms over the same bins (unequal
/// totals); returns the statistic, the degrees of freedom and the p-value.
pub fn chi_square_homogeneity(reference: &[u64], observed: &[u64]) -> (f64, usize, f64) {
    let (r_total, o_total) = (reference.iter().sum::<u64>() as f64, observed.iter().sum::<u64>() as f64);
    if r_total == 0.0 || o_total == 0.0 {
        return (0.0, 0, 1.0);
    }
    let (kr, ko) = ((o_total / r_total).sqrt(), (r_total / o_total).sqrt());
    let (mut chi2, mut bins) = (0.0, 0usize);
    for (&r, &o) in reference.iter().zip(observed) {
        if r + o == 0 {
            continue;
        }
        let d = kr * r as f64 - ko * o as f64;
        chi2 += d * d / (r + o) as f64;
        bins += 1;
    }
    let dof = bins.saturating_sub(1);
    let p = match ChiSquared::new(dof as f64) {
        Ok(dist) if dof > 0 => dist.sf(chi2),
        _ => 1.0,
    };
    (chi2, dof, p)
}

fn shift(psi: f64, threshold: f64) -> &'static str {
    if psi < PSI_STABLE {
        "stable"
    } else if psi <= threshold {
        "moderate"
    } else {
        "significant"
    }
}

/// Tests and statistics of `observations` against `model`'s reference.
pub fn check(model: &Model, observations: &[Observation], config: DriftConfig) -> (Vec<FeatureTest>, DriftStats) {
    let mut window = DriftWindow::for_model(config, model);
    window.observe(observations);
    let stats = window.stats();
    let mut tests = Vec::new();
    if let Some(reference) = &model.metadata().drift {
        let mut hist = |name: &str, r: &Histogram, value: &dyn Fn(&Observation) -> f32, mean: f64, psi: f64| {
            let mut h = Histogram { edges: r.edges.clone(), counts: vec![0; r.counts.len()] };
            observations.iter().for_each(|o| h.add(value(o)));
            let (chi2, dof, p_value) = chi_square_homogeneity(&r.counts, &h.counts);
            tests.push(FeatureTest {
                name: name.to_string(),
                psi,
                shift: shift(psi, config.threshold),
                chi2,
                dof,
                p_value,
                mean,
                reference_mean: cifar_sdk::drift::histogram_mean(r),
            });
        };
        for (i, (name, f)) in FEATURE_NAMES.iter().zip(&stats.features).enumerate() {
            let r = reference.features.get(*name).cloned().unwrap_or_else(|| feature_histogram(name));
            hist(name, &r, &|o: &Observation| o.features[i], f.window_mean, f.psi);
        }
        let n = observations.len().max(1) as f64;
        let mean = observations.iter().map(|o| f64::from(o.confidence)).sum::<f64>() / n;
        hist("confidence", &reference.confidence, &|o: &Observation| o.confidence, mean, stats.confidence_psi);
    }
    (tests, stats)
}

/// Runs `trainer drift`.
pub fn drift_command(args: DriftArgs, quiet: bool) -> Result<()> {
    let model =
        Model::open(&args.model, &sdk_options()).with_context(|| format!("cannot open {}", args.model.display()))?;
    let (names, pixels) = image_folder::read_images(&args.images, quiet)?;
    errln!("classifying {} images of {} with {}", names.len(), args.images.display(), args.model.display());
    let (_, observations) = classify_and_observe(&model, &pixels, names.len())?;
    let config = whole_window(names.len(), args.threshold, args.class_threshold, args.min_images);
    let (tests, stats) = check(&model, &observations, config);
    let verdict = match (stats.has_reference, stats.judged, stats.drifting) {
        (false, _, _) => "no reference",
        (true, false, _) => "not judged",
        (true, true, true) => "drifting",
        (true, true, false) => "stable",
    };
    let report = DriftCheck {
        model: args.model.display().to_string(),
        images: args.images.display().to_string(),
        verdict,
        tests,
        stats,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print_table(&report, &args.model)?;
    }
    if args.fail_on_drift && !report.stats.has_reference {
        bail!(
            "{} has no drift reference, so --fail-on-drift has nothing to check (recompile it with `trainer compile`)",
            args.model.display()
        );
    }
    if args.fail_on_drift && !report.stats.judged {
        bail!(
            "only {} images: drift is judged from {} (--min-images), so --fail-on-drift cannot decide",
            report.stats.window_images,
            report.stats.min_images
        );
    }
    if args.fail_on_drift && report.stats.drifting {
        return Err(cifar_cli_io::CheckFailed(format!(
            "drifting: score {:.3} (threshold {}), class JS {:.3} (threshold {})",
            report.stats.score, report.stats.threshold, report.stats.class_js, report.stats.class_threshold
        ))
        .into());
    }
    Ok(())
}

fn print_table(r: &DriftCheck, model: &Path) -> Result<()> {
    let s = &r.stats;
    if !s.has_reference {
        outln!(
            "{} has no drift reference (compiled without held-out data): nothing to compare {} images with",
            model.display(),
            s.window_images
        )?;
        return Ok(());
    }
    outln!(
        "{} images against the reference of {} ({} images)\n",
        s.window_images,
        s.reference_source,
        s.reference_images
    )?;
    outln!("{:<12} {:>8} {:>8} {:>8} {:>9} {:>10}  shift", "feature", "mean", "ref", "PSI", "chi2", "p-value")?;
    for t in &r.tests {
        outln!(
            "{:<12} {:>8.4} {:>8.4} {:>8.3} {:>9.1} {:>10.2e}  {}",
            t.name,
            t.mean,
            t.reference_mean,
            t.psi,
            t.chi2,
            t.p_value,
            t.shift
        )?;
    }
    outln!(
        "\ndrift score {:.3} (threshold {}), class JS {:.3} bits (threshold {}){}",
        s.score,
        s.threshold,
        s.class_js,
        s.class_threshold,
        if s.judged { String::new() } else { format!(" - too few images to judge (fewer than {})", s.min_images) }
    )?;
    outln!("verdict: {}", r.verdict)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chi_square_of_equal_histograms_is_zero_and_of_different_ones_significant() {
        let (chi2, dof, p) = chi_square_homogeneity(&[10, 20, 30, 0], &[20, 40, 60, 0]);
        assert!(chi2.abs() < 1e-9 && dof == 2 && (p - 1.0).abs() < 1e-9);
        let (_, _, p) = chi_square_homogeneity(&[100, 100, 100], &[10, 100, 190]);
        assert!(p < 1e-6, "{p}");
        // A textbook value: 2 bins, statistic 3.84 at 1 dof is p = 0.05.
        let (chi2, dof, p) = chi_square_homogeneity(&[50, 50], &[50 + 14, 50 - 14]);
        assert_eq!(dof, 1);
        let expect = ChiSquared::new(1.0).map(|d| d.sf(chi2)).unwrap_or(0.0);
        assert!((p - expect).abs() < 1e-12 && p < 0.06 && p > 0.001, "{chi2} {p}");
    }
}
