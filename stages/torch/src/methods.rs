//! The ablation methods as one typed option of one training step.
//!
//! | method | loss |
//! |---|---|
//! | `fft_vqa`, `fft_mix` | L_sup (the data differ: D_VQA only, or D_mixed with heuristic variants) |
//! | `kl`, `js` | L_sup + λ·consistency(clean, heuristic variants) |
//! | `rg` | L_sup + L_sup(embeddings + N(0, σ²) on the irrelevant modality) |
//! | `adv` | L_sup + L_adv (PGD on the irrelevant modality) |
//! | `ours` | L_sup + L_adv + λ·consistency(clean, each perturbed copy: heuristic, adversarial, adversarial of heuristic) (Eq. 9) |
//!
//! Every step also reports the scale it works at: the RMS of the text and image embeddings, and
//! the size of the perturbation relative to the embeddings it perturbs (‖δ‖/‖e‖ for PGD,
//! ‖ξ‖/‖e‖ for RG), over the masked text positions (image-heavy rows) and the masked image
//! positions (text-heavy rows) separately, since the two modalities' scales differ.

use tch::{Kind, Tensor};

use crate::layers::Decoder;
use crate::model::MultimodalModel;
use crate::objectives::{
    answer_cross_entropy, consistency, gaussian_noise, modality_mask, Divergence, PerturbTokens,
    Pgd, PgdParams, RowTask, TokenRole,
};

pub use mipipe_stage_torch_types::{Method, OursAnchors};

/// Method hyper-parameters (defaults: paper Table 13; σ from the authors' code).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MethodConfig {
    /// The method.
    pub method: Method,
    /// Consistency weight λ.
    pub lambda: f64,
    /// Temperature τ.
    pub tau: f64,
    /// RG noise σ.
    pub sigma: f64,
    /// Divergence of `ours` (the paper: JS).
    pub ours_divergence: Divergence,
    /// Stop-gradient on the clean branch.
    pub stop_gradient: bool,
    /// PGD settings.
    pub pgd: PgdParams,
    /// Which tokens of image-heavy rows PGD and RG perturb.
    pub perturb_tokens: PerturbTokens,
    /// Which clean rows anchor `ours`'s consistency term.
    pub ours_anchors: OursAnchors,
}

impl MethodConfig {
    /// Paper defaults for a method.
    pub fn paper(method: Method) -> Self {
        Self {
            method,
            lambda: 0.01,
            tau: 1.0,
            sigma: 0.05,
            ours_divergence: Divergence::Js,
            stop_gradient: true,
            pgd: PgdParams::default(),
            perturb_tokens: PerturbTokens::Question,
            ours_anchors: OursAnchors::Perturbed,
        }
    }
}

/// A tokenised batch. Rows of one batch share a text length (padded).
pub struct Rows {
    /// `[batch, 3, size, size]`, values in [0, 1].
    pub images: Tensor,
    /// `[batch, seq]` token ids.
    pub tokens: Tensor,
    /// Role of every text token, per row.
    pub roles: Vec<Vec<TokenRole>>,
    /// Task of every row.
    pub tasks: Vec<RowTask>,
    /// For a heuristic variant row, the index of its clean row.
    pub anchor: Vec<Option<usize>>,
}

impl Rows {
    /// The batch's tensors on `device`.
    pub fn to_device(self, device: tch::Device) -> Rows {
        Rows {
            images: self.images.to_device(device),
            tokens: self.tokens.to_device(device),
            ..self
        }
    }
}

/// The loss of one step and its terms, for the metrics log.
pub struct StepLoss {
    /// What to backpropagate.
    pub total: Tensor,
    /// `(term, value)`: `sup`, `adv`, `rg`, `consistency`, `pgd_step_to_epsilon`, `text_rms`,
    /// `image_rms`, `delta_to_text`, `delta_to_image`, `noise_to_text`, `noise_to_image`.
    pub terms: Vec<(&'static str, f64)>,
}

/// A batch as the language model sees it.
pub struct Layout {
    /// Input embeddings `[batch, seq, hidden]`.
    pub embeddings: Tensor,
    /// The role of every position of the sequence, per row (image tokens included).
    pub roles: Vec<Vec<TokenRole>>,
    /// Token ids `[batch, seq]` the logits are scored against (only answer positions count).
    pub targets: Tensor,
    /// `[batch, seq]`, true for real positions (padding false).
    pub real: Tensor,
}

/// What the paper's objectives need of a model: its layout of a batch and the logits of input
/// embeddings, so every method trains mipipe's own models and pretrained LLaVA alike.
pub trait Trainable {
    /// The batch's embeddings and sequence layout.
    fn lay_out(&self, rows: &Rows) -> Layout;
    /// Logits `[batch, seq, vocab]` of input embeddings with `real` (`[batch, seq]`) marking
    /// the real positions.
    fn logits_of(&self, embeddings: &Tensor, real: &Tensor) -> Tensor;
    /// Training mode on or off (LoRA's dropout); the default has nothing to switch.
    fn set_training(&self, _on: bool) {}
    /// The language model, for gradient checkpointing ([`Decoder::set_checkpointing`]).
    fn decoder(&self) -> &Decoder;
}

/// The gradient of `loss` with respect to `wrt` alone (no parameter gradients), through the
/// model's checkpointed segments when checkpointing is on.
pub fn input_gradient(model: &impl Trainable, loss: &Tensor, wrt: &Tensor) -> Tensor {
    model
        .decoder()
        .input_gradient(loss, wrt)
        .unwrap_or_else(|| {
            Tensor::run_backward(&[loss], &[wrt], false, false)
                .pop()
                .expect("one gradient")
        })
}

impl Trainable for MultimodalModel {
    /// `[image tokens][left padding][text]`: the image tokens come first and are always real.
    fn lay_out(&self, rows: &Rows) -> Layout {
        let n_image = self.image_token_count();
        let b = rows.tokens.size()[0];
        let device = rows.tokens.device();
        let roles = rows
            .roles
            .iter()
            .map(|r| {
                std::iter::repeat_n(TokenRole::Image, n_image as usize)
                    .chain(r.iter().copied())
                    .collect()
            })
            .collect();
        let padding: Vec<bool> = rows
            .roles
            .iter()
            .flat_map(|r| r.iter().map(|role| *role != TokenRole::Pad))
            .collect();
        let padding = Tensor::from_slice(&padding)
            .view([b, rows.tokens.size()[1]])
            .to_device(device);
        Layout {
            embeddings: self.embed(&rows.images, &rows.tokens),
            roles,
            targets: Tensor::cat(
                &[
                    Tensor::zeros([b, n_image], (Kind::Int64, device)),
                    rows.tokens.shallow_clone(),
                ],
                1,
            ),
            real: self.real_tokens(&padding),
        }
    }

    fn logits_of(&self, embeddings: &Tensor, real: &Tensor) -> Tensor {
        self.decoder.forward_embeddings(embeddings, Some(real))
    }

    fn decoder(&self) -> &Decoder {
        &self.decoder
    }
}

/// Row-by-position masks over the whole sequence: answer tokens, the positions PGD and RG
/// perturb, and the image tokens.
fn full_masks(
    layout: &Layout,
    tasks: &[RowTask],
    tokens: PerturbTokens,
) -> (Tensor, Tensor, Tensor) {
    let mut answer = Vec::new();
    let mut irrelevant = Vec::new();
    let mut image = Vec::new();
    for (full, task) in layout.roles.iter().zip(tasks) {
        answer.extend(
            full.iter()
                .map(|r| if *r == TokenRole::Answer { 1f32 } else { 0.0 }),
        );
        irrelevant.extend(modality_mask(*task, full, tokens));
        image.extend(
            full.iter()
                .map(|r| if *r == TokenRole::Image { 1f32 } else { 0.0 }),
        );
    }
    let (b, t) = layout.targets.size2().expect("[batch, seq]");
    let device = layout.targets.device();
    let mask = |values: &[f32]| Tensor::from_slice(values).view([b, t]).to_device(device);
    (mask(&answer), mask(&irrelevant), mask(&image))
}

/// For every row, the positions whose logits predict its answer tokens (position `p` predicts
/// token `p + 1`).
fn predicting_positions(answer: &Tensor) -> Vec<Tensor> {
    let (b, t) = answer.size2().expect("[batch, seq]");
    let mask: Vec<f32> =
        Vec::<f32>::try_from(answer.flatten(0, 1).to_device(tch::Device::Cpu)).expect("float mask");
    (0..b as usize)
        .map(|row| {
            let positions: Vec<i64> = (0..(t - 1) as usize)
                .filter(|pos| mask[row * t as usize + pos + 1] > 0.5)
                .map(|pos| pos as i64)
                .collect();
            Tensor::from_slice(&positions).to_device(answer.device())
        })
        .collect()
}

/// ‖x⊙M‖ / ‖e⊙M‖ over the masked positions (`mask`: `[batch, seq]`), 0 for an empty mask.
fn relative_size(x: &Tensor, embeddings: &Tensor, mask: &Tensor) -> f64 {
    let m = mask.unsqueeze(-1);
    let base = (embeddings.detach() * &m).norm().double_value(&[]);
    if base == 0.0 {
        return 0.0;
    }
    (x.detach() * &m).norm().double_value(&[]) / base
}

/// The RMS of the embeddings where `mask` (`[batch, seq]`) is 1.
fn masked_rms(embeddings: &Tensor, mask: &Tensor) -> f64 {
    let m = mask.unsqueeze(-1);
    let count = mask.sum(Kind::Float).double_value(&[]) * embeddings.size()[2] as f64;
    if count == 0.0 {
        return 0.0;
    }
    let sum = (embeddings.detach().pow_tensor_scalar(2) * &m)
        .sum(Kind::Float)
        .double_value(&[]);
    (sum / count).sqrt()
}

/// The loss of one training step of `config.method` on `rows`.
// `a = a + b` on purpose: tch's `+=` adds in place, which would rewrite tensors autograd keeps.
#[allow(clippy::assign_op_pattern)]
pub fn training_loss(model: &impl Trainable, rows: &Rows, config: &MethodConfig) -> StepLoss {
    let layout = model.lay_out(rows);
    let (answer, irrelevant, image_mask) = full_masks(&layout, &rows.tasks, config.perturb_tokens);
    let b = layout.targets.size()[0];
    let Layout {
        embeddings,
        targets,
        real,
        ..
    } = layout;
    // The real text tokens: real positions that are not image tokens.
    let text_mask = real.to_kind(Kind::Float) - &image_mask;
    let supervised =
        |e: &Tensor| answer_cross_entropy(&model.logits_of(e, &real), &targets, &answer);
    let logits = model.logits_of(&embeddings, &real);
    let sup = answer_cross_entropy(&logits, &targets, &answer);
    let mut terms = vec![
        ("sup", sup.double_value(&[])),
        ("text_rms", masked_rms(&embeddings, &text_mask)),
        ("image_rms", masked_rms(&embeddings, &image_mask)),
    ];
    let mut total = sup;
    // (clean row, heuristic variant row) pairs.
    let pairs: Vec<(usize, usize)> = rows
        .anchor
        .iter()
        .enumerate()
        .filter_map(|(r, a)| a.map(|a| (a, r)))
        .collect();
    let predicting = predicting_positions(&answer);
    // Consistency between clean rows and copies of them (`(row, logits it comes from)`), over
    // their answer tokens aligned one by one (a copy has its anchor's answer).
    let consistency_of = |clean: &[usize], copies: &[(usize, &Tensor)], d: Divergence| {
        let pick = |row: usize, l: &Tensor| l.get(row as i64).index_select(0, &predicting[row]);
        let anchors: Vec<Tensor> = clean.iter().map(|&row| pick(row, &logits)).collect();
        let perturbed: Vec<Tensor> = copies.iter().map(|&(row, l)| pick(row, l)).collect();
        consistency(
            &Tensor::cat(&anchors, 0),
            &Tensor::cat(&perturbed, 0),
            d,
            config.tau,
            config.stop_gradient,
        )
    };
    match config.method {
        Method::FftVqa | Method::FftMix => {}
        Method::Kl | Method::Js if !pairs.is_empty() => {
            let d = if config.method == Method::Kl {
                Divergence::Kl
            } else {
                Divergence::Js
            };
            let clean: Vec<usize> = pairs.iter().map(|p| p.0).collect();
            let copies: Vec<(usize, &Tensor)> = pairs.iter().map(|p| (p.1, &logits)).collect();
            let c = consistency_of(&clean, &copies, d);
            terms.push(("consistency", c.double_value(&[])));
            total = total + c * config.lambda;
        }
        Method::Kl | Method::Js => {}
        Method::Rg => {
            let noise = gaussian_noise(&embeddings, &irrelevant, config.sigma);
            terms.push((
                "noise_to_text",
                relative_size(&noise, &embeddings, &(&irrelevant * &text_mask)),
            ));
            terms.push((
                "noise_to_image",
                relative_size(&noise, &embeddings, &(&irrelevant * &image_mask)),
            ));
            let noisy = supervised(&(&embeddings + noise));
            terms.push(("rg", noisy.double_value(&[])));
            total = total + noisy;
        }
        Method::Adv | Method::Ours => {
            let (delta, trace) =
                config
                    .pgd
                    .perturb(&embeddings, &irrelevant, supervised, |l, d| {
                        input_gradient(model, l, d)
                    });
            terms.push((
                "delta_to_text",
                relative_size(&delta, &embeddings, &(&irrelevant * &text_mask)),
            ));
            terms.push((
                "delta_to_image",
                relative_size(&delta, &embeddings, &(&irrelevant * &image_mask)),
            ));
            let adversarial_logits = model.logits_of(&(&embeddings + &delta), &real);
            let adv = answer_cross_entropy(&adversarial_logits, &targets, &answer);
            terms.push(("adv", adv.double_value(&[])));
            terms.push((
                "pgd_step_to_epsilon",
                trace.step_to_epsilon.iter().copied().fold(0.0, f64::max),
            ));
            total = total + adv;
            if config.method == Method::Ours {
                // Paper Eq. 9: each clean row against every perturbed copy of it.
                let perturbed_rows: Vec<bool> = Vec::<f32>::try_from(
                    irrelevant
                        .sum_dim_intlist(1, false, Kind::Float)
                        .to_device(tch::Device::Cpu),
                )
                .expect("one sum per row")
                .into_iter()
                .map(|s| s > 0.0)
                .collect();
                let mut clean = Vec::new();
                let mut copies: Vec<(usize, &Tensor)> = Vec::new();
                for (a, r) in &pairs {
                    clean.extend([*a, *a]);
                    copies.extend([(*r, &logits), (*r, &adversarial_logits)]);
                }
                for row in (0..b as usize).filter(|&r| rows.anchor[r].is_none()) {
                    let include = match config.ours_anchors {
                        OursAnchors::Perturbed => perturbed_rows[row],
                        OursAnchors::All => true,
                    };
                    if include {
                        clean.push(row);
                        copies.push((row, &adversarial_logits));
                    }
                }
                if !clean.is_empty() {
                    let c = consistency_of(&clean, &copies, config.ours_divergence);
                    terms.push(("consistency", c.double_value(&[])));
                    total = total + c * config.lambda;
                }
            }
        }
    }
    StepLoss { total, terms }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::tiny;
    use crate::model::{Family, MultimodalModel};
    use tch::nn::{self, OptimizerConfig};
    use TokenRole::*;

    /// Two image-heavy rows (the colour decides the answer), their UF-style variants (extra
    /// irrelevant tokens), and two text-heavy rows (a token decides) over noise images.
    fn rows() -> Rows {
        let colour = |r: f64, g: f64, b: f64| {
            Tensor::stack(
                &[
                    Tensor::full([8, 8], r, (Kind::Float, tch::Device::Cpu)),
                    Tensor::full([8, 8], g, (Kind::Float, tch::Device::Cpu)),
                    Tensor::full([8, 8], b, (Kind::Float, tch::Device::Cpu)),
                ],
                0,
            )
        };
        let noise = || Tensor::rand([3, 8, 8], (Kind::Float, tch::Device::Cpu));
        tch::manual_seed(11);
        let images = Tensor::stack(
            &[
                colour(1.0, 0.0, 0.0),
                colour(0.0, 0.0, 1.0),
                colour(1.0, 0.0, 0.0),
                colour(0.0, 0.0, 1.0),
                noise(),
                noise(),
            ],
            0,
        );
        // Vocabulary: 0 pad, 1 "Q", 2 "colour?", 3 "A", 4 "B", 6/7 deciding words, 8/9 filler.
        let tokens: Vec<i64> = vec![
            0, 0, 1, 2, 3, 0, // red -> A
            0, 0, 1, 2, 4, 0, // blue -> B
            8, 9, 1, 2, 3, 0, // red + unrelated text -> A
            9, 8, 1, 2, 4, 0, // blue + unrelated text -> B
            0, 0, 1, 6, 3, 0, // word 6 -> A
            0, 0, 1, 7, 4, 0, // word 7 -> B
        ];
        let plain = vec![Pad, Pad, Template, Question, Answer, Pad];
        let prefixed = vec![Question, Question, Template, Question, Answer, Pad];
        Rows {
            images,
            tokens: Tensor::from_slice(&tokens).view([6, 6]),
            roles: vec![
                plain.clone(),
                plain.clone(),
                prefixed.clone(),
                prefixed,
                plain.clone(),
                plain,
            ],
            tasks: vec![
                RowTask::ImageHeavy,
                RowTask::ImageHeavy,
                RowTask::ImageHeavy,
                RowTask::ImageHeavy,
                RowTask::TextHeavy,
                RowTask::TextHeavy,
            ],
            anchor: vec![None, None, Some(0), Some(1), None, None],
        }
    }

    fn train(method: Method, seed: i64, steps: usize) -> (Vec<f64>, nn::VarStore) {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = MultimodalModel::new(vs.root(), &tiny(Family::Llava));
        model.freeze_for_finetune(&vs);
        let mut opt = nn::AdamW::default().build(&vs, 1e-2).unwrap();
        let rows = rows();
        let mut config = MethodConfig::paper(method);
        config.pgd.epsilon = 0.05;
        let mut losses = Vec::new();
        for _ in 0..steps {
            let loss = training_loss(&model, &rows, &config);
            opt.backward_step(&loss.total);
            losses.push(loss.terms[0].1);
        }
        (losses, vs)
    }

    /// Every method's loss and parameter gradients, with the decoder's blocks checkpointed
    /// or not (PGD's inner gradients through the segments too).
    fn gradients(method: Method, checkpointing: bool) -> (f64, Vec<(String, Tensor)>) {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = MultimodalModel::new(vs.root(), &tiny(Family::Llava));
        model.freeze_for_finetune(&vs);
        model.decoder.set_checkpointing(checkpointing);
        let rows = rows();
        let mut config = MethodConfig::paper(method);
        config.pgd.epsilon = 0.05;
        let loss = training_loss(&model, &rows, &config);
        loss.total.backward();
        model.decoder.backward_checkpoints();
        let mut grads: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, v)| v.requires_grad())
            .map(|(name, v)| (name, v.grad()))
            .collect();
        grads.sort_by(|a, b| a.0.cmp(&b.0));
        (loss.total.double_value(&[]), grads)
    }

    #[test]
    fn checkpointed_blocks_give_the_gradients_of_the_full_backward_pass() {
        let _rng = crate::rng_lock();
        for method in Method::ALL {
            let (loss, full) = gradients(method, false);
            let (again, checkpointed) = gradients(method, true);
            assert!(
                (loss - again).abs() < 1e-6,
                "{method:?}: loss {loss} vs {again}"
            );
            let mut compared = 0;
            for ((name, a), (_, b)) in full.iter().zip(&checkpointed) {
                assert_eq!(a.defined(), b.defined(), "{method:?} variable {name}");
                if !a.defined() {
                    continue;
                }
                let scale = a.abs().max().double_value(&[]).max(1e-12);
                let diff = (a - b).abs().max().double_value(&[]);
                assert!(
                    diff <= 1e-5 * scale,
                    "{method:?} variable {name}: {diff} of {scale}"
                );
                compared += 1;
            }
            assert!(compared > 10, "{method:?}: {compared} gradients compared");
        }
    }

    #[test]
    fn every_method_trains_with_finite_decreasing_loss() {
        let _rng = crate::rng_lock();
        for method in Method::ALL {
            let (losses, _) = train(method, 5, 25);
            assert!(
                losses.iter().all(|l| l.is_finite()),
                "{method:?}: {losses:?}"
            );
            assert!(
                losses[24] < losses[0] * 0.5,
                "{method:?}: loss did not go down: {losses:?}"
            );
        }
    }

    #[test]
    fn the_same_seed_gives_bitwise_identical_weights_on_cpu() {
        let _rng = crate::rng_lock();
        let (_, a) = train(Method::Ours, 9, 3);
        let (_, b) = train(Method::Ours, 9, 3);
        let b_vars = b.variables();
        for (name, value) in a.variables() {
            assert!(
                value.equal(&b_vars[&name]),
                "{name} differs between identical runs"
            );
        }
    }

    #[test]
    fn consistency_and_adversarial_terms_are_reported() {
        let _rng = crate::rng_lock();
        let model_vs = nn::VarStore::new(tch::Device::Cpu);
        let model = MultimodalModel::new(model_vs.root(), &tiny(Family::Qwen));
        let loss = training_loss(&model, &rows(), &MethodConfig::paper(Method::Ours));
        let names: Vec<&str> = loss.terms.iter().map(|t| t.0).collect();
        assert_eq!(
            names,
            [
                "sup",
                "text_rms",
                "image_rms",
                "delta_to_text",
                "delta_to_image",
                "adv",
                "pgd_step_to_epsilon",
                "consistency"
            ]
        );
        assert!(loss.terms.iter().all(|t| t.1.is_finite()));
    }

    #[test]
    fn a_rows_loss_is_the_same_alone_and_inside_a_padded_batch() {
        let _rng = crate::rng_lock();
        tch::manual_seed(12);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = MultimodalModel::new(vs.root(), &tiny(Family::Llava));
        let batch = rows();
        // A row alone, without its two padding tokens.
        let alone = |row: i64| Rows {
            images: batch.images.narrow(0, row, 1),
            tokens: batch.tokens.narrow(0, row, 1).narrow(1, 2, 4),
            roles: vec![batch.roles[row as usize][2..].to_vec()],
            tasks: vec![batch.tasks[row as usize]],
            anchor: vec![None],
        };
        let padded = Rows {
            images: batch.images.narrow(0, 0, 2),
            tokens: batch.tokens.narrow(0, 0, 2),
            roles: batch.roles[..2].to_vec(),
            tasks: batch.tasks[..2].to_vec(),
            anchor: vec![None, None],
        };
        let config = MethodConfig::paper(Method::FftMix);
        let single = training_loss(&model, &alone(0), &config).terms[0].1;
        // Both rows of `padded` have one answer token, so its loss is the mean of theirs.
        let other = training_loss(&model, &alone(1), &config).terms[0].1;
        let together = training_loss(&model, &padded, &config).terms[0].1;
        assert!(
            (together - (single + other) / 2.0).abs() < 1e-5,
            "alone {single} and {other}, in a batch {together}"
        );
    }
}
