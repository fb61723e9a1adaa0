/* Socket calls on kernel destinations only. Every line of output (return value and errno)
 * must be identical with and without the shim: pass-through means the same behaviour. Nothing
 * that varies between runs (ports, timing) is printed. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

static void show(const char *what, long rc, int err) {
    printf("%-34s rc=%ld errno=%s\n", what, rc, rc < 0 ? strerrorname_np(err) : "-");
}
#define T(what, expr)                      \
    do {                                   \
        errno = 0;                         \
        long rc_ = (long)(expr);           \
        show(what, rc_ < 0 ? -1 : rc_ > 0 ? 1 : 0, errno); \
    } while (0)
#define V(what, expr)                      \
    do {                                   \
        errno = 0;                         \
        long rc_ = (long)(expr);           \
        show(what, rc_, errno);            \
    } while (0)

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int port_of(int fd) {
    struct sockaddr_in a;
    socklen_t l = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &l);
    return ntohs(a.sin_port);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int one = 1, v = 0;
    socklen_t vl;

    /* A port nobody listens on: bind one, read it, close it. */
    int probe = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in any = loopback(0);
    bind(probe, (struct sockaddr *)&any, sizeof any);
    int closed_port = port_of(probe);
    close(probe);
    struct sockaddr_in closed = loopback(closed_port);

    int s = socket(AF_INET, SOCK_STREAM, 0);
    T("blocking connect refused", connect(s, (struct sockaddr *)&closed, sizeof closed));
    close(s);

    s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    T("nonblocking connect refused", connect(s, (struct sockaddr *)&closed, sizeof closed));
    struct pollfd p = {.fd = s, .events = POLLOUT};
    poll(&p, 1, 5000);
    V("  poll POLLOUT|POLLERR|POLLHUP", p.revents & (POLLOUT | POLLERR | POLLHUP));
    vl = sizeof v;
    T("  SO_ERROR", getsockopt(s, SOL_SOCKET, SO_ERROR, &v, &vl));
    printf("  SO_ERROR value %s\n", v ? strerrorname_np(v) : "0");
    vl = sizeof v;
    getsockopt(s, SOL_SOCKET, SO_ERROR, &v, &vl);
    printf("  SO_ERROR again %d\n", v);
    close(s);

    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    T("SO_REUSEADDR", setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    T("bind listener", bind(l, (struct sockaddr *)&any, sizeof any));
    T("listen", listen(l, 8));
    T("listen again", listen(l, 16));
    struct sockaddr_in to = loopback(port_of(l));
    int dup_bind = socket(AF_INET, SOCK_STREAM, 0);
    T("bind in use", bind(dup_bind, (struct sockaddr *)&to, sizeof to));
    close(dup_bind);

    s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLET, .data.u64 = 42};
    T("epoll add before connect", epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev));
    T("epoll add twice", epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev));
    T("TCP_NODELAY before connect", setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one));
    errno = 0;
    int rc = connect(s, (struct sockaddr *)&to, sizeof to);
    printf("%-34s %s\n", "nonblocking connect", rc == 0 || errno == EINPROGRESS ? "started" : strerrorname_np(errno));
    struct epoll_event got;
    V("  epoll_wait", epoll_wait(ep, &got, 1, 5000));
    printf("  event data %llu out %d\n", (unsigned long long)got.data.u64, !!(got.events & EPOLLOUT));
    vl = sizeof v;
    getsockopt(s, SOL_SOCKET, SO_ERROR, &v, &vl);
    printf("  SO_ERROR %d\n", v);
    T("  connect after success", connect(s, (struct sockaddr *)&to, sizeof to) == 0 ? 0 : -1);
    T("  connect once more", connect(s, (struct sockaddr *)&to, sizeof to));

    struct sockaddr_in6 peer6;
    socklen_t pl = 4; /* too short: truncated, full length reported */
    int a = accept4(l, (struct sockaddr *)&peer6, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    printf("%-34s %s len=%u\n", "accept4 short buffer", a >= 0 ? "ok" : strerrorname_np(errno), pl);
    V("  accepted O_NONBLOCK", (fcntl(a, F_GETFL) & O_NONBLOCK) != 0);
    V("  accepted FD_CLOEXEC", (fcntl(a, F_GETFD) & FD_CLOEXEC) != 0);
    fcntl(l, F_SETFL, fcntl(l, F_GETFL) | O_NONBLOCK);
    T("  accept4 again (none)", accept4(l, NULL, NULL, SOCK_NONBLOCK));
    T("  accept bad len ptr", accept(l, (struct sockaddr *)&peer6, NULL));

    struct sockaddr_in name;
    socklen_t nl = sizeof name;
    T("getpeername", getpeername(s, (struct sockaddr *)&name, &nl));
    printf("  peer %s len %u\n", inet_ntoa(name.sin_addr), nl);
    nl = sizeof name;
    T("getsockname", getsockname(a, (struct sockaddr *)&name, &nl));
    printf("  local %s\n", inet_ntoa(name.sin_addr));
    vl = sizeof v;
    T("TCP_NODELAY", getsockopt(s, IPPROTO_TCP, TCP_NODELAY, &v, &vl));
    printf("  value %d len %u\n", v, vl);
    char cc[32] = {0};
    vl = 3;
    T("TCP_CONGESTION short", getsockopt(s, IPPROTO_TCP, TCP_CONGESTION, cc, &vl));
    printf("  len %u\n", vl);
    vl = sizeof v;
    T("unknown TCP option", getsockopt(s, IPPROTO_TCP, 9999, &v, &vl));
    T("UDP_SEGMENT on TCP", setsockopt(s, IPPROTO_UDP, UDP_SEGMENT, &one, sizeof one));

    T("sendto with address (TCP)", sendto(s, "ping", 4, 0, (struct sockaddr *)&to, sizeof to));
    p.fd = a;
    p.events = POLLIN;
    poll(&p, 1, 5000);
    char buf[64];
    V("  recv", recv(a, buf, sizeof buf, 0));
    struct sockaddr_in from;
    socklen_t fl = sizeof from;
    V("  recvfrom on TCP", recvfrom(a, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl));
    printf("  fromlen %u\n", fl);

    int d = fcntl(s, F_DUPFD_CLOEXEC, 50);
    V("F_DUPFD_CLOEXEC", d >= 50);
    T("dup2 onto dup", dup2(a, d));
    T("close_range dup", close_range(d, d, 0));
    T("close dup again", close(d));
    T("shutdown WR", shutdown(s, SHUT_WR));
    p.fd = a;
    poll(&p, 1, 5000);
    V("  peer reads EOF", recv(a, buf, sizeof buf, 0));
    T("close", close(s));
    T("close twice", close(s));
    T("epoll mod closed fd", epoll_ctl(ep, EPOLL_CTL_MOD, s, &ev));
    close(a);

    s = socket(AF_INET, SOCK_STREAM, 0);
    nl = sizeof name;
    T("getpeername unconnected", getpeername(s, (struct sockaddr *)&name, &nl));
    close(s);

    int u = socket(AF_INET, SOCK_DGRAM, 0);
    T("udp bind", bind(u, (struct sockaddr *)&any, sizeof any));
    struct sockaddr_in self = loopback(port_of(u));
    T("udp sendto self", sendto(u, "hello", 5, 0, (struct sockaddr *)&self, sizeof self));
    fl = sizeof from;
    V("  recvfrom", recvfrom(u, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl));
    printf("  from %s same port %d\n", inet_ntoa(from.sin_addr), ntohs(from.sin_port) == port_of(u));
    struct msghdr mh = {0};
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_name = &from;
    mh.msg_namelen = sizeof from;
    sendto(u, "again", 5, 0, (struct sockaddr *)&self, sizeof self);
    V("  recvmsg", recvmsg(u, &mh, 0));
    printf("  namelen %u\n", mh.msg_namelen);
    struct mmsghdr mm[2];
    memset(mm, 0, sizeof mm);
    struct sockaddr_in mfrom[2];
    struct iovec miov[2] = {{buf, 32}, {buf + 32, 32}};
    for (int i = 0; i < 2; i++) {
        mm[i].msg_hdr.msg_iov = &miov[i];
        mm[i].msg_hdr.msg_iovlen = 1;
        mm[i].msg_hdr.msg_name = &mfrom[i];
        mm[i].msg_hdr.msg_namelen = sizeof mfrom[i];
        mm[i].msg_hdr.msg_name = &mfrom[i];
    }
    struct mmsghdr sm[2];
    memset(sm, 0, sizeof sm);
    struct iovec siov[2] = {{"one", 3}, {"two", 3}};
    for (int i = 0; i < 2; i++) {
        sm[i].msg_hdr.msg_iov = &siov[i];
        sm[i].msg_hdr.msg_iovlen = 1;
        sm[i].msg_hdr.msg_name = &self;
        sm[i].msg_hdr.msg_namelen = sizeof self;
    }
    V("  sendmmsg", sendmmsg(u, sm, 2, 0));
    V("  recvmmsg", recvmmsg(u, mm, 2, MSG_WAITFORONE, NULL));
    printf("  lens %u %u names %u\n", mm[0].msg_len, mm[1].msg_len, mm[0].msg_hdr.msg_namelen);
    T("  UDP_SEGMENT (kernel socket)", setsockopt(u, IPPROTO_UDP, UDP_SEGMENT, &(int){1400}, sizeof(int)));
    T("  connect self", connect(u, (struct sockaddr *)&self, sizeof self));
    nl = sizeof name;
    T("  getpeername", getpeername(u, (struct sockaddr *)&name, &nl));
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    T("  connect AF_UNSPEC", connect(u, &unspec, sizeof unspec));
    nl = sizeof name;
    T("  getpeername after", getpeername(u, (struct sockaddr *)&name, &nl));
    close(u);

    int sp[2];
    T("socketpair", socketpair(AF_UNIX, SOCK_STREAM, 0, sp));
    struct sockaddr_un un;
    socklen_t ul = sizeof un;
    T("  getpeername unnamed unix", getpeername(sp[0], (struct sockaddr *)&un, &ul));
    printf("  len %u\n", ul);
    T("  connect connected unix", connect(sp[0], (struct sockaddr *)&to, sizeof to));
    close(sp[0]);
    close(sp[1]);

    T("connect bad family len", connect(socket(AF_INET, SOCK_STREAM, 0), (struct sockaddr *)&to, 4));
    T("socket bad family", socket(12345, SOCK_STREAM, 0));
    T("close -1", close(-1));
    closefrom(900);
    printf("done\n");
    return 0;
}
