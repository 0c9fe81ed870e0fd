/* hgrun-shim: the first process of a run's command in a Docker Swarm task (PID 2, under
 * docker-init). Swarm's container spec cannot say StdinOnce, so a container's stdin never
 * closes when the attached client half-closes (moby stream/attach.go closes the output streams
 * instead), and a swarm task starts the moment it is placed, before hgrun has attached or
 * copied the --file uploads in. The shim makes both right:
 *
 *   hgrun-shim [-g] [-f] -- COMMAND ARGS...
 *
 *   -g  wait for the start signal: the file /.hgrun-go, copied in by the engine (PUT archive)
 *       once the attach and the uploads are in place; then COMMAND runs. The file is left
 *       there: dockerd still sets its owner and times after creating it, and removing it under
 *       dockerd made the copy (and so the start) fail at random.
 *   -f  framed stdin: fd 0 carries frames [4-byte big-endian length][payload]; a frame of
 *       length 0 (or the end of fd 0) is EOF, and COMMAND's stdin (a pipe) is closed then.
 *       Without -f, COMMAND is exec'd in place and keeps fd 0 as it is (TTY or detached).
 *
 * Exit status: COMMAND's, 128+N when a signal N killed it, 127 when it is not found and 126
 * when it is not executable (docker run's codes). Signals the shim gets (docker-init forwards
 * docker stop's) go on to COMMAND. Static, no allocation, no libc beyond syscalls wrappers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define GO_FILE "/.hgrun-go"

static volatile pid_t child = 0;

static void forward(int sig) {
    if (child > 0) kill(child, sig);
}

static void say(const char *a, const char *b, const char *c) {
    (void)!write(2, "hgrun: ", 7);
    (void)!write(2, a, strlen(a));
    (void)!write(2, b, strlen(b));
    (void)!write(2, c, strlen(c));
    (void)!write(2, "\n", 1);
}

static void run(char **argv) {
    execvp(argv[0], argv);
    int e = errno;
    /* The same words as hgrun/execfailure.py gives docker-init's line on one host. */
    if (e == ENOENT) say("command not found in the image: ", argv[0], "");
    else if (e == EACCES) say("command not executable in the image: ", argv[0], " (permission denied)");
    else say(argv[0], ": ", strerror(e));
    _exit(e == ENOENT ? 127 : 126);
}

static int read_full(int fd, unsigned char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r == 0) return 0;
        if (r < 0) { if (errno == EINTR) continue; return -1; }
        got += (size_t)r;
    }
    return 1;
}

static int write_full(int fd, const unsigned char *buf, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        buf += w; n -= (size_t)w;
    }
    return 0;
}

/* Copy frames from fd 0 into `out` until the EOF frame; then close it. */
static void pump(int out) {
    static unsigned char buf[65536];
    unsigned char head[4];
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        if (read_full(0, head, 4) != 1) break;
        uint32_t n = ((uint32_t)head[0] << 24) | ((uint32_t)head[1] << 16) |
                     ((uint32_t)head[2] << 8) | head[3];
        if (n == 0) break;
        while (n > 0) {
            size_t chunk = n < sizeof buf ? n : sizeof buf;
            if (read_full(0, buf, chunk) != 1) { close(out); _exit(0); }
            if (write_full(out, buf, chunk) < 0) { /* the command closed its stdin: drain */ }
            n -= (uint32_t)chunk;
        }
    }
    close(out);
    _exit(0);
}

int main(int argc, char **argv) {
    int gate = 0, framed = 0, i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--")) { i++; break; }
        if (!strcmp(argv[i], "-g")) gate = 1;
        else if (!strcmp(argv[i], "-f")) framed = 1;
        else { say("unknown option ", argv[i], ""); return 125; }
    }
    if (i >= argc) { say("no command", "", ""); return 125; }
    char **cmd = argv + i;
    if (gate) {
        struct stat st;
        struct timespec tick = {0, 5 * 1000 * 1000};
        while (stat(GO_FILE, &st) != 0) nanosleep(&tick, NULL);
    }
    if (!framed) run(cmd);

    int fds[2];
    if (pipe(fds) < 0) { say("pipe: ", strerror(errno), ""); return 125; }
    pid_t pumper = fork();
    if (pumper < 0) { say("fork: ", strerror(errno), ""); return 125; }
    if (pumper == 0) { close(fds[0]); pump(fds[1]); }
    close(fds[1]);
    static const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
    for (size_t k = 0; k < sizeof sigs / sizeof sigs[0]; k++) signal(sigs[k], forward);
    child = fork();
    if (child < 0) { say("fork: ", strerror(errno), ""); return 125; }
    if (child == 0) {
        for (size_t k = 0; k < sizeof sigs / sizeof sigs[0]; k++) signal(sigs[k], SIG_DFL);
        dup2(fds[0], 0);
        close(fds[0]);
        run(cmd);
    }
    close(fds[0]);
    int status;
    while (waitpid(child, &status, 0) < 0) {
        if (errno != EINTR) return 125;
    }
    kill(pumper, SIGKILL);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}
