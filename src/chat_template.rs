//! Chat templates: a model's own Jinja `chat_template` (GGUF `tokenizer.chat_template`, or Hugging
//! Face's tokenizer_config.json / chat_template.jinja) executed by the `minijinja` engine, as
//! `transformers`' `apply_chat_template` does: `messages`, `add_generation_prompt`, `bos_token`,
//! `eos_token` and `raise_exception` in scope, `trim_blocks` and `lstrip_blocks` on, Python string
//! methods (`.strip()`, `.startswith()`, ...) through minijinja-contrib's pycompat. A model without
//! a template falls back to plumb's built-in ChatML (src/data/chat.rs).

use crate::data::chat::{render_chatml, Message};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use minijinja::{Environment, ErrorKind, Value};

/// How conversations become text for one model.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    jinja: Option<String>,
    bos: String,
    eos: String,
}

/// Name of the fallback, for reports.
pub const BUILTIN_NAME: &str = crate::data::chat::TEMPLATE_NAME;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters are valid"),
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("the chat template raised: {msg}")))
    });
    env
}

fn template_error(e: minijinja::Error) -> Error {
    let mut msg = e.to_string();
    if let Some(line) = e.line() {
        msg = format!("line {line}: {msg}");
    }
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    Error::config("chat template", msg)
}

impl ChatTemplate {
    /// The built-in ChatML.
    pub fn builtin() -> ChatTemplate {
        ChatTemplate { jinja: None, bos: String::new(), eos: String::new() }
    }

    /// A Jinja template with the tokenizer's BOS and EOS strings; a syntax error is reported with
    /// its line.
    pub fn jinja(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        environment().template_from_str(source).map_err(template_error)?;
        Ok(ChatTemplate { jinja: Some(source.to_string()), bos: bos_token.into(), eos: eos_token.into() })
    }

    /// The tokenizer's own template, or the built-in ChatML when it has none.
    pub fn for_tokenizer(tok: &Tokenizer) -> Result<ChatTemplate> {
        match tok.chat_template() {
            Some(src) => {
                let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
                ChatTemplate::jinja(&src, &name(tok.bos_id()), &name(tok.eos_id()))
            }
            None => Ok(ChatTemplate::builtin()),
        }
    }

    /// True when this is the model's own template (not the fallback).
    pub fn is_model_template(&self) -> bool {
        self.jinja.is_some()
    }

    /// For reports: "the model's chat_template" or the built-in's name.
    pub fn name(&self) -> &'static str {
        if self.jinja.is_some() { "the model's own chat_template (Jinja)" } else { BUILTIN_NAME }
    }

    /// Render `messages`; with `add_generation_prompt` the text ends where the assistant's reply
    /// begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let Some(src) = &self.jinja else { return Ok(render_chatml(messages, add_generation_prompt)) };
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| Value::from(std::collections::BTreeMap::from([("role", Value::from(m.role.as_str())), ("content", Value::from(m.content.as_str()))])))
            .collect();
        let ctx = minijinja::context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        };
        environment().render_str(src, ctx).map_err(template_error)
    }

    /// (prompt text, completion text) with prompt + completion = the rendering of the whole
    /// conversation and the prompt ending with the generation prompt. None when the rendered
    /// prompt is not a prefix of the whole (the completion does not start an assistant turn, or
    /// the template renders the last turn differently).
    pub fn render_prompt_completion(&self, prompt: &[Message], completion: &[Message]) -> Result<Option<(String, String)>> {
        let p = self.render(prompt, true)?;
        let all: Vec<Message> = prompt.iter().chain(completion).cloned().collect();
        let full = self.render(&all, false)?;
        Ok(full.strip_prefix(p.as_str()).map(|c| (p.clone(), c.to_string())))
    }
}
