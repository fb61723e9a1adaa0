/* One host's part of a multicast scenario, for the differential suite (tests/tests/
 * differential_multicast.rs): the same script runs once on kernel multicast and once under
 * the shim, and what every socket observed is compared.
 *
 *   mcast_scenario SCRIPT
 *   mcast_scenario --child SCRIPT LINE PROC COUNTER_FD CMD_IN CMD_OUT ID=FD...
 *
 * The script is one step per line; a line may start with @pN to run only in process pN
 * (untagged lines run in p0, the process the driver started). Steps:
 *   sock ID                        a UDP socket
 *   opt ID NAME [VALUE]            reuseaddr reuseport mcall N recvttl pktinfo ttl N loop N
 *                                  if ADDR ifindex NAME|N nonblock
 *   bind ID ADDR PORT              (getsockname is recorded)
 *   connect ID ADDR PORT
 *   join ID KIND GROUP IFACE [SOURCE]
 *        KIND: mreq mreqn gr (any-source joins), ssm gsr (add a source), dropsrc gdropsrc,
 *              block unblock gblock gunblock, leave gleave; IFACE: an address for the ip_*
 *              kinds, an interface name or index for mreqn and the group_* kinds
 *   msfilter ID GROUP IFACE include|exclude SOURCE...    IP_MSFILTER
 *   gmsfilter ID GROUP IFNAME include|exclude SOURCE...  MCAST_MSFILTER
 *   getfilter ID GROUP IFACE       IP_MSFILTER read back (mode and sources recorded)
 *   getopt ID ttl|loop|if|all
 *   waiter ID poll|select|epoll|block|nonblock|scatter|mmsg|peek|echo
 *                                  a thread that receives on the socket and records each
 *                                  datagram: payload, source, TTL and destination (if the
 *                                  socket asked for IP_RECVTTL / IP_PKTINFO); echo
 *                                  also sends "re-PAYLOAD" back to the source
 *   send ID ADDR PORT PAYLOAD [sendto|sendmsg|write|pktinfo SRC]
 *   sendmmsg ID ADDR PORT PAYLOAD...    one call
 *   dup ID NEWID   close ID   sleep MS
 *   fork PROC                      a child process pN that runs the @pN lines from here
 *   exec                           (in a child) this program again, keeping the sockets
 *   kill PROC                      SIGKILL a child
 *   barrier NAME                   print "at NAME" and wait for "go" on stdin (children
 *                                  wait for their parent), receiving all the while
 * Commands on stdin: go, count (prints "count N": datagrams received so far by the whole
 * process tree), dump (every process prints its records as JSON lines, then "end").
 * Everything a step does is recorded (result, errno name), so the two runs can be compared
 * line for line after the driver spells addresses by name. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SOCKS 64
#define MAX_LINES 512
#define MAX_KIDS 8

struct sock {
    int fd;
    char waiter[16];
    pthread_t thread;
    int running;
    atomic_int stop;
};

static struct sock socks[MAX_SOCKS];
static char *lines[MAX_LINES];
static int nlines;
static char me[8] = "p0";
static atomic_int phase;
static atomic_long *received; /* shared by the whole process tree */
static int counter_fd = -1;
static const char *script_path;
static const char *self_path;

/* Children: their pid, and the pipes to and from them. */
struct kid {
    char name[8];
    pid_t pid;
    int to, from;
};
static struct kid kids[MAX_KIDS];
static int nkids;
/* In a child: the pipes to and from the parent. */
static int parent_in = -1, parent_out = -1;

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static char **records;
static int nrecords, cap_records;

static void record(const char *fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&out_lock);
    if (nrecords == cap_records) {
        cap_records = cap_records ? cap_records * 2 : 256;
        records = realloc(records, cap_records * sizeof *records);
    }
    records[nrecords++] = strdup(buf);
    pthread_mutex_unlock(&out_lock);
}

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
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case EISCONN: return "EISCONN";
    case EDESTADDRREQ: return "EDESTADDRREQ";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    default: return "other";
    }
}

static struct in_addr ip(const char *text) {
    struct in_addr a = {0};
    if (strcmp(text, "any") == 0 || strcmp(text, "0") == 0) return a;
    inet_pton(AF_INET, text, &a);
    return a;
}

static int ifindex(const char *text) {
    if (text[0] >= '0' && text[0] <= '9') return atoi(text);
    return (int)if_nametoindex(text);
}

static void fmt_addr(char *out, size_t n, const struct sockaddr_in *sin) {
    char text[32];
    inet_ntop(AF_INET, &sin->sin_addr, text, sizeof text);
    snprintf(out, n, "%s:%d", text, ntohs(sin->sin_port));
}

static int fd_of(const char *id) {
    int i = atoi(id);
    if (i < 0 || i >= MAX_SOCKS) return -1;
    return socks[i].fd;
}

/* ---- receiving ------------------------------------------------------------------------ */

static void got(int id, const char *data, size_t n, struct sockaddr_in *from, struct msghdr *m) {
    char src[48] = "?";
    if (from) fmt_addr(src, sizeof src, from);
    char ttl[16] = "null", dst[96] = "null";
    if (m) {
        for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
            if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TTL) {
                int t;
                memcpy(&t, CMSG_DATA(c), sizeof t);
                snprintf(ttl, sizeof ttl, "%d", t);
            }
            if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
                struct in_pktinfo pi;
                memcpy(&pi, CMSG_DATA(c), sizeof pi);
                char a[20], spec[20], ifname[IF_NAMESIZE] = "?";
                inet_ntop(AF_INET, &pi.ipi_addr, a, sizeof a);
                inet_ntop(AF_INET, &pi.ipi_spec_dst, spec, sizeof spec);
                if (!if_indextoname((unsigned)pi.ipi_ifindex, ifname)) snprintf(ifname, sizeof ifname, "%d", pi.ipi_ifindex);
                snprintf(dst, sizeof dst, "\"%s %s %s\"", a, ifname, spec);
            }
        }
    }
    char payload[256];
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < sizeof payload; i++)
        payload[k++] = (data[i] >= 0x21 && data[i] < 0x7f && data[i] != '"' && data[i] != '\\') ? data[i] : '.';
    payload[k] = 0;
    record("{\"p\":\"%s\",\"ev\":\"rx\",\"s\":%d,\"ph\":%d,\"d\":\"%s\",\"from\":\"%s\",\"ttl\":%s,\"dst\":%s}",
           me, id, atomic_load(&phase), payload, src, ttl, dst);
    if (received) atomic_fetch_add(received, 1);
}

/* One datagram with recvmsg (cmsgs), or with the scatter/peek variants; <0: nothing. */
static int receive_one(int id, int fd, int flags) {
    struct sock *s = &socks[id];
    char buf[2048], cbuf[256];
    struct sockaddr_in from;
    struct iovec iov[3];
    int iovs = 1;
    if (strcmp(s->waiter, "scatter") == 0) {
        iov[0] = (struct iovec){buf, 2};
        iov[1] = (struct iovec){buf + 2, 3};
        iov[2] = (struct iovec){buf + 5, sizeof buf - 5};
        iovs = 3;
    } else {
        iov[0] = (struct iovec){buf, sizeof buf};
    }
    if (strcmp(s->waiter, "peek") == 0) {
        char peeked[8];
        if (recv(fd, peeked, sizeof peeked, MSG_PEEK | flags) < 0) return -1;
        flags &= ~MSG_DONTWAIT;
    }
    struct msghdr m = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = iov,
                       .msg_iovlen = iovs, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    ssize_t n = recvmsg(fd, &m, flags);
    if (n < 0) return -1;
    got(id, buf, (size_t)n, m.msg_namelen >= sizeof from ? &from : NULL, &m);
    if (strcmp(s->waiter, "echo") == 0 && m.msg_namelen >= sizeof from) {
        char reply[2100];
        int k = snprintf(reply, sizeof reply, "re-%.*s", (int)n, buf);
        int rc = sendto(fd, reply, (size_t)k, 0, (struct sockaddr *)&from, sizeof from);
        record("{\"p\":\"%s\",\"ev\":\"echo\",\"s\":%d,\"r\":\"%s\"}", me, id, err_name(rc == k ? 0 : errno));
    }
    return 0;
}

static int receive_mmsg(int id, int fd) {
    enum { V = 4 };
    char bufs[V][2048], cbufs[V][256];
    struct sockaddr_in from[V];
    struct iovec iov[V];
    struct mmsghdr mm[V];
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < V; i++) {
        iov[i] = (struct iovec){bufs[i], sizeof bufs[i]};
        mm[i].msg_hdr = (struct msghdr){.msg_name = &from[i], .msg_namelen = sizeof from[i],
                                        .msg_iov = &iov[i], .msg_iovlen = 1,
                                        .msg_control = cbufs[i], .msg_controllen = sizeof cbufs[i]};
    }
    int n = recvmmsg(fd, mm, V, MSG_DONTWAIT, NULL);
    for (int i = 0; i < n; i++)
        got(id, bufs[i], mm[i].msg_len, &from[i], &mm[i].msg_hdr);
    return n > 0 ? 0 : -1;
}

static void *receiver(void *arg) {
    int id = (int)(long)arg;
    struct sock *s = &socks[id];
    int fd = s->fd;
    const char *w = s->waiter;
    int ep = -1;
    if (strcmp(w, "epoll") == 0) {
        ep = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    if (strcmp(w, "block") == 0) {
        struct timeval tv = {0, 100000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    while (!atomic_load(&s->stop)) {
        if (strcmp(w, "block") == 0) {
            receive_one(id, fd, 0);
        } else if (strcmp(w, "nonblock") == 0) {
            if (receive_one(id, fd, MSG_DONTWAIT) < 0) usleep(1000);
        } else if (strcmp(w, "select") == 0) {
            fd_set r;
            FD_ZERO(&r);
            FD_SET(fd, &r);
            struct timeval tv = {0, 100000};
            if (select(fd + 1, &r, NULL, NULL, &tv) > 0) receive_one(id, fd, MSG_DONTWAIT);
        } else if (strcmp(w, "epoll") == 0) {
            struct epoll_event ev;
            if (epoll_wait(ep, &ev, 1, 100) > 0) receive_one(id, fd, MSG_DONTWAIT);
        } else {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, 100) > 0 && (p.revents & POLLIN)) {
                if (strcmp(w, "mmsg") == 0)
                    receive_mmsg(id, fd);
                else
                    receive_one(id, fd, MSG_DONTWAIT);
            }
        }
    }
    if (ep >= 0) close(ep);
    return NULL;
}

static void start_waiter(int id, const char *kind) {
    struct sock *s = &socks[id];
    snprintf(s->waiter, sizeof s->waiter, "%s", kind);
    atomic_store(&s->stop, 0);
    if (strcmp(kind, "nonblock") == 0) fcntl(s->fd, F_SETFL, fcntl(s->fd, F_GETFL) | O_NONBLOCK);
    pthread_create(&s->thread, NULL, receiver, (void *)(long)id);
    s->running = 1;
}

static void stop_waiter(int id) {
    struct sock *s = &socks[id];
    if (!s->running) return;
    atomic_store(&s->stop, 1);
    pthread_join(s->thread, NULL);
    s->running = 0;
}

/* ---- steps ---------------------------------------------------------------------------- */

static void result(int line, const char *step, int rc) {
    record("{\"p\":\"%s\",\"ev\":\"op\",\"line\":%d,\"op\":\"%s\",\"r\":\"%s\"}", me, line, step,
           err_name(rc == 0 ? 0 : errno));
}

static void record_name(int id) {
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    char text[48] = "?";
    if (getsockname(socks[id].fd, (struct sockaddr *)&sin, &len) == 0) fmt_addr(text, sizeof text, &sin);
    record("{\"p\":\"%s\",\"ev\":\"name\",\"s\":%d,\"v\":\"%s\"}", me, id, text);
}

static int set_int(int fd, int level, int name, int v) { return setsockopt(fd, level, name, &v, sizeof v); }

static int do_opt(int fd, char **t, int n) {
    const char *name = t[2];
    const char *v = n > 3 ? t[3] : "1";
    if (!strcmp(name, "reuseaddr")) return set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1);
    if (!strcmp(name, "reuseport")) return set_int(fd, SOL_SOCKET, SO_REUSEPORT, 1);
    if (!strcmp(name, "mcall")) return set_int(fd, IPPROTO_IP, IP_MULTICAST_ALL, atoi(v));
    if (!strcmp(name, "recvttl")) return set_int(fd, IPPROTO_IP, IP_RECVTTL, 1);
    if (!strcmp(name, "pktinfo")) return set_int(fd, IPPROTO_IP, IP_PKTINFO, 1);
    if (!strcmp(name, "ttl")) return set_int(fd, IPPROTO_IP, IP_MULTICAST_TTL, atoi(v));
    if (!strcmp(name, "loop")) return set_int(fd, IPPROTO_IP, IP_MULTICAST_LOOP, atoi(v));
    if (!strcmp(name, "if")) {
        struct in_addr a = ip(v);
        return setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, &a, sizeof a);
    }
    if (!strcmp(name, "ifindex")) {
        struct ip_mreqn m = {.imr_ifindex = ifindex(v)};
        return setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, &m, sizeof m);
    }
    if (!strcmp(name, "nonblock")) return fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0 ? -1 : 0;
    errno = ENOPROTOOPT;
    return -1;
}

static int to_addr(struct sockaddr_in *sin, const char *a, const char *port) {
    memset(sin, 0, sizeof *sin);
    sin->sin_family = AF_INET;
    sin->sin_addr = ip(a);
    sin->sin_port = htons(atoi(port));
    return 0;
}

static void group_storage(struct sockaddr_storage *ss, const char *a) {
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    sin->sin_family = AF_INET;
    sin->sin_addr = ip(a);
}

static int do_join(int fd, char **t, int n) {
    const char *kind = t[2];
    struct in_addr g = ip(t[3]);
    const char *iface = n > 4 ? t[4] : "0";
    const char *src = n > 5 ? t[5] : "0";
    if (!strcmp(kind, "mreq") || !strcmp(kind, "leave")) {
        struct ip_mreq m = {.imr_multiaddr = g, .imr_interface = ip(iface)};
        return setsockopt(fd, IPPROTO_IP, !strcmp(kind, "mreq") ? IP_ADD_MEMBERSHIP : IP_DROP_MEMBERSHIP, &m, sizeof m);
    }
    if (!strcmp(kind, "mreqn")) {
        struct ip_mreqn m = {.imr_multiaddr = g, .imr_ifindex = ifindex(iface)};
        return setsockopt(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &m, sizeof m);
    }
    if (!strcmp(kind, "gr") || !strcmp(kind, "gleave")) {
        struct group_req r;
        memset(&r, 0, sizeof r);
        r.gr_interface = ifindex(iface);
        group_storage(&r.gr_group, t[3]);
        return setsockopt(fd, IPPROTO_IP, !strcmp(kind, "gr") ? MCAST_JOIN_GROUP : MCAST_LEAVE_GROUP, &r, sizeof r);
    }
    int ipname = !strcmp(kind, "ssm") ? IP_ADD_SOURCE_MEMBERSHIP
               : !strcmp(kind, "dropsrc") ? IP_DROP_SOURCE_MEMBERSHIP
               : !strcmp(kind, "block") ? IP_BLOCK_SOURCE
               : !strcmp(kind, "unblock") ? IP_UNBLOCK_SOURCE : -1;
    if (ipname >= 0) {
        struct ip_mreq_source m = {.imr_multiaddr = g, .imr_interface = ip(iface), .imr_sourceaddr = ip(src)};
        return setsockopt(fd, IPPROTO_IP, ipname, &m, sizeof m);
    }
    int gname = !strcmp(kind, "gsr") ? MCAST_JOIN_SOURCE_GROUP
              : !strcmp(kind, "gdropsrc") ? MCAST_LEAVE_SOURCE_GROUP
              : !strcmp(kind, "gblock") ? MCAST_BLOCK_SOURCE
              : !strcmp(kind, "gunblock") ? MCAST_UNBLOCK_SOURCE : -1;
    if (gname >= 0) {
        struct group_source_req r;
        memset(&r, 0, sizeof r);
        r.gsr_interface = ifindex(iface);
        group_storage(&r.gsr_group, t[3]);
        group_storage(&r.gsr_source, src);
        return setsockopt(fd, IPPROTO_IP, gname, &r, sizeof r);
    }
    errno = EINVAL;
    return -1;
}

static int do_msfilter(int fd, char **t, int n, int group_api) {
    int count = n - 5;
    if (count < 0) count = 0;
    int mode = !strcmp(t[4], "exclude") ? MCAST_EXCLUDE : MCAST_INCLUDE;
    if (!group_api) {
        size_t len = IP_MSFILTER_SIZE(count > 0 ? count : 1);
        struct ip_msfilter *f = calloc(1, len);
        f->imsf_multiaddr = ip(t[2]);
        f->imsf_interface = ip(t[3]);
        f->imsf_fmode = mode;
        f->imsf_numsrc = count;
        for (int i = 0; i < count; i++) f->imsf_slist[i] = ip(t[5 + i]);
        int rc = setsockopt(fd, IPPROTO_IP, IP_MSFILTER, f, IP_MSFILTER_SIZE(count));
        free(f);
        return rc;
    }
    size_t len = GROUP_FILTER_SIZE(count > 0 ? count : 1);
    struct group_filter *f = calloc(1, len);
    f->gf_interface = ifindex(t[3]);
    group_storage(&f->gf_group, t[2]);
    f->gf_fmode = mode;
    f->gf_numsrc = count;
    for (int i = 0; i < count; i++) group_storage(&f->gf_slist[i], t[5 + i]);
    int rc = setsockopt(fd, IPPROTO_IP, MCAST_MSFILTER, f, GROUP_FILTER_SIZE(count));
    free(f);
    return rc;
}

static void do_getfilter(int line, int id, char **t) {
    size_t len = IP_MSFILTER_SIZE(16);
    struct ip_msfilter *f = calloc(1, len);
    f->imsf_multiaddr = ip(t[2]);
    f->imsf_interface = ip(t[3]);
    f->imsf_numsrc = 16;
    socklen_t l = len;
    int rc = getsockopt(socks[id].fd, IPPROTO_IP, IP_MSFILTER, f, &l);
    if (rc != 0) {
        result(line, "getfilter", rc);
        free(f);
        return;
    }
    char list[512] = "";
    for (unsigned i = 0; i < f->imsf_numsrc && i < 16; i++) {
        char a[20];
        inet_ntop(AF_INET, &f->imsf_slist[i], a, sizeof a);
        strncat(list, i ? " " : "", sizeof list - strlen(list) - 1);
        strncat(list, a, sizeof list - strlen(list) - 1);
    }
    record("{\"p\":\"%s\",\"ev\":\"filter\",\"s\":%d,\"mode\":\"%s\",\"n\":%u,\"src\":\"%s\"}", me, id,
           f->imsf_fmode == MCAST_EXCLUDE ? "exclude" : "include", f->imsf_numsrc, list);
    free(f);
}

static void do_getopt(int line, int id, const char *name) {
    int level = IPPROTO_IP, opt;
    if (!strcmp(name, "ttl")) opt = IP_MULTICAST_TTL;
    else if (!strcmp(name, "loop")) opt = IP_MULTICAST_LOOP;
    else if (!strcmp(name, "if")) opt = IP_MULTICAST_IF;
    else opt = IP_MULTICAST_ALL;
    unsigned char buf[16] = {0};
    socklen_t len = sizeof buf;
    int rc = getsockopt(socks[id].fd, level, opt, buf, &len);
    if (rc != 0) {
        result(line, name, rc);
        return;
    }
    char v[64];
    if (opt == IP_MULTICAST_IF)
        inet_ntop(AF_INET, buf, v, sizeof v);
    else
    {
        int word;
        memcpy(&word, buf, sizeof word);
        snprintf(v, sizeof v, "%d", len >= 4 ? word : buf[0]);
    }
    record("{\"p\":\"%s\",\"ev\":\"opt\",\"s\":%d,\"name\":\"%s\",\"len\":%u,\"v\":\"%s\"}", me, id, name, len, v);
}

static int do_send(char **t, int n) {
    int fd = fd_of(t[1]);
    struct sockaddr_in to;
    to_addr(&to, t[2], t[3]);
    const char *payload = t[4];
    const char *how = n > 5 ? t[5] : "sendto";
    size_t len = strlen(payload);
    ssize_t rc;
    if (!strcmp(how, "write")) {
        rc = write(fd, payload, len);
    } else if (!strcmp(how, "sendmsg") || !strcmp(how, "pktinfo")) {
        struct iovec iov = {(void *)payload, len};
        char cbuf[CMSG_SPACE(sizeof(struct in_pktinfo))];
        struct msghdr m = {.msg_name = &to, .msg_namelen = sizeof to, .msg_iov = &iov, .msg_iovlen = 1};
        if (!strcmp(how, "pktinfo")) {
            memset(cbuf, 0, sizeof cbuf);
            m.msg_control = cbuf;
            m.msg_controllen = sizeof cbuf;
            struct cmsghdr *c = CMSG_FIRSTHDR(&m);
            c->cmsg_level = IPPROTO_IP;
            c->cmsg_type = IP_PKTINFO;
            c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
            struct in_pktinfo pi = {.ipi_spec_dst = ip(n > 6 ? t[6] : "0")};
            memcpy(CMSG_DATA(c), &pi, sizeof pi);
        }
        rc = sendmsg(fd, &m, 0);
    } else {
        rc = sendto(fd, payload, len, 0, (struct sockaddr *)&to, sizeof to);
    }
    return rc == (ssize_t)len ? 0 : -1;
}

static int do_sendmmsg(char **t, int n) {
    int fd = fd_of(t[1]);
    struct sockaddr_in to;
    to_addr(&to, t[2], t[3]);
    int count = n - 4;
    if (count > 8) count = 8;
    struct iovec iov[8];
    struct mmsghdr mm[8];
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < count; i++) {
        iov[i] = (struct iovec){t[4 + i], strlen(t[4 + i])};
        mm[i].msg_hdr = (struct msghdr){.msg_name = &to, .msg_namelen = sizeof to, .msg_iov = &iov[i], .msg_iovlen = 1};
    }
    int rc = sendmmsg(fd, mm, count, 0);
    if (rc != count) {
        if (rc >= 0) errno = EAGAIN;
        return -1;
    }
    return 0;
}

static void dump_and_exit(void) {
    for (int i = 0; i < MAX_SOCKS; i++) stop_waiter(i);
    for (int k = 0; k < nkids; k++) {
        if (kids[k].pid <= 0) continue;
        if (write(kids[k].to, "dump\n", 5) < 0) {}
        int st;
        waitpid(kids[k].pid, &st, 0);
    }
    pthread_mutex_lock(&out_lock);
    for (int i = 0; i < nrecords; i++) printf("%s\n", records[i]);
    pthread_mutex_unlock(&out_lock);
    fflush(stdout);
    if (parent_in < 0) printf("end\n");
    fflush(stdout);
    _exit(0);
}

/* A line from the driver (p0) or the parent (children). */
static int read_command(char *buf, size_t n) {
    int in = parent_in >= 0 ? parent_in : 0;
    size_t k = 0;
    while (k + 1 < n) {
        char c;
        ssize_t r = read(in, &c, 1);
        if (r <= 0) return -1;
        if (c == '\n') break;
        buf[k++] = c;
    }
    buf[k] = 0;
    return 0;
}

static void barrier(const char *name) {
    /* Children first: everyone in the tree is at the barrier before the driver hears it. */
    for (int k = 0; k < nkids; k++) {
        if (kids[k].pid <= 0) continue;
        char c;
        while (read(kids[k].from, &c, 1) == 1 && c != '\n') {}
    }
    if (parent_out >= 0) {
        if (write(parent_out, "at\n", 3) < 0) {}
    } else {
        printf("at %s\n", name);
        fflush(stdout);
    }
    for (;;) {
        char cmd[64];
        if (read_command(cmd, sizeof cmd) < 0) dump_and_exit();
        if (!strcmp(cmd, "go")) break;
        if (!strcmp(cmd, "dump")) dump_and_exit();
        if (!strcmp(cmd, "count")) {
            printf("count %ld\n", received ? atomic_load(received) : 0L);
            fflush(stdout);
        }
    }
    atomic_fetch_add(&phase, 1);
    for (int k = 0; k < nkids; k++)
        if (kids[k].pid > 0 && write(kids[k].to, "go\n", 3) < 0) {}
}

static int split(char *s, char **t, int max) {
    int n = 0;
    for (char *p = strtok(s, " \t\r\n"); p && n < max; p = strtok(NULL, " \t\r\n")) t[n++] = p;
    return n;
}

static void run_from(int start);

static void do_exec(int line) {
    /* The sockets stay open across exec (no close-on-exec); their numbers and waiters go
     * along on the command line. */
    char *argv[MAX_SOCKS + 10];
    int a = 0;
    char sline[16], cfd[16], pin[16], pout[16];
    snprintf(sline, sizeof sline, "%d", line + 1);
    snprintf(cfd, sizeof cfd, "%d", counter_fd);
    snprintf(pin, sizeof pin, "%d", parent_in);
    snprintf(pout, sizeof pout, "%d", parent_out);
    argv[a++] = (char *)self_path;
    argv[a++] = "--child";
    argv[a++] = (char *)script_path;
    argv[a++] = sline;
    argv[a++] = me;
    argv[a++] = cfd;
    argv[a++] = pin;
    argv[a++] = pout;
    static char maps[MAX_SOCKS][48];
    for (int i = 0; i < MAX_SOCKS; i++) {
        if (socks[i].fd < 0) continue;
        snprintf(maps[i], sizeof maps[i], "%d=%d", i, socks[i].fd);
        argv[a++] = maps[i];
    }
    argv[a] = NULL;
    for (int i = 0; i < MAX_SOCKS; i++) stop_waiter(i);
    /* What was recorded before exec is printed now (the new image starts empty). */
    pthread_mutex_lock(&out_lock);
    for (int i = 0; i < nrecords; i++) printf("%s\n", records[i]);
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
    execv(self_path, argv);
    result(line, "exec", -1);
}

static void run_from(int start) {
    for (int i = start; i < nlines; i++) {
        char copy[1024];
        snprintf(copy, sizeof copy, "%s", lines[i]);
        char *t[64];
        int n = split(copy, t, 64);
        if (n == 0 || t[0][0] == '#') continue;
        char **s = t;
        const char *who = "p0";
        if (t[0][0] == '@') {
            who = t[0] + 1;
            s++;
            n--;
        }
        if (n == 0) continue;
        /* Barriers are for everyone; other steps only for their process. */
        if (!strcmp(s[0], "barrier")) {
            barrier(n > 1 ? s[1] : "?");
            continue;
        }
        if (strcmp(who, me) != 0) continue;
        char step[512];
        snprintf(step, sizeof step, "%s", lines[i]);
        for (char *p = step; *p; p++)
            if (*p == '"' || *p == '\n' || *p == '\r') *p = ' ';
        int id = n > 1 ? atoi(s[1]) : 0;
        if (id < 0 || id >= MAX_SOCKS) id = 0;
        if (!strcmp(s[0], "sock")) {
            socks[id].fd = socket(AF_INET, SOCK_DGRAM, 0);
            result(i, step, socks[id].fd < 0 ? -1 : 0);
        } else if (!strcmp(s[0], "opt")) {
            result(i, step, do_opt(socks[id].fd, s, n));
        } else if (!strcmp(s[0], "bind")) {
            struct sockaddr_in sin;
            to_addr(&sin, s[2], s[3]);
            result(i, step, bind(socks[id].fd, (struct sockaddr *)&sin, sizeof sin));
            record_name(id);
        } else if (!strcmp(s[0], "connect")) {
            struct sockaddr_in sin;
            to_addr(&sin, s[2], s[3]);
            result(i, step, connect(socks[id].fd, (struct sockaddr *)&sin, sizeof sin));
        } else if (!strcmp(s[0], "join")) {
            result(i, step, do_join(socks[id].fd, s, n));
        } else if (!strcmp(s[0], "msfilter") || !strcmp(s[0], "gmsfilter")) {
            result(i, step, do_msfilter(socks[id].fd, s, n, s[0][0] == 'g'));
        } else if (!strcmp(s[0], "getfilter")) {
            do_getfilter(i, id, s);
        } else if (!strcmp(s[0], "getopt")) {
            do_getopt(i, id, s[2]);
        } else if (!strcmp(s[0], "waiter")) {
            start_waiter(id, s[2]);
        } else if (!strcmp(s[0], "send")) {
            result(i, step, do_send(s, n));
        } else if (!strcmp(s[0], "sendmmsg")) {
            result(i, step, do_sendmmsg(s, n));
        } else if (!strcmp(s[0], "dup")) {
            int to = atoi(s[2]);
            socks[to].fd = dup(socks[id].fd);
            result(i, step, socks[to].fd < 0 ? -1 : 0);
        } else if (!strcmp(s[0], "close")) {
            stop_waiter(id);
            result(i, step, close(socks[id].fd));
            socks[id].fd = -1;
        } else if (!strcmp(s[0], "sleep")) {
            usleep(atoi(s[1]) * 1000);
        } else if (!strcmp(s[0], "fork")) {
            int to[2], from[2];
            if (pipe(to) || pipe(from) || nkids == MAX_KIDS) {
                result(i, step, -1);
                continue;
            }
            fflush(stdout);
            pid_t pid = fork();
            if (pid == 0) {
                snprintf(me, sizeof me, "%s", s[1]);
                parent_in = to[0];
                parent_out = from[1];
                close(to[1]);
                close(from[0]);
                nkids = 0;
                pthread_mutex_lock(&out_lock);
                nrecords = 0;
                pthread_mutex_unlock(&out_lock);
                /* Only the forking thread survives fork; the child receives only where its
                 * own steps start a waiter (two readers of one socket would race). */
                for (int k = 0; k < MAX_SOCKS; k++) socks[k].running = 0;
                run_from(i + 1);
                for (;;) barrier("done");
            }
            close(to[0]);
            close(from[1]);
            snprintf(kids[nkids].name, sizeof kids[nkids].name, "%s", s[1]);
            kids[nkids].pid = pid;
            kids[nkids].to = to[1];
            kids[nkids].from = from[0];
            nkids++;
            result(i, step, pid < 0 ? -1 : 0);
        } else if (!strcmp(s[0], "exec")) {
            do_exec(i);
        } else if (!strcmp(s[0], "kill")) {
            for (int k = 0; k < nkids; k++)
                if (!strcmp(kids[k].name, s[1]) && kids[k].pid > 0) {
                    kill(kids[k].pid, SIGKILL);
                    waitpid(kids[k].pid, NULL, 0);
                    kids[k].pid = -1;
                    result(i, step, 0);
                }
        } else {
            errno = EINVAL;
            result(i, step, -1);
        }
    }
}

static void load(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        exit(2);
    }
    char buf[1024];
    while (nlines < MAX_LINES && fgets(buf, sizeof buf, f)) lines[nlines++] = strdup(buf);
    fclose(f);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    self_path = "/proc/self/exe";
    static char exe[4096];
    ssize_t l = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (l > 0) {
        exe[l] = 0;
        self_path = exe;
    }
    for (int i = 0; i < MAX_SOCKS; i++) socks[i].fd = -1;
    int start = 0;
    if (argc >= 9 && !strcmp(argv[1], "--child")) {
        script_path = argv[2];
        start = atoi(argv[3]);
        snprintf(me, sizeof me, "%s", argv[4]);
        counter_fd = atoi(argv[5]);
        parent_in = atoi(argv[6]);
        parent_out = atoi(argv[7]);
        load(script_path);
        received = mmap(NULL, sizeof *received, PROT_READ | PROT_WRITE, MAP_SHARED, counter_fd, 0);
        if (received == MAP_FAILED) received = NULL;
        for (int i = 8; i < argc; i++) {
            int id, fd;
            if (sscanf(argv[i], "%d=%d", &id, &fd) == 2 && id >= 0 && id < MAX_SOCKS) socks[id].fd = fd;
        }
        record("{\"p\":\"%s\",\"ev\":\"op\",\"line\":%d,\"op\":\"exec\",\"r\":\"ok\"}", me, start - 1);
        run_from(start);
        for (;;) barrier("done");
    }
    if (argc != 2) {
        fprintf(stderr, "usage: mcast_scenario SCRIPT\n");
        return 2;
    }
    script_path = argv[1];
    load(script_path);
    counter_fd = memfd_create("received", 0);
    if (counter_fd >= 0 && ftruncate(counter_fd, sizeof(long)) == 0) {
        received = mmap(NULL, sizeof *received, PROT_READ | PROT_WRITE, MAP_SHARED, counter_fd, 0);
        if (received == MAP_FAILED) received = NULL;
    }
    run_from(start);
    /* The script is done: wait for the driver (receiving, answering count) until dump. */
    for (;;) barrier("done");
}
