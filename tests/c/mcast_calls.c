/* Multicast as a program sees it: every option spelling and the kernel's errors, then data on
 * one host through several member sockets. The output is a transcript meant to be identical
 * whether the kernel does multicast (a namespace with a multicast route on lo) or the overlay
 * does (under the shim): the test runs it both ways and compares.
 *   mcast_calls GROUP_PREFIX PORT SELF_IP
 * GROUP_PREFIX is three octets ("239.77.1"): groups GROUP_PREFIX.1 .. .40 are used.
 * SELF_IP is the address datagrams from this host carry (127.0.0.1, or the overlay node). */
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

static char prefix[32];
static const char *self_ip;

static const char *err_name(int e) {
    switch (e) {
    case 0: return "ok";
    case EINVAL: return "EINVAL";
    case EADDRINUSE: return "EADDRINUSE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case ENOBUFS: return "ENOBUFS";
    case ENODEV: return "ENODEV";
    case ENETUNREACH: return "ENETUNREACH";
    case EFAULT: return "EFAULT";
    case ENOPROTOOPT: return "ENOPROTOOPT";
    default: return "other";
    }
}

static struct in_addr group(int i) {
    char text[48];
    snprintf(text, sizeof text, "%s.%d", prefix, i);
    struct in_addr a;
    inet_pton(AF_INET, text, &a);
    return a;
}

static struct in_addr ip(const char *text) {
    struct in_addr a;
    inet_pton(AF_INET, text, &a);
    return a;
}

static void report(const char *what, int rc) {
    printf("%s: %s\n", what, err_name(rc == 0 ? 0 : errno));
}

static int udp(void) { return socket(AF_INET, SOCK_DGRAM, 0); }

static void set(const char *what, int s, int name, const void *v, socklen_t len) {
    report(what, setsockopt(s, IPPROTO_IP, name, v, len));
}

static void get(const char *what, int s, int name, socklen_t room) {
    unsigned char buf[16];
    memset(buf, 0xee, sizeof buf);
    socklen_t len = room;
    int rc = getsockopt(s, IPPROTO_IP, name, buf, &len);
    if (rc != 0) {
        report(what, rc);
        return;
    }
    printf("%s: len %u =", what, (unsigned)len);
    for (unsigned i = 0; i < len && i < sizeof buf; i++) printf(" %u", buf[i]);
    printf("\n");
}

static void mreq(int s, const char *what, int name, struct in_addr g) {
    struct ip_mreq m = {.imr_multiaddr = g};
    set(what, s, name, &m, sizeof m);
}

static void mreqn(int s, const char *what, int name, struct in_addr g, int index) {
    struct ip_mreqn m = {.imr_multiaddr = g, .imr_ifindex = index};
    set(what, s, name, &m, sizeof m);
}

static void source(int s, const char *what, int name, struct in_addr g, struct in_addr src, socklen_t len) {
    struct ip_mreq_source m = {.imr_multiaddr = g, .imr_sourceaddr = src};
    char buf[sizeof m + 4] = {0};
    memcpy(buf, &m, sizeof m);
    set(what, s, name, buf, len);
}

static void group_req(int s, const char *what, int name, struct in_addr g, int family, socklen_t len) {
    struct group_req r;
    memset(&r, 0, sizeof r);
    struct sockaddr_in *sin = (struct sockaddr_in *)&r.gr_group;
    sin->sin_family = family;
    sin->sin_addr = g;
    char buf[sizeof r + 8] = {0};
    memcpy(buf, &r, sizeof r);
    set(what, s, name, buf, len);
}

static void group_source_req(int s, const char *what, int name, struct in_addr g, struct in_addr src, int family, socklen_t len) {
    struct group_source_req r;
    memset(&r, 0, sizeof r);
    struct sockaddr_in *gs = (struct sockaddr_in *)&r.gsr_group;
    struct sockaddr_in *ss = (struct sockaddr_in *)&r.gsr_source;
    gs->sin_family = AF_INET;
    gs->sin_addr = g;
    ss->sin_family = family;
    ss->sin_addr = src;
    char buf[sizeof r + 8] = {0};
    memcpy(buf, &r, sizeof r);
    set(what, s, name, buf, len);
}

static void options(void) {
    printf("sizes: group_req %zu group_source_req %zu\n", sizeof(struct group_req), sizeof(struct group_source_req));
    int s = udp();
    get("ttl default int", s, IP_MULTICAST_TTL, 4);
    get("ttl default char", s, IP_MULTICAST_TTL, 1);
    get("loop default int", s, IP_MULTICAST_LOOP, 8);
    get("loop default char", s, IP_MULTICAST_LOOP, 2);
    get("if default", s, IP_MULTICAST_IF, 12);
    unsigned char zero = 0, seven[3] = {7, 0, 0};
    int v;
    set("ttl char 0", s, IP_MULTICAST_TTL, &zero, 1);
    get("ttl", s, IP_MULTICAST_TTL, 4);
    set("ttl 3 bytes", s, IP_MULTICAST_TTL, seven, 3);
    get("ttl", s, IP_MULTICAST_TTL, 1);
    v = 256;
    set("ttl 256", s, IP_MULTICAST_TTL, &v, sizeof v);
    v = -1;
    set("ttl -1", s, IP_MULTICAST_TTL, &v, sizeof v);
    get("ttl", s, IP_MULTICAST_TTL, 4);
    set("ttl empty", s, IP_MULTICAST_TTL, &v, 0);
    v = 7;
    set("loop 7", s, IP_MULTICAST_LOOP, &v, sizeof v);
    get("loop", s, IP_MULTICAST_LOOP, 4);
    set("loop char 0", s, IP_MULTICAST_LOOP, &zero, 1);
    get("loop", s, IP_MULTICAST_LOOP, 4);
    struct ip_mreqn ifn = {.imr_ifindex = 1};
    set("if mreqn index", s, IP_MULTICAST_IF, &ifn, sizeof ifn);
    struct in_addr any = {0};
    set("if in_addr any", s, IP_MULTICAST_IF, &any, sizeof any);
    get("if", s, IP_MULTICAST_IF, 4);
    set("if 3 bytes", s, IP_MULTICAST_IF, &any, 3);
    get("add_membership", s, IP_ADD_MEMBERSHIP, 12);
    close(s);

    s = udp();
    struct sockaddr_in a = {.sin_family = AF_INET};
    report("bind before joins", bind(s, (struct sockaddr *)&a, sizeof a));
    struct ip_mreq short_m = {.imr_multiaddr = group(1)};
    set("join 7 bytes", s, IP_ADD_MEMBERSHIP, &short_m, 7);
    mreq(s, "join unicast", IP_ADD_MEMBERSHIP, ip("10.0.0.1"));
    mreq(s, "join mreq", IP_ADD_MEMBERSHIP, group(1));
    mreq(s, "join again", IP_ADD_MEMBERSHIP, group(1));
    mreqn(s, "join again mreqn", IP_ADD_MEMBERSHIP, group(1), 0);
    mreqn(s, "join mreqn", IP_ADD_MEMBERSHIP, group(2), 0);
    source(s, "source on any-source", IP_ADD_SOURCE_MEMBERSHIP, group(1), ip("10.0.0.1"), 12);
    source(s, "drop that source", IP_DROP_SOURCE_MEMBERSHIP, group(1), ip("10.0.0.1"), 12);
    mreq(s, "leave after last source", IP_DROP_MEMBERSHIP, group(1));
    mreq(s, "join", IP_ADD_MEMBERSHIP, group(1));
    source(s, "drop source of any-source", IP_DROP_SOURCE_MEMBERSHIP, group(1), ip("10.0.0.1"), 12);
    mreq(s, "join after", IP_ADD_MEMBERSHIP, group(1));
    mreq(s, "leave", IP_DROP_MEMBERSHIP, group(1));
    mreq(s, "leave again", IP_DROP_MEMBERSHIP, group(1));
    set("leave 3 bytes", s, IP_DROP_MEMBERSHIP, &short_m, 3);
    for (int i = 3; i <= 30; i++) {
        struct ip_mreq m = {.imr_multiaddr = group(i)};
        if (setsockopt(s, IPPROTO_IP, IP_ADD_MEMBERSHIP, &m, sizeof m) != 0) {
            printf("joins: group %d of the socket: %s\n", i - 1, err_name(errno));
            break;
        }
    }
    close(s);

    s = udp();
    source(s, "ssm", IP_ADD_SOURCE_MEMBERSHIP, group(1), ip("10.0.0.1"), 12);
    source(s, "ssm again", IP_ADD_SOURCE_MEMBERSHIP, group(1), ip("10.0.0.1"), 12);
    source(s, "ssm 11 bytes", IP_ADD_SOURCE_MEMBERSHIP, group(1), ip("10.0.0.2"), 11);
    source(s, "ssm 13 bytes", IP_ADD_SOURCE_MEMBERSHIP, group(1), ip("10.0.0.2"), 13);
    mreq(s, "any-source on ssm", IP_ADD_MEMBERSHIP, group(1));
    source(s, "ssm multicast source", IP_ADD_SOURCE_MEMBERSHIP, group(1), group(40), 12);
    source(s, "ssm unicast group", IP_ADD_SOURCE_MEMBERSHIP, ip("10.1.2.3"), ip("10.0.0.1"), 12);
    source(s, "drop absent source", IP_DROP_SOURCE_MEMBERSHIP, group(1), ip("10.0.0.7"), 12);
    source(s, "drop source of unjoined", IP_DROP_SOURCE_MEMBERSHIP, group(9), ip("10.0.0.7"), 12);
    int n = 2;
    for (int i = 3; i < 30; i++, n++) {
        char src[32];
        snprintf(src, sizeof src, "10.0.0.%d", i);
        struct ip_mreq_source m = {.imr_multiaddr = group(1), .imr_sourceaddr = ip(src)};
        if (setsockopt(s, IPPROTO_IP, IP_ADD_SOURCE_MEMBERSHIP, &m, sizeof m) != 0) {
            printf("sources: source %d of the group: %s\n", n + 1, err_name(errno));
            break;
        }
    }
    mreq(s, "leave ssm", IP_DROP_MEMBERSHIP, group(1));
    close(s);

    s = udp();
    group_req(s, "mcast_join_group 136", MCAST_JOIN_GROUP, group(1), AF_INET, 136);
    group_req(s, "mcast_join_group 135", MCAST_JOIN_GROUP, group(2), AF_INET, 135);
    group_req(s, "mcast_join_group 144", MCAST_JOIN_GROUP, group(2), AF_INET, 144);
    group_req(s, "mcast_join_group again", MCAST_JOIN_GROUP, group(1), AF_INET, 136);
    group_req(s, "mcast_join_group inet6", MCAST_JOIN_GROUP, group(3), AF_INET6, 136);
    group_req(s, "mcast_leave_group", MCAST_LEAVE_GROUP, group(1), AF_INET, 136);
    group_req(s, "mcast_leave_group again", MCAST_LEAVE_GROUP, group(1), AF_INET, 136);
    group_source_req(s, "mcast_join_source_group", MCAST_JOIN_SOURCE_GROUP, group(4), ip("10.0.0.1"), AF_INET, 264);
    group_source_req(s, "mcast_join_source_group 263", MCAST_JOIN_SOURCE_GROUP, group(4), ip("10.0.0.2"), AF_INET, 263);
    group_source_req(s, "mcast_join_source_group 265", MCAST_JOIN_SOURCE_GROUP, group(4), ip("10.0.0.2"), AF_INET, 265);
    group_source_req(s, "mcast_join_source_group inet6 source", MCAST_JOIN_SOURCE_GROUP, group(4), ip("10.0.0.2"), AF_INET6, 264);
    group_source_req(s, "mcast_leave_source_group", MCAST_LEAVE_SOURCE_GROUP, group(4), ip("10.0.0.1"), AF_INET, 264);
    group_source_req(s, "mcast_leave_source_group again", MCAST_LEAVE_SOURCE_GROUP, group(4), ip("10.0.0.1"), AF_INET, 264);
    close(s);
}

/* ---- data ---------------------------------------------------------------------------- */

struct member {
    const char *name;
    int fd;
    char got[64];
};

static int reusable(void) {
    int s = udp(), one = 1, zero = 0;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* Strict kernel semantics (only joined groups), which the overlay gives. */
    setsockopt(s, IPPROTO_IP, IP_MULTICAST_ALL, &zero, sizeof zero);
    return s;
}

static int bind_to(int s, struct in_addr a, int port) {
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr = a};
    return bind(s, (struct sockaddr *)&sin, sizeof sin);
}

static void name_of(const char *what, int s, int peer) {
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    int rc = peer ? getpeername(s, (struct sockaddr *)&sin, &len) : getsockname(s, (struct sockaddr *)&sin, &len);
    if (rc != 0) {
        report(what, rc);
        return;
    }
    char text[32];
    inet_ntop(AF_INET, &sin.sin_addr, text, sizeof text);
    /* Groups by their index, this host by name: the rest must match exactly. */
    const char *shown = text;
    char g[32];
    for (int i = 1; i <= 40; i++) {
        struct in_addr gi = group(i);
        if (gi.s_addr == sin.sin_addr.s_addr) {
            snprintf(g, sizeof g, "group %d", i);
            shown = g;
        }
    }
    if (strcmp(text, self_ip) == 0) shown = "self";
    printf("%s: %s\n", what, shown);
}

/* Collects what arrives at every member for `ms` milliseconds; `sender_port` is the port the
 * sources must show. */
static void collect(struct member *m, int count, int ms, int sender_port) {
    for (int waited = 0; waited < ms; waited += 20) {
        struct pollfd p[8];
        for (int i = 0; i < count; i++) p[i] = (struct pollfd){.fd = m[i].fd, .events = POLLIN};
        if (poll(p, count, 20) <= 0) continue;
        for (int i = 0; i < count; i++) {
            if (!(p[i].revents & POLLIN)) continue;
            char buf[64];
            struct sockaddr_in from;
            socklen_t len = sizeof from;
            ssize_t n = recvfrom(m[i].fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &len);
            if (n != 1) continue;
            char text[32];
            inet_ntop(AF_INET, &from.sin_addr, text, sizeof text);
            if (strcmp(text, self_ip) != 0 || ntohs(from.sin_port) != sender_port)
                printf("%s: datagram %c from unexpected %s:%d\n", m[i].name, buf[0], text, ntohs(from.sin_port));
            size_t at = strlen(m[i].got);
            if (at + 1 < sizeof m[i].got) m[i].got[at] = buf[0];
        }
    }
}

static void show(struct member *m, int count, const char *after) {
    for (int i = 0; i < count; i++) {
        /* Sorted: copies to different sockets may interleave differently. */
        char *g = m[i].got;
        size_t n = strlen(g);
        for (size_t a = 0; a < n; a++)
            for (size_t b = a + 1; b < n; b++)
                if (g[b] < g[a]) {
                    char t = g[a];
                    g[a] = g[b];
                    g[b] = t;
                }
        printf("after %s: %s got [%s]\n", after, m[i].name, g);
        memset(g, 0, sizeof m[i].got);
    }
}

static void data(int port) {
    struct in_addr g = group(21), g2 = group(22), wildcard = {0};
    struct member m[6] = {
        {"joined-before-bind"}, {"bound-to-group"}, {"bound-wildcard-then-joined"},
        {"ssm-self"},          {"ssm-other"},      {"two-groups"},
    };
    for (int i = 0; i < 6; i++) m[i].fd = reusable();
    mreqn(m[0].fd, "member 0 join before bind", IP_ADD_MEMBERSHIP, g, 0);
    report("member 0 bind wildcard", bind_to(m[0].fd, wildcard, port));
    report("member 1 bind group", bind_to(m[1].fd, g, port));
    mreq(m[1].fd, "member 1 join", IP_ADD_MEMBERSHIP, g);
    report("member 2 bind wildcard", bind_to(m[2].fd, wildcard, port));
    mreq(m[2].fd, "member 2 join", IP_ADD_MEMBERSHIP, g);
    source(m[3].fd, "member 3 join self", IP_ADD_SOURCE_MEMBERSHIP, g, ip(self_ip), 12);
    report("member 3 bind", bind_to(m[3].fd, wildcard, port));
    source(m[4].fd, "member 4 join other", IP_ADD_SOURCE_MEMBERSHIP, g, ip("10.9.9.9"), 12);
    report("member 4 bind", bind_to(m[4].fd, wildcard, port));
    group_req(m[5].fd, "member 5 join", MCAST_JOIN_GROUP, g, AF_INET, sizeof(struct group_req));
    group_req(m[5].fd, "member 5 join second", MCAST_JOIN_GROUP, g2, AF_INET, sizeof(struct group_req));
    report("member 5 bind", bind_to(m[5].fd, wildcard, port));
    name_of("member 0 name", m[0].fd, 0);
    name_of("member 1 name", m[1].fd, 0);
    name_of("member 2 name", m[2].fd, 0);

    int s = udp();
    report("sender bind", bind_to(s, wildcard, 0));
    struct sockaddr_in me;
    socklen_t mel = sizeof me;
    getsockname(s, (struct sockaddr *)&me, &mel);
    int sport = ntohs(me.sin_port);
    int one = 1;
    set("sender ttl 1", s, IP_MULTICAST_TTL, &one, sizeof one);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr = g};
    struct sockaddr_in to2 = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr = g2};
    report("sendto", sendto(s, "a", 1, 0, (struct sockaddr *)&to, sizeof to) == 1 ? 0 : -1);
    struct iovec iov = {.iov_base = "b", .iov_len = 1};
    struct msghdr msg = {.msg_name = &to, .msg_namelen = sizeof to, .msg_iov = &iov, .msg_iovlen = 1};
    report("sendmsg", sendmsg(s, &msg, 0) == 1 ? 0 : -1);
    struct iovec iovs[2] = {{.iov_base = "c", .iov_len = 1}, {.iov_base = "d", .iov_len = 1}};
    struct mmsghdr mm[2] = {
        {.msg_hdr = {.msg_name = &to, .msg_namelen = sizeof to, .msg_iov = &iovs[0], .msg_iovlen = 1}},
        {.msg_hdr = {.msg_name = &to2, .msg_namelen = sizeof to2, .msg_iov = &iovs[1], .msg_iovlen = 1}},
    };
    printf("sendmmsg: %d\n", sendmmsg(s, mm, 2, 0));
    collect(m, 6, 1500, sport);
    show(m, 6, "sendto, sendmsg, sendmmsg (d to the second group)");

    /* iperf2's sender: connect to the group, then write. */
    int c = udp();
    report("connected sender bind", bind_to(c, wildcard, 0));
    mel = sizeof me;
    getsockname(c, (struct sockaddr *)&me, &mel);
    int cport = ntohs(me.sin_port);
    report("connect to group", connect(c, (struct sockaddr *)&to, sizeof to));
    name_of("connected sender peer", c, 1);
    report("write", write(c, "e", 1) == 1 ? 0 : -1);
    report("send", send(c, "f", 1, 0) == 1 ? 0 : -1);
    collect(m, 6, 1500, cport);
    show(m, 6, "connect + write, send");

    int zero = 0;
    set("sender loop off", s, IP_MULTICAST_LOOP, &zero, sizeof zero);
    report("sendto with loop off", sendto(s, "g", 1, 0, (struct sockaddr *)&to, sizeof to) == 1 ? 0 : -1);
    set("sender loop on", s, IP_MULTICAST_LOOP, &one, sizeof one);
    mreqn(m[0].fd, "member 0 leave", IP_DROP_MEMBERSHIP, g, 0);
    close(m[2].fd);
    m[2].fd = -1;
    report("sendto after a leave and a close", sendto(s, "h", 1, 0, (struct sockaddr *)&to, sizeof to) == 1 ? 0 : -1);
    collect(m, 6, 1500, sport);
    show(m, 6, "loop off (g), then a leave and a close (h)");
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: mcast_calls GROUP_PREFIX PORT SELF_IP\n");
        return 2;
    }
    snprintf(prefix, sizeof prefix, "%s", argv[1]);
    self_ip = argv[3];
    setvbuf(stdout, NULL, _IOLBF, 0);
    options();
    data(atoi(argv[2]));
    return 0;
}
