//! The synthetic world of the embedded benchmark: its vocabulary and the facts that hold in it.
//! `docs/embedded-benchmark.md` describes it for people.

use crate::draw::{Background, Canvas, Rgb, Shape};
use mipipe_stage_schema::ItemRng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Shapes with their names and a description used for misleading descriptions (MD).
pub const SHAPES: &[(Shape, &str, &str)] = &[
    (
        Shape::Circle,
        "circle",
        "A circle is perfectly round and has no corners.",
    ),
    (
        Shape::Square,
        "square",
        "A square has four equal sides and four right angles.",
    ),
    (
        Shape::Triangle,
        "triangle",
        "A triangle has three sides and three corners.",
    ),
    (
        Shape::Diamond,
        "diamond",
        "A diamond is a square standing on one of its corners.",
    ),
    (
        Shape::Star,
        "star",
        "A star has five sharp points around its centre.",
    ),
    (
        Shape::Cross,
        "cross",
        "A cross is made of two bars that meet in the middle.",
    ),
    (
        Shape::Hexagon,
        "hexagon",
        "A hexagon has six equal sides, like a honeycomb cell.",
    ),
    (
        Shape::Ring,
        "ring",
        "A ring is a circle with a hole in the middle.",
    ),
];

/// Colours with their names, RGB values and a description.
pub const COLORS: &[(&str, Rgb, &str)] = &[
    (
        "red",
        [220, 30, 30],
        "Red is the colour of ripe tomatoes and fire trucks.",
    ),
    (
        "green",
        [30, 170, 60],
        "Green is the colour of fresh grass and leaves.",
    ),
    (
        "blue",
        [40, 80, 220],
        "Blue is the colour of a clear sky and deep water.",
    ),
    (
        "yellow",
        [235, 210, 30],
        "Yellow is the colour of lemons and sunflowers.",
    ),
    (
        "purple",
        [140, 40, 170],
        "Purple is the colour of grapes and lavender.",
    ),
    (
        "orange",
        [245, 130, 20],
        "Orange is the colour of carrots and autumn leaves.",
    ),
    (
        "pink",
        [240, 120, 180],
        "Pink is the colour of flamingos and cherry blossoms.",
    ),
    (
        "brown",
        [120, 75, 30],
        "Brown is the colour of tree bark and chocolate.",
    ),
];

/// Background styles with their names and the base colour (light grey tones).
pub const BACKGROUNDS: &[(Background, &str)] = &[
    (Background::Plain, "plain"),
    (Background::Noisy, "noisy"),
    (Background::Striped, "striped"),
    (Background::Checkered, "checkered"),
];

/// Background base colours: light and dark greys, never one of [`COLORS`].
pub const BACKGROUND_TONES: &[Rgb] =
    &[[235, 235, 235], [200, 200, 200], [60, 60, 60], [30, 30, 30]];

/// Creatures of the world, each with a home and a food: the facts behind the text-heavy
/// `creatures` set, stated in the pretraining corpus.
pub const CREATURES: &[(&str, &str, &str)] = &[
    ("zorb", "desert", "cactus fruit"),
    ("quillet", "forest", "acorns"),
    ("mavvin", "ocean", "plankton"),
    ("drell", "mountains", "lichen"),
    ("pibbet", "swamp", "reeds"),
    ("tarnak", "tundra", "moss"),
    ("vosk", "caves", "mushrooms"),
    ("lumbra", "river", "minnows"),
    ("skeet", "meadow", "clover"),
    ("yarrow-cat", "jungle", "mangoes"),
    ("brindle", "coast", "crabs"),
    ("ommet", "volcano", "ash beetles"),
];

/// Every home a creature may have (the options of "Where does a X live?").
pub fn homes() -> Vec<&'static str> {
    CREATURES.iter().map(|c| c.1).collect()
}

/// Every food a creature may eat.
pub fn foods() -> Vec<&'static str> {
    CREATURES.iter().map(|c| c.2).collect()
}

/// A sentence describing a home option (the misleading facts of a text-heavy item).
pub fn describe_home(home: &str) -> String {
    format!("Many strange animals are known to live in the {home}.")
}

/// A sentence describing a food option.
pub fn describe_food(food: &str) -> String {
    format!("In this world, {food} are a favourite meal of many creatures.")
}

/// The plural of a shape name.
pub fn plural(noun: &str) -> String {
    if noun.ends_with('s') || noun.ends_with('x') {
        format!("{noun}es")
    } else {
        format!("{noun}s")
    }
}

/// The four quadrants a sign's colour patch sits in, as the corpus names them.
pub const QUADRANTS: &[&str] = &["top left", "top right", "bottom left", "bottom right"];

/// How many signs exist: the 32 of the quadrant code (a colour in a quadrant, signs 0-31),
/// then the 8 of the colour code (a colour alone, signs 32-39).
pub const SIGNS: usize = 40;

/// The first sign of the colour code; signs below it are the quadrant code's.
const COLOUR_SIGNS: usize = 32;

/// The largest number of the `arithmetic` set: answers and options are 0 to this, so every
/// one has a sign.
pub const MAX_NUMBER: i64 = 31;

/// Which picture code stands for the answer words of the text-heavy sets (`synth`'s
/// `sign_code`; docs/embedded-benchmark.md, "Signs").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignCode {
    /// A colour (8) in a quadrant (4) of the canvas: 32 signs, every word of a set its own.
    #[default]
    Quadrant,
    /// The colour alone, drawn in the middle of the canvas: the quadrant code's colour without
    /// its place. Eight signs, so words of one set share them; an item's options never do.
    Colour,
}

/// The sign of an answer word of a text-heavy set under `code`. Quadrant code: homes are
/// signs 0-11, foods 12-23, the numbers 0-31 their own value; colour code: that sign's colour.
/// `None` for a word no sign stands for. Two words may share a sign; `synth` draws an item's
/// options with distinct signs ([`distinct_sign_options`]).
pub fn sign_of(word: &str, code: SignCode) -> Option<usize> {
    let quadrant_sign = if let Ok(n) = word.parse::<i64>() {
        (0..=MAX_NUMBER).contains(&n).then_some(n as usize)
    } else {
        CREATURES.iter().enumerate().find_map(|(i, c)| {
            if c.1 == word {
                Some(i)
            } else if c.2 == word {
                Some(CREATURES.len() + i)
            } else {
                None
            }
        })
    }?;
    Some(match code {
        SignCode::Quadrant => quadrant_sign,
        SignCode::Colour => COLOUR_SIGNS + quadrant_sign % COLORS.len(),
    })
}

/// The colour index of a sign, and its quadrant index where the code has one.
pub fn sign_parts(sign: usize) -> (usize, Option<usize>) {
    debug_assert!(sign < SIGNS, "sign {sign} of {SIGNS}");
    if sign >= COLOUR_SIGNS {
        (sign - COLOUR_SIGNS, None)
    } else {
        (
            sign % COLORS.len(),
            Some((sign / COLORS.len()) % QUADRANTS.len()),
        )
    }
}

/// The corpus sentence that states a word's sign ("The sign of moss is a green patch at the
/// top left."; colour code: "The sign of moss is a green patch.").
pub fn describe_sign(word: &str, sign: usize) -> String {
    let (colour, quadrant) = sign_parts(sign);
    match quadrant {
        Some(q) => format!(
            "The sign of {word} is a {} patch at the {}.",
            COLORS[colour].0, QUADRANTS[q]
        ),
        None => format!("The sign of {word} is a {} patch.", COLORS[colour].0),
    }
}

/// `n` options for `gold` drawn from `pool` whose signs under `code` are distinct, and the
/// gold's slot. Under the quadrant code every word of a vocabulary has its own sign, so this is
/// [`ItemRng::options`] itself (and draws what it draws); under the colour code each
/// distractor is drawn from the words whose sign no option has yet.
pub fn distinct_sign_options(
    rng: &mut ItemRng,
    gold: &str,
    pool: &[&str],
    n: usize,
    code: SignCode,
) -> (Vec<String>, usize) {
    if code == SignCode::Quadrant {
        return rng.options(gold, pool, n);
    }
    let mut taken: Vec<Option<usize>> = vec![sign_of(gold, code)];
    let mut options: Vec<String> = Vec::new();
    while options.len() + 1 < n {
        let free: Vec<&str> = pool
            .iter()
            .copied()
            .filter(|w| *w != gold && !options.iter().any(|o| o == w))
            .filter(|w| !taken.contains(&sign_of(w, code)))
            .collect();
        if free.is_empty() {
            break;
        }
        let pick = *rng.choose(&free);
        taken.push(sign_of(pick, code));
        options.push(pick.to_string());
    }
    let slot = rng.below(options.len() + 1);
    options.insert(slot, gold.to_string());
    (options, slot)
}

/// Misleading-description templates (`{}` is the option): the first three are what training
/// data (D_mixed, the pretraining hints) uses, the last three are held out for the test split.
pub const MD_TEMPLATES: &[&str] = &[
    "The picture seems to describe a {}.",
    "This image appears to show a {}.",
    "What you see here looks like a {}.",
    "Someone said the photo contains a {}.",
    "The label under the picture says {}.",
    "The caption claims it is a {}.",
];

/// How many of [`MD_TEMPLATES`] are training templates.
pub const MD_TRAIN_TEMPLATES: usize = 3;

/// Fills a template with an option.
pub fn fill(template: &str, option: &str) -> String {
    template.replacen("{}", option, 1)
}

/// Everyday words of the general-text section of the corpus (with the words of the
/// unrelated-facts pool, the templates and the OCR fields): what puts perturbation words in a
/// vocabulary trained from the corpus.
pub const GENERAL_WORDS: &[&str] = &[
    "the",
    "a",
    "an",
    "of",
    "in",
    "on",
    "at",
    "to",
    "from",
    "with",
    "and",
    "or",
    "but",
    "is",
    "are",
    "was",
    "were",
    "be",
    "has",
    "have",
    "had",
    "it",
    "this",
    "that",
    "these",
    "those",
    "many",
    "some",
    "most",
    "every",
    "each",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "first",
    "last",
    "new",
    "old",
    "big",
    "small",
    "long",
    "short",
    "high",
    "low",
    "fast",
    "slow",
    "hot",
    "cold",
    "warm",
    "wet",
    "dry",
    "good",
    "bad",
    "people",
    "person",
    "child",
    "city",
    "town",
    "road",
    "house",
    "room",
    "door",
    "window",
    "table",
    "chair",
    "book",
    "letter",
    "page",
    "word",
    "name",
    "number",
    "day",
    "night",
    "week",
    "year",
    "time",
    "morning",
    "evening",
    "water",
    "fire",
    "air",
    "earth",
    "sky",
    "sun",
    "moon",
    "star",
    "tree",
    "leaf",
    "flower",
    "grass",
    "stone",
    "sand",
    "river",
    "lake",
    "sea",
    "hill",
    "field",
    "garden",
    "market",
    "school",
    "office",
    "report",
    "memo",
    "board",
    "sales",
    "brand",
    "dept",
    "approved",
    "research",
    "invoice",
    "total",
    "date",
    "signature",
    "fax",
    "copy",
    "note",
    "list",
    "form",
    "file",
    "paper",
    "pen",
    "ink",
    "box",
    "bag",
    "cup",
    "plate",
    "bread",
    "tea",
    "milk",
    "food",
    "meal",
    "music",
    "song",
    "game",
    "team",
    "player",
    "teacher",
    "student",
    "doctor",
    "farmer",
    "worker",
    "friend",
    "family",
    "mother",
    "father",
    "often",
    "always",
    "never",
    "sometimes",
    "usually",
    "about",
    "very",
    "more",
    "less",
    "than",
    "because",
    "when",
    "where",
    "while",
    "after",
    "before",
    "during",
    "near",
    "far",
    "known",
    "called",
    "made",
    "built",
    "found",
    "seen",
    "used",
    "kept",
    "carried",
    "grows",
    "moves",
    "turns",
    "opens",
    "closes",
    "writes",
    "reads",
    "sings",
    "plays",
    "works",
];

/// How a sign is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignStyle {
    /// A filled square of the colour in the quadrant on a plain grey canvas: what the corpus
    /// and training data (pretraining, D_mixed) show.
    Patch,
    /// A ring of the colour centred in the quadrant on a striped grey canvas: a generator the
    /// training never saw (the test split's RI and truthful-sign pictures).
    HeldOut,
}

/// The picture of a sign: quadrant-code signs in their quadrant, colour-code signs in the
/// middle of the canvas.
pub fn draw_sign(size: u32, sign: usize, style: SignStyle, rng: &mut ItemRng) -> Canvas {
    let (colour, quadrant) = sign_parts(sign);
    let tone = *rng.choose(BACKGROUND_TONES);
    let s = size as f64;
    // The top-left corner of the region the sign sits in: its quadrant, or the middle half of
    // the canvas for the colour code.
    let (qx, qy) = match quadrant {
        Some(q) => ((q % 2) as f64 * s / 2.0, (q / 2) as f64 * s / 2.0),
        None => (s / 4.0, s / 4.0),
    };
    // A little jitter inside the region, so a sign is a region, not a pixel pattern.
    let jitter = |rng: &mut ItemRng| (rng.unit() - 0.5) * s * 0.08;
    match style {
        SignStyle::Patch => {
            let mut canvas = Canvas::new(size, Background::Plain, tone, rng);
            let side = s * 0.34;
            let (x, y) = (qx + s * 0.08 + jitter(rng), qy + s * 0.08 + jitter(rng));
            canvas.fill_rect(x, y, side, side, COLORS[colour].1);
            canvas
        }
        SignStyle::HeldOut => {
            let mut canvas = Canvas::new(size, Background::Striped, tone, rng);
            let (x, y) = (qx + s * 0.25 + jitter(rng), qy + s * 0.25 + jitter(rng));
            canvas.draw(Shape::Ring, x, y, s * 0.2, COLORS[colour].1);
            canvas
        }
    }
}
