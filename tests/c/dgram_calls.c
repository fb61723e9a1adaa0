/* Every datagram call the shim rewrites, on overlay addresses: sendto, sendmsg, sendmmsg,
 * recvfrom (fortified: __recvfrom_chk), recvmsg, recvmmsg, connect + getpeername/getsockname,
 * from an AF_INET and a dual-stack AF_INET6 socket.
 *   dgram_calls server PORT        echo every datagram to its source (recvmmsg/sendmmsg)
 *   dgram_calls client IP PORT LOCAL_IP */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int failures;
static void expect(const char *what, int ok, const char *detail) {
    printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", what, detail ? ": " : "", detail ? detail : "");
    if (!ok) failures++;
}

static int serve(int port) {
    int s = socket(AF_INET6, SOCK_DGRAM, 0);
    int zero = 0;
    setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) return 1;
    printf("ready\n");
    fflush(stdout);
    enum { N = 8 };
    static char bufs[N][2048];
    struct sockaddr_in6 from[N];
    struct iovec iov[N];
    struct mmsghdr m[N];
    for (;;) {
        memset(m, 0, sizeof m);
        for (int i = 0; i < N; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = sizeof bufs[i];
            m[i].msg_hdr.msg_iov = &iov[i];
            m[i].msg_hdr.msg_iovlen = 1;
            m[i].msg_hdr.msg_name = &from[i];
            m[i].msg_hdr.msg_namelen = sizeof from[i];
        }
        int n = recvmmsg(s, m, N, MSG_WAITFORONE, NULL);
        if (n <= 0) return 1;
        for (int i = 0; i < n; i++) iov[i].iov_len = m[i].msg_len;
        sendmmsg(s, m, n, 0); /* names were rewritten on the way in, and back on the way out */
    }
}

static void check_source(const char *what, struct sockaddr *sa, socklen_t len, const char *ip, int port) {
    char text[64] = "?";
    int got_port = -1, ok = 0;
    if (sa->sa_family == AF_INET && len == sizeof(struct sockaddr_in)) {
        struct sockaddr_in *a = (struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, text, sizeof text);
        got_port = ntohs(a->sin_port);
        ok = strcmp(text, ip) == 0;
    } else if (sa->sa_family == AF_INET6 && len == sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text);
        got_port = ntohs(a->sin6_port);
        char want[64];
        snprintf(want, sizeof want, "::ffff:%s", ip);
        ok = strcmp(text, want) == 0;
    }
    char d[128];
    snprintf(d, sizeof d, "%s port %d (len %u)", text, got_port, len);
    expect(what, ok && got_port == port, d);
}

static int wait_in(int s) {
    struct pollfd p = {.fd = s, .events = POLLIN};
    return poll(&p, 1, 10000) == 1;
}

static void client(const char *ip, int port, const char *local_ip, int family) {
    const char *fam = family == AF_INET ? "v4" : "v6";
    char what[96];
    int s = socket(family, SOCK_DGRAM, 0);
    struct sockaddr_storage dst;
    socklen_t dl;
    memset(&dst, 0, sizeof dst);
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&dst;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        inet_pton(AF_INET, ip, &a->sin_addr);
        dl = sizeof *a;
    } else {
        int zero = 0;
        setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&dst;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        char mapped[64];
        snprintf(mapped, sizeof mapped, "::ffff:%s", ip);
        inet_pton(AF_INET6, mapped, &a->sin6_addr);
        dl = sizeof *a;
    }
    char buf[256];
    struct sockaddr_storage from;
    socklen_t fl;

    /* sendmsg + recvmsg */
    struct iovec iov = {.iov_base = "sendmsg", .iov_len = 7};
    struct msghdr mh = {.msg_name = &dst, .msg_namelen = dl, .msg_iov = &iov, .msg_iovlen = 1};
    snprintf(what, sizeof what, "%s sendmsg", fam);
    expect(what, sendmsg(s, &mh, 0) == 7, strerror(errno));
    struct iovec riov = {.iov_base = buf, .iov_len = sizeof buf};
    struct msghdr rh = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &riov, .msg_iovlen = 1};
    snprintf(what, sizeof what, "%s recvmsg source", fam);
    if (wait_in(s) && recvmsg(s, &rh, 0) == 7)
        check_source(what, (struct sockaddr *)&from, rh.msg_namelen, ip, port);
    else
        expect(what, 0, "no echo");

    /* sendmmsg + recvmmsg */
    struct mmsghdr sm[3], rm[3];
    struct iovec siov[3], riov3[3];
    char rbuf[3][64];
    struct sockaddr_storage rfrom[3];
    memset(sm, 0, sizeof sm);
    memset(rm, 0, sizeof rm);
    const char *words[3] = {"one", "two", "three"};
    for (int i = 0; i < 3; i++) {
        siov[i].iov_base = (void *)words[i];
        siov[i].iov_len = strlen(words[i]);
        sm[i].msg_hdr.msg_iov = &siov[i];
        sm[i].msg_hdr.msg_iovlen = 1;
        sm[i].msg_hdr.msg_name = &dst;
        sm[i].msg_hdr.msg_namelen = dl;
        riov3[i].iov_base = rbuf[i];
        riov3[i].iov_len = sizeof rbuf[i];
        rm[i].msg_hdr.msg_iov = &riov3[i];
        rm[i].msg_hdr.msg_iovlen = 1;
        rm[i].msg_hdr.msg_name = &rfrom[i];
        rm[i].msg_hdr.msg_namelen = sizeof rfrom[i];
    }
    snprintf(what, sizeof what, "%s sendmmsg", fam);
    expect(what, sendmmsg(s, sm, 3, 0) == 3, strerror(errno));
    snprintf(what, sizeof what, "%s names restored after sendmmsg", fam);
    expect(what, sm[0].msg_hdr.msg_name == &dst && sm[2].msg_hdr.msg_namelen == dl, NULL);
    int got = 0;
    while (got < 3 && wait_in(s)) {
        int n = recvmmsg(s, rm + got, 3 - got, MSG_DONTWAIT, NULL);
        if (n > 0) got += n;
    }
    snprintf(what, sizeof what, "%s recvmmsg count", fam);
    expect(what, got == 3, NULL);
    for (int i = 0; i < got; i++) {
        snprintf(what, sizeof what, "%s recvmmsg source %d", fam, i);
        check_source(what, (struct sockaddr *)&rfrom[i], rm[i].msg_hdr.msg_namelen, ip, port);
    }

    /* sendto + fortified recvfrom */
    sendto(s, "sendto", 6, 0, (struct sockaddr *)&dst, dl);
    fl = sizeof from;
    snprintf(what, sizeof what, "%s recvfrom source", fam);
    if (wait_in(s) && recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl) == 6)
        check_source(what, (struct sockaddr *)&from, fl, ip, port);
    else
        expect(what, 0, "no echo");

    /* connect, then send/recv and names */
    snprintf(what, sizeof what, "%s connect", fam);
    expect(what, connect(s, (struct sockaddr *)&dst, dl) == 0, strerror(errno));
    fl = sizeof from;
    snprintf(what, sizeof what, "%s getpeername", fam);
    if (getpeername(s, (struct sockaddr *)&from, &fl) == 0)
        check_source(what, (struct sockaddr *)&from, fl, ip, port);
    else
        expect(what, 0, strerror(errno));
    fl = sizeof from;
    getsockname(s, (struct sockaddr *)&from, &fl);
    int local_port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&from)->sin_port
                                               : ((struct sockaddr_in6 *)&from)->sin6_port);
    snprintf(what, sizeof what, "%s getsockname is this node", fam);
    check_source(what, (struct sockaddr *)&from, fl, local_ip, local_port);
    send(s, "send", 4, 0);
    snprintf(what, sizeof what, "%s connected recv", fam);
    expect(what, wait_in(s) && recv(s, buf, sizeof buf, 0) == 4, NULL);
    close(s);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && strcmp(argv[1], "server") == 0) return serve(atoi(argv[2]));
    if (argc != 5 || strcmp(argv[1], "client") != 0) return 2;
    client(argv[2], atoi(argv[3]), argv[4], AF_INET);
    client(argv[2], atoi(argv[3]), argv[4], AF_INET6);
    printf("%d failures\n", failures);
    return failures ? 1 : 0;
}
