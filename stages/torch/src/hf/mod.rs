//! Pretrained multimodal models in the Hugging Face layout, exact against transformers.
//!
//! LLaVA-1.5 (`LlavaForConditionalGeneration`): a checkpoint folder as `save_pretrained` writes
//! it or as the hub's `llava-hf/llava-1.5-7b-hf` holds it ([`config`]: `config.json` with
//! transformers' defaults; [`weights`]: memory-mapped safetensors shards; [`processor`]: chat
//! template, tokenizer and image processor; [`llava`] and [`clip`]: the model, built from the
//! crate's Llama decoder and vision blocks). The tests compare every step with outputs that
//! transformers produced for a tiny random checkpoint (`tests/fixtures/llava/make_golden.py`).

pub mod clip;
pub mod config;
pub mod encode;
pub mod finetune;
pub mod llava;
pub mod predict;
pub mod processor;
pub mod resample;
pub mod weights;
