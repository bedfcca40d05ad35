//! Randomness derived from names, never from thread order.
//!
//! Every random draw of a data stage comes from an [`ItemRng`] seeded by blake3 over
//! `(run seed, dataset, item id, condition)`, so an item gets the same image, options and
//! perturbation on every run, for every model, whatever the number of threads. The generator is
//! xoshiro256** implemented here, so no crate upgrade can change a dataset.

/// A small deterministic generator for one item and one purpose.
#[derive(Clone, Debug)]
pub struct ItemRng {
    state: [u64; 4],
}

impl ItemRng {
    /// A generator for these name parts (length-prefixed, so `("ab","c")` != `("a","bc")`).
    pub fn new(seed: u64, parts: &[&str]) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key("mipipe item-rng v1");
        hasher.update(&seed.to_le_bytes());
        for part in parts {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        let bytes = hasher.finalize();
        let mut state = [0u64; 4];
        for (i, chunk) in bytes.as_bytes().chunks(8).enumerate() {
            state[i] = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        }
        if state == [0; 4] {
            state[0] = 1;
        }
        Self { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform integer in `0..n` (n > 0), without modulo bias.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "below(0)");
        let n = n as u64;
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }

    /// A uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform integer in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as usize) as i64
    }

    /// One element.
    pub fn choose<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Multiple-choice options: `gold` and `n - 1` distinct distractors drawn from `pool`
    /// (which may contain `gold`), the gold at a drawn position. Returns the options and the
    /// gold's index. Fewer options when the pool is small.
    pub fn options(&mut self, gold: &str, pool: &[&str], n: usize) -> (Vec<String>, usize) {
        let others: Vec<&str> = pool.iter().copied().filter(|p| *p != gold).collect();
        let picks = self.sample_indices(others.len(), n.saturating_sub(1));
        let mut options: Vec<String> = picks.iter().map(|&i| others[i].to_string()).collect();
        let slot = self.below(options.len() + 1);
        options.insert(slot, gold.to_string());
        (options, slot)
    }

    /// `k` distinct indices of `0..n`, in draw order.
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut pool: Vec<usize> = (0..n).collect();
        let k = k.min(n);
        for i in 0..k {
            let j = i + self.below(n - i);
            pool.swap(i, j);
        }
        pool.truncate(k);
        pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_names_same_draws_and_names_are_length_prefixed() {
        let mut a = ItemRng::new(7, &["shapes", "item-1", "md"]);
        let mut b = ItemRng::new(7, &["shapes", "item-1", "md"]);
        let mut c = ItemRng::new(7, &["shapes", "item-1m", "d"]);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..4).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn below_covers_the_range_evenly() {
        let mut rng = ItemRng::new(1, &["test"]);
        let mut counts = [0usize; 5];
        for _ in 0..50_000 {
            counts[rng.below(5)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        let sample = rng.sample_indices(10, 4);
        let mut unique = sample.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 4);
    }
}
