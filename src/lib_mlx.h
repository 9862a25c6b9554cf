/*
 * lib_mlx.h -- the lifecycle C ABI of lib_mlx (the contract, and the Dart ffigen input).
 *
 * A host (C, C++, Swift, Dart FFI, ...) loads one shared library -- liblib_mlx.so on Linux,
 * liblib_mlx.dylib on macOS, built by `lib-mlx abi build --out DIR` -- and manages a model and
 * its OpenAI-compatible HTTP server with JSON strings. Inference itself does not cross this
 * ABI: the host (or any OpenAI client) talks HTTP + SSE to the server's base_url.
 *
 * STRINGS AND OWNERSHIP
 *   - Every `config_json` argument is a NUL-terminated UTF-8 JSON object, borrowed for the
 *     duration of the call only (the library copies what it keeps).
 *   - Every `char *` returned is a NUL-terminated UTF-8 JSON object allocated with the C
 *     library's malloc(). The caller owns it and releases it with lib_mlx_free() exactly once
 *     (lib_mlx_free is free(); lib_mlx_free(NULL) does nothing).
 *   - A NULL return means the embedded Python runtime could not be started (or, rarely, that
 *     the reply could not be allocated). It is not a JSON reply: hosts must check for NULL.
 *     Once initialisation has failed, every later call returns NULL too; the reason is
 *     printed on the process's stderr.
 *
 * REPLIES
 *   Success:  {"ok": true, "handle": <int>, ...}            (shapes per function below; replies
 *             may carry more keys than listed: ignore the ones you do not know)
 *   Failure:  {"ok": false, "error": {"code": "<code>", "message": "<human text>"}}
 *   Stable error codes (match on `code`, never on `message`; treat unknown codes as generic
 *   failures, as later versions may add some):
 *     invalid_json        the argument is not valid UTF-8 or not valid JSON
 *     invalid_config      JSON of the wrong shape (not an object, a field of the wrong type or
 *                         out of range, a required field missing) or a NULL config_json where
 *                         one is required
 *     model_not_found     model_path does not exist / model_id is neither in the local
 *                         Hugging Face cache nor downloadable (offline: fails in seconds)
 *     model_load_failed   the model directory exists but could not be loaded (or a download
 *                         failed part-way: loading it again resumes)
 *     insufficient_memory the model's weights plus a margin exceed the memory MLX can use
 *                         here (the message names both figures; see README "Memory")
 *     cancelled           start_server was waiting for a load that unload_model cancelled
 *     unknown_handle      the handle was never issued or has been unloaded
 *     server_not_running  reserved for calls that need a running server (stop_server on a
 *                         stopped server is not an error: it replies ok, "was_running": false)
 *     port_in_use         start_server could not bind the requested host:port
 *     internal_error      anything unexpected (the message says what); also returned when the
 *                         lib_mlx Python package itself cannot be imported
 *
 * THREADING
 *   Every function may be called from any thread, including threads the runtime has never
 *   seen, concurrently. Python code runs under the GIL and calls on one handle are ordered by
 *   that handle's lock (a status call on another handle does not wait for them).
 *   lib_mlx_load_model blocks for the whole load
 *   (seconds to minutes for a large model) unless its config says "wait": false: it then
 *   returns at once and lib_mlx_server_status, polled from any thread (a UI timer), reports
 *   the load's progress. start/stop block until the listener is up/closed,
 *   and the first call of any function also starts the embedded interpreter and imports
 *   lib_mlx and MLX (about a second or more): call them off the UI thread (in Dart, from a
 *   helper isolate, e.g. Isolate.run). The HTTP server runs on the runtime's own threads
 *   between calls; the host needs no event loop.
 *
 * EXITING
 *   Before the host exits, call lib_mlx_unload_model for each handle (it stops the server,
 *   cancels generations and joins the runtime's threads). A host that exits without doing so --
 *   exit() or a return from main, even with a stream in flight -- is still safe: the first
 *   successful lib_mlx_load_model registers an atexit() handler that stops every server and
 *   engine and joins their threads before MLX's own static destructors run (an engine thread
 *   still inside MLX at that point would abort the process). It waits for the step in progress
 *   (milliseconds; up to one long prefill). _exit(), quick_exit() and fatal signals skip it; do
 *   not call exit() from inside a lib_mlx call. A host that already runs Python (ctypes) gets
 *   the same from the runtime's Python atexit hook; the C handler then does nothing.
 *
 * FINDING PYTHON
 *   The library embeds CPython (cffi embedding mode). On the first call, if no interpreter is
 *   running in the process yet, it starts one as the python executable that built the library
 *   would run (its path is baked in at build time, so that environment -- a venv included --
 *   and its packages, lib_mlx included, are found), without signal handlers and without
 *   touching the host's locale (UTF-8 mode). LIB_MLX_PYTHON, if set in the environment to a
 *   python executable (e.g. another venv's bin/python), replaces the baked path; PYTHONHOME
 *   and PYTHONPATH are honoured as for any embedded CPython. The library sets no environment
 *   variables. If the host process already runs Python (e.g. it loaded the library with
 *   ctypes), that interpreter is used.
 */

#ifndef LIB_MLX_H
#define LIB_MLX_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Loads a model and returns a new handle (integers from 1, never reused within a process):
 * a local MLX model directory, or a Hugging Face hub id (the local cache first, then a
 * resumable download of the files a model needs).
 *
 * config_json (required; NULL -> invalid_config):
 *   {"model_path": "/path/to/model-dir",   one of model_path / model_id is required
 *    "model_id": "org/name",               optional; the id served as `model` over HTTP
 *                                          (default: the directory's name); alone: a hub id
 *    "revision": null,                     optional string (hub branch, tag or commit)
 *    "thinking_enabled": true,             optional, default true
 *    "lazy_encoders": true,                optional, default true
 *    "kv_bits": null,                      optional 4 or 8: quantized KV caches
 *    "kv_group_size": 64,                  optional 32, 64 or 128
 *    "quantized_kv_start": 0,              optional: tokens held before a cache is quantized
 *    "prompt_cache_dir": null,             optional directory: a prompt cache on disk that
 *    "prompt_cache_disk_bytes": 8589934592,  survives restarts, bounded (LRU)
 *    "draft_model_path": null,             optional: speculative decoding with a draft model
 *    "num_draft_tokens": 4,                optional, 1-32
 *    "prompt_lookup": false,               optional: speculative decoding with n-gram drafts
 *    "prompt_lookup_ngram": 3,             optional, 1-8
 *    "family": null,                       optional: "qwen3", "gemma4", "llama3", "mistral",
 *                                          "harmony", "deepseek", "granite", "kimi", "mlx_lm",
 *                                          "plain"; null detects it (an unknown name fails the load)
 *    "wait": true,                         optional, default true; false: return at once with
 *                                          "status": "loading" and load in the background
 *    "memory_budget_bytes": null,          optional; the memory the guard may count on
 *                                          (default: what MLX can use on this device)
 *    "max_request_kv_bytes": null}         optional; one request's KV-cache budget (default:
 *                                          what is left after the load, less a margin)
 *   Unknown keys are ignored.
 * reply:
 *   {"ok": true, "handle": 1, "status": "ready", "model_id": "org/name"}
 *   ("status": "loading" with "wait": false; a failure then shows in lib_mlx_server_status)
 * errors: invalid_json, invalid_config, model_not_found, model_load_failed,
 *         insufficient_memory, internal_error
 */
char *lib_mlx_load_model(const char *config_json);

/*
 * Starts the OpenAI-compatible HTTP server for a loaded model; returns once it is listening.
 * If the handle's server already runs, replies with its info (the new config is ignored).
 * On a handle still loading it waits for the load (and replies with its error if it fails),
 * unless "wait": false: it then listens at once and answers /health and every /v1/ route with 503 and
 * Retry-After until the model is ready.
 *
 * config_json (optional; NULL or "{}" -> all defaults):
 *   {"host": "127.0.0.1",                  default "127.0.0.1"
 *    "port": 0,                            default 0 = pick a free port (reported back)
 *    "model_id": "org/name",               optional; overrides the id from load_model
 *    "queue_limit": 1,                     requests in flight plus waiting; default 1
 *    "api_key": null,                      optional bearer token (printable ASCII, no spaces);
 *                                          by default the server makes a random one and
 *    "auth": "bearer",                     replies with it ("none" = no auth)
 *    "allowed_origins": [],                CORS origins (JSON array of strings); default none
 *    "max_body_bytes": 33554432,           request body cap (413 above it)
 *    "max_media_part_bytes": 20971520,     one decoded image/audio or file part
 *    "allow_remote_media": false,          fetch http(s) media URLs
 *    "chat_page": true,                    serve the chat page at /
 *    "wait": true,                         see above
 *    "idle_unload_s": null}                optional seconds: free the model's memory after
 *                                          this long without a request ("sleeping"); the
 *                                          next request loads it again
 *   Every field is optional; unknown keys are ignored. A string holding a lone surrogate
 *   escape ("\ud800") is invalid_json.
 * reply:
 *   {"ok": true, "handle": 1,
 *    "server": {"host": "127.0.0.1", "port": 58291, "base_url": "http://127.0.0.1:58291",
 *               "model_id": "org/name", "status": "running", "api_key": "..."}}
 *   OpenAI clients use base_url + "/v1" and send "Authorization: Bearer <api_key>" when an
 *   api_key is present.
 * errors: invalid_json, invalid_config, unknown_handle, port_in_use, internal_error, and
 *         a failed load's error (model_not_found, model_load_failed, insufficient_memory)
 */
char *lib_mlx_start_server(int64_t handle, const char *config_json);

/*
 * Stops the handle's server (in-flight requests are cancelled); returns once it is closed.
 * Idempotent: stopping a server that is not running succeeds too.
 * reply:  {"ok": true, "handle": 1, "status": "stopped", "was_running": true}
 * errors: unknown_handle, internal_error
 */
char *lib_mlx_stop_server(int64_t handle);

/*
 * Reports the model's and the server's state, and MLX's memory use. Cheap; never waits for a
 * load: poll it from a timer to draw a loading bar.
 * reply:
 *   {"ok": true, "handle": 1,
 *    "model": {"status": "ready", "model_id": "org/name", "model_path": "/path/to/model-dir",
 *              "model_type": "qwen3", "context_length": 40960, "thinking_enabled": true,
 *              "progress": {"phase": "load", "bytes_done": 0, "bytes_total": 0,
 *                           "files_done": 0, "files_total": 0},
 *              "loads": 1},
 *     model.status: "loading" | "ready" | "failed" (with "error": {"code", "message"}) |
 *       "sleeping" (freed after idle_unload_s; the next request loads it again).
 *     model.progress: phase "resolve" -> "download" -> "load" -> "warmup"; the byte and file
 *       counts cover the model's files (cached ones count as done) and never go down.
 *     model_path is null while a hub model is still resolving.
 *    "server": {"status": "running", ...server fields as in start_server...}
 *              or {"status": "stopped"},
 *    "in_flight": 0,                       requests generating or queued
 *    "memory": {"active_bytes": 0, "peak_bytes": 0, "cache_bytes": 0},
 *    "kv_cache": {"live_bytes": 0,        KV caches of running requests
 *                 "prompt_cache_bytes": 0, "prompt_cache_entries": 0,
 *                 "disk_cache_bytes": 0,  the disk prompt cache's directory
 *                 "kv_quantization": {...}, "disk_cache": {...} or null,
 *                 "speculative": {...} or null}}
 * errors: unknown_handle, internal_error
 */
char *lib_mlx_server_status(int64_t handle);

/*
 * Stops the server if it runs, unloads the model and gives its memory back. The handle is
 * invalid afterwards (any call with it -> unknown_handle). On a handle still loading it
 * cancels the load (a download stops at its next chunk and resumes on a later load) and
 * returns once the load has stopped and its memory is freed.
 * reply:  {"ok": true, "handle": 1, "status": "unloaded"}
 * errors: unknown_handle, internal_error
 */
char *lib_mlx_unload_model(int64_t handle);

/*
 * Frees a string returned by any function above. NULL is a no-op. Never pass it memory the
 * library did not return, and never free a reply twice.
 */
void lib_mlx_free(void *ptr);

#ifdef __cplusplus
}
#endif

#endif /* LIB_MLX_H */
