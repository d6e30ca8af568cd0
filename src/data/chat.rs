//! Conversations to text. plumb renders every conversation with one built-in template, ChatML:
//!
//! ```text
//! <|im_start|>system
//! You are helpful.<|im_end|>
//! <|im_start|>user
//! Hi<|im_end|>
//! <|im_start|>assistant
//! Hello!<|im_end|>
//! ```
//!
//! A tokenizer's own Jinja `chat_template` is not executed (plumb has no Jinja engine); the import
//! summary says so when one was present. ChatML is what Qwen, SmolLM and many fine-tunes use; with
//! tokenizers that do not declare `<|im_start|>`/`<|im_end|>` as special tokens (GPT-2) the markers
//! are tokenized as ordinary text, which still trains correctly, only less compactly.

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user`, `assistant` (any string is accepted).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message from a role and its content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message { role: role.into(), content: content.into() }
    }
}

/// Name of the built-in template, for reports.
pub const TEMPLATE_NAME: &str = "ChatML (built-in)";

/// Render `messages` with ChatML. With `add_generation_prompt`, end with the opening of an
/// assistant turn (`<|im_start|>assistant\n`) so a model continues as the assistant.
pub fn render_chatml(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str("<|im_start|>");
        out.push_str(&m.role);
        out.push('\n');
        out.push_str(&m.content);
        out.push_str("<|im_end|>\n");
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

/// Split a conversation into (prompt text, completion text) so that prompt + completion is the
/// rendering of `prompt ++ completion`, and the prompt ends with the assistant's generation
/// prompt. None when the completion does not start with an assistant turn (the rendered prompt is
/// then not a prefix of the whole).
pub fn render_prompt_completion(prompt: &[Message], completion: &[Message]) -> Option<(String, String)> {
    let p = render_chatml(prompt, true);
    let all: Vec<Message> = prompt.iter().chain(completion).cloned().collect();
    let full = render_chatml(&all, false);
    let c = full.strip_prefix(p.as_str())?.to_string();
    Some((p, c))
}
