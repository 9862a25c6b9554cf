"""The measurements: raw in-process generation, one streamed request through a server, a
multi-turn conversation, and concurrent streaming clients.

Every contender gets the same rendered prompt and token budget; generation always runs to
``max_tokens`` (the bench models cannot emit their EOS). Server figures are what an ``openai``
client sees: time to the first token (the first chunk carrying text, reasoning or a tool call),
and decode tokens/s between the first and the last such chunk, counted by the server's usage.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

WORDS = (
    "the of and to in is it you that he was for on are with as his they at be this have from or "
    "one had by word but not what all were we when your can said there use an each which she do "
    "how their if will up other about out many then them these so some her would make like him "
    "into time has look two more write go see number no way could people my than first water "
    "been call who oil its now find long down day did get come made may part over new sound "
    "take only little work know place year live me back give most very after thing our just "
    "name good sentence man think say great where help through much before line right too mean "
    "old any same tell boy follow came want show also around form three small set put end does "
    "another well large must big even such because turn here why ask went men read need land"
).split()


def make_text(tokenizer: Any, n_tokens: int, seed: str) -> str:
    """Plain English-looking words, about ``n_tokens`` tokens long, different for each seed."""
    rng = random.Random(seed)
    words = [f"[{seed}]"]
    count = lambda k: len(tokenizer.encode(" ".join(words[:k]), add_special_tokens=False))  # noqa: E731
    while count(len(words)) < n_tokens:
        words.extend(rng.choice(WORDS) for _ in range(16))
    lo, hi = 1, len(words)  # the fewest words that reach n_tokens
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if count(mid) < n_tokens else (lo, mid)
    text = " ".join(words[:lo])
    # Exactly n_tokens where the tokenizer allows (the last word may overshoot): every run's
    # prompt then has the same length, which a GPU warm-up at that length depends on.
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) > n_tokens:
        cut = tokenizer.decode(ids[:n_tokens])
        if len(tokenizer.encode(cut, add_special_tokens=False)) == n_tokens:
            return cut
    return text


def render(tokenizer: Any, messages: list[dict[str, Any]], thinking: bool) -> list[int]:
    return list(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, enable_thinking=thinking)
    )


@dataclass
class Sample:
    """One generation as its consumer saw it."""

    ttft: float  # seconds
    decode_tps: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    t_first: float = 0.0
    t_last: float = 0.0
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk with a token

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.ttft if self.ttft > 0 else 0.0


# raw ------------------------------------------------------------------------------------
class Raw:
    """``mlx_lm.stream_generate`` in this process: the model's own speed."""

    def __init__(self, model_dir: Any) -> None:
        import mlx_lm

        self.model, self.tokenizer = mlx_lm.load(str(model_dir))

    def run(self, tokens: list[int], max_tokens: int) -> Sample:
        from mlx_lm import stream_generate

        t0 = time.perf_counter()
        t_first = t_last = 0.0
        n = 0
        for response in stream_generate(self.model, self.tokenizer, tokens, max_tokens=max_tokens):
            now = time.perf_counter()
            if not t_first:
                t_first = now
            t_last = now
            n = response.generation_tokens
        return Sample(t_first - t0, (n - 1) / (t_last - t_first) if n > 1 else 0.0, len(tokens), n, 0, t_first, t_last)

    def batch(self, prompts: list[list[int]], max_tokens: int, batch_size: int = 4) -> "Concurrent":
        """mlx-lm's ``BatchGenerator`` in this process on ``prompts`` at once (sized as our server's
        batch with ``queue_limit`` 4): what continuous batching itself gets out of this machine,
        to tell the server's cost from the hardware's limit."""
        from mlx_lm.generate import BatchGenerator

        generator = BatchGenerator(self.model, completion_batch_size=batch_size, prefill_batch_size=batch_size)
        try:
            t0 = time.perf_counter()
            uids = generator.insert(prompts, max_tokens=[max_tokens] * len(prompts))
            times: dict[int, list[float]] = {uid: [] for uid in uids}
            running = set(uids)
            while running:
                _, responses = generator.next()
                now = time.perf_counter()
                for r in responses:
                    times[r.uid].append(now)
                    if r.finish_reason is not None:
                        running.discard(r.uid)
        finally:
            generator.close()
        samples = []
        for uid, prompt in zip(uids, prompts):
            ts = times[uid]
            n = len(ts)
            decode = (n - 1) / (ts[-1] - ts[0]) if n > 1 and ts[-1] > ts[0] else 0.0
            samples.append(Sample(ts[0] - t0, decode, len(prompt), n, 0, ts[0], ts[-1], ts))
        return Concurrent(samples)

    def close(self) -> None:
        import gc

        import mlx.core as mx

        del self.model, self.tokenizer
        gc.collect()
        mx.clear_cache()


class Engine:
    """lib_mlx's engine in this process, without HTTP (render, queue, generation, events):
    the difference between this and the server is what HTTP, SSE and the client add."""

    def __init__(self, model_dir: Any) -> None:
        from lib_mlx.config import MlxModelConfig
        from lib_mlx.core import MlxCore

        self.core = MlxCore.load(MlxModelConfig(model_path=str(model_dir)))

    def run(self, messages: list[dict[str, Any]], max_tokens: int, thinking: bool) -> Sample:
        from lib_mlx.core import ChatPrompt, SamplingParams
        from lib_mlx.core.events import Done, ReasoningDelta, TextDelta, ToolCallStart

        t0 = time.perf_counter()
        rendered = self.core.render(ChatPrompt(messages=messages, thinking=thinking))
        generation = self.core.submit(rendered, SamplingParams(max_tokens=max_tokens, temperature=0.0))
        t_first = t_last = 0.0
        done = None
        for event in generation:
            if isinstance(event, (TextDelta, ReasoningDelta, ToolCallStart)):
                now = time.perf_counter()
                if not t_first:
                    t_first = now
                t_last = now
            elif isinstance(event, Done):
                done = event
        if done is None:
            raise RuntimeError("the engine ended without Done")
        n = done.usage.completion_tokens
        if not t_first:  # only text a parser holds back (whitespace): the engine's own clock
            timings = done.timings
            return Sample(timings.prompt_seconds, timings.decode_tps, done.usage.prompt_tokens, n, done.usage.cached_tokens)
        decode = (n - 1) / (t_last - t_first) if n > 1 and t_last > t_first else 0.0
        return Sample(t_first - t0, decode, done.usage.prompt_tokens, n, done.usage.cached_tokens, t_first, t_last)

    def close(self) -> None:
        self.core.close()


# servers --------------------------------------------------------------------------------
def client_for(server: Any) -> Any:
    import openai

    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0, timeout=900)


def _delta_has_token(delta: Any) -> bool:
    if delta.content or delta.tool_calls:
        return True
    extra = delta.model_extra or {}
    return bool(extra.get("reasoning_content") or extra.get("reasoning"))


def stream_once(
    client: Any, model: str, messages: list[dict[str, Any]], max_tokens: int, thinking: bool
) -> Sample:
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"chat_template_kwargs": {"enable_thinking": thinking}},
    )
    t_first = t_last = 0.0
    usage = None
    times: list[float] = []
    chunks = 0
    finish: list[str | None] = []
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.finish_reason:
                finish.append(choice.finish_reason)
            if _delta_has_token(choice.delta):
                now = time.perf_counter()
                if not t_first:
                    t_first = now
                t_last = now
                times.append(now)
    if usage is None or not t_first:
        raise RuntimeError(
            f"the stream carried no tokens or no usage ({chunks} chunks, {len(times)} with a token, "
            f"finish reasons {finish}, usage {usage})"
        )
    details = getattr(usage, "prompt_tokens_details", None)
    cached = int(getattr(details, "cached_tokens", 0) or 0) if details is not None else 0
    n = usage.completion_tokens
    return Sample(
        t_first - t0,
        (n - 1) / (t_last - t_first) if n > 1 and t_last > t_first else 0.0,
        usage.prompt_tokens,
        n,
        cached,
        t_first,
        t_last,
        times,
    )


@dataclass
class Conversation:
    """A chat of ``turns`` turns: a 500-token system prompt, then 60-token questions and
    150-token answers, ~1,000 tokens of history by turn 3.

    The answers sent back are fixed text, not what the random model wrote: as for a thinking
    model, whose client sends back the answer but never the reasoning, the cache holds none of
    the previous answer, so every turn processes the previous answer and the new question
    (~220 tokens) afresh. (A plain model whose client returns its exact output would reuse more.)"""

    tokenizer: Any
    seed: str
    turns: int = 6
    system_tokens: int = 500
    user_tokens: int = 60
    answer_tokens: int = 150
    messages: list[dict[str, Any]] = field(default_factory=list)

    def script(self) -> list[tuple[list[dict[str, Any]], str]]:
        """Per turn: the messages to send, and the answer to append afterwards."""
        tok = self.tokenizer
        history = [{"role": "system", "content": make_text(tok, self.system_tokens, f"{self.seed}-sys")}]
        out = []
        for turn in range(self.turns):
            history = history + [{"role": "user", "content": make_text(tok, self.user_tokens, f"{self.seed}-u{turn}")}]
            answer = make_text(tok, self.answer_tokens, f"{self.seed}-a{turn}")
            out.append((list(history), answer))
            history = history + [{"role": "assistant", "content": answer}]
        return out


def converse(client: Any, model: str, conversation: Conversation, max_tokens: int, thinking: bool) -> list[Sample]:
    return [stream_once(client, model, messages, max_tokens, thinking) for messages, _ in conversation.script()]


@dataclass
class Concurrent:
    """``n`` clients streaming at once (each with its own prompt), started together."""

    samples: list[Sample]

    @property
    def aggregate_tps(self) -> float:
        """Tokens per second decoded by all clients together while all of them were decoding
        (from the last client's first token to the first client's last one): the server's
        steady decode throughput at this concurrency. Chunks stand for tokens (one per token;
        the rare held-back piece merges two), scaled by each client's token count. Falls back to
        all tokens over the whole span when the clients did not overlap."""
        start = max(s.t_first for s in self.samples)
        end = min(s.t_last for s in self.samples)
        if end - start > 0.05 * (max(s.t_last for s in self.samples) - min(s.t_first for s in self.samples)):
            tokens = 0.0
            for s in self.samples:
                inside = sum(1 for t in s.chunk_times if start < t <= end)
                tokens += inside * s.completion_tokens / max(len(s.chunk_times), 1)
            return tokens / (end - start)
        start = min(s.t_first for s in self.samples)
        end = max(s.t_last for s in self.samples)
        tokens = sum(s.completion_tokens - 1 for s in self.samples)
        return tokens / (end - start) if end > start else 0.0

    @property
    def ttft_median(self) -> float:
        ttfts = sorted(s.ttft for s in self.samples)
        return ttfts[len(ttfts) // 2] if len(ttfts) % 2 else sum(ttfts[len(ttfts) // 2 - 1 : len(ttfts) // 2 + 1]) / 2

    @property
    def ttft_max(self) -> float:
        return max(s.ttft for s in self.samples)


def concurrent(server: Any, prompts: list[list[dict[str, Any]]], max_tokens: int, thinking: bool) -> Concurrent:
    clients = [client_for(server) for _ in prompts]
    barrier = threading.Barrier(len(prompts))
    results: list[Sample | BaseException | None] = [None] * len(prompts)

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = stream_once(clients[i], server.model, prompts[i], max_tokens, thinking)
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            log = getattr(server, "log", None)
            tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{server.name}: a client of {len(prompts)} failed; server log tail:\n{tail}") from result
    return Concurrent([r for r in results if isinstance(r, Sample)])
