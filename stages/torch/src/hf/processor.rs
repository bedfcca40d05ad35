//! What transformers' `LlavaProcessor` does before the model: the checkpoint's chat template
//! (Jinja, rendered with minijinja under Hugging Face's settings), each `<image>` placeholder
//! expanded to one token per image feature, tokenisation with the checkpoint's
//! `tokenizer.json` (the `tokenizers` crate, the same code as the Python package), left
//! padding, and the image processor's steps in its order (pad to square, resize, centre crop,
//! rescale, normalise), with Pillow's exact resampling ([`super::resample`]).

use std::path::Path;

use mipipe_stage_schema::image::RgbImage;
use serde::Serialize;
use serde_json::Value;
use tch::Tensor;

use super::config::LlavaConfig;
use super::resample::{Filter, Image8};

/// One part of a chat message.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Content {
    /// A picture's place.
    Image,
    /// Text.
    Text {
        /// The text.
        text: String,
    },
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Message {
    /// `user`, `assistant` or `system`.
    pub role: String,
    /// Its parts.
    pub content: Vec<Content>,
}

impl Message {
    /// A user turn: the picture (if any) first, then the text, as the paper's prompts are.
    pub fn user(text: &str, image: bool) -> Self {
        let mut content = Vec::new();
        if image {
            content.push(Content::Image);
        }
        content.push(Content::Text { text: text.into() });
        Self {
            role: "user".into(),
            content,
        }
    }
}

/// A batch ready for the model.
#[derive(Debug)]
pub struct Batch {
    /// `[batch, seq]` token ids, left-padded.
    pub input_ids: Tensor,
    /// `[batch, seq]`, 1 for real tokens.
    pub attention_mask: Tensor,
    /// `[pictures, 3, height, width]`, in the order the placeholders appear.
    pub pixel_values: Option<Tensor>,
}

/// The image processor's settings (`preprocessor_config.json`, or the `image_processor` part of
/// `processor_config.json`). Pictures always arrive as 8-bit RGB (`RgbImage` expands grey and
/// palettes and drops alpha), so `do_convert_rgb` has nothing left to do.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessor {
    pad_to_square: bool,
    resize: Option<(TargetSize, Filter)>,
    center_crop: Option<(usize, usize)>,
    rescale: Option<f64>,
    normalize: Option<([f32; 3], [f32; 3])>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum TargetSize {
    ShortestEdge(usize),
    Exact { height: usize, width: usize },
}

const CLIP_MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

impl ImageProcessor {
    /// From the settings object, with `CLIPImageProcessor`'s defaults for absent fields.
    pub fn from_settings(settings: &Value) -> Result<Self, String> {
        let flag = |name: &str, default: bool| {
            settings
                .get(name)
                .and_then(Value::as_bool)
                .unwrap_or(default)
        };
        let number = |v: &Value, name: &str| -> Result<usize, String> {
            v.get(name)
                .and_then(Value::as_u64)
                .map(|n| n as usize)
                .ok_or_else(|| format!("image processor: `{name}` must be a whole number"))
        };
        let size = match settings.get("size") {
            None => TargetSize::ShortestEdge(224),
            Some(Value::Number(n)) => TargetSize::ShortestEdge(n.as_u64().unwrap_or(224) as usize),
            Some(size) if size.get("shortest_edge").is_some() => {
                TargetSize::ShortestEdge(number(size, "shortest_edge")?)
            }
            Some(size) => TargetSize::Exact {
                height: number(size, "height")?,
                width: number(size, "width")?,
            },
        };
        let resample = settings
            .get("resample")
            .and_then(Value::as_i64)
            .unwrap_or(3);
        let filter = Filter::from_pil(resample).ok_or_else(|| {
            format!(
                "image processor: resample {resample} is not implemented (1 Lanczos, 2 bilinear, \
                 3 bicubic)"
            )
        })?;
        let crop = match settings.get("crop_size") {
            None => (224, 224),
            Some(Value::Number(n)) => {
                let n = n.as_u64().unwrap_or(224) as usize;
                (n, n)
            }
            Some(crop) => (number(crop, "height")?, number(crop, "width")?),
        };
        let triple = |name: &str, default: [f64; 3]| -> Result<[f32; 3], String> {
            match settings.get(name) {
                None | Some(Value::Null) => Ok(default.map(|v| v as f32)),
                Some(Value::Number(n)) => Ok([n.as_f64().unwrap_or(0.0) as f32; 3]),
                Some(Value::Array(values)) if values.len() == 3 => {
                    let mut out = [0f32; 3];
                    for (o, v) in out.iter_mut().zip(values) {
                        *o = v
                            .as_f64()
                            .ok_or_else(|| format!("image processor: `{name}`"))?
                            as f32;
                    }
                    Ok(out)
                }
                Some(_) => Err(format!("image processor: `{name}` must be three numbers")),
            }
        };
        Ok(Self {
            pad_to_square: flag("do_pad", false),
            resize: flag("do_resize", true).then_some((size, filter)),
            center_crop: flag("do_center_crop", true).then_some(crop),
            rescale: flag("do_rescale", true).then(|| {
                settings
                    .get("rescale_factor")
                    .and_then(Value::as_f64)
                    .unwrap_or(1.0 / 255.0)
            }),
            normalize: if flag("do_normalize", true) {
                Some((
                    triple("image_mean", CLIP_MEAN)?,
                    triple("image_std", CLIP_STD)?,
                ))
            } else {
                None
            },
        })
    }

    /// Pixel values `[3, height, width]` of one picture.
    pub fn preprocess(&self, image: &RgbImage) -> Tensor {
        let mut image = Image8 {
            width: image.width as usize,
            height: image.height as usize,
            channels: 3,
            data: image.pixels.clone(),
        };
        if self.pad_to_square {
            // transformers fills with int(mean * 255) per channel.
            let fill = self
                .normalize
                .map(|(mean, _)| mean.map(|m| (f64::from(m) * 255.0) as u8))
                .unwrap_or([0; 3]);
            image = pad_to_square(&image, fill);
        }
        if let Some((target, filter)) = self.resize {
            let (height, width) = match target {
                TargetSize::Exact { height, width } => (height, width),
                TargetSize::ShortestEdge(edge) => {
                    let (h, w) = (image.height, image.width);
                    let (short, long) = if w <= h { (w, h) } else { (h, w) };
                    let new_long = (edge as f64 * long as f64 / short as f64) as usize;
                    if w <= h {
                        (new_long, edge)
                    } else {
                        (edge, new_long)
                    }
                }
            };
            image = image.resize(width, height, filter);
        }
        if let Some((height, width)) = self.center_crop {
            image = center_crop(&image, height, width);
        }
        let (h, w) = (image.height, image.width);
        let mut values = vec![0f32; 3 * h * w];
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let v = image.data[(y * w + x) * 3 + c];
                    let mut value = match self.rescale {
                        Some(factor) => (f64::from(v) * factor) as f32,
                        None => f32::from(v),
                    };
                    if let Some((mean, std)) = self.normalize {
                        value = (value - mean[c]) / std[c];
                    }
                    values[(c * h + y) * w + x] = value;
                }
            }
        }
        Tensor::from_slice(&values).view([3, h as i64, w as i64])
    }
}

fn pad_to_square(image: &Image8, fill: [u8; 3]) -> Image8 {
    let side = image.width.max(image.height);
    if image.width == image.height {
        return image.clone();
    }
    let mut data: Vec<u8> = (0..side * side).flat_map(|_| fill).collect();
    let (dx, dy) = if image.width > image.height {
        (0, (side - image.height) / 2)
    } else {
        ((side - image.width) / 2, 0)
    };
    for y in 0..image.height {
        let from = y * image.width * 3;
        let to = ((y + dy) * side + dx) * 3;
        data[to..to + image.width * 3].copy_from_slice(&image.data[from..from + image.width * 3]);
    }
    Image8 {
        width: side,
        height: side,
        channels: 3,
        data,
    }
}

/// transformers' `center_crop`: the middle `height` x `width`, zero-padded (centred, rounding
/// the padding up) first where the picture is smaller.
fn center_crop(image: &Image8, height: usize, width: usize) -> Image8 {
    let (h, w) = (image.height as i64, image.width as i64);
    let (ch, cw) = (height as i64, width as i64);
    let (nh, nw) = (ch.max(h), cw.max(w));
    let (pad_top, pad_left) = ((nh - h + 1) / 2, (nw - w + 1) / 2);
    let top = (h - ch).div_euclid(2) + pad_top;
    let left = (w - cw).div_euclid(2) + pad_left;
    let mut data = vec![0u8; height * width * 3];
    for y in 0..ch {
        for x in 0..cw {
            // Position in the padded picture, then in the original.
            let (py, px) = (top + y, left + x);
            let (oy, ox) = (py - pad_top, px - pad_left);
            if (0..h).contains(&oy) && (0..w).contains(&ox) {
                let from = ((oy * w + ox) * 3) as usize;
                let to = ((y * cw + x) * 3) as usize;
                data[to..to + 3].copy_from_slice(&image.data[from..from + 3]);
            }
        }
    }
    Image8 {
        width,
        height,
        channels: 3,
        data,
    }
}

/// Token ids and, for each, the byte range of the text it comes from.
pub type TokensWithOffsets = (Vec<i64>, Vec<(usize, usize)>);

/// A checkpoint's processor: chat template, tokenizer, image processor.
pub struct LlavaProcessor {
    tokenizer: tokenizers::Tokenizer,
    template: Option<String>,
    special: SpecialTokens,
    image_token: String,
    image_processor: ImageProcessor,
    tokens_per_image: usize,
    pad_id: i64,
}

/// The special tokens the chat template may refer to.
#[derive(Clone, Debug, Default, Serialize)]
struct SpecialTokens {
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    unk_token: Option<String>,
}

fn read_json(path: &Path) -> Result<Option<Value>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("`{}` is not JSON: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read `{}`: {e}", path.display())),
    }
}

fn token_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl LlavaProcessor {
    /// Reads the processor files of a checkpoint folder: `tokenizer.json` (required),
    /// `tokenizer_config.json`, the chat template (`chat_template.jinja`,
    /// `chat_template.json` or `tokenizer_config.json`'s `chat_template`), and the image
    /// processor (`processor_config.json`'s `image_processor`, or `preprocessor_config.json`).
    pub fn load(dir: &Path, config: &LlavaConfig) -> Result<Self, String> {
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| format!("cannot read `{}`: {e}", tokenizer_path.display()))?;
        let tokenizer_config =
            read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let processor_config =
            read_json(&dir.join("processor_config.json"))?.unwrap_or(Value::Null);
        let template = match std::fs::read_to_string(dir.join("chat_template.jinja")) {
            Ok(text) => Some(text),
            Err(_) => match read_json(&dir.join("chat_template.json"))? {
                Some(v) => v
                    .get("chat_template")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                None => tokenizer_config
                    .get("chat_template")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            },
        };
        let image_settings = match processor_config.get("image_processor") {
            Some(settings) => settings.clone(),
            None => read_json(&dir.join("preprocessor_config.json"))?.ok_or_else(|| {
                format!(
                    "`{}` has no image processor settings (preprocessor_config.json, or \
                     processor_config.json with `image_processor`)",
                    dir.display()
                )
            })?,
        };
        let image_processor = ImageProcessor::from_settings(&image_settings)?;
        let special = SpecialTokens {
            bos_token: token_text(tokenizer_config.get("bos_token")),
            eos_token: token_text(tokenizer_config.get("eos_token")),
            pad_token: token_text(tokenizer_config.get("pad_token")),
            unk_token: token_text(tokenizer_config.get("unk_token")),
        };
        let image_token = processor_config
            .get("image_token")
            .and_then(Value::as_str)
            .unwrap_or("<image>")
            .to_string();
        match tokenizer.token_to_id(&image_token) {
            Some(id) if i64::from(id) == config.image_token_id => {}
            other => {
                return Err(format!(
                    "the tokenizer gives `{image_token}` the id {other:?}, config.json says {}",
                    config.image_token_id
                ))
            }
        }
        // LlavaProcessor: (crop / patch)^2 + additional tokens, minus the class token under
        // the `default` strategy; without those settings, the model's own count.
        let tokens_per_image = match processor_config.get("patch_size").and_then(Value::as_i64) {
            Some(patch) => {
                let (h, w) = image_processor.center_crop.unwrap_or((
                    config.vision.image_size as usize,
                    config.vision.image_size as usize,
                ));
                let extra = processor_config
                    .get("num_additional_image_tokens")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let strategy = processor_config
                    .get("vision_feature_select_strategy")
                    .and_then(Value::as_str)
                    .unwrap_or(if config.keep_class_token {
                        "full"
                    } else {
                        "default"
                    });
                let drop = i64::from(strategy == "default");
                ((h as i64 / patch) * (w as i64 / patch) + extra - drop) as usize
            }
            None => config.tokens_per_image() as usize,
        };
        if tokens_per_image as i64 != config.tokens_per_image() {
            return Err(format!(
                "the processor expands `{image_token}` to {tokens_per_image} tokens, but the \
                 vision tower gives {} features per picture (config.json's image_size, \
                 patch_size and vision_feature_select_strategy)",
                config.tokens_per_image()
            ));
        }
        let pad_id = special
            .pad_token
            .as_deref()
            .and_then(|t| tokenizer.token_to_id(t))
            .map(i64::from)
            .or(config.pad_token_id)
            .ok_or_else(|| {
                "neither tokenizer_config.json nor config.json names a padding token".to_string()
            })?;
        Ok(Self {
            tokenizer,
            template,
            special,
            image_token,
            image_processor,
            tokens_per_image,
            pad_id,
        })
    }

    /// The chat template applied to one conversation, with the assistant's turn opened when
    /// `add_generation_prompt` (transformers' `apply_chat_template(..., tokenize=False)`).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let template = self
            .template
            .as_deref()
            .ok_or("the checkpoint has no chat template")?;
        render_chat_template(template, messages, add_generation_prompt, &self.special)
    }

    /// The text with each `<image>` placeholder repeated once per image feature, as
    /// `LlavaProcessor` expands it before tokenising.
    pub fn expand_images(&self, text: &str) -> String {
        text.replace(
            &self.image_token,
            &self.image_token.repeat(self.tokens_per_image),
        )
    }

    /// Token ids of an already expanded text (with the tokenizer's special tokens), and the
    /// byte range of the text each token comes from.
    pub fn tokens_with_offsets(&self, expanded: &str) -> Result<TokensWithOffsets, String> {
        let encoding = self
            .tokenizer
            .encode(expanded, true)
            .map_err(|e| format!("cannot tokenise: {e}"))?;
        let ids = encoding.get_ids().iter().map(|&i| i64::from(i)).collect();
        Ok((ids, encoding.get_offsets().to_vec()))
    }

    /// Token ids of texts (with the tokenizer's special tokens), `<image>` expanded.
    pub fn token_ids(&self, text: &str) -> Result<Vec<i64>, String> {
        Ok(self.tokens_with_offsets(&self.expand_images(text))?.0)
    }

    /// The end-of-sequence token's text (`tokenizer_config.json`'s `eos_token`).
    pub fn eos_token(&self) -> Option<&str> {
        self.special.eos_token.as_deref()
    }

    /// The id of the image placeholder token.
    pub fn image_token_id(&self) -> Option<i64> {
        self.tokenizer.token_to_id(&self.image_token).map(i64::from)
    }

    /// Token ids of a continuation (no special tokens added), as options are scored.
    pub fn continuation_ids(&self, text: &str) -> Result<Vec<i64>, String> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| format!("cannot tokenise: {e}"))?;
        Ok(encoding.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// The text of generated token ids, special tokens skipped (transformers'
    /// `batch_decode(..., skip_special_tokens=True)`).
    pub fn decode(&self, ids: &[i64]) -> Result<String, String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.tokenizer
            .decode(&ids, true)
            .map_err(|e| format!("cannot decode: {e}"))
    }

    /// Pixel values of one picture.
    pub fn pixel_values(&self, image: &RgbImage) -> Tensor {
        self.image_processor.preprocess(image)
    }

    /// A left-padded batch of prompt texts (already templated) and the pictures their
    /// `<image>` placeholders stand for, in order.
    pub fn batch(&self, texts: &[String], images: &[RgbImage]) -> Result<Batch, String> {
        let rows: Vec<Vec<i64>> = texts
            .iter()
            .map(|t| self.token_ids(t))
            .collect::<Result<_, _>>()?;
        let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * longest);
        let mut mask = Vec::with_capacity(rows.len() * longest);
        for row in &rows {
            let pad = longest - row.len();
            ids.extend(std::iter::repeat_n(self.pad_id, pad));
            ids.extend(row.iter().copied());
            mask.extend(std::iter::repeat_n(0i64, pad));
            mask.extend(std::iter::repeat_n(1i64, row.len()));
        }
        let shape = [rows.len() as i64, longest as i64];
        let pixel_values = if images.is_empty() {
            None
        } else {
            let pictures: Vec<Tensor> = images.iter().map(|i| self.pixel_values(i)).collect();
            Some(Tensor::stack(&pictures, 0))
        };
        Ok(Batch {
            input_ids: Tensor::from_slice(&ids).view(shape),
            attention_mask: Tensor::from_slice(&mask).view(shape),
            pixel_values,
        })
    }

    /// The padding token's id.
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }
}

/// Hugging Face's `{% generation %}` / `{% endgeneration %}` mark the assistant's tokens for
/// masks; they render nothing, so they are dropped before compiling.
fn strip_generation_tags(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else {
            break;
        };
        let tag = &rest[start + 2..start + len];
        let word = tag.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        if word != "generation" && word != "endgeneration" {
            out.push_str(&rest[start..start + len + 2]);
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

fn render_chat_template(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    special: &SpecialTokens,
) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    // transformers compiles chat templates with trim_blocks and lstrip_blocks.
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| format!("template syntax: {e}"))?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    minijinja_contrib::add_to_environment(&mut env);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                message,
            ))
        },
    );
    let source = strip_generation_tags(template);
    env.add_template("chat", &source)
        .map_err(|e| format!("the chat template does not compile: {e}"))?;
    let context = minijinja::context! {
        messages => minijinja::Value::from(minijinja::value::Serde(messages)),
        add_generation_prompt => add_generation_prompt,
        bos_token => special.bos_token.clone().unwrap_or_default(),
        eos_token => special.eos_token.clone().unwrap_or_default(),
        pad_token => special.pad_token.clone().unwrap_or_default(),
        unk_token => special.unk_token.clone().unwrap_or_default(),
    };
    env.get_template("chat")
        .and_then(|t| t.render(context))
        .map_err(|e| format!("the chat template failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_render_nothing_and_other_tags_stay() {
        let t = "{% for m in messages %}{%- generation -%}{{ m }}{% endgeneration %}{% endfor %}";
        assert_eq!(
            strip_generation_tags(t),
            "{% for m in messages %}{{ m }}{% endfor %}"
        );
    }

    #[test]
    fn centre_crop_pads_small_pictures_as_transformers_does() {
        let image = Image8 {
            width: 1,
            height: 2,
            channels: 3,
            data: vec![10, 10, 10, 20, 20, 20],
        };
        let cropped = center_crop(&image, 2, 3);
        // Width 1 -> 3: one zero column each side; height stays.
        assert_eq!(
            cropped.data,
            vec![0, 0, 0, 10, 10, 10, 0, 0, 0, 0, 0, 0, 20, 20, 20, 0, 0, 0]
        );
    }
}
