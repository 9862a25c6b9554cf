"""One request's way from sampled token ids to events, shared by the single-stream and the
batched paths: incremental detokenizer, family parser, stop strings, usage, timings.

Everything here runs on the engine's worker thread, once per token, so it stays O(1) a token:
no re-decoding of the output, one list of events per token handed to ``Generation.deliver``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .events import Done, Event, Timings, ToolCallEnd, Usage
from .logprobs import LogprobCapture, token_text_fn
from .parsers import make_parser
from .processors import marker_ids
from .sampling import request_processors
from .stops import StopMatcher

if TYPE_CHECKING:
    from .loader import LoadedModel
    from .request import Job


class RequestStream:
    """Turns one request's tokens into events and finally ``Done``."""

    def __init__(
        self,
        job: "Job",
        loaded: "LoadedModel",
        *,
        n_prompt: int | None = None,
        cached_tokens: int = 0,
        release: Callable[["Job", Done], None] | None = None,
    ) -> None:
        prompt, params = job.prompt, job.params
        self.job = job
        self.generation = job.generation
        self.n_prompt = len(prompt.tokens) if n_prompt is None else n_prompt
        self.cached_tokens = cached_tokens
        self.release = release
        self.parser = make_parser(
            loaded.parser_spec,
            tools=prompt.tools or [],  # a call to a function not offered is text
            starts_in_reasoning=prompt.starts_in_reasoning,
            prefill=prompt.assistant_prefix,  # injected: never given back as text
            parse_tools=prompt.parse_tools,
        )
        self.max_tool_calls = prompt.max_tool_calls
        self.stops = StopMatcher(params.stop)
        self.detokenizer = loaded.tokenizer.detokenizer
        self.eos: frozenset[int] = frozenset() if params.ignore_eos else frozenset(loaded.tokenizer.eos_token_ids)
        self.n_generated = 0
        self.reasoning_tokens = 0
        self.tool_calls = 0
        self.finish_reason: str | None = None
        self.t_start = time.perf_counter()
        self.t_first = self.t_start
        # Penalties, bias, thinking budget and grammar (``core.processors``); the engine hands
        # them to generate_step or the batch.
        self.processors = request_processors(loaded, prompt, params)
        self.logprobs: LogprobCapture | None = None
        if getattr(params, "logprobs", None) is not None:
            self.logprobs = LogprobCapture(params.logprobs, token_text_fn(loaded.tokenizer))
            spec = loaded.parser_spec
            self._markers = set(marker_ids(loaded.tokenizer, spec.think_start) + marker_ids(loaded.tokenizer, spec.think_end))

    def add(self, token: int, logprobs: Any = None) -> str | None:
        """Take one sampled token (and the log-probabilities it was sampled from); deliver its
        events. Returns the finish reason when this token ends the request (the token itself
        is then not part of the answer)."""
        if self.n_generated == 0:
            self.t_first = time.perf_counter()
        gen = self.generation
        if gen.cancelled:
            return "cancelled"
        if token in self.eos:
            return "stop"
        self.n_generated += 1
        detokenizer = self.detokenizer
        detokenizer.add_token(token)
        parser = self.parser
        events = parser.feed(detokenizer.last_segment)
        if self.logprobs is not None and logprobs is not None and self._answer_token(token):
            events.insert(0, self.logprobs(token, logprobs))
        events, stopped = self.stops.apply(events)
        if events:
            for event in events:
                if type(event) is ToolCallEnd:
                    self.tool_calls += 1
            gen.deliver(events)
        if self.max_tool_calls is not None and self.tool_calls >= self.max_tool_calls:
            return "stop"  # parallel_tool_calls false: the first call ends the answer
        return "stop" if stopped else None

    def _answer_token(self, token: int) -> bool:
        """Whether a token belongs to the answer's text (not reasoning, a marker or a call)."""
        parser = self.parser
        if parser.in_reasoning or token in self._markers:
            return False
        state = getattr(parser, "_st", None)
        return not (state and state[0] != "normal")

    def finish(self, reason: str) -> None:
        """Flush held-back text and deliver ``Done``. The request's queue slot is released
        first, so that a client may send its next request the moment it sees the end."""
        pending: list[Event] = []
        if reason != "cancelled":
            self.detokenizer.finalize()
            segment = self.detokenizer.last_segment
            tail = self.parser.feed(segment, token=False) if segment else []
            tail += self.parser.finish()
            tail, _ = self.stops.apply(tail, final=True)
            self.tool_calls += sum(isinstance(e, ToolCallEnd) for e in tail)
            pending += tail
            if self.tool_calls and reason == "stop":
                reason = "tool_calls"
        self.finish_reason = reason
        # The parser's count is exact once it has finished (a marker split over several tokens
        # is not known to be a marker until its last piece arrives).
        self.reasoning_tokens = self.parser.reasoning_tokens
        t_end = time.perf_counter()
        if self.n_generated == 0:
            self.t_first = t_end
        prompt_s = self.t_first - self.t_start
        decode_s = t_end - self.t_first
        processed = self.n_prompt - self.cached_tokens
        timings = Timings(
            prompt_seconds=prompt_s,
            decode_seconds=decode_s,
            prompt_tps=processed / prompt_s if prompt_s > 0 else 0.0,
            decode_tps=(self.n_generated - 1) / decode_s if decode_s > 0 and self.n_generated > 1 else 0.0,
        )
        usage = Usage(
            prompt_tokens=self.n_prompt,
            completion_tokens=self.n_generated,
            reasoning_tokens=self.reasoning_tokens,
            cached_tokens=self.cached_tokens,
        )
        done = Done(reason, usage, timings, self.stops.matched)
        pending.append(done)
        if self.release is not None:
            self.release(self.job, done)
        self.generation.deliver(pending)
