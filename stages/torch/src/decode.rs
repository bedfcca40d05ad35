//! Inference: greedy decoding (temperature 0) and the log-probability of every option letter at
//! the answer position, what the `predict` stage writes into the predictions table.

use tch::{Kind, Tensor};

use crate::model::MultimodalModel;

/// Prompts of a batch, left-padded so every prompt ends at the last position.
pub struct Prompts {
    /// `[batch, 3, size, size]`.
    pub images: Tensor,
    /// `[batch, seq]` token ids.
    pub tokens: Tensor,
    /// `[batch, seq]`, true for real tokens.
    pub padding: Tensor,
}

/// Log-probabilities `[batch, letters]` of the option letters as the next token.
pub fn letter_logprobs(model: &MultimodalModel, prompts: &Prompts, letter_ids: &[i64]) -> Tensor {
    tch::no_grad(|| {
        let embeddings = model.embed(&prompts.images, &prompts.tokens);
        let logits = model.logits(&embeddings, Some(&prompts.padding));
        let last = logits
            .select(1, logits.size()[1] - 1)
            .log_softmax(-1, Kind::Float);
        last.index_select(1, &Tensor::from_slice(letter_ids))
    })
}

/// What greedy decoding produced: the tokens of each row (without `<eos>`) and the
/// log-probabilities `[batch, vocab]` of the first generated position (where the option letter
/// is), on the CPU.
pub struct Generation {
    /// Generated ids per row.
    pub tokens: Vec<Vec<i64>>,
    /// Log-softmax of the first step.
    pub first_logprobs: Tensor,
}

/// Greedy continuation of each prompt, up to `max_new` tokens or `eos`.
pub fn greedy(
    model: &MultimodalModel,
    prompts: &Prompts,
    max_new: usize,
    eos: i64,
) -> Vec<Vec<i64>> {
    generate(model, prompts, max_new, eos).tokens
}

/// Greedy decoding (temperature 0), keeping the first step's distribution: one forward pass
/// per generated token, and the option letters' log-probabilities come for free.
pub fn generate(
    model: &MultimodalModel,
    prompts: &Prompts,
    max_new: usize,
    eos: i64,
) -> Generation {
    tch::no_grad(|| {
        let b = prompts.tokens.size()[0];
        let mut tokens = prompts.tokens.shallow_clone();
        let mut padding = prompts.padding.shallow_clone();
        let image_tokens = model.image_tokens(&prompts.images);
        let mut out: Vec<Vec<i64>> = vec![Vec::new(); b as usize];
        let mut done = vec![false; b as usize];
        let mut first_logprobs = None;
        for _ in 0..max_new.max(1) {
            let text = tokens.apply(&model.decoder.embed_tokens);
            let embeddings = Tensor::cat(&[&image_tokens, &text], 1);
            let logits = model.logits(&embeddings, Some(&padding));
            let last = logits.select(1, logits.size()[1] - 1);
            if first_logprobs.is_none() {
                first_logprobs = Some(
                    last.log_softmax(-1, Kind::Float)
                        .to_device(tch::Device::Cpu),
                );
            }
            let next = last.argmax(-1, false);
            let ids: Vec<i64> =
                Vec::<i64>::try_from(&next.to_device(tch::Device::Cpu)).expect("token ids");
            for (row, &id) in ids.iter().enumerate() {
                if !done[row] {
                    out[row].push(id);
                    done[row] = id == eos;
                }
            }
            if done.iter().all(|d| *d) || max_new == 0 {
                break;
            }
            tokens = Tensor::cat(&[tokens, next.unsqueeze(1)], 1);
            padding = Tensor::cat(
                &[padding, Tensor::ones([b, 1], (Kind::Bool, tokens.device()))],
                1,
            );
        }
        for row in &mut out {
            if row.last() == Some(&eos) {
                row.pop();
            }
        }
        Generation {
            tokens: out,
            first_logprobs: first_logprobs.expect("at least one step"),
        }
    })
}

/// The log-likelihood of each row's answer tokens given its prompt (rows of
/// [`crate::encode::encode_sequences`]): how options are scored in the `text` answer format.
pub fn answer_logprobs(model: &MultimodalModel, rows: &crate::methods::Rows) -> Vec<f64> {
    use crate::objectives::TokenRole;
    tch::no_grad(|| {
        let device = rows.tokens.device();
        let (b, t) = rows.tokens.size2().expect("[batch, seq]");
        let mask = |role: fn(&TokenRole) -> bool| {
            let values: Vec<f32> = rows
                .roles
                .iter()
                .flat_map(|r| r.iter().map(|x| if role(x) { 1.0 } else { 0.0 }))
                .collect();
            Tensor::from_slice(&values).view([b, t]).to_device(device)
        };
        let padding = mask(|r| *r != TokenRole::Pad).to_kind(Kind::Bool);
        let answer = mask(|r| *r == TokenRole::Answer);
        let embeddings = model.embed(&rows.images, &rows.tokens);
        let n_image = model.image_token_count();
        let logits = model.logits(&embeddings, Some(&padding));
        // The text part: position p predicts token p + 1.
        let text = logits.narrow(1, n_image, t).log_softmax(-1, Kind::Float);
        let predicted = text
            .narrow(1, 0, t - 1)
            .gather(2, &rows.tokens.narrow(1, 1, t - 1).unsqueeze(-1), false)
            .squeeze_dim(-1);
        let sums = (predicted * answer.narrow(1, 1, t - 1)).sum_dim_intlist(1, false, Kind::Float);
        Vec::<f64>::try_from(sums.to_kind(Kind::Double).to_device(tch::Device::Cpu))
            .expect("one score per row")
    })
}
