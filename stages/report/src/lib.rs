//! mipipe-stage-report: from predictions to the paper's tables.
//!
//! - `evaluate`: predictions -> long-format metrics (accuracy per condition, "Perturbed",
//!   causal effect, pooled VQA Overall, unparseable answers), with a standard and a
//!   `reference` (the authors') answer parser.
//! - `table`: metrics of many runs -> a table of the paper (LaTeX with booktabs, Markdown, CSV),
//!   mean ± std over seeds, best per model group in bold, relative change against the baseline,
//!   a provenance table naming the stage behind every cell, and SVG figures.

mod evaluate;
mod figures;
pub mod stats;
mod table;

pub use evaluate::{
    evaluate, parse_answer, EvaluateParams, EvaluateStage, Evaluation, Label, Parser,
    PerturbedConditions,
};
pub use figures::{training_curves, Curve};
pub use table::{build, latex_text, Layout, Table, TableParams, TableStage};
