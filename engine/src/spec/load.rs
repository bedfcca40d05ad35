//! Loading: reading a pipeline file and running the phases over its text
//! ([`Pipeline::from_text`]); what can go wrong ([`LoadError`]).

use std::path::{Path, PathBuf};

use super::check::Checker;
use super::model::Pipeline;
use crate::diagnostic::PipelineError;
use crate::span::{SourceId, Sources};
use crate::stage::Registry;

/// How to load a pipeline.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `--set stage.param=value` and `--set vars.name=value` overrides, applied before hashing.
    pub overrides: Vec<String>,
}

/// Why a pipeline could not be loaded.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LoadError {
    /// The file could not be read.
    #[error("Cannot read pipeline `{}`: {source}", path.display())]
    #[diagnostic(
        code(mipipe::pipeline_not_found),
        help("Pass the pipeline file as an argument, or run in a folder with a `mipipe.yaml`")
    )]
    Read {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not UTF-8 text.
    #[error("Pipeline `{}` is not UTF-8 text: invalid byte at offset {offset} (line {line})", path.display())]
    #[diagnostic(
        code(mipipe::not_utf8),
        help("Save the file as UTF-8 (a pipeline is YAML text); `iconv -f latin1 -t utf-8` converts Latin-1")
    )]
    NotUtf8 {
        /// The path.
        path: PathBuf,
        /// Byte offset of the first invalid byte.
        offset: usize,
        /// Its line (from 1).
        line: usize,
    },
    /// The pipeline is invalid.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(#[from] PipelineError),
}
impl Pipeline {
    /// Reads a pipeline file's text.
    pub fn read_text(path: &Path) -> Result<String, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        String::from_utf8(bytes).map_err(|e| {
            let offset = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..offset]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            LoadError::NotUtf8 {
                path: path.to_path_buf(),
                offset,
                line,
            }
        })
    }

    /// Reads and resolves a pipeline file.
    pub fn load(
        path: &Path,
        registry: &Registry,
        options: &LoadOptions,
    ) -> Result<Self, LoadError> {
        let text = Self::read_text(path)?;
        Self::load_text(path, &text, registry, options)
    }

    /// Resolves the text of the pipeline file at `path` (read already by the caller).
    pub fn load_text(
        path: &Path,
        text: &str,
        registry: &Registry,
        options: &LoadOptions,
    ) -> Result<Self, LoadError> {
        let workspace = crate::fsutil::parent_dir(path);
        Self::from_text(
            &path.display().to_string(),
            text,
            &workspace,
            registry,
            options,
        )
        .map(|mut p| {
            p.path = path.to_path_buf();
            p
        })
        .map_err(LoadError::Invalid)
    }

    /// Resolves pipeline text; `name` is shown in diagnostics.
    pub fn from_text(
        name: &str,
        text: &str,
        workspace: &Path,
        registry: &Registry,
        options: &LoadOptions,
    ) -> Result<Self, PipelineError> {
        let mut sources = Sources::default();
        let file = sources.add(name, text);
        let overrides: Vec<(SourceId, String)> = options
            .overrides
            .iter()
            .map(|o| (sources.add("--set", o.clone()), o.clone()))
            .collect();
        let mut check = Checker {
            registry,
            sources: &sources,
            errors: Vec::new(),
            shell: false,
            matrix: Vec::new(),
        };
        let resolved = super::resolve_pipeline(&mut check, file, &overrides);
        match resolved {
            Some((stages, executor)) if check.errors.is_empty() => Ok(Self {
                path: PathBuf::from(name),
                workspace: workspace.to_path_buf(),
                stages,
                sources,
                executor,
            }),
            _ => Err(PipelineError::new(name, &sources, check.errors)),
        }
    }
}
