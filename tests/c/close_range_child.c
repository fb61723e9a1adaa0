/* A forked child that closes every descriptor above 2 with close_range (as ssh and many
 * daemons do) must still reach the overlay, and the parent's session must be unaffected.
 * usage: close_range_child IP PORT */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static struct sockaddr_in dst;

static int dial(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&dst, sizeof dst) != 0) {
        printf("connect: %s\n", strerror(errno));
        return -1;
    }
    return s;
}

static int echo(int fd, const char *msg) {
    size_t len = strlen(msg) + 1, have = 0;
    char buf[128];
    if (write(fd, msg, len) != (ssize_t)len) return 0;
    while (have < len) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10000) != 1) return 0;
        ssize_t n = read(fd, buf + have, sizeof buf - have);
        if (n <= 0) return 0;
        have += n;
    }
    return memcmp(buf, msg, len) == 0;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    dst.sin_family = AF_INET;
    dst.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &dst.sin_addr);
    int s = dial();
    if (s < 0 || !echo(s, "parent before fork")) { printf("FAIL parent session\n"); return 1; }
    pid_t pid = fork();
    if (pid == 0) {
        int c1 = dial();
        if (c1 < 0 || !echo(c1, "child first")) { printf("FAIL child first session\n"); _exit(1); }
        if (close_range(3, ~0U, 0) != 0) { printf("FAIL close_range: %s\n", strerror(errno)); _exit(1); }
        if (fcntl(s, F_GETFD) != -1 || fcntl(c1, F_GETFD) != -1) { printf("FAIL fds survived\n"); _exit(1); }
        int c2 = dial();
        if (c2 < 0 || !echo(c2, "child after close_range")) { printf("FAIL child after close_range\n"); _exit(1); }
        int c3 = socket(AF_INET, SOCK_STREAM, 0);
        closefrom(3);
        if (fcntl(c3, F_GETFD) != -1) { printf("FAIL closefrom left a descriptor\n"); _exit(1); }
        int c4 = dial();
        if (c4 < 0 || !echo(c4, "child after closefrom")) { printf("FAIL child after closefrom\n"); _exit(1); }
        printf("child ok\n");
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { printf("FAIL child exit %d\n", st); return 1; }
    if (!echo(s, "parent after child")) { printf("FAIL parent after child\n"); return 1; }
    printf("ok\n");
    return 0;
}
