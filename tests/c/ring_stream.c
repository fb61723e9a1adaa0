/* A byte stream over an overlay session with every read/write-family call the shim hooks in
 * ring mode, and a revocation in the middle: the sender writes TOTAL bytes of a position-keyed
 * pattern (so a lost, doubled or reordered byte shows at its offset); the receiver checks each
 * byte, switching calls as it goes, and at REVOKE_AT bytes either forks (the child reads on
 * with stdio, fdopen + fread, the parent closes its copy) or dups the fd (reading on the new
 * number). Prints one line at the end; exits non-zero on the first deviation.
 * usage: ring_stream send PORT TOTAL [epoll]
 *        ring_stream recv IP PORT TOTAL REVOKE_AT fork|dup|scm|exec|epoll|none
 * (scm: the fd travels through an SCM_RIGHTS message to this process and reading goes on on
 * the received number; exec: the program re-executes itself, which reads on the inherited fd;
 * epoll: no revocation, a non-blocking fd read to EAGAIN on each edge-triggered EPOLLIN. The
 * sender's `epoll` writes non-blocking to EAGAIN and waits for edge-triggered EPOLLOUT.) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t total_bytes;
static const char *self_exe;

static uint64_t splitmix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static unsigned char pattern(uint64_t off) {
    return (unsigned char)(splitmix(off >> 3) >> ((off & 7) * 8));
}

static void fill(unsigned char *b, uint64_t off, size_t n) {
    for (size_t i = 0; i < n; i++) b[i] = pattern(off + i);
}

static void die(const char *what) {
    fprintf(stderr, "ring_stream: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void check(const unsigned char *b, uint64_t off, size_t n, const char *who) {
    for (size_t i = 0; i < n; i++) {
        if (b[i] != pattern(off + i)) {
            printf("%s MISMATCH at offset %llu: got %u want %u\n", who,
                   (unsigned long long)(off + i), b[i], pattern(off + i));
            exit(1);
        }
    }
}

static int edge_epoll(int fd, uint32_t events) {
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = events | EPOLLET, .data.fd = fd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl");
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) die("O_NONBLOCK");
    return ep;
}

static void wait_edge(int ep) {
    struct epoll_event ev;
    for (;;) {
        int n = epoll_wait(ep, &ev, 1, 30000);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("epoll_wait");
        if (n == 0) {
            printf("no edge-triggered event in 30 s\n");
            exit(1);
        }
        return;
    }
}

static int send_all(int fd, uint64_t total, int ep) {
    static unsigned char buf[65536 + 64];
    static const size_t sizes[] = {1400, 65536, 64, 7, 20000, 1};
    uint64_t off = 0;
    unsigned k = 0;
    int file = memfd_create("ring_stream", 0);
    if (file < 0) die("memfd_create");
    while (off < total) {
        size_t n = sizes[k % 6];
        if (n > total - off) n = total - off;
        fill(buf, off, n);
        ssize_t w;
        switch (k % 5) {
        case 4: {
            /* sendfile from a file holding the chunk (may send part of it). A plain AF_UNIX
             * socket queues references to the file's pages, so a region is rewritten only
             * long after its bytes left the socket. */
            off_t base = (off_t)(off % (16u << 20));
            if (pwrite(file, buf, n, base) != (ssize_t)n) die("pwrite");
            off_t at = base;
            w = sendfile(fd, file, &at, n);
            if (w >= 0 && at != base + w) {
                printf("sendfile moved the offset to %lld after %zd bytes\n", (long long)at, w);
                exit(1);
            }
            break;
        }
        case 0: w = write(fd, buf, n); break;
        case 1: w = send(fd, buf, n, MSG_NOSIGNAL); break;
        case 2: {
            size_t h = n / 2;
            struct iovec iov[2] = {{buf, h}, {buf + h, n - h}};
            w = writev(fd, iov, 2);
            break;
        }
        default: w = sendto(fd, buf, n, 0, NULL, 0); break;
        }
        if (w < 0) {
            if (errno == EINTR) continue;
            if (ep >= 0 && errno == EAGAIN) {
                wait_edge(ep);
                continue;
            }
            die("send");
        }
        off += (uint64_t)w;
        k++;
    }
    return 0;
}

/* One read of up to `want` bytes at `off` through the k-th call of the rotation. */
static ssize_t read_some(int fd, unsigned char *buf, size_t want, uint64_t off, unsigned k) {
    switch (k % 7) {
    case 0: return read(fd, buf, want);
    case 1: return recv(fd, buf, want, 0);
    case 2: {
        size_t h = want / 3;
        struct iovec iov[2] = {{buf, h}, {buf + h, want - h}};
        return readv(fd, iov, 2);
    }
    case 3: {
        struct iovec iov = {buf, want};
        struct msghdr m = {0};
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        return recvmsg(fd, &m, 0);
    }
    case 4: {
        /* A peek shows the bytes a read then takes. */
        static unsigned char peeked[65536];
        size_t p = want < sizeof peeked ? want : sizeof peeked;
        ssize_t n = recv(fd, peeked, p, MSG_PEEK);
        if (n <= 0) return n;
        check(peeked, off, (size_t)n, "peek");
        ssize_t r = read(fd, buf, (size_t)n);
        if (r != n) {
            printf("peek then read: %zd vs %zd\n", n, r);
            exit(1);
        }
        return r;
    }
    case 5: {
        /* WAITALL fills the whole buffer unless the stream ends. */
        size_t w = want < 3000 ? want : 3000;
        ssize_t n = recv(fd, buf, w, MSG_WAITALL);
        if (n >= 0 && (size_t)n != w && off + (uint64_t)n != total_bytes) {
            printf("MSG_WAITALL returned %zd of %zu\n", n, w);
            exit(1);
        }
        return n;
    }
    default: {
        /* FIONREAD counts bytes a non-blocking read then finds. */
        int queued = -1;
        if (ioctl(fd, FIONREAD, &queued) != 0) die("FIONREAD");
        if (queued > 0) {
            size_t w = (size_t)queued < want ? (size_t)queued : want;
            ssize_t n = recv(fd, buf, w, MSG_DONTWAIT);
            if (n != (ssize_t)w) {
                printf("FIONREAD said %d, recv(DONTWAIT) of %zu got %zd\n", queued, w, n);
                exit(1);
            }
            return n;
        }
        return recvfrom(fd, buf, want, 0, NULL, NULL);
    }
    }
}

static int recv_all(const char *ip, int port, uint64_t total, uint64_t revoke_at, const char *mode) {
    total_bytes = total;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) die("connect");
    static unsigned char buf[70000];
    static const size_t wants[] = {65536, 1400, 64, 1, 9000, 33333};
    int ep = strcmp(mode, "epoll") == 0 ? edge_epoll(fd, EPOLLIN) : -1;
    uint64_t off = 0;
    unsigned k = 0;
    int revoked = 0;
    for (;;) {
        if (!revoked && off >= revoke_at) {
            revoked = 1;
            if (strcmp(mode, "fork") == 0) {
                fflush(stdout);
                pid_t pid = fork();
                if (pid < 0) die("fork");
                if (pid == 0) {
                    /* The child reads on, cat-style, through stdio. */
                    FILE *f = fdopen(fd, "r");
                    if (!f) die("fdopen");
                    size_t n;
                    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
                        check(buf, off, n, "child");
                        off += n;
                    }
                    if (ferror(f)) die("fread");
                    printf("child ok %llu\n", (unsigned long long)off);
                    return off == total ? 0 : 1;
                }
                close(fd);
                int st = 0;
                if (waitpid(pid, &st, 0) < 0) die("waitpid");
                printf("parent read %llu before the fork\n", (unsigned long long)revoke_at);
                return WIFEXITED(st) ? WEXITSTATUS(st) : 3;
            } else if (strcmp(mode, "exec") == 0) {
                char fds[16], offs[32], tots[32];
                snprintf(fds, sizeof fds, "%d", fd);
                snprintf(offs, sizeof offs, "%llu", (unsigned long long)off);
                snprintf(tots, sizeof tots, "%llu", (unsigned long long)total);
                fflush(stdout);
                execl(self_exe, self_exe, "cont", fds, offs, tots, (char *)NULL);
                die("exec");
            } else if (strcmp(mode, "scm") == 0) {
                int pair[2];
                if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) die("socketpair");
                char c = 'f';
                struct iovec iov = {&c, 1};
                union {
                    struct cmsghdr h;
                    char space[CMSG_SPACE(sizeof(int))];
                } u;
                struct msghdr m = {0};
                m.msg_iov = &iov;
                m.msg_iovlen = 1;
                m.msg_control = u.space;
                m.msg_controllen = sizeof u.space;
                struct cmsghdr *h = CMSG_FIRSTHDR(&m);
                h->cmsg_level = SOL_SOCKET;
                h->cmsg_type = SCM_RIGHTS;
                h->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(h), &fd, sizeof(int));
                if (sendmsg(pair[0], &m, 0) != 1) die("sendmsg SCM_RIGHTS");
                close(fd);
                m.msg_controllen = sizeof u.space;
                if (recvmsg(pair[1], &m, 0) != 1) die("recvmsg SCM_RIGHTS");
                h = CMSG_FIRSTHDR(&m);
                if (!h || h->cmsg_type != SCM_RIGHTS) die("no descriptor passed");
                memcpy(&fd, CMSG_DATA(h), sizeof(int));
                close(pair[0]);
                close(pair[1]);
            } else if (strcmp(mode, "dup") == 0) {
                int nfd = dup(fd);
                if (nfd < 0) die("dup");
                close(fd);
                fd = nfd;
            }
        }
        size_t want = wants[k % 6];
        if (want > sizeof buf - 8) want = sizeof buf - 8;
        ssize_t n = ep >= 0 ? read(fd, buf, want) : read_some(fd, buf, want, off, k);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (ep >= 0 && errno == EAGAIN) {
                wait_edge(ep);
                continue;
            }
            die("read");
        }
        if (n == 0) break;
        check(buf, off, (size_t)n, "reader");
        off += (uint64_t)n;
        k++;
    }
    printf("reader ok %llu\n", (unsigned long long)off);
    return off == total ? 0 : 1;
}

int main(int argc, char **argv) {
    if ((argc == 4 || argc == 5) && strcmp(argv[1], "send") == 0) {
        int l = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
        if (bind(l, (struct sockaddr *)&a, sizeof a) != 0) die("bind");
        if (listen(l, 4) != 0) die("listen");
        int fd = accept(l, NULL, NULL);
        if (fd < 0) die("accept");
        int ep = argc == 5 && strcmp(argv[4], "epoll") == 0 ? edge_epoll(fd, EPOLLOUT) : -1;
        send_all(fd, strtoull(argv[3], NULL, 10), ep);
        close(fd);
        printf("sender done\n");
        return 0;
    }
    self_exe = argv[0];
    if (argc == 5 && strcmp(argv[1], "cont") == 0) {
        /* After an exec: read on the inherited fd from the given offset. */
        int fd = atoi(argv[2]);
        uint64_t off = strtoull(argv[3], NULL, 10), total = strtoull(argv[4], NULL, 10);
        static unsigned char buf[65536];
        for (;;) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) die("read after exec");
            if (n == 0) break;
            check(buf, off, (size_t)n, "exec");
            off += (uint64_t)n;
        }
        printf("exec ok %llu\n", (unsigned long long)off);
        return off == total ? 0 : 1;
    }
    if (argc == 7 && strcmp(argv[1], "recv") == 0) {
        return recv_all(argv[2], atoi(argv[3]), strtoull(argv[4], NULL, 10),
                        strtoull(argv[5], NULL, 10), argv[6]);
    }
    fprintf(stderr, "usage: ring_stream send PORT TOTAL | recv IP PORT TOTAL REVOKE_AT fork|dup|none\n");
    return 2;
}
