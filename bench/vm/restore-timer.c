/* Times a monitor from spawn until its guest runs, for the restore benchmark in the test host.
 *
 *   restore-timer starling API_SOCKET -- CMD ARGS...   poll GET /v1/vm until "running"
 *   restore-timer qemu QMP_SOCKET -- CMD ARGS...       poll query-status; "cont" once the
 *                                                      incoming migration left it paused
 *   restore-timer qemu-save QMP_SOCKET FILE            stop, migrate to FILE, quit
 * Prints "elapsed_ms=N pid=P" (the monitor keeps running). Polls every 0.2 ms. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
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

static int readall(int s, char *buf, int max) {
    int n = 0, r;
    while (n < max - 1 && (r = read(s, buf + n, max - 1 - n)) > 0) n += r;
    buf[n] = 0;
    return n;
}

static int starling_running(const char *sock) {
    int s = dial(sock);
    if (s < 0) return 0;
    const char *req = "GET /v1/vm HTTP/1.1\r\nHost: vmm\r\nContent-Length: 0\r\n\r\n";
    if (write(s, req, strlen(req)) < 0) { close(s); return 0; }
    char buf[4096];
    readall(s, buf, sizeof buf);
    close(s);
    return strstr(buf, "\"state\":\"running\"") != NULL;
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
    if (argc < 5 || strcmp(argv[3], "--")) { fprintf(stderr, "usage: see the source\n"); return 2; }
    int qemu = !strcmp(argv[1], "qemu");
    const char *sock = argv[2];
    unlink(sock);
    double t0 = now_ms();
    pid_t pid = fork();
    if (pid == 0) {
        /* Not our stdout: a caller reading it (a shell's $(...)) would wait for the monitor. */
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) dup2(null, 1);
        execv(argv[4], argv + 4);
        perror("exec");
        _exit(127);
    }
    int status;
    if (!qemu) {
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
    printf("elapsed_ms=%.2f pid=%d\n", now_ms() - t0, pid);
    return 0;
}
