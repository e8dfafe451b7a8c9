/* The pod sandbox ("pause") process for the test node's locally built sandbox image: it holds the pod's
 * namespaces, reaps orphaned children (it is PID 1 when the pod shares its PID namespace) and exits on
 * SIGINT/SIGTERM. Same behaviour as Kubernetes' build/pause/linux/pause.c, written here because no registry
 * is reachable. Built statically: cc -Os -static -o pause pause.c */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_exit_signal(int sig) { _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("pause (ls-token-refresher test node)");
        return 0;
    }
    if (getpid() != 1) fprintf(stderr, "pause: warning: not PID 1\n");
    struct sigaction sa = {0};
    sa.sa_handler = on_exit_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = reap;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    for (;;) pause();
    return 42;
}
