"""Which token a rendered prompt ends with: the key of a scripted chain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._families import FAMILIES

# The text of the last prompt token, by family and situation:
#   qwen3        thinking    "\n"               ... "<|im_start|>assistant\n" (also after a tool result)
#                no_thinking "\n\n"             ... "<|im_start|>assistant\n<think>\n\n</think>\n\n"
#   gemma4_text  thinking    "\n"               ... "<|turn>model\n"
#                no_thinking "<channel|>"       ... "<|turn>model\n<|channel>thought\n<channel|>"
#                after_tool  "<tool_response|>" ... a tool result continues the model turn
#   llama        default     "\n\n"             ... "<|start_header_id|>assistant<|end_header_id|>\n\n"
# Note that mlx-lm's TokenizerWrapper.apply_chat_template passes enable_thinking=True by default
# when the vocabulary has think markers (qwen3, gemma4_text); a bare HF tokenizer leaves it unset,
# which Qwen3's template treats as on and Gemma 4's as off.
TRIGGERS: Mapping[str, Mapping[str, str]] = {name: dict(spec.triggers) for name, spec in FAMILIES.items()}

# The token every scripted chain ends with (appended when missing).
END_OF_TURN: Mapping[str, str] = {name: spec.end_of_turn for name, spec in FAMILIES.items()}

# The families' real chat templates (what build_model writes unless given another).
CHAT_TEMPLATES: Mapping[str, str] = {name: spec.chat_template for name, spec in FAMILIES.items()}


def trigger_for(tokenizer_or_dir: Any, messages: Sequence[Mapping[str, Any]], **template_kwargs: Any) -> str:
    """The text of the last token of ``messages`` rendered with a generation prompt.

    ``tokenizer_or_dir`` is a model directory, an mlx-lm ``TokenizerWrapper`` or a Hugging Face
    tokenizer; ``template_kwargs`` go to ``apply_chat_template`` (``tools=...``,
    ``enable_thinking=False``...). The result is what ``chains`` keys on in ``build_model``.
    """
    tokenizer = tokenizer_or_dir
    if isinstance(tokenizer_or_dir, (str, Path)):
        from mlx_lm.utils import load_tokenizer

        tokenizer = load_tokenizer(Path(tokenizer_or_dir))
    prompt = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=True, **template_kwargs
    )
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    return tokenizer.decode(ids[-1:], skip_special_tokens=False)
