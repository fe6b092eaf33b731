/* Guest side of the tier-2 vsock check: connects to the host (CID 2) on PORT, sends MESSAGE,
 * prints what comes back. Built statically so it runs in a busybox initramfs. */
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: vsock-hello PORT MESSAGE\n"); return 2; }
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) { perror("vsock-hello: socket"); return 1; }
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = atoi(argv[1]) };
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("vsock-hello: connect"); return 1; }
    if (write(s, argv[2], strlen(argv[2])) < 0) { perror("vsock-hello: write"); return 1; }
    shutdown(s, SHUT_WR);
    char buf[512]; ssize_t n; size_t got = 0;
    printf("vsock reply: ");
    while ((n = read(s, buf, sizeof buf)) > 0) { fwrite(buf, 1, n, stdout); got += n; }
    printf("\n");
    return got ? 0 : 1;
}
