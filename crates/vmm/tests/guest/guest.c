/* Starling's tier-1 test guest: boots through the same path as Linux (PVH or 64-bit ELF),
 * prints to the 8250 serial port, drives the virtio-mmio devices the VMM announces (block,
 * rng, vsock) by polling, feeds them malformed requests, and ends the VM the way its command
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
    if (has_word(cmd, "idle")) {
        /* Touch a little memory, then halt for good: an idle VM (the kernel's irqchip keeps
         * the halted vCPU off the host CPU). */
        pattern_fill(0x1d1e);
        puts("idle\n");
        for (;;) __asm__ volatile("cli; hlt");
    }
    for (const char *s = cmd; *s; s++)
        if ((s == cmd || s[-1] == ' ') && streq_prefix(s, "fork=")) fork_mode(parse_dec(s + 5));
    if (has_word(cmd, "blk")) test_blk(cmd);
    if (has_word(cmd, "rng")) test_rng();
    if (has_word(cmd, "vsock")) test_vsock(cmd);
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
