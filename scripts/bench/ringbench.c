/* The two ends of the rings benchmark (scripts/bench/rings.py), both run under the shim:
 *   ringbench recv PORT                     accept one stream, read it to EOF (64 KiB reads)
 *   ringbench send IP PORT SIZE SECONDS     write SIZE-byte writes for SECONDS, then close
 * Each prints one JSON line: bytes, writes (sender), seconds (receiver: first byte to EOF) and
 * its own CPU nanoseconds from /proc/self/schedstat. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static unsigned long long cpu_ns(void) {
    unsigned long long ns = 0;
    FILE *f = fopen("/proc/self/schedstat", "r");
    if (f) {
        if (fscanf(f, "%llu", &ns) != 1) ns = 0;
        fclose(f);
    }
    return ns;
}

static void die(const char *what) {
    fprintf(stderr, "ringbench: %s: %s\n", what, strerror(errno));
    exit(2);
}

int main(int argc, char **argv) {
    static char buf[1 << 16];
    if (argc == 3 && strcmp(argv[1], "recv") == 0) {
        int l = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
        if (bind(l, (struct sockaddr *)&a, sizeof a) != 0) die("bind");
        if (listen(l, 4) != 0) die("listen");
        int fd = accept(l, NULL, NULL);
        if (fd < 0) die("accept");
        unsigned long long bytes = 0;
        double first = 0;
        for (;;) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) die("read");
            if (n == 0) break;
            if (bytes == 0) first = now();
            bytes += (unsigned long long)n;
        }
        double secs = now() - first;
        printf("{\"bytes\": %llu, \"seconds\": %.6f, \"cpu_ns\": %llu}\n", bytes, secs, cpu_ns());
        return 0;
    }
    if (argc == 6 && strcmp(argv[1], "send") == 0) {
        size_t size = strtoul(argv[4], NULL, 10);
        double seconds = atof(argv[5]);
        if (size == 0 || size > sizeof buf) {
            fprintf(stderr, "ringbench: SIZE must be 1..65536\n");
            return 2;
        }
        memset(buf, 'w', size);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
        inet_pton(AF_INET, argv[2], &a.sin_addr);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) die("connect");
        unsigned long long bytes = 0, writes = 0;
        double start = now(), end = start + seconds;
        for (;;) {
            ssize_t n = write(fd, buf, size);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) die("write");
            bytes += (unsigned long long)n;
            writes++;
            if ((writes & 255) == 0 && now() >= end) break;
        }
        close(fd);
        printf("{\"bytes\": %llu, \"writes\": %llu, \"cpu_ns\": %llu}\n", bytes, writes, cpu_ns());
        return 0;
    }
    fprintf(stderr, "usage: ringbench recv PORT | send IP PORT SIZE SECONDS\n");
    return 2;
}
