/*
 * xensr-bench-cparent: the C floor of the benchmarks.  It plays the
 * parent's side of the helper protocol (docs/protocol.md §3 to §6) with
 * nothing in the way: two pipes, posix_spawn of the helper, a read
 * buffer, a strict decoder for every frame, a native int reply for each
 * request, waitpid.
 *
 *   xensr-bench-cparent [-p] [-f FD] [-d DOMID] HELPER MODE N [BUFFER]
 *
 * runs HELPER --save-domain IO_FD -1 DOMID 0 CBFLAGS 0 with
 * XENSR_BENCH_MODE = MODE, XENSR_BENCH_N = N and XENSR_BENCH_BUFFER =
 * BUFFER (0 or 1), CBFLAGS = precopy_policy | suspend.  IO_FD is /dev/null,
 * or the inherited FD given with -f; DOMID is 1 unless -d says otherwise.
 * With -p every read waits in poll() first, as an event-loop parent does.
 * It prints one line:
 *
 *   ns=ELAPSED cpu_ns=CPU frames=COUNT requests=COUNT sum=CHECKSUM
 *   status=WAITSTATUS
 *
 * where ELAPSED is from just before the spawn to just after the helper
 * was reaped (CLOCK_MONOTONIC) and CPU this process's user + system time
 * over the same span (getrusage RUSAGE_SELF).  Exit status 0 when the helper exited 0
 * and every frame decoded; 1 otherwise.
 */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* Message numbers and cbflags bits: the generated table header. */
#include "../../helper_c/xensr_msgs.h"

#define MSG_LOG XENSR_MSG_LOG
#define MSG_PROGRESS XENSR_MSG_PROGRESS
#define MSG_SUSPEND XENSR_MSG_SUSPEND
#define MSG_COMPLETE XENSR_MSG_COMPLETE
#define MSG_PRECOPY_POLICY XENSR_MSG_PRECOPY_POLICY

struct decoded {
    uint64_t frames, requests, sum;
};

static int use_poll;

static int64_t cpu_ns(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000
        + ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
}

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A STRING field: u32 length with the NUL, bytes, NUL.  -1 if bad. */
static long string_at(const unsigned char *b, size_t n, size_t *off)
{
    uint32_t len;

    if (n - *off < 4)
        return -1;
    memcpy(&len, b + *off, 4);
    if (len == 0 || n - *off - 4 < len || b[*off + 4 + len - 1] != 0)
        return -1;
    *off += 4 + len;
    return (long)len - 1;
}

static int get(const unsigned char *b, size_t n, size_t *off, void *v,
               size_t size)
{
    if (n - *off < size)
        return -1;
    memcpy(v, b + *off, size);
    *off += size;
    return 0;
}

/*
 * Decode one body; *reply is set to 1 when the helper waits for a reply
 * (value in *value).  Returns -1 on a malformed body, else its type.
 */
static int decode(const unsigned char *b, size_t n, struct decoded *d,
                  int *reply, int *value)
{
    uint16_t type;
    size_t off = 0;
    uint32_t u32a, u32b;
    uint64_t u64a, u64b;
    int32_t i32a, i32b;
    long l1, l2;

    *reply = 0;
    if (get(b, n, &off, &type, 2))
        return -1;
    switch (type) {
    case MSG_LOG:
        if (get(b, n, &off, &u32a, 4) || get(b, n, &off, &u32b, 4))
            return -1;
        l1 = string_at(b, n, &off);
        l2 = l1 < 0 ? -1 : string_at(b, n, &off);
        if (l2 < 0)
            return -1;
        d->sum += u32a + u32b + (uint64_t)l1 + (uint64_t)l2;
        break;
    case MSG_PROGRESS:
        l1 = string_at(b, n, &off);
        l2 = l1 < 0 ? -1 : string_at(b, n, &off);
        if (l2 < 0 || get(b, n, &off, &u64a, 8) || get(b, n, &off, &u64b, 8))
            return -1;
        d->sum += u64a + u64b + (uint64_t)l1 + (uint64_t)l2;
        break;
    case MSG_SUSPEND:
        *reply = 1;
        *value = 1;
        break;
    case MSG_COMPLETE:
        if (get(b, n, &off, &i32a, 4) || get(b, n, &off, &i32b, 4))
            return -1;
        d->sum += (uint64_t)(i32a + i32b);
        *reply = 1;
        *value = 0;
        break;
    case MSG_PRECOPY_POLICY:
        if (get(b, n, &off, &u32a, 4) || get(b, n, &off, &u64a, 8)
            || get(b, n, &off, &u64b, 8))
            return -1;
        d->sum += u32a + u64a + u64b;
        *reply = 1;
        *value = 0;
        break;
    default:
        return -1;
    }
    if (off != n)
        return -1;
    d->frames++;
    d->requests += (uint64_t)*reply;
    return type;
}

static ssize_t read_some(int fd, unsigned char *p, size_t len)
{
    for (;;) {
        ssize_t r;

        if (use_poll) {
            struct pollfd pfd = { .fd = fd, .events = POLLIN };

            r = poll(&pfd, 1, -1);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0)
                return -1;
        }
        r = read(fd, p, len);
        if (r < 0 && errno == EINTR)
            continue;
        return r;
    }
}

static int write_all(int fd, const void *v, size_t len)
{
    const unsigned char *p = v;

    while (len) {
        ssize_t r = write(fd, p, len);

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

/* The command line: [-p] [-f FD] [-d DOMID] HELPER MODE N [BUFFER]. */
struct options {
    int given_fd;       /* -f: io fd to pass on, or -1 for /dev/null */
    const char *domid;  /* -d */
    const char *helper, *mode, *n, *buffer;
};

/* 0, or -1 after printing the usage. */
static int parse_options(int argc, char **argv, struct options *o)
{
    int argi = 1;

    o->given_fd = -1;
    o->domid = "1";
    while (argi < argc && argv[argi][0] == '-') {
        if (!strcmp(argv[argi], "-p")) {
            use_poll = 1;
            argi++;
        } else if (!strcmp(argv[argi], "-f") && argi + 1 < argc) {
            o->given_fd = atoi(argv[argi + 1]);
            argi += 2;
        } else if (!strcmp(argv[argi], "-d") && argi + 1 < argc) {
            o->domid = argv[argi + 1];
            argi += 2;
        } else {
            break;
        }
    }
    if (argc - argi < 3 || argc - argi > 4) {
        fprintf(stderr, "usage: xensr-bench-cparent [-p] [-f FD] [-d DOMID] "
                "HELPER MODE N [BUFFER]\n");
        return -1;
    }
    o->helper = argv[argi];
    o->mode = argv[argi + 1];
    o->n = argv[argi + 2];
    o->buffer = argc - argi == 4 ? argv[argi + 3] : "0";
    return 0;
}

/* Our environment plus the bench helper's three settings (in vars). */
static char **helper_env(const struct options *o, char vars[3][64])
{
    size_t nenv = 0, i;
    char **env;

    snprintf(vars[0], sizeof(vars[0]), "XENSR_BENCH_MODE=%s", o->mode);
    snprintf(vars[1], sizeof(vars[1]), "XENSR_BENCH_N=%s", o->n);
    snprintf(vars[2], sizeof(vars[2]), "XENSR_BENCH_BUFFER=%s", o->buffer);
    while (environ[nenv])
        nenv++;
    env = calloc(nenv + 4, sizeof(*env));
    if (!env)
        return NULL;
    for (i = 0; i < nenv; i++)
        env[i] = environ[i];
    for (i = 0; i < 3; i++)
        env[nenv + i] = vars[i];
    return env;
}

/*
 * The io fd, inherited by the helper: the one given (close-on-exec
 * cleared), or /dev/null opened here (*opened, for closing).  Its number
 * goes in arg.  0, or -1 on failure.
 */
static int setup_io_fd(const struct options *o, int *opened, char *arg,
                       size_t size)
{
    int fd = o->given_fd;

    if (fd >= 0) {
        int fl = fcntl(fd, F_GETFD);

        if (fl < 0 || fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC) < 0) {
            perror("io fd");
            return -1;
        }
    } else {
        fd = *opened = open("/dev/null", O_WRONLY);
        if (fd < 0)
            return -1;
    }
    snprintf(arg, size, "%d", fd);
    return 0;
}

/*
 * The two pipes and posix_spawn: to_child[1] and from_child[0] stay ours,
 * the helper's ends are closed here.  The pid, or -1.
 */
static pid_t spawn_helper(const char *path, char **hargv, char **env,
                          int to_child[2], int from_child[2])
{
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int r;

    if (pipe2(to_child, O_CLOEXEC) || pipe2(from_child, O_CLOEXEC))
        return -1;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, to_child[0], 0);
    posix_spawn_file_actions_adddup2(&fa, from_child[1], 1);
    r = posix_spawn(&pid, path, &fa, NULL, hargv, env);
    posix_spawn_file_actions_destroy(&fa);
    if (r) {
        errno = r;
        perror("posix_spawn");
        return -1;
    }
    close(to_child[0]);
    to_child[0] = -1;
    close(from_child[1]);
    from_child[1] = -1;
    return pid;
}

/*
 * Decode every whole frame in buf[*pos..have), replying to requests on
 * reply_fd.  1 once complete was decoded, 0 when more bytes are needed,
 * -1 on a malformed frame or a failed reply.
 */
static int decode_buffered(const unsigned char *buf, size_t have, size_t *pos,
                           int reply_fd, struct decoded *d)
{
    while (have - *pos >= 2) {
        uint16_t body_len;
        int reply, value, r;

        memcpy(&body_len, buf + *pos, 2);
        if (have - *pos < 2u + body_len)
            break;
        r = decode(buf + *pos + 2, body_len, d, &reply, &value);
        if (r < 0) {
            fprintf(stderr, "cparent: malformed frame at %zu\n", *pos);
            return -1;
        }
        *pos += 2u + body_len;
        if (reply && write_all(reply_fd, &value, sizeof(value)))
            return -1;
        if (r == MSG_COMPLETE)
            return 1;
    }
    return 0;
}

/* Read and answer frames until complete.  0, or -1 on any failure. */
static int serve(int reply_fd, int frame_fd, struct decoded *d)
{
    static unsigned char buf[1 << 17];
    size_t have = 0, pos = 0;

    for (;;) {
        ssize_t got;
        int r = decode_buffered(buf, have, &pos, reply_fd, d);

        if (r)
            return r > 0 ? 0 : -1;
        if (pos) {
            memmove(buf, buf + pos, have - pos);
            have -= pos;
            pos = 0;
        }
        got = read_some(frame_fd, buf + have, sizeof(buf) - have);
        if (got <= 0) {
            fprintf(stderr, "cparent: %s before complete\n",
                    got ? "read error" : "EOF");
            return -1;
        }
        have += (size_t)got;
    }
}

static void close_fd(int fd)
{
    if (fd >= 0)
        close(fd);
}

int main(int argc, char **argv)
{
    int to_child[2] = { -1, -1 };   /* [0] helper's stdin, [1] ours */
    int from_child[2] = { -1, -1 }; /* [0] ours, [1] helper's stdout */
    int io_fd = -1, status = 0, rc = 1;
    struct options o;
    struct decoded d = { 0, 0, 0 };
    char io_arg[16], cb_arg[16], vars[3][64];
    char **env = NULL;
    int64_t t0, t1, c0, c1;
    pid_t pid = -1;

    if (parse_options(argc, argv, &o))
        return 2;
    env = helper_env(&o, vars);
    if (!env || setup_io_fd(&o, &io_fd, io_arg, sizeof(io_arg)))
        goto out;
    snprintf(cb_arg, sizeof(cb_arg), "%u",
             XENSR_CBFLAG_PRECOPY_POLICY | XENSR_CBFLAG_SUSPEND);
    char *hargv[] = { (char *)o.helper, "--save-domain", io_arg, "-1",
                      (char *)o.domid, "0", cb_arg, "0", NULL };

    c0 = cpu_ns();
    t0 = now_ns();
    pid = spawn_helper(o.helper, hargv, env, to_child, from_child);
    if (pid < 0 || serve(to_child[1], from_child[0], &d))
        goto out;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    pid = -1;
    t1 = now_ns();
    c1 = cpu_ns();
    printf("ns=%lld cpu_ns=%lld frames=%llu requests=%llu sum=%llu status=%d\n",
           (long long)(t1 - t0), (long long)(c1 - c0), (unsigned long long)d.frames,
           (unsigned long long)d.requests, (unsigned long long)d.sum, status);
    rc = status == 0 ? 0 : 1;

out:
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    close_fd(to_child[0]);
    close_fd(to_child[1]);
    close_fd(from_child[0]);
    close_fd(from_child[1]);
    close_fd(io_fd);
    free(env);
    return rc;
}
