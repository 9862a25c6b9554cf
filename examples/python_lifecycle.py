"""The lifecycle in Python (README's "Python usage"): load a model, serve it, chat through the `openai` client
(one plain completion, one stream with the reasoning and the answer kept apart), stop, unload.

    python examples/python_lifecycle.py                 # the built-in tiny demo model
    python examples/python_lifecycle.py /path/to/model  # any local MLX model directory

The lifecycle goes through `LibMlxRuntime` (the same calls the C ABI makes with JSON);
inference goes over HTTP to the server it starts on 127.0.0.1, like any OpenAI client would.
"""

from __future__ import annotations

import argparse
import sys

import openai

from lib_mlx import LibMlxRuntime, MlxModelConfig, MlxServerConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="a local MLX model directory (default: the built-in demo model)")
    parser.add_argument("--prompt", default="Is the capital of France Paris? Answer Yes or No.")
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args(argv)

    if args.model:
        model_path = args.model
    else:
        from lib_mlx.tiny_models import default_demo_model

        model_path = str(default_demo_model())

    runtime = LibMlxRuntime()

    # 1. Load the model.
    handle = runtime.load_model(MlxModelConfig(model_path, thinking_enabled=True))
    print(f"Loaded handle {handle}")
    try:
        # 2. Start the HTTP server (port 0: any free port). It makes a bearer token.
        info = runtime.start_server(handle, MlxServerConfig(port=0))
        print(f"Server running on {info.base_url}")

        # 3. Check status.
        status = runtime.server_status(handle)
        print(f"Model status: {status['model']['status']}, server status: {status['server']['status']}")

        # 4. Talk to it like any OpenAI-compatible server.
        client = openai.OpenAI(base_url=f"{info.base_url}/v1", api_key=info.api_key or "none")
        print("Models:", ", ".join(model.id for model in client.models.list().data))

        response = client.chat.completions.create(
            model=info.model_id,
            messages=[{"role": "user", "content": args.prompt}],
            temperature=0.0,
            max_tokens=args.max_tokens,
        )
        print(f"Answer: {response.choices[0].message.content}")

        # Streamed: reasoning arrives in delta.reasoning_content, the answer in delta.content.
        stream = client.chat.completions.create(
            model=info.model_id,
            messages=[{"role": "user", "content": args.prompt}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=args.max_tokens,
        )
        reasoning, content = [], []
        for chunk in stream:
            if chunk.usage:
                print(f"Usage: {chunk.usage.completion_tokens} tokens", end="")
                details = chunk.usage.completion_tokens_details
                print(f" ({details.reasoning_tokens} reasoning)" if details else "")
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            thinking = (delta.model_extra or {}).get("reasoning_content")  # not a typed field
            if thinking:
                reasoning.append(thinking)
                print(f"[Thinking] {thinking}")
            if delta.content:
                content.append(delta.content)
                print(f"[Content] {delta.content}")
        print(f"Reasoning: {''.join(reasoning)!r}")
        print(f"Content: {''.join(content)!r}")

        # 5. Stop the server; the model stays loaded and could serve again.
        runtime.stop_server(handle)
        print(f"Server status: {runtime.server_status(handle)['server']['status']}")
    finally:
        # 6. Unload: stops the server if it still runs and gives the memory back.
        runtime.unload_model(handle)
        print(f"Unloaded handle {handle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
