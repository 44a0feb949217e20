/*
 * xensr-bench-helper: a stand-in for xensr-save-helper used by the
 * benchmarks.  Same command line, same fds and the same frames (built by
 * the generated stubs in helper_c/xensr_msgs.c), but no libxc: it runs a
 * scripted exchange chosen by environment variables so that the parent's
 * cost can be measured on its own.
 *
 *   xensr-bench-helper --save-domain IO_FD RECV_FD DOMID XCFLAGS CBFLAGS
 *                      STREAM_TYPE
 *
 * XENSR_BENCH_MODE
 *   roundtrip  after the starting log line, N synchronous precopy_policy
 *              requests (needs precopy_policy's CBFLAGS bit), each reply must be
 *              XGS_POLICY_CONTINUE_PRECOPY (0); then complete(0, 0)
 *   flood      N frames alternating a log line (60 bytes of text) and a
 *              progress report; then complete(0, 0)
 *   complete   complete(0, 0) at once (no starting line)
 *   exit       _exit(0) at once, no frame at all
 *   hold       the starting line, one suspend request (needs suspend's
 *              CBFLAGS bit; the reply must be nonzero), then complete(0, 0)
 * XENSR_BENCH_N         the count for roundtrip and flood (default 1000)
 * XENSR_BENCH_BUFFER=1  gather frames and write them 64 KiB at a time
 *                       (flushed before each reply is awaited and at the
 *                       end) so that a flood is not paced by one write
 *                       per frame
 *
 * Exit statuses: 0 after complete was answered; 64 bad command line or
 * environment; 70 a reply had an unexpected value; 254 end of stdin
 * while waiting for a reply; 255 a write to stdout failed.
 */

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xensr_msgs.h"

#ifndef XENSR_VERSION
#define XENSR_VERSION "unknown"
#endif

#define EXIT_USAGE 64
#define EXIT_BADREPLY 70
#define EXIT_REPLY_EOF 254
#define EXIT_WRITE 255

static const char log_context[] = "libxl-save-helper";

/* 60 bytes of text, as a libxc log line of typical length. */
static const char flood_text[] =
    "xc: detail: bench flood line, sixty bytes of text 0123456789";

_Static_assert(sizeof(flood_text) == 61, "flood text must be 60 bytes");

static int buffered;
static unsigned char outbuf[1 << 16];
static size_t outlen;

static void write_all(const unsigned char *p, size_t len)
{
    while (len) {
        ssize_t r = write(STDOUT_FILENO, p, len);

        if (r < 0) {
            if (errno == EINTR)
                continue;
            _exit(EXIT_WRITE);
        }
        p += r;
        len -= (size_t)r;
    }
}

static void flush_out(void)
{
    if (outlen) {
        write_all(outbuf, outlen);
        outlen = 0;
    }
}

void xensr_helper_transmit(const unsigned char *frame, size_t len)
{
    if (!buffered) {
        write_all(frame, len);
        return;
    }
    if (outlen + len > sizeof(outbuf))
        flush_out();
    if (len > sizeof(outbuf)) {
        write_all(frame, len);
        return;
    }
    memcpy(outbuf + outlen, frame, len);
    outlen += len;
}

int xensr_helper_getreply(const char *name)
{
    unsigned char buf[sizeof(int)];
    size_t got = 0;
    int v;

    (void)name;
    flush_out();
    while (got < sizeof(buf)) {
        ssize_t r = read(STDIN_FILENO, buf + got, sizeof(buf) - got);

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            _exit(EXIT_REPLY_EOF);
        got += (size_t)r;
    }
    memcpy(&v, buf, sizeof(v));
    return v;
}

/* A decimal number of at most MAX; -1 on anything else. */
static long long number(const char *s, long long max)
{
    char *end = NULL;
    long long v;

    if (!s || !*s)
        return -1;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || *end || v < 0 || v > max)
        return -1;
    return v;
}

static int usage(const char *why)
{
    fprintf(stderr, "xensr-bench-helper: %s\n"
            "usage: xensr-bench-helper --save-domain IO_FD RECV_FD DOMID "
            "XCFLAGS CBFLAGS STREAM_TYPE\n", why);
    return EXIT_USAGE;
}

static void starting(void)
{
    char text[128];

    snprintf(text, sizeof(text), "starting save (xensr %s, table %.16s)",
             XENSR_VERSION, XENSR_TABLE_DIGEST);
    xensr_send_log(1 /* XTL_DEBUG */, 0, log_context, text);
}

static int finish(void)
{
    xensr_send_complete(0, 0);
    flush_out();
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = getenv("XENSR_BENCH_MODE");
    const char *buf_env = getenv("XENSR_BENCH_BUFFER");
    long long n = 1000, cbflags;
    long long i;
    int r;

    if (argc != 8 || strcmp(argv[1], "--save-domain"))
        return usage("wrong arguments");
    if (number(argv[2], INT_MAX) < 0 || number(argv[4], UINT_MAX) < 0
        || number(argv[5], UINT_MAX) < 0 || number(argv[7], 2) < 0
        || (strcmp(argv[3], "-1") && number(argv[3], INT_MAX) < 0))
        return usage("bad number in arguments");
    cbflags = number(argv[6], UINT_MAX);
    if (cbflags < 0)
        return usage("bad CBFLAGS");
    if (getenv("XENSR_BENCH_N")) {
        n = number(getenv("XENSR_BENCH_N"), LLONG_MAX);
        if (n < 0)
            return usage("bad XENSR_BENCH_N");
    }
    buffered = buf_env && !strcmp(buf_env, "1");
    if (!mode)
        mode = "roundtrip";

    if (!strcmp(mode, "exit"))
        _exit(0);
    if (!strcmp(mode, "complete"))
        return finish();
    if (!strcmp(mode, "roundtrip")) {
        if (!(cbflags & XENSR_CBFLAG_PRECOPY_POLICY))
            return usage("roundtrip needs precopy_policy's CBFLAGS bit");
        starting();
        for (i = 0; i < n; i++) {
            r = xensr_send_precopy_policy((unsigned)i,
                                          (unsigned long)i * 4096ul,
                                          (long)(n - i));
            if (r != 0) {
                fprintf(stderr, "xensr-bench-helper: reply %d to request "
                        "%lld, expected 0\n", r, i);
                return EXIT_BADREPLY;
            }
        }
        return finish();
    }
    if (!strcmp(mode, "flood")) {
        starting();
        for (i = 0; i < n; i++) {
            if (i & 1)
                xensr_send_progress("xc", "Frames", (unsigned long)i,
                                    (unsigned long)n);
            else
                xensr_send_log(1 /* XTL_DEBUG */, (uint32_t)-1, "xc",
                               flood_text);
        }
        return finish();
    }
    if (!strcmp(mode, "hold")) {
        if (!(cbflags & XENSR_CBFLAG_SUSPEND))
            return usage("hold needs suspend's CBFLAGS bit");
        starting();
        r = xensr_send_suspend();
        if (r == 0) {
            fprintf(stderr, "xensr-bench-helper: suspend reply 0\n");
            return EXIT_BADREPLY;
        }
        return finish();
    }
    return usage("unknown XENSR_BENCH_MODE");
}
