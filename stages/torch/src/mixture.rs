//! D_VQA and D_mixed: which rows go into each training batch.
//!
//! A batch holds `batch_size` *anchors*: a share `image_ratio` of image-heavy items, a share
//! `text_ratio` of text-heavy items, the rest VQA items (default 0.25/0.25, paper Table 13). Each
//! image-heavy anchor (clean condition `none`) brings its MD and UF variants, each text-heavy
//! anchor (clean condition `rp`: random pixels) its RI, FB and FW variants; VQA anchors come
//! alone (those of the datasets `vqa_datasets` names, when it names any). D_VQA is the same with
//! both ratios 0. The epoch ends when one anchor pool runs out
//! (as the authors' sampler does; the paper only says "1 epoch"). Anchors are shuffled with the
//! run seed, so every method of an ablation sees the same batches.

use std::collections::BTreeMap;

use mipipe_stage_schema::{Item, ItemRng, Task};

/// One row of a batch: an index into the table, and for a variant the index of its anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRow {
    /// Row of the unified table.
    pub item: usize,
    /// The clean row this one is a variant of.
    pub anchor: Option<usize>,
}

/// For each clean row of a batch, its position: where a variant's `anchor` (a row of the
/// table) sits in the batch.
pub fn anchor_positions(batch: &[BatchRow]) -> std::collections::BTreeMap<usize, usize> {
    batch
        .iter()
        .enumerate()
        .filter(|(_, r)| r.anchor.is_none())
        .map(|(i, r)| (r.item, i))
        .collect()
}

/// Mixture settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Mixture {
    /// Anchors per batch.
    pub batch_size: usize,
    /// Share of image-heavy anchors.
    pub image_ratio: f64,
    /// Share of text-heavy anchors.
    pub text_ratio: f64,
    /// Variant conditions of image-heavy anchors.
    pub image_variants: Vec<String>,
    /// Variant conditions of text-heavy anchors.
    pub text_variants: Vec<String>,
    /// The datasets VQA anchors come from (empty: every VQA training row).
    pub vqa_datasets: Vec<String>,
}

impl Mixture {
    /// D_mixed with the paper's ratios.
    pub fn mixed(batch_size: usize) -> Self {
        Self {
            batch_size,
            image_ratio: 0.25,
            text_ratio: 0.25,
            image_variants: vec!["md".into(), "uf".into()],
            text_variants: vec!["ri".into(), "fb".into(), "fw".into()],
            vqa_datasets: Vec::new(),
        }
    }

    /// D_VQA: VQA anchors only.
    pub fn vqa_only(batch_size: usize) -> Self {
        Self {
            image_ratio: 0.0,
            text_ratio: 0.0,
            ..Self::mixed(batch_size)
        }
    }
}

/// The training batches of one epoch over `items` (training split rows only are used).
pub fn batches(items: &[Item], mixture: &Mixture, seed: u64) -> Result<Vec<Vec<BatchRow>>, String> {
    let mut by_origin: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        by_origin.insert((item.origin_id.as_str(), item.perturbation.as_str()), i);
    }
    let train = |i: &&Item| i.split == "train";
    let pool = |task: Task, clean: &str| -> Vec<usize> {
        items
            .iter()
            .enumerate()
            .filter(|(_, i)| train(i) && i.task == task && i.perturbation == clean)
            .map(|(n, _)| n)
            .collect()
    };
    let mut vqa = pool(Task::Vqa, "none");
    if !mixture.vqa_datasets.is_empty() {
        for name in &mixture.vqa_datasets {
            if !vqa.iter().any(|&i| items[i].dataset == *name) {
                let known: std::collections::BTreeSet<&str> =
                    vqa.iter().map(|&i| items[i].dataset.as_str()).collect();
                return Err(format!(
                    "`vqa_datasets` names `{name}`, which has no clean VQA training rows; datasets with some: {}",
                    if known.is_empty() { "none".to_string() } else { known.into_iter().collect::<Vec<_>>().join(", ") }
                ));
            }
        }
        vqa.retain(|&i| mixture.vqa_datasets.contains(&items[i].dataset));
    }
    let mut pools = [
        pool(Task::ImageHeavy, "none"),
        pool(Task::TextHeavy, "rp"),
        vqa,
    ];
    for (pool, name) in pools.iter_mut().zip(["image-heavy", "text-heavy", "vqa"]) {
        let mut rng = ItemRng::new(seed, &["mixture", name]);
        for i in (1..pool.len()).rev() {
            pool.swap(i, rng.below(i + 1));
        }
    }
    let n_image = (mixture.batch_size as f64 * mixture.image_ratio).round() as usize;
    let n_text = (mixture.batch_size as f64 * mixture.text_ratio).round() as usize;
    let n_vqa = mixture.batch_size.saturating_sub(n_image + n_text);
    let wanted = [n_image, n_text, n_vqa];
    for ((pool, want), name) in pools.iter().zip(wanted).zip([
        "image-heavy (clean `none`)",
        "text-heavy (clean `rp`)",
        "VQA",
    ]) {
        if want > 0 && pool.is_empty() {
            return Err(format!(
                "The mixture needs {name} training items and the table has none"
            ));
        }
    }
    let steps = pools
        .iter()
        .zip(wanted)
        .filter(|(_, want)| *want > 0)
        .map(|(pool, want)| pool.len() / want)
        .min()
        .unwrap_or(0);
    let mut out = Vec::with_capacity(steps);
    for step in 0..steps {
        let mut batch = Vec::new();
        for (kind, (pool, want)) in pools.iter().zip(wanted).enumerate() {
            let variants: &[String] = match kind {
                0 => &mixture.image_variants,
                1 => &mixture.text_variants,
                _ => &[],
            };
            for &anchor in &pool[step * want..(step + 1) * want] {
                batch.push(BatchRow {
                    item: anchor,
                    anchor: None,
                });
                for condition in variants {
                    let origin = items[anchor].origin_id.as_str();
                    let variant = by_origin.get(&(origin, condition.as_str())).ok_or_else(|| {
                        format!("Item `{origin}` has no `{condition}` row; run the perturb stage with that condition")
                    })?;
                    batch.push(BatchRow {
                        item: *variant,
                        anchor: Some(anchor),
                    });
                }
            }
        }
        out.push(batch);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(origin: &str, task: Task, condition: &str) -> Item {
        Item {
            id: format!("{origin}#{condition}"),
            dataset: "d".into(),
            task,
            split: "train".into(),
            image: None,
            question: "q".into(),
            options: vec!["a".into(), "b".into()],
            answer: 0,
            perturbation: condition.into(),
            origin_id: origin.into(),
            facts: None,
            meta: None,
        }
    }

    fn table() -> Vec<Item> {
        let mut items = Vec::new();
        for i in 0..8 {
            for c in ["none", "md", "uf"] {
                items.push(item(&format!("img{i}"), Task::ImageHeavy, c));
            }
            for c in ["rp", "ri", "fb", "fw"] {
                items.push(item(&format!("txt{i}"), Task::TextHeavy, c));
            }
        }
        for i in 0..40 {
            items.push(item(&format!("vqa{i}"), Task::Vqa, "none"));
        }
        items
    }

    #[test]
    fn mixed_batches_expand_anchors_with_their_variants() {
        let items = table();
        let batches = batches(&items, &Mixture::mixed(8), 1).unwrap();
        // 2 image-heavy, 2 text-heavy and 4 VQA anchors per batch: the 8 image-heavy items
        // last 4 batches.
        assert_eq!(batches.len(), 4);
        for batch in &batches {
            assert_eq!(batch.len(), 2 * 3 + 2 * 4 + 4);
            for row in batch {
                if let Some(anchor) = row.anchor {
                    assert_eq!(items[row.item].origin_id, items[anchor].origin_id);
                    assert_ne!(items[row.item].perturbation, items[anchor].perturbation);
                }
            }
            let text_anchors = batch
                .iter()
                .filter(|r| r.anchor.is_none() && items[r.item].task == Task::TextHeavy);
            assert!(
                text_anchors
                    .clone()
                    .all(|r| items[r.item].perturbation == "rp"),
                "RP is the clean text-heavy condition"
            );
        }
        assert_eq!(
            batches,
            super::batches(&items, &Mixture::mixed(8), 1).unwrap(),
            "same seed, same batches"
        );
        assert_ne!(
            batches,
            super::batches(&items, &Mixture::mixed(8), 2).unwrap()
        );
    }

    #[test]
    fn vqa_only_uses_vqa_anchors_alone() {
        let items = table();
        let batches = batches(&items, &Mixture::vqa_only(8), 1).unwrap();
        assert_eq!(batches.len(), 5);
        assert!(batches
            .iter()
            .flatten()
            .all(|r| items[r.item].task == Task::Vqa && r.anchor.is_none()));
    }

    #[test]
    fn vqa_anchors_come_from_the_named_datasets_only() {
        let mut items = table();
        for (i, item) in items.iter_mut().filter(|i| i.task == Task::Vqa).enumerate() {
            item.dataset = ["llava-instruct", "textcaps", "scienceqa-img"][i % 3].into();
        }
        let named = |names: &[&str]| Mixture {
            vqa_datasets: names.iter().map(|n| n.to_string()).collect(),
            ..Mixture::vqa_only(2)
        };
        let datasets = |names: &[&str]| -> std::collections::BTreeSet<String> {
            batches(&items, &named(names), 1)
                .unwrap()
                .iter()
                .flatten()
                .map(|r| items[r.item].dataset.clone())
                .collect()
        };
        assert_eq!(
            datasets(&["llava-instruct"]),
            ["llava-instruct".to_string()].into()
        );
        assert_eq!(
            datasets(&["llava-instruct", "textcaps"]),
            ["llava-instruct".to_string(), "textcaps".to_string()].into()
        );
        assert_eq!(datasets(&[]).len(), 3, "none named: every VQA training row");
        let err = batches(&items, &named(&["llava_instruct"]), 1).unwrap_err();
        assert!(
            err.contains("`llava_instruct`")
                && err.contains("llava-instruct, scienceqa-img, textcaps"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_variant_is_named() {
        let mut items = table();
        items.retain(|i| !(i.origin_id == "img3" && i.perturbation == "md"));
        let err = batches(&items, &Mixture::mixed(8), 1).unwrap_err();
        assert!(err.contains("`img3` has no `md` row"), "{err}");
    }
}
