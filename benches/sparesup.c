/*
 * sparesup.c - a supervisor that restarts from a spare forked ahead: for
 * each service it keeps one process forked and blocked reading a pipe;
 * when the service dies, it writes a byte to the spare (which execs the
 * child at once) and forks the next spare after. The question it answers:
 * would forkroot's exec'd restarts get faster by keeping such a spare
 * ready (no fork on the restart path), as its built-in daemons' standbys
 * do? Run beside minisup and runit by the peer restart-latency harness:
 *
 *   cc -O2 -o /tmp/sparesup benches/sparesup.c
 *   CUSTOM_NAME=sparesup CUSTOM_CMD='/tmp/sparesup $RLAT_K $RLAT_CHILD $RLAT_LOG' \
 *     ONLY="minisup runit custom" ./restart_latency.sh
 *
 *   sparesup K CHILD LOGFILE   supervises K instances "CHILD svc<i> LOGFILE"
 *
 * SIGTERM: the children get SIGTERM, the spares SIGKILL; all are reaped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define MAXK 256
static volatile sig_atomic_t g_stop = 0;
static void on_sig(int s)
{
    (void)s;
    g_stop = 1;
}

static const char *child, *logfile;
static pid_t running[MAXK], spare[MAXK];
static int gate[MAXK]; /* write end of each spare's pipe */

/* Forks service i's spare: it waits for one byte, then execs the child
 * (end-of-file instead: the supervisor is gone or stopping, it exits). */
static pid_t fork_spare(int i)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    pid_t c = fork();
    if (c == 0) {
        char b;
        close(p[1]);
        if (read(p[0], &b, 1) != 1)
            _exit(0);
        char id[32];
        snprintf(id, sizeof id, "svc%d", i);
        char *av[] = {(char *)child, id, (char *)logfile, NULL};
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(child, av, environ);
        _exit(127);
    }
    close(p[0]);
    if (c < 0) {
        close(p[1]);
        return -1;
    }
    gate[i] = p[1];
    return c;
}

/* Starts service i from its spare, then forks the next spare. */
static pid_t go(int i)
{
    pid_t p = spare[i];
    int ok = p > 0 && write(gate[i], "g", 1) == 1;
    if (p > 0)
        close(gate[i]);
    spare[i] = fork_spare(i);
    return ok ? p : -1;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: sparesup K CHILD LOGFILE\n");
        return 2;
    }
    int k = atoi(argv[1]);
    child = argv[2];
    logfile = argv[3];
    if (k < 1 || k > MAXK)
        return 2;
    struct sigaction sa = {0};
    sa.sa_handler = on_sig; /* no SA_RESTART: waitpid returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    for (int i = 0; i < k; i++)
        spare[i] = fork_spare(i);
    for (int i = 0; i < k; i++)
        running[i] = go(i);
    while (!g_stop) {
        int st;
        pid_t p = waitpid(-1, &st, 0);
        if (p < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < k; i++)
            if (running[i] == p)
                running[i] = g_stop ? -1 : go(i);
    }
    for (int i = 0; i < k; i++) {
        if (running[i] > 0)
            kill(running[i], SIGTERM);
        if (spare[i] > 0)
            kill(spare[i], SIGKILL);
    }
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR)
        ;
    return 0;
}
