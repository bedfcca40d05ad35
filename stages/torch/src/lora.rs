//! LoRA (Hu et al., 2021): a linear projection `W x` becomes `W x + (α/r)·B·A·drop(x)` with `A`
//! (`[r, in]`, PyTorch's default linear initialisation, as PEFT does) and `B` (`[out, r]`,
//! zero) trained and `W` frozen, so a fresh adapter changes nothing. Adapters sit at
//! `{projection}.lora_A.weight` and `{projection}.lora_B.weight`; [`merge`] folds them into the
//! base weights for export, after which the model is an ordinary checkpoint again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tch::nn::{self, Module};
use tch::Tensor;

pub use mipipe_stage_torch_types::LoraParams;

use crate::layers::{linear, Init};

/// Which projections get adapters, and the switch that turns their dropout on while training.
#[derive(Clone, Debug)]
pub struct Adapters {
    params: LoraParams,
    training: Arc<AtomicBool>,
}

impl Adapters {
    /// Adapters of `params`, in evaluation mode (no dropout).
    pub fn new(params: &LoraParams) -> Self {
        Self {
            params: params.clone(),
            training: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Dropout on (training) or off.
    pub fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed);
    }

    fn wants(&self, name: &str) -> bool {
        self.params.targets.iter().any(|t| t == name)
    }
}

#[derive(Debug)]
struct Adapter {
    a: Tensor,
    b: Tensor,
    scale: f64,
    dropout: f64,
    training: Arc<AtomicBool>,
}

/// A linear projection, with a LoRA adapter where the configuration targets it.
#[derive(Debug)]
pub struct Projection {
    base: nn::Linear,
    adapter: Option<Adapter>,
}

impl Projection {
    /// The projection `name` under `path` (`path.name.weight`, `path.name.bias`), and its
    /// adapter if `adapters` targets `name`.
    pub fn new(
        path: &nn::Path,
        name: &str,
        input: i64,
        output: i64,
        bias: bool,
        init: Init,
        adapters: Option<&Adapters>,
    ) -> Self {
        let at = path / name;
        let base = linear(at.clone(), input, output, bias, init);
        let adapter = adapters.filter(|a| a.wants(name)).map(|a| {
            let r = a.params.rank;
            Adapter {
                a: (&at / "lora_A").var("weight", &[r, input], nn::init::DEFAULT_KAIMING_UNIFORM),
                b: (&at / "lora_B").zeros("weight", &[output, r]),
                scale: a.params.alpha / r as f64,
                dropout: a.params.dropout,
                training: a.training.clone(),
            }
        });
        Self { base, adapter }
    }
}

impl Module for Projection {
    fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.apply(&self.base);
        match &self.adapter {
            None => y,
            Some(adapter) => {
                let training = adapter.training.load(Ordering::Relaxed);
                let input = if training && adapter.dropout > 0.0 {
                    x.dropout(adapter.dropout, true)
                } else {
                    x.shallow_clone()
                };
                let update = input.matmul(&adapter.a.tr()).matmul(&adapter.b.tr()) * adapter.scale;
                y + update
            }
        }
    }
}

/// Whether a variable is part of an adapter.
pub fn is_adapter(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// Folds every adapter of `vs` into its base weight (`W += (α/r)·B·A`) and returns the names
/// of the adapter variables, which the merged model no longer needs. The model in memory then
/// counts each update twice (merged and adapter): merge to save, not to go on computing.
pub fn merge(vs: &nn::VarStore, params: &LoraParams) -> Vec<String> {
    let variables = vs.variables();
    let scale = params.alpha / params.rank as f64;
    let mut adapters = Vec::new();
    tch::no_grad(|| {
        for (name, a) in &variables {
            let Some(prefix) = name.strip_suffix(".lora_A.weight") else {
                continue;
            };
            let b = &variables[&format!("{prefix}.lora_B.weight")];
            let mut base = variables[&format!("{prefix}.weight")].shallow_clone();
            let update = (b.matmul(a) * scale).to_kind(base.kind());
            let _ = base.g_add_(&update);
            adapters.push(name.clone());
            adapters.push(format!("{prefix}.lora_B.weight"));
        }
    });
    adapters.sort();
    adapters
}
