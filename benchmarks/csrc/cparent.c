/*
 * xensr-bench-cparent: the C floor of the benchmarks.  It plays the
 * parent's side of the helper protocol (PROTOCOL.md B§4, B§5) with
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

int main(int argc, char **argv)
{
    int to_child[2] = { -1, -1 };   /* [0] helper's stdin, [1] ours */
    int from_child[2] = { -1, -1 }; /* [0] ours, [1] helper's stdout */
    int io_fd = -1, status = 0, rc = 1, r, done = 0;
    static unsigned char buf[1 << 17];
    size_t have = 0, pos = 0;
    posix_spawn_file_actions_t fa;
    struct decoded d = { 0, 0, 0 };
    char io_arg[16], cb_arg[16], dom_arg[16] = "1";
    int given_fd = -1;
    char env_mode[64], env_n[64], env_buf[32];
    char **env = NULL;
    int64_t t0, t1, c0, c1;
    pid_t pid = -1;
    size_t nenv = 0, i;
    int argi = 1;

    while (argi < argc && argv[argi][0] == '-') {
        if (!strcmp(argv[argi], "-p")) {
            use_poll = 1;
            argi++;
        } else if (!strcmp(argv[argi], "-f") && argi + 1 < argc) {
            given_fd = atoi(argv[argi + 1]);
            argi += 2;
        } else if (!strcmp(argv[argi], "-d") && argi + 1 < argc) {
            snprintf(dom_arg, sizeof(dom_arg), "%s", argv[argi + 1]);
            argi += 2;
        } else {
            break;
        }
    }
    if (argc - argi < 3 || argc - argi > 4) {
        fprintf(stderr, "usage: xensr-bench-cparent [-p] [-f FD] [-d DOMID] "
                "HELPER MODE N [BUFFER]\n");
        return 2;
    }
    snprintf(env_mode, sizeof(env_mode), "XENSR_BENCH_MODE=%s", argv[argi + 1]);
    snprintf(env_n, sizeof(env_n), "XENSR_BENCH_N=%s", argv[argi + 2]);
    snprintf(env_buf, sizeof(env_buf), "XENSR_BENCH_BUFFER=%s",
             argc - argi == 4 ? argv[argi + 3] : "0");
    while (environ[nenv])
        nenv++;
    env = calloc(nenv + 4, sizeof(*env));
    if (!env)
        goto out;
    for (i = 0; i < nenv; i++)
        env[i] = environ[i];
    env[nenv] = env_mode;
    env[nenv + 1] = env_n;
    env[nenv + 2] = env_buf;

    /* The io fd: /dev/null or the one given, inherited by the helper. */
    if (given_fd >= 0) {
        int fl = fcntl(given_fd, F_GETFD);

        if (fl < 0 || fcntl(given_fd, F_SETFD, fl & ~FD_CLOEXEC) < 0) {
            perror("io fd");
            goto out;
        }
        snprintf(io_arg, sizeof(io_arg), "%d", given_fd);
    } else {
        io_fd = open("/dev/null", O_WRONLY);
        if (io_fd < 0)
            goto out;
        snprintf(io_arg, sizeof(io_arg), "%d", io_fd);
    }
    snprintf(cb_arg, sizeof(cb_arg), "%u",
             XENSR_CBFLAG_PRECOPY_POLICY | XENSR_CBFLAG_SUSPEND);
    char *hargv[] = { argv[argi], "--save-domain", io_arg, "-1", dom_arg, "0",
                      cb_arg, "0", NULL };

    c0 = cpu_ns();
    t0 = now_ns();
    if (pipe2(to_child, O_CLOEXEC) || pipe2(from_child, O_CLOEXEC))
        goto out;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, to_child[0], 0);
    posix_spawn_file_actions_adddup2(&fa, from_child[1], 1);
    r = posix_spawn(&pid, argv[argi], &fa, NULL, hargv, env);
    posix_spawn_file_actions_destroy(&fa);
    if (r) {
        pid = -1;
        errno = r;
        perror("posix_spawn");
        goto out;
    }
    close(to_child[0]);
    to_child[0] = -1;
    close(from_child[1]);
    from_child[1] = -1;

    while (!done) {
        uint16_t body_len;
        int reply, value;
        ssize_t got;

        /* Decode every whole frame in the buffer. */
        while (have - pos >= 2) {
            memcpy(&body_len, buf + pos, 2);
            if (have - pos < 2u + body_len)
                break;
            r = decode(buf + pos + 2, body_len, &d, &reply, &value);
            if (r < 0) {
                fprintf(stderr, "cparent: malformed frame at %zu\n", pos);
                goto out;
            }
            pos += 2u + body_len;
            if (reply && write_all(to_child[1], &value, sizeof(value)))
                goto out;
            if (r == MSG_COMPLETE) {
                done = 1;
                break;
            }
        }
        if (done)
            break;
        if (pos) {
            memmove(buf, buf + pos, have - pos);
            have -= pos;
            pos = 0;
        }
        got = read_some(from_child[0], buf + have, sizeof(buf) - have);
        if (got <= 0) {
            fprintf(stderr, "cparent: %s before complete\n",
                    got ? "read error" : "EOF");
            goto out;
        }
        have += (size_t)got;
    }
    while ((r = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
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
    if (to_child[0] >= 0)
        close(to_child[0]);
    if (to_child[1] >= 0)
        close(to_child[1]);
    if (from_child[0] >= 0)
        close(from_child[0]);
    if (from_child[1] >= 0)
        close(from_child[1]);
    if (io_fd >= 0)
        close(io_fd);
    free(env);
    return rc;
}
