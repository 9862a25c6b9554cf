/*
 * exit_host: a C host that exits while a generation streams, without stopping or unloading.
 *
 *   usage: exit_host MODEL_DIR
 *
 * Loads MODEL_DIR, starts the server (auth "none"), opens a streamed chat completion on its
 * own socket, reads until three SSE "data:" frames have arrived, prints "streaming" and calls
 * exit(0) with the engine still generating. The library's exit hook must end that work before
 * MLX is torn down: the test counts crashes (signals) over repeated runs. The host's own atexit
 * handler, registered before the library's (so it runs after it), reports whether the
 * listener was closed by then: "after_exit listener_closed" or "after_exit listener_open".
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib_mlx.h"

static long number_field(const char *json, const char *key)
{
    char quoted[64];
    const char *at;
    snprintf(quoted, sizeof quoted, "\"%s\"", key);
    at = json ? strstr(json, quoted) : NULL;
    if (at == NULL)
        return -1;
    at += strlen(quoted);
    while (*at == ' ' || *at == ':')
        at++;
    return strtol(at, NULL, 10);
}

static long served_port = -1;

static int connect_to(long port)
{
    struct sockaddr_in addr;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void after_library_exit_hook(void)
{
    int fd;
    if (served_port < 1)
        return;
    fd = connect_to(served_port);
    printf("after_exit %s\n", fd < 0 ? "listener_closed" : "listener_open");
    fflush(stdout);
    if (fd >= 0)
        close(fd);
}

static int count(const char *text, const char *needle)
{
    int n = 0;
    for (const char *at = strstr(text, needle); at != NULL; at = strstr(at + 1, needle))
        n++;
    return n;
}

int main(int argc, char **argv)
{
    static char config[8192], request[4096], got[1 << 16];
    const char *body = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], "
                       "\"max_tokens\": 100000, \"ignore_eos\": true, \"stream\": true}";
    size_t used = 0;
    long handle, port;
    char *reply;
    int fd;

    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]);
        return 2;
    }
    atexit(after_library_exit_hook); /* before the library registers its hook */
    snprintf(config, sizeof config, "{\"model_path\": \"%s\"}", argv[1]);
    reply = lib_mlx_load_model(config);
    handle = number_field(reply, "handle");
    lib_mlx_free(reply);
    if (handle < 1) {
        fprintf(stderr, "exit_host: load_model failed\n");
        return 1;
    }
    reply = lib_mlx_start_server(handle, "{\"auth\": \"none\"}");
    port = number_field(reply, "port");
    lib_mlx_free(reply);
    if (port < 1) {
        fprintf(stderr, "exit_host: start_server failed\n");
        return 1;
    }
    served_port = port;
    fd = connect_to(port);
    if (fd < 0) {
        perror("exit_host: connect");
        return 1;
    }
    snprintf(request, sizeof request,
             "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%ld\r\n"
             "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
             port, strlen(body), body);
    if (write(fd, request, strlen(request)) < 0) {
        perror("exit_host: write");
        return 1;
    }
    while (count(got, "data:") < 3 && used < sizeof got - 1) {
        ssize_t n = read(fd, got + used, sizeof got - 1 - used);
        if (n <= 0) {
            fprintf(stderr, "exit_host: the stream ended early\n");
            return 1;
        }
        used += (size_t)n;
        got[used] = '\0';
    }
    printf("streaming\n");
    fflush(stdout);
    exit(0); /* no stop_server, no unload_model: the exit hook's job */
}
