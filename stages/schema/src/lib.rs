//! mipipe-stage-schema: the tables stage kinds exchange, as Rust types with Arrow schemas.
//!
//! A library of the stage crates (data, training, report), so that they agree on columns
//! without depending on each other. Tables are written with the cache's pinned Parquet settings.
//!
//! - [`items`]: the unified multiple-choice VQA table and the pretraining corpus;
//! - [`predictions`]: one row per (item, condition) a model answered;
//! - [`metrics`]: long-format metrics;
//! - [`scores`]: the per-item values behind them;
//! - [`image`]: the `image` column's format (8-bit RGB PNG, pinned encoder settings);
//! - [`tokens`]: how text is cut into tokens;
//! - [`rng`]: the deterministic per-item randomness every stage draws from.

mod columns;
pub mod image;
pub mod items;
pub mod metrics;
pub mod predictions;
pub mod rng;
pub mod scores;
pub mod tokens;

pub use columns::lossless_cast;
pub use image::RgbImage;
pub use items::{read_corpus, read_items, write_corpus, write_items, CorpusRow, Item, Task};
pub use metrics::{read_metrics, write_metrics, MetricRow};
pub use predictions::{
    parse_option, read_predictions, standalone_letters, write_predictions, Prediction,
};
pub use rng::ItemRng;
pub use scores::{read_scores, write_scores, ItemScore};
pub use tokens::split_tokens;

/// Reads every table bound to one input (a fan-in binds several) with `read` and concatenates
/// their rows in binding order.
pub fn read_tables<T>(
    paths: &[std::path::PathBuf],
    read: impl Fn(&std::path::Path) -> Result<Vec<T>, mipipe_cache::TableError>,
) -> Result<Vec<T>, mipipe_cache::TableError> {
    let mut rows = Vec::new();
    for path in paths {
        rows.extend(read(path)?);
    }
    Ok(rows)
}
