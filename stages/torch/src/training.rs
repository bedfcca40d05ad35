//! The optimisation loop shared by `pretrain` and `finetune`: AdamW, a linear warm-up then a
//! cosine decay that is actually applied every step, global gradient-norm clipping, and a
//! per-step metrics log (every loss term, the gradient norm, the learning rate, and PGD's
//! max|α·g|/ε).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use mipipe_cache::arrow_array::{Float64Array, Int64Array, RecordBatch};
use mipipe_cache::arrow_schema::{DataType, Field, Schema};
use mipipe_engine::{StageContext, StageError};
use mipipe_stage_torch_types::OptimizerParams;
use tch::nn::{self, OptimizerConfig};
use tch::{Kind, Tensor};

use crate::methods::{training_loss, MethodConfig, Rows, Trainable};

/// Learning rate at each step: linear warm-up from 0, then cosine decay to 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// All steps.
    pub total: usize,
}

impl Schedule {
    /// The schedule of `total` steps with a warm-up share `warmup`.
    pub fn new(peak: f64, warmup: f64, total: usize) -> Self {
        Self {
            peak,
            warmup: ((total as f64 * warmup).ceil() as usize).min(total),
            total,
        }
    }

    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = (self.total - self.warmup).max(1) as f64;
        let progress = (step - self.warmup) as f64 / span;
        self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// The loss terms and scales a step may log, in column order.
pub const TERMS: [&str; 11] = [
    "sup",
    "consistency",
    "adv",
    "rg",
    "pgd_step_to_epsilon",
    "text_rms",
    "image_rms",
    "delta_to_text",
    "delta_to_image",
    "noise_to_text",
    "noise_to_image",
];

/// One logged step.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRow {
    /// Step (0-based, over all epochs).
    pub step: usize,
    /// Epoch (0-based).
    pub epoch: u32,
    /// Learning rate used.
    pub lr: f64,
    /// The total loss.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Values of [`TERMS`] (`None` where the method has no such term).
    pub terms: [Option<f64>; TERMS.len()],
}

/// Trains `model` (its trainable variables in `vs`) over `plan` (epoch, batch) with
/// `method`, encoding each batch just before its step.
#[allow(clippy::too_many_arguments)]
pub fn train<B>(
    vs: &nn::VarStore,
    model: &impl Trainable,
    plan: &[(u32, B)],
    encode: impl Fn(&B) -> Result<Rows, String>,
    method: &MethodConfig,
    lr: f64,
    optimizer: &OptimizerParams,
    ctx: &StageContext,
) -> Result<Vec<LogRow>, StageError> {
    let mut opt = nn::AdamW {
        beta1: optimizer.beta1,
        beta2: optimizer.beta2,
        wd: optimizer.weight_decay,
        eps: optimizer.eps,
        amsgrad: false,
    }
    .build(vs, lr)
    .map_err(|e| StageError::failed(format!("cannot build AdamW: {e}")))?;
    let trainable = vs.trainable_variables();
    let schedule = Schedule::new(lr, optimizer.warmup, plan.len());
    let started = Instant::now();
    let mut log = Vec::with_capacity(plan.len());
    let every = (plan.len() / 20).max(1);
    model.set_training(true);
    for (step, (epoch, batch)) in plan.iter().enumerate() {
        if ctx.is_cancelled() {
            return Err(StageError::failed("Cancelled"));
        }
        let rows = encode(batch)
            .map_err(StageError::failed)?
            .to_device(vs.device());
        let rate = schedule.lr(step);
        opt.set_lr(rate);
        opt.zero_grad();
        let loss = training_loss(model, &rows, method);
        let total = loss.total.double_value(&[]);
        if !total.is_finite() {
            return Err(StageError::failed(format!(
                "the loss is {total} at step {step}; lower `lr` or check the data"
            )));
        }
        loss.total.backward();
        let grad_norm = clip_gradients(&trainable, optimizer.clip);
        opt.step();
        let mut terms = [None; TERMS.len()];
        for (name, value) in &loss.terms {
            if let Some(i) = TERMS.iter().position(|t| t == name) {
                terms[i] = Some(*value);
            }
        }
        if step % every == 0 || step + 1 == plan.len() {
            ctx.log(&format!(
                "step {}/{} epoch {epoch} loss {total:.4} grad_norm {grad_norm:.3} lr {rate:.2e} ({:.1}s)",
                step + 1,
                plan.len(),
                started.elapsed().as_secs_f64()
            ));
        }
        ctx.progress(step as u64 + 1, plan.len() as u64, "training");
        log.push(LogRow {
            step,
            epoch: *epoch,
            lr: rate,
            loss: total,
            grad_norm,
            terms,
        });
    }
    model.set_training(false);
    Ok(log)
}

/// Scales the gradients so their global L2 norm is at most `max` (0: leave them); returns the
/// norm before clipping.
fn clip_gradients(vars: &[Tensor], max: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = vars
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let squares: Vec<Tensor> = grads
            .iter()
            .map(|g| g.pow_tensor_scalar(2).sum(Kind::Float))
            .collect();
        let norm = Tensor::stack(&squares, 0)
            .sum(Kind::Float)
            .sqrt()
            .double_value(&[]);
        if max > 0.0 && norm > max {
            let scale = max / (norm + 1e-6);
            for mut g in grads {
                let _ = g.g_mul_scalar_(scale);
            }
        }
        norm
    })
}

/// The Arrow schema of a training log.
pub fn log_schema() -> Arc<Schema> {
    let mut fields = vec![
        Field::new("step", DataType::Int64, false),
        Field::new("epoch", DataType::Int64, false),
        Field::new("lr", DataType::Float64, false),
        Field::new("loss", DataType::Float64, false),
        Field::new("grad_norm", DataType::Float64, false),
    ];
    fields.extend(
        TERMS
            .iter()
            .map(|t| Field::new(*t, DataType::Float64, true)),
    );
    Arc::new(Schema::new(fields))
}

/// Writes a training log as Parquet.
pub fn write_log(path: &Path, rows: &[LogRow]) -> Result<(), StageError> {
    let floats = |f: &dyn Fn(&LogRow) -> f64| -> Arc<Float64Array> {
        Arc::new(rows.iter().map(f).map(Some).collect())
    };
    let mut columns: Vec<Arc<dyn mipipe_cache::arrow_array::Array>> = vec![
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.step as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.epoch as i64),
        )),
        floats(&|r| r.lr),
        floats(&|r| r.loss),
        floats(&|r| r.grad_norm),
    ];
    for i in 0..TERMS.len() {
        columns.push(Arc::new(
            rows.iter().map(|r| r.terms[i]).collect::<Float64Array>(),
        ));
    }
    let batch = RecordBatch::try_new(log_schema(), columns).expect("columns match the schema");
    mipipe_cache::write_table(path, log_schema(), &[batch])
        .map_err(|e| StageError::environment(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_then_decays_to_zero() {
        let s = Schedule::new(1.0, 0.1, 100);
        assert_eq!(s.warmup, 10);
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12, "peak at the end of warm-up");
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(55) - 0.5).abs() < 1e-12, "half way through the decay");
        assert!(s.lr(99) < 0.001);
        let mut previous = f64::INFINITY;
        for step in 10..100 {
            assert!(s.lr(step) <= previous);
            previous = s.lr(step);
        }
    }
}
