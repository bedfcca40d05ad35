//! The statistics of the reports: the mean of a seeds × items matrix with seeds and items as
//! crossed random samples ([`crossed`]: its interval and t test, docs/reports.md), percentile
//! bootstrap intervals over resampled items, the exact McNemar test of two methods on the same
//! items, Holm's correction, and the summaries over seeds (mean, sample standard deviation,
//! Student's t interval; Wilson's interval of one proportion).
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
    student_t_quantile_975(df as f64)
}

/// The 97.5% quantile of Student's t with `df` (any positive real) degrees of freedom, by
/// bisection on the two-sided tail probability (NaN for `df` not positive).
pub fn student_t_quantile_975(df: f64) -> f64 {
    if df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    // The two-sided tail falls from 1 at t = 0; 0.05 lies below t = 1e4 for every df >= 0.5.
    let (mut low, mut high) = (0.0, 1e4);
    for _ in 0..200 {
        let mid = 0.5 * (low + high);
        if student_t_two_sided(mid, df) > 0.05 {
            low = mid;
        } else {
            high = mid;
        }
    }
    0.5 * (low + high)
}

/// The two-sided tail probability P(|T| >= |t|) of Student's t with `df` degrees of freedom:
/// the regularised incomplete beta I_{df/(df+t²)}(df/2, 1/2).
pub fn student_t_two_sided(t: f64, df: f64) -> f64 {
    if t.is_infinite() {
        return 0.0;
    }
    regularised_beta(df / (df + t * t), df / 2.0, 0.5)
}

/// The natural logarithm of the gamma function for x > 0 (Lanczos, g = 7, nine terms:
/// about 15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = C[0];
    for (k, c) in C.iter().enumerate().skip(1) {
        sum += c / (x + k as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The regularised incomplete beta function I_x(a, b), by its continued fraction (modified
/// Lentz), on the side where it converges fast.
fn regularised_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(x, a, b) / a
    } else {
        1.0 - front * beta_fraction(1.0 - x, b, a) / b
    }
}

fn beta_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let guard = |v: f64| if v.abs() < TINY { TINY } else { v };
    let mut c = 1.0;
    let mut d = 1.0 / guard(1.0 - (a + b) * x / (a + 1.0));
    let mut h = d;
    for m in 1..=500 {
        let m = m as f64;
        let even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        d = 1.0 / guard(1.0 + even * d);
        c = guard(1.0 + even / c);
        h *= d * c;
        let odd = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        d = 1.0 / guard(1.0 + odd * d);
        c = guard(1.0 + odd / c);
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The mean of a seeds × items matrix whose seeds (training runs) and items are both random
/// samples, crossed (`y[s][i] = μ + a_s + b_i + e_si`), with the variance of that mean and
/// its Satterthwaite degrees of freedom (docs/embedded-benchmark.md §9a; docs/reports.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Crossed {
    /// The grand mean.
    pub mean: f64,
    /// Its estimated variance: σ²_seeds/S + σ²_items/n + σ²_resid/(S n), from the two-way
    /// ANOVA mean squares with the seed and item components truncated at zero.
    pub variance: f64,
    /// Satterthwaite's degrees of freedom of `variance`.
    pub df: f64,
}

impl Crossed {
    /// The 95% t interval of the mean.
    pub fn interval(&self) -> (f64, f64) {
        let half = student_t_quantile_975(self.df) * self.variance.sqrt();
        (self.mean - half, self.mean + half)
    }

    /// The two-sided t test of mean = 0 (1 for a zero mean without variance, 0 for a non-zero
    /// one).
    pub fn p_value(&self) -> f64 {
        if self.variance <= 0.0 {
            return if self.mean == 0.0 { 1.0 } else { 0.0 };
        }
        student_t_two_sided(self.mean / self.variance.sqrt(), self.df)
    }
}

/// [`Crossed`] for `rows` (one row per seed, every row over the same items in the same order);
/// `None` for fewer than two items or rows of unequal length. With one seed the seed term
/// cannot be estimated and the variance is the items' (`var/n`, df = n − 1): a statement
/// about that one trained model.
pub fn crossed(rows: &[Vec<f64>]) -> Option<Crossed> {
    let seeds = rows.len();
    let items = rows.first()?.len();
    if items < 2 || rows.iter().any(|r| r.len() != items) {
        return None;
    }
    let (s, n) = (seeds as f64, items as f64);
    let grand = rows.iter().flatten().sum::<f64>() / (s * n);
    if seeds == 1 {
        let variance = sample_std(&rows[0])?.powi(2) / n;
        return Some(Crossed {
            mean: grand,
            variance,
            df: n - 1.0,
        });
    }
    let seed_means: Vec<f64> = rows.iter().map(|r| r.iter().sum::<f64>() / n).collect();
    let item_means: Vec<f64> = (0..items)
        .map(|i| rows.iter().map(|r| r[i]).sum::<f64>() / s)
        .collect();
    let squares = |values: &[f64]| values.iter().map(|v| (v - grand).powi(2)).sum::<f64>();
    let ms_seeds = n * squares(&seed_means) / (s - 1.0);
    let ms_items = s * squares(&item_means) / (n - 1.0);
    let mut residual = 0.0;
    for (row, seed_mean) in rows.iter().zip(&seed_means) {
        for (y, item_mean) in row.iter().zip(&item_means) {
            residual += (y - seed_mean - item_mean + grand).powi(2);
        }
    }
    let df_resid = (s - 1.0) * (n - 1.0);
    let ms_resid = residual / df_resid;
    // (coefficient, mean square, its degrees of freedom) of the variance's terms.
    let terms: Vec<(f64, f64, f64)> = match (ms_seeds > ms_resid, ms_items > ms_resid) {
        (true, true) => vec![
            (1.0, ms_seeds, s - 1.0),
            (1.0, ms_items, n - 1.0),
            (-1.0, ms_resid, df_resid),
        ],
        (true, false) => vec![(1.0, ms_seeds, s - 1.0)],
        (false, true) => vec![(1.0, ms_items, n - 1.0)],
        (false, false) => vec![(1.0, ms_resid, df_resid)],
    };
    let combined: f64 = terms.iter().map(|(c, ms, _)| c * ms).sum();
    let spread: f64 = terms.iter().map(|(c, ms, df)| (c * ms).powi(2) / df).sum();
    let df = if spread > 0.0 {
        (combined * combined / spread).max(1.0)
    } else {
        s * n - 1.0
    };
    Some(Crossed {
        mean: grand,
        variance: combined / (s * n),
        df,
    })
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
    fn student_t_matches_its_tables() {
        // Quantiles from the printed tables (to their three decimals).
        for (df, q) in [
            (1.0, 12.706),
            (2.0, 4.303),
            (5.0, 2.571),
            (10.0, 2.228),
            (30.0, 2.042),
        ] {
            assert!((student_t_quantile_975(df) - q).abs() < 5e-4, "df {df}");
        }
        assert!((student_t_quantile_975(1e6) - 1.959_964).abs() < 1e-4);
        // Tails: t = 2.228 with 10 df is the 5% point; t = 0 leaves everything outside.
        assert!((student_t_two_sided(2.228, 10.0) - 0.05).abs() < 1e-4);
        assert!((student_t_two_sided(0.0, 3.0) - 1.0).abs() < 1e-12);
        // One df is the Cauchy: P(|T| >= 1) = 1/2; fractional df lie between their neighbours.
        assert!((student_t_two_sided(1.0, 1.0) - 0.5).abs() < 1e-12);
        let (a, b, c) = (
            student_t_two_sided(2.5, 2.0),
            student_t_two_sided(2.5, 2.5),
            student_t_two_sided(2.5, 3.0),
        );
        assert!(a > b && b > c, "{a} {b} {c}");
    }

    /// A seeds × items matrix of 0/1 answers with a seed effect (each seed's rate) and an item
    /// effect (items in ten difficulty bands), drawn deterministically.
    fn answers(rates: &[f64], items: usize, salt: &str) -> Vec<Vec<f64>> {
        let mut rng = ItemRng::new(0, &["crossed test", salt]);
        rates
            .iter()
            .map(|rate| {
                (0..items)
                    .map(|i| {
                        let p = (rate + 0.04 * (i % 10) as f64 - 0.18).clamp(0.0, 1.0);
                        f64::from(u8::from(rng.below(10_000) < (p * 10_000.0) as usize))
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_crossed_variance_grows_with_disagreeing_seeds_and_reduces_to_items_for_one() {
        // Seeds that agree: about the item-level (binomial) width, many degrees of freedom.
        let agree = crossed(&answers(&[0.5, 0.5, 0.5], 400, "agree")).unwrap();
        let items_only = (0.25_f64 / 1200.0).sqrt();
        assert!(
            (agree.variance.sqrt() / items_only - 1.0).abs() < 0.25,
            "{agree:?}"
        );
        assert!(agree.df > 50.0, "{agree:?}");
        // Seeds that disagree (30%, 50%, 70%): the seeds dominate, df near S − 1 = 2, and the
        // interval is the t interval of the three seed means.
        let rows = answers(&[0.3, 0.5, 0.7], 400, "disagree");
        let apart = crossed(&rows).unwrap();
        assert!(apart.df < 3.0, "{apart:?}");
        let seed_means: Vec<f64> = rows.iter().map(|r| mean(r).unwrap()).collect();
        let (lo, hi) = t_interval(&seed_means).unwrap();
        let (a, b) = apart.interval();
        assert!(
            ((b - a) / (hi - lo) - 1.0).abs() < 0.1,
            "{a} {b} vs {lo} {hi}"
        );
        // One seed: the items' variance and n − 1 df.
        let one = crossed(&rows[..1]).unwrap();
        assert_eq!(one.df, 399.0);
        let std = sample_std(&rows[0]).unwrap();
        assert!((one.variance - std * std / 400.0).abs() < 1e-15);
        // Unequal rows and a single item have no estimate.
        assert!(crossed(&[vec![1.0, 0.0], vec![1.0]]).is_none());
        assert!(crossed(&[vec![1.0], vec![0.0]]).is_none());
    }

    #[test]
    fn the_crossed_test_tells_a_consistent_difference_from_a_seed_effect() {
        // Differences +1 on a tenth of the items under every seed: consistent, significant.
        let consistent: Vec<Vec<f64>> = (0..3)
            .map(|_| (0..400).map(|i| f64::from(u8::from(i % 10 == 0))).collect())
            .collect();
        let test = crossed(&consistent).unwrap();
        assert!(test.p_value() < 1e-6, "{test:?}");
        // The same mean difference from one seed only (+30% on seed 0, 0 elsewhere): the
        // item-level view would call it certain; over seeds it is not established.
        let one_seed: Vec<Vec<f64>> = (0..3)
            .map(|s| {
                (0..400)
                    .map(|i| f64::from(u8::from(s == 0 && i % 10 < 3)))
                    .collect()
            })
            .collect();
        let test = crossed(&one_seed).unwrap();
        assert!((test.mean - 0.1).abs() < 1e-12);
        assert!(test.p_value() > 0.05, "{test:?}");
        let (lo, hi) = test.interval();
        assert!(lo < 0.0 && hi > 0.2, "{lo} {hi}");
        // No difference at all: p = 1, a zero-width interval.
        let none = crossed(&[vec![0.0; 10], vec![0.0; 10]]).unwrap();
        assert_eq!(none.p_value(), 1.0);
        assert_eq!(none.interval(), (0.0, 0.0));
    }

    #[test]
    fn crossed_intervals_cover_the_true_mean_about_95_percent_of_the_time() {
        // 600 studies of 3 seeds × 60 items drawn from the crossed model with a seed effect
        // (sd 0.1), an item effect (sd 0.3) and noise (sd 0.5): the intervals cover μ = 0 in
        // about 95% of the studies (the standard error of a 95% rate over 600 is 0.9 points),
        // where an interval over items alone covers far less often.
        let mut rng = ItemRng::new(0, &["coverage"]);
        let mut normal = move || {
            let (u, v) = (rng.unit().max(1e-12), rng.unit());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        };
        let (studies, mut covered, mut covered_by_items) = (600, 0, 0);
        for _ in 0..studies {
            let seeds: Vec<f64> = (0..3).map(|_| 0.1 * normal()).collect();
            let items: Vec<f64> = (0..60).map(|_| 0.3 * normal()).collect();
            let rows: Vec<Vec<f64>> = seeds
                .iter()
                .map(|a| items.iter().map(|b| a + b + 0.5 * normal()).collect())
                .collect();
            let (lo, hi) = crossed(&rows).unwrap().interval();
            covered += usize::from(lo <= 0.0 && 0.0 <= hi);
            let pooled: Vec<f64> = rows.concat();
            let (lo, hi) = t_interval(&pooled).unwrap();
            covered_by_items += usize::from(lo <= 0.0 && 0.0 <= hi);
        }
        let rate = covered as f64 / studies as f64;
        assert!((0.925..=0.975).contains(&rate), "crossed coverage {rate}");
        let rate = covered_by_items as f64 / studies as f64;
        assert!(rate < 0.85, "pooled coverage {rate}");
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
