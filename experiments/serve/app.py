"""The OpenAI-compatible front door of a serving cluster: `/v1/completions` and
`/v1/chat/completions` (streamed as server-sent events, or whole), `/v1/models` and
`/health`, on FastAPI. Each request is handed to the `ServingRuntime`; its tokens
come back through an asyncio queue as the workers produce them, and a client that
leaves has its request cancelled. Bad requests get OpenAI's error body naming the field."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from cluster.core.request import FINISHED
from cluster.live.serving import ServingRuntime
from experiments.serve.tokenizer import TextCodec
from router.snapshot import ROLES

DEFAULT_MAX_TOKENS = 16
ROLE_NAMES = {value: name for name, value in ROLES.items()}


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    """What both endpoints take; sampling fields a client sends are accepted and
    ignored (emulated engines sample nothing, real ones decode greedily)."""
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class CompletionBody(Sampling):
    prompt: str | list[int] | list[str]


class Message(BaseModel):
    """A chat message; content as a string or as OpenAI's content parts (text only)."""
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        kinds = [part.get("type") for part in self.content if part.get("type") != "text" or "text" not in part]
        if kinds:
            raise ValueError(f"expected text parts ({{'type': 'text', 'text': ...}}), got a part of type {kinds[0]!r}")
        return "".join(str(part["text"]) for part in self.content)


class ChatBody(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


@dataclass
class QueueStream:
    """A request's `Stream` into the event loop that serves its client."""
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue

    def tokens(self, ids: list[int]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ("tokens", ids))

    def ended(self, state: str, reason: str) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ("end", state, reason))


def error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


def _field_error(exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "body"
    got = first.get("input")
    return error(400, f"{where}: {first.get('msg', 'invalid')}, got {json.dumps(got, default=str)[:80]}", where)


class FrontDoor:
    def __init__(self, runtime: ServingRuntime, codec: TextCodec, model: str, tenants: tuple[str, ...]) -> None:
        self.runtime, self.codec, self.model, self.tenants = runtime, codec, model, tenants
        self.created = int(time.time())

    def app(self) -> FastAPI:
        app = FastAPI(title="pdlab serve")
        app.add_exception_handler(RequestValidationError, lambda request, exc: _field_error(exc))
        app.get("/health")(self.health)
        app.get("/v1/models")(self.models)
        app.get("/pdlab/instances")(self.instances)
        app.post("/v1/completions")(self.completions)
        app.post("/v1/chat/completions")(self.chat)
        return app

    async def health(self) -> dict:
        return {"status": "ok"}

    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model, "object": "model", "created": self.created,
                                            "owned_by": "pdlab", "root": self.model}]}

    async def instances(self) -> dict:
        """The router's view of each instance now: its KV and queue, as its worker last said."""
        table = self.runtime.setup.table
        columns = ("alive", "total_blocks", "free_blocks", "queued", "running", "host_free_blocks")
        return {"instances": [{"id": index, "role": ROLE_NAMES[int(table.role[index])],
                               **{column: getattr(table, column)[index].item() for column in columns}}
                              for index in range(len(table.role))],
                "unfinished": self.runtime.control.unfinished}

    async def completions(self, body: CompletionBody, request: Request):
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                return error(400, f"prompt: expected one prompt per request, got {len(prompt)}", "prompt")
            prompt = prompt[0]
        ids = self.codec.encode(prompt) if isinstance(prompt, str) else list(prompt)
        bad = [i for i in ids if not 0 <= i < self.codec.vocab_size]
        if bad:
            return error(400, f"prompt: token ids must be in [0, {self.codec.vocab_size}), got {bad[0]}", "prompt")
        return await self._serve(body, ids, body.max_tokens, request, "text_completion")

    async def chat(self, body: ChatBody, request: Request):
        messages = []
        for number, message in enumerate(body.messages):
            try:
                messages.append({"role": message.role, "content": message.text()})
            except ValueError as exc:
                return error(400, f"messages.{number}.content: {exc}", f"messages.{number}.content")
        text = self.codec.chat(messages)
        return await self._serve(body, self.codec.encode(text), body.max_completion_tokens or body.max_tokens,
                                 request, "chat.completion")

    async def _serve(self, body: Sampling, ids: list[int], max_tokens: int | None, request: Request, kind: str):
        if body.model != self.model:
            return error(404, f"model: this server serves {self.model!r}, got {body.model!r}", "model",
                         "NotFoundError")
        if not ids:
            return error(400, "prompt: expected at least one token, got an empty prompt", "prompt")
        tenant = body.user if body.user in self.tenants else self.tenants[0]
        stream = QueueStream(asyncio.get_running_loop(), asyncio.Queue())
        request_id = self.runtime.submit(tenant, ids, max_tokens or DEFAULT_MAX_TOKENS, stream,
                                         request.headers.get("x-request-id", ""))
        reply = Reply(self, kind, request_id, len(ids), body, max_tokens or DEFAULT_MAX_TOKENS)
        if body.stream:
            return StreamingResponse(reply.events(stream.queue), media_type="text/event-stream")
        return await reply.whole(stream.queue, request)


class Reply:
    """One request's answer, as events or whole."""

    def __init__(self, door: FrontDoor, kind: str, request_id: int, prompt_tokens: int, body: Sampling,
                 max_tokens: int) -> None:
        self.door, self.kind, self.request_id, self.prompt_tokens = door, kind, request_id, prompt_tokens
        self.max_tokens = max_tokens
        self.usage = body.stream_options is not None and body.stream_options.include_usage
        self.id = f"{'chatcmpl' if kind.startswith('chat') else 'cmpl'}-{request_id}-{uuid.uuid4().hex[:8]}"
        self.created = int(time.time())
        self.generated = 0

    def _choice(self, text: str, finish: str | None, whole: bool = False) -> dict:
        if self.kind == "text_completion":
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        key = "message" if whole else "delta"
        content = {"role": "assistant", "content": text} if whole or self.generated <= 1 else {"content": text}
        return {"index": 0, key: content if text or whole else {}, "logprobs": None, "finish_reason": finish}

    def _body(self, choices: list[dict], whole: bool = False) -> dict:
        kind = self.kind if whole or self.kind == "text_completion" else "chat.completion.chunk"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.door.model, "choices": choices}

    def _counts(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.generated,
                "total_tokens": self.prompt_tokens + self.generated}

    async def events(self, queue: asyncio.Queue):
        ended = False
        try:
            while True:
                item = await queue.get()
                if item[0] == "tokens":
                    for token in item[1]:
                        self.generated += 1
                        text = self.door.codec.piece(token, self.generated == 1)
                        last = "length" if self.generated == self.max_tokens else None
                        yield f"data: {json.dumps(self._body([self._choice(text, last)]))}\n\n"
                    continue
                ended = True
                if self.generated < self.max_tokens or item[1] != FINISHED:
                    finish = "stop" if item[1] == FINISHED else "abort"
                    yield f"data: {json.dumps(self._body([self._choice('', finish)]))}\n\n"
                if self.usage:
                    yield f"data: {json.dumps(self._body([]) | {'usage': self._counts()})}\n\n"
                yield "data: [DONE]\n\n"
                return
        finally:
            if not ended:
                self.door.runtime.cancel(self.request_id)

    async def whole(self, queue: asyncio.Queue, request: Request):
        tokens: list[int] = []
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), 1.0)
            except TimeoutError:
                if await request.is_disconnected():
                    self.door.runtime.cancel(self.request_id)
                    return error(499, "client disconnected")
                continue
            if item[0] == "tokens":
                tokens += item[1]
                continue
            self.generated = len(tokens)
            if item[1] != FINISHED and not tokens:
                return error(503, f"request {self.request_id} was {item[1]}: {item[2]}", kind="ServiceUnavailable")
            finish = ("length" if self.generated == self.max_tokens else "stop") if item[1] == FINISHED else "abort"
            text = self.door.codec.decode(tokens)
            return JSONResponse(self._body([self._choice(text, finish, whole=True)], whole=True)
                                | {"usage": self._counts()})
