"""The ``lib-mlx`` command: ``serve``, ``demo`` and ``abi build``."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .config import MlxModelConfig, MlxServerConfig, ServerInfo, config_from_dict
from .errors import InvalidConfigError, LibMlxError
from .runtime import LibMlxRuntime


@contextlib.contextmanager
def progress(label: str, stream=sys.stderr) -> Iterator[None]:
    """A spinner with elapsed seconds while something blocking (a model load) runs."""
    done = threading.Event()
    start = time.perf_counter()
    interactive = stream.isatty()

    def spin() -> None:
        for frame in itertools.cycle("|/-\\"):
            if done.wait(0.1):
                return
            if interactive:
                stream.write(f"\r{frame} {label} {time.perf_counter() - start:5.1f}s")
                stream.flush()

    thread = threading.Thread(target=spin, daemon=True)
    if not interactive:
        stream.write(f"{label}...\n")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        stream.write(f"\r{label}: done in {time.perf_counter() - start:.1f}s\n")
        stream.flush()


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def page_url(info: ServerInfo) -> str:
    """The chat page's URL; the token travels in the fragment, which browsers never send."""
    return f"{info.base_url}/" + (f"#token={info.api_key}" if info.api_key else "")


def _load(runtime: LibMlxRuntime, config: MlxModelConfig) -> int:
    label = f"Loading {config.model_path or config.model_id}"
    if config.model_path and Path(config.model_path).is_dir():
        label += f" ({_dir_size(Path(config.model_path)) / 1e6:.1f} MB)"
    with progress(label):
        return runtime.load_model(config)


def _load_from_hub(runtime: LibMlxRuntime, config: MlxModelConfig, stream=sys.stderr) -> int:
    """Load in the background and draw its progress with tqdm: bytes while downloading, then
    the phase (loading the weights, warming up)."""
    from tqdm import tqdm

    handle = runtime.load_model(config, wait=False)
    bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="Downloading", file=stream, dynamic_ncols=True)
    try:
        while True:
            model = runtime.server_status(handle)["model"]
            progress = model.get("progress") or {}
            if progress.get("bytes_total") and bar.total != progress["bytes_total"]:
                bar.total = progress["bytes_total"]
            bar.n = progress.get("bytes_done", 0)
            bar.set_postfix_str(f"{progress.get('files_done', 0)}/{progress.get('files_total', 0)} files, {progress.get('phase')}")
            if model["status"] != "loading":
                break
            time.sleep(0.1)
    finally:
        bar.close()
    if model["status"] == "failed":
        error = model["error"]
        runtime.unload_model(handle)
        raise LibMlxError(error["message"], code=error["code"])
    return handle


def _model_config(args: argparse.Namespace) -> MlxModelConfig:
    """``--model`` is a local directory, or else a hub id (``ORG/NAME``)."""
    local = Path(args.model).expanduser()
    fields: dict[str, object] = {
        "thinking_enabled": not args.no_thinking,
        "distributed": args.distributed,
        "distributed_backend": args.distributed_backend,
        "distributed_timeout_s": args.distributed_timeout,
        "kv_bits": args.kv_bits,
        "quantized_kv_start": args.quantized_kv_start,
        "prompt_cache_dir": args.prompt_cache_dir,
        "draft_model_path": args.draft_model,
        "num_draft_tokens": args.num_draft_tokens,
        "prompt_lookup": args.prompt_lookup,
    }
    if local.exists() or args.model.count("/") != 1 or args.model.startswith((".", "/", "~")):
        fields.update(model_path=args.model, model_id=args.model_id)
    else:
        fields.update(model_id=args.model, revision=args.revision)
    return config_from_dict(MlxModelConfig, fields)


API_KEY_ENV = "LIB_MLX_API_KEY"


def _api_key(args: argparse.Namespace) -> str | None:
    """``--api-key``, else the first line of ``--api-key-file``, else ``$LIB_MLX_API_KEY``. (A
    command-line argument is visible to every local user in the process list; a file or the
    environment is not.)"""
    if args.api_key is not None:
        return args.api_key
    if args.api_key_file is not None:
        try:
            text = Path(args.api_key_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidConfigError(f"--api-key-file: cannot read {args.api_key_file}: {exc}", param="api_key_file") from None
        return text.splitlines()[0] if text.strip() else ""
    return os.environ.get(API_KEY_ENV) or None


def _stop_on_sigterm() -> None:
    """SIGTERM stops like Ctrl-C: open requests end with an error, the model unloads. (mlx.launch
    sends it to every rank when one rank exits.)"""
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def cmd_serve(args: argparse.Namespace) -> int:
    # Both configs are checked before the (slow) load: a bad value is one line, at once.
    model = _model_config(args)  # a local directory, or a hub id
    server = config_from_dict(
        MlxServerConfig,
        {
            "host": args.host,
            "port": args.port,
            "model_id": args.model_id,
            "queue_limit": args.queue_limit,
            "api_key": _api_key(args),
            "auth": "none" if args.no_auth else "bearer",
            "chat_page": not args.no_page,
            "idle_unload_s": args.idle_unload_s,
        },
    )
    _stop_on_sigterm()
    runtime = LibMlxRuntime()
    handle = _load(runtime, model) if model.model_path else _load_from_hub(runtime, model)
    rank = runtime.distributed_rank(handle)
    if rank:  # a rank other than 0 follows rank 0's requests until rank 0 stops
        print(f"Rank {rank} (pid {os.getpid()}): loaded its shard; following rank 0.", flush=True)
        try:
            failure = runtime.follow(handle)
        except KeyboardInterrupt:
            failure = None
        return 0 if failure is None else 1
    info = runtime.start_server(handle, server)
    print(f"Serving {info.model_id} at {info.base_url}/v1", flush=True)
    sharded = runtime.server_status(handle)["model"].get("distributed")
    if sharded:
        per_rank = ", ".join(f"rank {m['rank']} {m['active_bytes'] / 1e6:.1f} MB" for m in sharded["rank_memory"])
        print(f"Sharded ({sharded['mode']}) over {sharded['ranks']} ranks: {per_rank}", flush=True)
    if info.api_key:
        print(f"API key: {info.api_key}", flush=True)
    if server.chat_page:
        print(f"Chat page: {page_url(info)}", flush=True)
    print("Press Ctrl-C to stop.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nStopping...", flush=True)
    finally:
        runtime.unload_model(handle)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """README's Python usage flow: load, serve, chat through ``openai``, unload."""
    from .tiny_models import default_demo_model

    if args.model:
        model_path = Path(args.model)
    else:
        with progress("Preparing the built-in demo model"):
            model_path = default_demo_model()
    runtime = LibMlxRuntime()
    handle = _load(runtime, MlxModelConfig(str(model_path), thinking_enabled=True))
    try:
        info = runtime.start_server(handle, MlxServerConfig(port=0))
        print(f"Server running on {info.base_url}")
        print(f"Chat page: {page_url(info)}")
        status = runtime.server_status(handle)
        print(f"Model status: {status['model']['status']}, server status: {status['server']['status']}")
        client = runtime.openai_client(handle)
        print("Models:", ", ".join(m.id for m in client.models.list().data))
        print(f"\nUser: {args.prompt}")
        stream = client.chat.completions.create(
            model=info.model_id,
            messages=[{"role": "user", "content": args.prompt}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=args.max_tokens,
        )
        section = None
        usage = None
        for chunk in stream:
            usage = chunk.usage or usage
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            reasoning = (delta.model_extra or {}).get("reasoning_content")
            for name, text in (("Thinking", reasoning), ("Answer", delta.content)):
                if text:
                    if section != name:
                        print(f"\n[{name}] ", end="")
                        section = name
                    print(text, end="", flush=True)
        print()
        if usage is not None:
            details = usage.completion_tokens_details
            print(
                f"\nUsage: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens "
                f"({details.reasoning_tokens if details else 0} reasoning)"
            )
    finally:
        runtime.unload_model(handle)
        print(f"Unloaded handle {handle}.")
    return 0


def cmd_launch(args: argparse.Namespace, rest: Sequence[str]) -> int:
    """``mlx.launch`` with this Python and ``-m lib_mlx`` as the program: options before ``--``
    go to mlx.launch (``-n``, ``--hosts``, ``--hostfile``, ``--backend``, ...), the rest to
    ``lib-mlx`` on every rank."""
    import subprocess

    rest = list(rest)
    if "--" not in rest:
        print("usage: lib-mlx launch [mlx.launch options] -- serve --model DIR --distributed", file=sys.stderr)
        return 2
    cut = rest.index("--")
    launcher, program = rest[:cut], rest[cut + 1 :]
    if not any(a in ("--hosts", "--hostfile") or a.startswith(("--hosts=", "--hostfile=")) for a in launcher):
        launcher += ["--hosts", "127.0.0.1"]
    entry = "from mlx._distributed_utils.launch import main; main()"  # the mlx.launch command
    command = [sys.executable, "-c", entry, *launcher, "--python", sys.executable, "--", "-m", "lib_mlx", *program]
    return subprocess.call(command)


def cmd_abi_build(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from . import abi_build

    return abi_build.main(list(rest))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lib-mlx", description="Run a local MLX model behind an OpenAI-compatible server.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="load a model and serve it until Ctrl-C")
    serve.add_argument("--model", required=True, help="local MLX model directory, or a hub id ORG/NAME")
    serve.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of ORG/NAME")
    serve.add_argument("--model-id", default=None, help="id to serve the model under (default: directory name)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    serve.add_argument("--queue-limit", type=int, default=4)
    serve.add_argument(
        "--api-key",
        default=None,
        help="bearer token to require (default: a random one); visible to local users in the process "
        f"list, so prefer --api-key-file or ${API_KEY_ENV}",
    )
    serve.add_argument("--api-key-file", default=None, help="read the bearer token from the first line of this file")
    serve.add_argument("--no-auth", action="store_true", help="accept requests without a token")
    serve.add_argument("--no-thinking", action="store_true", help="thinking off unless a request turns it on")
    serve.add_argument("--no-page", action="store_true", help="do not serve the chat page at /")
    serve.add_argument("--kv-bits", type=int, choices=(4, 8), default=None, help="quantize KV caches to 4 or 8 bits")
    serve.add_argument("--quantized-kv-start", type=int, default=0, help="tokens a cache holds before it is quantized")
    serve.add_argument("--prompt-cache-dir", default=None, help="keep the prompt cache on disk here (survives restarts)")
    serve.add_argument("--draft-model", default=None, help="speculative decoding with this draft model directory")
    serve.add_argument("--num-draft-tokens", type=int, default=4)
    serve.add_argument("--prompt-lookup", action="store_true", help="speculative decoding with n-gram drafts from the prompt")
    serve.add_argument(
        "--distributed",
        nargs="?",
        const="auto",
        choices=("auto", "tensor", "pipeline"),
        default=None,
        help="serve one model sharded over the processes that mlx.launch started (see `lib-mlx launch`)",
    )
    serve.add_argument("--distributed-backend", default="any", choices=("any", "ring", "mpi", "nccl", "jaccl"))
    serve.add_argument(
        "--distributed-timeout",
        type=float,
        default=60.0,
        help="seconds a step may wait for the other ranks before open requests fail (default 60)",
    )
    serve.add_argument(
        "--idle-unload-s",
        type=float,
        default=None,
        metavar="S",
        help="free the model's memory after S idle seconds; the next request loads it again",
    )
    serve.set_defaults(func=cmd_serve)

    launch = sub.add_parser(
        "launch",
        help="run `lib-mlx ...` on several ranks through mlx.launch (e.g. `lib-mlx launch -n 2 -- serve --model DIR --distributed`)",
        add_help=False,
    )
    launch.set_defaults(func=cmd_launch)

    demo = sub.add_parser("demo", help="load the built-in demo model, serve it, chat once, unload")
    demo.add_argument("--model", default=None, help="use this model directory instead of the built-in one")
    demo.add_argument("--prompt", default="Hello! Who are you?")
    demo.add_argument("--max-tokens", type=int, default=128)
    demo.set_defaults(func=cmd_demo)

    abi = sub.add_parser("abi", help="the C ABI shared library")
    abi_sub = abi.add_subparsers(dest="abi_command", required=True)
    build = abi_sub.add_parser("build", help="build liblib_mlx (.so/.dylib); options: --out DIR", add_help=False)
    build.set_defaults(func=cmd_abi_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        if args.func in (cmd_abi_build, cmd_launch):
            return args.func(args, rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args.func(args)
    except LibMlxError as exc:
        message = exc.message
        param = getattr(exc, "param", None)
        if param and message.startswith(f"{param}: "):  # name the option, not the config field
            message = f"--{param.replace('_', '-')}: {message[len(param) + 2:]}"
        print(f"lib-mlx: error ({exc.code}): {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
