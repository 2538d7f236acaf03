//! The Llama decoder graph for quantized GGUF weights (SmolLM2), on
//! candle-core/candle-nn: token embedding, `n_layer` blocks of RMS norm,
//! grouped-query attention with rotary positions and a SwiGLU feed-forward,
//! the final norm and the output projection (tied to the embedding when the
//! file has no `output.weight`).
//!
//! It owns the weights (shared, read-only) and the per-request [`KvCache`];
//! tokenization, sampling and scheduling live in `llm.rs`.

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::attention::{AttnMask, flash_attn};

/// Hyper-parameters, read from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_embd: usize,
    pub head_dim: usize,
    /// The context length the model was trained for.
    pub n_ctx: usize,
    pub rope_freq_base: f32,
    pub rms_eps: f32,
}

impl LlamaConfig {
    /// Reads `<arch>.*` keys; the error names the missing key.
    pub fn from_gguf(content: &Content) -> std::result::Result<Self, String> {
        let md = &content.metadata;
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "llama".to_owned());
        if arch != "llama" {
            return Err(format!(
                "general.architecture is {arch:?}; only \"llama\" is supported"
            ));
        }
        let number = |key: &str| -> std::result::Result<f64, String> {
            let key = format!("{arch}.{key}");
            md.get(&key)
                .and_then(as_f64)
                .ok_or_else(|| format!("{key} is missing"))
        };
        let n_embd = number("embedding_length")? as usize;
        let n_head = number("attention.head_count")? as usize;
        let n_head_kv = number("attention.head_count_kv").unwrap_or(n_head as f64) as usize;
        if n_head == 0
            || n_head_kv == 0
            || !n_embd.is_multiple_of(n_head)
            || !n_head.is_multiple_of(n_head_kv)
        {
            return Err(format!(
                "inconsistent attention shape: {n_embd} wide, {n_head} heads, {n_head_kv} kv heads"
            ));
        }
        Ok(Self {
            n_layer: number("block_count")? as usize,
            n_head,
            n_head_kv,
            n_embd,
            head_dim: n_embd / n_head,
            n_ctx: number("context_length")? as usize,
            rope_freq_base: number("rope.freq_base").unwrap_or(10_000.0) as f32,
            rms_eps: number("attention.layer_norm_rms_epsilon")? as f32,
        })
    }
}

fn as_f64(value: &Value) -> Option<f64> {
    Some(match *value {
        Value::U8(v) => v.into(),
        Value::I8(v) => v.into(),
        Value::U16(v) => v.into(),
        Value::I16(v) => v.into(),
        Value::U32(v) => v.into(),
        Value::I32(v) => v.into(),
        Value::U64(v) => v as f64,
        Value::I64(v) => v as f64,
        Value::F32(v) => v.into(),
        Value::F64(v) => v,
        _ => return None,
    })
}

struct Block {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// From this many rows on, a matrix product runs on dequantized f32
/// weights: candle's quantized kernel does one dot product per row and
/// column, while the f32 GEMM reuses each weight across rows, which more
/// than pays for dequantizing the layer during a prefill.
const DENSE_ROWS: usize = 16;

/// A quantized weight matrix.
struct Linear(QMatMul);

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.elem_count() / x.dim(candle_core::D::Minus1)?.max(1);
        match &self.0 {
            QMatMul::QTensor(q) if rows >= DENSE_ROWS => {
                let w = q.dequantize(&Device::Cpu)?;
                x.broadcast_matmul(&w.t()?)
            }
            weight => weight.forward(x),
        }
    }
}

/// The model's weights; read-only once loaded, so one copy serves every
/// request.
pub struct Llama {
    config: LlamaConfig,
    embedding: std::sync::Arc<QTensor>,
    blocks: Vec<Block>,
    output_norm: Tensor,
    output: QMatMul,
    /// Rotary tables, `(n_ctx, head_dim / 2)`.
    cos: Tensor,
    sin: Tensor,
}

/// Keys and values of the positions seen so far, one pair per layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<candle_nn::kv_cache::KvCache>,
    len: usize,
}

/// Positions a cache grows by: small steps, so a short reply does not
/// allocate room for the whole context.
const KV_GROW: usize = 256;

impl KvCache {
    pub fn new(config: &LlamaConfig) -> Self {
        Self {
            layers: (0..config.n_layer)
                .map(|_| candle_nn::kv_cache::KvCache::new(1, KV_GROW))
                .collect(),
            len: 0,
        }
    }

    /// How many positions it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A copy of the first `len` positions, sharing nothing with `self`
    /// (appends write into a cache's buffers in place).
    pub fn prefix(&self, len: usize) -> Result<Self> {
        let len = len.min(self.len);
        let mut copy = Self {
            layers: Vec::with_capacity(self.layers.len()),
            len,
        };
        for layer in &self.layers {
            let mut fresh = candle_nn::kv_cache::KvCache::new(1, KV_GROW.max(len));
            if let (Some(k), Some(v)) = (layer.k()?, layer.v()?) {
                fresh.append(
                    &k.narrow(1, 0, len)?.contiguous()?,
                    &v.narrow(1, 0, len)?.contiguous()?,
                )?;
            }
            copy.layers.push(fresh);
        }
        Ok(copy)
    }
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Llama {
    /// Loads every tensor of a llama GGUF file onto the CPU. With
    /// `requantize_q8_0`, Q4_1 matrices are converted to Q8_0 on the way in:
    /// candle has no SIMD kernel for Q4_1 but AVX2/VNNI ones for Q8_0, which
    /// keeps practically all of Q4_1's precision for ~1.9x its memory.
    pub fn load<R: std::io::Read + std::io::Seek>(
        content: &Content,
        reader: &mut R,
        requantize_q8_0: bool,
    ) -> Result<Self> {
        let config = LlamaConfig::from_gguf(content).map_err(candle_core::Error::msg)?;
        let device = Device::Cpu;
        let mut tensor = |name: &str| content.tensor(&mut *reader, name, &device);
        let matmul = |t: QTensor| -> Result<Linear> {
            let t = if requantize_q8_0 && t.dtype() == GgmlDType::Q4_1 {
                QTensor::quantize(&t.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)?
            } else {
                t
            };
            Ok(Linear(QMatMul::from_qtensor(t)?))
        };
        let embedding = std::sync::Arc::new(tensor("token_embd.weight")?);
        let output_norm = tensor("output_norm.weight")?.dequantize(&device)?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            matmul(tensor("output.weight")?)?.0
        } else {
            // Tied embeddings: the projection shares the embedding's weights.
            QMatMul::from_arc(embedding.clone())?
        };
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("blk.{i}");
            blocks.push(Block {
                attn_norm: tensor(&format!("{p}.attn_norm.weight"))?.dequantize(&device)?,
                wq: matmul(tensor(&format!("{p}.attn_q.weight"))?)?,
                wk: matmul(tensor(&format!("{p}.attn_k.weight"))?)?,
                wv: matmul(tensor(&format!("{p}.attn_v.weight"))?)?,
                wo: matmul(tensor(&format!("{p}.attn_output.weight"))?)?,
                ffn_norm: tensor(&format!("{p}.ffn_norm.weight"))?.dequantize(&device)?,
                gate: matmul(tensor(&format!("{p}.ffn_gate.weight"))?)?,
                up: matmul(tensor(&format!("{p}.ffn_up.weight"))?)?,
                down: matmul(tensor(&format!("{p}.ffn_down.weight"))?)?,
            });
        }
        let (cos, sin) = rotary_tables(&config, &device)?;
        Ok(Self {
            config,
            embedding,
            blocks,
            output_norm,
            output,
            cos,
            sin,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Runs `tokens` (the positions after those in `cache`) through the
    /// model, appends their keys and values to `cache`, and returns the
    /// logits of the last one.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let seq = tokens.len();
        if seq == 0 {
            candle_core::bail!("no tokens to run");
        }
        let start = cache.len;
        if start + seq > self.config.n_ctx {
            candle_core::bail!(
                "{} positions exceed the model's context of {}",
                start + seq,
                self.config.n_ctx
            );
        }
        let c = &self.config;
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        let mut x = self.embedding.embedding(&ids)?.unsqueeze(0)?; // (1, seq, n_embd)
        let cos = self.cos.narrow(0, start, seq)?;
        let sin = self.sin.narrow(0, start, seq)?;
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        for (block, kv) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, c.rms_eps)?;
            let q = block.wq.forward(&h)?;
            let k = block.wk.forward(&h)?;
            let v = block.wv.forward(&h)?;
            // GGUF stores q/k permuted for the interleaved rotation (rope_i),
            // which wants (batch, heads, seq, head_dim).
            let q = q
                .reshape((1, seq, c.n_head, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()?;
            let k = k
                .reshape((1, seq, c.n_head_kv, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()?;
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?.transpose(1, 2)?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?
                .transpose(1, 2)?
                .contiguous()?;
            let v = v.reshape((1, seq, c.n_head_kv, c.head_dim))?;
            // The cache and the attention kernel both take (batch, seq, heads, dim).
            let (k, v) = kv.append(&k, &v)?;
            let attn = flash_attn::<f32>(
                &q,
                &k,
                &v,
                scale,
                AttnMask::causal_with_offset(start),
                None,
                None,
            )?; // (1, heads, seq, dim)
            let attn = attn.transpose(1, 2)?.reshape((1, seq, c.n_embd))?;
            x = (x + block.wo.forward(&attn)?)?;
            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, c.rms_eps)?;
            let gate = candle_nn::ops::silu(&block.gate.forward(&h)?)?;
            let ff = block.down.forward(&(gate * block.up.forward(&h)?)?)?;
            x = (x + ff)?;
        }
        cache.len += seq;
        let last = x.narrow(1, seq - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.output_norm, c.rms_eps)?;
        self.output
            .forward(&last)?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1()
    }
}

fn rotary_tables(config: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = config.head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            1.0 / config
                .rope_freq_base
                .powf(2.0 * i as f32 / config.head_dim as f32)
        })
        .collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
    let positions = Tensor::arange(0u32, config.n_ctx as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((config.n_ctx, 1))?;
    let angles = positions.broadcast_mul(&inv_freq)?;
    Ok((angles.cos()?, angles.sin()?))
}
