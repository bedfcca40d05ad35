//! The `perturb` stage kind: every condition of the paper as rows of the unified table.
//!
//! Image-heavy items get irrelevant or misleading *text* (UF, MD, OCR noise); text-heavy items
//! get irrelevant *images* (RP noise, a real irrelevant image RI, full black FB, full white FW,
//! a UI screenshot); VQA items pass through clean. Each perturbed row keeps the question,
//! options and answer of its clean item (or its image, for text perturbations) and names it in
//! `origin_id`. Every draw comes from (seed, dataset, item id, condition).

use std::collections::BTreeMap;

use mipipe_engine::{OutputSpec, Stage, StageContext, StageError};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::draw::{Background, Canvas};
use mipipe_stage_schema::ItemRng;
use mipipe_stage_schema::{read_items, read_tables, write_items, Item, Task};

/// A condition an item can be evaluated or trained under.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// The item as it is.
    None,
    /// Unrelated facts prepended to the question (image-heavy).
    Uf,
    /// A misleading description of a wrong option prepended (image-heavy).
    Md,
    /// Form-like garbled OCR text prepended (image-heavy, out of distribution).
    Ocr,
    /// Uniform random pixels as the image: the clean condition of text-heavy items.
    Rp,
    /// A real, irrelevant image (text-heavy).
    Ri,
    /// A full black image (text-heavy).
    Fb,
    /// A full white image (text-heavy).
    Fw,
    /// A synthetic UI screenshot (text-heavy, out of distribution).
    Screenshot,
}

impl Condition {
    /// The `perturbation` column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::None => "none",
            Condition::Uf => "uf",
            Condition::Md => "md",
            Condition::Ocr => "ocr",
            Condition::Rp => "rp",
            Condition::Ri => "ri",
            Condition::Fb => "fb",
            Condition::Fw => "fw",
            Condition::Screenshot => "screenshot",
        }
    }

    fn is_text(self) -> bool {
        matches!(self, Condition::Uf | Condition::Md | Condition::Ocr)
    }

    fn is_image(self) -> bool {
        matches!(
            self,
            Condition::Rp | Condition::Ri | Condition::Fb | Condition::Fw | Condition::Screenshot
        )
    }
}

/// Where prepended text goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TextPlacement {
    /// At the start of the question itself, as the authors' evaluation does
    /// (`Question:\n<text> <question>`).
    InsideQuestion,
    /// Before the whole question block: kept in `meta.context` for the prompt renderer, the
    /// question untouched (as the authors' training does).
    BeforeQuestion,
}

/// Params of the `perturb` kind.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerturbParams {
    /// Seed of every draw (with dataset, item id and condition).
    #[serde(default)]
    pub seed: u64,
    /// Conditions of image-heavy items (`none`, `uf`, `md`, `ocr`).
    #[serde(default = "default_image_heavy")]
    pub image_heavy: Vec<Condition>,
    /// Conditions of text-heavy items (`none`, `rp`, `ri`, `fb`, `fw`, `screenshot`); `rp` is
    /// the paper's clean condition.
    #[serde(default = "default_text_heavy")]
    pub text_heavy: Vec<Condition>,
    /// Sentences per unrelated-facts paragraph (drawn with replacement, as the authors do).
    #[serde(default = "default_uf_sentences")]
    pub uf_sentences: usize,
    /// A workspace file with one unrelated fact per line, replacing the built-in pool.
    #[serde(default)]
    pub uf_pool: Option<String>,
    /// A workspace JSON file `{origin_id: {option text: description}}` with misleading
    /// descriptions (for real datasets); otherwise the table's `facts` column is used.
    #[serde(default)]
    pub facts_file: Option<String>,
    /// OCR-noise snippets per item.
    #[serde(default = "default_ocr_snippets")]
    pub ocr_snippets: usize,
    /// Where prepended text goes.
    #[serde(default = "default_placement")]
    pub text_placement: TextPlacement,
    /// Side of generated images (RP, FB, FW, screenshots); default: that of the first image in
    /// the table.
    #[serde(default)]
    pub image_size: Option<u32>,
}

fn default_image_heavy() -> Vec<Condition> {
    vec![Condition::None, Condition::Uf, Condition::Md]
}
fn default_text_heavy() -> Vec<Condition> {
    vec![Condition::Rp, Condition::Ri, Condition::Fb, Condition::Fw]
}
fn default_uf_sentences() -> usize {
    10
}
fn default_ocr_snippets() -> usize {
    4
}
fn default_placement() -> TextPlacement {
    TextPlacement::InsideQuestion
}

/// Our own pool of unrelated facts: true and deliberately false statements from several
/// fields, like the authors' pool (which mixes 60 true and 20 false sentences).
pub const UNRELATED_FACTS: &[&str] = &[
    "Water boils at 100 degrees Celsius at sea level.",
    "The human heart has four chambers.",
    "Light from the Sun takes about eight minutes to reach Earth.",
    "Diamonds are made of carbon atoms.",
    "Sound travels faster in water than in air.",
    "The printing press was developed in the fifteenth century.",
    "The Great Wall was built over many centuries.",
    "Ancient Romans built aqueducts to carry water into cities.",
    "The first modern Olympic Games were held in 1896.",
    "Paper was invented in China.",
    "Most people sleep between six and nine hours a night.",
    "Bread rises because yeast produces gas.",
    "Bicycles are a common way to travel in many cities.",
    "Tea is one of the most widely drunk beverages.",
    "Rain boots keep feet dry on wet days.",
    "Octopuses have three hearts.",
    "Honey can stay edible for a very long time.",
    "Some turtles can breathe through their skin.",
    "A group of crows is called a murder.",
    "Bananas are botanically berries.",
    "Socrates taught by asking questions.",
    "Philosophers have long debated the nature of free will.",
    "Ethics studies what makes actions right or wrong.",
    "Logic is the study of valid reasoning.",
    "Stoics believed in accepting what cannot be changed.",
    "A prime number has exactly two divisors.",
    "The sum of the angles of a triangle is 180 degrees.",
    "Pi is an irrational number.",
    "Zero is an even number.",
    "A circle has infinitely many lines of symmetry.",
    "The Moon is made mostly of cheese.",
    "Euler's identity proves that 2 + 2 = 5.",
    "Penguins are the fastest flying birds.",
    "The Sun orbits the Earth once a week.",
    "Iron floats on water because it is light.",
    "Humans use only two percent of their bones.",
    "Snow is hot when it first falls.",
    "The Pacific Ocean is the smallest ocean.",
    "Trees grow faster in complete darkness.",
    "Glass is a kind of frozen music.",
];

/// The `perturb` stage kind.
#[derive(Default)]
pub struct PerturbStage;

impl Stage for PerturbStage {
    type Params = PerturbParams;
    const KIND: &'static str = "perturb";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str =
        "Add the paper's perturbed conditions (UF, MD, OCR; RP, RI, FB, FW, screenshot) to a unified table";

    fn outputs(_params: &PerturbParams) -> Vec<OutputSpec> {
        vec![OutputSpec::file("items", "items.parquet")]
    }

    fn workspace_deps(params: &PerturbParams) -> Vec<String> {
        params
            .uf_pool
            .iter()
            .chain(&params.facts_file)
            .cloned()
            .collect()
    }

    fn run(&self, params: &PerturbParams, ctx: &StageContext) -> Result<(), StageError> {
        for c in &params.image_heavy {
            if !(c.is_text() || *c == Condition::None) {
                return Err(StageError::failed(format!(
                    "`image_heavy` lists `{}`, an image condition; image-heavy items get text conditions (none, uf, md, ocr)",
                    c.as_str()
                )));
            }
        }
        for c in &params.text_heavy {
            if !(c.is_image() || *c == Condition::None) {
                return Err(StageError::failed(format!(
                    "`text_heavy` lists `{}`, a text condition; text-heavy items get image conditions (none, rp, ri, fb, fw, screenshot)",
                    c.as_str()
                )));
            }
        }
        // Several tables may be bound (a fan-in of converted datasets): they are perturbed as
        // one, so RI draws real images from every image-heavy set among them.
        let items = read_tables(ctx.input_paths("items")?, read_items)
            .map_err(|e| StageError::failed(e.to_string()))?;
        let uf_pool: Vec<String> = match &params.uf_pool {
            Some(file) => {
                let path = ctx.workspace().join(file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    StageError::failed(format!(
                        "Cannot read `uf_pool` file `{}`: {e}",
                        path.display()
                    ))
                })?;
                let lines: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect();
                if lines.is_empty() {
                    return Err(StageError::failed(format!(
                        "`uf_pool` file `{}` has no sentences",
                        path.display()
                    )));
                }
                lines
            }
            None => UNRELATED_FACTS.iter().map(|s| s.to_string()).collect(),
        };
        let facts_file: BTreeMap<String, BTreeMap<String, String>> = match &params.facts_file {
            Some(file) => {
                let path = ctx.workspace().join(file);
                let bytes = std::fs::read(&path).map_err(|e| {
                    StageError::failed(format!(
                        "Cannot read `facts_file` `{}`: {e}",
                        path.display()
                    ))
                })?;
                serde_json::from_slice(&bytes).map_err(|e| {
                    StageError::failed(format!(
                        "`facts_file` `{}` is not {{origin_id: {{option: description}}}} JSON: {e}",
                        path.display()
                    ))
                })?
            }
            None => BTreeMap::new(),
        };
        let image_pool = real_image_pool(&items);
        let size = match params.image_size {
            Some(size) => size,
            None => image_pool
                .first()
                .and_then(|png| Canvas::from_png(png).ok())
                .map_or(32, |c| c.width()),
        };
        let context = Context {
            params,
            uf_pool: &uf_pool,
            facts_file: &facts_file,
            image_pool: &image_pool,
            size,
        };
        let out: Result<Vec<Vec<Item>>, StageError> = items
            .par_iter()
            .map(|item| context.conditions_of(item))
            .collect();
        let out: Vec<Item> = out?.into_iter().flatten().collect();
        ctx.log(&format!("{} input rows -> {} rows", items.len(), out.len()));
        write_items(ctx.output_path("items")?, &out)
            .map_err(|e| StageError::environment(e.to_string()))
    }
}

struct Context<'a> {
    params: &'a PerturbParams,
    uf_pool: &'a [String],
    facts_file: &'a BTreeMap<String, BTreeMap<String, String>>,
    image_pool: &'a [&'a [u8]],
    size: u32,
}

impl Context<'_> {
    fn conditions_of(&self, item: &Item) -> Result<Vec<Item>, StageError> {
        // Only clean rows are perturbed; rows perturbed upstream pass through.
        if item.perturbation != "none" {
            return Ok(vec![item.clone()]);
        }
        let conditions: &[Condition] = match item.task {
            Task::ImageHeavy => &self.params.image_heavy,
            Task::TextHeavy => &self.params.text_heavy,
            Task::Vqa => &[Condition::None],
        };
        conditions.iter().map(|&c| self.apply(item, c)).collect()
    }

    fn apply(&self, item: &Item, condition: Condition) -> Result<Item, StageError> {
        let mut out = item.clone();
        if condition == Condition::None {
            return Ok(out);
        }
        out.id = format!("{}#{}", item.origin_id, condition.as_str());
        out.perturbation = condition.as_str().to_string();
        let mut rng = ItemRng::new(
            self.params.seed,
            &[&item.dataset, &item.origin_id, condition.as_str()],
        );
        if condition.is_text() {
            let text = match condition {
                Condition::Uf => (0..self.params.uf_sentences.max(1))
                    .map(|_| rng.choose(self.uf_pool).as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                Condition::Md => self.misleading(item, &mut rng)?,
                _ => ocr_noise(self.params.ocr_snippets.max(1), &mut rng),
            };
            match self.params.text_placement {
                TextPlacement::InsideQuestion => out.question = format!("{text} {}", item.question),
                TextPlacement::BeforeQuestion => {
                    let mut meta: serde_json::Map<String, serde_json::Value> = item
                        .meta
                        .as_deref()
                        .and_then(|m| serde_json::from_str(m).ok())
                        .unwrap_or_default();
                    meta.insert("context".into(), serde_json::Value::String(text));
                    out.meta = Some(serde_json::Value::Object(meta).to_string());
                }
            }
        } else {
            let picture = match condition {
                Condition::Rp => Canvas::noise(self.size, &mut rng).to_png(),
                Condition::Fb => {
                    Canvas::new(self.size, Background::Plain, [0, 0, 0], &mut rng).to_png()
                }
                Condition::Fw => {
                    Canvas::new(self.size, Background::Plain, [255, 255, 255], &mut rng).to_png()
                }
                Condition::Screenshot => screenshot(self.size, &mut rng).to_png(),
                _ => {
                    if self.image_pool.is_empty() {
                        return Err(StageError::failed(
                            "`ri` needs real images, and the table has no clean image-heavy items to draw them from",
                        ));
                    }
                    rng.choose(self.image_pool).to_vec()
                }
            };
            out.image = Some(picture);
        }
        Ok(out)
    }

    /// "The picture seems to describe a {wrong option}." plus that option's description; the
    /// wrong option is drawn among the options that are not the gold.
    fn misleading(&self, item: &Item, rng: &mut ItemRng) -> Result<String, StageError> {
        let wrong: Vec<usize> = (0..item.options.len())
            .filter(|&i| i != item.answer)
            .collect();
        if wrong.is_empty() {
            return Err(StageError::failed(format!(
                "Item `{}` has no wrong option to mislead with",
                item.id
            )));
        }
        let pick = *rng.choose(&wrong);
        let option = &item.options[pick];
        let description = self
            .facts_file
            .get(&item.origin_id)
            .and_then(|f| f.get(option).cloned())
            .or_else(|| {
                item.facts
                    .as_ref()
                    .and_then(|f| f.get(pick).cloned().flatten())
            });
        Ok(match description {
            Some(d) => format!("The picture seems to describe a {option}. {d}"),
            None => format!("The picture seems to describe a {option}."),
        })
    }
}

/// The real images RI draws from: the clean image-heavy images of the table, ordered by item
/// id so that the order of rows never changes a draw.
fn real_image_pool(items: &[Item]) -> Vec<&[u8]> {
    let mut pool: Vec<(&str, &[u8])> = items
        .iter()
        .filter(|i| i.task == Task::ImageHeavy && i.perturbation == "none")
        .filter_map(|i| i.image.as_deref().map(|image| (i.id.as_str(), image)))
        .collect();
    pool.sort_by(|a, b| a.0.cmp(b.0));
    pool.into_iter().map(|(_, image)| image).collect()
}

/// Form-like OCR snippets with character-level corruption (FUNSD-style noise).
fn ocr_noise(snippets: usize, rng: &mut ItemRng) -> String {
    const FIELDS: &[&str] = &[
        "NAME",
        "DATE",
        "TOTAL",
        "FROM",
        "TO",
        "RE",
        "INVOICE NO",
        "PAGE",
        "FAX",
        "SIGNATURE",
    ];
    const WORDS: &[&str] = &[
        "Smith", "Tobacco", "Research", "Approved", "Dept.", "Memo", "Board", "Sales", "Brand",
        "Report",
    ];
    let mut out = Vec::new();
    for _ in 0..snippets {
        let field = rng.choose(FIELDS);
        let value = match rng.below(3) {
            0 => format!(
                "{:02}/{:02}/{}",
                rng.range(1, 12),
                rng.range(1, 28),
                rng.range(1970, 1999)
            ),
            1 => format!("${}.{:02}", rng.range(1, 999), rng.range(0, 99)),
            _ => format!("{} {}", rng.choose(WORDS), rng.choose(WORDS)),
        };
        let clean = format!("{field}: {value}");
        // OCR-like corruption: swap look-alike characters and drop some.
        let garbled: String = clean
            .chars()
            .filter_map(|c| {
                let roll = rng.below(100);
                match (roll, c) {
                    (0..=7, 'o' | 'O') => Some('0'),
                    (0..=7, 'l' | 'I') => Some('1'),
                    (0..=7, 'S') => Some('5'),
                    (8..=11, _) => None,
                    (12..=13, _) => Some('~'),
                    _ => Some(c),
                }
            })
            .collect();
        out.push(garbled);
    }
    out.join(" ")
}

/// A synthetic app screenshot: title bar, list rows, buttons (RICO-style distractor).
fn screenshot(size: u32, rng: &mut ItemRng) -> Canvas {
    let mut canvas = Canvas::new(size, Background::Plain, [246, 246, 246], rng);
    let s = size as f64;
    let bar = [[33, 150, 243], [76, 175, 80], [156, 39, 176], [255, 87, 34]][rng.below(4)];
    canvas.fill_rect(0.0, 0.0, s, s * 0.14, bar);
    let rows = 3 + rng.below(3);
    for row in 0..rows {
        let y = s * (0.2 + row as f64 * 0.13);
        canvas.fill_rect(s * 0.06, y, s * 0.12, s * 0.08, [190, 190, 190]);
        let width = s * (0.3 + 0.45 * rng.unit());
        canvas.fill_rect(s * 0.24, y + s * 0.02, width, s * 0.04, [120, 120, 120]);
    }
    canvas.fill_rect(s * 0.55, s * 0.86, s * 0.38, s * 0.1, bar);
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{generate_items, SynthParams};

    fn context_items() -> Vec<Item> {
        let params: SynthParams = serde_json::from_value(serde_json::json!({
            "train_per_set": 6, "test_per_set": 4, "instruct_items": 2
        }))
        .unwrap();
        generate_items(&params)
    }

    fn perturb_all(params: &PerturbParams, items: &[Item]) -> Vec<Item> {
        let pool = real_image_pool(items);
        let uf: Vec<String> = UNRELATED_FACTS.iter().map(|s| s.to_string()).collect();
        let facts = BTreeMap::new();
        let context = Context {
            params,
            uf_pool: &uf,
            facts_file: &facts,
            image_pool: &pool,
            size: 32,
        };
        items
            .iter()
            .flat_map(|i| context.conditions_of(i).unwrap())
            .collect()
    }

    fn params() -> PerturbParams {
        let mut p: PerturbParams = serde_json::from_value(serde_json::json!({})).unwrap();
        p.image_heavy.push(Condition::Ocr);
        p.text_heavy.push(Condition::Screenshot);
        p
    }

    #[test]
    fn perturbations_change_only_the_irrelevant_modality() {
        let items = context_items();
        let out = perturb_all(&params(), &items);
        let by_id: BTreeMap<&str, &Item> = items.iter().map(|i| (i.id.as_str(), i)).collect();
        let mut seen = BTreeMap::new();
        for row in &out {
            let origin = by_id[row.origin_id.as_str()];
            *seen.entry(row.perturbation.clone()).or_insert(0) += 1;
            assert_eq!(row.options, origin.options, "{}", row.id);
            assert_eq!(row.answer, origin.answer, "{}", row.id);
            match row.perturbation.as_str() {
                "uf" | "md" | "ocr" => {
                    assert_eq!(row.image, origin.image, "text conditions keep the image");
                    assert!(row.question.ends_with(&origin.question));
                    assert_ne!(row.question, origin.question);
                }
                "rp" | "ri" | "fb" | "fw" | "screenshot" => {
                    assert_eq!(
                        row.question, origin.question,
                        "image conditions keep the text"
                    );
                    assert!(row.image.is_some());
                }
                _ => assert_eq!(row, origin),
            }
        }
        for condition in [
            "none",
            "uf",
            "md",
            "ocr",
            "rp",
            "ri",
            "fb",
            "fw",
            "screenshot",
        ] {
            assert!(
                seen.contains_key(condition),
                "no `{condition}` rows: {seen:?}"
            );
        }
    }

    #[test]
    fn misleading_descriptions_never_name_the_gold_option() {
        let items = context_items();
        for row in perturb_all(&params(), &items)
            .iter()
            .filter(|r| r.perturbation == "md")
        {
            let named = row
                .question
                .strip_prefix("The picture seems to describe a ")
                .and_then(|r| r.split_once('.'))
                .map(|(option, _)| option)
                .unwrap();
            assert_ne!(named, row.options[row.answer], "{}", row.question);
            assert!(row.options.iter().any(|o| o == named), "{}", row.question);
        }
    }

    #[test]
    fn draws_depend_on_the_item_not_on_order() {
        let items = context_items();
        let forward = perturb_all(&params(), &items);
        let mut reversed_input = items.clone();
        reversed_input.reverse();
        let fingerprint = |rows: Vec<Item>| {
            let mut prints: Vec<(String, String, String)> = rows
                .into_iter()
                .map(|r| {
                    let image = r
                        .image
                        .as_deref()
                        .map(|b| blake3::hash(b).to_hex().to_string());
                    (r.id, r.question, image.unwrap_or_default())
                })
                .collect();
            prints.sort();
            prints
        };
        let backward = perturb_all(&params(), &reversed_input);
        assert!(
            fingerprint(forward) == fingerprint(backward),
            "draws depend on row order"
        );
    }

    #[test]
    fn placement_before_the_question_keeps_it_in_meta() {
        let items = context_items();
        let mut p = params();
        p.text_placement = TextPlacement::BeforeQuestion;
        let row = perturb_all(&p, &items)
            .into_iter()
            .find(|r| r.perturbation == "uf")
            .unwrap();
        let origin = items.iter().find(|i| i.id == row.origin_id).unwrap();
        assert_eq!(row.question, origin.question);
        let meta: serde_json::Value = serde_json::from_str(row.meta.as_deref().unwrap()).unwrap();
        assert!(meta["context"].as_str().unwrap().len() > 50);
    }
}
