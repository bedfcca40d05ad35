//! The statistics of the reports: percentile bootstrap intervals over resampled items, the
//! exact McNemar test of two methods on the same items, Holm's correction, and the summaries
//! over seeds (mean, sample standard deviation, Student's t interval; Wilson's interval of one
//! proportion).
//!
//! Resampling is by *unit* (an item's `origin_id`): a unit carries every value it has (its
//! seeds, or its conditions), so the draws of one column are the same for every method, and a
//! difference between two methods is computed on the same draws (a paired bootstrap). Draws come
//! from [`ItemRng`] seeded by names, so an interval is the same on every run and machine.

use mipipe_stage_schema::ItemRng;

/// Resamples per interval (the design's 2,000).
pub const RESAMPLES: usize = 2000;

/// The draws of one resampling: how often each unit is drawn, per resample.
pub struct Draws {
    counts: Vec<Vec<u32>>,
}

impl Draws {
    /// `resamples` draws of `units` units with replacement, seeded by `name`.
    pub fn new(units: usize, resamples: usize, name: &[&str]) -> Self {
        let mut rng = ItemRng::new(0, &[&["bootstrap"], name].concat());
        let counts = (0..resamples)
            .map(|_| {
                let mut counts = vec![0u32; units];
                for _ in 0..units {
                    counts[rng.below(units.max(1))] += 1;
                }
                counts
            })
            .collect();
        Self { counts }
    }

    /// The estimate of each resample for per-unit sums and counts (a unit drawn twice counts
    /// twice); `None` where a resample drew no unit with a value.
    pub fn estimates(&self, sums: &[f64], counts: &[u32]) -> Vec<Option<f64>> {
        self.counts
            .iter()
            .map(|draw| {
                let (mut total, mut n) = (0.0, 0u64);
                for ((&k, &s), &c) in draw.iter().zip(sums).zip(counts) {
                    if k > 0 && c > 0 {
                        total += k as f64 * s;
                        n += u64::from(k * c);
                    }
                }
                (n > 0).then(|| total / n as f64)
            })
            .collect()
    }
}

/// The 2.5% and 97.5% percentiles of the estimates that exist.
pub fn percentile_interval(estimates: &[Option<f64>]) -> Option<(f64, f64)> {
    let mut values: Vec<f64> = estimates.iter().flatten().copied().collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let position = q * (values.len() - 1) as f64;
        let (lo, hi) = (position.floor() as usize, position.ceil() as usize);
        values[lo] + (values[hi] - values[lo]) * (position - lo as f64)
    };
    Some((at(0.025), at(0.975)))
}

/// The 95% interval of a mean of values, one per unit, by resampling them.
pub fn mean_interval(values: &[f64], name: &[&str]) -> Option<(f64, f64)> {
    let draws = Draws::new(values.len(), RESAMPLES, name);
    percentile_interval(&draws.estimates(values, &vec![1; values.len()]))
}

/// The mean of `values` (None when there are none).
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The sample standard deviation of `values` (None for fewer than two).
pub fn sample_std(values: &[f64]) -> Option<f64> {
    let mean = mean(values)?;
    let n = values.len();
    (n >= 2)
        .then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt())
}

/// The 95% Student's t interval of the mean of `values` (None for fewer than two).
pub fn t_interval(values: &[f64]) -> Option<(f64, f64)> {
    let (mean, std) = (mean(values)?, sample_std(values)?);
    let k = values.len();
    let half = student_t_975(k - 1) * std / (k as f64).sqrt();
    Some((mean - half, mean + half))
}

/// Wilson's 95% score interval of a proportion `p` of `n` items.
pub fn wilson(p: f64, n: u64) -> (f64, f64) {
    let z = 1.959_963_984_540_054;
    let n = n as f64;
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom.
fn student_t_975(df: usize) -> f64 {
    const TABLE: [f64; 10] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    ];
    match df {
        0 => f64::NAN,
        1..=10 => TABLE[df - 1],
        11..=20 => 2.086 + (2.228 - 2.086) * (20 - df) as f64 / 10.0,
        21..=30 => 2.042 + (2.086 - 2.042) * (30 - df) as f64 / 10.0,
        _ => 1.96,
    }
}

/// The two-sided exact McNemar test: the probability, if neither method is better, of
/// discordant pairs at least as unbalanced as `b` (only the first right) against `c` (only
/// the second right): twice the binomial(b + c, 1/2) tail, at most 1.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let ln_factorial = |k: u64| (1..=k).map(|i| (i as f64).ln()).sum::<f64>();
    let ln_n = ln_factorial(n);
    let half = n as f64 * std::f64::consts::LN_2;
    let tail: f64 = (0..=b.min(c))
        .map(|k| (ln_n - ln_factorial(k) - ln_factorial(n - k) - half).exp())
        .sum();
    (2.0 * tail).min(1.0)
}

/// Holm's step-down adjusted p-values, in the order given.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adjusted = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        adjusted[i] = running;
    }
    adjusted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_matches_the_binomial_tail() {
        // b = 1, c = 9: 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * 11 / 1024.
        assert!((mcnemar_exact(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
        assert!((mcnemar_exact(9, 1) - 22.0 / 1024.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // Large counts do not underflow: 2,000 discordant pairs split 900/1,100.
        let p = mcnemar_exact(900, 1100);
        assert!(p > 1e-6 && p < 1e-4, "{p}");
    }

    #[test]
    fn holm_adjusts_step_down_and_keeps_order() {
        let adjusted = holm(&[0.01, 0.04, 0.03, 0.2]);
        let want = [0.04, 0.09, 0.09, 0.2];
        for (a, w) in adjusted.iter().zip(want) {
            assert!((a - w).abs() < 1e-12, "{adjusted:?}");
        }
    }

    #[test]
    fn a_bootstrap_interval_covers_the_mean_with_the_binomial_width() {
        // 400 items at 50%: the interval is about ±4.9 points, as the normal approximation says.
        let values: Vec<f64> = (0..400).map(|i| (i % 2) as f64).collect();
        let (lo, hi) = mean_interval(&values, &["test"]).unwrap();
        assert!(lo < 0.5 && hi > 0.5);
        let half = (hi - lo) / 2.0;
        assert!((half - 0.049).abs() < 0.006, "{lo} {hi}");
        // The same names give the same draws.
        assert_eq!(mean_interval(&values, &["test"]), Some((lo, hi)));
        // A constant has a zero-width interval.
        assert_eq!(mean_interval(&[1.0; 50], &["test"]), Some((1.0, 1.0)));
    }
}
