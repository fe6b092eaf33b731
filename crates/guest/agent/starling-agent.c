/* starling-agent: the guest side of the monitor's vsock service (host CID 2, port 0x53540000).
 * Static C so that it runs in a busybox initramfs. See docs/api/vmm.md for the protocol.
 *
 *   starling-agent whoami        print this VM's identity line
 *   starling-agent identity      take the identity on: reseed the kernel RNG with the fresh
 *                                seed, set the hostname and the clock; print the line
 *   starling-agent fork N        fork the VM into N clones; prints 0 here and K in clone K,
 *                                each having taken its identity on
 *   starling-agent join          wait for the clones; print "exit C1 C2 ..."
 *   starling-agent ready         drop the page cache (what a pool's snapshot need not carry),
 *                                say the VM is booted and idle (a pool docks it here); print
 *                                the configuration it is activated with ("activate K=V -- ARGS")
 *   starling-agent answer PORT   serve vsock PORT: each connection gets "id=K random=HEX", K
 *                                this VM's clone id and HEX 16 bytes of /dev/urandom read after
 *                                the identity was taken on (clones reseed first)
 * Exit status: 0, or 1 with a message on stderr. */
#include <linux/random.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <fcntl.h>
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

int main(int argc, char **argv) {
    char line[1024];
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
    if (argc == 3 && !strcmp(argv[1], "answer")) return answer(atoi(argv[2]));
    fprintf(stderr, "usage: starling-agent whoami|identity|fork N|join|ready|answer PORT\n");
    return 2;
}
