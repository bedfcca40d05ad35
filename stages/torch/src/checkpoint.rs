//! Checkpoints: safetensors weights whose names are the model's module paths, with a JSON
//! sidecar holding the resolved model configuration and the tokenizer.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn;

/// Saves a VarStore as safetensors (`weights.safetensors`) plus `sidecar` as
/// `config.json` in `dir`.
pub fn save<T: Serialize>(vs: &nn::VarStore, sidecar: &T, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    vs.save(dir.join("weights.safetensors"))
        .map_err(|e| format!("cannot save weights: {e}"))?;
    let json = serde_json::to_vec_pretty(sidecar).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("config.json"), json)
        .map_err(|e| format!("cannot write config.json: {e}"))
}

/// Reads the sidecar of a checkpoint folder.
pub fn read_sidecar<T: for<'de> Deserialize<'de>>(dir: &Path) -> Result<T, String> {
    let bytes = std::fs::read(dir.join("config.json"))
        .map_err(|e| format!("cannot read config.json: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("config.json: {e}"))
}

/// Loads weights into a VarStore whose variables were created with the same paths.
pub fn load(vs: &mut nn::VarStore, dir: &Path) -> Result<(), String> {
    vs.load(dir.join("weights.safetensors"))
        .map_err(|e| format!("cannot load weights: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::tiny;
    use crate::model::{Family, MultimodalModel};

    #[test]
    fn checkpoints_round_trip_with_module_path_names() {
        let _rng = crate::rng_lock();
        let dir = tempfile::tempdir().unwrap();
        tch::manual_seed(4);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _ = MultimodalModel::new(vs.root(), &tiny(Family::Qwen));
        save(&vs, &serde_json::json!({"family": "qwen"}), dir.path()).unwrap();
        // The file is safetensors: an 8-byte header length, then a JSON header naming tensors.
        let bytes = std::fs::read(dir.path().join("weights.safetensors")).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
        assert!(
            header
                .get("decoder.layers.0.self_attn.q_proj.weight")
                .is_some(),
            "{header}"
        );
        assert!(
            header.get("projector.mlp.linear_1.weight").is_some(),
            "{header}"
        );
        tch::manual_seed(5);
        let mut other = nn::VarStore::new(tch::Device::Cpu);
        let _ = MultimodalModel::new(other.root(), &tiny(Family::Qwen));
        load(&mut other, dir.path()).unwrap();
        let loaded = other.variables();
        for (name, value) in vs.variables() {
            assert!(value.equal(&loaded[&name]), "{name} did not round-trip");
        }
        let sidecar: serde_json::Value = read_sidecar(dir.path()).unwrap();
        assert_eq!(sidecar["family"], "qwen");
    }
}
