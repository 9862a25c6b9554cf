"""The base of every request model: strict types, lenient to unknown fields, and ``null`` for
an optional field taken as its absence.

SDKs and frameworks send ``"stream": null``, ``"tools": null``, ``"store": null`` for what
their user left unset; OpenAI accepts those, so a ``null`` here gives the field its default,
for every optional field alike (a required field's ``null`` stays an error naming it).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict) and None in data.values():
            fields = cls.model_fields
            return {
                key: value
                for key, value in data.items()
                if value is not None or key not in fields or fields[key].is_required()
            }
        return data
