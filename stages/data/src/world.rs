//! The synthetic world of the embedded benchmark: its vocabulary and the facts that hold in it.
//! `docs/embedded-benchmark.md` describes it for people.

use crate::draw::{Background, Rgb, Shape};

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
