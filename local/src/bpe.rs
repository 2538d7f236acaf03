//! The language model's tokenizer: GPT-2 style byte-level BPE, read from the
//! GGUF file's `tokenizer.ggml.*` metadata (vocabulary, merges, token types,
//! bos/eos ids).
//!
//! Encoding is three steps: special tokens (`<|im_start|>`, …) are matched as
//! whole tokens first (only by [`BpeTokenizer::encode`]; prompt content goes
//! through [`BpeTokenizer::encode_plain`] so a caller cannot inject them); the
//! rest is pre-tokenised by the SmolLM split (every digit on its own, then the
//! GPT-2 regex, hand-written below); each piece's bytes are mapped to GPT-2's
//! printable byte alphabet and merged by rank.
//!
//! This module owns text <-> token ids only; it knows nothing of the model.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// A byte-level BPE tokenizer built from GGUF metadata.
pub struct BpeTokenizer {
    /// Token id -> the bytes it stands for (a special token's literal text).
    token_bytes: Vec<Vec<u8>>,
    /// Token id -> whether it is a control or user-defined (special) token.
    special: Vec<bool>,
    /// Vocabulary string (in the byte alphabet) -> id.
    vocab: HashMap<String, u32>,
    /// (left id, right id) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Byte -> the id of its one-symbol token.
    byte_token: [u32; 256],
    /// Special tokens' texts and ids, longest first, for matching in text.
    special_texts: Vec<(String, u32)>,
    bos: Option<u32>,
    eos: u32,
}

impl std::fmt::Debug for BpeTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpeTokenizer")
            .field("vocab_size", &self.token_bytes.len())
            .field("merges", &self.merges.len())
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

impl BpeTokenizer {
    /// Builds the tokenizer from a GGUF file's metadata. The error says which
    /// key is missing or malformed.
    pub fn from_gguf(content: &Content) -> Result<Self, String> {
        let md = &content.metadata;
        let model = md
            .get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str);
        if model != Some("gpt2") {
            return Err(format!(
                "tokenizer.ggml.model is {model:?}; only byte-level BPE (\"gpt2\") is supported"
            ));
        }
        let tokens = string_array(md.get("tokenizer.ggml.tokens"), "tokenizer.ggml.tokens")?;
        let merges = string_array(md.get("tokenizer.ggml.merges"), "tokenizer.ggml.merges")?;
        let types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
            Some(Value::Array(values)) => values
                .iter()
                .map(|v| integer(v).ok_or("tokenizer.ggml.token_type holds a non-integer"))
                .collect::<Result<_, _>>()?,
            _ => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            ));
        }
        let eos = md
            .get("tokenizer.ggml.eos_token_id")
            .and_then(integer)
            .ok_or("tokenizer.ggml.eos_token_id is missing")?;
        let bos = md.get("tokenizer.ggml.bos_token_id").and_then(integer);
        let unknown = md.get("tokenizer.ggml.unknown_token_id").and_then(integer);
        Self::new(&tokens, &merges, &types, bos, eos, unknown)
    }

    fn new(
        tokens: &[&str],
        merges: &[&str],
        types: &[i64],
        bos: Option<i64>,
        eos: i64,
        unknown: Option<i64>,
    ) -> Result<Self, String> {
        let id_of = |n: i64, what: &str| -> Result<u32, String> {
            u32::try_from(n)
                .ok()
                .filter(|&id| (id as usize) < tokens.len())
                .ok_or_else(|| format!("{what} {n} is outside the vocabulary"))
        };
        let char_byte = unicode_to_byte();
        let mut vocab = HashMap::with_capacity(tokens.len());
        let mut token_bytes = Vec::with_capacity(tokens.len());
        let mut special = Vec::with_capacity(tokens.len());
        let mut special_texts = Vec::new();
        for (id, (token, &ty)) in tokens.iter().zip(types).enumerate() {
            let id = id as u32;
            vocab.insert((*token).to_owned(), id);
            let is_special = ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED;
            special.push(is_special);
            if is_special {
                token_bytes.push(token.as_bytes().to_vec());
                special_texts.push(((*token).to_owned(), id));
            } else {
                // A normal token is spelled in the byte alphabet; a char outside
                // it (never in a well-formed vocabulary) stands for itself.
                let mut bytes = Vec::with_capacity(token.len());
                for c in token.chars() {
                    match char_byte.get(&c) {
                        Some(&b) => bytes.push(b),
                        None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                token_bytes.push(bytes);
            }
        }
        special_texts.sort_by_key(|(text, _)| std::cmp::Reverse(text.len()));

        // Bytes the vocabulary has no token for (SmolLM2 lacks a few control
        // bytes) become the unknown token, as in the reference tokenizer.
        let unknown = match unknown {
            Some(id) => id_of(id, "unknown_token_id")?,
            None => 0,
        };
        let byte_char = byte_to_unicode();
        let mut byte_token = [unknown; 256];
        for (b, slot) in byte_token.iter_mut().enumerate() {
            if let Some(&id) = vocab.get(&byte_char[b].to_string()) {
                *slot = id;
            }
        }

        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, merge) in merges.iter().enumerate() {
            let Some((left, right)) = merge.split_once(' ') else {
                return Err(format!("merge {rank} ({merge:?}) is not two symbols"));
            };
            let (Some(&l), Some(&r), Some(&m)) = (
                vocab.get(left),
                vocab.get(right),
                vocab.get(&format!("{left}{right}")),
            ) else {
                // A merge whose parts are not tokens can never apply.
                continue;
            };
            merge_map.entry((l, r)).or_insert((rank as u32, m));
        }

        Ok(Self {
            token_bytes,
            special,
            vocab,
            merges: merge_map,
            byte_token,
            special_texts,
            bos: bos.map(|b| id_of(b, "bos_token_id")).transpose()?,
            eos: id_of(eos, "eos_token_id")?,
        })
    }

    /// How many tokens the vocabulary has.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// The end-of-sequence token (`<|im_end|>` for SmolLM2-Instruct).
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The beginning-of-sequence token, when the vocabulary names one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The id of a vocabulary entry spelled exactly `token` (in the byte
    /// alphabet: `Ġworld` for " world").
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// Whether `id` is a special (control or user-defined) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The bytes a token stands for (empty for an unknown id). A token may
    /// end in the middle of a UTF-8 character.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map_or(&[][..], Vec::as_slice)
    }

    /// Encodes `text`, matching special tokens' texts as whole tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match self.find_special(rest) {
                Some((at, len, id)) => {
                    self.encode_plain_into(&rest[..at], &mut ids);
                    ids.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    self.encode_plain_into(rest, &mut ids);
                    break;
                }
            }
        }
        ids
    }

    /// Encodes `text` as ordinary text: `<|im_end|>` in it is just characters.
    pub fn encode_plain(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        self.encode_plain_into(text, &mut ids);
        ids
    }

    /// Decodes ids to text (special tokens as their text); bytes that do not
    /// form UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The first special token in `text`: (byte offset, byte length, id).
    fn find_special(&self, text: &str) -> Option<(usize, usize, u32)> {
        // Special tokens all start with '<' in practice, but do not rely on it.
        let mut best: Option<(usize, usize, u32)> = None;
        for (special, id) in &self.special_texts {
            if let Some(at) = text.find(special.as_str()) {
                // Earliest wins; at the same offset the longest (sorted first).
                if best.is_none_or(|(b, _, _)| at < b) {
                    best = Some((at, special.len(), *id));
                }
            }
        }
        best
    }

    fn encode_plain_into(&self, text: &str, ids: &mut Vec<u32>) {
        for piece in pre_tokenize(text) {
            self.bpe_into(piece.as_bytes(), ids);
        }
    }

    /// Merges one pre-token's bytes, lowest rank first, into token ids.
    fn bpe_into(&self, bytes: &[u8], ids: &mut Vec<u32>) {
        let mut symbols: Vec<u32> = bytes.iter().map(|&b| self.byte_token[b as usize]).collect();
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for (i, pair) in symbols.windows(2).enumerate() {
                if let Some(&(rank, merged)) = self.merges.get(&(pair[0], pair[1]))
                    && best.is_none_or(|(r, _, _)| rank < r)
                {
                    best = Some((rank, i, merged));
                }
            }
            let Some((_, at, merged)) = best else { break };
            symbols[at] = merged;
            symbols.remove(at + 1);
        }
        ids.extend_from_slice(&symbols);
    }
}

fn integer(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(v) => Some(v.into()),
        Value::I8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::I16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::I32(v) => Some(v.into()),
        Value::U64(v) => i64::try_from(v).ok(),
        Value::I64(v) => Some(v),
        _ => None,
    }
}

fn string_array<'a>(value: Option<&'a Value>, key: &str) -> Result<Vec<&'a str>, String> {
    match value {
        Some(Value::Array(values)) => values
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(format!("{key} holds a non-string")),
            })
            .collect(),
        Some(_) => Err(format!("{key} is not an array")),
        None => Err(format!("{key} is missing")),
    }
}

/// GPT-2's byte alphabet: printable bytes stand for themselves, the others
/// (controls, space, …) are shifted to U+0100 and up.
fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            u32::from(b)
        } else {
            let c = next;
            next += 1;
            c
        };
        table[b as usize] = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

fn unicode_to_byte() -> HashMap<char, u8> {
    byte_to_unicode()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

/// SmolLM's pre-tokenisation: every numeric char is its own piece, and the
/// text between goes through the GPT-2 split
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
pub(crate) fn pre_tokenize(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (at, c) in text.char_indices() {
        if c.is_numeric() {
            gpt2_split(&text[start..at], &mut pieces);
            pieces.push(&text[at..at + c.len_utf8()]);
            start = at + c.len_utf8();
        }
    }
    gpt2_split(&text[start..], &mut pieces);
    pieces
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CharClass {
    Letter,
    Number,
    Space,
    Other,
}

fn class(c: char) -> CharClass {
    if c.is_alphabetic() {
        CharClass::Letter
    } else if c.is_numeric() {
        CharClass::Number
    } else if c.is_whitespace() {
        CharClass::Space
    } else {
        CharClass::Other
    }
}

/// The GPT-2 pre-tokenizer regex, by hand (the look-ahead `\s+(?!\S)` is
/// what rules out the `regex` crate).
fn gpt2_split<'a>(text: &'a str, pieces: &mut Vec<&'a str>) {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let n = chars.len();
    let offset = |i: usize| if i < n { chars[i].0 } else { text.len() };
    let mut i = 0;
    while i < n {
        let c = chars[i].1;
        let next = |k: usize| chars.get(i + k).map(|&(_, c)| c);
        // Contractions: 's 't 'm 'd 're 've 'll.
        if c == '\'' {
            let len = match (next(1), next(2)) {
                (Some('s' | 't' | 'm' | 'd'), _) => 2,
                (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => 3,
                _ => 0,
            };
            if len > 0 {
                pieces.push(&text[offset(i)..offset(i + len)]);
                i += len;
                continue;
            }
        }
        // An optional single space, then a run of one class.
        let body = if c == ' ' { i + 1 } else { i };
        let body_class = chars.get(body).map(|&(_, c)| class(c));
        let end = match body_class {
            Some(cls @ (CharClass::Letter | CharClass::Number | CharClass::Other)) => {
                let mut j = body;
                while j < n && class(chars[j].1) == cls {
                    j += 1;
                }
                j
            }
            // Whitespace: `\s+(?!\S)` leaves the last space of a run to the
            // word after it; a lone one falls to `\s+`.
            _ => {
                let mut j = i;
                while j < n && class(chars[j].1) == CharClass::Space {
                    j += 1;
                }
                if j < n && j - i >= 2 { j - 1 } else { j }
            }
        };
        pieces.push(&text[offset(i)..offset(end)]);
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_the_gpt2_regex() {
        assert_eq!(pre_tokenize("Hello world"), ["Hello", " world"]);
        assert_eq!(
            pre_tokenize("I'm here, isn't it?"),
            ["I", "'m", " here", ",", " isn", "'t", " it", "?"]
        );
        assert_eq!(pre_tokenize("a  b"), ["a", " ", " b"]);
        assert_eq!(pre_tokenize("a\n\nb"), ["a", "\n", "\n", "b"]);
        assert_eq!(pre_tokenize("a\tb"), ["a", "\t", "b"]);
        assert_eq!(pre_tokenize("x 123!"), ["x", " ", "1", "2", "3", "!"]);
        assert_eq!(pre_tokenize("end  "), ["end", "  "]);
        assert_eq!(pre_tokenize(" ...hi"), [" ...", "hi"]);
        assert_eq!(pre_tokenize("café über"), ["café", " über"]);
    }

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let table = byte_to_unicode();
        let back = unicode_to_byte();
        assert_eq!(back.len(), 256);
        for (b, c) in table.iter().enumerate() {
            assert_eq!(back[c] as usize, b);
        }
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
    }
}
