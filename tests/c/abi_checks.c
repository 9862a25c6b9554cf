/*
 * abi_checks: bad input, concurrency and leak checks of liblib_mlx, linked directly against
 * it through lib_mlx.h. Every reply is printed on one line as
 *
 *   <label> <json reply, or null for a NULL return>
 *
 * and the test decides what each should be. Modes:
 *
 *   abi_checks bad_input MODEL_DIR   the bad-input list, one line per case
 *   abi_checks threads MODEL_DIR     4 threads x status/start/stop on two handles
 *   abi_checks rss MODEL_DIR         10,000 status + free calls; prints RSS before and after
 *   abi_checks background MODEL_DIR  load with "wait": false, poll the status every 5 ms until
 *                                    the model is ready (or failed), serve, unload
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lib_mlx.h"

static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;

/* Prints "<label> <reply>" and frees the reply. */
static void show(const char *label, char *reply)
{
    pthread_mutex_lock(&print_lock);
    printf("%s %s\n", label, reply ? reply : "null");
    fflush(stdout);
    pthread_mutex_unlock(&print_lock);
    lib_mlx_free(reply);
}

static int64_t load(const char *model_dir)
{
    char config[4096];
    char *reply, *at;
    int64_t handle = 0;
    snprintf(config, sizeof config, "{\"model_path\": \"%s\"}", model_dir);
    reply = lib_mlx_load_model(config);
    if (reply != NULL && strstr(reply, "\"ok\": true") != NULL &&
        (at = strstr(reply, "\"handle\":")) != NULL)
        handle = strtoll(at + strlen("\"handle\":"), NULL, 10);
    show("load_model", reply);
    if (handle <= 0)
        exit(1);
    return handle;
}

/* A port that is busy: a socket of ours listens on it. */
static int busy_port(int *fd)
{
    struct sockaddr_in addr;
    socklen_t size = sizeof addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    *fd = socket(AF_INET, SOCK_STREAM, 0);
    if (*fd < 0 || bind(*fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(*fd, 1) != 0 ||
        getsockname(*fd, (struct sockaddr *)&addr, &size) != 0) {
        perror("busy_port");
        exit(1);
    }
    return ntohs(addr.sin_port);
}

static int bad_input(const char *model_dir)
{
    char config[64];
    int64_t handle;
    int fd, port;

    /* load_model: NULL, not UTF-8, not JSON, wrong shapes, a missing model */
    show("load_null", lib_mlx_load_model(NULL));
    show("load_empty", lib_mlx_load_model(""));
    show("load_bad_utf8", lib_mlx_load_model("{\"model_path\": \"\xff\xfe\"}"));
    show("load_truncated_utf8", lib_mlx_load_model("{\"model_path\": \"\xc3"));
    show("load_not_json", lib_mlx_load_model("{model_path: /x"));
    show("load_array", lib_mlx_load_model("[\"/x\"]"));
    show("load_string", lib_mlx_load_model("\"/x\""));
    show("load_empty_object", lib_mlx_load_model("{}"));
    show("load_path_wrong_type", lib_mlx_load_model("{\"model_path\": 42}"));
    show("load_flag_wrong_type", lib_mlx_load_model("{\"model_path\": \"/x\", \"thinking_enabled\": \"yes\"}"));
    show("load_missing_dir", lib_mlx_load_model("{\"model_path\": \"/nonexistent/lib_mlx/model\"}"));
    /* valid JSON naming a lone surrogate: the reply must still be valid UTF-8 */
    show("load_lone_surrogate", lib_mlx_load_model("{\"model_path\": \"/nonexistent/\\ud800\"}"));

    handle = load(model_dir);

    /* start_server on a good handle with bad configs */
    show("start_bad_utf8", lib_mlx_start_server(handle, "{\"host\": \"\xc3\x28\"}"));
    show("start_not_json", lib_mlx_start_server(handle, "port=0"));
    show("start_array", lib_mlx_start_server(handle, "[]"));
    show("start_port_wrong_type", lib_mlx_start_server(handle, "{\"port\": \"eighty\"}"));
    show("start_port_out_of_range", lib_mlx_start_server(handle, "{\"port\": 70000}"));
    show("start_queue_limit_zero", lib_mlx_start_server(handle, "{\"queue_limit\": 0}"));
    port = busy_port(&fd);
    snprintf(config, sizeof config, "{\"port\": %d}", port);
    show("start_port_in_use", lib_mlx_start_server(handle, config));
    close(fd);

    /* handles never issued */
    show("start_unknown_handle", lib_mlx_start_server(999999, "{}"));
    show("start_negative_handle", lib_mlx_start_server(-1, NULL));
    show("stop_unknown_handle", lib_mlx_stop_server(0));
    show("status_unknown_handle", lib_mlx_server_status(INT64_MAX));
    show("unload_unknown_handle", lib_mlx_unload_model(INT64_MIN));

    /* stop before any start, start with a NULL config (defaults), stop twice */
    show("stop_never_started", lib_mlx_stop_server(handle));
    show("start_null_config", lib_mlx_start_server(handle, NULL));
    show("start_again", lib_mlx_start_server(handle, "{}"));
    show("stop_running", lib_mlx_stop_server(handle));
    show("stop_stopped", lib_mlx_stop_server(handle));

    /* the handle after unload */
    show("unload", lib_mlx_unload_model(handle));
    show("status_unloaded", lib_mlx_server_status(handle));
    show("start_unloaded", lib_mlx_start_server(handle, "{}"));
    show("stop_unloaded", lib_mlx_stop_server(handle));
    show("unload_unloaded", lib_mlx_unload_model(handle));

    lib_mlx_free(NULL);
    show("free_null", NULL);
    return 0;
}

enum { THREADS = 4, ROUNDS = 12 };
static int64_t handles[2];

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg, round;
    char label[64];
    for (round = 0; round < ROUNDS; round++) {
        int which = (id + round) % 2, op = (id + round / 2) % 3;
        int64_t handle = handles[which];
        char *reply = op == 0   ? lib_mlx_server_status(handle)
                      : op == 1 ? lib_mlx_start_server(handle, "{\"port\": 0}")
                                : lib_mlx_stop_server(handle);
        snprintf(label, sizeof label, "t%d.%s.h%d", id, op == 0 ? "status" : op == 1 ? "start" : "stop",
                 which);
        show(label, reply);
    }
    return NULL;
}

/* The very first calls of the process, from all threads at once: the interpreter starts once. */
static void *first_call(void *arg)
{
    char label[32];
    snprintf(label, sizeof label, "first.t%d", (int)(intptr_t)arg);
    show(label, lib_mlx_server_status(424242));
    return NULL;
}

static int threads(const char *model_dir)
{
    pthread_t tids[THREADS];
    int i;
    for (i = 0; i < THREADS; i++)
        if (pthread_create(&tids[i], NULL, first_call, (void *)(intptr_t)i) != 0)
            return 1;
    for (i = 0; i < THREADS; i++)
        pthread_join(tids[i], NULL);
    handles[0] = load(model_dir);
    handles[1] = load(model_dir);
    for (i = 0; i < THREADS; i++)
        if (pthread_create(&tids[i], NULL, worker, (void *)(intptr_t)i) != 0)
            return 1;
    for (i = 0; i < THREADS; i++)
        pthread_join(tids[i], NULL);
    show("unload_0", lib_mlx_unload_model(handles[0]));
    show("unload_1", lib_mlx_unload_model(handles[1]));
    return 0;
}

static long rss_bytes(void)
{
    long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL || fscanf(f, "%ld %ld", &size, &resident) != 2) {
        perror("statm");
        exit(1);
    }
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

static int status_loop(int64_t handle, int calls)
{
    int i, failures = 0;
    for (i = 0; i < calls; i++) {
        char *reply = lib_mlx_server_status(handle);
        if (reply == NULL || strstr(reply, "\"ok\": true") == NULL)
            failures++;
        lib_mlx_free(reply);
    }
    return failures;
}

static int rss(const char *model_dir)
{
    int64_t handle = load(model_dir);
    long before, after;
    int failures = status_loop(handle, 1000); /* warm-up: caches, allocator arenas */
    before = rss_bytes();
    failures += status_loop(handle, 10000);
    after = rss_bytes();
    printf("rss {\"before\": %ld, \"after\": %ld, \"failures\": %d}\n", before, after, failures);
    show("unload", lib_mlx_unload_model(handle));
    return 0;
}

/* A host's loading screen: load in the background, poll lib_mlx_server_status (from any
 * thread; here the main one) until the model's status is no longer "loading". */
static int background(const char *model_dir)
{
    char config[4096];
    char *reply, *at;
    int64_t handle = 0;
    int polls;
    struct timespec pause = {0, 5 * 1000 * 1000};

    snprintf(config, sizeof config, "{\"model_path\": \"%s\", \"wait\": false}", model_dir);
    reply = lib_mlx_load_model(config);
    if (reply != NULL && (at = strstr(reply, "\"handle\":")) != NULL)
        handle = strtoll(at + strlen("\"handle\":"), NULL, 10);
    show("load_model", reply);
    if (handle <= 0)
        return 1;
    for (polls = 0; polls < 6000; polls++) {
        int loading;
        reply = lib_mlx_server_status(handle);
        loading = reply != NULL && strstr(reply, "\"model\": {\"status\": \"loading\"") != NULL;
        show("status", reply);
        if (!loading)
            break;
        nanosleep(&pause, NULL);
    }
    show("start_server", lib_mlx_start_server(handle, "{\"port\": 0}"));
    show("unload", lib_mlx_unload_model(handle));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s bad_input|threads|rss|background MODEL_DIR\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "bad_input") == 0)
        return bad_input(argv[2]);
    if (strcmp(argv[1], "threads") == 0)
        return threads(argv[2]);
    if (strcmp(argv[1], "rss") == 0)
        return rss(argv[2]);
    if (strcmp(argv[1], "background") == 0)
        return background(argv[2]);
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
