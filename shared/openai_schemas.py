"""OpenAI-compatible request and response models (the subset the ensemble serves).

Requests tolerate unknown fields, as OpenAI clients send options we do not use; fields we do
use are range-checked like every other request, and take their JSON type only (``"stream":
0`` or ``"temperature": "0.5"`` is a 422, not a guess).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.json_scalars import check_scalars


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class LenientRequest(Lenient):
    """Unknown fields pass; booleans and numbers take their JSON type only
    (:mod:`shared.json_scalars`)."""

    @model_validator(mode="before")
    @classmethod
    def _json_scalars(cls, data: Any) -> Any:
        return check_scalars(cls, data)


class OAChatMessage(Lenient):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text; content parts of type "text" are joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class _SamplingFields(LenientRequest):
    model: str | None = None
    n: int = Field(default=1, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


TokenId = Annotated[int, Field(ge=0)]


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]] = Field(
        description="Text, texts, token ids (of the served model's vocabulary) or lists of them."
    )
    max_tokens: int = Field(default=16, ge=0)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if v in ("", []):
            raise ValueError("prompt must not be empty")
        return v


class ChatCompletionRequest(_SamplingFields):
    messages: list[OAChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    def token_budget(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = Field(
        default=0, description="Generated tokens that are not in the answer (the search)."
    )


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    completion_tokens_details: CompletionTokensDetails | None = None


class ChatCompletionChoice(Lenient):
    index: int = 0
    message: OAChatMessage
    finish_reason: str | None = None


class ChatCompletionResponse(Lenient):
    """An OpenAI chat completion as a client reads it (any OpenAI-compatible server)."""

    id: str = ""
    model: str | None = None
    choices: list[ChatCompletionChoice] = Field(min_length=1)
    usage: Usage | None = None

    def text(self) -> str:
        """The first choice's text."""
        return self.choices[0].message.text()


class CompletionChoice(Lenient):
    index: int = 0
    text: str = ""
    finish_reason: str | None = None


class CompletionResponse(Lenient):
    """An OpenAI text completion as a client reads it (any OpenAI-compatible server)."""

    id: str = ""
    model: str | None = None
    choices: list[CompletionChoice] = Field(min_length=1)
    usage: Usage | None = None

    def text(self) -> str:
        """The first choice's text."""
        return self.choices[0].text


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "rationalyst"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    """An error as OpenAI's API writes it (the openai SDKs read ``message``); ``request_id``
    is the gateway's X-Request-Id."""

    message: str = Field(description="For people; names the parameter at fault.")
    type: str = Field(
        description="invalid_request_error (400, 404), authentication_error (401), "
        "server_error (503, 504, 500).",
        examples=["invalid_request_error"],
    )
    param: str | None = Field(default=None, description="The request parameter at fault.")
    code: str | None = Field(
        default=None,
        description="unsupported_parameter, unsupported_value, invalid_value, model_not_found, "
        "or the gateway's own error type (service_unavailable, timeout, ...).",
    )
    request_id: str | None = Field(default=None, description="The request's X-Request-Id.")


class OpenAIErrorBody(BaseModel):
    """The error body of the OpenAI-compatible routes."""

    error: OpenAIErrorDetail


def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


# --------------------------------------------------------------------------------------------
# Files (OpenAI's Files API shape: the openai client's `files.*` calls work unchanged)


class FileObject(Lenient):
    """An uploaded file (``POST /v1/files``)."""

    id: str = Field(description="`file-` and 24 hex digits; name it in a job's `input.file_id`.")
    object: Literal["file"] = "file"
    bytes: int = Field(ge=0, description="Size of the content.")
    created_at: int = Field(description="Unix time of the upload.")
    filename: str = Field(description="The name the file was uploaded with.")
    purpose: str = Field(description="What it is for, as the uploader said (default user_data).")
    status: Literal["processed"] = Field(
        default="processed", description="Always processed: a file is usable once listed."
    )


class FileList(Lenient):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleted(Lenient):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
