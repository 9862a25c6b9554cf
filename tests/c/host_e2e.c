/*
 * host_e2e: a host that drives liblib_mlx the way an FFI host does (dlopen + dlsym, as Dart's
 * DynamicLibrary.open), end to end.
 *
 *   usage: host_e2e LIBRARY MODEL_DIR
 *
 * Loads MODEL_DIR, starts the server on port 0, prints "base_url=<url>" and "api_key=<key>"
 * (empty when the server has none), then waits for one line on stdin while the test drives
 * HTTP against it. Then stops the server, reads the status, unloads, frees everything and
 * exits 0. Every reply is printed as "reply <call> <json>" so the test can check it.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib_mlx.h"

static struct {
    char *(*load_model)(const char *);
    char *(*start_server)(int64_t, const char *);
    char *(*stop_server)(int64_t);
    char *(*server_status)(int64_t);
    char *(*unload_model)(int64_t);
    void (*free)(void *);
} api;

static void *symbol(void *lib, const char *name)
{
    void *sym = dlsym(lib, name);
    if (sym == NULL) {
        fprintf(stderr, "host_e2e: missing symbol %s: %s\n", name, dlerror());
        exit(2);
    }
    return sym;
}

/* Where the value of "key" starts in a flat scan of the JSON text (good enough for the
   library's own replies, whose keys are unique). */
static const char *value_of(const char *json, const char *key)
{
    char quoted[64];
    const char *at;
    snprintf(quoted, sizeof quoted, "\"%s\"", key);
    at = strstr(json, quoted);
    if (at == NULL)
        return NULL;
    at += strlen(quoted);
    while (*at == ' ' || *at == ':')
        at++;
    return at;
}

/* A malloc'd copy of a string value without escapes, or NULL if absent or not a string. */
static char *string_field(const char *json, const char *key)
{
    const char *start = value_of(json, key), *end;
    char *copy;
    if (start == NULL || *start != '"')
        return NULL;
    start++;
    end = strchr(start, '"');
    if (end == NULL)
        return NULL;
    copy = malloc((size_t)(end - start) + 1);
    memcpy(copy, start, (size_t)(end - start));
    copy[end - start] = '\0';
    return copy;
}

static int is_ok(const char *reply)
{
    const char *value = reply ? value_of(reply, "ok") : NULL;
    return value != NULL && strncmp(value, "true", 4) == 0;
}

/* Prints the reply, frees it unless the caller keeps it, and fails the run on ok:false. */
static char *check(const char *call, char *reply, int keep)
{
    printf("reply %s %s\n", call, reply ? reply : "null");
    fflush(stdout);
    if (!is_ok(reply)) {
        fprintf(stderr, "host_e2e: %s failed\n", call);
        api.free(reply);
        exit(1);
    }
    if (!keep) {
        api.free(reply);
        return NULL;
    }
    return reply;
}

/* A JSON string literal for a path (escapes quotes, backslashes and control bytes). */
static char *json_string(const char *text)
{
    char *out = malloc(strlen(text) * 6 + 3), *p = out;
    *p++ = '"';
    for (; *text; text++) {
        unsigned char c = (unsigned char)*text;
        if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = (char)c;
        } else if (c < 0x20) {
            p += sprintf(p, "\\u%04x", c);
        } else {
            *p++ = (char)c;
        }
    }
    *p++ = '"';
    *p = '\0';
    return out;
}

int main(int argc, char **argv)
{
    void *lib;
    char *path, *config, *reply, *base_url, *api_key, line[64];
    const char *handle_text;
    int64_t handle;

    if (argc != 3) {
        fprintf(stderr, "usage: %s LIBRARY MODEL_DIR\n", argv[0]);
        return 2;
    }
    lib = dlopen(argv[1], RTLD_NOW); /* RTLD_LOCAL, like most FFI hosts */
    if (lib == NULL) {
        fprintf(stderr, "host_e2e: dlopen: %s\n", dlerror());
        return 2;
    }
    *(void **)&api.load_model = symbol(lib, "lib_mlx_load_model");
    *(void **)&api.start_server = symbol(lib, "lib_mlx_start_server");
    *(void **)&api.stop_server = symbol(lib, "lib_mlx_stop_server");
    *(void **)&api.server_status = symbol(lib, "lib_mlx_server_status");
    *(void **)&api.unload_model = symbol(lib, "lib_mlx_unload_model");
    *(void **)&api.free = symbol(lib, "lib_mlx_free");

    path = json_string(argv[2]);
    config = malloc(strlen(path) + 64);
    sprintf(config, "{\"model_path\": %s, \"model_id\": \"tiny-qwen3\"}", path);
    reply = check("load_model", api.load_model(config), 1);
    free(config);
    free(path);
    handle_text = value_of(reply, "handle");
    handle = handle_text ? strtoll(handle_text, NULL, 10) : 0;
    api.free(reply);

    reply = check("start_server", api.start_server(handle, "{\"port\": 0}"), 1);
    base_url = string_field(reply, "base_url");
    api_key = string_field(reply, "api_key");
    api.free(reply);
    if (base_url == NULL) {
        fprintf(stderr, "host_e2e: no base_url in the start_server reply\n");
        return 1;
    }
    printf("base_url=%s\napi_key=%s\n", base_url, api_key ? api_key : "");
    fflush(stdout);
    free(base_url);
    free(api_key);

    if (fgets(line, sizeof line, stdin) == NULL)
        fprintf(stderr, "host_e2e: stdin closed; shutting down\n");

    check("stop_server", api.stop_server(handle), 0);
    check("server_status", api.server_status(handle), 0);
    check("unload_model", api.unload_model(handle), 0);
    reply = api.server_status(handle); /* the handle is dead now: unknown_handle */
    printf("reply server_status_after_unload %s\n", reply ? reply : "null");
    api.free(reply);
    printf("done\n");
    fflush(stdout);
    return 0;
}
