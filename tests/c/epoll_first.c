/* The boost.asio pattern: the socket is registered in epoll *before* connect(). A transplant
 * that loses the registration leaves the program waiting forever (libvma #1037).
 * usage: epoll_first IP PORT */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define FAIL(...) do { printf("FAIL " __VA_ARGS__); printf("\n"); return 1; } while (0)

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &dst.sin_addr);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u64 = 0xA51Cu};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev) != 0) FAIL("epoll_ctl ADD: %s", strerror(errno));
    if (connect(s, (struct sockaddr *)&dst, sizeof dst) == 0 || errno != EINPROGRESS)
        FAIL("connect: %s", strerror(errno));
    struct epoll_event got;
    int n = epoll_wait(ep, &got, 1, 10000);
    if (n != 1) FAIL("no epoll event for the connect (n=%d)", n);
    if (got.data.u64 != 0xA51Cu) FAIL("event data lost: %llx", (unsigned long long)got.data.u64);
    if (!(got.events & EPOLLOUT)) FAIL("connect event without EPOLLOUT: %x", got.events);
    int err = -1;
    socklen_t l = sizeof err;
    getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err != 0) FAIL("SO_ERROR %s", strerror(err));
    /* asio switches interest with EPOLL_CTL_MOD: must not be ENOENT. */
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
    if (epoll_ctl(ep, EPOLL_CTL_MOD, s, &ev) != 0) FAIL("epoll_ctl MOD: %s", strerror(errno));
    const char msg[] = "registered before connect";
    if (write(s, msg, sizeof msg) != (ssize_t)sizeof msg) FAIL("write: %s", strerror(errno));
    char buf[64];
    size_t have = 0;
    while (have < sizeof msg) {
        n = epoll_wait(ep, &got, 1, 10000);
        if (n != 1 || got.data.u64 != 0xA51Cu) FAIL("no readable event (n=%d)", n);
        for (;;) {
            ssize_t r = read(s, buf + have, sizeof buf - have);
            if (r > 0) { have += r; continue; }
            if (r < 0 && errno == EAGAIN) break;
            FAIL("read: %zd %s", r, strerror(errno));
        }
    }
    if (memcmp(buf, msg, sizeof msg) != 0) FAIL("echo differs");
    printf("ok\n");
    return 0;
}
