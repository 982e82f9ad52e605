"""The one error shape of /api/v1 and the exceptions handlers raise to produce it.

Every error answer, whatever the route or status, is::

    {"error": {"code": "validation_error", "message": "…",
               "fields": [{"field": "traffic_nodes.1.name", "message": "…"}]}}

``code`` is stable and machine-readable, ``message`` is for a person, ``fields`` appears
only for 422 validation errors (paths as :func:`atlas.model.errors.describe_errors` gives
them, so the API and the /login forms say the same thing).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from atlas.model.errors import describe_errors


class FieldProblem(BaseModel):
    field: str = Field(description="Dotted path of the offending field ('' for the whole).")
    message: str = Field(description="What is wrong and what is expected.")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. validation_error.")
    message: str = Field(description="Human-readable explanation.")
    fields: list[FieldProblem] | None = Field(
        default=None, description="Per-field problems (422 validation errors only)."
    )


class ErrorBody(BaseModel):
    """The body of every /api/v1 error answer."""

    error: ErrorDetail


STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    428: "precondition_required",
    500: "internal_error",
}


class ApiError(Exception):
    """Raise from a handler to answer with the shared error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        fields: list[FieldProblem] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or STATUS_CODES.get(status, "error")
        self.message = message
        self.fields = fields
        self.headers = dict(headers or {})

    def body(self) -> ErrorBody:
        return ErrorBody(error=ErrorDetail(code=self.code, message=self.message,
                                           fields=self.fields))

    def response(self) -> web.Response:
        return web.Response(
            body=self.body().model_dump_json(exclude_none=True),
            status=self.status,
            content_type="application/json",
            headers={"Cache-Control": "no-store", **self.headers},
        )


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def conflict(message: str, *, code: str = "conflict") -> ApiError:
    """409: the request is well-formed but clashes with the current state (a name
    already taken, a node that is syncing, a revision that moved during the change)."""
    return ApiError(409, message, code=code)


def validation_error(exc: ValidationError, prefix: str = "") -> ApiError:
    """422 from a pydantic error; ``prefix`` is prepended to each field path."""
    fields = [
        FieldProblem(field=f"{prefix}{p['field']}" if p["field"] else prefix.rstrip("."),
                     message=p["message"])
        for p in describe_errors(exc)
    ]
    first = fields[0] if fields else None
    summary = (
        f"{first.field or 'request'}: {first.message}" if first else "the request is not valid"
    )
    if len(fields) > 1:
        summary += f" (and {len(fields) - 1} more)"
    return ApiError(422, summary, fields=fields)
