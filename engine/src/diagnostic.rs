//! Pipeline errors as miette diagnostics with labels on exact YAML spans.
//!
//! Errors are collected as [`SpecError`]s that hold only spans; [`PipelineError`] pairs them
//! with the source texts, so the binary can render every problem of a pipeline at once.

use std::fmt;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode};

use crate::span::{Sources, Span};

/// The class of a pipeline error; its code appears in the rendered report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecErrorKind {
    /// The file is not valid YAML.
    YamlSyntax,
    /// A value has the wrong shape for the pipeline format.
    Schema,
    /// An unknown top-level or stage key.
    UnknownKey,
    /// `kind:` names no registered stage kind.
    UnknownKind,
    /// A param the kind does not have.
    UnknownParam,
    /// A param of the wrong type or value.
    InvalidParam,
    /// A required param is missing.
    MissingParam,
    /// An input refers to an unknown stage, instance or output.
    UnknownReference,
    /// The stages depend on each other in a cycle.
    Cycle,
    /// Two things have the same name.
    DuplicateName,
    /// A matrix is malformed or conflicts with params.
    Matrix,
    /// `${...}` refers to nothing.
    Interpolation,
    /// A `--set` override or `--target` names nothing.
    Override,
}

impl SpecErrorKind {
    fn code(self) -> &'static str {
        match self {
            Self::YamlSyntax => "mipipe::yaml_syntax",
            Self::Schema => "mipipe::schema",
            Self::UnknownKey => "mipipe::unknown_key",
            Self::UnknownKind => "mipipe::unknown_kind",
            Self::UnknownParam => "mipipe::unknown_param",
            Self::InvalidParam => "mipipe::invalid_param",
            Self::MissingParam => "mipipe::missing_param",
            Self::UnknownReference => "mipipe::unknown_reference",
            Self::Cycle => "mipipe::cycle",
            Self::DuplicateName => "mipipe::duplicate_name",
            Self::Matrix => "mipipe::matrix",
            Self::Interpolation => "mipipe::interpolation",
            Self::Override => "mipipe::override",
        }
    }
}

/// One problem in a pipeline.
#[derive(Clone, Debug)]
pub struct SpecError {
    kind: SpecErrorKind,
    message: String,
    labels: Vec<(Span, String)>,
    help: Option<String>,
}

impl SpecError {
    /// A problem with a primary label.
    pub fn new(
        kind: SpecErrorKind,
        message: impl Into<String>,
        span: Span,
        label: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            labels: vec![(span, label.into())],
            help: None,
        }
    }

    /// Adds a `help:` line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a secondary label.
    pub fn with_label(mut self, span: Span, label: impl Into<String>) -> Self {
        self.labels.push((span, label.into()));
        self
    }

    /// The class of the problem.
    pub fn kind(&self) -> SpecErrorKind {
        self.kind
    }

    /// The main message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SpecError {}

/// One problem with the source it points into, ready to render.
#[derive(Debug)]
struct Located {
    error: SpecError,
    source: NamedSource<Arc<String>>,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error.message)
    }
}

impl std::error::Error for Located {}

impl Diagnostic for Located {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.error.kind.code()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.error
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(self.error.labels.iter().enumerate().map(
            |(i, (span, label))| {
                let text = (!label.is_empty()).then(|| label.clone());
                if i == 0 {
                    LabeledSpan::new_primary_with_span(text, (span.offset, span.len))
                } else {
                    LabeledSpan::new_with_span(text, (span.offset, span.len))
                }
            },
        )))
    }
}

/// The longest source line a report quotes whole.
const MAX_QUOTED_LINE: usize = 240;
/// How much of a long line a report shows on each side of a label.
const CONTEXT: usize = 60;

/// The source a report quotes: the text itself, or, when a labelled line is longer than
/// [`MAX_QUOTED_LINE`] (a generated one-line pipeline), an excerpt of the labelled lines cut
/// to a window around each label, with the labels moved into it. Rendering megabytes of one
/// line is slow, and the renderer cannot place a label far along a line.
fn excerpt(
    name: &str,
    text: &Arc<String>,
    labels: &mut [(Span, String)],
) -> NamedSource<Arc<String>> {
    let line_of = |offset: usize| {
        let offset = offset.min(text.len());
        let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
        (start, end)
    };
    let long = labels.iter().any(|(span, _)| {
        let (start, end) = line_of(span.offset);
        end - start > MAX_QUOTED_LINE
    });
    if !long {
        return NamedSource::new(name, text.clone());
    }
    let floor = |i: usize| text.floor_char_boundary(i);
    let mut out = String::new();
    let mut first_place = None;
    for (span, _) in labels.iter_mut() {
        let (line_start, line_end) = line_of(span.offset);
        let offset = span.offset.min(line_end);
        let shown = span.len.min(line_end - offset).min(CONTEXT);
        let from = floor(offset.saturating_sub(CONTEXT).max(line_start));
        let to = floor((offset + shown + CONTEXT).min(line_end));
        first_place.get_or_insert_with(|| {
            let line = text[..line_start].matches('\n').count() + 1;
            (line, text[line_start..offset].chars().count() + 1)
        });
        if from > line_start {
            out.push('…');
        }
        let base = out.len();
        out.push_str(&text[from..to]);
        if to < line_end {
            out.push('…');
        }
        out.push('\n');
        span.offset = base + (offset - from);
        span.len = floor(offset + shown).saturating_sub(offset);
    }
    let (line, column) = first_place.unwrap_or((1, 1));
    NamedSource::new(
        format!("{name} (excerpt of long lines; line {line}, column {column})"),
        Arc::new(out),
    )
}

/// Every problem found in a pipeline, with its sources.
#[derive(Debug)]
pub struct PipelineError {
    pipeline: String,
    problems: Vec<Located>,
}

/// A message with matrix instance names (`train[lr=0.1,seed=1]`) reduced to their stage
/// (`train`), so that one problem of every instance reads as one.
fn without_instances(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find('[') {
        let close = rest[open..].find(']').map(|c| open + c);
        match close {
            Some(close) if rest[open..close].contains('=') => {
                out.push_str(&rest[..open]);
                rest = &rest[close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

impl PipelineError {
    /// Pairs problems with the texts they point into. The same problem found in several matrix
    /// instances (same message and help, in the same file) is reported once, with the count and
    /// every distinct place it points at.
    pub fn new(pipeline: &str, sources: &Sources, errors: Vec<SpecError>) -> Self {
        let source_of = |e: &SpecError| e.labels.first().map(|(s, _)| s.source);
        let mut distinct: Vec<(SpecError, usize)> = Vec::new();
        for error in errors {
            let same = distinct.iter_mut().find(|(e, _)| {
                e.kind == error.kind
                    && without_instances(&e.message) == without_instances(&error.message)
                    && e.help == error.help
                    && source_of(e) == source_of(&error)
            });
            match same {
                Some((e, count)) => {
                    *count += 1;
                    for label in error.labels {
                        if !e.labels.contains(&label) {
                            e.labels.push(label);
                        }
                    }
                }
                None => distinct.push((error, 1)),
            }
        }
        let problems = distinct
            .into_iter()
            .map(|(mut error, count)| {
                if count > 1 {
                    error.message = format!(
                        "{} (found {count} times)",
                        without_instances(&error.message)
                    );
                }
                error
            })
            .map(|mut error| {
                let source_id = error.labels.first().map_or(0, |(s, _)| s.source);
                let source = sources.get(source_id);
                let source = excerpt(&source.name, &source.text, &mut error.labels);
                Located { error, source }
            })
            .collect();
        Self {
            pipeline: pipeline.to_string(),
            problems,
        }
    }

    /// The individual problems (for tests and `--json`).
    pub fn messages(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|p| p.error.message.clone())
            .collect()
    }

    /// The class of each problem.
    pub fn kinds(&self) -> Vec<SpecErrorKind> {
        self.problems.iter().map(|p| p.error.kind).collect()
    }
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "{one}"),
            many => write!(
                f,
                "Pipeline `{}` has {} problems",
                self.pipeline,
                many.len()
            ),
        }
    }
}

impl std::error::Error for PipelineError {}

impl Diagnostic for PipelineError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match self.problems.as_slice() {
            [one] => one.code(),
            _ => Some(Box::new("mipipe::invalid_pipeline")),
        }
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match self.problems.as_slice() {
            [one] => one.help(),
            _ => None,
        }
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        match self.problems.as_slice() {
            [one] => one.source_code(),
            _ => None,
        }
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        match self.problems.as_slice() {
            [one] => one.labels(),
            _ => None,
        }
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        match self.problems.as_slice() {
            [_] => None,
            many => Some(Box::new(many.iter().map(|p| p as &dyn Diagnostic))),
        }
    }
}

/// The closest candidate to `word`, if any is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `help:` text listing the valid choices, leading with the likely intended one.
pub fn suggestion_help<'a>(
    word: &str,
    what: &str,
    candidates: impl IntoIterator<Item = &'a str> + Clone,
) -> String {
    let all: Vec<&str> = candidates.clone().into_iter().collect();
    let listed = if all.is_empty() {
        "none".to_string()
    } else {
        all.iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match did_you_mean(word, candidates) {
        Some(best) => format!("Did you mean `{best}`? Valid {what}: {listed}"),
        None => format!("Valid {what}: {listed}"),
    }
}
