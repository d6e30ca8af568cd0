//! TRL's row shapes: detect a JSONL row's shape by its keys, check every field's type (errors
//! name the field: `field `messages[1].content`: expected a string`), and turn a row into the text
//! of each segment of the output kind (rendering conversations with [`super::chat`], extracting
//! implicit prompts). Tokenizing and writing happen in [`super::jsonl`].

use serde_json::{Map, Value};

use super::chat::Message;
use crate::chat_template::ChatTemplate;
use super::format::DatasetKind;
use super::jsonl::OutputFormat;

/// One line to a row; None for a blank line.
pub(super) fn parse_line(bytes: &[u8]) -> std::result::Result<Option<Row>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not valid UTF-8 ({e})"))?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = value.as_object().ok_or_else(|| "expected a JSON object".to_string())?;
    Row::parse(obj).map(Some)
}

/// A string or a conversation.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Content {
    Text(String),
    Chat(Vec<Message>),
}

/// One input row, by shape.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Row {
    Text(String),
    Messages(Vec<Message>),
    PromptCompletion(Content, Content),
    Preference(Option<Content>, Content, Content),
    /// Prompt, completion, label (true: desirable).
    Unpaired(Content, Content, bool),
    PromptOnly(Content),
}

impl Row {
    /// Detect the shape by keys and check every field's type.
    pub(super) fn parse(obj: &Map<String, Value>) -> std::result::Result<Row, String> {
        let has = |k: &str| obj.contains_key(k);
        let field = |k: &str| content(obj, k);
        if has("chosen") || has("rejected") {
            let prompt = if has("prompt") { Some(field("prompt")?) } else { None };
            let (c, r) = (field("chosen")?, field("rejected")?);
            same_variant(&c, &r, "rejected", "chosen")?;
            if let Some(p) = &prompt {
                same_variant(p, &c, "chosen", "prompt")?;
            }
            return Ok(Row::Preference(prompt, c, r));
        }
        if has("label") {
            let (p, c) = (field("prompt")?, field("completion")?);
            same_variant(&p, &c, "completion", "prompt")?;
            let label = match obj.get("label") {
                Some(Value::Bool(b)) => *b,
                Some(other) => return Err(format!("field `label`: expected true or false, found {}", kind_of(other))),
                None => return Err("missing field `label`".into()),
            };
            return Ok(Row::Unpaired(p, c, label));
        }
        if has("completion") {
            let (p, c) = (field("prompt")?, field("completion")?);
            same_variant(&p, &c, "completion", "prompt")?;
            return Ok(Row::PromptCompletion(p, c));
        }
        if has("messages") {
            return match field("messages")? {
                Content::Chat(m) => Ok(Row::Messages(m)),
                Content::Text(_) => Err("field `messages`: expected a list of {role, content} messages".into()),
            };
        }
        if has("text") {
            return match obj.get("text") {
                Some(Value::String(s)) => Ok(Row::Text(s.clone())),
                _ => Err("field `text`: expected a string".into()),
            };
        }
        if has("prompt") {
            return Ok(Row::PromptOnly(field("prompt")?));
        }
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        Err(format!("no known fields (expected text, messages, prompt/completion, or chosen/rejected); found {keys:?}"))
    }

    pub(super) fn is_conversational(&self) -> bool {
        match self {
            Row::Text(_) => false,
            Row::Messages(_) => true,
            Row::PromptCompletion(c, _) | Row::Preference(_, c, _) | Row::Unpaired(c, ..) | Row::PromptOnly(c) => {
                matches!(c, Content::Chat(_))
            }
        }
    }

    fn shape(&self) -> &'static str {
        match self {
            Row::Text(_) => "a `text` row",
            Row::Messages(_) => "a `messages` row",
            Row::PromptCompletion(..) => "a prompt/completion row",
            Row::Preference(..) => "a preference row",
            Row::Unpaired(..) => "an unpaired (prompt, completion, label) row",
            Row::PromptOnly(_) => "a prompt-only row",
        }
    }

    /// The label of an unpaired row.
    pub(super) fn label(&self) -> Option<bool> {
        match self {
            Row::Unpaired(_, _, l) => Some(*l),
            _ => None,
        }
    }

    /// The text of each segment of `kind` (see [`DatasetKind::segment_names`]).
    pub(super) fn to_segments(&self, kind: DatasetKind, tmpl: &ChatTemplate) -> std::result::Result<Vec<String>, String> {
        let cannot = || format!("{} cannot become a {} row; choose another --format", self.shape(), kind.name());
        Ok(match (kind, self) {
            (DatasetKind::TokenStream, Row::Text(t)) => vec![t.clone()],
            (DatasetKind::TokenStream, Row::Messages(m)) => vec![tmpl.render(m, false).map_err(|e| e.to_string())?],
            (DatasetKind::TokenStream, Row::PromptCompletion(p, c)) => {
                let (p, c) = split(p, c, "completion", tmpl)?;
                vec![p + &c]
            }
            (DatasetKind::Unpaired, Row::Unpaired(p, c, _)) => {
                let (p, c) = split(p, c, "completion", tmpl)?;
                vec![p, c] // the label segment is added after tokenizing
            }
            (DatasetKind::PromptCompletion, Row::PromptCompletion(p, c)) => {
                let (p, c) = split(p, c, "completion", tmpl)?;
                vec![p, c]
            }
            (DatasetKind::PromptCompletion, Row::Messages(m)) => {
                let (p, c) = split_last_assistant(m)?;
                let (p, c) = split(&Content::Chat(p.to_vec()), &Content::Chat(c.to_vec()), "messages", tmpl)?;
                vec![p, c]
            }
            (DatasetKind::Preference, Row::Preference(p, c, r)) => {
                let (p, c, r) = match p {
                    Some(p) => (p.clone(), c.clone(), r.clone()),
                    None => extract_prompt(c, r),
                };
                let (pc, c) = split(&p, &c, "chosen", tmpl)?;
                let (_, r) = split(&p, &r, "rejected", tmpl)?;
                vec![pc, c, r]
            }
            (DatasetKind::Prompts, Row::PromptOnly(p) | Row::PromptCompletion(p, _) | Row::Unpaired(p, ..) | Row::Preference(Some(p), ..)) => {
                vec![prompt_text(p, tmpl)?]
            }
            (DatasetKind::Prompts, Row::Preference(None, c, r)) => vec![prompt_text(&extract_prompt(c, r).0, tmpl)?],
            (DatasetKind::Prompts, Row::Messages(m)) => {
                let prompt = split_last_assistant(m).map(|(p, _)| p).unwrap_or(m);
                vec![tmpl.render(prompt, true).map_err(|e| e.to_string())?]
            }
            _ => return Err(cannot()),
        })
    }
}

/// The output kind for `format`, or the natural one for the first row's shape.
pub(super) fn resolve_kind(format: OutputFormat, first: &Row) -> DatasetKind {
    match format {
        OutputFormat::Text => DatasetKind::TokenStream,
        OutputFormat::Sft => DatasetKind::PromptCompletion,
        OutputFormat::Preference => DatasetKind::Preference,
        OutputFormat::Prompts => DatasetKind::Prompts,
        OutputFormat::Unpaired => DatasetKind::Unpaired,
        OutputFormat::Auto => match first {
            Row::Text(_) => DatasetKind::TokenStream,
            Row::Messages(_) | Row::PromptCompletion(..) => DatasetKind::PromptCompletion,
            Row::Preference(..) => DatasetKind::Preference,
            Row::Unpaired(..) => DatasetKind::Unpaired,
            Row::PromptOnly(_) => DatasetKind::Prompts,
        },
    }
}

/// Field `key` as a string or a list of messages.
fn content(obj: &Map<String, Value>, key: &str) -> std::result::Result<Content, String> {
    match obj.get(key) {
        None => Err(format!("missing field `{key}`")),
        Some(Value::String(s)) => Ok(Content::Text(s.clone())),
        Some(Value::Array(items)) => {
            let mut msgs = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let get = |f: &str| match item.get(f) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(_) => Err(format!("field `{key}[{i}].{f}`: expected a string")),
                    None if item.is_object() => Err(format!("field `{key}[{i}]`: missing `{f}`")),
                    None => Err(format!("field `{key}[{i}]`: expected a {{role, content}} object")),
                };
                msgs.push(Message { role: get("role")?, content: get("content")? });
            }
            Ok(Content::Chat(msgs))
        }
        Some(other) => Err(format!("field `{key}`: expected a string or a list of messages, found {}", kind_of(other))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Both strings or both conversations, as TRL requires of a row's fields.
fn same_variant(a: &Content, b: &Content, b_name: &str, a_name: &str) -> std::result::Result<(), String> {
    match (a, b) {
        (Content::Text(_), Content::Chat(_)) => Err(format!("field `{b_name}`: expected a string, like `{a_name}`")),
        (Content::Chat(_), Content::Text(_)) => {
            Err(format!("field `{b_name}`: expected a list of messages, like `{a_name}`"))
        }
        _ => Ok(()),
    }
}

/// Prompt and completion texts. Conversations are rendered so prompt + completion equals the
/// rendering of the whole, the prompt ending with the assistant generation prompt.
fn split(p: &Content, c: &Content, field: &str, tmpl: &ChatTemplate) -> std::result::Result<(String, String), String> {
    match (p, c) {
        (Content::Text(p), Content::Text(c)) => Ok((p.clone(), c.clone())),
        (Content::Chat(p), Content::Chat(c)) => tmpl
            .render_prompt_completion(p, c)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("field `{field}`: the completion must start with an `assistant` message")),
        _ => Err(format!("field `{field}`: mixes a string and a list of messages")),
    }
}

/// (everything before the last message, the last message), which must be the assistant's.
fn split_last_assistant(m: &[Message]) -> std::result::Result<(&[Message], &[Message]), String> {
    match m.split_last() {
        Some((last, _)) if last.role == "assistant" => Ok((&m[..m.len() - 1], &m[m.len() - 1..])),
        _ => Err("field `messages`: the last message must be from the `assistant` (it becomes the completion)".into()),
    }
}

fn prompt_text(p: &Content, tmpl: &ChatTemplate) -> std::result::Result<String, String> {
    match p {
        Content::Text(t) => Ok(t.clone()),
        Content::Chat(m) => tmpl.render(m, true).map_err(|e| e.to_string()),
    }
}

/// Implicit prompt: the longest common prefix of chosen and rejected (characters for strings,
/// whole messages for conversations). As in TRL, a space just before the split point moves to
/// the completions.
fn extract_prompt(chosen: &Content, rejected: &Content) -> (Content, Content, Content) {
    match (chosen, rejected) {
        (Content::Text(c), Content::Text(r)) => {
            let mut split = c.char_indices().zip(r.chars()).find(|((_, a), b)| a != b).map(|((i, _), _)| i);
            if split.is_none() {
                split = Some(c.len().min(r.len()));
            }
            let mut at = split.unwrap_or(0);
            if at > 0 && c.as_bytes()[at - 1] == b' ' {
                at -= 1;
            }
            (Content::Text(c[..at].into()), Content::Text(c[at..].into()), Content::Text(r[at..].into()))
        }
        (Content::Chat(c), Content::Chat(r)) => {
            let n = c.iter().zip(r).take_while(|(a, b)| a == b).count();
            (Content::Chat(c[..n].to_vec()), Content::Chat(c[n..].to_vec()), Content::Chat(r[n..].to_vec()))
        }
        // Rejected earlier by same_variant; keep everything as completion.
        (c, r) => (Content::Text(String::new()), c.clone(), r.clone()),
    }
}
