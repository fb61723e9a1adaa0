/* The emulator's design reduced to its floor, for the bench's ceiling section: one thread
 * moves packets between two TUN devices in two namespaces (read, stamp the clock, write),
 * with no delay, loss or rate model. What kernel TCP reaches through it is what this machine
 * allows any single-threaded TUN-to-TUN emulator; netemu is compared against it.
 *
 * usage: tunfwd NETNS_A DEV_A NETNS_B DEV_B */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int open_tun_in(const char *netns, const char *device) {
    char path[256];
    snprintf(path, sizeof path, "/var/run/netns/%s", netns);
    int home = open("/proc/self/ns/net", O_RDONLY);
    int target = open(path, O_RDONLY);
    if (home < 0 || target < 0) die("open namespace");
    if (setns(target, CLONE_NEWNET) != 0) die("setns");
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    if (fd < 0) die("/dev/net/tun");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, device, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) != 0) die("TUNSETIFF");
    if (setns(home, CLONE_NEWNET) != 0) die("setns back");
    close(home);
    close(target);
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: tunfwd NETNS_A DEV_A NETNS_B DEV_B\n");
        return 2;
    }
    int a = open_tun_in(argv[1], argv[2]);
    int b = open_tun_in(argv[3], argv[4]);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = a};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, a, &ev) != 0) die("epoll_ctl");
    ev.data.fd = b;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, b, &ev) != 0) die("epoll_ctl");
    printf("READY\n");
    fflush(stdout);
    static char buf[65536];
    struct epoll_event ready[2];
    unsigned long long stamps = 0;
    for (;;) {
        int n = epoll_wait(ep, ready, 2, -1);
        for (int i = 0; i < n; i++) {
            int in = ready[i].data.fd, out = in == a ? b : a;
            for (int k = 0; k < 64; k++) {
                ssize_t len = read(in, buf, sizeof buf);
                if (len <= 0) break;
                /* netemu stamps every packet as it is read; so does its floor. */
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                stamps += (unsigned long long)ts.tv_nsec & 1;
                if (write(out, buf, (size_t)len) < 0) continue;
            }
        }
    }
    return (int)(stamps & 0);
}
