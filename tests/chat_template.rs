//! Chat templates run by minijinja: a model's own Jinja template (SmolLM2's, a Llama-style one
//! with `raise_exception` and Python string methods), the built-in ChatML fallback, errors that
//! name the line, and the prompt/completion split that datasets and trainers use.

use plumb::chat_template::ChatTemplate;
use plumb::data::chat::Message;

/// SmolLM2-135M-Instruct's template, as its GGUF and tokenizer_config.json carry it.
const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A Llama-2-style template: BOS, `raise_exception` on bad role order, `.strip()` (pycompat),
/// block tags on their own lines (trim_blocks / lstrip_blocks as in transformers).
const LLAMA2_STYLE: &str = "{{ bos_token }}{% for message in messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if message['role'] == 'user' %}
        {{- '[INST] ' + message['content'].strip() + ' [/INST]' -}}
    {% else %}
        {{- ' ' + message['content'].strip() + ' ' + eos_token -}}
    {% endif %}
{% endfor %}";

fn user(s: &str) -> Message {
    Message::new("user", s)
}

#[test]
fn smollm2_template_renders_chatml_with_its_system_prompt() {
    let t = ChatTemplate::jinja(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
    assert!(t.is_model_template());
    let text = t.render(&[user("Hi")], true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let sys = [Message::new("system", "Be brief."), user("Hi")];
    assert_eq!(t.render(&sys, false).unwrap(), "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    // With a system message of its own, the model's template equals the built-in ChatML.
    assert_eq!(t.render(&sys, true).unwrap(), ChatTemplate::builtin().render(&sys, true).unwrap());
}

#[test]
fn prompt_completion_split_is_a_prefix_of_the_whole() {
    let t = ChatTemplate::jinja(SMOLLM2, "", "").unwrap();
    let (p, c) = t.render_prompt_completion(&[user("2+2?")], &[Message::new("assistant", "4")]).unwrap().unwrap();
    assert!(p.ends_with("<|im_start|>assistant\n"), "{p:?}");
    assert_eq!(c, "4<|im_end|>\n");
    assert_eq!(p + &c, t.render(&[user("2+2?"), Message::new("assistant", "4")], false).unwrap());
}

#[test]
fn llama_style_template_with_bos_strip_and_raise_exception() {
    let t = ChatTemplate::jinja(LLAMA2_STYLE, "<s>", "</s>").unwrap();
    let msgs = [user("  Hi there "), Message::new("assistant", "Hello! "), user("Bye")];
    assert_eq!(t.render(&msgs, false).unwrap(), "<s>[INST] Hi there [/INST] Hello! </s>[INST] Bye [/INST]");
    let err = t.render(&[Message::new("assistant", "x")], false).unwrap_err().to_string();
    assert!(err.contains("Conversation roles must alternate"), "{err}");
}

#[test]
fn syntax_errors_name_the_line_and_builtin_is_the_fallback() {
    let err = ChatTemplate::jinja("{% for m in messages %}\n{{ m['role'] }\n{% endfor %}", "", "").unwrap_err().to_string();
    assert!(err.contains("chat template") && err.contains("line 2"), "{err}");
    let tok = plumb::tokenizer::Tokenizer::byte_level();
    let t = ChatTemplate::for_tokenizer(&tok).unwrap();
    assert!(!t.is_model_template());
    assert_eq!(t.render(&[user("a")], true).unwrap(), "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n");
}
