"""Errors as the OpenAI API answers them: an error object with a status, and a validation
error turned into a 400 naming its field."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class APIError(Exception):
    """An error answered as an OpenAI-style error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind, self.code, self.headers = kind, code, headers

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def from_validation_errors(errors: list[dict[str, Any]]) -> APIError:
    """The first pydantic/FastAPI validation error as a 400 naming its field."""
    first = errors[0]
    # Drop FastAPI's "body" and pydantic's union-member tags ("str", "list[TextPart]", ...).
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _is_type_tag(p)]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    if first.get("type") == "extra_forbidden":
        message = "unknown or unsupported field (blendrt refuses fields it does not implement)"
    elif first.get("type") == "json_invalid":
        message = f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
        param = None
    return APIError(400, f"{param}: {message}" if param else message, param=param)


def _is_type_tag(part: object) -> bool:
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool", "none") or "[" in part or "-" in part
    )


def from_validation_error(e: ValidationError) -> APIError:
    return from_validation_errors(e.errors())
