/*
 * chat_host: a small C host for lib_mlx. The lifecycle goes through the C ABI (JSON strings in,
 * malloc'd JSON strings out); inference goes over HTTP to the server the library starts, here
 * with nothing but POSIX sockets: one streamed chat completion whose reasoning and answer are
 * printed apart.
 *
 * Build and run (from the repository root):
 *
 *     lib-mlx abi build --out build/abi
 *     make -C examples/c_host ABI_DIR=$PWD/build/abi
 *     examples/c_host/chat_host /path/to/mlx-model-dir "Is the capital of France Paris?"
 *
 * The JSON handling below is demo-grade (a flat scan for a key, string values unescaped): enough
 * for the library's replies and the server's chunks, not a general JSON parser -- a real host
 * would use one.
 */
#define _POSIX_C_SOURCE 200809L

#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib_mlx.h"

/* ---------------------------------------------------------------- tiny JSON helpers ---- */

/* Where the value of "key" starts in json (first occurrence), or NULL. */
static const char *json_value(const char *json, const char *key)
{
    char quoted[80];
    const char *at;
    snprintf(quoted, sizeof quoted, "\"%s\"", key);
    if ((at = strstr(json, quoted)) == NULL)
        return NULL;
    at += strlen(quoted);
    while (*at == ' ' || *at == ':')
        at++;
    return at;
}

static void put_utf8(char **out, unsigned cp)
{
    char *o = *out;
    if (cp < 0x80) {
        *o++ = (char)cp;
    } else if (cp < 0x800) {
        *o++ = (char)(0xC0 | (cp >> 6));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xE0 | (cp >> 12));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    }
    *out = o;
}

/* The string value of "key" as a malloc'd, unescaped copy; NULL if absent or not a string. */
static char *json_string(const char *json, const char *key)
{
    const char *in = json_value(json, key);
    char *copy, *out;
    if (in == NULL || *in != '"')
        return NULL;
    in++;
    copy = out = malloc(strlen(in) + 1);
    if (copy == NULL)
        return NULL;
    while (*in && *in != '"') {
        if (*in != '\\') {
            *out++ = *in++;
            continue;
        }
        in++;
        switch (*in) {
        case 'n': *out++ = '\n'; break;
        case 't': *out++ = '\t'; break;
        case 'r': *out++ = '\r'; break;
        case 'b': *out++ = '\b'; break;
        case 'f': *out++ = '\f'; break;
        case 'u': {
            unsigned cp = 0;
            if (sscanf(in + 1, "%4x", &cp) == 1) {
                put_utf8(&out, cp); /* BMP only: enough for this demo */
                in += 4;
            }
            break;
        }
        case '\0': in--; break;
        default: *out++ = *in; break; /* \" \\ \/ */
        }
        in++;
    }
    *out = '\0';
    return copy;
}

static long json_int(const char *json, const char *key, long fallback)
{
    const char *at = json_value(json, key);
    return at != NULL ? strtol(at, NULL, 10) : fallback;
}

/* ------------------------------------------------------------------ the ABI calls ------- */

/* Prints a reply (with the API key left out) and checks "ok"; the caller frees it. */
static char *checked(const char *call, char *reply)
{
    if (reply == NULL) {
        fprintf(stderr, "%s: NULL (the embedded Python runtime could not start)\n", call);
        exit(1);
    }
    char *key = json_string(reply, "api_key");
    char *shown = strdup(reply);
    if (key != NULL && *key != '\0') {
        char *at = strstr(shown, key);
        if (at != NULL)
            memset(at, '*', strlen(key));
    }
    printf("%s -> %s\n", call, shown);
    free(shown);
    free(key);
    if (strstr(reply, "\"ok\": true") == NULL && strstr(reply, "\"ok\":true") == NULL) {
        fprintf(stderr, "%s failed\n", call);
        lib_mlx_free(reply);
        exit(1);
    }
    return reply;
}

/* -------------------------------------------------------------------- HTTP + SSE -------- */

static int connect_to(const char *host, long port)
{
    struct addrinfo hints = {0}, *res, *ai;
    char service[16];
    int fd = -1;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(service, sizeof service, "%ld", port);
    if (getaddrinfo(host, service, &hints, &res) != 0)
        return -1;
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static int send_all(int fd, const char *data, size_t size)
{
    while (size > 0) {
        ssize_t n = send(fd, data, size, 0);
        if (n <= 0)
            return -1;
        data += n;
        size -= (size_t)n;
    }
    return 0;
}

struct stream {
    int fd;
    char buf[8192];
    size_t len, pos;
    int chunked;
    long chunk_left; /* bytes left in the current chunk (chunked transfer encoding) */
    int eof;
};

static int raw_byte(struct stream *s)
{
    if (s->pos == s->len) {
        ssize_t n = recv(s->fd, s->buf, sizeof s->buf, 0);
        if (n <= 0)
            return -1;
        s->len = (size_t)n;
        s->pos = 0;
    }
    return (unsigned char)s->buf[s->pos++];
}

/* One raw line (CRLF or LF stripped) into line; -1 at the end of the connection. */
static int raw_line(struct stream *s, char *line, size_t cap)
{
    size_t n = 0;
    int c;
    while ((c = raw_byte(s)) >= 0 && c != '\n')
        if (n + 1 < cap)
            line[n++] = (char)c;
    if (c < 0 && n == 0)
        return -1;
    if (n > 0 && line[n - 1] == '\r')
        n--;
    line[n] = '\0';
    return (int)n;
}

/* The next byte of the body, de-chunked; -1 at its end. */
static int body_byte(struct stream *s)
{
    char line[64];
    if (s->eof)
        return -1;
    if (!s->chunked)
        return raw_byte(s);
    if (s->chunk_left == 0) {
        if (raw_line(s, line, sizeof line) < 0 || (s->chunk_left = strtol(line, NULL, 16)) == 0) {
            s->eof = 1;
            return -1;
        }
    }
    int c = raw_byte(s);
    if (c >= 0 && --s->chunk_left == 0)
        raw_line(s, line, sizeof line); /* the CRLF after each chunk */
    return c;
}

/* One line of the body (for SSE); -1 at its end. Long lines are cut at cap. */
static int body_line(struct stream *s, char *line, size_t cap)
{
    size_t n = 0;
    int c;
    while ((c = body_byte(s)) >= 0 && c != '\n')
        if (n + 1 < cap)
            line[n++] = (char)c;
    if (c < 0 && n == 0)
        return -1;
    line[n] = '\0';
    return (int)n;
}

/* Appends text to a growing malloc'd string. */
static void append(char **acc, const char *text)
{
    size_t old = *acc ? strlen(*acc) : 0;
    *acc = realloc(*acc, old + strlen(text) + 1);
    strcpy(*acc + old, text);
}

static int stream_chat(const char *host, long port, const char *api_key, const char *model_id, const char *prompt)
{
    static char line[65536];
    char *body = NULL, *request = NULL, *reasoning = NULL, *content = NULL;
    size_t size;
    struct stream s = {0};
    int status = 0;

    /* The prompt goes into a JSON string: escape quotes, backslashes and control characters. */
    append(&body, "{\"model\": \"");
    append(&body, model_id);
    append(&body, "\", \"stream\": true, \"messages\": [{\"role\": \"user\", \"content\": \"");
    for (const char *p = prompt; *p; p++) {
        char esc[8] = {*p, 0};
        if (*p == '"' || *p == '\\')
            snprintf(esc, sizeof esc, "\\%c", *p);
        else if ((unsigned char)*p < 0x20)
            snprintf(esc, sizeof esc, "\\u%04x", (unsigned char)*p);
        append(&body, esc);
    }
    append(&body, "\"}]}");

    size = strlen(body) + strlen(host) + strlen(api_key ? api_key : "") + 256;
    request = malloc(size);
    snprintf(request, size,
             "POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%ld\r\n%s%s%sContent-Type: application/json\r\n"
             "Accept: text/event-stream\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
             host, port, api_key ? "Authorization: Bearer " : "", api_key ? api_key : "", api_key ? "\r\n" : "",
             strlen(body));
    s.fd = connect_to(host, port);
    if (s.fd < 0 || send_all(s.fd, request, strlen(request)) || send_all(s.fd, body, strlen(body))) {
        fprintf(stderr, "cannot send the request to %s:%ld\n", host, port);
        return -1;
    }

    /* Status line and headers. */
    if (raw_line(&s, line, sizeof line) < 0 || sscanf(line, "HTTP/%*s %d", &status) != 1) {
        fprintf(stderr, "no HTTP response\n");
        return -1;
    }
    while (raw_line(&s, line, sizeof line) > 0) {
        for (char *p = line; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
        if (strstr(line, "transfer-encoding:") == line && strstr(line, "chunked"))
            s.chunked = 1;
    }
    if (status != 200) {
        fprintf(stderr, "HTTP %d:\n", status);
        while (body_line(&s, line, sizeof line) >= 0)
            fprintf(stderr, "%s\n", line);
        return -1;
    }

    /* Server-Sent Events: "data: {chunk}" lines, ": keepalive" comments, "data: [DONE]". */
    while (body_line(&s, line, sizeof line) >= 0) {
        if (strncmp(line, "data: ", 6) != 0)
            continue;
        if (strcmp(line + 6, "[DONE]") == 0)
            break;
        if (json_value(line, "error") != NULL) {
            fprintf(stderr, "stream error: %s\n", line + 6);
            return -1;
        }
        char *think = json_string(line, "reasoning_content");
        char *text = json_string(line, "content");
        if (think != NULL && *think) {
            printf("[Thinking] %s\n", think);
            append(&reasoning, think);
        }
        if (text != NULL && *text) {
            printf("[Content] %s\n", text);
            append(&content, text);
        }
        free(think);
        free(text);
    }
    close(s.fd);
    printf("reasoning: %s\n", reasoning ? reasoning : "");
    printf("content: %s\n", content ? content : "");
    free(reasoning);
    free(content);
    free(request);
    free(body);
    return 0;
}

/* ------------------------------------------------------------------------ main ---------- */

int main(int argc, char **argv)
{
    char config[4096], *reply, *host, *api_key, *model_id;
    long port;
    int64_t handle;
    int rc;

    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL_DIR [PROMPT]\n", argv[0]);
        return 2;
    }
    const char *prompt = argc > 2 ? argv[2] : "Is the capital of France Paris? Answer Yes or No.";
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* 1. Load the model (blocks for the whole load). The path goes into a JSON string. */
    if (strpbrk(argv[1], "\"\\") != NULL) {
        fprintf(stderr, "this demo does not escape quotes or backslashes in MODEL_DIR\n");
        return 2;
    }
    snprintf(config, sizeof config, "{\"model_path\": \"%s\", \"thinking_enabled\": true}", argv[1]);
    reply = checked("load_model", lib_mlx_load_model(config));
    handle = json_int(reply, "handle", -1);
    lib_mlx_free(reply);

    /* 2. Start the server on any free port; the reply carries its address and bearer token. */
    reply = checked("start_server", lib_mlx_start_server(handle, "{\"port\": 0}"));
    host = json_string(reply, "host");
    port = json_int(reply, "port", 0);
    api_key = json_string(reply, "api_key");
    model_id = json_string(reply, "model_id");
    lib_mlx_free(reply);

    /* 3. Status. */
    lib_mlx_free(checked("server_status", lib_mlx_server_status(handle)));

    /* 4. Inference over HTTP, not over the ABI. */
    rc = stream_chat(host, port, api_key, model_id, prompt);

    /* 5. Stop, 6. unload (unload alone would also stop the server). */
    lib_mlx_free(checked("stop_server", lib_mlx_stop_server(handle)));
    lib_mlx_free(checked("unload_model", lib_mlx_unload_model(handle)));
    free(host);
    free(api_key);
    free(model_id);
    return rc == 0 ? 0 : 1;
}
