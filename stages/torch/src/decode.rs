//! Inference with a key-value cache: the prompt is encoded once ([`Decoding::prefill`]); greedy
//! decoding (temperature 0) then costs one position per generated token, and every option is
//! scored as a continuation of that same prompt pass ([`Decoding::score`]), what the `predict`
//! stage writes into the predictions table.

use mipipe_stage_schema::Item;
use tch::{Kind, Tensor};

use crate::layers::{position_ids, Attending, Decoder, KvCache};
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

/// A batch of prompts after one forward pass: what the decoder has seen of each row, and the
/// next-token logits.
pub struct Decoding<'m> {
    decoder: &'m Decoder,
    seen: Seen,
    last_logits: Tensor,
}

/// What the decoder has seen of each row: every layer's keys and values, which keys are real,
/// and the next position id.
struct Seen {
    cache: KvCache,
    keys: Tensor,
    next_position: Tensor,
}

impl Seen {
    /// A copy to extend while this one stays as it is (the stored tensors are shared).
    fn fork(&self) -> Seen {
        Seen {
            cache: self.cache.fork(),
            keys: self.keys.shallow_clone(),
            next_position: self.next_position.shallow_clone(),
        }
    }

    /// Logits `[batch, k, vocab]` of `tokens` (`[batch, k]`) appended to every row, which are
    /// then seen too.
    fn extend(&mut self, decoder: &Decoder, tokens: &Tensor) -> Tensor {
        let (b, k) = tokens.size2().expect("[batch, new]");
        let device = tokens.device();
        let positions =
            self.next_position.unsqueeze(1) + Tensor::arange(k, (Kind::Int64, device)).unsqueeze(0);
        self.keys = Tensor::cat(
            &[&self.keys, &Tensor::ones([b, k], (Kind::Bool, device))],
            1,
        );
        self.next_position = &self.next_position + k;
        let attending = Attending {
            positions: &positions,
            keys: Some(&self.keys),
        };
        let embeddings = tokens.apply(&decoder.embed_tokens);
        decoder.forward_cached(&embeddings, &attending, Some(&mut self.cache))
    }
}

impl<'m> Decoding<'m> {
    /// Encodes the prompts once.
    pub fn prefill(model: &'m MultimodalModel, prompts: &Prompts) -> Self {
        tch::no_grad(|| {
            let embeddings = model.embed(&prompts.images, &prompts.tokens);
            let keys = model.real_tokens(&prompts.padding);
            Self::prefill_embeddings(&model.decoder, &embeddings, &keys)
        })
    }

    /// Encodes prompts given as input embeddings `[batch, seq, hidden]` with `keys`
    /// (`[batch, seq]`, true for real tokens; padding on the left), once.
    pub fn prefill_embeddings(decoder: &'m Decoder, embeddings: &Tensor, keys: &Tensor) -> Self {
        tch::no_grad(|| {
            let keys = keys.to_kind(Kind::Bool);
            let positions = position_ids(&keys);
            let mut cache = KvCache::default();
            let attending = Attending {
                positions: &positions,
                keys: Some(&keys),
            };
            let logits = decoder.forward_cached(embeddings, &attending, Some(&mut cache));
            let last_logits = logits.select(1, logits.size()[1] - 1);
            let next_position = keys
                .to_kind(Kind::Int64)
                .sum_dim_intlist(1, false, Kind::Int64);
            Self {
                decoder,
                seen: Seen {
                    cache,
                    keys,
                    next_position,
                },
                last_logits,
            }
        })
    }

    /// Log-probabilities `[batch, vocab]` of the token after each prompt, on the CPU.
    pub fn first_logprobs(&self) -> Tensor {
        self.last_logits
            .log_softmax(-1, Kind::Float)
            .to_device(tch::Device::Cpu)
    }

    /// The log-likelihood of each row's continuation (`continuations[row]`, token ids) after its
    /// prompt: the sum of each token's log-probability given everything before it. An empty
    /// continuation scores 0. The prompt pass is shared; the cache is left as it was.
    pub fn score(&self, continuations: &[Vec<i64>]) -> Vec<f64> {
        tch::no_grad(|| {
            let b = continuations.len();
            let longest = continuations.iter().map(Vec::len).max().unwrap_or(0);
            if longest == 0 {
                return vec![0.0; b];
            }
            let device = self.last_logits.device();
            // Right-padded with each row's first token: causal attention keeps what follows a
            // token out of its score, and the padded positions are not counted.
            let mut ids = Vec::with_capacity(b * longest);
            let mut counted = Vec::with_capacity(b * longest);
            for c in continuations {
                let fill = c.first().copied().unwrap_or(0);
                ids.extend(c.iter().copied());
                ids.extend(std::iter::repeat_n(fill, longest - c.len()));
                counted.extend((0..longest).map(|i| if i < c.len() { 1f32 } else { 0.0 }));
            }
            let tokens = Tensor::from_slice(&ids)
                .view([b as i64, longest as i64])
                .to_device(device);
            let counted = Tensor::from_slice(&counted)
                .view([b as i64, longest as i64])
                .to_device(device);
            // Token i is predicted by the prompt's last position (i = 0) or by token i - 1.
            let predicting = if longest > 1 {
                let after = self
                    .seen
                    .fork()
                    .extend(self.decoder, &tokens.narrow(1, 0, longest as i64 - 1));
                Tensor::cat(&[self.last_logits.unsqueeze(1), after], 1)
            } else {
                self.last_logits.unsqueeze(1)
            };
            let logprobs = predicting
                .log_softmax(-1, Kind::Float)
                .gather(2, &tokens.unsqueeze(-1), false)
                .squeeze_dim(-1);
            let sums = (logprobs * counted).sum_dim_intlist(1, false, Kind::Float);
            Vec::<f64>::try_from(sums.to_kind(Kind::Double).to_device(tch::Device::Cpu))
                .expect("one score per row")
        })
    }

    /// The score of every option of every row's item: `continuation(item, option)` is the
    /// option's token ids, scored after the row's prompt by [`Decoding::score`], one pass per
    /// option index over the rows that have it.
    pub fn score_options(
        &self,
        items: &[Item],
        continuation: impl Fn(&Item, usize) -> Vec<i64>,
    ) -> Vec<Vec<f64>> {
        let most = items.iter().map(|i| i.options.len()).max().unwrap_or(0);
        let mut scores = vec![Vec::new(); items.len()];
        for option in 0..most {
            let continuations: Vec<Vec<i64>> = items
                .iter()
                .map(|item| {
                    if option < item.options.len() {
                        continuation(item, option)
                    } else {
                        Vec::new()
                    }
                })
                .collect();
            for (row, score) in self.score(&continuations).into_iter().enumerate() {
                if option < items[row].options.len() {
                    scores[row].push(score);
                }
            }
        }
        scores
    }

    /// Greedy continuation of each prompt, up to `max_new` tokens (at least one) or `eos`
    /// (not included in the output).
    pub fn generate(self, max_new: usize, eos: i64) -> Vec<Vec<i64>> {
        self.generate_with(max_new, eos, None)
    }

    /// The same with a repetition penalty as transformers applies it
    /// (`RepetitionPenaltyLogitsProcessor`): before each choice, the logit of every token already
    /// in the row (`history`, `[batch, seq]`: the prompt's ids, padding included, then what was
    /// generated) is divided by `penalty` where positive and multiplied by it where negative.
    pub fn generate_with(
        mut self,
        max_new: usize,
        eos: i64,
        repetition: Option<(f64, &Tensor)>,
    ) -> Vec<Vec<i64>> {
        tch::no_grad(|| {
            let b = self.last_logits.size()[0] as usize;
            let device = self.last_logits.device();
            let mut answers = Answers::new(b, eos);
            let mut logits = self.last_logits.shallow_clone();
            let mut history = repetition.map(|(_, h)| h.to_device(device));
            for step in 0..max_new.max(1) {
                let scores = match (repetition, &history) {
                    (Some((penalty, _)), Some(seen)) if penalty != 1.0 => {
                        penalise_repetition(&logits, seen, penalty)
                    }
                    _ => logits.shallow_clone(),
                };
                let next = scores.argmax(-1, false);
                if answers.push(&next) || step + 1 >= max_new {
                    break;
                }
                if let Some(seen) = &mut history {
                    *seen = Tensor::cat(&[&*seen, &next.unsqueeze(1)], 1);
                }
                logits = self
                    .seen
                    .extend(self.decoder, &next.unsqueeze(1))
                    .select(1, 0);
            }
            answers.finish()
        })
    }
}

/// Logits `[batch, vocab]` with the tokens of `seen` (`[batch, n]`) penalised: divided by
/// `penalty` where positive, multiplied where negative (in fp32, as transformers scores).
fn penalise_repetition(logits: &Tensor, seen: &Tensor, penalty: f64) -> Tensor {
    let logits = logits.to_kind(Kind::Float);
    let picked = logits.gather(1, seen, false);
    // `a.where_self(c, b)`: a where c holds, else b.
    let penalised = (&picked * penalty).where_self(&picked.lt(0.0), &(&picked / penalty));
    logits.scatter(1, seen, &penalised)
}

/// The tokens greedy decoding has produced per row, and which rows have ended.
struct Answers {
    tokens: Vec<Vec<i64>>,
    done: Vec<bool>,
    eos: i64,
}

impl Answers {
    fn new(rows: usize, eos: i64) -> Self {
        Self {
            tokens: vec![Vec::new(); rows],
            done: vec![false; rows],
            eos,
        }
    }

    /// Appends the next token of every row still going; returns whether all rows have ended.
    fn push(&mut self, next: &Tensor) -> bool {
        let ids: Vec<i64> =
            Vec::<i64>::try_from(&next.to_device(tch::Device::Cpu)).expect("token ids");
        for (row, &id) in ids.iter().enumerate() {
            if !self.done[row] {
                self.tokens[row].push(id);
                self.done[row] = id == self.eos;
            }
        }
        self.done.iter().all(|d| *d)
    }

    /// Each row's tokens without the end token.
    fn finish(mut self) -> Vec<Vec<i64>> {
        for row in &mut self.tokens {
            if row.last() == Some(&self.eos) {
                row.pop();
            }
        }
        self.tokens
    }
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

/// Greedy decoding (temperature 0) of each prompt, keeping the first step's distribution.
pub fn generate(
    model: &MultimodalModel,
    prompts: &Prompts,
    max_new: usize,
    eos: i64,
) -> Generation {
    let decoding = Decoding::prefill(model, prompts);
    let first_logprobs = decoding.first_logprobs();
    Generation {
        tokens: decoding.generate(max_new, eos),
        first_logprobs,
    }
}

/// The same decoding without a cache: one full forward pass per generated token. Kept as the
/// reference the cached path is tested and benchmarked against.
pub fn generate_uncached(
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
        let mut answers = Answers::new(b as usize, eos);
        let mut first_logprobs = None;
        for step in 0..max_new.max(1) {
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
            if answers.push(&next) || step + 1 >= max_new {
                break;
            }
            tokens = Tensor::cat(&[tokens, next.unsqueeze(1)], 1);
            padding = Tensor::cat(
                &[padding, Tensor::ones([b, 1], (Kind::Bool, tokens.device()))],
                1,
            );
        }
        Generation {
            tokens: answers.finish(),
            first_logprobs: first_logprobs.expect("at least one step"),
        }
    })
}

/// The log-likelihood of each row's answer tokens given its prompt, by one full forward pass
/// over prompt and answer (rows of [`crate::encode::encode_sequences`]): what
/// [`Decoding::score`] computes from a shared prompt pass, kept as its reference.
pub fn score_uncached(model: &MultimodalModel, rows: &crate::methods::Rows) -> Vec<f64> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::tiny;
    use crate::model::Family;
    use tch::nn;

    /// Three prompts of different lengths over a 16-token vocabulary, left-padded with 0.
    fn prompts(rows: &[Vec<i64>]) -> Prompts {
        let longest = rows.iter().map(Vec::len).max().unwrap();
        let mut ids = Vec::new();
        let mut real = Vec::new();
        for r in rows {
            ids.extend(std::iter::repeat_n(0i64, longest - r.len()));
            ids.extend(r);
            real.extend((0..longest).map(|i| i >= longest - r.len()));
        }
        let b = rows.len() as i64;
        tch::manual_seed(rows.len() as i64);
        Prompts {
            images: Tensor::rand([b, 3, 8, 8], (Kind::Float, tch::Device::Cpu)),
            tokens: Tensor::from_slice(&ids).view([b, longest as i64]),
            padding: Tensor::from_slice(&real).view([b, longest as i64]),
        }
    }

    fn rows() -> Vec<Vec<i64>> {
        vec![
            vec![1, 5, 6, 7],
            vec![1, 8, 9, 10, 11, 12, 13, 5, 6],
            vec![1, 14],
        ]
    }

    fn max_difference(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn an_answer_does_not_depend_on_the_rest_of_its_batch() {
        let _rng = crate::rng_lock();
        for family in [Family::Llava, Family::Blip, Family::Qwen] {
            tch::manual_seed(7);
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let model = crate::model::MultimodalModel::new(vs.root(), &tiny(family));
            let all = rows();
            let batch = prompts(&all);
            let together = Decoding::prefill(&model, &batch);
            let continuations = vec![vec![3, 4, 2]; 3];
            let scores = together.score(&continuations);
            let first = together.first_logprobs();
            let generated = together.generate(5, 2);
            for (row, ids) in all.iter().enumerate() {
                // The same row alone: no padding at all.
                let mut alone_prompts = prompts(std::slice::from_ref(ids));
                alone_prompts.images = batch.images.narrow(0, row as i64, 1);
                let alone = Decoding::prefill(&model, &alone_prompts);
                let difference =
                    max_difference(&alone.first_logprobs(), &first.narrow(0, row as i64, 1));
                assert!(
                    difference < 1e-5,
                    "{family:?} row {row}: logits differ by {difference}"
                );
                let score = alone.score(&continuations[..1])[0];
                assert!(
                    (score - scores[row]).abs() < 1e-5,
                    "{family:?} row {row}: {score} vs {}",
                    scores[row]
                );
                assert_eq!(
                    alone.generate(5, 2)[0],
                    generated[row],
                    "{family:?} row {row}"
                );
            }
        }
    }

    #[test]
    fn the_cache_gives_what_full_forward_passes_give() {
        let _rng = crate::rng_lock();
        tch::manual_seed(8);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = crate::model::MultimodalModel::new(vs.root(), &tiny(Family::Llava));
        let batch = prompts(&rows());
        // No end token: every row generates all six tokens.
        let cached = generate(&model, &batch, 6, -1);
        let uncached = generate_uncached(&model, &batch, 6, -1);
        assert_eq!(cached.tokens, uncached.tokens);
        assert!(cached.tokens.iter().all(|t| t.len() == 6));
        assert!(max_difference(&cached.first_logprobs, &uncached.first_logprobs) < 1e-5);
        // A row stops at the end token (dropped from its output), the others go on.
        let eos = cached.tokens[0][2];
        let stopped = generate(&model, &batch, 6, eos);
        assert_eq!(
            stopped.tokens,
            generate_uncached(&model, &batch, 6, eos).tokens
        );
        let first = cached.tokens[0].iter().position(|&t| t == eos).unwrap();
        assert_eq!(stopped.tokens[0], cached.tokens[0][..first]);

        // Scoring a continuation with the cache equals one full pass over prompt + continuation.
        let decoding = Decoding::prefill(&model, &batch);
        let continuation = [9i64, 4, 2];
        let scores = decoding.score(&[continuation.to_vec(), vec![], continuation[..1].to_vec()]);
        assert_eq!(scores[1], 0.0, "an empty continuation");
        for (row, length) in [(0usize, 3usize), (2, 1)] {
            let mut ids = rows()[row].clone();
            let start = ids.len();
            ids.extend(&continuation[..length]);
            let tokens = Tensor::from_slice(&ids).unsqueeze(0);
            let images = batch.images.narrow(0, row as i64, 1);
            let logits = tch::no_grad(|| model.logits(&model.embed(&images, &tokens), None))
                .log_softmax(-1, Kind::Float);
            let n_image = model.image_token_count();
            let by_hand: f64 = (0..length)
                .map(|k| {
                    logits.double_value(&[0, n_image + (start + k) as i64 - 1, continuation[k]])
                })
                .sum();
            assert!(
                (scores[row] - by_hand).abs() < 1e-5,
                "row {row}: {} vs {by_hand}",
                scores[row]
            );
        }
    }
}
