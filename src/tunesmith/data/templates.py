"""Render chat messages with the tokenizer's chat template, or a plain fallback when it has none."""

FALLBACK_HEADERS = {
    "system": "### System:\n",
    "user": "### Instruction:\n",
    "assistant": "### Response:\n",
}


def render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """Prompt text of `messages`; with add_generation_prompt it ends where the answer starts."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    text = "".join(
        f"{FALLBACK_HEADERS[m['role']]}{m['content']}{end_of_turn(tokenizer, m['role'])}"
        for m in messages
    )
    return text + (FALLBACK_HEADERS["assistant"] if add_generation_prompt else "")


def end_of_turn(tokenizer, role: str) -> str:
    # Without a template the assistant's turn ends in EOS so the model learns to stop.
    return (tokenizer.eos_token or "") + "\n\n" if role == "assistant" else "\n\n"
