//! mipipe-stage-torch: models and training on libtorch through `tch` (issue 3, in progress).
//!
//! Only this crate reaches tch. What exists so far: the libtorch bootstrap (rpath, version pin)
//! and the decoder building blocks with their tests; the stage kinds come next.

pub mod layers;
