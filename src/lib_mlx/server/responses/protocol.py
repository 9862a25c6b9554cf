"""Responses API request model (pydantic v2): strict types, lenient to unknown fields.

Input items keep the Responses shapes (``message``, ``function_call``, ``function_call_output``,
``reasoning``); ``convert`` turns them into the chat messages the core renders.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from .. import rules
from ..wire import WireModel

_LENIENT = ConfigDict(extra="allow", strict=True)


# --- content parts -------------------------------------------------------------------------


class ContentPart(WireModel):
    """One part of a message's content: text (``input_text``/``output_text``), a refusal, or
    media handed to the media layer (``input_image``, ``input_audio``)."""

    model_config = _LENIENT
    type: Literal["input_text", "output_text", "refusal", "input_image", "input_audio", "text"]
    text: str | None = None
    refusal: str | None = None
    image_url: str | None = None
    detail: str | None = None
    input_audio: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _payload_present(self) -> "ContentPart":
        if self.type in ("input_text", "output_text", "text") and self.text is None:
            raise ValueError(f"a {self.type} part needs text")
        if self.type == "input_image" and not self.image_url:
            raise ValueError("an input_image part needs image_url (file_id is not supported)")
        if self.type == "input_audio" and not self.input_audio:
            raise ValueError("an input_audio part needs input_audio")
        return self


# --- input items ---------------------------------------------------------------------------


class MessageItem(WireModel):
    model_config = _LENIENT
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(WireModel):
    model_config = _LENIENT
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(WireModel):
    model_config = _LENIENT
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[ContentPart]
    id: str | None = None
    status: str | None = None


class ReasoningText(WireModel):
    model_config = _LENIENT
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(WireModel):
    model_config = _LENIENT
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ReasoningText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None
    status: str | None = None


class ItemReference(WireModel):
    """An earlier output item named by its id; the store resolves it (``store.resolve``)."""

    model_config = _LENIENT
    type: Literal["item_reference"]
    id: str = Field(min_length=1)


_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning", "item_reference")


def _item_type(value: Any) -> str | None:
    """The tag of an input item; a bare ``{"role", "content"}`` is a message."""
    kind = (value.get("type") or "message") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in _ITEM_TYPES else None


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[ItemReference, Tag("item_reference")],
    Discriminator(
        _item_type,
        custom_error_type="invalid_item_type",
        custom_error_message=f"unsupported input item type; expected one of {', '.join(_ITEM_TYPES)}",
    ),
]


# --- tools ---------------------------------------------------------------------------------


class FunctionTool(WireModel):
    """A function tool in the flat Responses shape."""

    model_config = _LENIENT
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunctionChoice(WireModel):
    model_config = _LENIENT
    type: Literal["function"]
    name: str


class ReasoningParam(WireModel):
    model_config = _LENIENT
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    # Extension (OpenRouter's name): a cap on reasoning tokens, as chat's thinking_budget.
    max_tokens: int | None = Field(default=None, ge=0)


# --- the request ---------------------------------------------------------------------------


class ResponsesRequest(WireModel):
    model_config = _LENIENT

    model: str | None = None
    input: str | list[InputItem]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    reasoning: ReasoningParam | None = None
    thinking: bool | None = None
    store: bool = True
    stream: bool = False
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    text: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    background: bool | None = None
    # lib_mlx extensions shared with Chat Completions
    chat_template_kwargs: dict[str, Any] | None = None
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = None
    # Log-probabilities (``include: ["message.output_text.logprobs"]``), a cap on tool calls,
    # and the extensions shared with chat: penalties, bias, thinking budget.
    include: list[str] | None = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = Field(default=None, ge=1)
    thinking_budget: int | None = Field(default=None, ge=0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    logit_bias: dict[str, float] | None = None

    @field_validator("input")
    @classmethod
    def _input_not_empty(cls, value: str | list[Any]) -> str | list[Any]:
        if isinstance(value, list) and not value:
            raise ValueError("input needs at least one item")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            if len(value) > 16:
                raise ValueError("metadata holds at most 16 keys")
            for key, item in value.items():
                if len(key) > 64 or len(item) > 512:
                    raise ValueError("metadata keys are at most 64 characters and values at most 512")
        return value

    @model_validator(mode="after")
    def _tool_choice_needs_tools(self) -> "ResponsesRequest":
        named = self.tool_choice.name if isinstance(self.tool_choice, NamedFunctionChoice) else None
        rules.check_tool_choice((t.name for t in self.tools or []), forced=self.tool_choice == "required", name=named)
        return self

    # derived values ---------------------------------------------------------------------
    def input_items(self) -> list[dict[str, Any]]:
        """The input as item dicts (a string is one user message)."""
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}]
        return [item.model_dump(exclude_none=True) for item in self.input]

    def thinking_flag(self) -> bool | None:
        effort = self.reasoning.effort if self.reasoning is not None else None
        return rules.thinking_flag(self.thinking, self.chat_template_kwargs, effort)

    def tool_choice_wire(self) -> str | dict[str, Any]:
        """``tool_choice`` as the Responses body echoes it."""
        if isinstance(self.tool_choice, NamedFunctionChoice):
            return {"type": "function", "name": self.tool_choice.name}
        return self.tool_choice or "auto"


def parse_request(data: dict[str, Any]) -> ResponsesRequest:
    """Validate a request body; the most specific problem becomes a 400 naming its ``param``
    (``input[0].content``)."""
    return rules.parse(ResponsesRequest, data, api="responses", tags=_ITEM_TYPES)
