//! The training batch the torch examples time: shared by `method_step_time` and
//! `checkpointing_memory` (each includes this file with `#[path]`).

use mipipe_stage_torch::methods::Rows;
use mipipe_stage_torch::objectives::{RowTask, TokenRole};
use tch::{Kind, Tensor};

/// A batch of 8 rows like D_mixed: 4 image-heavy (2 of them heuristic variants of the other
/// 2), 2 text-heavy, 2 VQA; `seq` text tokens from a vocabulary of 512, 32x32 pictures.
pub fn d_mixed_batch(seq: usize) -> Rows {
    let mut roles = Vec::new();
    let mut tasks = Vec::new();
    let mut anchor = Vec::new();
    for row in 0..8 {
        let mut r = vec![TokenRole::Question; seq];
        r[seq - 2] = TokenRole::Answer;
        r[seq - 1] = TokenRole::Pad;
        roles.push(r);
        let (task, a) = match row {
            0 | 1 => (RowTask::ImageHeavy, None),
            2 | 3 => (RowTask::ImageHeavy, Some(row - 2)),
            4 | 5 => (RowTask::TextHeavy, None),
            _ => (RowTask::Vqa, None),
        };
        tasks.push(task);
        anchor.push(a);
    }
    Rows {
        images: Tensor::rand([8, 3, 32, 32], (Kind::Float, tch::Device::Cpu)),
        tokens: Tensor::randint(512, [8, seq as i64], (Kind::Int64, tch::Device::Cpu)),
        roles,
        tasks,
        anchor,
    }
}
