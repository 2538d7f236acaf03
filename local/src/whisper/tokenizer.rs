//! Whisper's tokens back to text: `vocabulary.txt` (one GPT-2 byte-level
//! BPE symbol per line, the line number is the id) and the byte decoder
//! that maps those symbols back to UTF-8 bytes. Encoding text is not needed:
//! the prompt is made of special tokens only.

use std::collections::HashMap;

/// Ids of the special tokens the decoder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    pub end_of_text: u32,
    pub start_of_transcript: u32,
    pub no_timestamps: u32,
    /// `<|nocaptions|>`, the no-speech token of the English-only models.
    pub no_speech: u32,
    /// The first id that is not text (specials and timestamps follow).
    pub first_special: u32,
}

/// The vocabulary and its special tokens.
#[derive(Debug)]
pub struct Tokenizer {
    symbols: Vec<String>,
    byte_of_char: HashMap<char, u8>,
    special: SpecialTokens,
}

impl Tokenizer {
    /// Parses `vocabulary.txt`.
    pub fn from_vocabulary(text: &str) -> Result<Self, String> {
        let symbols: Vec<String> = text.lines().map(str::to_owned).collect();
        let id = |name: &str| {
            symbols
                .iter()
                .position(|s| s == name)
                .map(|i| i as u32)
                .ok_or_else(|| format!("the vocabulary has no {name}"))
        };
        let end_of_text = id("<|endoftext|>")?;
        let special = SpecialTokens {
            end_of_text,
            start_of_transcript: id("<|startoftranscript|>")?,
            no_timestamps: id("<|notimestamps|>")?,
            no_speech: id("<|nocaptions|>").or_else(|_| id("<|nospeech|>"))?,
            first_special: end_of_text,
        };
        let byte_of_char = bytes_to_unicode()
            .into_iter()
            .enumerate()
            .map(|(byte, c)| (c, byte as u8))
            .collect();
        Ok(Self {
            symbols,
            byte_of_char,
            special,
        })
    }

    pub fn special(&self) -> SpecialTokens {
        self.special
    }

    pub fn vocab_size(&self) -> usize {
        self.symbols.len()
    }

    /// The text of `tokens`, special tokens skipped, trimmed.
    pub fn decode(&self, tokens: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &token in tokens {
            if token >= self.special.first_special {
                continue;
            }
            let Some(symbol) = self.symbols.get(token as usize) else {
                continue;
            };
            for c in symbol.chars() {
                match self.byte_of_char.get(&c) {
                    Some(&b) => bytes.push(b),
                    // Not a byte-level symbol: keep it as it is.
                    None => bytes.extend_from_slice(c.to_string().as_bytes()),
                }
            }
        }
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }
}

/// GPT-2's `bytes_to_unicode`: the printable character standing for each
/// byte (index = byte). Printable Latin-1 bytes stand for themselves; the
/// others are shifted to U+0100 and up, in byte order.
fn bytes_to_unicode() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut next = 256u32;
    (0u32..256)
        .map(|b| {
            let code = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_symbols_decode_to_text() {
        let vocab = "Hello\nĠworld\n,\nĠcaf\nÃ©\n<|endoftext|>\n<|startoftranscript|>\n<|nocaptions|>\n<|notimestamps|>\n";
        let tokenizer = Tokenizer::from_vocabulary(vocab).expect("vocabulary");
        assert_eq!(tokenizer.special().end_of_text, 5);
        assert_eq!(tokenizer.special().no_timestamps, 8);
        assert_eq!(
            tokenizer.decode(&[6, 8, 0, 1, 2, 3, 4, 5]),
            "Hello world, café"
        );
        let table = bytes_to_unicode();
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[b'A' as usize], 'A');
    }
}
