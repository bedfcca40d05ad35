//! The optimisation loop shared by `pretrain` and `finetune`: AdamW, a linear warm-up then a
//! cosine decay that is actually applied every step, global gradient-norm clipping, and a
//! per-step metrics log (every loss term, the gradient norm, the learning rate, and PGD's
//! max|α·g|/ε).

use std::collections::BTreeMap;
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

/// fp32 master weights of a model trained in a lower precision (bf16), with AdamW's state:
/// the model computes forward and backward in its own dtype, and each step updates these fp32
/// copies from its gradients (cast to fp32) and copies the result back into the model, so
/// updates below bf16's resolution are not rounded away. A trained parameter then costs 2
/// (bf16 weight) + 2 (bf16 gradient) + 4 (master) + 8 (the two moments) = 16 bytes, as in
/// fp32 training, and the activations half.
pub struct MasterWeights {
    /// Per trainable variable name: master weight and, from the first step on, the first and
    /// second moments (all fp32; allocated then, so loading never holds them beside the fp32
    /// model).
    states: BTreeMap<String, (Tensor, Option<(Tensor, Tensor)>)>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    steps: i32,
}

impl MasterWeights {
    /// fp32 copies of the trainable variables of `vs`, taken before the model is converted.
    pub fn of(vs: &nn::VarStore, optimizer: &OptimizerParams) -> Self {
        let states = vs
            .variables()
            .into_iter()
            .filter(|(_, var)| var.requires_grad())
            .map(|(name, var)| {
                let master = var.detach().to_kind(Kind::Float).copy();
                (name, (master, None))
            })
            .collect();
        Self {
            states,
            beta1: optimizer.beta1,
            beta2: optimizer.beta2,
            eps: optimizer.eps,
            weight_decay: optimizer.weight_decay,
            steps: 0,
        }
    }

    /// One AdamW step (torch's: decoupled weight decay, bias-corrected moments) of the master
    /// weights from the gradients of the same-named variables of `vs`, after scaling them so
    /// their global norm is at most `clip` (0: no clipping); the results are copied into `vs`.
    /// Returns the global gradient norm before clipping.
    pub fn step(&mut self, vs: &nn::VarStore, lr: f64, clip: f64) -> f64 {
        let variables = vs.variables();
        tch::no_grad(|| {
            // One fp32 copy of one gradient at a time: never all of them at once.
            let grad_of = |name: &str| {
                let grad = variables[name].grad();
                grad.defined().then(|| grad.to_kind(Kind::Float))
            };
            let squares: Vec<Tensor> = self
                .states
                .keys()
                .filter_map(|name| grad_of(name))
                .map(|g| g.pow_tensor_scalar(2).sum(Kind::Float))
                .collect();
            let norm = if squares.is_empty() {
                0.0
            } else {
                Tensor::stack(&squares, 0)
                    .sum(Kind::Float)
                    .sqrt()
                    .double_value(&[])
            };
            let scale = if clip > 0.0 && norm > clip {
                clip / (norm + 1e-6)
            } else {
                1.0
            };
            self.steps += 1;
            let correction1 = 1.0 - self.beta1.powi(self.steps);
            let correction2 = 1.0 - self.beta2.powi(self.steps);
            for (name, (master, moments)) in &mut self.states {
                let Some(grad) = grad_of(name) else {
                    continue;
                };
                let (m, v) =
                    moments.get_or_insert_with(|| (master.zeros_like(), master.zeros_like()));
                let grad = grad * scale;
                let _ = master.g_mul_scalar_(1.0 - lr * self.weight_decay);
                let _ = m.g_mul_scalar_(self.beta1);
                let _ = m.g_add_(&(&grad * (1.0 - self.beta1)));
                let _ = v.g_mul_scalar_(self.beta2);
                let _ = v.g_add_(&(grad.square() * (1.0 - self.beta2)));
                let denom = v.sqrt() / correction2.sqrt() + self.eps;
                let _ = master.g_sub_(&(&*m / denom * (lr / correction1)));
                variables[name].shallow_clone().copy_(master);
            }
            norm
        })
    }

    /// Copies the master weights into the same-named variables of `vs` (an fp32 model to save).
    pub fn copy_into(&self, vs: &nn::VarStore) {
        let variables = vs.variables();
        tch::no_grad(|| {
            for (name, (master, _)) in &self.states {
                let target = variables
                    .get(name)
                    .unwrap_or_else(|| panic!("`{name}` has no variable to copy into"));
                target.shallow_clone().copy_(master);
            }
        });
    }
}

/// Trains `model` (its trainable variables in `vs`) over `plan` (epoch, batch) with
/// `method`, encoding each batch just before its step. With `master`, the model computes in
/// its own precision and the fp32 master weights take the optimizer's steps. When the model's
/// decoder checkpoints ([`crate::layers::Decoder::set_checkpointing`]), each step's backward
/// pass is completed through its recorded segments.
#[allow(clippy::too_many_arguments)]
pub fn train<B>(
    vs: &nn::VarStore,
    mut master: Option<&mut MasterWeights>,
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
        model.decoder().backward_checkpoints();
        let grad_norm = match master.as_deref_mut() {
            Some(master) => master.step(vs, rate, optimizer.clip),
            None => {
                let norm = clip_gradients(&trainable, optimizer.clip);
                opt.step();
                norm
            }
        };
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

    /// Fixed values in about [-1, 1] (not the global RNG, which parallel tests share).
    fn fixed(shape: &[i64], salt: f32) -> Tensor {
        let n: i64 = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| (i as f32 * 1.7 + salt).sin()).collect();
        Tensor::from_slice(&values).view(shape)
    }

    /// A two-variable model and its loss on fixed data.
    fn toy() -> (nn::VarStore, impl Fn(&nn::VarStore) -> Tensor) {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _ = vs.root().var_copy("w", &(fixed(&[4, 3], 0.3) * 0.5));
        let _ = vs.root().var_copy("b", &(fixed(&[3], 1.1) * 0.5));
        let x = fixed(&[5, 4], 2.9);
        let loss = move |vs: &nn::VarStore| {
            let v = vs.variables();
            let y = x.to_kind(v["w"].kind()).matmul(&v["w"]) + &v["b"];
            (y.to_kind(Kind::Float) - 1.0).square().mean(Kind::Float) * 40.0
        };
        (vs, loss)
    }

    #[test]
    fn master_weight_steps_are_torchs_adamw_with_clipping() {
        let optimizer = OptimizerParams::default();
        let (ours, loss) = toy();
        let (theirs, _) = toy();
        let mut master = MasterWeights::of(&ours, &optimizer);
        let mut adamw = nn::AdamW {
            beta1: optimizer.beta1,
            beta2: optimizer.beta2,
            wd: optimizer.weight_decay,
            eps: optimizer.eps,
            amsgrad: false,
        }
        .build(&theirs, 0.05)
        .unwrap();
        let trainable = theirs.trainable_variables();
        for step in 0..4 {
            for vs in [&ours, &theirs] {
                for mut var in vs.trainable_variables() {
                    var.zero_grad();
                }
                loss(vs).backward();
            }
            // A clip the gradients exceed, so the scaling is compared too.
            let norm = master.step(&ours, 0.05, 1.0);
            assert!(norm > 1.0, "step {step}: norm {norm}");
            assert!((clip_gradients(&trainable, 1.0) - norm).abs() < 1e-5 * norm);
            adamw.step();
            let (a, b) = (ours.variables(), theirs.variables());
            for name in ["w", "b"] {
                let diff = (&a[name] - &b[name]).abs().max().double_value(&[]);
                assert!(diff < 1e-6, "step {step} `{name}`: {diff}");
            }
        }
    }

    #[test]
    fn bf16_training_keeps_updates_below_bf16_resolution_in_the_master() {
        let optimizer = OptimizerParams {
            clip: 0.0,
            ..OptimizerParams::default()
        };
        let (fp32, _) = toy();
        let (bf16, loss) = toy();
        let mut master = MasterWeights::of(&bf16, &optimizer);
        let mut bf16 = bf16;
        bf16.set_kind(Kind::BFloat16);
        // Adam moves each weight by about lr a step: 1e-4 is below bf16's spacing at 0.5.
        for _ in 0..3 {
            for mut var in bf16.trainable_variables() {
                var.zero_grad();
            }
            loss(&bf16).backward();
            master.step(&bf16, 1e-4, 0.0);
        }
        let out = nn::VarStore::new(tch::Device::Cpu);
        let _ = out.root().zeros("w", &[4, 3]);
        let _ = out.root().zeros("b", &[3]);
        master.copy_into(&out);
        let (before, after) = (fp32.variables(), out.variables());
        let moved = (&after["w"] - &before["w"]).abs();
        assert!(
            moved.min().double_value(&[]) > 1e-4 && moved.max().double_value(&[]) < 4e-4,
            "every master weight moved by about 3 * lr: {moved}"
        );
    }

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
