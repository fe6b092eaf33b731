/* Times a monitor from spawn until its guest runs, and until all its memory with data is
 * resident, for the restore benchmark in the test host.
 *
 *   restore-timer starling API_SOCKET SNAPDIR -- CMD ARGS...
 *       poll GET /v1/vm until "running"; then fault every page with data (SNAPDIR/memory.map)
 *       into the monitor's mapping of SNAPDIR/memory, through /proc/PID/mem, one read per run
 *       of pages (Starling maps the file MAP_PRIVATE: pages come in as first touched)
 *   restore-timer qemu QMP_SOCKET -- CMD ARGS...
 *       poll query-status; "cont" once the incoming migration left it paused (QEMU has read
 *       its whole stream into RAM by then: resident = running)
 *   restore-timer qemu-save QMP_SOCKET FILE            stop, migrate to FILE, quit
 *   restore-timer firecracker API_SOCKET STATE MEMORY -- CMD ARGS...
 *       wait for the API, PUT /snapshot/load (a File memory backend, mapped MAP_PRIVATE as
 *       Starling's; resume_vm), then GET / until "Running"
 *   restore-timer firecracker-save API_SOCKET STATE MEMORY   pause, full snapshot (the
 *       caller stops the monitor)
 * Prints "elapsed_ms=N resident_ms=M pid=P" (the monitor keeps running). Polls every 0.2 ms. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <signal.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e3 + t.tv_nsec / 1e6; }

static int dial(const char *path) {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) { close(s); return -1; }
    return s;
}

/* Reads every run of pages with data (memory.map: u64 page number + 32-byte hash each, in
 * order) out of pid's mapping of the memory file; returns the pages read or -1. */
static long make_resident(pid_t pid, const char *snapdir) {
    char path[4096], mem[64], line[4608];
    snprintf(path, sizeof path, "%s/memory", snapdir);
    char real[4096];
    if (!realpath(path, real)) return -1;
    snprintf(mem, sizeof mem, "/proc/%d/maps", pid);
    FILE *maps = fopen(mem, "r");
    if (!maps) return -1;
    unsigned long start = 0, end = 0, off = 0;
    int found = 0;
    while (fgets(line, sizeof line, maps)) {
        unsigned long s, e, o;
        char file[4096] = "";
        if (sscanf(line, "%lx-%lx %*s %lx %*s %*s %4095s", &s, &e, &o, file) >= 3 && !strcmp(file, real)) {
            start = s; end = e; off = o; found = 1;
            break;
        }
    }
    fclose(maps);
    if (!found) return -1;
    snprintf(path, sizeof path, "%s/memory.map", snapdir);
    FILE *map = fopen(path, "rb");
    snprintf(mem, sizeof mem, "/proc/%d/mem", pid);
    int fd = open(mem, O_RDONLY);
    if (!map || fd < 0) return -1;
    static char buf[1 << 20];
    unsigned char entry[40];
    long pages = 0;
    unsigned long run_first = 0, run_len = 0;
    for (;;) {
        int more = fread(entry, 1, 40, map) == 40;
        unsigned long page = 0;
        if (more) memcpy(&page, entry, 8);
        if (more && run_len && page == run_first + run_len) { run_len++; continue; }
        /* Read the run just ended (within the mapping), in pieces of the buffer's size. */
        for (unsigned long p = run_first; p < run_first + run_len; ) {
            unsigned long at = p * 4096;
            if (at < off || at >= off + (end - start)) { p++; continue; }
            unsigned long n = (run_first + run_len - p) * 4096;
            if (n > sizeof buf) n = sizeof buf;
            if (at + n > off + (end - start)) n = off + (end - start) - at;
            ssize_t r = pread(fd, buf, n, start + (at - off));
            if (r <= 0) { fclose(map); close(fd); return -1; }
            pages += r / 4096;
            p += r / 4096;
        }
        if (!more) break;
        run_first = page;
        run_len = 1;
    }
    fclose(map);
    close(fd);
    return pages;
}

/* One request on a new connection to a monitor's API (Firecracker keeps connections open:
 * the reply is read by its Content-Length); the reply's status, its body in buf. */
static int http(const char *sock, const char *method, const char *path, const char *body, char *buf, int max) {
    buf[0] = 0;
    char req[2048];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s", method, path, strlen(body), body);
    if (n < 0 || n >= (int)sizeof req) return -1;
    int s = dial(sock);
    if (s < 0) return -1;
    if (write(s, req, n) != n) { close(s); return -1; }
    int got = 0, r;
    char *end = NULL;
    while (got < max - 1 && !(end = strstr(buf, "\r\n\r\n"))) {
        if ((r = read(s, buf + got, max - 1 - got)) <= 0) break;
        got += r;
        buf[got] = 0;
    }
    if (!end) { close(s); return -1; }
    int status = atoi(buf + 9), length = 0;
    char *cl = strcasestr(buf, "content-length:");
    if (cl && cl < end) length = atoi(cl + 15);
    int head = end + 4 - buf;
    while (got < head + length && got < max - 1 && (r = read(s, buf + got, max - 1 - got)) > 0) got += r;
    buf[got] = 0;
    memmove(buf, buf + head, got - head + 1);
    close(s);
    return status;
}

static int starling_running(const char *sock) {
    char buf[4096];
    return http(sock, "GET", "/v1/vm", "", buf, sizeof buf) == 200 && strstr(buf, "\"state\":\"running\"");
}

/* Reads one QMP reply line that is not an event. */
static void qmp_line(int s, char *buf, int max) {
    for (;;) {
        int n = 0;
        char c;
        while (n < max - 1 && read(s, &c, 1) == 1 && c != '\n') buf[n++] = c;
        buf[n] = 0;
        if (!strstr(buf, "\"event\"")) return;
    }
}

static int qmp_open(const char *sock) {
    int s = dial(sock);
    if (s < 0) return -1;
    char buf[4096];
    qmp_line(s, buf, sizeof buf);
    const char *cap = "{\"execute\":\"qmp_capabilities\"}\n";
    if (write(s, cap, strlen(cap)) < 0) return -1;
    qmp_line(s, buf, sizeof buf);
    return s;
}

static void qmp(int s, const char *cmd, char *buf, int max) {
    if (write(s, cmd, strlen(cmd)) < 0) { buf[0] = 0; return; }
    qmp_line(s, buf, max);
}

int main(int argc, char **argv) {
    char buf[8192];
    if (argc == 4 && !strcmp(argv[1], "qemu-save")) {
        int s = qmp_open(argv[2]);
        if (s < 0) { fprintf(stderr, "no QMP at %s\n", argv[2]); return 1; }
        qmp(s, "{\"execute\":\"stop\"}\n", buf, sizeof buf);
        char cmd[512];
        snprintf(cmd, sizeof cmd, "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"exec:cat > %s\"}}\n", argv[3]);
        qmp(s, cmd, buf, sizeof buf);
        do { usleep(10000); qmp(s, "{\"execute\":\"query-migrate\"}\n", buf, sizeof buf); }
        while (!strstr(buf, "completed") && !strstr(buf, "failed"));
        printf("qemu-save: %s\n", strstr(buf, "completed") ? "completed" : buf);
        qmp(s, "{\"execute\":\"quit\"}\n", buf, sizeof buf);
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "firecracker-save")) {
        char body[2048];
        int st = http(argv[2], "PATCH", "/vm", "{\"state\":\"Paused\"}", buf, sizeof buf);
        if (st == 204) {
            snprintf(body, sizeof body, "{\"snapshot_type\":\"Full\",\"snapshot_path\":\"%s\",\"mem_file_path\":\"%s\"}",
                     argv[3], argv[4]);
            st = http(argv[2], "PUT", "/snapshot/create", body, buf, sizeof buf);
        }
        printf("firecracker-save: %s\n", st == 204 ? "completed" : buf);
        return st == 204 ? 0 : 1;
    }
    int qemu = argc > 1 && !strcmp(argv[1], "qemu");
    int fc = argc > 1 && !strcmp(argv[1], "firecracker");
    int dash = qemu ? 3 : fc ? 5 : 4;
    if (argc < dash + 2 || strcmp(argv[dash], "--")) { fprintf(stderr, "usage: see the source\n"); return 2; }
    const char *sock = argv[2];
    const char *snapdir = qemu || fc ? NULL : argv[3];
    unlink(sock);
    double t0 = now_ms();
    pid_t pid = fork();
    if (pid == 0) {
        /* Not our stdout: a caller reading it (a shell's $(...)) would wait for the monitor. */
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) dup2(null, 1);
        execv(argv[dash + 1], argv + dash + 1);
        perror("exec");
        _exit(127);
    }
    int status;
    if (fc) {
        char body[2048];
        snprintf(body, sizeof body, "{\"snapshot_path\":\"%s\",\"mem_backend\":{\"backend_type\":\"File\","
                 "\"backend_path\":\"%s\"},\"resume_vm\":true}", argv[3], argv[4]);
        int st;
        while ((st = http(sock, "PUT", "/snapshot/load", body, buf, sizeof buf)) < 0) {
            if (waitpid(pid, &status, WNOHANG) == pid) { printf("failed: the monitor exited (%d)\n", status); return 1; }
            usleep(200);
        }
        if (st != 204) {
            printf("failed: snapshot load answered %d: %s\n", st, buf);
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return 1;
        }
        while (http(sock, "GET", "/", "", buf, sizeof buf) != 200 || !strstr(buf, "\"Running\"")) {
            if (waitpid(pid, &status, WNOHANG) == pid) { printf("failed: the monitor exited (%d)\n", status); return 1; }
            usleep(200);
        }
    } else if (!qemu) {
        while (!starling_running(sock)) {
            if (waitpid(pid, &status, WNOHANG) == pid) { printf("failed: the monitor exited (%d)\n", status); return 1; }
            usleep(200);
        }
    } else {
        int s;
        while ((s = qmp_open(sock)) < 0) {
            if (waitpid(pid, &status, WNOHANG) == pid) { printf("failed: the monitor exited (%d)\n", status); return 1; }
            usleep(200);
        }
        for (;;) {
            qmp(s, "{\"execute\":\"query-status\"}\n", buf, sizeof buf);
            if (strstr(buf, "\"running\"")) break;
            if (strstr(buf, "\"paused\"") || strstr(buf, "postmigrate")) qmp(s, "{\"execute\":\"cont\"}\n", buf, sizeof buf);
            usleep(200);
        }
        close(s);
    }
    double running = now_ms() - t0;
    if (snapdir && make_resident(pid, snapdir) < 0) { printf("failed: could not fault in %s/memory\n", snapdir); return 1; }
    printf("elapsed_ms=%.2f resident_ms=%.2f pid=%d\n", running, now_ms() - t0, pid);
    return 0;
}
