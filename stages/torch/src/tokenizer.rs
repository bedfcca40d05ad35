//! A word-level tokenizer built from the training text and saved with the checkpoint.
//!
//! Words and punctuation marks are tokens; the vocabulary is every token seen in the training
//! text, most frequent first (ties alphabetical, so the same text always gives the same ids),
//! after the special tokens. Option letters A-Z are always in the vocabulary so any answer
//! letter can be predicted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Padding.
pub const PAD: &str = "<pad>";
/// Start of sequence.
pub const BOS: &str = "<bos>";
/// End of sequence (taught after every answer, unlike the authors' training strings).
pub const EOS: &str = "<eos>";
/// Unknown word.
pub const UNK: &str = "<unk>";

/// Token ids of a text vocabulary. Deserialising rebuilds the id index and checks the version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Stored")]
pub struct Tokenizer {
    /// Format version (1).
    pub version: u32,
    /// Tokens by id.
    pub tokens: Vec<String>,
    #[serde(skip)]
    ids: BTreeMap<String, i64>,
}

pub use mipipe_stage_schema::split_tokens as split;

impl Tokenizer {
    /// Builds the vocabulary of `texts`, keeping at most `max_size` tokens.
    pub fn train<'a>(texts: impl IntoIterator<Item = &'a str>, max_size: usize) -> Self {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for text in texts {
            for token in split(text) {
                *counts.entry(token).or_insert(0) += 1;
            }
        }
        let mut tokens: Vec<String> = [PAD, BOS, EOS, UNK].iter().map(|s| s.to_string()).collect();
        tokens.extend((b'A'..=b'Z').map(|c| (c as char).to_string()));
        let mut by_count: Vec<(&str, u64)> = counts.into_iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        for (token, _) in by_count {
            if tokens.len() >= max_size {
                break;
            }
            if !tokens.iter().any(|t| t == token) {
                tokens.push(token.to_string());
            }
        }
        Self::from_tokens(tokens)
    }

    fn from_tokens(tokens: Vec<String>) -> Self {
        let ids = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as i64))
            .collect();
        Self {
            version: 1,
            tokens,
            ids,
        }
    }

    /// Vocabulary size.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the vocabulary is empty (never, after `train`).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The id of a token (`<unk>` when unknown).
    pub fn id(&self, token: &str) -> i64 {
        self.ids.get(token).copied().unwrap_or(self.ids[UNK])
    }

    /// Token ids of a text.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        split(text).into_iter().map(|t| self.id(t)).collect()
    }

    /// Text of token ids, joined by spaces (special tokens dropped).
    pub fn decode(&self, ids: &[i64]) -> String {
        ids.iter()
            .filter_map(|&i| self.tokens.get(i as usize))
            .filter(|t| !t.starts_with('<'))
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// JSON for the checkpoint folder.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("tokenizers serialise")
    }

    /// Reads the JSON of [`Tokenizer::to_json`].
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("not a tokenizer: {e}"))
    }
}

/// The serialised form.
#[derive(Deserialize)]
struct Stored {
    version: u32,
    tokens: Vec<String>,
}

impl TryFrom<Stored> for Tokenizer {
    type Error = String;
    fn try_from(stored: Stored) -> Result<Self, String> {
        if stored.version != 1 {
            return Err(format!(
                "tokenizer version {} is not supported",
                stored.version
            ));
        }
        Ok(Self::from_tokens(stored.tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words_and_punctuation() {
        assert_eq!(
            split("What is 12 + 7?"),
            ["What", "is", "12", "+", "7", "?"]
        );
        assert_eq!(
            split("A: yarrow-cat's home."),
            ["A", ":", "yarrow-cat's", "home", "."]
        );
    }

    #[test]
    fn vocabulary_is_deterministic_and_round_trips() {
        let texts = ["the red circle", "the blue square", "the red star"];
        let a = Tokenizer::train(texts, 100);
        let b = Tokenizer::train(texts.iter().rev().copied(), 100);
        assert_eq!(
            a.tokens, b.tokens,
            "order of the corpus must not change ids"
        );
        assert_eq!(
            a.tokens[30], "the",
            "most frequent word first after specials and letters"
        );
        let ids = a.encode("the red zebra");
        assert_eq!(ids[2], a.id(UNK));
        assert_eq!(a.decode(&a.encode("the red circle")), "the red circle");
        let restored = Tokenizer::from_json(&a.to_json()).unwrap();
        assert_eq!(restored.encode("blue star"), a.encode("blue star"));
        assert!(a.id("E") > 0, "every option letter is a token");
    }
}
