/* The kernel's connect() state machine, on an overlay session: run against an echo server
 * reached over a link slow enough (tens of ms) that the handshake is still in flight when the
 * program looks. Prints one line per check; exits non-zero on the first deviation.
 * usage: connect_states IP PORT */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int failures;

static void expect(const char *what, int ok, const char *detail) {
    printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", what, detail ? ": " : "", detail ? detail : "");
    if (!ok) failures++;
}

static const char *en(int e) { return e ? strerrorname_np(e) : "0"; }

static void expect_errno(const char *what, int rc, int want) {
    char d[96];
    snprintf(d, sizeof d, "rc=%d errno=%s want %s", rc, rc < 0 ? en(errno) : "-", want ? en(want) : "success");
    expect(what, want ? (rc == -1 && errno == want) : rc == 0, d);
}

static int so_error(int fd) {
    int v = -1;
    socklen_t l = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &l) != 0) return -1;
    return v;
}

static void on_alarm(int sig) { (void)sig; }

static void echo_check(int fd, const char *what) {
    const char msg[] = "overlay echo";
    char buf[64] = {0};
    int ok = write(fd, msg, sizeof msg) == (ssize_t)sizeof msg;
    size_t got = 0;
    while (ok && got < sizeof msg) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10000) != 1) { ok = 0; break; }
        ssize_t n = read(fd, buf + got, sizeof msg - got);
        if (n <= 0) { ok = 0; break; }
        got += n;
    }
    expect(what, ok && memcmp(buf, msg, sizeof msg) == 0, NULL);
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &dst.sin_addr);
    struct sockaddr *sa = (struct sockaddr *)&dst;
    char d[128];

    /* Non-blocking: EINPROGRESS, EALREADY while pending, nothing readable or writable. */
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    expect_errno("nonblocking connect", connect(s, sa, sizeof dst), EINPROGRESS);
    expect_errno("connect while pending", connect(s, sa, sizeof dst), EALREADY);
    struct sockaddr_in name;
    socklen_t nl = sizeof name;
    expect_errno("getpeername while pending", getpeername(s, (struct sockaddr *)&name, &nl), ENOTCONN);
    struct pollfd p = {.fd = s, .events = POLLIN | POLLOUT};
    snprintf(d, sizeof d, "revents %d", poll(&p, 1, 0) ? p.revents : 0);
    expect("not ready while pending", p.revents == 0, d);
    snprintf(d, sizeof d, "%s", en(so_error(s)));
    expect("SO_ERROR 0 while pending", so_error(s) == 0, d);
    p.events = POLLOUT;
    int r = poll(&p, 1, 10000);
    snprintf(d, sizeof d, "poll=%d revents=%d", r, p.revents);
    expect("writable once established", r == 1 && (p.revents & POLLOUT) && !(p.revents & (POLLHUP | POLLERR)), d);
    snprintf(d, sizeof d, "%s", en(so_error(s)));
    expect("SO_ERROR 0 once established", so_error(s) == 0, d);
    expect_errno("connect after establishment", connect(s, sa, sizeof dst), 0);
    expect_errno("connect again", connect(s, sa, sizeof dst), EISCONN);
    expect("still non-blocking", (fcntl(s, F_GETFL) & O_NONBLOCK) != 0, NULL);
    expect("still close-on-exec", (fcntl(s, F_GETFD) & FD_CLOEXEC) != 0, NULL);
    nl = sizeof name;
    int rc = getpeername(s, (struct sockaddr *)&name, &nl);
    snprintf(d, sizeof d, "%s:%d len %u", inet_ntoa(name.sin_addr), ntohs(name.sin_port), nl);
    expect("getpeername is the overlay peer", rc == 0 && name.sin_family == AF_INET &&
           name.sin_addr.s_addr == dst.sin_addr.s_addr && name.sin_port == dst.sin_port, d);
    nl = sizeof name;
    rc = getsockname(s, (struct sockaddr *)&name, &nl);
    snprintf(d, sizeof d, "%s:%d", inet_ntoa(name.sin_addr), ntohs(name.sin_port));
    expect("getsockname is an overlay endpoint", rc == 0 && name.sin_family == AF_INET && name.sin_port != 0, d);
    int v = 0;
    socklen_t vl = sizeof v;
    getsockopt(s, SOL_SOCKET, SO_DOMAIN, &v, &vl);
    expect("SO_DOMAIN AF_INET", v == AF_INET, NULL);
    vl = sizeof v;
    getsockopt(s, SOL_SOCKET, SO_PROTOCOL, &v, &vl);
    expect("SO_PROTOCOL TCP", v == IPPROTO_TCP, NULL);
    vl = sizeof v;
    getsockopt(s, SOL_SOCKET, SO_TYPE, &v, &vl);
    expect("SO_TYPE stream", v == SOCK_STREAM, NULL);
    vl = sizeof v;
    rc = getsockopt(s, IPPROTO_TCP, TCP_NODELAY, &v, &vl);
    expect("TCP_NODELAY set before connect is kept", rc == 0 && v == 1, NULL);
    int zero = 0;
    rc = setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &zero, sizeof zero);
    vl = sizeof v;
    getsockopt(s, IPPROTO_TCP, TCP_NODELAY, &v, &vl);
    expect("TCP_NODELAY can be cleared", rc == 0 && v == 0, NULL);
    vl = sizeof v;
    rc = getsockopt(s, IPPROTO_TCP, TCP_MAXSEG, &v, &vl);
    snprintf(d, sizeof d, "%d", v);
    expect("TCP_MAXSEG is sane", rc == 0 && v >= 500 && v <= 65535, d);
    char ca[16] = {0};
    vl = sizeof ca;
    rc = getsockopt(s, IPPROTO_TCP, TCP_CONGESTION, ca, &vl);
    expect("TCP_CONGESTION names an algorithm", rc == 0 && ca[0] != 0, ca);
    int tos = 0x10;
    rc = setsockopt(s, IPPROTO_IP, IP_TOS, &tos, sizeof tos);
    vl = sizeof v;
    getsockopt(s, IPPROTO_IP, IP_TOS, &v, &vl);
    expect("IP_TOS round-trips", rc == 0 && v == 0x10, NULL);
    int idle = 30;
    rc = setsockopt(s, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    vl = sizeof v;
    getsockopt(s, IPPROTO_TCP, TCP_KEEPIDLE, &v, &vl);
    expect("TCP_KEEPIDLE round-trips", rc == 0 && v == 30, NULL);
    rc = setsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    vl = sizeof v;
    getsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &v, &vl);
    expect("SO_KEEPALIVE round-trips", rc == 0 && v == 1, NULL);
    int seg = 1400;
    expect_errno("UDP_SEGMENT refused on a stream", setsockopt(s, IPPROTO_UDP, 103, &seg, sizeof seg), ENOPROTOOPT);
    unsigned char info[232] = {0};
    vl = sizeof info;
    rc = getsockopt(s, IPPROTO_TCP, TCP_INFO, info, &vl);
    unsigned mss, cwnd;
    memcpy(&mss, info + 16, 4);
    memcpy(&cwnd, info + 80, 4);
    snprintf(d, sizeof d, "len %u state %u mss %u cwnd %u", vl, info[0], mss, cwnd);
    expect("TCP_INFO established with sane figures", rc == 0 && vl == 232 && info[0] == 1 && mss > 0 && cwnd > 0, d);
    echo_check(s, "data flows both ways");
    /* A duplicate is the same session: same names, and data through either. */
    int dup_fd = fcntl(s, F_DUPFD_CLOEXEC, 100);
    nl = sizeof name;
    rc = getpeername(dup_fd, (struct sockaddr *)&name, &nl);
    expect("a duplicate has the same peer", dup_fd >= 100 && rc == 0 &&
           name.sin_addr.s_addr == dst.sin_addr.s_addr && name.sin_port == dst.sin_port, NULL);
    close(s);
    echo_check(dup_fd, "the duplicate carries data after the original is closed");
    s = dup_fd;
    close(s);

    /* Blocking connect interrupted by a signal: EINTR, and the connect goes on. */
    struct sigaction act = {.sa_handler = on_alarm};
    sigaction(SIGALRM, &act, NULL); /* no SA_RESTART */
    s = socket(AF_INET, SOCK_STREAM, 0);
    struct itimerval it = {.it_value = {.tv_usec = 10000}};
    setitimer(ITIMER_REAL, &it, NULL);
    expect_errno("blocking connect interrupted", connect(s, sa, sizeof dst), EINTR);
    expect_errno("blocking connect again waits and succeeds", connect(s, sa, sizeof dst), 0);
    expect_errno("and then is connected", connect(s, sa, sizeof dst), EISCONN);
    echo_check(s, "interrupted connect carries data");
    close(s);

    /* Blocking connect with a send timeout shorter than the handshake: EINPROGRESS. */
    s = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {.tv_usec = 5000};
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    expect_errno("blocking connect past SO_SNDTIMEO", connect(s, sa, sizeof dst), EINPROGRESS);
    p.fd = s;
    p.events = POLLOUT;
    poll(&p, 1, 10000);
    expect("SO_ERROR 0 after the timed-out wait", so_error(s) == 0, NULL);
    struct timeval got;
    vl = sizeof got;
    getsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &got, &vl);
    expect("SO_SNDTIMEO carried over", got.tv_sec == 0 && got.tv_usec >= 4000 && got.tv_usec <= 8000, NULL);
    echo_check(s, "timed-out connect carries data");
    close(s);

    /* Plain blocking connect. */
    s = socket(AF_INET, SOCK_STREAM, 0);
    expect_errno("blocking connect", connect(s, sa, sizeof dst), 0);
    expect("blocking stays blocking", (fcntl(s, F_GETFL) & O_NONBLOCK) == 0, NULL);
    expect("no close-on-exec unless asked", (fcntl(s, F_GETFD) & FD_CLOEXEC) == 0, NULL);
    echo_check(s, "blocking connect carries data");
    expect_errno("shutdown SHUT_WR", shutdown(s, SHUT_WR), 0);
    char b;
    p.fd = s;
    p.events = POLLIN;
    poll(&p, 1, 10000);
    expect("peer's end of file after our half-close", read(s, &b, 1) == 0, NULL);
    close(s);
    /* A session closed behind the shim's back (stdio's fclose closes with glibc's internal
     * close) must not lend its state to the socketpair that reuses the number. */
    s = socket(AF_INET, SOCK_STREAM, 0);
    expect_errno("connect for stdio", connect(s, sa, sizeof dst), 0);
    int old_number = s;
    fclose(fdopen(s, "r+"));
    int sp[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sp);
    if (sp[0] == old_number || sp[1] == old_number) {
        int reused = sp[0] == old_number ? sp[0] : sp[1];
        vl = sizeof v;
        getsockopt(reused, SOL_SOCKET, SO_DOMAIN, &v, &vl);
        expect("a reused number is what it is now (AF_UNIX)", v == AF_UNIX, NULL);
        struct sockaddr_storage un;
        socklen_t ul = sizeof un;
        rc = getpeername(reused, (struct sockaddr *)&un, &ul);
        expect("its peer is an unnamed unix socket", rc == 0 && un.ss_family == AF_UNIX && ul == 2, NULL);
        expect_errno("TCP options are refused on it", setsockopt(reused, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one), EOPNOTSUPP);
    } else {
        expect("the closed number was reused", 0, NULL);
    }
    printf("%d failures\n", failures);
    return failures ? 1 : 0;
}
