"""Errors as OpenAI's API sends them: an HTTP status and `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class ApiError(Exception):
    """A request the server refuses (or cannot serve); the message says why, `param` names the field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def unavailable(message: str) -> ApiError:
    return ApiError(503, message, type="server_error", code="unavailable", headers={"Retry-After": "5"})
