/* starling-agent: the guest side of Starling's VMs. Static C so that it runs in a busybox
 * initramfs and in any image. Protocols: docs/api/vmm.md (the monitor's service) and
 * docs/api/agent.md (exec).
 *
 * The monitor's service (host CID 2, vsock port 0x53540000):
 *   starling-agent whoami        print this VM's identity line
 *   starling-agent identity      take the identity on: reseed the kernel RNG with the fresh
 *                                seed, set the hostname and the clock, and the address (ip=)
 *                                if the line has one; print the line
 *   starling-agent watch         stay in the background and take the identity on whenever the
 *                                VM was restored or forked from outside (the monitor answers
 *                                `watch` only then); print each line taken on
 *   starling-agent net IP [MAC]  take address IP (the kernel's ip= form,
 *                                ADDR::GW:MASK:HOST:DEV:off[:DNS..]) on: TCP connections from
 *                                the old address are aborted, the neighbour cache flushed, the
 *                                new address announced (gratuitous ARP)
 *   starling-agent fork N        fork the VM into N clones; prints 0 here and K in clone K,
 *                                each having taken its identity on
 *   starling-agent join          wait for the clones; print "exit C1 C2 ..."
 *   starling-agent ready         drop the page cache (what a pool's snapshot need not carry),
 *                                say the VM is booted and idle (a pool docks it here); print
 *                                the configuration it is activated with ("activate K=V -- ARGS")
 *   starling-agent answer PORT   serve vsock PORT: each connection gets "id=K random=HEX", K
 *                                this VM's clone id and HEX 16 bytes of /dev/urandom read after
 *                                the identity was taken on (clones reseed first)
 * Running an image (`starling run`; the run init in crates/guest/init/run-init.sh):
 *   starling-agent serve ROOT    serve exec requests on vsock port 0x53540001 (EXEC_PORT),
 *                                running each command chrooted into ROOT (kept as a directory
 *                                fd, so it still works after the init switch_roots into ROOT)
 *   starling-agent run ROOT [DIR]  the command mode, as PID 1: run the command in DIR/cmd
 *                                (default /scratch/starling) inside ROOT on the console; end
 *                                the VM with its status
 *   starling-agent exit N        end the VM with status N (the monitor's debug-exit port 0x501)
 *   starling-agent modules LIST DIR  load DIR/NAME.ko for each NAME in LIST (one a line, in
 *                                load order) in this one process: an insmod each is an exec
 *                                each, which a slow or nested machine feels at every boot
 * Exit status: 0, or 1 with a message on stderr. */
#define _GNU_SOURCE
#include <linux/random.h>
#include <linux/vm_sockets.h>
#include <linux/if_packet.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define SERVICE_PORT 0x53540000u

static int service(void) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) { perror("starling-agent: vsock socket"); exit(1); }
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = SERVICE_PORT };
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("starling-agent: connecting to the monitor"); exit(1); }
    return s;
}

/* Sends one request line and reads the answer line into buf. */
static void call(int s, const char *req, char *buf, size_t max) {
    size_t n = strlen(req), got = 0;
    if (write(s, req, n) != (ssize_t)n || write(s, "\n", 1) != 1) { perror("starling-agent: write"); exit(1); }
    while (got + 1 < max) {
        ssize_t r = read(s, buf + got, 1);
        if (r <= 0) { fprintf(stderr, "starling-agent: the monitor closed the connection\n"); exit(1); }
        if (buf[got] == '\n') break;
        got++;
    }
    buf[got] = 0;
    if (!strncmp(buf, "error", 5)) { fprintf(stderr, "starling-agent: %s\n", buf); exit(1); }
}

static const char *field(const char *line, const char *key, char *out, size_t max) {
    size_t k = strlen(key);
    for (const char *p = line; *p; p++)
        if ((p == line || p[-1] == ' ') && !strncmp(p, key, k) && p[k] == '=') {
            size_t i = 0;
            for (p += k + 1; *p && *p != ' ' && i + 1 < max; p++) out[i++] = *p;
            out[i] = 0;
            return out;
        }
    return NULL;
}

static int hexval(char c) { return c >= 'a' ? c - 'a' + 10 : c - '0'; }

/* ---- the guest's address (clones and restores get theirs from `whoami`) ---- */

/* Aborts the TCP connections whose local address is `old` (ss -K's way: dump them over
 * NETLINK_SOCK_DIAG, then SOCK_DESTROY each). Run after the address is gone, so that the
 * resets they would send cannot be routed: a clone must not reset its parent's peers.
 * Returns how many were aborted, or -1 if the kernel cannot (CONFIG_INET_DIAG_DESTROY). */
static int abort_tcp_from(struct in_addr old) {
    int nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (nl < 0) return -1;
    struct { struct nlmsghdr h; struct inet_diag_req_v2 r; } req;
    /* Collected first, destroyed after: no request may interleave with a dump. IPv6 sockets
     * too: a dual-stack server's accepted connections are ::ffff:ADDR. */
    struct { struct inet_diag_sockid id; unsigned char family; } ids[256];
    int n = 0, failed = 0;
    static char buf[32768];
    for (int f = 0; f < 2; f++) {
        unsigned char family = f ? AF_INET6 : AF_INET;
        memset(&req, 0, sizeof req);
        req.h.nlmsg_len = sizeof req;
        req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
        req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
        req.r.sdiag_family = family;
        req.r.sdiag_protocol = IPPROTO_TCP;
        /* Connections, not LISTEN (10), TIME_WAIT (6) or CLOSE (7): nothing to abort there. */
        req.r.idiag_states = ~((1u << 10) | (1u << 6) | (1u << 7));
        if (send(nl, &req, sizeof req, 0) < 0) { failed = 1; break; }
        int done = 0;
        while (!done) {
            ssize_t len = recv(nl, buf, sizeof buf, 0);
            if (len <= 0) { failed = 1; break; }
            for (struct nlmsghdr *h = (void *)buf; NLMSG_OK(h, (size_t)len); h = NLMSG_NEXT(h, len)) {
                /* An error instead of a dump: no tcp_diag in this kernel (or no IPv6). */
                if (h->nlmsg_type == NLMSG_ERROR) {
                    if (*(int *)NLMSG_DATA(h) != 0 && family == AF_INET) failed = 1;
                    done = 1;
                    break;
                }
                if (h->nlmsg_type == NLMSG_DONE) { done = 1; break; }
                struct inet_diag_msg *m = NLMSG_DATA(h);
                const uint32_t *a = m->id.idiag_src;
                int ours = family == AF_INET
                    ? a[0] == old.s_addr
                    : a[0] == 0 && a[1] == 0 && a[2] == htonl(0xffff) && a[3] == old.s_addr;
                if (ours && n < 256) { ids[n].id = m->id; ids[n].family = family; n++; }
            }
        }
    }
    int aborted = 0, unsupported = 0;
    for (int i = 0; i < n; i++) {
        memset(&req, 0, sizeof req);
        req.h.nlmsg_len = sizeof req;
        req.h.nlmsg_type = SOCK_DESTROY;
        req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
        req.r.sdiag_family = ids[i].family;
        req.r.sdiag_protocol = IPPROTO_TCP;
        req.r.idiag_states = ~0u;
        req.r.id = ids[i].id;
        if (send(nl, &req, sizeof req, 0) < 0) continue;
        char ack[512];
        ssize_t len = recv(nl, ack, sizeof ack, 0);
        struct nlmsghdr *h = (void *)ack;
        if (len >= (ssize_t)(sizeof *h + sizeof(int)) && h->nlmsg_type == NLMSG_ERROR) {
            int err = *(int *)NLMSG_DATA(h);
            if (err == 0) aborted++;
            else if (err == -EOPNOTSUPP) unsupported = 1;
        }
    }
    close(nl);
    return failed || (unsupported && !aborted) ? -1 : aborted;
}

/* Announces `addr` at `mac` on interface `index` (gratuitous ARP: a request for itself). */
static void announce(int index, const unsigned char mac[6], struct in_addr addr) {
    int p = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons(0x0806));
    if (p < 0) { perror("starling-agent: announcing the address"); return; }
    unsigned char arp[28] = {0, 1, 8, 0, 6, 4, 0, 1};
    memcpy(arp + 8, mac, 6); memcpy(arp + 14, &addr, 4);
    memset(arp + 18, 0, 6); memcpy(arp + 24, &addr, 4);
    struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(0x0806),
                              .sll_ifindex = index, .sll_halen = 6 };
    memset(to.sll_addr, 0xff, 6);
    if (sendto(p, arp, sizeof arp, 0, (struct sockaddr *)&to, sizeof to) < 0)
        perror("starling-agent: announcing the address");
    close(p);
}

static int set_flags(int s, const char *dev, int up) {
    struct ifreq r; memset(&r, 0, sizeof r);
    snprintf(r.ifr_name, IFNAMSIZ, "%s", dev);
    if (ioctl(s, SIOCGIFFLAGS, &r) < 0) return -1;
    if (up) r.ifr_flags |= IFF_UP; else r.ifr_flags &= ~IFF_UP;
    return ioctl(s, SIOCSIFFLAGS, &r);
}

static int set_in_addr(int s, const char *dev, unsigned long req, struct in_addr a) {
    struct ifreq r; memset(&r, 0, sizeof r);
    snprintf(r.ifr_name, IFNAMSIZ, "%s", dev);
    struct sockaddr_in *sa = (struct sockaddr_in *)&r.ifr_addr;
    sa->sin_family = AF_INET; sa->sin_addr = a;
    return ioctl(s, req, &r);
}

/* Takes the address in `ip` (ADDR::GW:MASK:HOST:DEV:AUTOCONF[:DNS..]) on, and the MAC `mac`
 * (aa:bb:..; may be NULL): a clone's device has a MAC of its own, which the kernel's driver
 * read only when it started, and two ports of a bridge must not claim one MAC. 0 on success. */
static int apply_net(const char *ip, const char *mac_text) {
    char f[9][64] = {{0}};
    int k = 0; size_t at = 0;
    for (const char *p = ip; *p && k < 9; p++) {
        if (*p == ':') { k++; at = 0; continue; }
        if (at + 1 < sizeof f[0]) f[k][at++] = *p;
    }
    struct in_addr addr, gw, mask;
    const char *dev = f[5][0] ? f[5] : "eth0";
    if (!inet_aton(f[0], &addr) || !inet_aton(f[3], &mask) || strlen(dev) >= IFNAMSIZ) {
        fprintf(stderr, "starling-agent: address %s: not ADDR::GW:MASK:HOST:DEV:off\n", ip);
        return -1;
    }
    int have_gw = f[2][0] && inet_aton(f[2], &gw);
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) { perror("starling-agent: socket"); return -1; }
    struct ifreq r; memset(&r, 0, sizeof r);
    snprintf(r.ifr_name, IFNAMSIZ, "%s", dev);
    struct in_addr old = {0};
    if (ioctl(s, SIOCGIFADDR, &r) == 0) old = ((struct sockaddr_in *)&r.ifr_addr)->sin_addr;
    unsigned char want[6];
    int new_mac = 0;
    if (mac_text && sscanf(mac_text, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &want[0], &want[1], &want[2],
                           &want[3], &want[4], &want[5]) == 6 && !(want[0] & 1)) {
        memset(&r, 0, sizeof r);
        snprintf(r.ifr_name, IFNAMSIZ, "%s", dev);
        new_mac = ioctl(s, SIOCGIFHWADDR, &r) == 0 && memcmp(r.ifr_hwaddr.sa_data, want, 6) != 0;
    }
    /* Down and up: the neighbour cache and the routes through the device go with the old
     * address. The same address again (a restore) is only announced. */
    int same = old.s_addr == addr.s_addr && !new_mac;
    if (new_mac) {
        memset(&r, 0, sizeof r);
        snprintf(r.ifr_name, IFNAMSIZ, "%s", dev);
        r.ifr_hwaddr.sa_family = 1; /* ARPHRD_ETHER */
        memcpy(r.ifr_hwaddr.sa_data, want, 6);
        if (set_flags(s, dev, 0) < 0 || ioctl(s, SIOCSIFHWADDR, &r) < 0)
            fprintf(stderr, "starling-agent: setting %s's MAC to %s: %s\n", dev, mac_text, strerror(errno));
    }
    if (!same && (set_flags(s, dev, 0) < 0 || set_in_addr(s, dev, SIOCSIFADDR, addr) < 0 ||
        set_in_addr(s, dev, SIOCSIFNETMASK, mask) < 0 || set_flags(s, dev, 1) < 0)) {
        fprintf(stderr, "starling-agent: setting address %s on %s: %s\n", f[0], dev, strerror(errno));
        close(s); return -1;
    }
    if (have_gw && !same) {
        struct rtentry rt; memset(&rt, 0, sizeof rt);
        struct sockaddr_in *g = (struct sockaddr_in *)&rt.rt_gateway;
        g->sin_family = AF_INET; g->sin_addr = gw;
        ((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
        ((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        rt.rt_dev = (char *)dev;
        if (ioctl(s, SIOCADDRT, &rt) < 0 && errno != EEXIST)
            fprintf(stderr, "starling-agent: default route via %s: %s\n", f[2], strerror(errno));
    }
    int aborted = 0;
    if (old.s_addr && old.s_addr != addr.s_addr) aborted = abort_tcp_from(old);
    memset(&r, 0, sizeof r);
    snprintf(r.ifr_name, IFNAMSIZ, "%s", dev);
    if (ioctl(s, SIOCGIFHWADDR, &r) == 0) {
        unsigned char mac[6];
        memcpy(mac, r.ifr_hwaddr.sa_data, 6);
        memset(&r, 0, sizeof r);
        snprintf(r.ifr_name, IFNAMSIZ, "%s", dev);
        if (ioctl(s, SIOCGIFINDEX, &r) == 0) announce(r.ifr_ifindex, mac, addr);
    }
    close(s);
    char was[INET_ADDRSTRLEN] = "none";
    if (old.s_addr) inet_ntop(AF_INET, &old, was, sizeof was);
    fprintf(stderr, "starling-agent: %s address %s (was %s)", dev, f[0], was);
    if (aborted > 0) fprintf(stderr, ", %d TCP connection%s from the old one aborted", aborted, aborted == 1 ? "" : "s");
    if (aborted < 0) fprintf(stderr, ", its TCP connections left (this kernel cannot abort them: no tcp_diag or SOCK_DESTROY)");
    fprintf(stderr, "\n");
    return 0;
}

/* Takes the identity in `line` on. */
static void apply(const char *line) {
    char v[128];
    if (field(line, "seed", v, sizeof v) && strlen(v) == 64) {
        struct { struct rand_pool_info info; unsigned char buf[32]; } e;
        e.info.entropy_count = 256;
        e.info.buf_size = 32;
        for (int i = 0; i < 32; i++) e.buf[i] = hexval(v[2 * i]) << 4 | hexval(v[2 * i + 1]);
        int fd = open("/dev/urandom", O_WRONLY);
        if (fd < 0 || ioctl(fd, RNDADDENTROPY, &e) < 0 || ioctl(fd, RNDRESEEDCRNG) < 0)
            perror("starling-agent: reseeding the RNG");
        if (fd >= 0) close(fd);
    }
    if (field(line, "hostname", v, sizeof v) && sethostname(v, strlen(v)) < 0)
        perror("starling-agent: sethostname");
    if (field(line, "time", v, sizeof v)) {
        unsigned long long ns = strtoull(v, NULL, 10);
        struct timespec ts = { .tv_sec = ns / 1000000000ULL, .tv_nsec = ns % 1000000000ULL };
        if (clock_settime(CLOCK_REALTIME, &ts) < 0) perror("starling-agent: clock_settime");
    }
    char ip[256], mac[32];
    if (field(line, "ip", ip, sizeof ip)) apply_net(ip, field(line, "mac", mac, sizeof mac));
}

static long whoami(int apply_it) {
    static long last = -1;
    char line[512], v[32];
    int s = service();
    call(s, "whoami", line, sizeof line);
    close(s);
    long id = field(line, "id", v, sizeof v) ? atol(v) : -1;
    if (apply_it && id != last) { apply(line); last = id; }
    return id;
}

static int answer(int port) {
    int l = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 16) < 0) {
        perror("starling-agent: listening on vsock"); return 1;
    }
    printf("starling-agent: answering on vsock port %d\n", port);
    fflush(stdout);
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0) continue;
        /* A clone learns it is one here: take its own identity on before using the RNG. */
        long id = whoami(1);
        unsigned char r[16];
        char out[128];
        int fd = open("/dev/urandom", O_RDONLY);
        if (fd < 0 || read(fd, r, sizeof r) != sizeof r) { close(c); continue; }
        close(fd);
        int n = snprintf(out, sizeof out, "id=%ld random=", id);
        for (int i = 0; i < 16; i++) n += snprintf(out + n, sizeof out - n, "%02x", r[i]);
        out[n++] = '\n';
        if (write(c, out, n) < 0) perror("starling-agent: write");
        close(c);
    }
}


/* ---- exec service and run mode ---------------------------------------------------------- */

#define EXEC_PORT 0x53540001u
/* Bounds on what the host sends (docs/api/agent.md). */
#define MAX_ARGC 4096u
#define MAX_ENVC 4096u
#define MAX_STRING (128u * 1024)
#define MAX_STRINGS_TOTAL (2u * 1024 * 1024)
#define MAX_FRAME (64u * 1024)
#define MAX_SESSIONS 64
/* Frame types. Host to agent: */
#define F_STDIN 1
#define F_STDIN_EOF 2
#define F_RESIZE 7
/* Agent to host: */
#define F_STDOUT 3
#define F_STDERR 4
#define F_EXIT 5
#define F_ERROR 6
#define FLAG_PTY 1u
/* The monitor's debug-exit port: the byte written becomes the VM's exit status. */
#define EXIT_PORT 0x501
/* Statuses of the run mode's own failures (the init's are in run-init.sh). */
#define ST_RUN_PREPARE 247
#define ST_RUN_CONFIG 248
#define STOP_GRACE_S 10
#define POWEROFF_GRACE_S 20
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* Test mode (STARLING_AGENT_UNIX set): serve listens on that unix socket, and nothing ever
 * touches ports or powers the machine off. */
static int test_mode(void) { return getenv("STARLING_AGENT_UNIX") != NULL; }

static const char *state_dir(void) {
    const char *s = getenv("STARLING_AGENT_STATE");
    return s && *s ? s : "/run/starling-agent";
}

/* Asks the monitor's service to end the VM with `status` (`exit N`); false if it did not
 * say `ok` within 2 s (another monitor, no vsock). Never exits: PID 1 must not. */
static int service_exit(int status) {
    int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return 0;
    struct timeval tv = { .tv_sec = 2 };
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = SERVICE_PORT };
    char req[32], ans[8] = {0};
    int n = snprintf(req, sizeof req, "exit %d\n", status);
    int ok = connect(s, (struct sockaddr *)&a, sizeof a) == 0 && write(s, req, n) == n &&
             read(s, ans, sizeof ans - 1) >= 2 && !strncmp(ans, "ok", 2);
    close(s);
    return ok;
}

/* Ends the VM with `status`: through the monitor's service, else its debug-exit port (a
 * user-mode port write after ioperm); powers off if neither did. */
static void end_vm(int status) {
    sync();
    if (test_mode()) exit(status);
    if (service_exit(status)) {
        sleep(5);
    }
    if (ioperm(EXIT_PORT, 1, 1) == 0) {
        outb((unsigned char)status, EXIT_PORT);
        sleep(2);
    }
    fprintf(stderr, "starling-agent: port %#x did not end the VM (not Starling's monitor?): "
            "powering off; status %d is lost\n", EXIT_PORT, status);
    reboot(RB_POWER_OFF);
    for (;;) pause();
}

static int read_full(int fd, void *buf, size_t n) {
    char *p = buf;
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r; n -= (size_t)r;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) { struct pollfd pf = { fd, POLLOUT, 0 }; poll(&pf, 1, -1); continue; }
        if (w <= 0) return -1;
        p += w; n -= (size_t)w;
    }
    return 0;
}

static void put_u32(unsigned char *b, uint32_t v) {
    b[0] = v; b[1] = v >> 8; b[2] = v >> 16; b[3] = v >> 24;
}

static uint32_t get_u32(const unsigned char *b) {
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static int read_u32(int fd, uint32_t *v) {
    unsigned char b[4];
    if (read_full(fd, b, 4)) return -1;
    *v = get_u32(b);
    return 0;
}

static int send_frame(int fd, int type, const void *data, uint32_t n) {
    unsigned char h[5];
    h[0] = (unsigned char)type;
    put_u32(h + 1, n);
    struct iovec v[2] = { { h, 5 }, { (void *)data, n } };
    size_t want = 5 + n;
    ssize_t w;
    do w = writev(fd, v, n ? 2 : 1); while (w < 0 && errno == EINTR);
    if (w < 0) return -1;
    if ((size_t)w == want) return 0;
    /* Short write: finish it the slow way. */
    if ((size_t)w < 5) {
        if (write_full(fd, h + w, 5 - (size_t)w)) return -1;
        w = 5;
    }
    return write_full(fd, (const char *)data + (w - 5), want - (size_t)w);
}

static void send_error(int fd, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if ((size_t)n >= sizeof msg) n = sizeof msg - 1;
    send_frame(fd, F_ERROR, msg, (uint32_t)n);
}

static void send_status(int fd, int status) {
    unsigned char b[4];
    put_u32(b, (uint32_t)status);
    send_frame(fd, F_EXIT, b, 4);
}

static int wait_status(int st) {
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return 1;
}

/* What a child does before exec: default signal dispositions, nothing blocked. */
static void reset_signals(void) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
}

/* Enters ROOT (a directory fd), with cwd "/". Once the image's own init runs as PID 1 in
 * that file system, its root as PID 1 sees it (/proc/1/root, as nsenter does): tools such as
 * systemctl compare their root with PID 1's and act "offline" when they differ. */
static int enter_root(int rootfd) {
    int use = rootfd;
    int init_root = openat(rootfd, "proc/1/root", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct stat a, b;
    if (init_root >= 0 && fstat(init_root, &a) == 0 && fstat(rootfd, &b) == 0 && a.st_dev == b.st_dev)
        use = init_root;
    int r = (fchdir(use) < 0 || chroot(".") < 0 || chdir("/") < 0) ? -1 : 0;
    if (init_root >= 0) close(init_root);
    return r;
}

/* The command's environment: defaults, then `env` (K=V each, overriding). */
static void set_env(char **env, uint32_t envc, const char *term) {
    clearenv();
    setenv("PATH", DEFAULT_PATH, 1);
    setenv("HOME", "/root", 1);
    if (term) setenv("TERM", term, 1);
    for (uint32_t i = 0; i < envc; i++) putenv(env[i]);
}

/* How an exec failure reads, and the status it gives: 127 not found, 126 otherwise. */
static int exec_failure(int err, const char *cmd, char *msg, size_t max) {
    if (err == ENOENT || err == ENOTDIR) {
        snprintf(msg, max, "%s: command not found", cmd);
        return 127;
    }
    snprintf(msg, max, "%s: cannot execute: %s", cmd, strerror(err));
    return 126;
}

/* Reads a u32 count and that many length-prefixed strings (NUL-terminated copies), within
 * the bounds; on a violation sends an error frame and returns -1. */
static char **read_strings(int fd, const char *what, uint32_t max_count, uint32_t *count,
                           size_t *total) {
    uint32_t n;
    if (read_u32(fd, &n)) return NULL;
    if (n > max_count) {
        send_error(fd, "request refused: %u %ss (at most %u)", n, what, max_count);
        return NULL;
    }
    char **v = calloc((size_t)n + 1, sizeof *v);
    if (!v) { send_error(fd, "out of memory"); return NULL; }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t len;
        if (read_u32(fd, &len)) return NULL;
        if (len > MAX_STRING) {
            send_error(fd, "request refused: %s %u is %u bytes (at most %u)", what, i, len, MAX_STRING);
            return NULL;
        }
        *total += len;
        if (*total > MAX_STRINGS_TOTAL) {
            send_error(fd, "request refused: arguments and environment exceed %u bytes",
                       MAX_STRINGS_TOTAL);
            return NULL;
        }
        v[i] = malloc((size_t)len + 1);
        if (!v[i]) { send_error(fd, "out of memory"); return NULL; }
        if (read_full(fd, v[i], len)) return NULL;
        v[i][len] = 0;
        if (memchr(v[i], 0, len)) {
            send_error(fd, "request refused: %s %u holds a NUL byte", what, i);
            return NULL;
        }
    }
    *count = n;
    return v;
}

/* Reads one request line ("exec" or "stop") of at most `max` - 1 bytes. */
static int read_line(int fd, char *buf, size_t max) {
    size_t n = 0;
    for (;;) {
        char c;
        if (read_full(fd, &c, 1)) return -1;
        if (c == '\n') break;
        if (n + 1 >= max) return -2;
        buf[n++] = c;
    }
    buf[n] = 0;
    return 0;
}

struct child_err { int stage; int err; }; /* stage 1: entering ROOT, 2: exec */

/* Relays one command's stdio over the connection until it exits; returns its status, or -1
 * when the host broke the protocol (an error frame has been sent). */
static int relay(int conn, pid_t pid, int in_fd, int out_fd, int err_fd, int pty) {
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    static char buf[MAX_FRAME];
    char *pending = malloc(MAX_FRAME);
    size_t plen = 0, poff = 0;
    int eof_wanted = 0, conn_open = 1, done = 0, status = 0, broken = 0;
    time_t kill_at = 0;
    if (!pending) { send_error(conn, "out of memory"); kill(-pid, SIGKILL); }
    fcntl(in_fd, F_SETFL, fcntl(in_fd, F_GETFL) | O_NONBLOCK);
    for (;;) {
        if (done) {
            /* What the command wrote before it exited is in the pipes: drain it, without
             * waiting for background processes that still hold them. */
            int fds[2] = { out_fd, err_fd };
            for (int i = 0; i < 2; i++) {
                if (fds[i] < 0) continue;
                fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
                ssize_t r;
                while ((r = read(fds[i], buf, sizeof buf)) > 0)
                    if (conn_open) send_frame(conn, i ? F_STDERR : F_STDOUT, buf, (uint32_t)r);
            }
            break;
        }
        /* Before polling: an end of input asked for must not wait for another event. */
        if (plen == 0 && eof_wanted && in_fd >= 0) {
            if (pty) {
                struct termios t;
                char eof = tcgetattr(in_fd, &t) == 0 ? (char)t.c_cc[VEOF] : 4;
                if (write(in_fd, &eof, 1) < 0) { /* nothing reads it any more */ }
            } else {
                close(in_fd);
                in_fd = -1;
            }
            eof_wanted = 0;
        }
        struct pollfd p[5];
        int np = 0, i_conn = -1, i_in = -1, i_out = -1, i_err = -1, i_pid = -1;
        if (conn_open && plen == 0 && !broken) { i_conn = np; p[np++] = (struct pollfd){ conn, POLLIN, 0 }; }
        if (plen && in_fd >= 0) { i_in = np; p[np++] = (struct pollfd){ in_fd, POLLOUT, 0 }; }
        if (out_fd >= 0) { i_out = np; p[np++] = (struct pollfd){ out_fd, POLLIN, 0 }; }
        if (err_fd >= 0) { i_err = np; p[np++] = (struct pollfd){ err_fd, POLLIN, 0 }; }
        if (pidfd >= 0) { i_pid = np; p[np++] = (struct pollfd){ pidfd, POLLIN, 0 }; }
        int timeout = (pidfd < 0 || kill_at) ? 100 : -1;
        if (poll(p, np, timeout) < 0 && errno != EINTR) break;
        if (kill_at && time(NULL) >= kill_at) { kill(-pid, SIGKILL); kill_at = 0; }
        if (i_pid >= 0 ? (p[i_pid].revents & POLLIN) != 0 : 1) {
            int st;
            if (waitpid(pid, &st, WNOHANG) == pid) { status = wait_status(st); done = 1; }
        }
        for (int k = 0; k < 2; k++) {
            int idx = k ? i_err : i_out;
            int *fd = k ? &err_fd : &out_fd;
            if (idx < 0 || !(p[idx].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t r = read(*fd, buf, sizeof buf);
            if (r > 0) {
                if (conn_open && send_frame(conn, k ? F_STDERR : F_STDOUT, buf, (uint32_t)r))
                    conn_open = 0;
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                /* EOF (EIO from a pty master once the last slave closed). */
                if (*fd != in_fd) close(*fd);
                *fd = -1;
            }
        }
        if (i_in >= 0 && (p[i_in].revents & (POLLOUT | POLLERR | POLLHUP))) {
            ssize_t w = write(in_fd, pending + poff, plen - poff);
            if (w > 0) {
                poff += (size_t)w;
                if (poff == plen) plen = poff = 0;
            } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                /* The command closed its stdin: what is left goes nowhere. */
                plen = poff = 0;
                if (!pty) { close(in_fd); in_fd = -1; }
            }
        }
        if (i_conn >= 0 && (p[i_conn].revents & (POLLIN | POLLHUP | POLLERR))) {
            unsigned char h[5];
            if (read_full(conn, h, 5)) {
                /* The host went away: hang the command up, and kill it if it lingers. */
                conn_open = 0;
                kill(-pid, SIGHUP);
                kill_at = time(NULL) + STOP_GRACE_S;
                continue;
            }
            uint32_t len = get_u32(h + 1);
            if (len > MAX_FRAME) {
                send_error(conn, "frame of %u bytes refused (at most %u)", len, MAX_FRAME);
                broken = 1;
            } else if (h[0] == F_STDIN) {
                if (read_full(conn, pending, len)) { conn_open = 0; continue; }
                plen = in_fd >= 0 ? len : 0;
                poff = 0;
            } else if (h[0] == F_STDIN_EOF && len == 0) {
                eof_wanted = 1;
            } else if (h[0] == F_RESIZE && len == 4) {
                unsigned char b[4];
                if (read_full(conn, b, 4)) { conn_open = 0; continue; }
                struct winsize ws = { .ws_row = (unsigned short)(b[0] | b[1] << 8),
                                      .ws_col = (unsigned short)(b[2] | b[3] << 8) };
                if (pty) ioctl(out_fd >= 0 ? out_fd : in_fd, TIOCSWINSZ, &ws);
            } else {
                send_error(conn, "frame type %u with %u bytes refused", h[0], len);
                broken = 1;
            }
            if (broken) {
                kill(-pid, SIGKILL);
                conn_open = 0;
            }
        }
    }
    free(pending);
    if (pidfd >= 0) close(pidfd);
    if (in_fd >= 0) close(in_fd);
    if (out_fd >= 0 && out_fd != in_fd) close(out_fd);
    if (err_fd >= 0) close(err_fd);
    return broken ? -1 : status;
}

/* One exec request (after its "exec" line). */
static void exec_request(int conn, int rootfd) {
    uint32_t argc = 0, envc = 0, flags;
    size_t total = 0;
    char **argv = read_strings(conn, "argument", MAX_ARGC, &argc, &total);
    if (!argv) return;
    if (argc == 0) { send_error(conn, "request refused: no command (argc is 0)"); return; }
    char **env = read_strings(conn, "environment entry", MAX_ENVC, &envc, &total);
    if (!env) return;
    for (uint32_t i = 0; i < envc; i++)
        if (!strchr(env[i], '=') || env[i][0] == '=') {
            send_error(conn, "request refused: environment entry %u is not K=V", i);
            return;
        }
    if (read_u32(conn, &flags)) return;
    if (flags & ~FLAG_PTY) { send_error(conn, "request refused: unknown flags %#x", flags); return; }
    int pty = flags & FLAG_PTY;

    int ep[2], in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 }, master = -1, slave = -1;
    if (pipe2(ep, O_CLOEXEC) < 0) { send_error(conn, "pipe: %s", strerror(errno)); return; }
    if (pty) {
        master = openat(rootfd, "dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0) master = openat(rootfd, "dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
        int unlock = 0;
        if (master < 0 || ioctl(master, TIOCSPTLCK, &unlock) < 0 ||
            (slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY)) < 0) {
            send_error(conn, "no pseudo-terminal in the VM (devpts at /dev/pts?): %s", strerror(errno));
            send_status(conn, 126);
            return;
        }
        fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
    } else if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
        send_error(conn, "pipe: %s", strerror(errno));
        return;
    }
    pid_t pid = fork();
    if (pid < 0) { send_error(conn, "fork: %s", strerror(errno)); send_status(conn, 126); return; }
    if (pid == 0) {
        reset_signals();
        setsid();
        if (pty) {
            ioctl(slave, TIOCSCTTY, 0);
            dup2(slave, 0); dup2(slave, 1); dup2(slave, 2);
        } else {
            dup2(in[0], 0); dup2(out[1], 1); dup2(err[1], 2);
        }
        struct child_err ce = { 1, 0 };
        if (enter_root(rootfd) == 0) {
            set_env(env, envc, pty ? "xterm-256color" : NULL);
            execvp(argv[0], argv);
            ce.stage = 2;
        }
        ce.err = errno;
        if (write(ep[1], &ce, sizeof ce) < 0) { /* the parent reports no status then */ }
        _exit(127);
    }
    close(ep[1]);
    if (pty) close(slave);
    else { close(in[0]); close(out[1]); close(err[1]); }
    struct child_err ce;
    ssize_t r;
    do r = read(ep[0], &ce, sizeof ce); while (r < 0 && errno == EINTR);
    close(ep[0]);
    if (r == (ssize_t)sizeof ce) {
        char msg[512];
        int st;
        waitpid(pid, &st, 0);
        int status = 126;
        if (ce.stage == 1) snprintf(msg, sizeof msg, "entering the image root: %s", strerror(ce.err));
        else status = exec_failure(ce.err, argv[0], msg, sizeof msg);
        send_frame(conn, F_ERROR, msg, (uint32_t)strlen(msg));
        send_status(conn, status);
        return;
    }
    int status = pty ? relay(conn, pid, master, master, -1, 1) : relay(conn, pid, in[1], out[0], err[0], 0);
    if (status >= 0) send_status(conn, status);
}

/* The run command's process group, if one is going (written by `run`). */
static pid_t run_pgid(void) {
    char path[4096], line[32] = { 0 };
    snprintf(path, sizeof path, "%s/run.pid", state_dir());
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, line, sizeof line - 1);
    close(fd);
    if (n <= 0) return 0;
    pid_t pid = (pid_t)atol(line);
    if (pid <= 1 || kill(pid, 0) < 0 || getpgid(pid) != pid) return 0;
    return pid;
}

static void answer_line(int conn, const char *line) {
    if (write_full(conn, line, strlen(line))) { /* the host went away */ }
}

/* "stop": end the run command (SIGTERM, SIGKILL after 10 s), or power the VM off. */
static void stop_request(int conn, int rootfd) {
    pid_t pg = run_pgid();
    if (pg) {
        answer_line(conn, "ok command\n");
        close(conn);
        kill(-pg, SIGTERM);
        for (int i = 0; i < STOP_GRACE_S * 10; i++) {
            if (kill(-pg, 0) < 0) return;
            usleep(100000);
        }
        kill(-pg, SIGKILL);
        return;
    }
    if (test_mode()) {
        answer_line(conn, "error no command is running (test mode: not powering off)\n");
        return;
    }
    answer_line(conn, "ok poweroff\n");
    close(conn);
    /* systemd as PID 1 powers off in order on SIGRTMIN+4 (systemd(1)), without the bus that
     * `poweroff` would need; the agent itself is stopped on the way. */
    char exe[256];
    ssize_t n = readlinkat(rootfd, "proc/1/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        if (strstr(exe, "/systemd") && kill(1, SIGRTMIN + 4) == 0) {
            sleep(POWEROFF_GRACE_S);
            fprintf(stderr, "starling-agent: systemd did not power off within %d s: powering off\n",
                    POWEROFF_GRACE_S);
            sync();
            reboot(RB_POWER_OFF);
            return;
        }
    }
    pid_t pid = fork();
    if (pid == 0) {
        reset_signals();
        setsid();
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) { dup2(null, 0); }
        if (enter_root(rootfd) == 0) execl("/sbin/poweroff", "poweroff", (char *)NULL);
        _exit(127);
    }
    /* The image's poweroff (systemd's) stops the VM in order; if it fails or the VM is still
     * here after 20 s, the kernel powers off. */
    int st = 0;
    for (int i = 0; pid > 0 && i < POWEROFF_GRACE_S * 10; i++) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid && (!WIFEXITED(st) || WEXITSTATUS(st) != 0)) break;
        usleep(100000);
    }
    fprintf(stderr, "starling-agent: powering off\n");
    sync();
    reboot(RB_POWER_OFF);
}

/* Closing a socket with unread input resets it, and the host could lose the frames that say
 * why a request was refused: say we are done, then discard what the host still sends (at most
 * 8 MiB, for at most 2 s) before closing. */
static void linger(int conn) {
    static char sink[MAX_FRAME];
    size_t total = 0;
    shutdown(conn, SHUT_WR);
    time_t until = time(NULL) + 2;
    while (total < (8u << 20) && time(NULL) <= until) {
        struct pollfd p = { conn, POLLIN, 0 };
        if (poll(&p, 1, 200) <= 0) continue;
        ssize_t r = read(conn, sink, sizeof sink);
        if (r <= 0) break;
        total += (size_t)r;
    }
    close(conn);
}

static void session(int conn, int rootfd) {
    char line[16];
    int r = read_line(conn, line, sizeof line);
    if (r == -2) send_error(conn, "request refused: the request line is too long");
    if (r) return;
    if (!strcmp(line, "exec")) exec_request(conn, rootfd);
    else if (!strcmp(line, "stop")) stop_request(conn, rootfd);
    else send_error(conn, "request refused: unknown request '%s' (exec or stop)", line);
}

static int listener(void) {
    const char *path = getenv("STARLING_AGENT_UNIX");
    int l;
    if (path) {
        struct sockaddr_un a = { .sun_family = AF_UNIX };
        if (strlen(path) >= sizeof a.sun_path) { fprintf(stderr, "starling-agent: %s: path too long\n", path); exit(1); }
        strcpy(a.sun_path, path);
        unlink(path);
        l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 16) < 0) {
            fprintf(stderr, "starling-agent: listening on %s: %s\n", path, strerror(errno)); exit(1);
        }
        return l;
    }
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = EXEC_PORT };
    l = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 16) < 0) {
        fprintf(stderr, "starling-agent: listening on vsock port %#x: %s\n", EXEC_PORT, strerror(errno)); exit(1);
    }
    return l;
}

static int serve(const char *root) {
    int rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0) { fprintf(stderr, "starling-agent: %s: %s\n", root, strerror(errno)); return 1; }
    signal(SIGPIPE, SIG_IGN);
    int l = listener();
    int active = 0;
    for (;;) {
        int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        while (active > 0 && waitpid(-1, NULL, WNOHANG) > 0) active--;
        if (c < 0) { if (errno != EINTR) usleep(10000); continue; }
        if (active >= MAX_SESSIONS) {
            send_error(c, "request refused: %d sessions are going already", MAX_SESSIONS);
            close(c);
            continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(l);
            session(c, rootfd);
            linger(c);
            _exit(0);
        }
        if (pid > 0) active++;
        close(c);
    }
}

/* Reads a file of NUL-terminated strings (at most 2 MiB, 4096 strings). NULL with a message
 * when it cannot, or (optional files) with *missing set when it is absent. */
static char **read_nul_list(const char *path, uint32_t *count, int *missing) {
    *count = 0;
    if (missing) *missing = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (missing && errno == ENOENT) { *missing = 1; return NULL; }
        fprintf(stderr, "starling-agent: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    char *data = malloc(MAX_STRINGS_TOTAL + 1);
    size_t n = 0;
    ssize_t r;
    while (data && (r = read(fd, data + n, MAX_STRINGS_TOTAL + 1 - n)) > 0) n += (size_t)r;
    close(fd);
    if (!data || n > MAX_STRINGS_TOTAL) {
        fprintf(stderr, "starling-agent: %s: larger than %u bytes\n", path, MAX_STRINGS_TOTAL);
        return NULL;
    }
    if (n && data[n - 1] != 0) data[n++] = 0; /* a last string without its NUL */
    char **v = calloc(MAX_ARGC + 1, sizeof *v);
    if (!v) return NULL;
    for (size_t i = 0; i < n; i += strlen(data + i) + 1) {
        if (*count == MAX_ARGC) {
            fprintf(stderr, "starling-agent: %s: more than %u strings\n", path, MAX_ARGC);
            return NULL;
        }
        v[(*count)++] = data + i;
    }
    return v;
}

/* Mounts `type` at ROOT/rel unless something is mounted there already. */
static int ensure_mount(const char *root, int rootfd, const char *rel, const char *type,
                        unsigned long flags, const char *opts) {
    struct stat r, d;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    if (fstat(rootfd, &r) < 0) return -1;
    if (fstatat(rootfd, rel, &d, 0) < 0) {
        if (mkdirat(rootfd, rel, 0755) < 0 || fstatat(rootfd, rel, &d, 0) < 0) {
            fprintf(stderr, "starling-agent: creating %s: %s\n", path, strerror(errno));
            return -1;
        }
    }
    /* A mount point already when its device differs from its parent's. */
    struct stat p = r;
    const char *slash = strrchr(rel, '/');
    if (slash) {
        char parent[256];
        snprintf(parent, sizeof parent, "%.*s", (int)(slash - rel), rel);
        if (fstatat(rootfd, parent, &p, 0) < 0) return -1;
    }
    if (p.st_dev != d.st_dev) return 0;
    if (mount(type, path, type, flags, opts) < 0) {
        fprintf(stderr, "starling-agent: mounting %s at %s: %s\n", type, path, strerror(errno));
        return -1;
    }
    return 0;
}

/* The command mode: PID 1 of a VM whose init found a command to run. Never returns. */
static void run(const char *root, const char *dir) {
    char path[4096];
    uint32_t argc, envc = 0;
    int missing;
    snprintf(path, sizeof path, "%s/cmd", dir);
    char **argv = read_nul_list(path, &argc, NULL);
    if (argv && argc == 0) fprintf(stderr, "starling-agent: %s holds no command\n", path);
    if (!argv || argc == 0) end_vm(ST_RUN_CONFIG);
    snprintf(path, sizeof path, "%s/env", dir);
    char **env = read_nul_list(path, &envc, &missing);
    if (!env && !missing) end_vm(ST_RUN_CONFIG);
    for (uint32_t i = 0; i < envc; i++)
        if (!strchr(env[i], '=') || env[i][0] == '=') {
            fprintf(stderr, "starling-agent: %s: entry %u is not K=V\n", path, i);
            end_vm(ST_RUN_CONFIG);
        }
    int rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0) { fprintf(stderr, "starling-agent: %s: %s\n", root, strerror(errno)); end_vm(ST_RUN_PREPARE); }
    const unsigned long nse = MS_NOSUID | MS_NODEV | MS_NOEXEC;
    if (ensure_mount(root, rootfd, "proc", "proc", nse, NULL) ||
        ensure_mount(root, rootfd, "sys", "sysfs", nse, NULL) ||
        ensure_mount(root, rootfd, "dev", "devtmpfs", MS_NOSUID, "mode=0755") ||
        ensure_mount(root, rootfd, "tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") ||
        ensure_mount(root, rootfd, "run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"))
        end_vm(ST_RUN_PREPARE);
    /* Terminals and shared memory: wanted, not needed. */
    ensure_mount(root, rootfd, "dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666");
    ensure_mount(root, rootfd, "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    const char *console = getenv("STARLING_AGENT_CONSOLE");
    if (!console || !*console) console = "/dev/console";
    pid_t pid = fork();
    if (pid < 0) { perror("starling-agent: fork"); end_vm(ST_RUN_PREPARE); }
    if (pid == 0) {
        reset_signals();
        setsid();
        int fd = open(console, O_RDWR);
        if (fd >= 0) {
            if (ioctl(fd, TIOCSCTTY, 1) < 0 && !test_mode())
                fprintf(stderr, "starling-agent: %s as the controlling terminal: %s\n", console, strerror(errno));
            dup2(fd, 0); dup2(fd, 1); dup2(fd, 2);
            if (fd > 2) close(fd);
        } else {
            fprintf(stderr, "starling-agent: %s: %s\n", console, strerror(errno));
        }
        if (enter_root(rootfd) < 0) {
            fprintf(stderr, "starling-agent: entering %s: %s\n", root, strerror(errno));
            _exit(126);
        }
        set_env(env, envc, "vt220");
        execvp(argv[0], argv);
        char msg[512];
        int status = exec_failure(errno, argv[0], msg, sizeof msg);
        fprintf(stderr, "starling-agent: %s\n", msg);
        _exit(status);
    }
    /* Where `serve` finds the command's process group for "stop". */
    mkdir(state_dir(), 0700);
    snprintf(path, sizeof path, "%s/run.pid", state_dir());
    FILE *f = fopen(path, "w");
    if (f) { fprintf(f, "%d\n", (int)pid); fclose(f); }
    int st = 0;
    for (;;) {
        /* As PID 1, every orphan is ours to reap. */
        pid_t w = waitpid(-1, &st, 0);
        if (w == pid) break;
        if (w < 0 && errno == ECHILD) { st = 1 << 8; break; }
    }
    unlink(path);
    end_vm(wait_status(st));
}

/* Loads the modules LIST names from DIR; the first that fails is named on stdout (the console)
 * as the run init's own lines are. A module already loaded is not a failure. */
static int load_modules(const char *list, const char *dir) {
    FILE *f = fopen(list, "r");
    if (!f) { printf("starling-init: cannot read the module list %s: %s\n", list, strerror(errno)); return 1; }
    char name[256], path[512];
    while (fgets(name, sizeof name, f)) {
        name[strcspn(name, "\r\n")] = 0;
        if (!name[0]) continue;
        snprintf(path, sizeof path, "%s/%s.ko", dir, name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)) {
            printf("starling-init: cannot load kernel module %s: %s\n", name, strerror(errno));
            fclose(f);
            return 1;
        }
        close(fd);
    }
    fclose(f);
    return 0;
}

int main(int argc, char **argv) {
    char line[1024];
    if (argc == 4 && !strcmp(argv[1], "modules")) return load_modules(argv[2], argv[3]);
    if (argc == 2 && !strcmp(argv[1], "whoami")) {
        int s = service(); call(s, "whoami", line, sizeof line); puts(line); return 0;
    }
    if (argc == 2 && !strcmp(argv[1], "identity")) {
        int s = service(); call(s, "whoami", line, sizeof line); apply(line); puts(line); return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "fork")) {
        char req[64];
        snprintf(req, sizeof req, "fork %s", argv[2]);
        int s = service(); call(s, req, line, sizeof line);
        if (atol(line) > 0) whoami(1);
        puts(line); return 0;
    }
    if (argc == 2 && !strcmp(argv[1], "join")) {
        int s = service(); call(s, "join", line, sizeof line); puts(line); return 0;
    }
    if (argc == 2 && !strcmp(argv[1], "ready")) {
        sync();
        int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
        if (fd >= 0) { if (write(fd, "3", 1) < 0) perror("starling-agent: drop_caches"); close(fd); }
        int s = service(); call(s, "ready", line, sizeof line); whoami(1); puts(line); return 0;
    }
    if (argc == 2 && !strcmp(argv[1], "watch")) {
        for (;;) {
            int s = service();
            call(s, "watch", line, sizeof line);
            close(s);
            apply(line);
            puts(line);
            fflush(stdout);
        }
    }
    if ((argc == 3 || argc == 4) && !strcmp(argv[1], "net")) return apply_net(argv[2], argc == 4 ? argv[3] : NULL) ? 1 : 0;
    if (argc == 3 && !strcmp(argv[1], "answer")) return answer(atoi(argv[2]));
    if (argc == 3 && !strcmp(argv[1], "serve")) return serve(argv[2]);
    if ((argc == 3 || argc == 4) && !strcmp(argv[1], "run")) run(argv[2], argc == 4 ? argv[3] : "/scratch/starling");
    if (argc == 3 && !strcmp(argv[1], "exit")) {
        char *end;
        long n = strtol(argv[2], &end, 10);
        if (*end || n < 0 || n > 255) { fprintf(stderr, "starling-agent: exit %s: a status 0..255\n", argv[2]); return 2; }
        end_vm((int)n);
    }
    fprintf(stderr, "usage: starling-agent whoami|identity|watch|net IP [MAC]|fork N|join|ready|answer PORT|serve ROOT|run ROOT [DIR]|exit N|modules LIST DIR\n");
    return 2;
}
