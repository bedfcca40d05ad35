//! The paper's training objectives (§4, Eq. 4-9), on embeddings so that image and text tokens
//! are treated alike:
//!
//! - supervised cross-entropy over answer tokens;
//! - consistency between clean and perturbed answer-token distributions, KL(perturbed ‖ clean)
//!   or standard Jensen-Shannon, with temperature τ, stop-gradient on the clean branch by default;
//! - random Gaussian noise (RG) on the task-irrelevant modality's embeddings;
//! - PGD in embedding space: δ initialised from Gaussian noise, K steps of raw-gradient ascent
//!   δ ← Π(δ + α·∇δ L) projected onto the ε-ball (L∞ by default, L2 as an option), restricted by
//!   a modality mask, with the gradient taken with respect to δ only (model parameters get
//!   nothing in the inner loop).
//!
//! Where the authors' code differs from the paper, the choice is a typed option whose default is
//! the paper (seed-repo.md §5.1): `PgdInit::Gaussian` vs their `Uniform`, `JsForm::Standard`.

use tch::{Kind, Tensor};

/// What a token of a training sequence is, for the modality mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRole {
    /// An image token (from the projector).
    Image,
    /// `<bos>` and the prompt template (`Question :`, `Options :`, `A :`, `Answer :`).
    Template,
    /// The question's words and any text prepended to it.
    Question,
    /// An option's words.
    Option,
    /// An answer token (supervised; never perturbed).
    Answer,
    /// Padding.
    Pad,
}

/// The task type of a training row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowTask {
    /// The answer is in the image: the text is the irrelevant modality.
    ImageHeavy,
    /// The answer is in the text: the image is irrelevant.
    TextHeavy,
    /// Both matter: nothing is perturbed.
    Vqa,
}

pub use mipipe_stage_torch_types::PerturbTokens;

/// The modality mask of one row: 1.0 where PGD and RG may perturb (the task-irrelevant
/// modality), 0.0 elsewhere. Image-heavy rows: the question's words (`PerturbTokens::Question`,
/// the paper) or every prompt token (`Prompt`, the authors' code); text-heavy rows: image
/// tokens; VQA rows: none. Answer tokens and padding never.
pub fn modality_mask(task: RowTask, roles: &[TokenRole], tokens: PerturbTokens) -> Vec<f32> {
    roles
        .iter()
        .map(|role| {
            let perturb = match (task, tokens) {
                (RowTask::ImageHeavy, PerturbTokens::Question) => *role == TokenRole::Question,
                (RowTask::ImageHeavy, PerturbTokens::Prompt) => matches!(
                    role,
                    TokenRole::Template | TokenRole::Question | TokenRole::Option
                ),
                (RowTask::TextHeavy, _) => *role == TokenRole::Image,
                (RowTask::Vqa, _) => false,
            };
            if perturb {
                1.0
            } else {
                0.0
            }
        })
        .collect()
}

/// Mean cross-entropy over answer positions. `logits`: `[batch, seq, vocab]` where position
/// `t` predicts token `t + 1`; `targets`: `[batch, seq]` token ids; `answer`: `[batch, seq]`
/// float mask of answer tokens.
pub fn answer_cross_entropy(logits: &Tensor, targets: &Tensor, answer: &Tensor) -> Tensor {
    let (b, t, v) = logits.size3().expect("[batch, seq, vocab]");
    let predicting = logits.narrow(1, 0, t - 1).reshape([b * (t - 1), v]);
    let next = targets.narrow(1, 1, t - 1).reshape([b * (t - 1)]);
    let weight = answer.narrow(1, 1, t - 1).reshape([b * (t - 1)]);
    let losses = predicting
        .log_softmax(-1, Kind::Float)
        .gather(1, &next.unsqueeze(1), false)
        .squeeze_dim(1)
        .neg();
    (losses * &weight).sum(Kind::Float) / weight.sum(Kind::Float).clamp_min(1.0)
}

pub use mipipe_stage_torch_types::Divergence;

/// Consistency between answer-token distributions of the clean and perturbed forward passes,
/// averaged over answer tokens. `clean` and `perturbed`: `[n_answer_tokens, vocab]` logits of
/// the positions that predict answer tokens. With `stop_gradient`, no gradient flows into the
/// clean branch.
pub fn consistency(
    clean: &Tensor,
    perturbed: &Tensor,
    divergence: Divergence,
    tau: f64,
    stop_gradient: bool,
) -> Tensor {
    let clean = if stop_gradient {
        clean.detach()
    } else {
        clean.shallow_clone()
    };
    let log_q = (clean / tau).log_softmax(-1, Kind::Float);
    let log_p = (perturbed / tau).log_softmax(-1, Kind::Float);
    let kl = |log_a: &Tensor, log_b: &Tensor| {
        (log_a.exp() * (log_a - log_b)).sum_dim_intlist(-1, false, Kind::Float)
    };
    let per_token = match divergence {
        Divergence::Kl => kl(&log_p, &log_q),
        Divergence::Js => {
            let log_m = ((log_p.exp() + log_q.exp()) * 0.5).log();
            (kl(&log_p, &log_m) + kl(&log_q, &log_m)) * 0.5
        }
    };
    per_token.mean(Kind::Float)
}

/// Gaussian noise N(0, σ²) on the masked positions, zero elsewhere (the RG control adds it to
/// the embeddings).
pub fn gaussian_noise(embeddings: &Tensor, mask: &Tensor, sigma: f64) -> Tensor {
    embeddings.randn_like() * sigma * mask.unsqueeze(-1)
}

pub use mipipe_stage_torch_types::{Norm, PgdInit, PgdParams};

/// What PGD reports besides δ: the largest step relative to ε, per step (the paper's step may
/// well be negligible next to ε; this makes it visible).
#[derive(Clone, Debug, Default)]
pub struct PgdTrace {
    /// max |α·g| / ε for each step.
    pub step_to_epsilon: Vec<f64>,
}

/// PGD on embeddings with the settings of [`PgdParams`] (paper Table 13 defaults: α 0.1,
/// ε 1e-3, K 2).
pub trait Pgd {
    /// Finds δ that increases `loss_of(embeddings + δ)`, within the ball and zero outside the
    /// mask (`[batch, seq]`). Gradients are taken with respect to δ only (`gradient(loss, δ)`:
    /// `run_backward` with δ as the sole input, or its checkpointed equivalent), so the model's
    /// parameters accumulate nothing. Returns δ (detached).
    fn perturb(
        &self,
        embeddings: &Tensor,
        mask: &Tensor,
        loss_of: impl Fn(&Tensor) -> Tensor,
        gradient: impl Fn(&Tensor, &Tensor) -> Tensor,
    ) -> (Tensor, PgdTrace);
}

/// δ projected back onto the ball of radius ε, zero outside the mask.
fn project(pgd: &PgdParams, delta: &Tensor, mask: &Tensor) -> Tensor {
    let projected = match pgd.norm {
        Norm::Linf => delta.clamp(-pgd.epsilon, pgd.epsilon),
        Norm::L2 => {
            let norms = delta.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12);
            let scale = (norms.reciprocal() * pgd.epsilon).clamp_max(1.0);
            delta * scale
        }
    };
    projected * mask.unsqueeze(-1)
}

impl Pgd for PgdParams {
    fn perturb(
        &self,
        embeddings: &Tensor,
        mask: &Tensor,
        loss_of: impl Fn(&Tensor) -> Tensor,
        gradient: impl Fn(&Tensor, &Tensor) -> Tensor,
    ) -> (Tensor, PgdTrace) {
        let embeddings = embeddings.detach();
        let start = match self.init {
            PgdInit::Gaussian => embeddings.randn_like() * self.epsilon,
            PgdInit::Uniform => (embeddings.rand_like() * 2.0 - 1.0) * self.epsilon,
        };
        let mut delta = project(self, &start, mask).detach();
        let mut trace = PgdTrace::default();
        for _ in 0..self.steps {
            let d = delta.set_requires_grad(true);
            let loss = loss_of(&(&embeddings + &d));
            let grad = gradient(&loss, &d);
            let step = grad * self.alpha;
            trace
                .step_to_epsilon
                .push((&step * mask.unsqueeze(-1)).abs().max().double_value(&[]) / self.epsilon);
            delta = project(self, &(d.detach() + step), mask).detach();
        }
        (delta, trace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;

    #[test]
    fn masks_follow_the_task_token_by_token() {
        let _rng = crate::rng_lock();
        use TokenRole::*;
        let roles = [
            Image, Image, Template, Question, Question, Option, Answer, Pad,
        ];
        let paper = PerturbTokens::Question;
        assert_eq!(
            modality_mask(RowTask::ImageHeavy, &roles, paper),
            [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(
            modality_mask(RowTask::ImageHeavy, &roles, PerturbTokens::Prompt),
            [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0],
            "the authors' code: every prompt token"
        );
        for tokens in [paper, PerturbTokens::Prompt] {
            assert_eq!(
                modality_mask(RowTask::TextHeavy, &roles, tokens),
                [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
            );
            assert_eq!(modality_mask(RowTask::Vqa, &roles, tokens), [0.0; 8]);
        }
    }

    #[test]
    fn kl_and_js_match_hand_computed_values() {
        let _rng = crate::rng_lock();
        // p = softmax([ln 0.7, ln 0.3]) = [0.7, 0.3]; q = [0.4, 0.6].
        let p = Tensor::from_slice(&[0.7f32.ln(), 0.3f32.ln()]).view([1, 2]);
        let q = Tensor::from_slice(&[0.4f32.ln(), 0.6f32.ln()]).view([1, 2]);
        let kl = consistency(&q, &p, Divergence::Kl, 1.0, true).double_value(&[]);
        let expected_kl = 0.7 * (0.7f64 / 0.4).ln() + 0.3 * (0.3f64 / 0.6).ln();
        assert!((kl - expected_kl).abs() < 1e-6, "{kl} vs {expected_kl}");
        let js = consistency(&q, &p, Divergence::Js, 1.0, true).double_value(&[]);
        let m = [0.55f64, 0.45];
        let expected_js = 0.5 * (0.7 * (0.7 / m[0]).ln() + 0.3 * (0.3 / m[1]).ln())
            + 0.5 * (0.4 * (0.4 / m[0]).ln() + 0.6 * (0.6 / m[1]).ln());
        assert!((js - expected_js).abs() < 1e-6, "{js} vs {expected_js}");
        // Temperature flattens both distributions: the divergence shrinks.
        let hot = consistency(&q, &p, Divergence::Kl, 4.0, true).double_value(&[]);
        assert!(hot < kl);
    }

    #[test]
    fn stop_gradient_keeps_the_clean_branch_out_of_the_graph() {
        let _rng = crate::rng_lock();
        let clean = Tensor::from_slice(&[0.1f32, 0.5, -0.2])
            .view([1, 3])
            .set_requires_grad(true);
        let perturbed = Tensor::from_slice(&[0.3f32, -0.1, 0.4])
            .view([1, 3])
            .set_requires_grad(true);
        let loss = consistency(&clean, &perturbed, Divergence::Js, 1.0, true);
        loss.backward();
        assert!(
            !clean.grad().defined(),
            "gradient flowed into the clean branch"
        );
        assert!(perturbed.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        let clean2 = Tensor::from_slice(&[0.1f32, 0.5, -0.2])
            .view([1, 3])
            .set_requires_grad(true);
        consistency(&clean2, &perturbed.detach(), Divergence::Kl, 1.0, false).backward();
        assert!(
            clean2.grad().defined(),
            "without stop-gradient the clean branch learns"
        );
    }

    #[test]
    fn pgd_stays_in_the_ball_is_zero_outside_the_mask_and_leaves_parameters_alone() {
        let _rng = crate::rng_lock();
        tch::manual_seed(3);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = nn::linear(vs.root() / "head", 8, 5, Default::default());
        let embeddings = Tensor::randn([2, 4, 8], (Kind::Float, tch::Device::Cpu));
        let mask = Tensor::from_slice(&[1f32, 1., 0., 0., 0., 1., 1., 0.]).view([2, 4]);
        let targets = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 0, 1, 2]);
        for norm in [Norm::Linf, Norm::L2] {
            let pgd = PgdParams {
                alpha: 10.0,
                epsilon: 0.05,
                steps: 3,
                norm,
                init: PgdInit::Gaussian,
            };
            let (delta, trace) = pgd.perturb(
                &embeddings,
                &mask,
                |e| {
                    e.apply(&model)
                        .view([8, 5])
                        .cross_entropy_for_logits(&targets)
                },
                |loss, d| {
                    Tensor::run_backward(&[loss], &[d], false, false)
                        .pop()
                        .unwrap()
                },
            );
            for (name, p) in vs.variables() {
                assert!(
                    !p.grad().defined(),
                    "{name} got a gradient from the inner loop"
                );
            }
            let outside_mask: Tensor = 1.0 - mask.unsqueeze(-1);
            let outside = (&delta * outside_mask).abs().max().double_value(&[]);
            assert_eq!(outside, 0.0, "δ leaked outside the mask");
            let size = match norm {
                Norm::Linf => delta.abs().max().double_value(&[]),
                Norm::L2 => delta
                    .norm_scalaropt_dim(2, [-1], false)
                    .max()
                    .double_value(&[]),
            };
            assert!(
                size <= 0.05 + 1e-6,
                "{norm:?}: δ of size {size} is outside the ε-ball"
            );
            assert_eq!(trace.step_to_epsilon.len(), 3);
            // The perturbation must make the loss worse than no perturbation.
            let clean = embeddings
                .apply(&model)
                .view([8, 5])
                .cross_entropy_for_logits(&targets)
                .double_value(&[]);
            let attacked = (&embeddings + &delta)
                .apply(&model)
                .view([8, 5])
                .cross_entropy_for_logits(&targets)
                .double_value(&[]);
            assert!(
                attacked > clean,
                "{norm:?}: PGD did not increase the loss ({attacked} <= {clean})"
            );
        }
    }

    #[test]
    fn answer_cross_entropy_counts_only_answer_tokens() {
        let _rng = crate::rng_lock();
        let logits = Tensor::zeros([1, 3, 4], (Kind::Float, tch::Device::Cpu));
        let _ = logits.get(0).get(1).get(2).fill_(10.0);
        let targets = Tensor::from_slice(&[0i64, 1, 2]).view([1, 3]);
        let only_last = Tensor::from_slice(&[0f32, 0., 1.]).view([1, 3]);
        let loss = answer_cross_entropy(&logits, &targets, &only_last).double_value(&[]);
        assert!(
            loss < 1e-3,
            "position 1 predicts the answer token 2 confidently: {loss}"
        );
        let with_prompt = Tensor::from_slice(&[0f32, 1., 1.]).view([1, 3]);
        assert!(answer_cross_entropy(&logits, &targets, &with_prompt).double_value(&[]) > 0.5);
    }
}
