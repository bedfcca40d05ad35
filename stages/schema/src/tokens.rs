//! How text is cut into tokens: the one rule the torch tokenizer and the data stages (which
//! check that their perturbations are in the corpus's vocabulary) share.

/// Splits text into word and punctuation tokens.
pub fn split_tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() || c == '\'' || c == '-' {
            start.get_or_insert(i);
        } else {
            if let Some(s) = start.take() {
                out.push(&text[s..i]);
            }
            if !c.is_whitespace() {
                out.push(&text[i..i + c.len_utf8()]);
            }
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}
