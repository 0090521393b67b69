//! The prompts RemoteReasoner was trained with (data files in `assets/prompts/`,
//! compiled in) and the Qwen ChatML text built from them.

use crate::base::Goal;

/// The grounding instruction (region, pixel and contour tasks).
pub const GROUNDING: &str = include_str!("../../../assets/prompts/grounding.txt");
/// The visual question answering instruction.
pub const VQA: &str = include_str!("../../../assets/prompts/vqa.txt");
/// The captioning instruction.
pub const CAPTION: &str = include_str!("../../../assets/prompts/caption.txt");
/// Qwen's default system prompt, used when the checkpoint has no `args.json`.
pub const DEFAULT_SYSTEM: &str = include_str!("../../../assets/prompts/system_default.txt");

/// The image placeholder in a prompt before expansion to one pad per visual token.
pub const IMAGE_PLACEHOLDER: &str = "<|vision_start|><|image_pad|><|vision_end|>";

/// The user message for a task, with `<image>` where the image goes.
pub fn user_content(goal: Goal, query: &str) -> String {
    match goal.prompt() {
        Goal::Vqa => format!("{VQA}\n<image>\nQuestion: {query}"),
        Goal::Caption => format!("<image>{CAPTION}"),
        _ => format!("{GROUNDING}\n<image>\nText description: {query}"),
    }
}

/// The ChatML text given to the tokenizer, image placeholder not yet expanded.
pub fn chat(system: &str, goal: Goal, query: &str) -> String {
    let content = user_content(goal, query).replace("<image>", IMAGE_PLACEHOLDER);
    format!("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n")
}

/// The system prompt of a checkpoint: `args.json`'s `system` field when present.
pub fn system_prompt(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("args.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("system").and_then(|s| s.as_str()).map(str::to_owned))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_SYSTEM.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_files_are_the_exact_interface_constants() {
        // Exact lengths and the reference's quirks: no trailing newline, no space after
        // "tags." and "question.", the newline + space before "final answer".
        assert_eq!((GROUNDING.len(), VQA.len(), CAPTION.len()), (970, 331, 55));
        assert!(GROUNDING.ends_with("</answer> tags.Perform the grounding task for the following input:"));
        assert!(GROUNDING.contains("<think> </think> and \n final answer"));
        assert!(VQA.contains("the question.Please follow"));
        assert_eq!(CAPTION, "You are an useful assistant. Please discribe the image.");
        assert_eq!(DEFAULT_SYSTEM, "You are a helpful assistant.");
    }

    #[test]
    fn chat_text_places_the_image_per_task() {
        let t = chat("SYS", Goal::Region, "where can planes take off?");
        assert!(t.starts_with("<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nYou are an object localization"));
        assert!(t.ends_with(
            "input:\n<|vision_start|><|image_pad|><|vision_end|>\nText description: where can planes take off?<|im_end|>\n<|im_start|>assistant\n"
        ));
        let c = chat("S", Goal::Caption, "ignored");
        assert!(
            c.contains("user\n<|vision_start|><|image_pad|><|vision_end|>You are an useful assistant. Please discribe")
        );
        assert!(chat("S", Goal::Vqa, "how many ships?").contains("\nQuestion: how many ships?<|im_end|>"));
    }

    #[test]
    fn system_prompt_from_args_json_or_default() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(system_prompt(dir.path()), DEFAULT_SYSTEM);
        std::fs::write(dir.path().join("args.json"), r#"{"system": "You are RemoteReasoner."}"#).unwrap();
        assert_eq!(system_prompt(dir.path()), "You are RemoteReasoner.");
    }
}
