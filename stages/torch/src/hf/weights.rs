//! Safetensors weights in the Hugging Face layout: one `model.safetensors` or shards listed by
//! `model.safetensors.index.json`, memory-mapped and copied straight into the model's variables
//! (converting the dtype and moving to the device in one copy), so a checkpoint is never held
//! twice in memory.
//!
//! Variable names are the checkpoint's keys in the layout the hub's LLaVA checkpoints use
//! (`language_model.model.layers.0.self_attn.q_proj.weight`, `language_model.lm_head.weight`,
//! `vision_tower.vision_model.encoder...`, `multi_modal_projector.linear_1.weight`). The
//! other spellings transformers has written (5.x's module paths `model.language_model...`,
//! `lm_head.weight`, and its save layout without `vision_model.`) are read as their canonical
//! key; [`save`] writes the canonical one, which every transformers version loads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use tch::{nn, Kind, Tensor};

/// The canonical key of a checkpoint key.
pub fn canonical_key(key: &str) -> String {
    if let Some(rest) = key.strip_prefix("model.language_model.") {
        return format!("language_model.model.{rest}");
    }
    if key == "lm_head.weight" {
        return "language_model.lm_head.weight".into();
    }
    let key = key.strip_prefix("model.").unwrap_or(key);
    if let Some(rest) = key.strip_prefix("vision_tower.") {
        if !rest.starts_with("vision_model.") {
            return format!("vision_tower.vision_model.{rest}");
        }
    }
    key.to_string()
}

/// The weight files of a checkpoint folder, in the order the index lists them.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let bytes =
            std::fs::read(&index).map_err(|e| format!("cannot read `{}`: {e}", index.display()))?;
        let parsed: Index = serde_json::from_slice(&bytes)
            .map_err(|e| format!("`{}` is not a safetensors index: {e}", index.display()))?;
        let mut seen = BTreeSet::new();
        let mut files = Vec::new();
        for file in parsed.weight_map.values() {
            if file.contains('/') || file.contains("..") {
                return Err(format!(
                    "`{}` names `{file}`, outside the checkpoint folder",
                    index.display()
                ));
            }
            if seen.insert(file.clone()) {
                files.push(dir.join(file));
            }
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let legacy = dir.join("pytorch_model.bin");
    Err(
        if legacy.exists() || dir.join("pytorch_model.bin.index.json").exists() {
            format!(
                "`{}` holds PyTorch pickles (pytorch_model.bin), which mipipe does not unpickle; \
             convert it once with transformers: `from_pretrained(...)` then \
             `save_pretrained(..., safe_serialization=True)`",
                dir.display()
            )
        } else {
            format!(
                "`{}` has neither model.safetensors nor model.safetensors.index.json",
                dir.display()
            )
        },
    )
}

fn kind_of(dtype: Dtype) -> Result<Kind, String> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        other => return Err(format!("tensor dtype {other:?} is not supported")),
    })
}

/// Copies every tensor of the checkpoint into the variable of the same canonical name. Every
/// variable must be filled, every tensor must have a variable, and shapes must agree; an error
/// names the key and the file.
pub fn load(vs: &nn::VarStore, dir: &Path) -> Result<(), String> {
    let variables: HashMap<String, Tensor> = vs.variables();
    let mut filled = BTreeSet::new();
    for file in weight_files(dir)? {
        let handle = std::fs::File::open(&file)
            .map_err(|e| format!("cannot open `{}`: {e}", file.display()))?;
        // SAFETY: the map is read-only and lives until every tensor of this file is copied;
        // a checkpoint that another process truncates while we read it is undefined, as it is
        // for every safetensors reader that maps files.
        let map = unsafe { memmap2::Mmap::map(&handle) }
            .map_err(|e| format!("cannot map `{}`: {e}", file.display()))?;
        let tensors = SafeTensors::deserialize(&map)
            .map_err(|e| format!("`{}` is not a safetensors file: {e}", file.display()))?;
        for (key, view) in tensors.iter() {
            let name = canonical_key(key);
            let Some(var) = variables.get(&name) else {
                return Err(format!(
                    "`{}`: tensor `{key}` has no place in this model (is the config.json the \
                     checkpoint's own?)",
                    file.display()
                ));
            };
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            if shape != var.size() {
                return Err(format!(
                    "`{}`: tensor `{key}` is {shape:?}, the model expects {:?}",
                    file.display(),
                    var.size()
                ));
            }
            let kind = kind_of(view.dtype()).map_err(|e| format!("`{key}`: {e}"))?;
            let data = view.data();
            let elements = shape.iter().product::<i64>() as usize;
            if data.len() != elements * kind.elt_size_in_bytes() {
                return Err(format!("`{}`: tensor `{key}` is truncated", file.display()));
            }
            let strides = contiguous_strides(&shape);
            // SAFETY: `data` is `elements` values of `kind`, laid out contiguously, and stays
            // mapped until the copy below has finished.
            let source = unsafe {
                Tensor::from_blob(data.as_ptr(), &shape, &strides, kind, tch::Device::Cpu)
            };
            let mut target = var.shallow_clone();
            tch::no_grad(|| target.f_copy_(&source))
                .map_err(|e| format!("`{key}`: cannot copy into the model: {e}"))?;
            filled.insert(name);
        }
    }
    // LoRA adapters are the model's own additions, never in a checkpoint.
    let missing: Vec<&String> = variables
        .keys()
        .filter(|k| !filled.contains(*k) && !crate::lora::is_adapter(k))
        .collect();
    if !missing.is_empty() {
        let mut missing: Vec<&String> = missing;
        missing.sort();
        return Err(format!(
            "`{}` lacks {} of the model's tensors, first `{}`",
            dir.display(),
            missing.len(),
            missing[0]
        ));
    }
    Ok(())
}

fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// Writes the variables as `model.safetensors` in `dir` under their canonical keys, in `kind`
/// (the checkpoint's dtype, say), through a temporary file renamed into place. A head tied to
/// the embeddings is not written twice: transformers ties it again on load. LoRA adapters are
/// not written ([`crate::lora::merge`] them first).
pub fn save(vs: &nn::VarStore, dir: &Path, kind: Kind, tied_head: bool) -> Result<(), String> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(name, _)| !(tied_head && name == "language_model.lm_head.weight"))
        .filter(|(name, _)| !crate::lora::is_adapter(name))
        .map(|(name, t)| (name, t.detach().to_device(tch::Device::Cpu).to_kind(kind)))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let partial = dir.join("model.safetensors.partial");
    Tensor::write_safetensors(&named, &partial)
        .map_err(|e| format!("cannot write `{}`: {e}", partial.display()))?;
    std::fs::rename(&partial, dir.join("model.safetensors"))
        .map_err(|e| format!("cannot rename `{}`: {e}", partial.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_key_has_one_canonical_form() {
        for (key, canonical) in [
            (
                "model.language_model.layers.0.self_attn.q_proj.weight",
                "language_model.model.layers.0.self_attn.q_proj.weight",
            ),
            (
                "language_model.model.layers.0.self_attn.q_proj.weight",
                "language_model.model.layers.0.self_attn.q_proj.weight",
            ),
            ("lm_head.weight", "language_model.lm_head.weight"),
            (
                "language_model.lm_head.weight",
                "language_model.lm_head.weight",
            ),
            (
                "model.vision_tower.encoder.layers.0.mlp.fc1.weight",
                "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
            ),
            (
                "vision_tower.embeddings.class_embedding",
                "vision_tower.vision_model.embeddings.class_embedding",
            ),
            (
                "vision_tower.vision_model.post_layernorm.bias",
                "vision_tower.vision_model.post_layernorm.bias",
            ),
            (
                "model.multi_modal_projector.linear_1.weight",
                "multi_modal_projector.linear_1.weight",
            ),
        ] {
            assert_eq!(canonical_key(key), canonical, "{key}");
        }
    }

    #[test]
    fn pickled_checkpoints_get_a_conversion_hint() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pytorch_model.bin"), b"pickle").unwrap();
        let error = weight_files(dir.path()).unwrap_err();
        assert!(error.contains("safe_serialization=True"), "{error}");
        let index = r#"{"weight_map": {"a": "../../etc/passwd"}}"#;
        std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
        let error = weight_files(dir.path()).unwrap_err();
        assert!(error.contains("outside the checkpoint folder"), "{error}");
    }
}
