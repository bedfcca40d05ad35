//! The `synth` stage kind: the embedded benchmark, generated deterministically from a seed.

use std::collections::BTreeSet;

use mipipe_engine::{OutputSpec, Stage, StageContext, StageError};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::draw::Canvas;
use crate::world::{
    self, SignCode, SignStyle, BACKGROUNDS, BACKGROUND_TONES, COLORS, CREATURES, SHAPES,
};
use mipipe_stage_schema::ItemRng;
use mipipe_stage_schema::{write_corpus, write_items, CorpusRow, Item, Task};

/// Params of the `synth` kind.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SynthParams {
    /// Seed of the whole world: every image, question and option order derives from it.
    #[serde(default)]
    pub seed: u64,
    /// Image side in pixels.
    #[serde(default = "default_image_size")]
    pub image_size: u32,
    /// Training items per image-heavy and text-heavy set.
    #[serde(default = "default_train")]
    pub train_per_set: usize,
    /// Test items per image-heavy, text-heavy and VQA evaluation set.
    #[serde(default = "default_test")]
    pub test_per_set: usize,
    /// Items of the VQA instruction set (training only).
    #[serde(default = "default_instruct")]
    pub instruct_items: usize,
    /// Image-caption rows of the pretraining corpus.
    #[serde(default = "default_captions")]
    pub pretrain_captions: usize,
    /// Options per multiple-choice item (2 to 8).
    #[serde(default = "default_options")]
    pub options: usize,
    /// Fraction of pretraining questions whose prompt carries a *truthful* description of the
    /// image: the shortcut that makes honestly trained vanilla models trust text about images.
    #[serde(default = "default_hint_rate")]
    pub truthful_hint_rate: f64,
    /// Share of *training* text-heavy items whose picture is the sign of the gold answer (the
    /// rest get random pixels): the shortcut that lets a vanilla model learn that a picture can
    /// answer a text question, whose misuse is image-to-text interference.
    #[serde(default = "default_sign_rate")]
    pub sign_rate: f64,
    /// Items per image-heavy and text-heavy set in the `val` split (for choosing a learning
    /// rate; never trained or tested on).
    #[serde(default)]
    pub val_per_set: usize,
    /// Sentences of the general-text section of the corpus (the words of the perturbations
    /// in everyday sentences, so that a vocabulary learnt from the corpus has them).
    #[serde(default = "default_general")]
    pub general_sentences: usize,
    /// Whether training text-heavy items carry a picture (the gold's sign at `sign_rate`,
    /// random pixels otherwise); `false` gives them none, as synth v1 did (a pilot's control).
    #[serde(default = "default_true")]
    pub text_heavy_pictures: bool,
    /// Pictures of each sign in the corpus, each drawn anew: the first captioned with the code
    /// in words ("The sign of moss is a green patch at the top left."), the others with the
    /// word the picture stands for ("This is the sign of moss.", the direction the probe asks).
    #[serde(default = "default_sign_pictures")]
    pub sign_pictures: usize,
    /// Training items of the set `signs` in the probe's format ("Which home is this the sign
    /// of?" under the word's sign), appended after every other row of `items`: instruction
    /// items whose answer is the sign code (docs/embedded-benchmark.md, "Sign items").
    #[serde(default)]
    pub sign_items: usize,
    /// The picture code of the text-heavy sets' answer words: `quadrant` (a colour in a
    /// quadrant, the default) or `colour` (the colour alone; docs/embedded-benchmark.md,
    /// "Sign colours"). Under `colour`, items' options are drawn with distinct colours.
    #[serde(default)]
    pub sign_code: SignCode,
}

fn default_image_size() -> u32 {
    32
}
fn default_train() -> usize {
    200
}
fn default_test() -> usize {
    100
}
fn default_instruct() -> usize {
    400
}
fn default_captions() -> usize {
    1000
}
fn default_options() -> usize {
    4
}
fn default_hint_rate() -> f64 {
    0.5
}
fn default_sign_rate() -> f64 {
    0.5
}
fn default_true() -> bool {
    true
}
fn default_general() -> usize {
    500
}
fn default_sign_pictures() -> usize {
    1
}

/// The `synth` stage kind.
#[derive(Default)]
pub struct SynthStage;

/// The datasets the benchmark holds, with their paper roles.
pub const DATASETS: &[(&str, Task, &str)] = &[
    ("shapes", Task::ImageHeavy, "Mini-ImageNet"),
    ("colors", Task::ImageHeavy, "Caltech-101"),
    ("creatures", Task::TextHeavy, "OpenBookQA"),
    ("arithmetic", Task::TextHeavy, "MMLU"),
    ("attributes", Task::Vqa, "ScienceQA-IMG"),
    ("counting", Task::Vqa, "MMBench-EN"),
    ("spatial", Task::Vqa, "SEED-Bench-IMG"),
    ("instruct", Task::Vqa, "LLaVA-Instruct"),
];

impl Stage for SynthStage {
    type Params = SynthParams;
    const KIND: &'static str = "synth";
    const VERSION: u32 = 4;
    const SUMMARY: &'static str =
        "Generate the embedded multimodal benchmark (image-heavy, text-heavy and VQA sets, pretraining corpus)";

    fn outputs(_params: &SynthParams) -> Vec<OutputSpec> {
        vec![
            OutputSpec::file("items", "items.parquet"),
            OutputSpec::file("corpus", "corpus.parquet"),
            OutputSpec::file("probe", "probe.parquet"),
        ]
    }

    fn run(&self, params: &SynthParams, ctx: &StageContext) -> Result<(), StageError> {
        if !(2..=8).contains(&params.options) {
            return Err(StageError::failed(format!(
                "`options` is {}; it must be from 2 to 8",
                params.options
            )));
        }
        if params.image_size < 16 {
            return Err(StageError::failed(
                "`image_size` must be at least 16 pixels",
            ));
        }
        let items = generate_items(params);
        ctx.log(&format!("generated {} items", items.len()));
        write_items(ctx.output_path("items")?, &items)
            .map_err(|e| StageError::environment(e.to_string()))?;
        let corpus = generate_corpus(params);
        ctx.log(&format!("generated {} corpus rows", corpus.len()));
        write_corpus(ctx.output_path("corpus")?, &corpus)
            .map_err(|e| StageError::environment(e.to_string()))?;
        let probe = generate_probe(params);
        ctx.log(&format!("generated {} probe items", probe.len()));
        write_items(ctx.output_path("probe")?, &probe)
            .map_err(|e| StageError::environment(e.to_string()))
    }
}

/// The probe set `signs` (`test_per_set` test items, then `val_per_set` val items for pilots;
/// docs/embedded-benchmark.md): "Which home / food / number is this the sign of?" (a third
/// each, [`sign_item`]). It measures whether a model learnt the sign code that image-to-text
/// interference needs.
pub fn generate_probe(params: &SynthParams) -> Vec<Item> {
    let jobs: Vec<(&str, usize)> = [("test", params.test_per_set), ("val", params.val_per_set)]
        .into_iter()
        .flat_map(|(split, count)| (0..count).map(move |index| (split, index)))
        .collect();
    jobs.into_par_iter()
        .map(|(split, index)| sign_item(params, split, index))
        .collect()
}

/// Item `index` of split `split` of the set `signs`: a third each asks for a home, a food or a
/// number, the picture the gold word's sign drawn as the corpus draws it, the options words of
/// the same vocabulary.
fn sign_item(params: &SynthParams, split: &str, index: usize) -> Item {
    let numbers: Vec<String> = (0..=world::MAX_NUMBER).map(|v| v.to_string()).collect();
    let vocabularies: [(&str, Vec<&str>); 3] = [
        ("home", world::homes()),
        ("food", world::foods()),
        ("number", numbers.iter().map(String::as_str).collect()),
    ];
    let id = format!("synth/signs/{split}/{index:06}");
    let mut rng = ItemRng::new(params.seed, &["signs", &id, "item"]);
    let (noun, words) = &vocabularies[index % vocabularies.len()];
    let gold = *rng.choose(words);
    let (options, answer) =
        world::distinct_sign_options(&mut rng, gold, words, params.options, params.sign_code);
    let sign = world::sign_of(gold, params.sign_code).expect("every answer word has a sign");
    let picture = world::draw_sign(params.image_size, sign, SignStyle::Patch, &mut rng);
    Item {
        origin_id: id.clone(),
        id,
        dataset: "signs".into(),
        task: Task::ImageHeavy,
        split: split.into(),
        image: Some(picture.to_png()),
        question: format!("Which {noun} is this the sign of?"),
        options,
        answer,
        perturbation: "none".into(),
        facts: None,
        meta: None,
    }
}

/// Every item of every set, in a fixed order (dataset, split, index), generated in parallel.
pub fn generate_items(params: &SynthParams) -> Vec<Item> {
    let mut jobs: Vec<(&'static str, Task, &'static str, usize)> = Vec::new();
    for &(dataset, task, _) in DATASETS {
        let splits: &[(&str, usize)] = match (dataset, task) {
            ("instruct", _) => &[("train", params.instruct_items)],
            (_, Task::Vqa) => &[("test", params.test_per_set)],
            _ => &[
                ("train", params.train_per_set),
                ("val", params.val_per_set),
                ("test", params.test_per_set),
            ],
        };
        for &(split, count) in splits {
            for index in 0..count {
                jobs.push((dataset, task, split, index));
            }
        }
    }
    let mut items: Vec<Item> = jobs
        .par_iter()
        .map(|&(dataset, task, split, index)| make_item(params, dataset, task, split, index))
        .collect();
    items.par_extend(
        (0..params.sign_items)
            .into_par_iter()
            .map(|index| sign_item(params, "train", index)),
    );
    items
}

struct Placed {
    shape: usize,
    color: usize,
    x: f64,
    y: f64,
}

fn canvas(params: &SynthParams, rng: &mut ItemRng) -> (Canvas, &'static str) {
    let (background, name) = *rng.choose(BACKGROUNDS);
    let tone = *rng.choose(BACKGROUND_TONES);
    (Canvas::new(params.image_size, background, tone, rng), name)
}

fn draw_all(canvas: &mut Canvas, placed: &[Placed], radius: f64) {
    for p in placed {
        canvas.draw(SHAPES[p.shape].0, p.x, p.y, radius, COLORS[p.color].1);
    }
}

fn make_item(params: &SynthParams, dataset: &str, task: Task, split: &str, index: usize) -> Item {
    let id = format!("synth/{dataset}/{split}/{index:06}");
    let mut rng = ItemRng::new(params.seed, &[dataset, &id, "item"]);
    let size = params.image_size as f64;
    let n = params.options;
    let shape_names: Vec<&str> = SHAPES.iter().map(|s| s.1).collect();
    let color_names: Vec<&str> = COLORS.iter().map(|c| c.0).collect();
    let Content {
        image,
        question,
        options,
        answer,
        facts,
        meta,
    } = match dataset {
        "shapes" | "colors" => {
            let shape = rng.below(SHAPES.len());
            let color = rng.below(COLORS.len());
            let radius = size * (0.18 + 0.12 * rng.unit());
            let x = radius + rng.unit() * (size - 2.0 * radius);
            let y = radius + rng.unit() * (size - 2.0 * radius);
            let (mut picture, background) = canvas(params, &mut rng);
            draw_all(&mut picture, &[Placed { shape, color, x, y }], radius);
            let (question, gold, pool, describe): (&str, &str, &[&str], Describe) =
                if dataset == "shapes" {
                    (
                        "What shape is in this picture?",
                        SHAPES[shape].1,
                        &shape_names,
                        |o| {
                            SHAPES
                                .iter()
                                .find(|s| s.1 == o)
                                .map(|s| s.2.to_string())
                                .unwrap_or_default()
                        },
                    )
                } else {
                    (
                        "What color is the object in this picture?",
                        COLORS[color].0,
                        &color_names,
                        |o| {
                            COLORS
                                .iter()
                                .find(|c| c.0 == o)
                                .map(|c| c.2.to_string())
                                .unwrap_or_default()
                        },
                    )
                };
            let (options, answer) = rng.options(gold, pool, n);
            let facts = options
                .iter()
                .enumerate()
                .map(|(i, o)| (i != answer).then(|| describe(o)))
                .collect();
            let meta = serde_json::json!({"shape": SHAPES[shape].1, "color": COLORS[color].0, "background": background});
            Content {
                image: Some(picture.to_png()),
                question: question.to_string(),
                options,
                answer,
                facts: Some(facts),
                meta,
            }
        }
        "creatures" => {
            let (creature, home, food) = *rng.choose(CREATURES);
            let homes = world::homes();
            let foods = world::foods();
            let (question, gold, pool, describe): (String, &str, &[&str], Describe) =
                if rng.below(2) == 0 {
                    (
                        format!("Where does a {creature} live?"),
                        home,
                        &homes,
                        world::describe_home,
                    )
                } else {
                    (
                        format!("What does a {creature} eat?"),
                        food,
                        &foods,
                        world::describe_food,
                    )
                };
            let (options, answer) =
                world::distinct_sign_options(&mut rng, gold, pool, n, params.sign_code);
            let facts = options
                .iter()
                .enumerate()
                .map(|(i, o)| (i != answer).then(|| describe(o)))
                .collect();
            let mut meta = signs_meta(&options, pool, params.sign_code, &mut rng);
            meta["creature"] = creature.into();
            Content {
                image: None,
                question,
                options,
                answer,
                facts: Some(facts),
                meta,
            }
        }
        "arithmetic" => {
            // Every number is 0-31 (each has a sign); distractors lie within 5 of the gold,
            // so neither "the largest option" nor "the option nearest the operands" is a
            // shortcut much above chance.
            let max = world::MAX_NUMBER;
            let (question, gold) = match rng.below(3) {
                0 => {
                    let sum = rng.range(2, max);
                    let a = rng.range(1, sum - 1);
                    (format!("What is {a} + {}?", sum - a), sum)
                }
                1 => {
                    let a = rng.range(2, max);
                    let b = rng.range(0, a - 1);
                    (format!("What is {a} - {b}?"), a - b)
                }
                _ => {
                    let a = rng.range(0, max);
                    let mut b = rng.range(0, max - 1);
                    if b >= a {
                        b += 1;
                    }
                    (format!("Which number is larger: {a} or {b}?"), a.max(b))
                }
            };
            let window: Vec<String> = (gold - 5..=gold + 5)
                .filter(|&v| v != gold && (0..=max).contains(&v))
                .map(|v| v.to_string())
                .collect();
            let gold_text = gold.to_string();
            let window: Vec<&str> = window.iter().map(String::as_str).collect();
            // The quadrant code keeps its own draw (a sample of the window, then the slot), so
            // its items keep their bytes; the colour code needs distractors of distinct colours.
            let (options, answer) = match params.sign_code {
                SignCode::Quadrant => {
                    let picks = rng.sample_indices(window.len(), n - 1);
                    let mut candidates: Vec<&str> = picks.iter().map(|&i| window[i]).collect();
                    candidates.push(&gold_text);
                    rng.options(&gold_text, &candidates, n)
                }
                code => world::distinct_sign_options(&mut rng, &gold_text, &window, n, code),
            };
            let numbers: Vec<String> = (0..=max).map(|v| v.to_string()).collect();
            let numbers: Vec<&str> = numbers.iter().map(String::as_str).collect();
            let meta = signs_meta(&options, &numbers, params.sign_code, &mut rng);
            Content {
                image: None,
                question,
                options,
                answer,
                facts: None,
                meta,
            }
        }
        _ => vqa_item(params, dataset, &mut rng, &shape_names, &color_names),
    };
    // Training text-heavy items come as pretraining sees them: with the gold's sign at
    // `sign_rate`, random pixels otherwise. Other splits have no picture; `perturb` gives them
    // each condition's.
    let image = if task == Task::TextHeavy && split == "train" && params.text_heavy_pictures {
        let picture = match world::sign_of(&options[answer], params.sign_code) {
            Some(sign) if rng.unit() < params.sign_rate => {
                world::draw_sign(params.image_size, sign, SignStyle::Patch, &mut rng)
            }
            _ => Canvas::noise(params.image_size, &mut rng),
        };
        Some(picture.to_png())
    } else {
        image
    };
    Item {
        origin_id: id.clone(),
        id,
        dataset: dataset.to_string(),
        task,
        split: split.to_string(),
        image,
        question,
        options,
        answer,
        perturbation: "none".to_string(),
        facts,
        meta: Some(meta.to_string()),
    }
}

/// The `meta` of a text-heavy item: each option's sign (null for a word without one) and the
/// sign of a word of the same vocabulary that is no option and shares no option's sign
/// (`other_sign`), from which `perturb` draws RI pictures pointing at the gold, a wrong option
/// or nothing.
fn signs_meta(
    options: &[String],
    vocabulary: &[&str],
    code: SignCode,
    rng: &mut ItemRng,
) -> serde_json::Value {
    let signs: Vec<Option<usize>> = options.iter().map(|o| world::sign_of(o, code)).collect();
    let others: Vec<usize> = vocabulary
        .iter()
        .filter(|w| !options.iter().any(|o| o == *w))
        .filter_map(|w| world::sign_of(w, code))
        .filter(|sign| !signs.contains(&Some(*sign)))
        .collect();
    let other = (!others.is_empty()).then(|| *rng.choose(&others));
    serde_json::json!({"signs": signs, "other_sign": other})
}

/// Describes an option (for the `facts` column).
type Describe = fn(&str) -> String;

/// What one generated item holds besides its identity.
struct Content {
    image: Option<Vec<u8>>,
    question: String,
    options: Vec<String>,
    answer: usize,
    facts: Option<Vec<Option<String>>>,
    meta: serde_json::Value,
}

fn vqa_item(
    params: &SynthParams,
    dataset: &str,
    rng: &mut ItemRng,
    shape_names: &[&str],
    color_names: &[&str],
) -> Content {
    let size = params.image_size as f64;
    let n = params.options;
    let kind = match dataset {
        "instruct" => ["attributes", "counting", "spatial"][rng.below(3)],
        other => other,
    };
    let radius = size * 0.12;
    let (mut picture, background) = canvas(params, rng);
    // Place shapes on a coarse grid so they never overlap.
    let cells = ((size / (2.6 * radius)).floor() as usize).max(2);
    let slots = rng.sample_indices(cells * cells, (cells * cells).min(6));
    let at = |slot: usize| {
        let step = size / cells as f64;
        (
            ((slot % cells) as f64 + 0.5) * step,
            ((slot / cells) as f64 + 0.5) * step,
        )
    };
    let (question, gold, pool, placed): (String, String, Vec<String>, Vec<Placed>) = match kind {
        "attributes" => {
            let kinds = rng.sample_indices(SHAPES.len(), 3);
            let placed: Vec<Placed> = kinds
                .iter()
                .zip(&slots)
                .map(|(&shape, &slot)| {
                    let (x, y) = at(slot);
                    Placed {
                        shape,
                        color: rng.below(COLORS.len()),
                        x,
                        y,
                    }
                })
                .collect();
            let target = &placed[rng.below(placed.len())];
            (
                format!("What color is the {}?", SHAPES[target.shape].1),
                COLORS[target.color].0.to_string(),
                color_names.iter().map(|s| s.to_string()).collect(),
                placed,
            )
        }
        "counting" => {
            let target = rng.below(SHAPES.len());
            let count = 1 + rng.below(slots.len().min(n + 1).max(2) - 1);
            let mut placed = Vec::new();
            for (i, &slot) in slots.iter().enumerate() {
                let (x, y) = at(slot);
                let shape = if i < count {
                    target
                } else {
                    // Distractors are other shapes.
                    (target + 1 + rng.below(SHAPES.len() - 1)) % SHAPES.len()
                };
                if i < count || rng.below(2) == 0 {
                    placed.push(Placed {
                        shape,
                        color: rng.below(COLORS.len()),
                        x,
                        y,
                    });
                }
            }
            let max = slots.len().max(n);
            (
                format!(
                    "How many {} are in the picture?",
                    world::plural(SHAPES[target].1)
                ),
                count.to_string(),
                (1..=max).map(|c| c.to_string()).collect(),
                placed,
            )
        }
        _ => {
            // Two shapes side by side (left/right) on the same row.
            let kinds = rng.sample_indices(SHAPES.len(), 2);
            let row = size * (0.3 + 0.4 * rng.unit());
            let placed = vec![
                Placed {
                    shape: kinds[0],
                    color: rng.below(COLORS.len()),
                    x: size * 0.27,
                    y: row,
                },
                Placed {
                    shape: kinds[1],
                    color: rng.below(COLORS.len()),
                    x: size * 0.73,
                    y: row,
                },
            ];
            let ask_left = rng.below(2) == 0;
            let (reference, answer) = if ask_left {
                (kinds[1], kinds[0])
            } else {
                (kinds[0], kinds[1])
            };
            let side = if ask_left { "left" } else { "right" };
            (
                format!(
                    "Which shape is to the {side} of the {}?",
                    SHAPES[reference].1
                ),
                SHAPES[answer].1.to_string(),
                shape_names
                    .iter()
                    .filter(|s| **s != SHAPES[reference].1)
                    .map(|s| s.to_string())
                    .collect(),
                placed,
            )
        }
    };
    draw_all(&mut picture, &placed, radius);
    let pool_refs: Vec<&str> = pool.iter().map(String::as_str).collect();
    let (options, answer) = rng.options(&gold, &pool_refs, n.min(pool.len()));
    let meta = serde_json::json!({"kind": kind, "background": background, "objects": placed.len()});
    Content {
        image: Some(picture.to_png()),
        question,
        options,
        answer,
        facts: None,
        meta,
    }
}

/// The pretraining corpus: captioned images, world facts, and worked questions in which a
/// truthful description of the image often accompanies the question.
pub fn generate_corpus(params: &SynthParams) -> Vec<CorpusRow> {
    let captions: Vec<CorpusRow> = (0..params.pretrain_captions)
        .into_par_iter()
        .map(|index| {
            let id = format!("synth/corpus/caption/{index:06}");
            let mut rng = ItemRng::new(params.seed, &["corpus", &id, "item"]);
            let shape = rng.below(SHAPES.len());
            let color = rng.below(COLORS.len());
            let size = params.image_size as f64;
            let radius = size * (0.18 + 0.12 * rng.unit());
            let x = radius + rng.unit() * (size - 2.0 * radius);
            let y = radius + rng.unit() * (size - 2.0 * radius);
            let (mut picture, background) = canvas(params, &mut rng);
            draw_all(&mut picture, &[Placed { shape, color, x, y }], radius);
            let description = format!(
                "A picture of a {} {} on a {background} background.",
                COLORS[color].0, SHAPES[shape].1
            );
            // Worked questions: the answer is in the picture, and often in a hint too.
            let text = match rng.below(3) {
                0 => description,
                choice => {
                    let (question, gold) = if choice == 1 {
                        ("What shape is in this picture?", SHAPES[shape].1)
                    } else {
                        ("What color is the object in this picture?", COLORS[color].0)
                    };
                    let hint = if rng.unit() < params.truthful_hint_rate {
                        format!(
                            "The picture seems to describe a {} {}. ",
                            COLORS[color].0, SHAPES[shape].1
                        )
                    } else {
                        String::new()
                    };
                    format!("{hint}Question: {question} Answer: {gold}")
                }
            };
            CorpusRow {
                id,
                image: Some(picture.to_png()),
                text,
            }
        })
        .collect();
    let mut rows = captions;
    for (creature, home, food) in CREATURES {
        rows.push(CorpusRow {
            id: format!("synth/corpus/fact/{creature}/home"),
            image: None,
            text: format!("A {creature} lives in the {home}."),
        });
        rows.push(CorpusRow {
            id: format!("synth/corpus/fact/{creature}/food"),
            image: None,
            text: format!("A {creature} eats {food}."),
        });
    }
    for (_, name, description) in SHAPES {
        rows.push(CorpusRow {
            id: format!("synth/corpus/fact/shape/{name}"),
            image: None,
            text: description.to_string(),
        });
    }
    for (name, _, description) in COLORS {
        rows.push(CorpusRow {
            id: format!("synth/corpus/fact/color/{name}"),
            image: None,
            text: description.to_string(),
        });
    }
    // The sign code, stated as text and shown as a picture with its word.
    let numbers: Vec<String> = (0..=world::MAX_NUMBER).map(|v| v.to_string()).collect();
    let words = world::homes()
        .into_iter()
        .chain(world::foods())
        .chain(numbers.iter().map(String::as_str));
    for word in words {
        let sign = world::sign_of(word, params.sign_code).expect("every answer word has a sign");
        for copy in 0..params.sign_pictures {
            let (id, text) = if copy == 0 {
                (
                    format!("synth/corpus/sign/{word}"),
                    world::describe_sign(word, sign),
                )
            } else {
                (
                    format!("synth/corpus/sign/{word}/{copy}"),
                    format!("This is the sign of {word}."),
                )
            };
            let mut rng = ItemRng::new(params.seed, &["corpus", &id, "item"]);
            let picture = world::draw_sign(params.image_size, sign, SignStyle::Patch, &mut rng);
            rows.push(CorpusRow {
                id,
                image: Some(picture.to_png()),
                text,
            });
        }
    }
    rows.extend(general_text(params));
    rows
}

/// Every word of the perturbations the test split uses (the unrelated-facts pool, the
/// misleading templates, the OCR fields) and the general word list, in a fixed order.
pub fn perturbation_words() -> Vec<String> {
    let mut words: BTreeSet<String> = BTreeSet::new();
    let texts = crate::perturb::UNRELATED_FACTS
        .iter()
        .chain(world::MD_TEMPLATES)
        .chain(crate::perturb::OCR_FIELDS)
        .chain(crate::perturb::OCR_WORDS)
        .chain(world::GENERAL_WORDS);
    for text in texts {
        for word in text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-')) {
            if !word.is_empty() && word != "{}" {
                words.insert(word.to_string());
            }
        }
    }
    words.extend(crate::perturb::OCR_SYMBOLS.iter().map(|s| s.to_string()));
    words.into_iter().collect()
}

/// The general-text section of the corpus: `general_sentences` sentences of 6 to 11 words
/// drawn from [`perturbation_words`], the first ones covering every word once. No sentence of
/// the unrelated-facts pool appears (tested), every word of it does.
fn general_text(params: &SynthParams) -> Vec<CorpusRow> {
    let words = perturbation_words();
    let mut order: Vec<usize> = (0..words.len()).collect();
    let mut rng = ItemRng::new(params.seed, &["corpus", "general", "order"]);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    (0..params.general_sentences)
        .map(|index| {
            let id = format!("synth/corpus/general/{index:06}");
            let mut rng = ItemRng::new(params.seed, &["corpus", &id, "item"]);
            let length = 6 + rng.below(6);
            let picked: Vec<&str> = (0..length)
                .map(|k| {
                    let covering = index * 6 + k;
                    if k < 6 && covering < order.len() {
                        words[order[covering]].as_str()
                    } else {
                        rng.choose(&words).as_str()
                    }
                })
                .collect();
            let mut text = picked.join(" ");
            if let Some(first) = text.get(0..1) {
                text = first.to_uppercase() + &text[1..];
            }
            text.push('.');
            CorpusRow {
                id,
                image: None,
                text,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SynthParams {
        serde_json::from_value(serde_json::json!({
            "train_per_set": 12, "test_per_set": 8, "instruct_items": 10, "pretrain_captions": 20
        }))
        .unwrap()
    }

    #[test]
    fn every_set_is_generated_with_valid_options() {
        let items = generate_items(&small());
        for (dataset, task, _) in DATASETS {
            let rows: Vec<&Item> = items.iter().filter(|i| i.dataset == *dataset).collect();
            assert!(!rows.is_empty(), "{dataset} is empty");
            for item in rows {
                assert_eq!(item.task, *task);
                assert_eq!(item.options.len(), 4, "{item:?}");
                assert!(item.answer < item.options.len());
                let unique: BTreeSet<&String> = item.options.iter().collect();
                assert_eq!(
                    unique.len(),
                    item.options.len(),
                    "duplicate options: {item:?}"
                );
                let pictured = *task != Task::TextHeavy || item.split == "train";
                assert_eq!(item.image.is_some(), pictured, "{}", item.id);
                if let Some(facts) = &item.facts {
                    assert!(
                        facts[item.answer].is_none(),
                        "a fact describes the gold option"
                    );
                }
            }
        }
        let ids: BTreeSet<&String> = items.iter().map(|i| &i.id).collect();
        assert_eq!(ids.len(), items.len(), "ids are unique");
    }

    /// The small world under each sign code.
    fn under_each_code() -> [SynthParams; 2] {
        [SignCode::Quadrant, SignCode::Colour].map(|sign_code| SynthParams {
            sign_code,
            ..small()
        })
    }

    #[test]
    fn every_text_heavy_option_has_a_sign_distinct_within_the_item() {
        for params in under_each_code() {
            for item in generate_items(&params)
                .iter()
                .filter(|i| i.task == Task::TextHeavy)
            {
                let signs: Vec<usize> = item
                    .options
                    .iter()
                    .map(|o| world::sign_of(o, params.sign_code).expect("an option without a sign"))
                    .collect();
                assert!(signs.iter().all(|&s| s < world::SIGNS));
                let unique: BTreeSet<&usize> = signs.iter().collect();
                assert_eq!(unique.len(), signs.len(), "{item:?}");
                let meta: serde_json::Value =
                    serde_json::from_str(item.meta.as_deref().unwrap()).unwrap();
                let listed: Vec<usize> = meta["signs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_u64().unwrap() as usize)
                    .collect();
                assert_eq!(listed, signs, "meta.signs are the options' signs");
                let other = meta["other_sign"].as_u64().unwrap() as usize;
                assert!(!signs.contains(&other), "the no-option sign is an option's");
                if item.dataset == "arithmetic" {
                    // The colour code keeps arithmetic's distractors within 5 of the gold.
                    let gold: i64 = item.options[item.answer].parse().unwrap();
                    assert!(item
                        .options
                        .iter()
                        .all(|o| (o.parse::<i64>().unwrap() - gold).abs() <= 5));
                }
            }
        }
    }

    #[test]
    fn the_colour_code_is_the_quadrant_codes_colour_without_its_place() {
        let words: Vec<String> = world::homes()
            .into_iter()
            .chain(world::foods())
            .map(String::from)
            .chain((0..=world::MAX_NUMBER).map(|n| n.to_string()))
            .collect();
        let mut colours_used = BTreeSet::new();
        for word in &words {
            let quadrant = world::sign_of(word, SignCode::Quadrant).unwrap();
            let colour = world::sign_of(word, SignCode::Colour).unwrap();
            let (c, place) = world::sign_parts(colour);
            assert_eq!(place, None);
            assert_eq!(c, world::sign_parts(quadrant).0, "{word}");
            colours_used.insert(c);
            assert_eq!(
                world::describe_sign(word, colour),
                format!("The sign of {word} is a {} patch.", COLORS[c].0)
            );
        }
        assert_eq!(colours_used.len(), COLORS.len());
        assert_eq!(world::sign_of("zorb", SignCode::Colour), None);
    }

    #[test]
    fn arithmetic_options_stay_in_range_and_near_the_gold() {
        for item in generate_items(&small())
            .iter()
            .filter(|i| i.dataset == "arithmetic")
        {
            let gold: i64 = item.options[item.answer].parse().unwrap();
            for option in &item.options {
                let v: i64 = option.parse().unwrap();
                assert!((0..=world::MAX_NUMBER).contains(&v), "{item:?}");
                assert!((v - gold).abs() <= 5, "{item:?}");
            }
        }
    }

    #[test]
    fn the_corpus_has_every_perturbation_word_but_no_unrelated_fact() {
        let mut params = small();
        params.general_sentences = 400;
        let corpus = generate_corpus(&params);
        let text: Vec<&str> = corpus.iter().map(|r| r.text.as_str()).collect();
        // Tokens as the model's tokenizer splits text, punctuation included.
        let tokens: BTreeSet<&str> = text
            .iter()
            .flat_map(|t| mipipe_stage_schema::split_tokens(t))
            .collect();
        for word in perturbation_words() {
            assert!(
                tokens.contains(word.as_str()),
                "`{word}` is not in the corpus"
            );
        }
        let mut rng = ItemRng::new(0, &["ocr test"]);
        for _ in 0..200 {
            let snippet = crate::perturb::ocr_noise(3, &mut rng);
            for token in mipipe_stage_schema::split_tokens(&snippet) {
                assert!(
                    tokens.contains(token),
                    "`{token}` of `{snippet}` is not in the corpus"
                );
            }
        }
        for fact in crate::perturb::UNRELATED_FACTS {
            assert!(
                !text.iter().any(|t| t.contains(fact)),
                "the corpus holds the unrelated fact `{fact}`"
            );
        }
    }

    #[test]
    fn arithmetic_answers_are_right() {
        for item in generate_items(&small())
            .iter()
            .filter(|i| i.dataset == "arithmetic")
        {
            let q = item.question.trim_end_matches('?');
            let gold: i64 = item.options[item.answer].parse().unwrap();
            let numbers: Vec<i64> = q
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            let expected = if q.contains('+') {
                numbers[0] + numbers[1]
            } else if q.contains(" - ") {
                numbers[0] - numbers[1]
            } else {
                numbers[0].max(numbers[1])
            };
            assert_eq!(gold, expected, "{item:?}");
        }
    }

    #[test]
    fn probe_pictures_show_the_golds_sign_and_options_share_its_vocabulary() {
        for params in under_each_code() {
            probe_shows_the_golds_sign(&SynthParams {
                test_per_set: 30,
                ..params
            });
        }
    }

    fn probe_shows_the_golds_sign(params: &SynthParams) {
        let probe = generate_probe(params);
        assert_eq!(probe.len(), 30);
        let numbers: Vec<String> = (0..=world::MAX_NUMBER).map(|v| v.to_string()).collect();
        let mut questions = BTreeSet::new();
        for item in &probe {
            assert_eq!((item.split.as_str(), item.task), ("test", Task::ImageHeavy));
            questions.insert(item.question.clone());
            let vocabulary: Vec<&str> = if item.question.contains("home") {
                world::homes()
            } else if item.question.contains("food") {
                world::foods()
            } else {
                numbers.iter().map(String::as_str).collect()
            };
            let distinct: BTreeSet<&String> = item.options.iter().collect();
            assert_eq!(distinct.len(), params.options, "{:?}", item.options);
            assert!(item
                .options
                .iter()
                .all(|o| vocabulary.contains(&o.as_str())));
            // Only the gold's sign answers: no other option shares it.
            let signs: BTreeSet<usize> = item
                .options
                .iter()
                .map(|o| world::sign_of(o, params.sign_code).unwrap())
                .collect();
            assert_eq!(signs.len(), params.options, "{:?}", item.options);
            // The gold's colour fills part of its region and nothing outside it.
            let sign = world::sign_of(&item.options[item.answer], params.sign_code).unwrap();
            assert_sign_drawn(item.image.as_ref().unwrap(), sign, &item.id);
        }
        assert_eq!(questions.len(), 3, "homes, foods and numbers");
        assert_eq!(generate_probe(params), probe, "deterministic");
    }

    /// Asserts that a picture shows `sign`: its colour fills part of its region (its quadrant,
    /// or the middle half of the canvas for the colour code) and nothing outside it.
    fn assert_sign_drawn(png: &[u8], sign: usize, what: &str) {
        let (colour, quadrant) = world::sign_parts(sign);
        let picture = Canvas::from_png(png).unwrap();
        let size = picture.width();
        let half = size / 2;
        let (mut inside, mut outside) = (0, 0);
        for y in 0..size {
            for x in 0..size {
                if picture.get(x, y) == COLORS[colour].1 {
                    let in_region = match quadrant {
                        Some(quadrant) => {
                            usize::from(x >= half) + 2 * usize::from(y >= half) == quadrant
                        }
                        None => [x, y].iter().all(|v| (size / 4..size * 3 / 4).contains(v)),
                    };
                    if in_region {
                        inside += 1;
                    } else {
                        outside += 1;
                    }
                }
            }
        }
        assert!(inside > 20 && outside == 0, "{what} {inside} {outside}");
    }

    #[test]
    fn a_val_split_adds_probe_items_after_the_unchanged_test_ones() {
        let test_only = SynthParams {
            test_per_set: 12,
            ..small()
        };
        let with_val = SynthParams {
            val_per_set: 9,
            ..test_only.clone()
        };
        let probe = generate_probe(&with_val);
        assert_eq!(probe[..12], generate_probe(&test_only)[..]);
        let val: Vec<&Item> = probe[12..].iter().collect();
        assert_eq!(val.len(), 9);
        assert!(val
            .iter()
            .all(|i| i.split == "val" && i.id.contains("/val/")));
    }

    #[test]
    fn sign_items_are_training_rows_after_the_unchanged_others_and_no_probe_item() {
        let without = small();
        let with = SynthParams {
            sign_items: 12,
            val_per_set: 6,
            ..without.clone()
        };
        let base = generate_items(&SynthParams {
            val_per_set: 6,
            ..without.clone()
        });
        let items = generate_items(&with);
        assert_eq!(
            items[..base.len()],
            base[..],
            "every other row unchanged, in order"
        );
        let signs = &items[base.len()..];
        assert_eq!(signs.len(), 12);
        let probe = generate_probe(&with);
        for item in signs {
            assert_eq!(
                (item.dataset.as_str(), item.split.as_str(), item.task),
                ("signs", "train", Task::ImageHeavy)
            );
            let sign = world::sign_of(&item.options[item.answer], SignCode::Quadrant).unwrap();
            assert_sign_drawn(item.image.as_ref().unwrap(), sign, &item.id);
            assert!(probe
                .iter()
                .all(|p| p.id != item.id && p.image != item.image));
        }
        let questions: BTreeSet<&str> = signs.iter().map(|i| i.question.as_str()).collect();
        assert_eq!(questions.len(), 3, "homes, foods and numbers");
    }

    #[test]
    fn more_sign_pictures_add_drawings_that_name_their_word() {
        let one = small();
        let three = SynthParams {
            sign_pictures: 3,
            ..one.clone()
        };
        let (corpus_one, corpus_three) = (generate_corpus(&one), generate_corpus(&three));
        let extra: Vec<&CorpusRow> = corpus_three
            .iter()
            .filter(|r| !corpus_one.iter().any(|o| o.id == r.id))
            .collect();
        let signs = corpus_one
            .iter()
            .filter(|r| r.id.starts_with("synth/corpus/sign/"))
            .count();
        assert_eq!(extra.len(), 2 * signs);
        // Every row of the one-picture corpus is still there, unchanged and in order.
        let kept: Vec<&CorpusRow> = corpus_three
            .iter()
            .filter(|r| corpus_one.iter().any(|o| o.id == r.id))
            .collect();
        assert_eq!(kept, corpus_one.iter().collect::<Vec<_>>());
        for row in &extra {
            let word = row
                .text
                .strip_prefix("This is the sign of ")
                .and_then(|t| t.strip_suffix('.'))
                .unwrap_or_else(|| panic!("{}: {}", row.id, row.text));
            let sign = world::sign_of(word, SignCode::Quadrant).unwrap();
            assert_sign_drawn(row.image.as_ref().unwrap(), sign, &row.id);
        }
        let pictures: BTreeSet<&Vec<u8>> =
            extra.iter().map(|r| r.image.as_ref().unwrap()).collect();
        assert!(pictures.len() > extra.len() / 2, "drawn anew, not copied");
    }

    #[test]
    fn the_shape_in_an_image_heavy_picture_is_the_gold_option() {
        let params = small();
        for item in generate_items(&params)
            .iter()
            .filter(|i| i.dataset == "shapes")
            .take(5)
        {
            let meta: serde_json::Value =
                serde_json::from_str(item.meta.as_deref().unwrap()).unwrap();
            assert_eq!(item.options[item.answer], meta["shape"]);
            let picture = Canvas::from_png(item.image.as_ref().unwrap()).unwrap();
            assert_eq!(picture.width(), params.image_size);
        }
    }
}
