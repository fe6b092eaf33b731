/* Starling's tier-1 test guest: boots through the same path as Linux (PVH or 64-bit ELF),
 * prints to the 8250 serial port, drives the virtio-mmio devices the VMM announces (block,
 * rng, vsock, fs) by polling, feeds them malformed requests, and ends the VM the way its command
 * line says. Every result is a line on the serial console that the test parses. */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 mr(u64 a) { return *(volatile u32 *)a; }
static inline void mw(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

static void putc(char c) {
    while (!(inb(0x3f8 + 5) & 0x20)) {}
    outb(0x3f8, c);
}
static void puts(const char *s) { while (*s) putc(*s++); }
static void puthex(u64 v, int digits) {
    for (int i = digits - 1; i >= 0; i--) putc("0123456789abcdef"[(v >> (i * 4)) & 15]);
}
static void putdec(u64 v) {
    char b[24]; int n = 0;
    do { b[n++] = '0' + v % 10; v /= 10; } while (v);
    while (n) putc(b[--n]);
}
static void memset_(void *p, int c, u64 n) { u8 *d = p; while (n--) *d++ = c; }
static void memcpy_(void *dst, const void *src, u64 n) { u8 *d = dst; const u8 *s = src; while (n--) *d++ = *s++; }
static int streq_prefix(const char *s, const char *p) { while (*p) if (*s++ != *p++) return 0; return 1; }
static int has_word(const char *cmd, const char *w) {
    for (const char *s = cmd; *s; s++)
        if ((s == cmd || s[-1] == ' ') && streq_prefix(s, w)) {
            u64 n = 0; while (w[n]) n++;
            if (s[n] == 0 || s[n] == ' ') return 1;
        }
    return 0;
}

/* virtio-mmio registers */
#define MAGIC 0x000
#define VERSION 0x004
#define DEVICE_ID 0x008
#define DEV_FEATURES 0x010
#define DEV_FEATURES_SEL 0x014
#define DRV_FEATURES 0x020
#define DRV_FEATURES_SEL 0x024
#define QUEUE_SEL 0x030
#define QUEUE_NUM_MAX 0x034
#define QUEUE_NUM 0x038
#define QUEUE_READY 0x044
#define QUEUE_NOTIFY 0x050
#define INT_STATUS 0x060
#define INT_ACK 0x064
#define STATUS 0x070
#define QDESC_LO 0x080
#define QDESC_HI 0x084
#define QAVAIL_LO 0x090
#define QAVAIL_HI 0x094
#define QUSED_LO 0x0a0
#define QUSED_HI 0x0a4
#define CONFIG 0x100

#define QSIZE 16
struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct vq {
    struct desc d[QSIZE];                       /* 256 bytes */
    u16 avail_flags, avail_idx, avail_ring[QSIZE], used_event;
    u8 pad[4096 - 256 - 6 - 2 * QSIZE];
    u16 used_flags, used_idx;
    struct { u32 id, len; } used_ring[QSIZE];
    u16 last_used;
    u16 base;
    u16 queue;
};
#define F_NEXT 1
#define F_WRITE 2

static struct vq queues[6] __attribute__((aligned(4096)));
static int nqueues;
static u8 buffers[8][4096] __attribute__((aligned(4096)));

static void vq_init(u64 base, u16 index, struct vq *q) {
    memset_(q, 0, sizeof *q);
    q->base = 0; q->queue = index;
    mw(base + QUEUE_SEL, index);
    mw(base + QUEUE_NUM, QSIZE);
    mw(base + QDESC_LO, (u32)(u64)q->d); mw(base + QDESC_HI, 0);
    mw(base + QAVAIL_LO, (u32)(u64)&q->avail_flags); mw(base + QAVAIL_HI, 0);
    mw(base + QUSED_LO, (u32)(u64)&q->used_flags); mw(base + QUSED_HI, 0);
    mw(base + QUEUE_READY, 1);
}

/* Negotiates VERSION_1 only and sets up `n` queues; returns 0 on success. */
static int dev_init(u64 base, int n, struct vq **out, u32 *features_lo) {
    mw(base + STATUS, 0);
    mw(base + STATUS, 1);
    mw(base + STATUS, 1 | 2);
    mw(base + DEV_FEATURES_SEL, 0);
    *features_lo = mr(base + DEV_FEATURES);
    mw(base + DEV_FEATURES_SEL, 1);
    u32 hi = mr(base + DEV_FEATURES);
    mw(base + DRV_FEATURES_SEL, 0); mw(base + DRV_FEATURES, 0);
    mw(base + DRV_FEATURES_SEL, 1); mw(base + DRV_FEATURES, hi & 1);
    mw(base + STATUS, 1 | 2 | 8);
    if (!(mr(base + STATUS) & 8)) return -1;
    for (int i = 0; i < n; i++) { out[i] = &queues[nqueues++]; vq_init(base, i, out[i]); }
    mw(base + STATUS, 1 | 2 | 8 | 4);
    return 0;
}

/* Posts the chain starting at descriptor `head` and notifies. */
static void vq_post(u64 base, struct vq *q, u16 head) {
    q->avail_ring[q->avail_idx % QSIZE] = head;
    barrier();
    q->avail_idx++;
    barrier();
    mw(base + QUEUE_NOTIFY, q->queue);
}

/* Waits for a used entry; returns its length or -1 after `spins` polls. */
static long vq_wait(struct vq *q, long spins) {
    while (spins-- > 0) {
        barrier();
        if (*(volatile u16 *)&q->used_idx != q->last_used) {
            long len = q->used_ring[q->last_used % QSIZE].len;
            q->last_used++;
            return len;
        }
    }
    return -1;
}

static u64 find_device(u32 id) {
    for (int i = 0; i < 16; i++) {
        u64 base = 0xd0000000UL + i * 0x1000UL;
        if (mr(base + MAGIC) == 0x74726976 && mr(base + VERSION) == 2 && mr(base + DEVICE_ID) == id)
            return base;
    }
    return 0;
}

/* ---- virtio-blk ---- */
struct blk_req { u32 type, reserved; u64 sector; };

static u8 blk_io(u64 base, struct vq *q, u32 type, u64 sector, void *data, u32 len, u64 data_addr_override) {
    struct blk_req *h = (void *)buffers[0];
    u8 *status = buffers[1];
    h->type = type; h->reserved = 0; h->sector = sector;
    *status = 0xee;
    int n = 0;
    q->d[n] = (struct desc){(u64)h, 16, F_NEXT, 1}; n++;
    if (len) {
        q->d[n] = (struct desc){data_addr_override ? data_addr_override : (u64)data, len,
                                F_NEXT | (type == 0 ? F_WRITE : 0), 2};
        n++;
    }
    q->d[n] = (struct desc){(u64)status, 1, F_WRITE, 0};
    q->d[n - 1].next = n;
    vq_post(base, q, 0);
    if (vq_wait(q, 100000) < 0) return 0xff;
    return *status;
}

static void test_blk(const char *cmd) {
    u64 base = find_device(2);
    if (!base) { puts("blk: none\n"); return; }
    struct vq *q; u32 f;
    if (dev_init(base, 1, &q, &f)) { puts("blk: init failed\n"); return; }
    u64 capacity = *(volatile u64 *)(base + CONFIG);
    puts("blk: capacity "); putdec(capacity); puts(" sectors, read-only "); putdec((f >> 5) & 1); puts("\n");
    u8 *data = buffers[2];
    memset_(data, 0, 512);
    u8 st = blk_io(base, q, 0, 0, data, 512, 0);
    puts("blk: read status "); putdec(st); puts(" data \"");
    for (int i = 0; i < 48 && data[i] >= 32 && data[i] < 127; i++) putc(data[i]);
    puts("\"\n");
    if (has_word(cmd, "blkwrite")) {
        memset_(data, 0, 512);
        memcpy_(data, "written by the starling test guest", 34);
        st = blk_io(base, q, 1, 1, data, 512, 0);
        puts("blk: write status "); putdec(st); puts("\n");
        st = blk_io(base, q, 4, 0, 0, 0, 0);
        puts("blk: flush status "); putdec(st); puts("\n");
    }
    /* Malformed requests: each must fail, none may take the VMM down. */
    st = blk_io(base, q, 0, 0, data, 512, 0xfffffff000UL);
    puts("blk: out-of-range buffer status "); putdec(st); puts("\n");
    st = blk_io(base, q, 0, capacity, data, 512, 0);
    puts("blk: past-the-end status "); putdec(st); puts("\n");
    st = blk_io(base, q, 0, 0, data, 0x7ffffe00, 0);
    puts("blk: oversize status "); putdec(st); puts("\n");
    /* A descriptor loop: 0 -> 1 -> 0 -> ... */
    q->d[0] = (struct desc){(u64)buffers[0], 16, F_NEXT, 1};
    q->d[1] = (struct desc){(u64)buffers[2], 512, F_NEXT | F_WRITE, 0};
    vq_post(base, q, 0);
    long r = vq_wait(q, 100000);
    puts("blk: descriptor loop "); puts(r >= 0 ? "returned" : "lost"); puts("\n");
    /* Ring corruption: the available index jumps past the queue size. */
    q->avail_idx += 100;
    barrier();
    mw(base + QUEUE_NOTIFY, 0);
    puts("blk: after ring corruption status 0x"); puthex(mr(base + STATUS), 2); puts("\n");
    /* A reset brings it back. */
    nqueues--;
    if (dev_init(base, 1, &q, &f) == 0) {
        memset_(data, 0, 512);
        st = blk_io(base, q, 0, 0, data, 512, 0);
        puts("blk: after reset read status "); putdec(st); puts("\n");
    }
}

/* ---- virtio-rng ---- */
static void test_rng(void) {
    u64 base = find_device(4);
    if (!base) { puts("rng: none\n"); return; }
    struct vq *q; u32 f;
    if (dev_init(base, 1, &q, &f)) { puts("rng: init failed\n"); return; }
    u8 *b = buffers[3];
    for (int round = 0; round < 2; round++) {
        memset_(b, 0, 16);
        q->d[0] = (struct desc){(u64)b, 16, F_WRITE, 0};
        vq_post(base, q, 0);
        long n = vq_wait(q, 100000);
        puts("rng: "); putdec(n < 0 ? 0 : n); puts(" bytes ");
        for (int i = 0; i < 16; i++) puthex(b[i], 2);
        puts("\n");
    }
}

/* ---- virtio-vsock ---- */
struct vs_hdr {
    u64 src_cid, dst_cid;
    u32 src_port, dst_port, len;
    u16 type, op;
    u32 flags, buf_alloc, fwd_cnt;
} __attribute__((packed));
enum { OP_REQUEST = 1, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST };

static struct vq *vs_rx, *vs_tx;
static u64 vs_base, vs_cid;
static u32 vs_fwd;

static void vs_post_rx(int slot) {
    vs_rx->d[slot] = (struct desc){(u64)buffers[4 + slot], 4096, F_WRITE, 0};
    vq_post(vs_base, vs_rx, slot);
}

static void vs_send(u32 sport, u32 dport, u16 op, u32 flags, const char *payload, u32 len) {
    struct vs_hdr *h = (void *)buffers[6];
    memset_(h, 0, sizeof *h);
    h->src_cid = vs_cid; h->dst_cid = 2; h->src_port = sport; h->dst_port = dport;
    h->type = 1; h->op = op; h->flags = flags; h->len = len; h->buf_alloc = 65536; h->fwd_cnt = vs_fwd;
    memcpy_(buffers[6] + sizeof *h, payload, len);
    vs_tx->d[0] = (struct desc){(u64)h, sizeof *h + len, 0, 0};
    vq_post(vs_base, vs_tx, 0);
    vq_wait(vs_tx, 100000);
}

/* Waits for a packet on rx; copies its header and returns the slot it arrived in, or -1. */
static int vs_recv(struct vs_hdr *out, long spins) {
    while (spins-- > 0) {
        barrier();
        if (*(volatile u16 *)&vs_rx->used_idx != vs_rx->last_used) {
            u32 id = vs_rx->used_ring[vs_rx->last_used % QSIZE].id;
            vs_rx->last_used++;
            memcpy_(out, buffers[4 + id], sizeof *out);
            return id;
        }
    }
    return -1;
}

static void print_payload(int slot, u32 len) {
    puts("\"");
    for (u32 i = 0; i < len && i < 200; i++) putc(buffers[4 + slot][sizeof(struct vs_hdr) + i]);
    puts("\"");
}

static void test_vsock(const char *cmd) {
    vs_base = find_device(19);
    if (!vs_base) { puts("vsock: none\n"); return; }
    struct vq *qs[3]; u32 f;
    if (dev_init(vs_base, 3, qs, &f)) { puts("vsock: init failed\n"); return; }
    vs_rx = qs[0]; vs_tx = qs[1];
    vs_cid = *(volatile u64 *)(vs_base + CONFIG);
    puts("vsock: guest cid "); putdec(vs_cid); puts("\n");
    vs_post_rx(0);
    vs_post_rx(1);
    struct vs_hdr h;
    int slot;
    /* Guest-initiated: connect to host port 5000, say ping, read the answer. */
    vs_fwd = 0;
    vs_send(1234, 5000, OP_REQUEST, 0, 0, 0);
    slot = vs_recv(&h, 3000000);
    if (slot < 0 || h.op != OP_RESPONSE) {
        puts("vsock: connect to host port 5000 failed, op "); putdec(slot < 0 ? 0 : h.op); puts("\n");
    } else {
        vs_post_rx(slot);
        vs_send(1234, 5000, OP_RW, 0, "ping from guest", 15);
        slot = vs_recv(&h, 3000000);
        while (slot >= 0 && h.op == OP_CREDIT_UPDATE) { vs_post_rx(slot); slot = vs_recv(&h, 3000000); }
        if (slot >= 0 && h.op == OP_RW) {
            puts("vsock: host said "); print_payload(slot, h.len); puts("\n");
            vs_fwd += h.len;
            vs_post_rx(slot);
        } else {
            puts("vsock: no reply from host\n");
        }
        vs_send(1234, 5000, OP_SHUTDOWN, 3, 0, 0);
    }
    /* Host-initiated: wait for a connection to guest port 6000, echo what arrives. */
    if (has_word(cmd, "vsocklisten")) {
        puts("vsock: listening on 6000\n");
        for (int tries = 0; tries < 20; tries++) {
            slot = vs_recv(&h, 3000000);
            if (slot < 0) continue;
            vs_post_rx(slot);
            if (h.op == OP_REQUEST && h.dst_port == 6000) {
                u32 peer = h.src_port;
                vs_fwd = 0; /* counts are per connection */
                vs_send(6000, peer, OP_RESPONSE, 0, 0, 0);
                slot = vs_recv(&h, 30000000);
                if (slot >= 0 && h.op == OP_RW) {
                    puts("vsock: host sent "); print_payload(slot, h.len); puts("\n");
                    vs_fwd += h.len;
                    vs_send(6000, peer, OP_RW, 0, "echo from guest", 15);
                    vs_post_rx(slot);
                }
                break;
            }
        }
    }
}

/* ---- the monitor's service (fork, join, whoami) over vsock ---- */
#define SERVICE_PORT 0x53540000u
static u32 svc_fwd;

/* Opens a connection from guest port `local` to the service; 0 on success. */
static int svc_open(u32 local) {
    struct vs_hdr h;
    vs_fwd = svc_fwd = 0;
    vs_send(local, SERVICE_PORT, OP_REQUEST, 0, 0, 0);
    int slot = vs_recv(&h, 3000000);
    if (slot < 0) return -1;
    vs_post_rx(slot);
    return h.op == OP_RESPONSE ? 0 : -1;
}

/* Sends a request line and copies the answer line (without newline) into `out`. */
static int svc_call(u32 local, const char *req, char *out, int max) {
    struct vs_hdr h;
    u32 n = 0; while (req[n]) n++;
    vs_fwd = svc_fwd;
    vs_send(local, SERVICE_PORT, OP_RW, 0, req, n);
    int got = 0;
    for (;;) {
        int slot = vs_recv(&h, 300000000);
        if (slot < 0) return -1;
        if (h.op == OP_RW) {
            u8 *p = buffers[4 + slot] + sizeof h;
            svc_fwd += h.len;
            for (u32 i = 0; i < h.len; i++) {
                if (p[i] == '\n') { out[got] = 0; vs_post_rx(slot); return got; }
                if (got < max - 1) out[got++] = p[i];
            }
        }
        vs_post_rx(slot);
        if (h.op == OP_RST) return -1;
    }
}

static void svc_close(u32 local) {
    vs_fwd = svc_fwd;
    vs_send(local, SERVICE_PORT, OP_SHUTDOWN, 3, 0, 0);
}

static int vsock_setup(void) {
    vs_base = find_device(19);
    if (!vs_base) return -1;
    struct vq *qs[3]; u32 f;
    if (dev_init(vs_base, 3, qs, &f)) return -1;
    vs_rx = qs[0]; vs_tx = qs[1];
    vs_cid = *(volatile u64 *)(vs_base + CONFIG);
    vs_post_rx(0);
    vs_post_rx(1);
    return 0;
}

static u64 parse_dec(const char *s) { u64 v = 0; while (*s >= '0' && *s <= '9') v = v * 10 + (*s++ - '0'); return v; }

/* Memory the snapshot and fork tests look at: a pattern each VM fills with its own value. */
#define PATTERN_WORDS 2048
static volatile u64 pattern[PATTERN_WORDS];
static volatile u64 counter;

static void pattern_fill(u64 v) { for (int i = 0; i < PATTERN_WORDS; i++) pattern[i] = v ^ (u64)i; }
static int pattern_is(u64 v) { for (int i = 0; i < PATTERN_WORDS; i++) if (pattern[i] != (v ^ (u64)i)) return 0; return 1; }

/* counter: count forever; each tick asks who it is, checks that the pattern still holds the
 * value it wrote last tick, and writes its own id. */
static volatile u64 ballast[65536]; /* 512 KiB written once, never read again */

static void counter_mode(const char *cmd) {
    if (has_word(cmd, "ballast")) for (int i = 0; i < 65536; i++) ballast[i] = 0x5354524c00000000UL | i;
    int vs = vsock_setup() == 0;
    int reread = has_word(cmd, "reread");
    u64 id = 0;
    char line[200];
    pattern_fill(0);
    for (u32 port = 2000;; port++) {
        counter++;
        int ok = pattern_is(id);
        if (reread) { u64 sum = 0; for (int i = 0; i < 65536; i += 512) sum += ballast[i]; if (!sum) ok = 0; }
        if (vs && svc_open(port) == 0) {
            if (svc_call(port, "whoami\n", line, sizeof line) > 3) id = parse_dec(line + 3);
            svc_close(port);
        }
        pattern_fill(id);
        puts("tick "); putdec(counter); puts(" id "); putdec(id);
        puts(ok ? " pattern ok\n" : " pattern clobbered\n");
        for (volatile int i = 0; i < 2000; i++) {}
    }
}

/* fork=N: count to 1000, fork N clones through the service, and in each (parent 0, clones
 * 1..N) write the pattern, check it after the others had time to write theirs, report; the
 * clones exit with 10+K, the parent joins them and prints their exit statuses. */
static void fork_mode(u64 n) {
    char line[200];
    if (vsock_setup() || svc_open(3000)) { puts("fork: no service\n"); return; }
    for (int i = 0; i < 1000; i++) counter++;
    pattern_fill(0xabcdef);
    char req[16] = "fork ";
    req[5] = '0' + (n % 10); req[6] = '\n'; req[7] = 0;
    if (n >= 10) { req[5] = '0' + n / 10; req[6] = '0' + n % 10; req[7] = '\n'; req[8] = 0; }
    if (svc_call(3000, req, line, sizeof line) < 0) { puts("fork: no answer\n"); return; }
    if (line[0] < '0' || line[0] > '9') { puts("fork: "); puts(line); puts("\n"); return; }
    u64 me = parse_dec(line);
    int inherited = pattern_is(0xabcdef);
    pattern_fill(me);
    for (volatile int i = 0; i < 20000; i++) {}
    counter++;
    puts("fork: I am "); putdec(me); puts(" counter "); putdec(counter);
    puts(inherited ? " inherited ok" : " inherited BAD");
    puts(pattern_is(me) ? " pattern ok\n" : " pattern clobbered\n");
    if (svc_call(3000, "whoami\n", line, sizeof line) > 0) { puts("fork: "); putdec(me); puts(" whoami "); puts(line); puts("\n"); }
    if (me) outb(0x501, 10 + me);
    if (svc_call(3000, "join\n", line, sizeof line) < 0) { puts("join: no answer\n"); return; }
    puts("join: "); puts(line); puts("\n");
}

/* forkchain: each generation forks one clone and waits for it; the clone, knowing its
 * generation from the memory it inherited, forks the next, until the service refuses (the
 * family's fork budget is spent). */
static volatile u64 generation;
static void forkchain_mode(void) {
    char line[200];
    if (vsock_setup() || svc_open(3000)) { puts("chain: no service\n"); return; }
    for (;;) {
        /* A monitor that let the chain go on (a budget per clone) fails the test, not hangs it. */
        if (generation >= 6) { puts("chain: generation 6 was never refused\n"); outb(0x501, 60); return; }
        if (svc_call(3000, "fork 1\n", line, sizeof line) < 0) { puts("chain: no answer\n"); return; }
        if (line[0] < '0' || line[0] > '9') {
            puts("chain: generation "); putdec(generation); puts(" refused: "); puts(line); puts("\n");
            outb(0x501, 40 + generation);
            return;
        }
        if (parse_dec(line) == 0) {
            /* Ends after its clone does, so the whole chain has ended when the first does. */
            puts("chain: generation "); putdec(generation); puts(" forked\n");
            if (svc_call(3000, "join\n", line, sizeof line) < 0) { puts("chain: no join\n"); return; }
            puts("chain: generation "); putdec(generation); puts(" joined: "); puts(line); puts("\n");
            outb(0x501, 20 + generation);
            return;
        }
        generation++;
        puts("chain: generation "); putdec(generation); puts(" started\n");
    }
}

/* substrate disk: the pool's image as /dev/vda (ext4). Before `ready` the block device is set up
 * as a booting guest would; after activation the guest reads the ext4 superblock (bytes 1024..
 * 2047: sectors 2-3) and prints its magic and UUID, then reads sector 0 (unused by ext4), writes
 * its own line there and reads it back: each activated VM must find the image's sector 0, not
 * what an earlier VM of the pool wrote. */
static u64 sub_blk;
static struct vq *sub_blkq;

static void substrate_disk_setup(void) {
    u32 f;
    sub_blk = find_device(2);
    if (!sub_blk || dev_init(sub_blk, 1, &sub_blkq, &f)) { puts("substrate: disk: none\n"); sub_blk = 0; }
}

static void print_sector_text(const char *what, const u8 *d) {
    puts("substrate: disk: "); puts(what); puts(" \"");
    for (int i = 0; i < 64 && d[i] >= 32 && d[i] < 127; i++) putc(d[i]);
    puts("\"\n");
}

static void substrate_disk_check(u64 activation_n) {
    if (!sub_blk) return;
    u8 *d = buffers[2];
    memset_(d, 0, 1024);
    u8 st = blk_io(sub_blk, sub_blkq, 0, 2, d, 1024, 0);
    puts("substrate: disk: superblock status "); putdec(st);
    puts(" magic "); puthex(d[56] | d[57] << 8, 4);
    puts(" uuid ");
    for (int i = 104; i < 120; i++) puthex(d[i], 2);
    puts("\n");
    memset_(d, 0, 512);
    st = blk_io(sub_blk, sub_blkq, 0, 0, d, 512, 0);
    print_sector_text("sector 0 before", d);
    memset_(d, 0, 512);
    memcpy_(d, "written by activation N=", 24);
    d[24] = '0' + activation_n % 10;
    st = blk_io(sub_blk, sub_blkq, 1, 0, d, 512, 0);
    puts("substrate: disk: write status "); putdec(st); puts("\n");
    memset_(d, 0, 512);
    blk_io(sub_blk, sub_blkq, 0, 0, d, 512, 0);
    print_sector_text("sector 0 after", d);
}

/* substrate: boot, set state, tell the monitor it is ready and wait for the configuration a
 * pool activation hands over; print it and exit with its code=N (if any). */
static void net_mode(const char *cmd);

static void substrate_mode(const char *cmd) {
    char line[300], act[300];
    if (vsock_setup() || svc_open(4000)) { puts("substrate: no service\n"); return; }
    if (has_word(cmd, "disk")) substrate_disk_setup();
    for (int i = 0; i < 500; i++) counter++;
    pattern_fill(0x5ab);
    puts("substrate: ready\n");
    if (svc_call(4000, "ready\n", act, sizeof act) < 0) { puts("substrate: no answer\n"); return; }
    counter++;
    puts("substrate: "); puts(act); puts("\n");
    puts("substrate: counter "); putdec(counter); puts(pattern_is(0x5ab) ? " pattern ok\n" : " pattern BAD\n");
    u64 n = 0;
    for (const char *s = act; *s; s++)
        if (s > act && s[-1] == ' ' && streq_prefix(s, "N=")) n = parse_dec(s + 2);
    substrate_disk_check(n);
    if (svc_call(4000, "whoami\n", line, sizeof line) > 0) { puts("substrate: whoami "); puts(line); puts("\n"); }
    svc_close(4000);
    for (const char *s = act; *s; s++)
        if (s > act && s[-1] == ' ' && streq_prefix(s, "code=")) outb(0x501, parse_dec(s + 5));
    /* substrate net: serve on the network at the address the activation gave (its whoami
     * line's ip=, not the first boot's), until told to quit. */
    if (has_word(cmd, "net")) {
        net_mode(line);
        outb(0x501, 0);
    }
}

/* ---- virtio-fs: FUSE messages as Linux sends them (include/uapi/linux/fuse.h, 7.31+) ---- */
struct fuse_in_header { u32 len, opcode; u64 unique, nodeid; u32 uid, gid, pid; u16 total_extlen, padding; };
struct fuse_out_header { u32 len; int error; u64 unique; };
struct fuse_attr {
    u64 ino, size, blocks, atime, mtime, ctime;
    u32 atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags;
};
struct fuse_entry_out {
    u64 nodeid, generation, entry_valid, attr_valid;
    u32 entry_valid_nsec, attr_valid_nsec;
    struct fuse_attr attr;
};
struct fuse_attr_out { u64 attr_valid; u32 attr_valid_nsec, dummy; struct fuse_attr attr; };
struct fuse_init_in { u32 major, minor, max_readahead, flags, flags2, unused[11]; };
struct fuse_init_out {
    u32 major, minor, max_readahead, flags;
    u16 max_background, congestion_threshold;
    u32 max_write, time_gran;
    u16 max_pages, map_alignment;
    u32 flags2, unused[7];
};
struct fuse_getattr_in { u32 getattr_flags, dummy; u64 fh; };
struct fuse_open_in { u32 flags, open_flags; };
struct fuse_open_out { u64 fh; u32 open_flags, backing_id; };
struct fuse_read_in { u64 fh, offset; u32 size, read_flags; u64 lock_owner; u32 flags, padding; };
struct fuse_write_in { u64 fh, offset; u32 size, write_flags; u64 lock_owner; u32 flags, padding; };
struct fuse_release_in { u64 fh; u32 flags, release_flags; u64 lock_owner; };
struct fuse_forget_in { u64 nlookup; };
struct fuse_getxattr_in { u32 size, padding; };
struct fuse_getxattr_out { u32 size, padding; };
struct fuse_kstatfs { u64 blocks, bfree, bavail, files, ffree; u32 bsize, namelen, frsize, padding, spare[6]; };
struct fuse_mkdir_in { u32 mode, umask; };
struct fuse_create_in { u32 flags, mode, umask, open_flags; };
struct fuse_rename_in { u64 newdir; };
struct fuse_setattr_in {
    u32 valid, padding;
    u64 fh, size, lock_owner, atime, mtime, ctime;
    u32 atimensec, mtimensec, ctimensec, mode, unused4, uid, gid, unused5;
};
struct fuse_dirent { u64 ino, off; u32 namelen, type; };
_Static_assert(sizeof(struct fuse_in_header) == 40, "fuse_in_header");
_Static_assert(sizeof(struct fuse_entry_out) == 128, "fuse_entry_out");
_Static_assert(sizeof(struct fuse_attr_out) == 104, "fuse_attr_out");
_Static_assert(sizeof(struct fuse_init_in) == 64, "fuse_init_in");
_Static_assert(sizeof(struct fuse_init_out) == 64, "fuse_init_out");
_Static_assert(sizeof(struct fuse_read_in) == 40, "fuse_read_in");
_Static_assert(sizeof(struct fuse_kstatfs) == 80, "fuse_kstatfs");
_Static_assert(sizeof(struct fuse_setattr_in) == 88, "fuse_setattr_in");

enum {
    FUSE_LOOKUP = 1, FUSE_FORGET = 2, FUSE_GETATTR = 3, FUSE_SETATTR = 4, FUSE_READLINK = 5,
    FUSE_SYMLINK = 6, FUSE_MKDIR = 9, FUSE_UNLINK = 10, FUSE_RMDIR = 11, FUSE_RENAME = 12,
    FUSE_OPEN = 14, FUSE_READ = 15, FUSE_WRITE = 16, FUSE_STATFS = 17, FUSE_RELEASE = 18,
    FUSE_GETXATTR = 22, FUSE_LISTXATTR = 23, FUSE_REMOVEXATTR = 24, FUSE_INIT = 26,
    FUSE_OPENDIR = 27, FUSE_RELEASEDIR = 29, FUSE_CREATE = 35, FUSE_READDIRPLUS = 44,
};
#define FUSE_GETATTR_FH 1u
#define FATTR_SIZE (1u << 3)
/* What the guest offers at INIT (a Linux 6.x kernel offers these and more). */
#define FS_INIT_FLAGS (0x1u | 0x10u | 0x2000u | 0x4000u | 0x40000u | 0x400000u | 0x800000u | 0x40000000u)

static u64 fs_base;
static struct vq *fs_hp, *fs_rq;
static u64 fs_unique;
static u8 fs_in[8192] __attribute__((aligned(64)));
static u8 fs_out[4096] __attribute__((aligned(64)));
static u8 fs_data[131072] __attribute__((aligned(4096)));
#define FS_SPINS 20000000L
#define FS_CHUNK 131072u

static void putoct(u64 v) {
    char b[24]; int n = 0;
    do { b[n++] = '0' + (v & 7); v >>= 3; } while (v);
    putc('0');
    while (n) putc(b[--n]);
}

/* The content checksum the test computes too: FNV-1a (64-bit) over little-endian 64-bit
 * words, the last one zero-padded (word-wise: byte-wise costs too much at ring-0 speed). */
struct hash { u64 h, w; u32 n; };
static void hash_init(struct hash *s) { s->h = 0xcbf29ce484222325UL; s->w = 0; s->n = 0; }
static void hash_mix(struct hash *s, u64 w) { s->h = (s->h ^ w) * 0x100000001b3UL; }
static void hash_bytes(struct hash *s, const u8 *p, u64 len) {
    while (len && s->n) {
        s->w |= (u64)*p++ << (8 * s->n); len--;
        if (++s->n == 8) { hash_mix(s, s->w); s->w = 0; s->n = 0; }
    }
    while (len >= 8) { u64 w; __builtin_memcpy(&w, p, 8); hash_mix(s, w); p += 8; len -= 8; }
    while (len) { s->w |= (u64)*p++ << (8 * s->n); s->n++; len--; }
}
static u64 hash_end(struct hash *s) { if (s->n) hash_mix(s, s->w); return s->h; }

/* A request in fs_in: the header, then what fs_put adds. */
static u32 fs_begin(u32 opcode, u64 nodeid) {
    struct fuse_in_header *h = (void *)fs_in;
    memset_(h, 0, sizeof *h);
    h->opcode = opcode; h->nodeid = nodeid; h->unique = ++fs_unique;
    return sizeof *h;
}
static u32 fs_put(u32 at, const void *p, u32 n) { memcpy_(fs_in + at, p, n); return at + n; }
static u32 fs_put_str(u32 at, const char *s) { u32 n = 0; while (s[n]) n++; return fs_put(at, s, n + 1); }

/* Posts fs_in[0..len) (its header's len set to `len`) with `outlen` writable bytes of fs_out and
 * `datalen` of `data` after them; returns the used length, -1 if the chain never came back. */
static long fs_post(struct vq *q, u32 len, u32 outlen, u8 *data, u32 datalen) {
    ((struct fuse_in_header *)fs_in)->len = len;
    int n = 0;
    q->d[0] = (struct desc){(u64)fs_in, len, 0, 0};
    if (outlen) { q->d[0].flags = F_NEXT; q->d[0].next = 1; q->d[1] = (struct desc){(u64)fs_out, outlen, F_WRITE, 0}; n = 1; }
    if (datalen) { q->d[n].flags |= F_NEXT; q->d[n].next = n + 1; q->d[n + 1] = (struct desc){(u64)data, datalen, F_WRITE, 0}; }
    vq_post(fs_base, q, 0);
    return 0;
}
static long fs_send(struct vq *q, u32 len, u32 outlen, u8 *data, u32 datalen) {
    fs_post(q, len, outlen, data, datalen);
    return vq_wait(q, FS_SPINS);
}

/* The reply's error (0 or a positive errno); anything that is not a reply to the request just
 * sent is printed raw and answered with -1. */
static int fs_reply(const char *what, long used) {
    struct fuse_out_header *o = (void *)fs_out;
    if (used >= 16 && o->unique == fs_unique && o->len == (u64)used && o->error <= 0) return -o->error;
    puts("fs "); puts(what); puts(" unexpected used=");
    if (used < 0) puts("timeout"); else putdec(used);
    puts(" len="); putdec(o->len); puts(" error="); if (o->error < 0) { putc('-'); putdec(-o->error); } else putdec(o->error);
    puts(" unique="); putdec(o->unique); puts(" want="); putdec(fs_unique); puts("\n");
    return -1;
}
static void fs_errno(const char *what, const char *path, int err) {
    puts("fs "); puts(what); if (path) { puts(" "); puts(path); }
    puts(" errno="); if (err < 0) puts("?"); else putdec(err); puts("\n");
}
static void fs_attr(const struct fuse_attr *a) {
    puts(" ino="); putdec(a->ino); puts(" mode="); putoct(a->mode); puts(" size="); putdec(a->size);
    puts(" nlink="); putdec(a->nlink);
}

static int fs_setup(const char *cmd) {
    fs_base = find_device(26);
    if (!fs_base) { puts("fs: none\n"); return -1; }
    struct vq *qs[2]; u32 f;
    if (dev_init(fs_base, 2, qs, &f)) { puts("fs: init failed\n"); return -1; }
    fs_hp = qs[0]; fs_rq = qs[1];
    puts("fs: tag ");
    for (int i = 0; i < 36; i++) { u8 c = *(volatile u8 *)(fs_base + CONFIG + i); if (!c) break; putc(c); }
    puts(" queues "); putdec(mr(fs_base + CONFIG + 36)); puts("\n");
    struct fuse_init_in in = {7, 38, 131072, FS_INIT_FLAGS, 0, {0}};
    u32 at = fs_put(fs_begin(FUSE_INIT, 0), &in, sizeof in);
    long r = fs_send(fs_rq, at, 16 + sizeof(struct fuse_init_out), 0, 0);
    int err = fs_reply("init", r);
    if (err) { fs_errno("init", 0, err); return -1; }
    struct fuse_init_out *o = (void *)(fs_out + 16);
    puts("fs init major="); putdec(o->major); puts(" minor="); putdec(o->minor);
    puts(" flags=0x"); puthex(o->flags, 8); puts(" max_write="); putdec(o->max_write);
    puts(" max_pages="); putdec(o->max_pages); puts(" used="); putdec(r); puts("\n");
    (void)cmd;
    return 0;
}

/* Looks `path` up a component at a time from the root; 0 and the last entry, or the errno. */
static int fs_lookup(const char *path, struct fuse_entry_out *e) {
    u64 node = 1;
    for (const char *p = path; *p;) {
        if (*p == '/') { p++; continue; }
        char name[64]; u32 n = 0;
        while (p[n] && p[n] != '/' && n < 63) { name[n] = p[n]; n++; }
        name[n] = 0; p += n;
        u32 at = fs_put_str(fs_begin(FUSE_LOOKUP, node), name);
        int err = fs_reply("lookup", fs_send(fs_rq, at, 16 + sizeof *e, 0, 0));
        if (err) return err;
        memcpy_(e, fs_out + 16, sizeof *e);
        node = e->nodeid;
    }
    return 0;
}
static u64 fs_lookup_print(const char *what, const char *path) {
    struct fuse_entry_out e;
    int err = fs_lookup(path, &e);
    if (err) { fs_errno(what, path, err); return 0; }
    puts("fs "); puts(what); puts(" "); puts(path); fs_attr(&e.attr);
    puts(e.nodeid == e.attr.ino ? "\n" : " nodeid-differs\n");
    return e.nodeid;
}

static int fs_getattr(u64 node, u64 fh, int with_fh, struct fuse_attr *a) {
    struct fuse_getattr_in in = {with_fh ? FUSE_GETATTR_FH : 0, 0, fh};
    u32 at = fs_put(fs_begin(FUSE_GETATTR, node), &in, sizeof in);
    int err = fs_reply("getattr", fs_send(fs_rq, at, 16 + sizeof(struct fuse_attr_out), 0, 0));
    if (!err) memcpy_(a, &((struct fuse_attr_out *)(fs_out + 16))->attr, sizeof *a);
    return err;
}

/* OPEN with `flags`: 0 and the handle, or the errno. */
static int fs_open(u64 node, u32 flags, u64 *fh) {
    struct fuse_open_in in = {flags, 0};
    u32 at = fs_put(fs_begin(FUSE_OPEN, node), &in, sizeof in);
    int err = fs_reply("open", fs_send(fs_rq, at, 16 + sizeof(struct fuse_open_out), 0, 0));
    if (!err) *fh = ((struct fuse_open_out *)(fs_out + 16))->fh;
    return err;
}

static int fs_release(u64 node, u64 fh) {
    struct fuse_release_in in = {fh, 0, 0, 0};
    u32 at = fs_put(fs_begin(FUSE_RELEASE, node), &in, sizeof in);
    return fs_reply("release", fs_send(fs_rq, at, 16, 0, 0));
}

static u32 fs_read_req(u64 node, u64 fh, u64 off, u32 size) {
    struct fuse_read_in in = {fh, off, size, 0, 0, 0, 0};
    return fs_put(fs_begin(FUSE_READ, node), &in, sizeof in);
}

/* Reads [off, off + len) (to the end of the file if shorter) in requests of FS_CHUNK bytes;
 * the bytes read, or minus the errno. */
static long fs_read(u64 node, u64 fh, u64 off, u64 len, struct hash *h, u32 *requests) {
    u64 got = 0;
    *requests = 0;
    while (got < len) {
        u32 size = len - got < FS_CHUNK ? (u32)(len - got) : FS_CHUNK;
        u32 at = fs_read_req(node, fh, off + got, size);
        long r = fs_send(fs_rq, at, 16, fs_data, size);
        int err = fs_reply("read", r);
        if (err) return -(long)(err < 0 ? 1000 : err);
        (*requests)++;
        u64 n = (u64)r - 16;
        if (n > size) return -1001;
        hash_bytes(h, fs_data, n);
        got += n;
        if (n < size) break;
    }
    return got;
}
static void fs_read_print(const char *what, u64 node, u64 fh, u64 off, u64 len) {
    struct hash h; u32 reqs; hash_init(&h);
    long n = fs_read(node, fh, off, len, &h, &reqs);
    puts("fs "); puts(what);
    if (n < 0) { puts(" errno="); putdec(-n); puts("\n"); return; }
    puts(" len="); putdec(n); puts(" sum="); puthex(hash_end(&h), 16);
    puts(" requests="); putdec(reqs); puts("\n");
}

static void fs_readdirplus(const char *path, u64 node) {
    struct fuse_open_in oin = {0, 0};
    u32 at = fs_put(fs_begin(FUSE_OPENDIR, node), &oin, sizeof oin);
    int err = fs_reply("opendir", fs_send(fs_rq, at, 16 + sizeof(struct fuse_open_out), 0, 0));
    if (err) { fs_errno("opendir", path, err); return; }
    u64 fh = ((struct fuse_open_out *)(fs_out + 16))->fh;
    u64 off = 0; u32 entries = 0, requests = 0;
    for (;;) {
        struct fuse_read_in in = {fh, off, 4096, 0, 0, 0, 0};
        at = fs_put(fs_begin(FUSE_READDIRPLUS, node), &in, sizeof in);
        long r = fs_send(fs_rq, at, 16, fs_data, 4096);
        err = fs_reply("readdirplus", r);
        if (err) { fs_errno("readdirplus", path, err); return; }
        requests++;
        u32 n = r - 16, p = 0;
        if (!n) break;
        while (p + sizeof(struct fuse_entry_out) + sizeof(struct fuse_dirent) <= n) {
            struct fuse_entry_out *e = (void *)(fs_data + p);
            struct fuse_dirent *d = (void *)(fs_data + p + sizeof *e);
            char *name = (char *)d + sizeof *d;
            puts("fs dirent "); puts(path); puts(" name=");
            for (u32 i = 0; i < d->namelen && i < 64; i++) putc(name[i]);
            puts(" type="); putdec(d->type); fs_attr(&e->attr); puts("\n");
            entries++; off = d->off;
            p += (sizeof *e + sizeof *d + d->namelen + 7) & ~7u;
        }
        /* A directory of a few entries fits in one request; stop a server that never ends. */
        if (requests > 8) break;
    }
    puts("fs readdirplus "); puts(path); puts(" entries="); putdec(entries); puts(" requests="); putdec(requests); puts("\n");
    at = fs_put(fs_begin(FUSE_RELEASEDIR, node), &(struct fuse_release_in){fh, 0, 0, 0}, sizeof(struct fuse_release_in));
    fs_reply("releasedir", fs_send(fs_rq, at, 16, 0, 0));
}

static void fs_print_bytes(const u8 *p, u32 n, char nul_as) {
    for (u32 i = 0; i < n && i < 200; i++) putc(p[i] ? (p[i] >= 32 && p[i] < 127 ? p[i] : '?') : nul_as);
}

static void fs_xattrs(const char *path, u64 node) {
    struct fuse_getxattr_in in = {0, 0};
    /* The size probe, then the value, a missing name, and a buffer too small. */
    u32 at = fs_put_str(fs_put(fs_begin(FUSE_GETXATTR, node), &in, sizeof in), "user.x");
    int err = fs_reply("getxattr", fs_send(fs_rq, at, 16 + sizeof(struct fuse_getxattr_out), 0, 0));
    if (err) fs_errno("getxattr-size", path, err);
    else { puts("fs getxattr-size "); puts(path); puts(" user.x size="); putdec(((struct fuse_getxattr_out *)(fs_out + 16))->size); puts("\n"); }
    in.size = 256;
    at = fs_put_str(fs_put(fs_begin(FUSE_GETXATTR, node), &in, sizeof in), "user.x");
    long r = fs_send(fs_rq, at, 16 + 256, 0, 0);
    err = fs_reply("getxattr", r);
    if (err) fs_errno("getxattr", path, err);
    else { puts("fs getxattr "); puts(path); puts(" user.x value="); fs_print_bytes(fs_out + 16, r - 16, '.'); puts("\n"); }
    at = fs_put_str(fs_put(fs_begin(FUSE_GETXATTR, node), &in, sizeof in), "user.none");
    fs_errno("getxattr-missing", path, fs_reply("getxattr", fs_send(fs_rq, at, 16 + 256, 0, 0)));
    in.size = 1;
    at = fs_put_str(fs_put(fs_begin(FUSE_GETXATTR, node), &in, sizeof in), "user.x");
    fs_errno("getxattr-small", path, fs_reply("getxattr", fs_send(fs_rq, at, 16 + 256, 0, 0)));
    in.size = 0;
    at = fs_put(fs_begin(FUSE_LISTXATTR, node), &in, sizeof in);
    err = fs_reply("listxattr", fs_send(fs_rq, at, 16 + sizeof(struct fuse_getxattr_out), 0, 0));
    if (err) fs_errno("listxattr-size", path, err);
    else { puts("fs listxattr-size "); puts(path); puts(" size="); putdec(((struct fuse_getxattr_out *)(fs_out + 16))->size); puts("\n"); }
    in.size = 256;
    at = fs_put(fs_begin(FUSE_LISTXATTR, node), &in, sizeof in);
    r = fs_send(fs_rq, at, 16 + 256, 0, 0);
    err = fs_reply("listxattr", r);
    if (err) fs_errno("listxattr", path, err);
    else { puts("fs listxattr "); puts(path); puts(" names="); fs_print_bytes(fs_out + 16, r - 16, ','); puts("\n"); }
}

/* Every write opcode must be refused with EROFS. */
static void fs_writes(u64 file, u64 dir) {
    struct fuse_mkdir_in mk = {0755, 0};
    u32 at = fs_put_str(fs_put(fs_begin(FUSE_MKDIR, 1), &mk, sizeof mk), "newdir");
    fs_errno("mkdir", 0, fs_reply("mkdir", fs_send(fs_rq, at, 16 + sizeof(struct fuse_entry_out), 0, 0)));
    struct fuse_create_in cr = {0x41 /* O_WRONLY | O_CREAT */, 0100644, 0, 0};
    at = fs_put_str(fs_put(fs_begin(FUSE_CREATE, dir), &cr, sizeof cr), "newfile");
    fs_errno("create", 0, fs_reply("create", fs_send(fs_rq, at, 16 + sizeof(struct fuse_entry_out) + sizeof(struct fuse_open_out), 0, 0)));
    struct fuse_write_in wr = {12345, 0, 5, 0, 0, 0, 0};
    at = fs_put(fs_put(fs_begin(FUSE_WRITE, file), &wr, sizeof wr), "hello", 5);
    fs_errno("write", 0, fs_reply("write", fs_send(fs_rq, at, 16 + 8, 0, 0)));
    struct fuse_setattr_in sa;
    memset_(&sa, 0, sizeof sa);
    sa.valid = FATTR_SIZE;
    at = fs_put(fs_begin(FUSE_SETATTR, file), &sa, sizeof sa);
    fs_errno("setattr", 0, fs_reply("setattr", fs_send(fs_rq, at, 16 + sizeof(struct fuse_attr_out), 0, 0)));
    at = fs_put_str(fs_begin(FUSE_UNLINK, 1), "hello.txt");
    fs_errno("unlink", 0, fs_reply("unlink", fs_send(fs_rq, at, 16, 0, 0)));
    at = fs_put_str(fs_begin(FUSE_RMDIR, 1), "dir");
    fs_errno("rmdir", 0, fs_reply("rmdir", fs_send(fs_rq, at, 16, 0, 0)));
    at = fs_put_str(fs_put_str(fs_begin(FUSE_SYMLINK, 1), "newlink"), "hello.txt");
    fs_errno("symlink", 0, fs_reply("symlink", fs_send(fs_rq, at, 16 + sizeof(struct fuse_entry_out), 0, 0)));
    struct fuse_rename_in rn = {1};
    at = fs_put_str(fs_put_str(fs_put(fs_begin(FUSE_RENAME, 1), &rn, sizeof rn), "hello.txt"), "renamed");
    fs_errno("rename", 0, fs_reply("rename", fs_send(fs_rq, at, 16, 0, 0)));
    at = fs_put_str(fs_begin(FUSE_REMOVEXATTR, file), "user.x");
    fs_errno("removexattr", 0, fs_reply("removexattr", fs_send(fs_rq, at, 16, 0, 0)));
}

/* Requests no driver sends: each must come back (answered with an error or not at all), and
 * the device must go on serving. */
static void fs_hostile(u64 file, u64 fh) {
    struct fuse_out_header *o = (void *)fs_out;
    /* The request outside guest memory (64 MiB here), then the reply buffer. */
    u32 at = fs_put_str(fs_begin(FUSE_LOOKUP, 1), "hello.txt");
    ((struct fuse_in_header *)fs_in)->len = at;
    fs_rq->d[0] = (struct desc){0xfffffff000UL, at, F_NEXT, 1};
    fs_rq->d[1] = (struct desc){(u64)fs_out, 16 + sizeof(struct fuse_entry_out), F_WRITE, 0};
    vq_post(fs_base, fs_rq, 0);
    long r = vq_wait(fs_rq, FS_SPINS);
    puts("fs hostile request-outside-memory used="); if (r < 0) puts("lost"); else putdec(r); puts("\n");
    fs_rq->d[0] = (struct desc){(u64)fs_in, at, F_NEXT, 1};
    fs_rq->d[1] = (struct desc){0x3f000000UL, 4096, F_WRITE, 0};
    vq_post(fs_base, fs_rq, 0);
    r = vq_wait(fs_rq, FS_SPINS);
    puts("fs hostile reply-outside-memory used="); if (r < 0) puts("lost"); else putdec(r); puts("\n");
    /* A header whose length runs past the chain, and one shorter than a header. */
    at = fs_put_str(fs_begin(FUSE_LOOKUP, 1), "hello.txt");
    ((struct fuse_in_header *)fs_in)->len = 4000;
    fs_rq->d[0] = (struct desc){(u64)fs_in, at, F_NEXT, 1};
    fs_rq->d[1] = (struct desc){(u64)fs_out, 16 + sizeof(struct fuse_entry_out), F_WRITE, 0};
    o->len = 0; o->error = 0;
    vq_post(fs_base, fs_rq, 0);
    r = vq_wait(fs_rq, FS_SPINS);
    puts("fs hostile len-beyond-chain used="); if (r < 0) puts("lost"); else putdec(r);
    puts(" errno="); putdec(r >= 16 ? -o->error : 0); puts("\n");
    ((struct fuse_in_header *)fs_in)->len = 8;
    o->len = 0; o->error = 0;
    vq_post(fs_base, fs_rq, 0);
    r = vq_wait(fs_rq, FS_SPINS);
    puts("fs hostile len-short used="); if (r < 0) puts("lost"); else putdec(r);
    puts(" errno="); putdec(r >= 16 ? -o->error : 0); puts("\n");
    /* READ of 1 GiB into a 4 KiB buffer. */
    at = fs_read_req(file, fh, 0, 1u << 30);
    o->len = 0; o->error = 0;
    r = fs_send(fs_rq, at, 16, fs_data, 4096);
    puts("fs hostile read-1g used="); if (r < 0) puts("lost"); else putdec(r);
    puts(" errno="); putdec(r >= 16 ? -o->error : 0); puts("\n");
    /* A descriptor loop: 0 -> 1 -> 0 -> ... */
    at = fs_put_str(fs_begin(FUSE_LOOKUP, 1), "hello.txt");
    ((struct fuse_in_header *)fs_in)->len = at;
    fs_rq->d[0] = (struct desc){(u64)fs_in, at, F_NEXT, 1};
    fs_rq->d[1] = (struct desc){(u64)fs_out, 256, F_NEXT | F_WRITE, 0};
    vq_post(fs_base, fs_rq, 0);
    r = vq_wait(fs_rq, FS_SPINS);
    puts("fs hostile descriptor-loop used="); if (r < 0) puts("lost"); else putdec(r); puts("\n");
    /* Still serving. */
    struct fuse_attr a;
    int err = fs_getattr(file, 0, 0, &a);
    if (err) fs_errno("after-hostile getattr", 0, err);
    else { puts("fs after-hostile getattr"); fs_attr(&a); puts("\n"); }
}


/* ---- virtio-net: answers ARP for its address, ICMP echo and UDP echo (port 7) until a UDP
 * datagram says "quit". With `netmrg` it takes mergeable receive buffers of 1024 bytes
 * (frames span several); with `nethostile` it first sends chains that break the rules. ---- */
#define NET_HDR 12
#define NET_BUFS 8
static u64 net_base;
static struct vq *net_rxq, *net_txq;
static u8 net_mac[6];
static u8 net_ip[4] = {10, 77, 0, 2};
static u8 net_gw[4] = {10, 77, 0, 1};
static u8 net_gw_mac[6];
static u32 net_buf_len;
static u8 net_rx[NET_BUFS][2048] __attribute__((aligned(64)));
static u8 net_tx[2048] __attribute__((aligned(64)));
static u8 net_frame[8192];

static void net_post_rx(int slot) {
    net_rxq->d[slot] = (struct desc){(u64)net_rx[slot], net_buf_len, F_WRITE, 0};
    net_rxq->avail_ring[net_rxq->avail_idx % QSIZE] = slot;
    barrier();
    net_rxq->avail_idx++;
    barrier();
    mw(net_base + QUEUE_NOTIFY, 0);
}

/* Sends `len` bytes of frame (after the header) from net_tx; returns the used length or -1. */
static long net_send_chain(struct desc *chain, int n) {
    for (int i = 0; i < n; i++) {
        net_txq->d[i] = chain[i];
        if (i + 1 < n) { net_txq->d[i].flags |= F_NEXT; net_txq->d[i].next = i + 1; }
    }
    vq_post(net_base, net_txq, 0);
    return vq_wait(net_txq, 2000000000L);
}

static void net_send(u32 len) {
    memset_(net_tx, 0, NET_HDR);
    struct desc d = {(u64)net_tx, NET_HDR + len, 0, 0};
    net_send_chain(&d, 1);
}

static u16 csum(const u8 *p, u32 n, u32 sum) {
    for (u32 i = 0; i + 1 < n; i += 2) sum += (p[i] << 8) | p[i + 1];
    if (n & 1) sum += p[n - 1] << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return ~sum;
}

/* Receives one frame (however many buffers it took) into net_frame; its length or -1. */
static long net_recv(long spins) {
    long len = vq_wait(net_rxq, spins);
    if (len < 0) return -1;
    u16 slot = net_rxq->used_ring[(u16)(net_rxq->last_used - 1) % QSIZE].id;
    u16 nbufs = net_rx[slot][10] | (net_rx[slot][11] << 8);
    if (len < NET_HDR || nbufs == 0) { puts("net: short rx buffer "); putdec(len); puts("\n"); net_post_rx(slot); return 0; }
    u32 at = 0;
    for (u16 b = 0;;) {
        if (at + len > sizeof net_frame) return -1;
        memcpy_(net_frame + at, net_rx[slot], len);
        at += len;
        net_post_rx(slot);
        if (++b == nbufs) break;
        len = vq_wait(net_rxq, spins);
        if (len < 0) return -1;
        slot = net_rxq->used_ring[(u16)(net_rxq->last_used - 1) % QSIZE].id;
    }
    return at - NET_HDR;
}


/* Parses a dotted quad at s into out; returns the character after it, or 0. */
static const char *parse_ip(const char *s, u8 *out) {
    for (int i = 0; i < 4; i++) {
        u32 v = 0; int digits = 0;
        while (*s >= '0' && *s <= '9') { v = v * 10 + (*s++ - '0'); digits++; }
        if (!digits || v > 255) return 0;
        out[i] = v;
        if (i < 3) { if (*s != '.') return 0; s++; }
    }
    return s;
}

static void putip(const u8 *ip) {
    for (int i = 0; i < 4; i++) { putdec(ip[i]); if (i < 3) putc('.'); }
}

/* Takes the address and gateway from the kernel's ip=ADDR::GW:MASK:... parameter. */
static void net_parse_ip_param(const char *cmd) {
    for (const char *s = cmd; *s; s++) {
        if ((s == cmd || s[-1] == ' ') && streq_prefix(s, "ip=")) {
            u8 a[4], g[4];
            const char *r = parse_ip(s + 3, a);
            if (!r || r[0] != ':' || r[1] != ':') return;
            r = parse_ip(r + 2, g);
            if (!r) return;
            memcpy_(net_ip, a, 4); memcpy_(net_gw, g, 4);
            return;
        }
    }
}

static long net_recv(long spins);

/* Asks for the gateway's MAC (ARP), answering nothing else meanwhile; 0 on success. */
static int net_arp_gateway(void) {
    u8 *t = net_tx + NET_HDR;
    for (int tries = 0; tries < 5; tries++) {
        memset_(t, 0xff, 6); memcpy_(t + 6, net_mac, 6); t[12] = 8; t[13] = 6;
        t[14] = 0; t[15] = 1; t[16] = 8; t[17] = 0; t[18] = 6; t[19] = 4; t[20] = 0; t[21] = 1;
        memcpy_(t + 22, net_mac, 6); memcpy_(t + 28, net_ip, 4);
        memset_(t + 32, 0, 6); memcpy_(t + 38, net_gw, 4);
        net_send(42);
        for (int k = 0; k < 20; k++) {
            long n = net_recv(50000000L);
            if (n < 0) break;
            u8 *f = net_frame + NET_HDR;
            if (n >= 42 && f[12] == 8 && f[13] == 6 && f[21] == 2 && f[28] == net_gw[0] &&
                f[29] == net_gw[1] && f[30] == net_gw[2] && f[31] == net_gw[3]) {
                memcpy_(net_gw_mac, f + 22, 6);
                return 0;
            }
        }
    }
    return -1;
}

/* Sends a UDP datagram from port 4000 to dst:port through the gateway. */
static void net_udp_to(const u8 *dst, u16 port, const char *msg, u32 len) {
    u8 *t = net_tx + NET_HDR;
    memcpy_(t, net_gw_mac, 6); memcpy_(t + 6, net_mac, 6); t[12] = 8; t[13] = 0;
    u8 *ip = t + 14;
    u32 total = 20 + 8 + len;
    memset_(ip, 0, 20);
    ip[0] = 0x45; ip[2] = total >> 8; ip[3] = total; ip[8] = 64; ip[9] = 17;
    memcpy_(ip + 12, net_ip, 4); memcpy_(ip + 16, dst, 4);
    u16 c = csum(ip, 20, 0); ip[10] = c >> 8; ip[11] = c;
    u8 *u = ip + 20;
    u[0] = 4000 >> 8; u[1] = 4000 & 255; u[2] = port >> 8; u[3] = port; u[4] = (8 + len) >> 8; u[5] = 8 + len;
    u[6] = 0; u[7] = 0;
    memcpy_(u + 8, msg, len);
    net_send(14 + total);
}

static void net_hostile(void) {
    /* 1: a device-writable descriptor in a TX chain; 2: shorter than the header; 3: outside
     * guest memory; 4: longer than any frame. Each must come back used, and nothing else. */
    struct desc c1[2] = {{(u64)net_tx, NET_HDR, 0, 0}, {(u64)net_tx + 64, 64, F_WRITE, 0}};
    struct desc c2 = {(u64)net_tx, 4, 0, 0};
    struct desc c3 = {0xfff000000000UL, 1500, 0, 0};
    struct desc c4[2] = {{(u64)fs_data, 40000, 0, 0}, {(u64)fs_data, 40000, 0, 0}};
    long r1 = net_send_chain(c1, 2), r2 = net_send_chain(&c2, 1), r3 = net_send_chain(&c3, 1),
         r4 = net_send_chain(c4, 2);
    puts("net: hostile tx used "); putdec(r1 >= 0); putdec(r2 >= 0); putdec(r3 >= 0); putdec(r4 >= 0);
    puts("\n");
}

/* Announces our address (gratuitous ARP: a request for it, from it). */
static void net_garp(void) {
    u8 *t = net_tx + NET_HDR;
    memset_(t, 0xff, 6); memcpy_(t + 6, net_mac, 6); t[12] = 8; t[13] = 6;
    t[14] = 0; t[15] = 1; t[16] = 8; t[17] = 0; t[18] = 6; t[19] = 4; t[20] = 0; t[21] = 1;
    memcpy_(t + 22, net_mac, 6); memcpy_(t + 28, net_ip, 4);
    memset_(t + 32, 0, 6); memcpy_(t + 38, net_ip, 4);
    net_send(42);
}

/* netwatch: a `watch` request waits on the service while the guest serves; the monitor that
 * restores a snapshot of it (a clone) answers with the clone's identity, whose ip= is the
 * address this guest then takes on and announces. */
#define WATCH_PORT 6000
static int net_watching;

static void net_watch_start(void) {
    if (vsock_setup() || svc_open(WATCH_PORT)) { puts("net: no service to watch\n"); return; }
    vs_fwd = svc_fwd;
    vs_send(WATCH_PORT, SERVICE_PORT, OP_RW, 0, "watch\n", 6);
    net_watching = 1;
    puts("net: watching\n");
}

static void net_watch_poll(void) {
    struct vs_hdr h;
    int slot = vs_recv(&h, 1);
    if (slot < 0) return;
    if (h.op == OP_RW) {
        char *p = (char *)buffers[4 + slot] + sizeof h;
        svc_fwd += h.len;
        for (u32 i = 0; i + 4 < h.len; i++)
            if (p[i] == ' ' && p[i + 1] == 'i' && p[i + 2] == 'p' && p[i + 3] == '=') {
                u8 a[4], g[4];
                const char *r = parse_ip(p + i + 4, a);
                if (r && r[0] == ':' && r[1] == ':' && parse_ip(r + 2, g)) {
                    memcpy_(net_ip, a, 4); memcpy_(net_gw, g, 4);
                    /* A clone's device has a MAC of its own: take it on, as the agent does. */
                    for (int k = 0; k < 6; k++) net_mac[k] = *(volatile u8 *)(net_base + CONFIG + k);
                    net_garp();
                    puts("net: readdressed "); putip(net_ip); puts("\n");
                }
            }
    }
    vs_post_rx(slot);
}

static void net_mode(const char *cmd) {
    net_base = find_device(1);
    if (!net_base) { puts("net: none\n"); return; }
    int mrg = has_word(cmd, "netmrg");
    net_buf_len = mrg ? 1024 : 2048;
    /* Features: MAC (5), STATUS (16), and MRG_RXBUF (15) if asked; no offloads. */
    mw(net_base + STATUS, 0);
    mw(net_base + STATUS, 1);
    mw(net_base + STATUS, 1 | 2);
    mw(net_base + DEV_FEATURES_SEL, 0);
    u32 offered = mr(net_base + DEV_FEATURES);
    mw(net_base + DRV_FEATURES_SEL, 0);
    mw(net_base + DRV_FEATURES, offered & ((1u << 5) | (1u << 16) | (mrg ? 1u << 15 : 0)));
    mw(net_base + DRV_FEATURES_SEL, 1); mw(net_base + DRV_FEATURES, 1);
    mw(net_base + STATUS, 1 | 2 | 8);
    if (!(mr(net_base + STATUS) & 8)) { puts("net: features refused\n"); return; }
    net_rxq = &queues[nqueues++]; vq_init(net_base, 0, net_rxq);
    net_txq = &queues[nqueues++]; vq_init(net_base, 1, net_txq);
    mw(net_base + STATUS, 1 | 2 | 8 | 4);
    for (int i = 0; i < 6; i++) net_mac[i] = *(volatile u8 *)(net_base + CONFIG + i);
    u16 status = *(volatile u16 *)(net_base + CONFIG + 6);
    puts("net: mac ");
    for (int i = 0; i < 6; i++) { puthex(net_mac[i], 2); if (i < 5) putc(':'); }
    puts(" link "); puts(status & 1 ? "up" : "down"); puts(mrg ? " mergeable\n" : "\n");
    if (has_word(cmd, "nethostile")) net_hostile();
    net_parse_ip_param(cmd);
    puts("net: address "); putip(net_ip); puts(" gateway "); putip(net_gw); puts("\n");
    for (int i = 0; i < NET_BUFS; i++) net_post_rx(i);
    for (const char *s = cmd; *s; s++)
        if ((s == cmd || s[-1] == ' ') && streq_prefix(s, "netsend=")) {
            u8 dst[4];
            const char *r = parse_ip(s + 8, dst);
            if (!r || *r != ':') break;
            u16 port = parse_dec(r + 1);
            if (net_arp_gateway()) { puts("net: no answer from the gateway\n"); break; }
            net_udp_to(dst, port, "hello from the guest", 20);
            puts("net: sent to "); putip(dst); puts("\n");
        }
    if (has_word(cmd, "netwatch")) net_watch_start();
    puts("net: serving\n");
    long idle = 0;
    for (;;) {
        /* Watching: short waits, the service's answer checked between them. */
        long spins = net_watching ? 200000L : 2000000000L;
        long n = net_recv(spins);
        if (n < 0) {
            idle += spins;
            if (idle >= 20000000000L) { puts("net: receive timed out\n"); return; }
            if (net_watching) net_watch_poll();
            continue;
        }
        idle = 0;
        if (net_watching) net_watch_poll();
        u8 *f = net_frame + NET_HDR;
        u8 *t = net_tx + NET_HDR;
        if (n < 14) continue;
        u16 type = (f[12] << 8) | f[13];
        if (type == 0x0806 && n >= 42 && f[21] == 1 && f[38] == net_ip[0] && f[39] == net_ip[1] &&
            f[40] == net_ip[2] && f[41] == net_ip[3]) {
            memcpy_(t, f + 6, 6); memcpy_(t + 6, net_mac, 6); t[12] = 8; t[13] = 6;
            memcpy_(t + 14, f + 14, 6); t[20] = 0; t[21] = 2;              /* ARP reply */
            memcpy_(t + 22, net_mac, 6); memcpy_(t + 28, net_ip, 4);       /* sender: us */
            memcpy_(t + 32, f + 22, 10);                                   /* target: them */
            net_send(42);
            puts("net: arp reply\n");
            continue;
        }
        if (type != 0x0800 || n < 34) continue;
        u8 *ip = f + 14;
        u32 ihl = (ip[0] & 15) * 4;
        u32 total = (ip[2] << 8) | ip[3];
        if (ihl < 20 || total > n - 14 || total < ihl + 8 || total + 14 > sizeof net_tx - NET_HDR) continue;
        if (ip[16] != net_ip[0] || ip[17] != net_ip[1] || ip[18] != net_ip[2] || ip[19] != net_ip[3]) continue;
        memcpy_(t, f + 6, 6); memcpy_(t + 6, net_mac, 6); t[12] = 8; t[13] = 0;
        u8 *oip = t + 14;
        memcpy_(oip, ip, total);
        memcpy_(oip + 12, ip + 16, 4); memcpy_(oip + 16, ip + 12, 4);
        oip[8] = 64; oip[10] = 0; oip[11] = 0;
        u16 c = csum(oip, ihl, 0); oip[10] = c >> 8; oip[11] = c;
        u8 *l4 = oip + ihl;
        if (ip[9] == 1 && l4[0] == 8) {                                    /* echo request */
            l4[0] = 0; l4[2] = 0; l4[3] = 0;
            c = csum(l4, total - ihl, 0); l4[2] = c >> 8; l4[3] = c;
            net_send(14 + total);
            puts("net: ping seq "); putdec((l4[6] << 8) | l4[7]); puts(" "); putdec(total - ihl - 8); puts(" bytes\n");
        } else if (ip[9] == 17 && l4[2] == 4000 >> 8 && l4[3] == (4000 & 255)) {
            puts("net: udp from "); putip(ip + 12); puts(":"); putdec((l4[0] << 8) | l4[1]);
            puts(" says \"");
            for (u32 i = 8; i < total - ihl && i < 72; i++) putc(l4[i]);
            puts("\"\n");
        } else if (ip[9] == 17 && l4[2] == 0 && l4[3] == 7) {              /* UDP echo */
            u8 p0 = l4[0], p1 = l4[1];
            l4[0] = 0; l4[1] = 7; l4[2] = p0; l4[3] = p1; l4[6] = 0; l4[7] = 0;
            u32 plen = total - ihl - 8;
            if (plen == 4 && l4[8] == 'q' && l4[9] == 'u' && l4[10] == 'i' && l4[11] == 't') {
                net_send(14 + total);
                puts("net: quit\n");
                return;
            }
            net_send(14 + total);
            u64 sum = 0; for (u32 i = 0; i < plen; i++) sum += l4[8 + i];
            puts("net: udp echo "); putdec(plen); puts(" bytes sum "); putdec(sum); puts("\n");
        }
    }
}

/* fs: the protocol over the image the test imported (tests/virtiofs.rs builds the tree). */
static void fs_mode(const char *cmd) {
    if (fs_setup(cmd)) return;
    fs_lookup_print("lookup", "/hello.txt");
    u64 dir = fs_lookup_print("lookup", "/dir");
    u64 big = fs_lookup_print("lookup", "/dir/big.bin");
    u64 link = fs_lookup_print("lookup", "/dir/link");
    u64 small = fs_lookup_print("lookup", "/dir/small.txt");
    fs_lookup_print("lookup", "/dir/sub");
    u64 deep = fs_lookup_print("lookup", "/dir/sub/deep.txt");
    fs_lookup_print("lookup", "/dir/absent");
    fs_lookup_print("lookup", "/hello.txt/x");
    if (!dir || !big || !link || !small || !deep) { puts("fs: the tree is not what the test imports\n"); return; }
    struct fuse_attr a;
    int err = fs_getattr(big, 0, 0, &a);
    if (err) fs_errno("getattr", "/dir/big.bin", err);
    else { puts("fs getattr /dir/big.bin"); fs_attr(&a); puts("\n"); }
    u64 fh = 0, fh2 = 0, hfh = 0;
    err = fs_open(big, 0, &fh);
    if (err) { fs_errno("open", "/dir/big.bin", err); return; }
    puts("fs open /dir/big.bin fh="); putdec(fh); puts("\n");
    fs_errno("open-wronly", "/dir/small.txt", fs_open(small, 1, &fh2));
    fs_errno("open-rdwr", "/dir/small.txt", fs_open(small, 2, &fh2));
    fs_errno("open-trunc", "/dir/small.txt", fs_open(small, 01000, &fh2));
    fs_errno("open-dir", "/dir", fs_open(dir, 0, &fh2));
    fs_read_print("read /dir/big.bin", big, fh, 0, ~0UL >> 1);
    fs_read_print("read /dir/big.bin@100000+70000", big, fh, 100000, 70000);
    fs_read_print("read /dir/big.bin@eof", big, fh, a.size, 4096);
    fs_read_print("read-badfh /dir/big.bin", big, fh + 1000, 0, 4096);
    fs_read_print("read-otherfh /dir/small.txt", small, fh, 0, 4096);
    struct fuse_entry_out he;
    if (!fs_lookup("/hello.txt", &he) && !fs_open(he.nodeid, 0, &hfh)) {
        fs_read_print("read /hello.txt", he.nodeid, hfh, 0, 4096);
        fs_errno("release /hello.txt", 0, fs_release(he.nodeid, hfh));
    }
    fs_readdirplus("/dir", dir);
    u32 at = fs_begin(FUSE_READLINK, link);
    long r = fs_send(fs_rq, at, 16 + 256, 0, 0);
    err = fs_reply("readlink", r);
    if (err) fs_errno("readlink", "/dir/link", err);
    else { puts("fs readlink /dir/link target="); fs_print_bytes(fs_out + 16, r - 16, '?'); puts("\n"); }
    at = fs_begin(FUSE_READLINK, small);
    fs_errno("readlink-file", "/dir/small.txt", fs_reply("readlink", fs_send(fs_rq, at, 16 + 256, 0, 0)));
    fs_xattrs("/dir/small.txt", small);
    at = fs_begin(FUSE_STATFS, 1);
    r = fs_send(fs_rq, at, 16 + sizeof(struct fuse_kstatfs), 0, 0);
    err = fs_reply("statfs", r);
    if (err) fs_errno("statfs", 0, err);
    else {
        struct fuse_kstatfs *s = (void *)(fs_out + 16);
        puts("fs statfs blocks="); putdec(s->blocks); puts(" files="); putdec(s->files);
        puts(" bsize="); putdec(s->bsize); puts(" namelen="); putdec(s->namelen);
        puts(" frsize="); putdec(s->frsize); puts("\n");
    }
    /* FORGET goes on the hiprio queue and gets no reply. */
    at = fs_put(fs_begin(FUSE_FORGET, deep), &(struct fuse_forget_in){1}, sizeof(struct fuse_forget_in));
    ((struct fuse_in_header *)fs_in)->len = at;
    fs_hp->d[0] = (struct desc){(u64)fs_in, at, 0, 0};
    vq_post(fs_base, fs_hp, 0);
    r = vq_wait(fs_hp, FS_SPINS);
    puts("fs forget ino="); putdec(deep); puts(" used="); if (r < 0) puts("lost"); else putdec(r); puts("\n");
    fs_writes(small, dir);
    fs_hostile(big, fh);
    fs_errno("release /dir/big.bin", 0, fs_release(big, fh));
    puts("fs done\n");
}

/* fsheld: looks up and opens a file, then waits (the monitor's `ready`) while the test takes a
 * snapshot or forks; once activated, uses the node id and handle it held before (GETATTR and
 * READ), looks up what it never looked up, and ends with the activation's code=N. A READ
 * posted before `ready` is collected after it: its reply may be one the device saved. */
static void fsheld_mode(const char *cmd) {
    char act[300], line[200];
    if (vsock_setup() || svc_open(5000)) { puts("fs: no service\n"); return; }
    if (fs_setup(cmd)) return;
    struct fuse_entry_out e;
    int err = fs_lookup("/dir/big.bin", &e);
    if (err) { fs_errno("held lookup", "/dir/big.bin", err); return; }
    u64 node = e.nodeid, fh = 0;
    err = fs_open(node, 0, &fh);
    if (err) { fs_errno("held open", "/dir/big.bin", err); return; }
    struct hash h; u32 reqs; hash_init(&h);
    long n = fs_read(node, fh, 0, ~0UL >> 1, &h, &reqs);
    puts("fs held ino="); putdec(node); puts(" fh="); putdec(fh); puts(" len="); putdec(n);
    puts(" sum="); puthex(hash_end(&h), 16); puts("\n");
    /* The posted READ: 4096 bytes at 200000. */
    fs_post(fs_rq, fs_read_req(node, fh, 200000, 4096), 16, fs_data, 4096);
    puts("fs ready\n");
    if (svc_call(5000, "ready\n", act, sizeof act) < 0) { puts("fs: no answer\n"); return; }
    puts("fs activated: "); puts(act); puts("\n");
    long r = vq_wait(fs_rq, FS_SPINS);
    err = fs_reply("posted read", r);
    if (err) fs_errno("posted read", 0, err);
    else { hash_init(&h); hash_bytes(&h, fs_data, r - 16); puts("fs posted read len="); putdec(r - 16); puts(" sum="); puthex(hash_end(&h), 16); puts("\n"); }
    struct fuse_attr a;
    err = fs_getattr(node, fh, 1, &a);
    if (err) fs_errno("after getattr", 0, err);
    else { puts("fs after getattr"); fs_attr(&a); puts("\n"); }
    fs_read_print("after read", node, fh, 0, ~0UL >> 1);
    u64 other = fs_lookup_print("after lookup", "/other/deep/file.txt");
    u64 ofh = 0;
    if (other && !fs_open(other, 0, &ofh)) {
        puts("fs after open fh="); putdec(ofh); puts("\n");
        fs_read_print("after read-other /other/deep/file.txt", other, ofh, 0, ~0UL >> 1);
    }
    fs_lookup_print("after relookup", "/dir/big.bin");
    fs_errno("after release", 0, fs_release(node, fh));
    if (svc_call(5000, "whoami\n", line, sizeof line) > 0) { puts("fs whoami "); puts(line); puts("\n"); }
    svc_close(5000);
    puts("fs done\n");
    for (const char *s = act; *s; s++)
        if (s > act && s[-1] == ' ' && streq_prefix(s, "code=")) outb(0x501, parse_dec(s + 5));
}

void guest_main(u64 boot_info, u64 pvh) {
    const char *cmd = pvh ? (const char *)*(u64 *)(boot_info + 24)
                          : (const char *)(u64)*(u32 *)(boot_info + 0x228);
    puts("starling test guest: entered through ");
    puts(pvh ? "PVH" : "64-bit boot");
    puts("\ncmdline: "); puts(cmd); puts("\n");
    for (int i = 0; i < 16; i++) {
        u64 base = 0xd0000000UL + i * 0x1000UL;
        if (mr(base + MAGIC) != 0x74726976) continue;
        puts("virtio-mmio at 0x"); puthex(base, 8); puts(": device "); putdec(mr(base + DEVICE_ID)); puts("\n");
    }
    if (has_word(cmd, "counter")) counter_mode(cmd);
    if (has_word(cmd, "substrate")) substrate_mode(cmd);
    if (has_word(cmd, "forkchain")) forkchain_mode();
    if (has_word(cmd, "fsheld")) fsheld_mode(cmd);
    if (has_word(cmd, "fs")) fs_mode(cmd);
    if (has_word(cmd, "seccomp-probe")) {
        /* Makes the monitor call what its filter forbids (STARLING_SECCOMP_PROBE=1 only). */
        outb(0x502, 1);
        puts("seccomp probe survived\n");
    }
    if (has_word(cmd, "idle")) {
        /* Touch a little memory, then halt for good: an idle VM (the kernel's irqchip keeps
         * the halted vCPU off the host CPU). */
        pattern_fill(0x1d1e);
        puts("idle\n");
        for (;;) __asm__ volatile("cli; hlt");
    }
    for (const char *s = cmd; *s; s++)
        if ((s == cmd || s[-1] == ' ') && streq_prefix(s, "fork=")) fork_mode(parse_dec(s + 5));
    for (const char *s = cmd; *s; s++)
        if ((s == cmd || s[-1] == ' ') && streq_prefix(s, "exits=")) {
            /* VM exits and nothing else: port 0x80 has no device (benchmarks). */
            for (u64 i = parse_dec(s + 6); i; i--) outb(0x80, 0);
            puts("exits done\n");
        }
    if (has_word(cmd, "blk")) test_blk(cmd);
    if (has_word(cmd, "rng")) test_rng();
    if (has_word(cmd, "vsock")) test_vsock(cmd);
    if (has_word(cmd, "net")) net_mode(cmd);
    puts("guest done\n");
    if (has_word(cmd, "poweroff")) outb(0x600, (5 << 2) | (1 << 5));
    if (has_word(cmd, "reset")) outb(0x64, 0xfe);
    for (const char *s = cmd; *s; s++)
        if ((s == cmd || s[-1] == ' ') && streq_prefix(s, "exit=")) {
            u8 code = 0;
            for (s += 5; *s >= '0' && *s <= '9'; s++) code = code * 10 + (*s - '0');
            outb(0x501, code);
        }
    if (has_word(cmd, "spin")) {
        puts("spinning\n");
        for (;;) { volatile u64 x = 0; for (u64 i = 0; i < 100000; i++) x += i; puts("tick\n"); }
    }
}
