"""Request bodies, in the OpenAI API's shapes (unknown fields are ignored, as OpenAI's server does)."""

from typing import Optional, Union

from pydantic import BaseModel, Field


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Generation(BaseModel):
    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(1, ge=1, le=1)  # one choice per request
    ignore_eos: bool = False  # vLLM's extra: generate max_tokens even past EOS (benchmarks)

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class Message(BaseModel):
    role: str = Field(pattern="^(system|user|assistant)$")
    content: str


class ChatRequest(_Generation):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Generation):
    prompt: str


class EmbeddingRequest(BaseModel):
    model: str
    input: Union[str, list[str]]
    encoding_format: str = Field("float", pattern="^(float|base64)$")


class ClassifyRequest(BaseModel):
    model: str
    input: Union[str, list[str]]


class ScoreRequest(BaseModel):
    model: str
    prompt: Union[str, list[str]]
    response: Union[str, list[str]]


class LoadAdapterRequest(BaseModel):
    lora_name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")
    lora_path: str = Field(min_length=1)


class UnloadAdapterRequest(BaseModel):
    lora_name: str = Field(min_length=1)
