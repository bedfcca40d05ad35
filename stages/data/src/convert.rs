//! The `convert` stage kind: real datasets, from their own published formats, to the unified
//! table.
//!
//! Every converter reads the dataset where it lies in the workspace (`path`, hashed into the
//! key), normalises every image to RGB PNG, letters options A.. in order and gives each item a
//! stable id derived from the source and its original id (class-qualified for image folders,
//! whose basenames collide across classes). Bad input is an error naming the file and the line
//! or record; with `on_error: skip` the item is left out and recorded, with its reason, in the
//! `skipped` table instead.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use mipipe_engine::template::value_text;
use mipipe_engine::{OutputSpec, Stage, StageContext, StageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod hf_parquet;

pub use hf_parquet::{HfColumns, HfPreset};

use crate::draw::Canvas;
use mipipe_stage_schema::ItemRng;
use mipipe_stage_schema::{write_items, Item, Task};

/// A dataset's published format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// ImageNet-style class folders `ROOT/<class>/<image>` (Mini-ImageNet).
    ImagenetFolders,
    /// Caltech-101 class folders `ROOT/<class>/image_0001.jpg`.
    Caltech101,
    /// OpenBookQA JSON lines (`question.stem`, `question.choices`, `answerKey`).
    OpenbookqaJsonl,
    /// MMLU CSV files `<subject>_<split>.csv`, no header: question, A, B, C, D, answer; `path`
    /// is a split folder (`data/test`) or the `data/` folder holding `dev/`, `val/`, `test/`.
    MmluCsv,
    /// ScienceQA `problems.json` + `pid_splits.json` + `images/<split>/<pid>/image.png`.
    Scienceqa,
    /// MMBench TSV with base64 images, as pandas writes it (quoted fields may hold tabs,
    /// newlines and doubled quotes); columns are found by their header names.
    MmbenchTsv,
    /// SEED-Bench JSON; images in `SEED-Bench-image/` beside it (`images`), named by `data_id`
    /// with or without an extension.
    SeedbenchJson,
    /// LLaVA-Instruct conversation JSON (first turn); image paths relative to the JSON's folder
    /// (`images`).
    LlavaInstructJson,
    /// TextCaps JSON (`data` with `image_id`, `image_path`, `caption_id`, captions); images
    /// from the TextVQA download, `train_images/` beside the JSON (`images`).
    Textcaps,
    /// A Hugging Face dataset's Parquet export: a `preset` (`mmbench`, `scienceqa`,
    /// `seedbench`: the lmms-lab copies) and/or a `columns` mapping.
    HfParquet,
    /// A VLMEvalKit multiple-choice TSV (MMBench, MMStar, AI2D, SEEDBench_IMG, ...): base64
    /// `image`, option columns `A`.. as present, `answer` letter; `md5` checks the download.
    VlmevalkitTsv,
}

impl Format {
    /// What the converter looks for, for the error when it finds nothing.
    fn expects(self) -> &'static str {
        match self {
            Self::ImagenetFolders | Self::Caltech101 => "one folder of images per class",
            Self::OpenbookqaJsonl => "JSON lines with `question.stem`, `question.choices` and `answerKey`",
            Self::MmluCsv => "`<subject>_<split>.csv` files in the folder, or in its `dev/`, `val/` and `test/` folders",
            Self::Scienceqa => "`problems.json` and `pid_splits.json` with image questions, images in `images/<split>/<pid>/`",
            Self::MmbenchTsv => "a TSV with `index`, `question`, `A`.., `answer` and base64 `image` columns",
            Self::SeedbenchJson => "`questions` of `data_type: image`, images in the `images` folder",
            Self::LlavaInstructJson => "records with an `image` and a human and a gpt turn",
            Self::Textcaps => "`data` entries with captions, images in the `images` folder",
            Self::HfParquet => "Parquet rows with the `preset`'s or the `columns` mapping's columns",
            Self::VlmevalkitTsv => "a TSV with `index`, `question`, `A`.., `answer` and base64 `image` columns",
        }
    }
}

/// What to do with a bad item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail the stage, naming the file and record.
    Fail,
    /// Leave the item out and record it in the `skipped` table.
    Skip,
}

/// Params of the `convert` kind.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConvertParams {
    /// The source format.
    pub format: Format,
    /// The dataset in the workspace: a folder, or the main file.
    pub path: String,
    /// Dataset name in the table [default: from the format].
    #[serde(default)]
    pub dataset: Option<String>,
    /// Split for formats that do not carry one (`train` or `test`) [default: test].
    #[serde(default)]
    pub split: Option<String>,
    /// Options per classification item (image folders).
    #[serde(default = "default_options")]
    pub options: usize,
    /// Question of classification items.
    #[serde(default = "default_question")]
    pub question: String,
    /// Readable class names for image folders: a workspace file, JSON `{dir: name}` or lines
    /// `dir name, synonyms` (ImageNet's `LOC_synset_mapping.txt`).
    #[serde(default)]
    pub class_names: Option<String>,
    /// Seed of distractor choice and gold position.
    #[serde(default)]
    pub seed: u64,
    /// `fail` (default) or `skip` bad items.
    #[serde(default = "default_on_error")]
    pub on_error: OnError,
    /// The image folder of the JSON-indexed formats, in the workspace [default: the official
    /// layout beside the index file: `SEED-Bench-image/` (SEED-Bench), `train_images/`
    /// (TextCaps), the index's own folder (LLaVA-Instruct)]. Its content enters the key.
    #[serde(default)]
    pub images: Option<String>,
    /// The file's expected MD5 (VLMEvalKit lists one per TSV): a mismatch (a truncated or
    /// altered download) fails the stage.
    #[serde(default)]
    pub md5: Option<String>,
    /// `hf_parquet`: the export's layout (`mmbench`, `scienceqa`, `seedbench`).
    #[serde(default)]
    pub preset: Option<HfPreset>,
    /// `hf_parquet`: which column holds what (`id`, `question`, `options` or
    /// `option_columns`, `answer`, `image`, `hint`), over the preset's.
    #[serde(default)]
    pub columns: Option<HfColumns>,
}

impl ConvertParams {
    /// The image folder of a JSON-indexed format, relative to the workspace.
    fn image_root(&self) -> Option<String> {
        if let Some(images) = &self.images {
            return Some(images.clone());
        }
        let beside = |name: &str| {
            let parent = Path::new(&self.path).parent().unwrap_or(Path::new(""));
            parent.join(name).to_string_lossy().into_owned()
        };
        match self.format {
            Format::SeedbenchJson => Some(beside("SEED-Bench-image")),
            Format::Textcaps => Some(beside("train_images")),
            Format::LlavaInstructJson => Some(beside(".")),
            _ => None,
        }
    }
}

fn default_options() -> usize {
    4
}
fn default_question() -> String {
    "What type of object is in this photo?".into()
}
fn default_on_error() -> OnError {
    OnError::Fail
}

/// The `convert` stage kind.
#[derive(Default)]
pub struct ConvertStage;

impl Stage for ConvertStage {
    type Params = ConvertParams;
    const KIND: &'static str = "convert";
    const VERSION: u32 = 3;
    const SUMMARY: &'static str =
        "Convert a real dataset from its published format to the unified multiple-choice table";

    fn outputs(_params: &ConvertParams) -> Vec<OutputSpec> {
        vec![
            OutputSpec::file("items", "items.parquet"),
            OutputSpec::file("skipped", "skipped.json"),
        ]
    }

    /// Every file the conversion reads enters the key: the dataset, the class names and the
    /// image folder of the JSON-indexed formats (replacing one image reruns the stage).
    fn workspace_deps(params: &ConvertParams) -> Vec<String> {
        // A folder that would be the workspace itself (an index file at its top) is left out:
        // it holds the cache, whose every write would change the key.
        let normal = |p: String| {
            let path: PathBuf = Path::new(&p)
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect();
            (!path.as_os_str().is_empty()).then(|| path.to_string_lossy().into_owned())
        };
        let mut deps: Vec<String> = std::iter::once(params.path.clone())
            .chain(params.class_names.clone())
            .chain(params.image_root())
            .filter_map(normal)
            .collect();
        deps.dedup();
        deps
    }

    fn run(&self, params: &ConvertParams, ctx: &StageContext) -> Result<(), StageError> {
        let root = ctx.workspace().join(&params.path);
        let mut sink = Sink {
            params,
            workspace: ctx.workspace().to_path_buf(),
            root: root.clone(),
            items: Vec::new(),
            skipped: Vec::new(),
        };
        if let Some(expected) = &params.md5 {
            check_md5(&root, expected)?;
        }
        match params.format {
            Format::ImagenetFolders | Format::Caltech101 => image_folders(&mut sink, ctx)?,
            Format::OpenbookqaJsonl => openbookqa(&mut sink)?,
            Format::MmluCsv => mmlu(&mut sink)?,
            Format::Scienceqa => scienceqa(&mut sink)?,
            Format::MmbenchTsv => mmbench(&mut sink)?,
            Format::SeedbenchJson => seedbench(&mut sink)?,
            Format::LlavaInstructJson => llava_instruct(&mut sink)?,
            Format::Textcaps => textcaps(&mut sink)?,
            Format::HfParquet => hf_parquet::hf_parquet(&mut sink)?,
            Format::VlmevalkitTsv => mmbench(&mut sink)?,
        }
        if sink.items.is_empty() {
            return Err(StageError::failed(format!(
                "`{}` gave no items ({} skipped); the `{}` format reads {}",
                params.path,
                sink.skipped.len(),
                serde_json::to_value(params.format)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                params.format.expects()
            )));
        }
        ctx.log(&format!(
            "{} items, {} skipped",
            sink.items.len(),
            sink.skipped.len()
        ));
        write_items(ctx.output_path("items")?, &sink.items)
            .map_err(|e| StageError::environment(e.to_string()))?;
        let skipped = serde_json::to_vec_pretty(&sink.skipped).expect("serialisable");
        fs::write(ctx.output_path("skipped")?, skipped)
            .map_err(|e| StageError::environment(e.to_string()))
    }
}

/// A left-out item and why.
#[derive(Clone, Debug, Serialize)]
struct Skipped {
    file: String,
    record: String,
    reason: String,
}

struct Sink<'a> {
    params: &'a ConvertParams,
    /// Paths in messages are shown relative to it.
    workspace: PathBuf,
    root: PathBuf,
    items: Vec<Item>,
    skipped: Vec<Skipped>,
}

impl Sink<'_> {
    /// The image folder of a JSON-indexed format.
    fn image_root(&self) -> PathBuf {
        match self.params.image_root() {
            Some(root) => self.workspace.join(root),
            None => self.root.parent().unwrap_or(Path::new(".")).to_path_buf(),
        }
    }

    fn dataset(&self) -> String {
        self.params.dataset.clone().unwrap_or_else(|| {
            match self.params.format {
                Format::ImagenetFolders => "mini-imagenet",
                Format::Caltech101 => "caltech-101",
                Format::OpenbookqaJsonl => "openbookqa",
                Format::MmluCsv => "mmlu",
                Format::Scienceqa => "scienceqa-img",
                Format::MmbenchTsv => "mmbench-en",
                Format::SeedbenchJson => "seed-bench-img",
                Format::LlavaInstructJson => "llava-instruct",
                Format::Textcaps => "textcaps",
                Format::HfParquet => self.params.preset.map_or("hf", HfPreset::dataset),
                Format::VlmevalkitTsv => {
                    return Path::new(&self.params.path)
                        .file_stem()
                        .map_or("vlmevalkit".into(), |s| s.to_string_lossy().to_lowercase());
                }
            }
            .to_string()
        })
    }

    fn split(&self) -> String {
        self.params.split.clone().unwrap_or_else(|| "test".into())
    }

    fn shown(&self, file: &Path) -> String {
        file.strip_prefix(&self.workspace)
            .unwrap_or(file)
            .display()
            .to_string()
    }

    /// A bad record: fail, or skip and remember.
    fn bad(
        &mut self,
        file: &Path,
        record: &str,
        reason: impl Into<String>,
    ) -> Result<(), StageError> {
        let reason = reason.into();
        let file = self.shown(file);
        match self.params.on_error {
            OnError::Fail => Err(StageError::failed(format!(
                "`{file}` {record}: {reason} (set `on_error: skip` to leave such items out)"
            ))),
            OnError::Skip => {
                self.skipped.push(Skipped {
                    file,
                    record: record.to_string(),
                    reason,
                });
                Ok(())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        original_id: &str,
        task: Task,
        split: &str,
        image: Option<Vec<u8>>,
        question: &str,
        options: Vec<String>,
        answer: usize,
        meta: serde_json::Value,
    ) {
        let id = format!("{}/{original_id}", self.dataset());
        self.items.push(Item {
            origin_id: id.clone(),
            id,
            dataset: self.dataset(),
            task,
            split: split.to_string(),
            image,
            question: question.trim().to_string(),
            options,
            answer,
            perturbation: "none".into(),
            facts: None,
            meta: Some(meta.to_string()),
        });
    }
}

/// The normalised image at `image_path`, or None when it is bad and `on_error: skip` recorded
/// it against `file`'s `record`.
fn image_for(
    sink: &mut Sink,
    file: &Path,
    record: &str,
    image_path: &Path,
) -> Result<Option<Vec<u8>>, StageError> {
    let image = fs::read(image_path)
        .map_err(|e| format!("cannot read: {e}"))
        .and_then(|bytes| normalize_image(&bytes));
    match image {
        Ok(image) => Ok(Some(image)),
        Err(e) => {
            let shown = sink.shown(image_path);
            sink.bad(file, record, format!("image `{shown}`: {e}"))?;
            Ok(None)
        }
    }
}

/// `line N`: the line a CSV record starts on (a quoted field may span several), or `fallback`
/// for a record that did not parse.
fn record_line(record: &Result<csv::StringRecord, csv::Error>, fallback: usize) -> String {
    let line = record
        .as_ref()
        .ok()
        .and_then(|r| r.position())
        .map_or(fallback, |p| p.line() as usize);
    format!("line {line}")
}

/// Fails unless the file's MD5 is `expected` (hex, any case).
fn check_md5(path: &Path, expected: &str) -> Result<(), StageError> {
    use md5::{Digest, Md5};
    let bytes = read_file(path)?;
    let found = format!("{:x}", Md5::digest(&bytes));
    if found.eq_ignore_ascii_case(expected.trim()) {
        Ok(())
    } else {
        Err(StageError::failed(format!(
            "`{}` has MD5 {found}, not the expected {expected}: the download is incomplete or altered; fetch it again",
            path.display()
        )))
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, StageError> {
    fs::read(path).map_err(|e| StageError::failed(format!("Cannot read `{}`: {e}", path.display())))
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StageError> {
    serde_json::from_slice(&read_file(path)?).map_err(|e| {
        StageError::failed(format!(
            "`{}` is not valid JSON of the expected shape: {e}",
            path.display()
        ))
    })
}

/// Reads any PNG or JPEG and re-encodes it as an 8-bit RGB PNG.
pub fn normalize_image(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok(mipipe_stage_schema::RgbImage::from_png(bytes)?.to_png());
    }
    if bytes.starts_with(&[0xFF, 0xD8]) {
        let mut decoder = jpeg_decoder::Decoder::new(std::io::Cursor::new(bytes));
        let pixels = decoder
            .decode()
            .map_err(|e| format!("unreadable JPEG: {e}"))?;
        let info = decoder.info().ok_or("JPEG without a header")?;
        let rgb = match info.pixel_format {
            jpeg_decoder::PixelFormat::RGB24 => pixels,
            jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&g| [g, g, g]).collect(),
            jpeg_decoder::PixelFormat::L16 => {
                pixels.chunks(2).flat_map(|p| [p[0], p[0], p[0]]).collect()
            }
            jpeg_decoder::PixelFormat::CMYK32 => pixels
                .chunks(4)
                .flat_map(|p| {
                    let k = 255 - p[3] as u16;
                    [p[0], p[1], p[2]].map(|c| ((255 - c as u16) * k / 255) as u8)
                })
                .collect(),
        };
        return Ok(Canvas::from_rgb(info.width as u32, info.height as u32, rgb)?.to_png());
    }
    Err("not a PNG or JPEG image".into())
}

/// Reads and normalises images on every core, results in input order.
fn load_images<'p>(paths: impl Iterator<Item = &'p Path>) -> Vec<Result<Vec<u8>, String>> {
    use rayon::prelude::*;
    let paths: Vec<&Path> = paths.collect();
    paths
        .par_iter()
        .map(|path| {
            let bytes = fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
            normalize_image(&bytes)
        })
        .collect()
}

fn is_image_file(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("jpg" | "jpeg" | "png")
    )
}

fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>, StageError> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| StageError::failed(format!("Cannot list `{}`: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

fn class_names(sink: &Sink, ctx: &StageContext) -> Result<BTreeMap<String, String>, StageError> {
    let Some(file) = &sink.params.class_names else {
        return Ok(BTreeMap::new());
    };
    let path = ctx.workspace().join(file);
    let text = String::from_utf8(read_file(&path)?)
        .map_err(|_| StageError::failed(format!("`{}` is not UTF-8 text", path.display())))?;
    if text.trim_start().starts_with('{') {
        return parse_json(&path);
    }
    let mut names = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (dir, rest) = line.split_once(char::is_whitespace).ok_or_else(|| {
            StageError::failed(format!(
                "`{}` line {}: expected `DIRECTORY NAME[, SYNONYMS]`",
                path.display(),
                number + 1
            ))
        })?;
        let name = rest.split(',').next().unwrap_or(rest).trim();
        names.insert(dir.to_string(), name.to_string());
    }
    Ok(names)
}

/// Mini-ImageNet and Caltech-101: one folder per class.
fn image_folders(sink: &mut Sink, ctx: &StageContext) -> Result<(), StageError> {
    let mapping = class_names(sink, ctx)?;
    let readable = |dir: &str| -> String {
        mapping
            .get(dir)
            .cloned()
            .unwrap_or_else(|| dir.replace('_', " ").to_lowercase())
    };
    let classes: Vec<PathBuf> = sorted_dir(&sink.root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    if classes.len() < 2 {
        return Err(StageError::failed(format!(
            "`{}` holds {} class folder(s); a classification dataset needs at least two",
            sink.root.display(),
            classes.len()
        )));
    }
    let dirs: Vec<String> = classes
        .iter()
        .map(|c| {
            c.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let names: Vec<String> = dirs.iter().map(|d| readable(d)).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let split = sink.split();
    let mut files: Vec<(usize, PathBuf, String)> = Vec::new();
    for (class_index, class_dir) in classes.iter().enumerate() {
        for file in sorted_dir(class_dir)?
            .into_iter()
            .filter(|p| is_image_file(p))
        {
            let relative = format!(
                "{}/{}",
                dirs[class_index],
                file.file_name().unwrap_or_default().to_string_lossy()
            );
            files.push((class_index, file, relative));
        }
    }
    // Decoding and re-encoding dominate: do it on every core, then keep file order.
    let images = load_images(files.iter().map(|(_, file, _)| file.as_path()));
    for ((class_index, file, relative), image) in files.into_iter().zip(images) {
        let image = match image {
            Ok(image) => image,
            Err(e) => {
                sink.bad(&file, "image", e)?;
                continue;
            }
        };
        let mut rng = ItemRng::new(sink.params.seed, &[&sink.dataset(), &relative, "options"]);
        let (options, answer) = rng.options(&names[class_index], &name_refs, sink.params.options);
        let meta = serde_json::json!({"class_dir": dirs[class_index], "file": relative});
        let question = sink.params.question.clone();
        sink.push(
            &relative,
            Task::ImageHeavy,
            &split,
            Some(image),
            &question,
            options,
            answer,
            meta,
        );
    }
    Ok(())
}

fn letter_index(letter: &str, count: usize) -> Option<usize> {
    let mut chars = letter.trim().chars();
    let c = chars.next()?;
    if chars.next().is_some() || !c.is_ascii_uppercase() {
        return None;
    }
    let index = (c as u8 - b'A') as usize;
    (index < count).then_some(index)
}

fn letters(count: usize) -> String {
    (0..count)
        .map(|i| ((b'A' + i as u8) as char).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// OpenBookQA: one JSON object per line.
fn openbookqa(sink: &mut Sink) -> Result<(), StageError> {
    #[derive(Deserialize)]
    struct Choice {
        text: String,
        label: String,
    }
    #[derive(Deserialize)]
    struct Question {
        stem: String,
        choices: Vec<Choice>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Record {
        id: String,
        question: Question,
        answer_key: String,
    }
    let path = sink.root.clone();
    let text = String::from_utf8(read_file(&path)?)
        .map_err(|_| StageError::failed(format!("`{}` is not UTF-8", path.display())))?;
    let split = sink.split();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record_name = format!("line {}", number + 1);
        let record: Record = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                sink.bad(&path, &record_name, format!("malformed record: {e}"))?;
                continue;
            }
        };
        let labels: Vec<&str> = record
            .question
            .choices
            .iter()
            .map(|c| c.label.as_str())
            .collect();
        let Some(answer) = labels.iter().position(|l| *l == record.answer_key) else {
            sink.bad(
                &path,
                &record_name,
                format!(
                    "answer `{}` is not one of the choice labels {labels:?}",
                    record.answer_key
                ),
            )?;
            continue;
        };
        let options = record
            .question
            .choices
            .iter()
            .map(|c| c.text.clone())
            .collect();
        let meta = serde_json::json!({"source_id": record.id});
        sink.push(
            &record.id,
            Task::TextHeavy,
            &split,
            None,
            &record.question.stem,
            options,
            answer,
            meta,
        );
    }
    Ok(())
}

/// MMLU: `<subject>_<split>.csv` files without a header row.
fn mmlu(sink: &mut Sink) -> Result<(), StageError> {
    let root = sink.root.clone();
    // `path` is one split folder (`data/test`), or `data/` with its split folders.
    let mut files = Vec::new();
    for entry in sorted_dir(&root)? {
        let is_split = entry.is_dir()
            && entry
                .file_name()
                .is_some_and(|n| ["dev", "val", "test", "train"].contains(&&*n.to_string_lossy()));
        if is_split {
            files.extend(sorted_dir(&entry)?);
        } else {
            files.push(entry);
        }
    }
    for file in files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
    {
        let stem = file
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let (subject, split) = match stem.rsplit_once('_') {
            Some((subject, split @ ("test" | "val" | "dev" | "train"))) => {
                (subject.to_string(), split.to_string())
            }
            _ => {
                sink.bad(
                    &file,
                    "file name",
                    "expected `<subject>_<test|val|dev|train>.csv`",
                )?;
                continue;
            }
        };
        // The source split stays in the id and the meta: dev, val and test rows never share
        // an id.
        let source_split = split;
        let split = if source_split == "test" {
            "test"
        } else {
            "train"
        }
        .to_string();
        let bytes = read_file(&file)?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(bytes.as_slice());
        for (row, record) in reader.records().enumerate() {
            let line = record_line(&record, row + 1);
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    sink.bad(&file, &line, format!("malformed CSV: {e}"))?;
                    continue;
                }
            };
            if record.len() != 6 {
                sink.bad(
                    &file,
                    &line,
                    format!(
                        "expected 6 columns (question, A, B, C, D, answer), found {}",
                        record.len()
                    ),
                )?;
                continue;
            }
            let Some(answer) = letter_index(&record[5], 4) else {
                sink.bad(
                    &file,
                    &line,
                    format!("answer `{}` is not one of A, B, C, D", &record[5]),
                )?;
                continue;
            };
            let options = (1..5).map(|i| record[i].to_string()).collect();
            let meta = serde_json::json!({"subject": subject, "source_split": source_split});
            let id = format!("{subject}/{source_split}/{row}");
            sink.push(
                &id,
                Task::TextHeavy,
                &split,
                None,
                &record[0],
                options,
                answer,
                meta,
            );
        }
    }
    Ok(())
}

/// ScienceQA: image questions only.
fn scienceqa(sink: &mut Sink) -> Result<(), StageError> {
    #[derive(Deserialize)]
    struct Problem {
        question: String,
        choices: Vec<String>,
        answer: usize,
        image: Option<String>,
    }
    let root = sink.root.clone();
    let problems_path = root.join("problems.json");
    let problems: BTreeMap<String, Problem> = parse_json(&problems_path)?;
    let splits: BTreeMap<String, Vec<String>> = parse_json(&root.join("pid_splits.json"))?;
    let wanted: Vec<String> = match &sink.params.split {
        Some(split) if split == "test" => vec!["test".into(), "val".into()],
        Some(split) => vec![split.clone()],
        None => vec!["test".into(), "val".into()],
    };
    for split_name in wanted {
        let Some(pids) = splits.get(&split_name) else {
            continue;
        };
        for pid in pids {
            let record = format!("problem {pid}");
            let Some(problem) = problems.get(pid) else {
                sink.bad(
                    &problems_path,
                    &record,
                    format!("listed in `{split_name}` of pid_splits.json but missing"),
                )?;
                continue;
            };
            let Some(image_name) = &problem.image else {
                continue;
            };
            if !(2..=5).contains(&problem.choices.len()) || problem.answer >= problem.choices.len()
            {
                sink.bad(
                    &problems_path,
                    &record,
                    format!(
                        "{} choices with answer index {}",
                        problem.choices.len(),
                        problem.answer
                    ),
                )?;
                continue;
            }
            let image_path = root
                .join("images")
                .join(&split_name)
                .join(pid)
                .join(image_name);
            let Some(image) = image_for(sink, &problems_path, &record, &image_path)? else {
                continue;
            };
            let split = if split_name == "train" {
                "train"
            } else {
                "test"
            };
            let meta = serde_json::json!({"pid": pid, "source_split": split_name});
            sink.push(
                pid,
                Task::Vqa,
                split,
                Some(image),
                &problem.question,
                problem.choices.clone(),
                problem.answer,
                meta,
            );
        }
    }
    Ok(())
}

/// MMBench: TSV with a header, base64 images, options A-D (blank when fewer).
fn mmbench(sink: &mut Sink) -> Result<(), StageError> {
    use base64::Engine as _;
    let path = sink.root.clone();
    let bytes = read_file(&path)?;
    // pandas' `to_csv(sep="\t")` quotes a field holding a tab, a newline or a `"` (doubling
    // the inner quotes), as the csv crate reads by default.
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .from_reader(bytes.as_slice());
    let headers = reader
        .headers()
        .map_err(|e| StageError::failed(format!("`{}`: unreadable header: {e}", path.display())))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let (Some(index_col), Some(question_col), Some(answer_col), Some(image_col)) = (
        column("index"),
        column("question"),
        column("answer"),
        column("image"),
    ) else {
        return Err(StageError::failed(format!(
            "`{}`: the header must name `index`, `question`, `answer` and `image` columns",
            path.display()
        )));
    };
    // MMBench has A-D; other VLMEvalKit sets have more.
    let option_cols: Vec<usize> = ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J"]
        .iter()
        .filter_map(|l| column(l))
        .collect();
    let hint_col = column("hint");
    for (row, record) in reader.records().enumerate() {
        let line = record_line(&record, row + 2);
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                sink.bad(&path, &line, format!("malformed TSV: {e}"))?;
                continue;
            }
        };
        let get = |i: usize| record.get(i).unwrap_or_default().trim();
        // Empty cells and pandas' `nan` are absent options.
        let options: Vec<String> = option_cols
            .iter()
            .map(|&i| get(i).to_string())
            .take_while(|o| !o.is_empty() && o != "nan")
            .collect();
        if options.len() < 2 {
            sink.bad(&path, &line, "fewer than two options")?;
            continue;
        }
        let Some(answer) = letter_index(get(answer_col), options.len()) else {
            sink.bad(
                &path,
                &line,
                format!(
                    "answer `{}` is not one of {}",
                    get(answer_col),
                    letters(options.len())
                ),
            )?;
            continue;
        };
        let image = match base64::engine::general_purpose::STANDARD
            .decode(get(image_col))
            .map_err(|e| format!("image is not base64: {e}"))
            .and_then(|b| normalize_image(&b))
        {
            Ok(image) => image,
            Err(e) => {
                sink.bad(&path, &line, e)?;
                continue;
            }
        };
        let hint = hint_col.map(get).filter(|h| !h.is_empty() && *h != "nan");
        let meta = serde_json::json!({"index": get(index_col), "hint": hint});
        let id = get(index_col).to_string();
        sink.push(
            &id,
            Task::Vqa,
            "test",
            Some(image),
            get(question_col),
            options,
            answer,
            meta,
        );
    }
    Ok(())
}

/// SEED-Bench: image questions (`data_type: image`) of a JSON file beside an image folder.
fn seedbench(sink: &mut Sink) -> Result<(), StageError> {
    #[derive(Deserialize)]
    struct Question {
        question_id: serde_json::Value,
        question: String,
        choice_a: String,
        choice_b: String,
        choice_c: String,
        choice_d: String,
        answer: String,
        data_type: String,
        data_id: String,
    }
    #[derive(Deserialize)]
    struct File {
        questions: Vec<Question>,
    }
    let path = sink.root.clone();
    let file: File = parse_json(&path)?;
    let images = sink.image_root();
    for question in file
        .questions
        .into_iter()
        .filter(|q| q.data_type == "image")
    {
        let id = value_text(&question.question_id);
        let record = format!("question {id}");
        let Some(answer) = letter_index(&question.answer, 4) else {
            sink.bad(
                &path,
                &record,
                format!("answer `{}` is not one of A, B, C, D", question.answer),
            )?;
            continue;
        };
        // The official `data_id`s name the file without its extension.
        let image_path = ["", ".jpg", ".jpeg", ".png"]
            .iter()
            .map(|ext| images.join(format!("{}{ext}", question.data_id)))
            .find(|p| p.is_file())
            .unwrap_or_else(|| images.join(&question.data_id));
        let Some(image) = image_for(sink, &path, &record, &image_path)? else {
            continue;
        };
        let options = vec![
            question.choice_a,
            question.choice_b,
            question.choice_c,
            question.choice_d,
        ];
        let meta = serde_json::json!({"data_id": question.data_id});
        sink.push(
            &id,
            Task::Vqa,
            "test",
            Some(image),
            &question.question,
            options,
            answer,
            meta,
        );
    }
    Ok(())
}

/// An open-ended (free-form) VQA training item: `answer` is its single option, the answer it
/// is trained on, and `meta.answers` lists every reference answer (`answer` among them).
fn free_form(
    sink: &mut Sink,
    id: &str,
    image: Vec<u8>,
    question: &str,
    answer: &str,
    references: &[String],
    meta: serde_json::Value,
) {
    let mut meta = meta;
    let mut answers: Vec<String> = references.iter().map(|a| a.trim().to_string()).collect();
    if !answers.iter().any(|a| a == answer.trim()) {
        answers.insert(0, answer.trim().to_string());
    }
    meta["answers"] = serde_json::json!(answers);
    sink.push(
        id,
        Task::Vqa,
        "train",
        Some(image),
        question,
        vec![answer.trim().to_string()],
        0,
        meta,
    );
}

/// LLaVA-Instruct: the first human/gpt turn of each conversation with an image.
fn llava_instruct(sink: &mut Sink) -> Result<(), StageError> {
    #[derive(Deserialize)]
    struct Turn {
        from: String,
        value: String,
    }
    #[derive(Deserialize)]
    struct Record {
        id: serde_json::Value,
        image: Option<String>,
        conversations: Vec<Turn>,
    }
    let path = sink.root.clone();
    let records: Vec<Record> = parse_json(&path)?;
    let images = sink.image_root();
    for record in records {
        let id = value_text(&record.id);
        let Some(image_name) = &record.image else {
            continue;
        };
        let name = format!("record {id}");
        let (Some(human), Some(gpt)) = (record.conversations.first(), record.conversations.get(1))
        else {
            sink.bad(&path, &name, "needs at least one human and one gpt turn")?;
            continue;
        };
        if human.from != "human" || gpt.from != "gpt" {
            sink.bad(
                &path,
                &name,
                format!(
                    "first turns are `{}` and `{}`, expected `human` and `gpt`",
                    human.from, gpt.from
                ),
            )?;
            continue;
        }
        let image_path = images.join(image_name);
        let Some(image) = image_for(sink, &path, &name, &image_path)? else {
            continue;
        };
        let question = human.value.replace("<image>", "");
        free_form(
            sink,
            &id,
            image,
            question.trim(),
            &gpt.value,
            std::slice::from_ref(&gpt.value),
            serde_json::json!({"image": image_name}),
        );
    }
    Ok(())
}

/// TextCaps: one captioning item per caption (`reference_strs`, or `caption_str`).
fn textcaps(sink: &mut Sink) -> Result<(), StageError> {
    #[derive(Deserialize)]
    struct Entry {
        image_id: String,
        /// `train/<image_id>.jpg`: relative to the TextVQA download.
        #[serde(default)]
        image_path: Option<String>,
        #[serde(default)]
        caption_id: Option<serde_json::Value>,
        #[serde(default)]
        caption_str: Option<String>,
        #[serde(default)]
        reference_strs: Option<Vec<String>>,
    }
    #[derive(Deserialize)]
    struct File {
        data: Vec<Entry>,
    }
    let path = sink.root.clone();
    let file: File = parse_json(&path)?;
    let images = sink.image_root();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for entry in file.data {
        let record = format!("image {}", entry.image_id);
        let captions: Vec<String> = match (&entry.caption_str, &entry.reference_strs) {
            (Some(c), _) => vec![c.clone()],
            (None, Some(refs)) => refs.clone(),
            (None, None) => {
                sink.bad(&path, &record, "no `caption_str` or `reference_strs`")?;
                continue;
            }
        };
        // `image_path` as given under the image folder, or its file name there (the TextVQA
        // archive unpacks `train/` as `train_images/`), or `<image_id>.jpg`.
        let candidates: Vec<PathBuf> = entry
            .image_path
            .iter()
            .flat_map(|p| {
                let name = Path::new(p).file_name().map(|n| images.join(n));
                std::iter::once(images.join(p)).chain(name)
            })
            .chain(std::iter::once(
                images.join(format!("{}.jpg", entry.image_id)),
            ))
            .collect();
        let image_path = candidates
            .iter()
            .find(|p| p.is_file())
            .unwrap_or(&candidates[0])
            .clone();
        let Some(image) = image_for(sink, &path, &record, &image_path)? else {
            continue;
        };
        let single = captions.len() == 1;
        // Every caption of the image is a reference answer of each of its items.
        let references: Vec<String> = entry
            .reference_strs
            .clone()
            .unwrap_or_else(|| captions.clone());
        for caption in &captions {
            let n = seen.entry(entry.image_id.clone()).or_insert(0);
            // The natural id `<image_id>/<caption_id>` for one caption per entry; reference
            // captions are numbered.
            let id = match (&entry.caption_id, single) {
                (Some(caption_id), true) => {
                    format!("{}/{}", entry.image_id, value_text(caption_id))
                }
                _ => format!("{}/{n}", entry.image_id),
            };
            *n += 1;
            let meta = serde_json::json!({"image_id": entry.image_id, "caption_id": entry.caption_id, "image_path": entry.image_path});
            free_form(
                sink,
                &id,
                image.clone(),
                "Briefly describe this image.",
                caption,
                &references,
                meta,
            );
        }
    }
    Ok(())
}
