//! Where things come from: source texts (the pipeline file, each `--set` flag) and byte spans
//! into them, which YAML nodes carry and diagnostics label.

use std::sync::Arc;

/// Identifies one source text (the pipeline file, or the text of one `--set` flag).
pub type SourceId = u32;

/// A byte range in one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Span {
    /// Which source.
    pub source: SourceId,
    /// Byte offset.
    pub offset: usize,
    /// Byte length.
    pub len: usize,
}

impl Span {
    /// A span covering `self` through `other` (same source).
    pub fn to(self, other: Span) -> Span {
        let end = (other.offset + other.len).max(self.offset + self.len);
        Span {
            source: self.source,
            offset: self.offset,
            len: end - self.offset,
        }
    }
}

/// One named source text.
#[derive(Clone, Debug)]
pub struct Source {
    /// Shown in diagnostics (a path, or `--set`).
    pub name: String,
    /// The text.
    pub text: Arc<String>,
}

/// All texts the nodes of one pipeline may point into.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    items: Vec<Source>,
}

impl Sources {
    /// Adds a text and returns its id.
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> SourceId {
        self.items.push(Source {
            name: name.into(),
            text: Arc::new(text.into()),
        });
        (self.items.len() - 1) as SourceId
    }

    /// The source with this id.
    pub fn get(&self, id: SourceId) -> &Source {
        &self.items[id as usize]
    }
}
