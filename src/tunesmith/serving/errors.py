"""OpenAI-shaped errors: `{"error": {"message", "type", "code"}}` with a 4xx status for anything the
client got wrong (the openai client retries 5xx, so a user error must never be one)."""

from typing import Optional


class ApiError(Exception):
    """An error answered to the client as OpenAI error JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str = "invalid_request",
        type: str = "invalid_request_error",
        headers: Optional[dict] = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.type = status, message, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


def bad_request(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, code)


def unknown_model(name: str, known: list[str]) -> ApiError:
    return ApiError(
        404,
        f"model {name!r} does not exist; loaded: {', '.join(known) or 'none'} (GET /v1/models)",
        "model_not_found",
    )


def queue_full(limit: int) -> ApiError:
    return ApiError(
        429,
        f"the server already holds {limit} requests (--max-queue); retry shortly",
        "queue_full",
        "rate_limit_error",
        {"Retry-After": "1"},
    )


def timed_out(seconds: float) -> ApiError:
    return ApiError(408, f"the request took longer than {seconds:g} s (--timeout)", "timeout")
