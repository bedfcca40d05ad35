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
use crate::world::{self, SignStyle};
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
    /// RI drawn by the generator the training rows' RI uses, for rows outside the training
    /// split (text-heavy items with signs): the in-distribution counterpart of held-out RI.
    /// Training rows do not get it (their `ri` is already this), so listing it leaves the
    /// training rows, and every model trained on them, as they are.
    #[serde(rename = "ri_seen")]
    RiSeen,
    /// A full black image (text-heavy).
    Fb,
    /// A full white image (text-heavy).
    Fw,
    /// A synthetic UI screenshot (text-heavy, out of distribution).
    Screenshot,
    /// A truthful hint (the control of MD and RI): image-heavy items get a description of the
    /// gold option, text-heavy items the sign of the gold answer as their picture.
    Th,
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
            Condition::RiSeen => "ri_seen",
            Condition::Fb => "fb",
            Condition::Fw => "fw",
            Condition::Screenshot => "screenshot",
            Condition::Th => "th",
        }
    }

    fn is_text(self) -> bool {
        matches!(self, Condition::Uf | Condition::Md | Condition::Ocr)
    }

    fn is_image(self) -> bool {
        matches!(
            self,
            Condition::Rp
                | Condition::Ri
                | Condition::RiSeen
                | Condition::Fb
                | Condition::Fw
                | Condition::Screenshot
        )
    }

    /// Conditions that both item kinds take (`none`, `th`).
    fn is_shared(self) -> bool {
        matches!(self, Condition::None | Condition::Th)
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
    /// Conditions of text-heavy items (`none`, `rp`, `ri`, `ri_seen`, `fb`, `fw`, `screenshot`,
    /// `th`); `rp` is the paper's clean condition.
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
    /// Held-out perturbations at test: `test` rows get misleading templates, unrelated facts
    /// and sign pictures that `train` rows never do (docs/embedded-benchmark.md, Design v2 §3).
    /// `false`: every split draws from the same pools, as the authors' code does.
    #[serde(default = "default_held_out")]
    pub held_out: bool,
}

fn default_held_out() -> bool {
    true
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
    const VERSION: u32 = 3;
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
            if !(c.is_text() || c.is_shared()) {
                return Err(StageError::failed(format!(
                    "`image_heavy` lists `{}`, an image condition; image-heavy items get text conditions (none, uf, md, ocr, th)",
                    c.as_str()
                )));
            }
        }
        for c in &params.text_heavy {
            if !(c.is_image() || c.is_shared()) {
                return Err(StageError::failed(format!(
                    "`text_heavy` lists `{}`, a text condition; text-heavy items get image conditions (none, rp, ri, ri_seen, fb, fw, screenshot, th)",
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
        let image_pool = ImagePool::new(&items);
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
    image_pool: &'a ImagePool<'a>,
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
        conditions
            .iter()
            .filter(|&&c| c != Condition::RiSeen || item.split != "train")
            .map(|&c| self.apply(item, c))
            .collect()
    }

    fn apply(&self, item: &Item, condition: Condition) -> Result<Item, StageError> {
        let mut out = item.clone();
        if condition == Condition::None {
            return Ok(out);
        }
        out.id = format!("{}#{}", item.origin_id, condition.as_str());
        out.perturbation = condition.as_str().to_string();
        // `ri_seen` draws as `ri` does, so an item shows the same sign (the same third, the same
        // option) under both and only the drawing differs.
        let draws = match condition {
            Condition::RiSeen => Condition::Ri,
            c => c,
        };
        let mut rng = ItemRng::new(
            self.params.seed,
            &[&item.dataset, &item.origin_id, draws.as_str()],
        );
        let held_out = self.params.held_out && item.split == "test";
        let text_kind =
            condition.is_text() || (condition == Condition::Th && item.task != Task::TextHeavy);
        if text_kind {
            let text = match condition {
                Condition::Uf => {
                    let pool = self.uf_half(held_out);
                    (0..self.params.uf_sentences.max(1))
                        .map(|_| rng.choose(&pool).as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                }
                Condition::Md => {
                    let (text, pick) = self.misleading(item, held_out, &mut rng)?;
                    set_meta(&mut out, "points_at", pick.into());
                    text
                }
                Condition::Th => {
                    set_meta(&mut out, "points_at", item.answer.into());
                    world::fill(template(held_out, &mut rng), &item.options[item.answer])
                }
                _ => ocr_noise(self.params.ocr_snippets.max(1), &mut rng),
            };
            match self.params.text_placement {
                TextPlacement::InsideQuestion => out.question = format!("{text} {}", item.question),
                TextPlacement::BeforeQuestion => set_meta(&mut out, "context", text.into()),
            }
        } else {
            let style = if held_out && condition != Condition::RiSeen {
                SignStyle::HeldOut
            } else {
                SignStyle::Patch
            };
            let picture = match condition {
                Condition::Rp => Canvas::noise(self.size, &mut rng).to_png(),
                Condition::Fb => {
                    Canvas::new(self.size, Background::Plain, [0, 0, 0], &mut rng).to_png()
                }
                Condition::Fw => {
                    Canvas::new(self.size, Background::Plain, [255, 255, 255], &mut rng).to_png()
                }
                Condition::Screenshot => screenshot(self.size, &mut rng).to_png(),
                Condition::Th => {
                    let Some(sign) = Signs::of(item).and_then(|s| s.options[item.answer]) else {
                        return Err(StageError::failed(format!(
                            "`th` on text-heavy item `{}` needs the gold's sign (`meta.signs`, which `synth` writes); drop `th` from `text_heavy` for other datasets",
                            item.id
                        )));
                    };
                    set_meta(&mut out, "points_at", item.answer.into());
                    world::draw_sign(self.size, sign, style, &mut rng).to_png()
                }
                _ => match Signs::of(item) {
                    Some(signs) => {
                        let (sign, points_at, points) = signs.draw(item.answer, &mut rng);
                        set_meta(&mut out, "points_at", points_at.into());
                        set_meta(&mut out, "ri_points", points.into());
                        world::draw_sign(self.size, sign, style, &mut rng).to_png()
                    }
                    None if condition == Condition::RiSeen => {
                        return Err(StageError::failed(format!(
                            "`ri_seen` on text-heavy item `{}` needs its options' signs (`meta.signs`, which `synth` writes); drop `ri_seen` from `text_heavy` for other datasets",
                            item.id
                        )));
                    }
                    None => {
                        let pool = self.image_pool.for_row(&item.split, self.params.held_out);
                        if pool.is_empty() {
                            return Err(StageError::failed(if self.params.held_out {
                                format!(
                                    "`ri` needs real images, and the table has no clean image-heavy items in split `{}` to draw them from (with `held_out: false` every split draws from every split's images)",
                                    item.split
                                )
                            } else {
                                "`ri` needs real images, and the table has no clean image-heavy items to draw them from".to_string()
                            }));
                        }
                        rng.choose(pool).to_vec()
                    }
                },
            };
            out.image = Some(picture);
        }
        Ok(out)
    }

    /// The unrelated-facts sentences a row draws from: with `held_out`, test rows take one
    /// half of the pool and other rows the other (split by a hash of each sentence).
    fn uf_half(&self, test: bool) -> Vec<String> {
        if !self.params.held_out {
            return self.uf_pool.to_vec();
        }
        let half: Vec<String> = self
            .uf_pool
            .iter()
            .filter(|s| (blake3::hash(s.as_bytes()).as_bytes()[0] % 2 == 1) == test)
            .cloned()
            .collect();
        if half.is_empty() {
            self.uf_pool.to_vec()
        } else {
            half
        }
    }

    /// "The picture seems to describe a {wrong option}." plus that option's description; the
    /// wrong option is drawn among the options that are not the gold.
    fn misleading(
        &self,
        item: &Item,
        held_out: bool,
        rng: &mut ItemRng,
    ) -> Result<(String, usize), StageError> {
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
        let claim = world::fill(template(held_out, rng), option);
        Ok((
            match description {
                Some(d) => format!("{claim} {d}"),
                None => claim,
            },
            pick,
        ))
    }
}

/// A misleading-description template: a held-out one for test rows, a training one otherwise.
fn template(held_out: bool, rng: &mut ItemRng) -> &'static str {
    let (train, test) = world::MD_TEMPLATES.split_at(world::MD_TRAIN_TEMPLATES);
    if held_out {
        rng.choose::<&str>(test)
    } else {
        rng.choose::<&str>(train)
    }
}

/// Sets one key of a row's `meta` JSON object.
fn set_meta(item: &mut Item, key: &str, value: serde_json::Value) {
    let mut meta: serde_json::Map<String, serde_json::Value> = item
        .meta
        .as_deref()
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or_default();
    meta.insert(key.into(), value);
    item.meta = Some(serde_json::Value::Object(meta).to_string());
}

/// The signs of a text-heavy item's options (`meta.signs`, `meta.other_sign`, from `synth`).
struct Signs {
    options: Vec<Option<usize>>,
    other: Option<usize>,
}

impl Signs {
    fn of(item: &Item) -> Option<Signs> {
        let meta: serde_json::Value = serde_json::from_str(item.meta.as_deref()?).ok()?;
        let options: Vec<Option<usize>> = meta
            .get("signs")?
            .as_array()?
            .iter()
            .map(|v| v.as_u64().map(|s| s as usize))
            .collect();
        let other = meta
            .get("other_sign")
            .and_then(|v| v.as_u64())
            .map(|s| s as usize);
        (options.len() == item.options.len()).then_some(Signs { options, other })
    }

    /// An RI picture in equal thirds: the gold's sign, a wrong option's (uniform over the wrong
    /// ones) or a word's that is no option. Returns the sign, the option it points at and
    /// which third it is (`gold`, `wrong`, `none`).
    fn draw(&self, gold: usize, rng: &mut ItemRng) -> (usize, Option<usize>, &'static str) {
        let wrong: Vec<usize> = (0..self.options.len())
            .filter(|&i| i != gold && self.options[i].is_some())
            .collect();
        loop {
            match rng.below(3) {
                0 => {
                    if let Some(sign) = self.options[gold] {
                        return (sign, Some(gold), "gold");
                    }
                }
                1 => {
                    if !wrong.is_empty() {
                        let pick = *rng.choose(&wrong);
                        return (self.options[pick].unwrap_or_default(), Some(pick), "wrong");
                    }
                }
                _ => {
                    if let Some(sign) = self.other {
                        return (sign, None, "none");
                    }
                }
            }
            if self.options[gold].is_none() && wrong.is_empty() && self.other.is_none() {
                return (0, None, "none");
            }
        }
    }
}

/// The real images RI draws from: the clean image-heavy images of the table, ordered by item
/// id so that the order of rows never changes a draw. With held-out perturbations each split
/// draws from its own split's images, so no test image is ever shown in a training row (and a
/// change to the test rows never changes a training row).
struct ImagePool<'a> {
    all: Vec<&'a [u8]>,
    by_split: BTreeMap<&'a str, Vec<&'a [u8]>>,
}

impl<'a> ImagePool<'a> {
    fn new(items: &'a [Item]) -> Self {
        let mut pool: Vec<(&str, &str, &[u8])> = items
            .iter()
            .filter(|i| i.task == Task::ImageHeavy && i.perturbation == "none")
            .filter_map(|i| {
                let image = i.image.as_deref()?;
                Some((i.id.as_str(), i.split.as_str(), image))
            })
            .collect();
        pool.sort_by(|a, b| a.0.cmp(b.0));
        let mut by_split: BTreeMap<&str, Vec<&[u8]>> = BTreeMap::new();
        for &(_, split, image) in &pool {
            by_split.entry(split).or_default().push(image);
        }
        ImagePool {
            all: pool.into_iter().map(|(_, _, image)| image).collect(),
            by_split,
        }
    }

    /// The first image by item id: it gives generated pictures their size.
    fn first(&self) -> Option<&'a [u8]> {
        self.all.first().copied()
    }

    /// The images a row of `split` draws from.
    fn for_row(&self, split: &str, held_out: bool) -> &[&'a [u8]] {
        if held_out {
            self.by_split.get(split).map_or(&[], Vec::as_slice)
        } else {
            &self.all
        }
    }
}

/// Field names of the OCR-noise snippets (FUNSD-style form fields).
pub const OCR_FIELDS: &[&str] = &[
    "NAME",
    "DATE",
    "TOTAL",
    "FROM",
    "TO",
    "RE",
    "INVOICE",
    "PAGE",
    "FAX",
    "SIGNATURE",
];

/// Words of the OCR-noise snippets' values.
pub const OCR_WORDS: &[&str] = &[
    "Smith", "Tobacco", "Research", "Approved", "Dept", "Memo", "Board", "Sales", "Brand", "Report",
];

/// The punctuation marks [`ocr_noise`] writes besides its words (every other mark of the
/// snippets, `:`, is in the corpus's own sentences).
pub const OCR_SYMBOLS: &[&str] = &["/", "$"];

/// Form-like OCR snippets ("DATE: 12 / 5", "FROM: Sales Memo"), FUNSD-style: form fields
/// whose words and numbers (0-31) are all in the corpus, so that the noise is noise, not
/// unknown tokens (design v2 §3-4).
pub(crate) fn ocr_noise(snippets: usize, rng: &mut ItemRng) -> String {
    let mut out = Vec::new();
    for _ in 0..snippets {
        let field = rng.choose(OCR_FIELDS);
        let value = match rng.below(3) {
            0 => format!("{} / {}", rng.range(1, 12), rng.range(1, 28)),
            1 => format!("$ {}", rng.range(1, 31)),
            _ => format!("{} {}", rng.choose(OCR_WORDS), rng.choose(OCR_WORDS)),
        };
        out.push(format!("{field}: {value}"));
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
    use std::collections::BTreeSet;

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
        let pool = ImagePool::new(items);
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

    fn meta(row: &Item) -> serde_json::Value {
        serde_json::from_str(row.meta.as_deref().unwrap()).unwrap()
    }

    /// The option a misleading template names, and whether the template is a held-out one.
    fn named_option(question: &str) -> (String, bool) {
        for (i, template) in world::MD_TEMPLATES.iter().enumerate() {
            let (before, after) = template.split_once("{}").unwrap();
            if let Some(rest) = question.strip_prefix(before) {
                if let Some((option, _)) = rest.split_once(after) {
                    return (option.to_string(), i >= world::MD_TRAIN_TEMPLATES);
                }
            }
        }
        panic!("no template starts `{question}`")
    }

    #[test]
    fn misleading_descriptions_never_name_the_gold_and_test_rows_use_held_out_templates() {
        let items = context_items();
        for row in perturb_all(&params(), &items)
            .iter()
            .filter(|r| r.perturbation == "md")
        {
            let (named, held_out) = named_option(&row.question);
            assert_ne!(named, row.options[row.answer], "{}", row.question);
            let points_at = meta(row)["points_at"].as_u64().unwrap() as usize;
            assert_eq!(row.options[points_at], named, "{}", row.question);
            assert_eq!(
                held_out,
                row.split == "test",
                "{}: {}",
                row.id,
                row.question
            );
        }
    }

    #[test]
    fn unrelated_facts_of_test_rows_never_appear_in_training_rows() {
        let items = context_items();
        let rows = perturb_all(&params(), &items);
        let used = |test: bool| -> BTreeSet<&str> {
            UNRELATED_FACTS
                .iter()
                .copied()
                .filter(|fact| {
                    rows.iter().any(|r| {
                        r.perturbation == "uf"
                            && (r.split == "test") == test
                            && r.question.contains(fact)
                    })
                })
                .collect()
        };
        let (train, test) = (used(false), used(true));
        assert!(!train.is_empty() && !test.is_empty());
        assert!(train.is_disjoint(&test), "{:?}", train.intersection(&test));
    }

    #[test]
    fn irrelevant_images_of_text_heavy_items_are_signs_in_thirds() {
        let items = context_items();
        let mut p = params();
        p.text_heavy.push(Condition::Th);
        let mut thirds: BTreeMap<String, usize> = BTreeMap::new();
        for row in perturb_all(&p, &items)
            .iter()
            .filter(|r| r.task == Task::TextHeavy)
        {
            match row.perturbation.as_str() {
                "ri" => {
                    let meta = meta(row);
                    let points = meta["ri_points"].as_str().unwrap().to_string();
                    let points_at = meta["points_at"].as_u64().map(|v| v as usize);
                    match points.as_str() {
                        "gold" => assert_eq!(points_at, Some(row.answer)),
                        "wrong" => assert!(points_at.is_some_and(|p| p != row.answer)),
                        _ => assert_eq!(points_at, None),
                    }
                    *thirds.entry(points).or_default() += 1;
                }
                "th" => assert_eq!(meta(row)["points_at"].as_u64(), Some(row.answer as u64)),
                _ => {}
            }
        }
        assert_eq!(thirds.len(), 3, "{thirds:?}");
    }

    /// The distinct colours of a PNG picture.
    fn colours_of(png: &[u8]) -> BTreeSet<crate::draw::Rgb> {
        let picture = Canvas::from_png(png).unwrap();
        (0..picture.width())
            .flat_map(|y| (0..picture.width()).map(move |x| (x, y)))
            .map(|(x, y)| picture.get(x, y))
            .collect()
    }

    #[test]
    fn seen_irrelevant_images_point_as_ri_does_drawn_as_training_draws_them() {
        let items = context_items();
        let without = perturb_all(&params(), &items);
        let mut p = params();
        p.text_heavy.push(Condition::RiSeen);
        let with = perturb_all(&p, &items);
        // Listing `ri_seen` adds rows outside the training split and changes no other row.
        let (seen, rest): (Vec<&Item>, Vec<&Item>) =
            with.iter().partition(|r| r.perturbation == "ri_seen");
        assert_eq!(rest, without.iter().collect::<Vec<_>>());
        assert!(!seen.is_empty() && seen.iter().all(|r| r.split != "train"));
        let colours = |png: &[u8]| colours_of(png).len();
        for row in &seen {
            let ri = with
                .iter()
                .find(|r| r.origin_id == row.origin_id && r.perturbation == "ri")
                .unwrap();
            for key in ["points_at", "ri_points"] {
                assert_eq!(meta(row)[key], meta(ri)[key], "{} {key}", row.id);
            }
            // The training generator: one patch on a plain canvas (two colours); test rows'
            // `ri` is a ring on stripes (more).
            assert_eq!(colours(row.image.as_ref().unwrap()), 2, "{}", row.id);
            if row.split == "test" {
                assert!(colours(ri.image.as_ref().unwrap()) > 2, "{}", ri.id);
            }
        }
        // Items without signs (a converted dataset) have nothing to draw it from.
        let unsigned: Vec<Item> = items
            .into_iter()
            .filter(|i| i.task == Task::TextHeavy && i.split == "test")
            .map(|mut i| {
                i.meta = None;
                i
            })
            .collect();
        let pool = ImagePool::new(&unsigned);
        let uf: Vec<String> = Vec::new();
        let facts = BTreeMap::new();
        p.text_heavy = vec![Condition::RiSeen];
        let context = Context {
            params: &p,
            uf_pool: &uf,
            facts_file: &facts,
            image_pool: &pool,
            size: 32,
        };
        let err = context.conditions_of(&unsigned[0]).unwrap_err();
        assert!(err.to_string().contains("`ri_seen`"), "{err}");
    }

    #[test]
    fn colour_code_pictures_show_the_colour_of_the_option_they_point_at() {
        let synth: SynthParams = serde_json::from_value(serde_json::json!({
            "train_per_set": 6, "test_per_set": 9, "instruct_items": 2, "sign_code": "colour"
        }))
        .unwrap();
        let items = generate_items(&synth);
        let mut p = params();
        p.text_heavy.push(Condition::Th);
        let colour_of = |word: &str| {
            let sign = world::sign_of(word, world::SignCode::Colour).unwrap();
            world::COLORS[world::sign_parts(sign).0].1
        };
        let mut checked = BTreeSet::new();
        for row in perturb_all(&p, &items).iter().filter(|r| {
            r.task == Task::TextHeavy && ["ri", "th"].contains(&r.perturbation.as_str())
        }) {
            let shown = colours_of(row.image.as_ref().unwrap());
            let points_at = meta(row)["points_at"].as_u64().map(|v| v as usize);
            for (i, option) in row.options.iter().enumerate() {
                assert_eq!(
                    shown.contains(&colour_of(option)),
                    points_at == Some(i),
                    "{} ({}) option {i}",
                    row.id,
                    row.perturbation
                );
            }
            checked.insert((row.split.clone(), points_at.is_some()));
        }
        assert_eq!(
            checked.len(),
            4,
            "train and test rows, pointing and not: {checked:?}"
        );
    }

    #[test]
    fn real_irrelevant_images_come_from_the_rows_own_split_when_held_out() {
        // Text-heavy items without signs (a converted dataset) get real images for RI.
        let items: Vec<Item> = context_items()
            .into_iter()
            .map(|mut i| {
                if i.task == Task::TextHeavy {
                    i.meta = None;
                }
                i
            })
            .collect();
        let digest = |png: &[u8]| *blake3::hash(png).as_bytes();
        let images_of = |split: &str| -> BTreeSet<[u8; 32]> {
            items
                .iter()
                .filter(|i| i.task == Task::ImageHeavy && i.split == split)
                .filter_map(|i| i.image.as_deref().map(digest))
                .collect()
        };
        let (train, test) = (images_of("train"), images_of("test"));
        assert!(
            train.is_disjoint(&test),
            "the fixture's splits share images"
        );
        let drawn = |p: &PerturbParams, split: &str| -> BTreeSet<[u8; 32]> {
            perturb_all(p, &items)
                .iter()
                .filter(|r| r.perturbation == "ri" && r.split == split)
                .map(|r| digest(r.image.as_deref().unwrap()))
                .collect()
        };
        let held_out = params();
        assert!(held_out.held_out);
        for (split, own) in [("train", &train), ("test", &test)] {
            let got = drawn(&held_out, split);
            assert!(!got.is_empty() && got.is_subset(own), "{split}");
        }
        // As the authors' code does: every split draws from every image.
        let shared = PerturbParams {
            held_out: false,
            ..params()
        };
        let got = drawn(&shared, "train");
        assert!(
            !got.is_disjoint(&test),
            "train rows never drew a test image"
        );
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
