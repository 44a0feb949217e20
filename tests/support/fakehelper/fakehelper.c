/*
 * fakehelper: a stand-in for the save/restore helper that writes exactly
 * the bytes a test chose, to exercise the callout's framing, errors and
 * process handling.
 *
 * Invoked with the helper's argv (docs/protocol.md §2).  The script is the file named by
 * FAKEHELPER_SCRIPT, one command per line:
 *
 *   w HEX     write these bytes to stdout in one write()
 *   o HEX     write these bytes to the io fd (argv[2])
 *   s         wait until the parent has read everything written so far
 *             (FIONREAD on the pipe is 0): forces a split read
 *   r         read a 4-byte reply from stdin and log "reply N"
 *             (EOF: exit 254, like the real helper)
 *   f         log argv, open fds, the io fd's O_NONBLOCK, SigIgn/SigBlk
 *   i         ignore SIGTERM
 *   t         catch SIGTERM (it then only sets a flag)
 *   T         wait until a SIGTERM was caught
 *   h         hang (sleep until killed)
 *   z MS      sleep MS milliseconds
 *   c         close stdout
 *   k SIG     kill itself with SIG
 *   x CODE    exit with CODE
 *
 * The log goes to the file named by FAKEHELPER_REPORT (appended).
 * At the end of the script: exit 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>

static FILE *report;
static volatile sig_atomic_t got_term;

static void on_term(int sig)
{
    (void)sig;
    got_term = 1;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static void write_all(int fd, const unsigned char *p, size_t n)
{
    ssize_t r;

    while (n) {
        r = write(fd, p, n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            perror("fakehelper: write");
            exit(255);
        }
        p += r;
        n -= (size_t)r;
    }
}

static void wait_drained(void)
{
    int pending = 0;

    for (;;) {
        if (ioctl(1, FIONREAD, &pending) < 0) {
            perror("fakehelper: FIONREAD");
            exit(255);
        }
        if (pending == 0)
            return;
        usleep(50);
    }
}

static void read_reply(void)
{
    unsigned char b[4];
    size_t got = 0;
    ssize_t r;
    int v;

    while (got < 4) {
        r = read(0, b + got, 4 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            exit(254);
        got += (size_t)r;
    }
    memcpy(&v, b, 4);
    if (report) {
        fprintf(report, "reply %d\n", v);
        fflush(report);
    }
}

static void log_state(int argc, char **argv)
{
    char path[300], target[PATH_MAX], line[256];
    struct dirent *de;
    DIR *d;
    FILE *st;
    ssize_t n;
    int i, io_fd, fl;

    if (!report)
        return;
    fprintf(report, "argc %d\n", argc);
    for (i = 0; i < argc; i++)
        fprintf(report, "argv %d %s\n", i, argv[i]);
    d = opendir("/proc/self/fd");
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        if (atoi(de->d_name) == dirfd(d))
            continue;
        snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
        n = readlink(path, target, sizeof(target) - 1);
        if (n < 0)
            continue;
        target[n] = 0;
        fprintf(report, "fd %s %s\n", de->d_name, target);
    }
    if (d)
        closedir(d);
    if (argc > 2) {
        io_fd = atoi(argv[2]);
        fl = fcntl(io_fd, F_GETFL);
        fprintf(report, "ionb %d\n", fl < 0 ? -1 : !!(fl & O_NONBLOCK));
    }
    st = fopen("/proc/self/status", "r");
    while (st && fgets(line, sizeof(line), st)) {
        if (!strncmp(line, "SigIgn:", 7) || !strncmp(line, "SigBlk:", 7))
            fputs(line, report);
    }
    if (st)
        fclose(st);
    fflush(report);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int main(int argc, char **argv)
{
    const char *script_path = getenv("FAKEHELPER_SCRIPT");
    const char *report_path = getenv("FAKEHELPER_REPORT");
    static unsigned char buf[1 << 20];
    char *line = NULL;
    size_t cap = 0, n;
    ssize_t len;
    FILE *script;
    char *p;
    int hi, lo;

    if (report_path) {
        report = fopen(report_path, "a");
        if (!report) {
            perror("fakehelper: report");
            return 255;
        }
    }
    if (!script_path) {
        fprintf(stderr, "fakehelper: FAKEHELPER_SCRIPT not set\n");
        return 255;
    }
    script = fopen(script_path, "r");
    if (!script) {
        perror("fakehelper: script");
        return 255;
    }
    while ((len = getline(&line, &cap, script)) >= 0) {
        if (len && line[len - 1] == '\n')
            line[--len] = 0;
        p = line + 1;
        while (*p == ' ')
            p++;
        switch (line[0]) {
        case 'w':
        case 'o':
            n = 0;
            while (p[0] && p[1] && n < sizeof(buf)) {
                hi = hexval(p[0]);
                lo = hexval(p[1]);
                if (hi < 0 || lo < 0) {
                    fprintf(stderr, "fakehelper: bad hex\n");
                    return 255;
                }
                buf[n++] = (unsigned char)(hi << 4 | lo);
                p += 2;
            }
            write_all(line[0] == 'o' && argc > 2 ? atoi(argv[2]) : 1, buf, n);
            break;
        case 's':
            wait_drained();
            break;
        case 'r':
            read_reply();
            break;
        case 'f':
            log_state(argc, argv);
            break;
        case 'i':
            signal(SIGTERM, SIG_IGN);
            break;
        case 't':
            signal(SIGTERM, on_term);
            break;
        case 'T':
            while (!got_term)
                sleep_ms(1);
            break;
        case 'h':
            for (;;)
                pause();
        case 'z':
            sleep_ms(atol(p));
            break;
        case 'c':
            close(1);
            break;
        case 'k':
            signal(atoi(p), SIG_DFL);
            kill(getpid(), atoi(p));
            sleep_ms(1000);
            return 255;
        case 'x':
            return atoi(p);
        case 0:
        case '#':
            break;
        default:
            fprintf(stderr, "fakehelper: unknown command %c\n", line[0]);
            return 255;
        }
    }
    return 0;
}
