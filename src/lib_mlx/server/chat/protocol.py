"""Chat Completions request model (pydantic v2): strict types, lenient to unknown fields.

Every problem is a 400 naming its ``param`` (``messages[0].role``; see
``server.errors.from_validation_error``). Limits that need the model are checked later: a
prompt that fills the context is 400 ``context_length_exceeded``, and ``max_tokens`` (or
``max_completion_tokens``/``max_output_tokens``) beyond what the context has left after the
prompt is clamped to that room -- the answer then ends with ``finish_reason: "length"``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from ..wire import WireModel

from .. import rules

_LENIENT = ConfigDict(extra="allow", strict=True)


class FunctionDef(WireModel):
    model_config = _LENIENT
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(WireModel):
    model_config = _LENIENT
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(WireModel):
    model_config = _LENIENT
    name: str


class NamedToolChoice(WireModel):
    model_config = _LENIENT
    type: Literal["function"]
    function: NamedFunction


class ToolCallFunction(WireModel):
    model_config = _LENIENT
    name: str
    arguments: str | dict[str, Any] = ""


class ToolCallIn(WireModel):
    model_config = _LENIENT
    id: str | None = None
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ContentPart(WireModel):
    """One part of a message's content. Media parts (``image_url``, ``input_audio``) are decoded
    by the media layer."""

    model_config = _LENIENT
    type: Literal["text", "image_url", "input_audio", "input_text", "image", "audio", "input_image"]
    text: str | None = None
    image_url: dict[str, Any] | str | None = None
    input_audio: dict[str, Any] | None = None


class ChatMessage(WireModel):
    model_config = _LENIENT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None

    @model_validator(mode="after")
    def _content_present(self) -> "ChatMessage":
        if self.role != "assistant" and self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class StreamOptions(WireModel):
    model_config = _LENIENT
    include_usage: bool = False


class ChatCompletionRequest(WireModel):
    model_config = _LENIENT

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    # OpenAI's seed is an int64; MLX seeds with a uint64, so negatives wrap (see _seed_bits).
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    thinking: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    # Extension (vLLM's name): keep generating through end-of-sequence tokens up to max_tokens.
    ignore_eos: bool = False
    # Structured output, log-probabilities, penalties and bias (see ``server.structured``).
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    # Extensions: mlx-lm's / vLLM's multiplicative penalty, and a cap on reasoning tokens.
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    thinking_budget: int | None = Field(default=None, ge=0)

    @field_validator("seed")
    @classmethod
    def _seed_bits(cls, seed: int | None) -> int | None:
        return None if seed is None else seed % 2**64

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        return stop

    @model_validator(mode="after")
    def _tool_choice_needs_tools(self) -> "ChatCompletionRequest":
        named = self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else None
        rules.check_tool_choice(
            (t.function.name for t in self.tools or []), forced=self.tool_choice == "required", name=named
        )
        return self

    # derived values (the shared rules of ``server.rules``) --------------------------------
    def max_new_tokens(self) -> int | None:
        return rules.budget(self.max_completion_tokens, self.max_tokens, self.max_output_tokens)

    def stop_list(self) -> tuple[str, ...]:
        return rules.stop_tuple(self.stop)

    def thinking_flag(self) -> bool | None:
        return rules.thinking_flag(self.thinking, self.chat_template_kwargs, self.reasoning_effort)
