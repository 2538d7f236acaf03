//! The Whisper graph on candle (f32, CPU), with CTranslate2's variable
//! names: a convolutional front end and pre-norm transformer encoder, and a
//! decoder that runs one token at a time against a key/value cache.
//!
//! CTranslate2 stores each self-attention's q, k, v projections stacked as
//! one `linear_0` (`[3·d, d]`), the cross-attention's query as `linear_0`
//! and its key/value stacked as `linear_1`; the output projection is the
//! last linear. The logits reuse the token embedding (`decoder/projection`
//! is an alias of it).

use candle_core::{D, Module, Result, Tensor};
use candle_nn::Linear;
use candle_nn::ops::{layer_norm, softmax_last_dim};

use super::ct2::Ct2Model;

const LAYER_NORM_EPS: f32 = 1e-5;

/// Loads variables by name, turning a missing one into a message.
struct Vars<'a>(&'a Ct2Model);

impl Vars<'_> {
    fn tensor(&self, name: &str) -> std::result::Result<Tensor, String> {
        self.0.tensor(name)
    }

    fn linear(&self, prefix: &str) -> std::result::Result<Linear, String> {
        let weight = self.tensor(&format!("{prefix}/weight"))?;
        let bias = self.0.optional_tensor(&format!("{prefix}/bias"));
        Ok(Linear::new(weight, bias))
    }

    fn norm(&self, prefix: &str) -> std::result::Result<Norm, String> {
        Ok(Norm {
            gamma: self.tensor(&format!("{prefix}/gamma"))?,
            beta: self.tensor(&format!("{prefix}/beta"))?,
        })
    }
}

#[derive(Debug)]
struct Norm {
    gamma: Tensor,
    beta: Tensor,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.gamma, &self.beta, LAYER_NORM_EPS)
    }
}

#[derive(Debug)]
struct FeedForward {
    norm: Norm,
    up: Linear,
    down: Linear,
}

impl FeedForward {
    fn load(vars: &Vars<'_>, prefix: &str) -> std::result::Result<Self, String> {
        Ok(Self {
            norm: vars.norm(&format!("{prefix}/layer_norm"))?,
            up: vars.linear(&format!("{prefix}/linear_0"))?,
            down: vars.linear(&format!("{prefix}/linear_1"))?,
        })
    }

    /// `x + down(gelu(up(norm(x))))`.
    fn residual(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.up.forward(&self.norm.forward(x)?)?.gelu_erf()?;
        x + self.down.forward(&h)?
    }
}

/// `[t, heads·64]` to `[heads, t, 64]`.
fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (t, d) = x.dims2()?;
    x.reshape((t, heads, d / heads))?
        .transpose(0, 1)?
        .contiguous()
}

/// Scaled dot-product attention of `q` `[heads, tq, 64]` over `k`, `v`
/// `[heads, tk, 64]`, back to `[tq, heads·64]`. No mask: the encoder sees
/// everything and the decoder feeds one token at a time.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (heads, tq, head_dim) = q.dims3()?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let weights = softmax_last_dim(&(q.matmul(&k.t()?)? * scale)?)?;
    weights
        .matmul(v)?
        .transpose(0, 1)?
        .reshape((tq, heads * head_dim))
}

#[derive(Debug)]
struct EncoderLayer {
    norm: Norm,
    qkv: Linear,
    out: Linear,
    ffn: FeedForward,
}

impl EncoderLayer {
    fn forward(&self, x: &Tensor, heads: usize) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let qkv = self.qkv.forward(&self.norm.forward(x)?)?;
        let q = split_heads(&qkv.narrow(1, 0, d)?, heads)?;
        let k = split_heads(&qkv.narrow(1, d, d)?, heads)?;
        let v = split_heads(&qkv.narrow(1, 2 * d, d)?, heads)?;
        let x = (x + self.out.forward(&attend(&q, &k, &v)?)?)?;
        self.ffn.residual(&x)
    }
}

/// The audio encoder.
#[derive(Debug)]
pub(crate) struct Encoder {
    conv1_weight: Tensor,
    conv1_bias: Tensor,
    conv2_weight: Tensor,
    conv2_bias: Tensor,
    /// `[1500, d]`: one position per 20 ms of the 30 s window.
    positions: Tensor,
    layers: Vec<EncoderLayer>,
    norm: Norm,
    heads: usize,
}

impl Encoder {
    /// Encoder positions: the most audio frames (2 mel frames each) it takes.
    pub(crate) fn max_positions(&self) -> usize {
        self.positions.dim(0).unwrap_or(0)
    }

    /// `mel` `[n_mels, 2·n]` to `[n, d]`.
    pub(crate) fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        let x = mel.unsqueeze(0)?;
        let x = x
            .conv1d(&self.conv1_weight, 1, 1, 1, 1)?
            .broadcast_add(&self.conv1_bias)?
            .gelu_erf()?;
        let x = x
            .conv1d(&self.conv2_weight, 1, 2, 1, 1)?
            .broadcast_add(&self.conv2_bias)?
            .gelu_erf()?;
        let x = x.squeeze(0)?.t()?.contiguous()?;
        let n = x.dim(0)?;
        let mut x = (x + self.positions.narrow(0, 0, n)?)?;
        for layer in &self.layers {
            x = layer.forward(&x, self.heads)?;
        }
        self.norm.forward(&x)
    }
}

#[derive(Debug)]
struct DecoderLayer {
    self_norm: Norm,
    self_qkv: Linear,
    self_out: Linear,
    cross_norm: Norm,
    cross_q: Linear,
    cross_kv: Linear,
    cross_out: Linear,
    ffn: FeedForward,
}

/// The text decoder.
#[derive(Debug)]
pub(crate) struct Decoder {
    embedding: Tensor,
    /// The embedding again (an alias), as the output projection: its
    /// product with a token reads all 80 MB of it, the bulk of a step.
    projection: Linear,
    positions: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Norm,
    heads: usize,
}

/// One decode's cache: the encoder's keys/values per layer (fixed) and the
/// self-attention keys/values of the tokens so far.
#[derive(Debug)]
pub(crate) struct DecoderState {
    cross: Vec<(Tensor, Tensor)>,
    cached: Vec<Option<(Tensor, Tensor)>>,
    position: usize,
}

impl Decoder {
    /// Text positions the decoder has (448).
    pub(crate) fn max_positions(&self) -> usize {
        self.positions.dim(0).unwrap_or(0)
    }

    /// Projects the encoder output into each layer's cross keys/values.
    pub(crate) fn start(&self, audio: &Tensor) -> Result<DecoderState> {
        let d = audio.dim(D::Minus1)?;
        let cross = self
            .layers
            .iter()
            .map(|layer| {
                let kv = layer.cross_kv.forward(audio)?;
                Ok((
                    split_heads(&kv.narrow(1, 0, d)?, self.heads)?,
                    split_heads(&kv.narrow(1, d, d)?, self.heads)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DecoderState {
            cached: vec![None; self.layers.len()],
            cross,
            position: 0,
        })
    }

    /// Feeds one token at the next position; returns the logits of the
    /// token that follows it, `[vocab]`.
    pub(crate) fn step(&self, state: &mut DecoderState, token: u32) -> Result<Vec<f32>> {
        let d = self.embedding.dim(1)?;
        let mut x = (self.embedding.narrow(0, token as usize, 1)?
            + self.positions.narrow(0, state.position, 1)?)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let qkv = layer.self_qkv.forward(&layer.self_norm.forward(&x)?)?;
            let q = split_heads(&qkv.narrow(1, 0, d)?, self.heads)?;
            let k = split_heads(&qkv.narrow(1, d, d)?, self.heads)?;
            let v = split_heads(&qkv.narrow(1, 2 * d, d)?, self.heads)?;
            let (k, v) = match state.cached[i].take() {
                Some((past_k, past_v)) => (
                    Tensor::cat(&[&past_k, &k], 1)?,
                    Tensor::cat(&[&past_v, &v], 1)?,
                ),
                None => (k, v),
            };
            let attended = attend(&q, &k, &v)?;
            state.cached[i] = Some((k, v));
            x = (x + layer.self_out.forward(&attended)?)?;

            let q = layer.cross_q.forward(&layer.cross_norm.forward(&x)?)?;
            let q = split_heads(&q, self.heads)?;
            let (cross_k, cross_v) = &state.cross[i];
            x = (&x + layer.cross_out.forward(&attend(&q, cross_k, cross_v)?)?)?;
            x = layer.ffn.residual(&x)?;
        }
        state.position += 1;
        let x = self.norm.forward(&x)?;
        self.projection.forward(&x)?.squeeze(0)?.to_vec1()
    }
}

/// Builds the encoder and decoder from a `WhisperSpec` model.
pub(crate) fn load(model: &Ct2Model) -> std::result::Result<(Encoder, Decoder), String> {
    if model.spec != "WhisperSpec" {
        return Err(format!("a {} model, not WhisperSpec", model.spec));
    }
    let vars = Vars(model);
    let heads = |side: &str| {
        model
            .setting(&format!("{side}/num_heads"))
            .and_then(|h| usize::try_from(h).ok())
            .ok_or_else(|| format!("no {side}/num_heads"))
    };
    if model.setting("decoder/pre_norm") == Some(0) {
        return Err("a post-norm decoder; Whisper is pre-norm".to_owned());
    }
    let count = |side: &str| {
        (0..)
            .take_while(|i| {
                model
                    .optional_tensor(&format!("{side}/layer_{i}/ffn/linear_0/weight"))
                    .is_some()
            })
            .count()
    };
    let conv_bias = |name: &str| -> std::result::Result<Tensor, String> {
        let bias = vars.tensor(name)?;
        let n = bias.dim(0).map_err(|e| e.to_string())?;
        bias.reshape((1, n, 1)).map_err(|e| e.to_string())
    };
    let encoder = Encoder {
        conv1_weight: vars.tensor("encoder/conv1/weight")?,
        conv1_bias: conv_bias("encoder/conv1/bias")?,
        conv2_weight: vars.tensor("encoder/conv2/weight")?,
        conv2_bias: conv_bias("encoder/conv2/bias")?,
        positions: vars.tensor("encoder/position_encodings/encodings")?,
        layers: (0..count("encoder"))
            .map(|i| {
                let p = format!("encoder/layer_{i}");
                Ok(EncoderLayer {
                    norm: vars.norm(&format!("{p}/self_attention/layer_norm"))?,
                    qkv: vars.linear(&format!("{p}/self_attention/linear_0"))?,
                    out: vars.linear(&format!("{p}/self_attention/linear_1"))?,
                    ffn: FeedForward::load(&vars, &format!("{p}/ffn"))?,
                })
            })
            .collect::<std::result::Result<_, String>>()?,
        norm: vars.norm("encoder/layer_norm")?,
        heads: heads("encoder")?,
    };
    let embedding = vars.tensor("decoder/embeddings/weight")?;
    let projection = vars.linear("decoder/projection")?;
    let decoder = Decoder {
        embedding,
        projection,
        positions: vars.tensor("decoder/position_encodings/encodings")?,
        layers: (0..count("decoder"))
            .map(|i| {
                let p = format!("decoder/layer_{i}");
                Ok(DecoderLayer {
                    self_norm: vars.norm(&format!("{p}/self_attention/layer_norm"))?,
                    self_qkv: vars.linear(&format!("{p}/self_attention/linear_0"))?,
                    self_out: vars.linear(&format!("{p}/self_attention/linear_1"))?,
                    cross_norm: vars.norm(&format!("{p}/attention/layer_norm"))?,
                    cross_q: vars.linear(&format!("{p}/attention/linear_0"))?,
                    cross_kv: vars.linear(&format!("{p}/attention/linear_1"))?,
                    cross_out: vars.linear(&format!("{p}/attention/linear_2"))?,
                    ffn: FeedForward::load(&vars, &format!("{p}/ffn"))?,
                })
            })
            .collect::<std::result::Result<_, String>>()?,
        norm: vars.norm("decoder/layer_norm")?,
        heads: heads("decoder")?,
    };
    if encoder.layers.is_empty() || decoder.layers.is_empty() {
        return Err("no encoder or decoder layers".to_owned());
    }
    Ok((encoder, decoder))
}
