"""Anthropic Messages request models (pydantic v2): strict types, lenient to unknown fields.

Follows Anthropic's published request types: ``messages`` of ``user``/``assistant`` turns whose
content is a string or blocks (``text``, ``image``, ``tool_use``, ``tool_result``,
``thinking``/``redacted_thinking`` handed back), ``system``, ``max_tokens`` (required),
sampling, ``stop_sequences``, ``tools``, ``tool_choice``, ``thinking``, ``metadata``. Every
problem is a 400 naming its field (``messages[1].content[0].tool_use_id``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from .. import rules

_LENIENT = ConfigDict(extra="allow", strict=True)


# --- content blocks ------------------------------------------------------------------------


class TextBlock(BaseModel):
    model_config = _LENIENT
    type: Literal["text"]
    text: str


class ImageSource(BaseModel):
    model_config = _LENIENT
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _payload_present(self) -> "ImageSource":
        if self.type == "base64" and not (self.data and self.media_type):
            raise ValueError("a base64 image source needs media_type and data")
        if self.type == "url" and not self.url:
            raise ValueError("a url image source needs url")
        return self

    def url_for_media(self) -> str:
        """As the media layer reads an image: a data URL, or the URL itself."""
        if self.type == "base64":
            return f"data:{self.media_type};base64,{self.data}"
        return self.url or ""


class ImageBlock(BaseModel):
    model_config = _LENIENT
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(BaseModel):
    model_config = _LENIENT
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


_RESULT_BLOCKS = ("text", "image")


def _result_block_type(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in _RESULT_BLOCKS else None


ResultBlock = Annotated[
    Annotated[TextBlock, Tag("text")] | Annotated[ImageBlock, Tag("image")],
    Discriminator(
        _result_block_type,
        custom_error_type="invalid_block_type",
        custom_error_message="unsupported tool_result content block type; expected text or image",
    ),
]


class ToolResultBlock(BaseModel):
    model_config = _LENIENT
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[ResultBlock] | None = None
    is_error: bool | None = None


class ThinkingBlock(BaseModel):
    model_config = _LENIENT
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(BaseModel):
    model_config = _LENIENT
    type: Literal["redacted_thinking"]
    data: str


BLOCK_TYPES = ("text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking")


def _block_type(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in BLOCK_TYPES else None


Block = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[RedactedThinkingBlock, Tag("redacted_thinking")],
    Discriminator(
        _block_type,
        custom_error_type="invalid_block_type",
        custom_error_message=f"unsupported content block type; expected one of {', '.join(BLOCK_TYPES)}",
    ),
]

# Which blocks each role may send (Anthropic's own rule).
_ROLE_BLOCKS = {
    "user": ("text", "image", "tool_result"),
    "assistant": ("text", "tool_use", "thinking", "redacted_thinking"),
}


class MessageParam(BaseModel):
    model_config = _LENIENT
    role: Literal["user", "assistant"]
    content: str | list[Block]

    @model_validator(mode="after")
    def _blocks_fit_the_role(self) -> "MessageParam":
        if isinstance(self.content, list):
            for block in self.content:
                if block.type not in _ROLE_BLOCKS[self.role]:
                    raise ValueError(f"a {self.role} message cannot hold a {block.type} block")
        return self


# --- tools, choice, thinking --------------------------------------------------------------


class ToolParam(BaseModel):
    model_config = _LENIENT
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class ToolChoiceAuto(BaseModel):
    model_config = _LENIENT
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(BaseModel):
    model_config = _LENIENT
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(BaseModel):
    model_config = _LENIENT
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(BaseModel):
    model_config = _LENIENT
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


class ThinkingEnabled(BaseModel):
    model_config = _LENIENT
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1)


class ThinkingDisabled(BaseModel):
    model_config = _LENIENT
    type: Literal["disabled"]


class ThinkingAdaptive(BaseModel):
    """The model decides how much to think: here, thinking on."""

    model_config = _LENIENT
    type: Literal["adaptive"]


Thinking = Annotated[ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive, Field(discriminator="type")]


class Metadata(BaseModel):
    model_config = _LENIENT
    user_id: str | None = Field(default=None, max_length=256)


# --- the requests --------------------------------------------------------------------------

_TAGS = (*BLOCK_TYPES, "auto", "any", "tool", "none", "enabled", "disabled", "adaptive")


class CountTokensRequest(BaseModel):
    """``POST /v1/messages/count_tokens``: what shapes the prompt."""

    model_config = _LENIENT

    model: str | None = None
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None

    @model_validator(mode="after")
    def _conversation_rules(self) -> "CountTokensRequest":
        named = self.tool_choice.name if isinstance(self.tool_choice, ToolChoiceTool) else None
        forced = isinstance(self.tool_choice, ToolChoiceAny)
        rules.check_tool_choice((t.name for t in self.tools or []), forced=forced, name=named)
        return self

    def thinking_flag(self) -> bool | None:
        """``enabled``/``adaptive`` on, ``disabled`` off; absent: the load config's default."""
        if self.thinking is None:
            return None
        return rules.thinking_flag(self.thinking.type != "disabled")

    def system_text(self) -> str | None:
        if self.system is None:
            return None
        if isinstance(self.system, str):
            return self.system
        return "\n\n".join(block.text for block in self.system)


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``."""

    max_tokens: int = Field(ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    stream: bool = False
    metadata: Metadata | None = None

    @model_validator(mode="after")
    def _budget_fits(self) -> "MessagesRequest":
        if isinstance(self.thinking, ThinkingEnabled) and self.thinking.budget_tokens >= self.max_tokens:
            raise ValueError("thinking.budget_tokens must be less than max_tokens")
        return self


def parse_message_request(data: dict[str, Any]) -> MessagesRequest:
    return rules.parse(MessagesRequest, data, api="messages", tags=_TAGS)


def parse_count_request(data: dict[str, Any]) -> CountTokensRequest:
    return rules.parse(CountTokensRequest, data, api="messages_count", tags=_TAGS)
