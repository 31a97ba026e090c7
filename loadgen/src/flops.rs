//! Model FLOPs utilization: achieved model FLOPs over the window, divided
//! by the window's length, the GPU count and one GPU's dense FP16/BF16
//! peak.
//!
//! FLOPs per generated token = 2·N (a multiply and an add per parameter)
//! plus the attention term 2·layers·context·width (the scores and the
//! weighted sum over the context). N counts every parameter, embeddings
//! included, as the usual "2N per token" estimate does; for a
//! mixture-of-experts model only the active experts count.

use std::path::Path;

use serde::Serialize;

use crate::{error::UsageError, plan::ModelSpec};

/// What the FLOPs estimate needs about the model.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ModelShape {
    pub params: f64,
    pub layers: u32,
    pub hidden: u32,
    /// Where the figures came from.
    pub source: String,
}

impl ModelShape {
    pub fn from_spec(spec: &ModelSpec) -> Result<Option<ModelShape>, UsageError> {
        if let Some(path) = &spec.config {
            let mut m = from_config(path)?;
            if let Some(p) = spec.params {
                m.params = p;
                m.source.push_str(", params given");
            }
            return Ok(Some(m));
        }
        match (spec.params, spec.layers, spec.hidden) {
            (Some(params), layers, hidden) => Ok(Some(ModelShape {
                params,
                layers: layers.unwrap_or(0),
                hidden: hidden.unwrap_or(0),
                source: if layers.is_some() && hidden.is_some() {
                    "given".into()
                } else {
                    "given (no layers/hidden: the attention term is left out)".into()
                },
            })),
            (None, None, None) => Ok(None),
            _ => Err(UsageError::new(
                "model layers/hidden given without params",
                "give params too (or a config.json with --model-config)",
            )),
        }
    }

    /// FLOPs for one generated token with `context` tokens before it.
    pub fn flops_per_token(&self, context: f64) -> f64 {
        2.0 * self.params + 2.0 * f64::from(self.layers) * context * f64::from(self.hidden)
    }
}

/// Reads a Hugging Face `config.json` (Llama, Mistral, Qwen, Mixtral and
/// other decoder-only layouts).
pub(crate) fn from_config(path: &Path) -> Result<ModelShape, UsageError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        UsageError::new(
            format!("cannot read model config {}: {e}", path.display()),
            "give the model's config.json",
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        UsageError::new(
            format!("{} is not JSON: {e}", path.display()),
            "give the model's config.json",
        )
    })?;
    let get = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
    let need = |k: &str| {
        get(k).ok_or_else(|| {
            UsageError::new(
                format!("{} has no {k}", path.display()),
                "give params, layers and hidden instead (--params, [model])",
            )
        })
    };
    let d = need("hidden_size")?;
    let layers = need("num_hidden_layers")?;
    let ff = need("intermediate_size")?;
    let vocab = need("vocab_size")?;
    let heads = need("num_attention_heads")?;
    let kv = get("num_key_value_heads").unwrap_or(heads);
    let head_dim = get("head_dim").unwrap_or(d / heads);
    let tied = v
        .get("tie_word_embeddings")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let experts = get("num_local_experts").unwrap_or(1.0);
    let active = get("num_experts_per_tok").unwrap_or(experts).min(experts);
    let attention = d * heads * head_dim * 2.0 + d * kv * head_dim * 2.0;
    // Gated MLP (gate, up, down), as Llama-style models have.
    let mlp = 3.0 * d * ff * active;
    let embeddings = vocab * d * if tied { 1.0 } else { 2.0 };
    let params = layers * (attention + mlp) + embeddings;
    Ok(ModelShape {
        params,
        layers: layers as u32,
        hidden: d as u32,
        source: format!(
            "{} ({}{} params{})",
            path.display(),
            format_params(params),
            if experts > 1.0 { " active" } else { "" },
            if tied { ", tied embeddings" } else { "" }
        ),
    })
}

pub(crate) fn format_params(p: f64) -> String {
    if p >= 1e9 {
        format!("{:.2}B", p / 1e9)
    } else {
        format!("{:.0}M", p / 1e6)
    }
}

/// Dense (no sparsity) FP16/BF16 tensor-core peaks, TFLOPS per GPU, from
/// the vendors' data sheets. Matched against the GPU name
/// (dcgm-exporter's `modelName`, e.g. "NVIDIA A40").
pub(crate) const PEAKS: &[(&str, &str, f64, &str)] = &[
    // (canonical name, name fragment to match, dense TFLOPS, source). The
    // vendors' sheets give sparse figures beside dense ones: dense is half.
    (
        "A40",
        "A40",
        149.7,
        "NVIDIA A40 datasheet: BF16 tensor 149.7 (299.4 sparse)",
    ),
    (
        "A100",
        "A100",
        312.0,
        "NVIDIA A100 datasheet: BF16 tensor 312 (624 sparse), SXM and PCIe alike",
    ),
    (
        "A10",
        "A10 ",
        125.0,
        "NVIDIA A10 datasheet: BF16 tensor 125 (250 sparse)",
    ),
    (
        "L4",
        "L4 ",
        121.0,
        "NVIDIA L4 datasheet: BF16 tensor 242 sparse",
    ),
    (
        "L40S",
        "L40S",
        362.05,
        "NVIDIA L40S datasheet: BF16 tensor 362.05 (733 sparse)",
    ),
    (
        "L40",
        "L40 ",
        181.05,
        "NVIDIA L40 datasheet: BF16 tensor 181.05 (362.1 sparse)",
    ),
    (
        "H100-PCIe",
        "H100 PCIE",
        756.0,
        "NVIDIA H100 datasheet, PCIe: BF16 tensor 1,513 sparse",
    ),
    (
        "H100-NVL",
        "H100 NVL",
        835.5,
        "NVIDIA H100 datasheet, NVL: BF16 tensor 1,671 sparse",
    ),
    (
        "H100-SXM",
        "H100",
        989.4,
        "NVIDIA H100 datasheet, SXM: BF16 tensor 1,979 sparse",
    ),
    (
        "H200-NVL",
        "H200 NVL",
        835.5,
        "NVIDIA H200 datasheet, NVL: BF16 tensor 1,671 sparse",
    ),
    (
        "H200",
        "H200",
        989.4,
        "NVIDIA H200 datasheet, SXM: BF16 tensor 1,979 sparse",
    ),
    (
        "GH200",
        "GH200",
        989.4,
        "NVIDIA GH200 datasheet: BF16 tensor 1,979 sparse",
    ),
    (
        "B200",
        "B200",
        2250.0,
        "NVIDIA HGX B200 datasheet: BF16 tensor 4.5 PFLOPS sparse per GPU",
    ),
    (
        "V100",
        "V100",
        125.0,
        "NVIDIA V100 datasheet, SXM2: FP16 tensor 125 (no BF16)",
    ),
    (
        "T4",
        "T4 ",
        65.0,
        "NVIDIA T4 datasheet: FP16 tensor 65 (no BF16)",
    ),
    (
        "RTX-4090",
        "4090",
        165.2,
        "NVIDIA Ada whitepaper: BF16 tensor with FP32 accumulate 165.2 (330.4 sparse)",
    ),
    (
        "MI300X",
        "MI300X",
        1307.4,
        "AMD Instinct MI300X datasheet: BF16 dense 1,307.4",
    ),
];

/// The peak for a GPU name, and the table entry it matched.
pub(crate) fn peak_for(gpu: &str) -> Option<(&'static str, f64)> {
    let name = format!("{} ", gpu.to_uppercase().replace(['-', '_'], " "));
    // Longer fragments first: "H100 PCIE" before "H100", "GH200" before "H200".
    let mut table: Vec<&(&str, &str, f64, &str)> = PEAKS.iter().collect();
    table.sort_by_key(|(_, frag, _, _)| std::cmp::Reverse(frag.len()));
    table
        .into_iter()
        .find(|(canon, frag, _, _)| {
            name.contains(&frag.to_uppercase())
                || name.trim() == canon.to_uppercase().replace('-', " ")
        })
        .map(|(canon, _, tf, _)| (*canon, *tf))
}

/// Where a table row's figure comes from.
pub(crate) fn peak_source(canon: &str) -> Option<&'static str> {
    PEAKS.iter().find(|r| r.0 == canon).map(|r| r.3)
}

/// MFU of `tokens_per_s` at `flops_per_token` on `gpus` GPUs of `peak_tflops`.
pub(crate) fn mfu(tokens_per_s: f64, flops_per_token: f64, gpus: u32, peak_tflops: f64) -> f64 {
    tokens_per_s * flops_per_token / (f64::from(gpus.max(1)) * peak_tflops * 1e12)
}

/// Dollars per million output tokens at `tokens_per_s` on `gpus` GPUs.
pub(crate) fn cost_per_million(tokens_per_s: f64, gpus: u32, gpu_hour_usd: f64) -> Option<f64> {
    (tokens_per_s > 0.0)
        .then(|| gpu_hour_usd * f64::from(gpus.max(1)) / (tokens_per_s * 3600.0) * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Meta-Llama-3-8B-Instruct's config.json, the published experiment's
    /// model.
    pub(super) const LLAMA3_8B: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":4096,"intermediate_size":14336,
        "num_attention_heads":32,"num_hidden_layers":32,"num_key_value_heads":8,"vocab_size":128256,
        "tie_word_embeddings":false}"#;

    #[test]
    fn llama3_8b_has_8b_params_and_the_published_mfu_checks_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, LLAMA3_8B).unwrap();
        let m = from_config(&path).unwrap();
        assert!((m.params / 1e9 - 8.03).abs() < 0.01, "{}", m.params);
        let (name, peak) = peak_for("NVIDIA A40").unwrap();
        assert_eq!((name, peak), ("A40", 149.7));
        // 1,515 tok/s is the 16.2 % reported; 870 tok/s is 9.3 %, not 6.8 %.
        let f = m.flops_per_token(0.0);
        assert!((mfu(1515.0, f, 1, peak) - 0.1626).abs() < 0.001);
        assert!((mfu(870.0, f, 1, peak) - 0.0934).abs() < 0.001);
    }

    #[test]
    fn gpu_names_match_the_right_row() {
        assert_eq!(peak_for("NVIDIA H100 PCIe").unwrap().0, "H100-PCIe");
        assert_eq!(peak_for("NVIDIA H100 80GB HBM3").unwrap().0, "H100-SXM");
        assert_eq!(peak_for("NVIDIA H100 NVL").unwrap(), ("H100-NVL", 835.5));
        assert_eq!(peak_for("NVIDIA H200 NVL").unwrap(), ("H200-NVL", 835.5));
        assert_eq!(peak_for("NVIDIA H200").unwrap(), ("H200", 989.4));
        assert_eq!(peak_for("H100-NVL").unwrap().0, "H100-NVL");
        assert_eq!(peak_for("NVIDIA GH200 480GB").unwrap().0, "GH200");
        assert_eq!(peak_for("NVIDIA L40S").unwrap().0, "L40S");
        assert_eq!(peak_for("NVIDIA L40").unwrap().0, "L40");
        assert_eq!(peak_for("NVIDIA A100-SXM4-80GB").unwrap().0, "A100");
        assert_eq!(peak_for("a40").unwrap().0, "A40");
        assert!(peak_for("Imaginary 9000").is_none());
    }

    #[test]
    fn cost_follows_the_formula() {
        // $1/GPU-hour at 1,000 tok/s: 3.6 M tokens an hour, $0.2778 per M.
        assert!((cost_per_million(1000.0, 1, 1.0).unwrap() - 0.27778).abs() < 1e-4);
    }
}
