//! Text in and out: a Hugging Face tokenizer, chat templates, and incremental decoding.
//!
//! [`Tokenizer::from_dir`] reads a model folder's `tokenizer.json` (required),
//! `tokenizer_config.json` (special token strings and the Jinja `chat_template`) and
//! `generation_config.json` (EOS ids). Special ids are resolved from those files, not
//! hard-coded. Chat templates are rendered with [minijinja](https://docs.rs/minijinja)
//! configured like Hugging Face's `apply_chat_template` (trim_blocks, lstrip_blocks, loop
//! controls, Python string methods, `raise_exception`).
//!
//! A diffusion sampler commits tokens out of order. [`IncrementalDecoder`] streams the text of
//! the committed *prefix* of the response (up to the first still-masked position), holding
//! back a trailing partial character until the tokens that complete it arrive.

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ChatMessage {
    /// `"system"`, `"user"` or `"assistant"`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Special token ids a tokenizer folder defines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenizerSpecials {
    /// Beginning of text (`bos_token`).
    pub bos: Option<u32>,
    /// End of text: `eos_token`, and the `eos_token_id`s of `generation_config.json`.
    pub eos: Vec<u32>,
    /// End of a chat turn (`<|eot_id|>` for LLaDA, `<|im_end|>` for Qwen/Dream), if the
    /// vocabulary has one.
    pub end_of_turn: Option<u32>,
    /// The mask token (`<|mdm_mask|>`, `<|mask|>`), if the vocabulary has one.
    pub mask: Option<u32>,
    /// Padding (`pad_token`).
    pub pad: Option<u32>,
}

/// End-of-turn markers of the chat formats in use, looked up in the vocabulary in this order.
const END_OF_TURN: &[&str] = &["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>"];
/// Mask tokens of the diffusion models in use.
const MASKS: &[&str] = &["<|mdm_mask|>", "<|mask|>", "[MASK]"];

/// A Hugging Face tokenizer with its chat template and special ids.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    specials: TokenizerSpecials,
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{}: {e}", path.display()))
}

/// What this crate reads from a `tokenizer_config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenizerConfig {
    /// The Jinja chat template (a named list of templates contributes its `"default"`).
    pub chat_template: Option<String>,
    /// `bos_token`.
    pub bos_token: Option<String>,
    /// `eos_token`.
    pub eos_token: Option<String>,
    /// `pad_token`.
    pub pad_token: Option<String>,
}

impl TokenizerConfig {
    /// Parses the text of a `tokenizer_config.json`. Special tokens may be strings or
    /// `{"content": ...}` objects; `null` means absent; other fields are ignored.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the text is not a JSON object or a field this crate reads has
    /// another type.
    pub fn from_json(text: &str) -> Result<Self> {
        let bad = |reason: String| Error::Tokenizer(format!("tokenizer_config.json: {reason}"));
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let fields = json
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let token = |name: &str| -> Result<Option<String>> {
            match fields.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(serde_json::Value::Object(o)) => match o.get("content") {
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    _ => Err(bad(format!("`{name}` has no string `content`"))),
                },
                Some(other) => Err(bad(format!("`{name}` must be a string, got {other}"))),
            }
        };
        let chat_template = match fields.get("chat_template") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            Some(other) => {
                return Err(bad(format!("chat_template must be a string, got {other}")));
            }
        };
        Ok(Self {
            chat_template,
            bos_token: token("bos_token")?,
            eos_token: token("eos_token")?,
            pad_token: token("pad_token")?,
        })
    }
}

/// The `eos_token_id` of a `generation_config.json` (a number, a list of numbers, or absent),
/// each a token id.
///
/// # Errors
/// [`Error::Config`] if the text is not a JSON object, or `eos_token_id` has another type or
/// holds a value that is not a 32-bit token id (it would otherwise be truncated).
pub fn generation_eos_ids(text: &str) -> Result<Vec<u32>> {
    let bad = |reason: String| Error::Config { path: None, reason };
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let fields = json
        .as_object()
        .ok_or_else(|| bad("generation config is not a JSON object".into()))?;
    let id = |v: &serde_json::Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad(format!("`eos_token_id` holds {v}, which is not a token id")))
    };
    match fields.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(list)) => list.iter().map(id).collect(),
        Some(v) => Ok(vec![id(v)?]),
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json`, and `tokenizer_config.json` and `generation_config.json` when
    /// present, from a model folder.
    ///
    /// # Errors
    /// [`Error::Io`] if `tokenizer.json` is missing; [`Error::Tokenizer`] if a file is
    /// malformed.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let json = dir.join("tokenizer.json");
        if !json.is_file() {
            return Err(Error::io(
                &json,
                std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
            ));
        }
        let config = dir.join("tokenizer_config.json");
        let generation = dir.join("generation_config.json");
        Self::from_files(
            &json,
            config.is_file().then_some(config.as_path()),
            generation.is_file().then_some(generation.as_path()),
        )
    }

    /// Loads a tokenizer from explicit files.
    ///
    /// # Errors
    /// As [`from_dir`](Self::from_dir).
    pub fn from_files(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
        generation_config: Option<&Path>,
    ) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(|e| tok_err(tokenizer_json, e))?;
        let read = |path: &Path| std::fs::read_to_string(path).map_err(|e| Error::io(path, e));
        let config = match tokenizer_config {
            Some(path) => TokenizerConfig::from_json(&read(path)?)
                .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?,
            None => TokenizerConfig::default(),
        };
        let id = |s: &Option<String>| s.as_deref().and_then(|t| inner.token_to_id(t));
        let mut eos: Vec<u32> = id(&config.eos_token).into_iter().collect();
        if let Some(path) = generation_config {
            let extra = generation_eos_ids(&read(path)?).map_err(|e| match e {
                Error::Config { path: None, reason } => Error::Config {
                    path: Some(path.to_path_buf()),
                    reason,
                },
                other => other,
            })?;
            for e in extra {
                if !eos.contains(&e) {
                    eos.push(e);
                }
            }
        }
        let specials = TokenizerSpecials {
            bos: id(&config.bos_token),
            eos,
            end_of_turn: END_OF_TURN.iter().find_map(|t| inner.token_to_id(t)),
            mask: MASKS.iter().find_map(|t| inner.token_to_id(t)),
            pad: id(&config.pad_token),
        };
        Ok(Self {
            inner,
            chat_template: config.chat_template,
            bos_token: config.bos_token,
            eos_token: config.eos_token,
            specials,
        })
    }

    /// The special ids.
    pub fn specials(&self) -> &TokenizerSpecials {
        &self.specials
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether the folder has a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor (for
    /// example a BOS).
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the tokenizer fails.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Text of `ids`.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the tokenizer fails (for example on an unknown id).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Renders the chat template for `messages`, ending with the assistant header when
    /// `add_generation_prompt` is set. Tokenize the result with `add_special_tokens = false`:
    /// the template writes the BOS itself.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the folder has no template or the template fails to parse or
    /// render (including its own `raise_exception`).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let source = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::Tokenizer("tokenizer_config.json has no chat_template".into()))?;
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        let template = env
            .template_from_str(source)
            .map_err(|e| Error::Tokenizer(format!("chat template does not parse: {e}")))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.clone().unwrap_or_default(),
                eos_token => self.eos_token.clone().unwrap_or_default(),
            })
            .map_err(|e| Error::Tokenizer(format!("chat template failed to render: {e}")))
    }

    /// A decoder that streams the text of a growing response.
    pub fn incremental_decoder(&self, mask: u32, stop: Vec<u32>) -> IncrementalDecoder<'_> {
        IncrementalDecoder {
            tokenizer: self,
            mask,
            stop,
            emitted: 0,
            text: String::new(),
            done: false,
        }
    }
}

/// Streams the text of the committed prefix of a response. See the [module docs](self).
#[derive(Debug)]
pub struct IncrementalDecoder<'a> {
    tokenizer: &'a Tokenizer,
    mask: u32,
    stop: Vec<u32>,
    /// Bytes of `text` already returned.
    emitted: usize,
    text: String,
    done: bool,
}

impl IncrementalDecoder<'_> {
    /// Given the whole response as it stands (masks where nothing is committed yet), returns
    /// the text that became final since the last call: the committed prefix up to the first
    /// mask or stop token, minus a trailing incomplete character.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if decoding fails.
    pub fn push(&mut self, response: &[u32]) -> Result<String> {
        if self.done {
            return Ok(String::new());
        }
        let end = response
            .iter()
            .position(|&t| t == self.mask || self.stop.contains(&t))
            .unwrap_or(response.len());
        let finished = end < response.len() && self.stop.contains(&response[end]);
        let text = self.tokenizer.decode(&response[..end], true)?;
        // A character split across tokens decodes to U+FFFD until its last token arrives.
        let stable = if finished {
            text.len()
        } else {
            text.trim_end_matches('\u{FFFD}').len()
        };
        // Some decoders rewrite earlier text as tokens arrive (rare); what was streamed stays
        // streamed, and new text is only taken while the prefix still matches.
        let previous = &self.text[..self.emitted];
        if !text.starts_with(previous) {
            return Ok(String::new());
        }
        let new = if stable > self.emitted {
            text[self.emitted..stable].to_string()
        } else {
            String::new()
        };
        self.emitted = self.emitted.max(stable);
        self.text = text;
        self.done = finished || end == response.len();
        Ok(new)
    }

    /// Everything returned so far.
    pub fn text(&self) -> &str {
        &self.text[..self.emitted]
    }
}
