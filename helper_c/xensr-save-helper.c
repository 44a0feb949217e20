/*
 * xensr-save-helper: run one xc_domain_save() or xc_domain_restore() on
 * behalf of a toolstack, turning every libxc callback, log line and
 * progress report into a frame for the parent.
 *
 * A drop-in for the libxl-save-helper of the Xen release it is built for
 * (4.17 to 4.21; XENSR_XEN_RELEASE): same command line, same file
 * descriptors, same frames, same replies, same exit statuses and SIGTERM
 * behaviour (docs/protocol.md §2 to §9).
 *
 * Layout of helper_c/:
 *   xensr-save-helper.c  this program: command line, logger, signals, the
 *                        two libxc calls, transmit/getreply for the stubs
 *   xensr_msgs.[ch]      generated from codegen/table.py: one sender per
 *                        message, the libxc callback stubs, the cbflags
 *                        that install them, message numbers
 *   frame.c              fixed frame building (buffer, put, fit), included
 *                        by xensr_msgs.c
 *
 * Usage:
 *   xensr-save-helper --save-domain IO_FD RECV_FD DOMID XCFLAGS CBFLAGS
 *                     STREAM_TYPE
 *   xensr-save-helper --restore-domain IO_FD SEND_BACK_FD DOMID
 *                     STORE_EVTCHN STORE_DOMID CONSOLE_EVTCHN CONSOLE_DOMID
 *                     CBFLAGS STREAM_TYPE
 *   xensr-save-helper --help | --version
 *
 * All arguments are decimal numbers: digits only, no sign, no spaces, no
 * trailing characters, within the range of the C type they fill:
 *   IO_FD                  3 .. INT_MAX (0-2 are the control pipes)
 *   RECV_FD, SEND_BACK_FD  -1 (no back channel) or 3 .. INT_MAX
 *   DOMID, XCFLAGS, CBFLAGS, STORE_EVTCHN, CONSOLE_EVTCHN  0 .. 4294967295
 *   STORE_DOMID, CONSOLE_DOMID                            0 .. 65535
 *   STREAM_TYPE            0 plain, 1 Remus, 2 COLO
 * CBFLAGS bits that name no callback of the operation are ignored, as
 * libxl's helper does; the bits of xensr's extension messages (see
 * codegen/table.py) are ones that libxl never sets.
 *
 * File descriptors: 0 replies from the parent (one native int per
 * request), 1 frames to the parent, 2 the parent's stderr (diagnostics),
 * IO_FD the libxc stream, RECV_FD / SEND_BACK_FD the COLO back channel.
 *
 * Exit statuses:
 *   0    `complete` was sent and answered: the operation ran to its end,
 *        libxc's result (retval, errno) travelled in `complete`; also
 *        after --help and --version
 *   64   bad command line (EX_USAGE): usage on stderr, nothing on stdout
 *   254  end of stdin while waiting for a reply
 *   255  failure: xc_interface_open failed, a write to stdout or a read
 *        from stdin failed, or a setup call failed (logged as a frame
 *        when possible, else on stderr)
 *   killed by SIGTERM   during a restore (SIGTERM keeps its default
 *                       action there); during a save SIGTERM makes libxc
 *                       fail and unwind, and the helper still completes
 *   killed by SIGPIPE   the parent closed its end of stdout
 *
 * Where this helper deliberately differs from libxl's (on paths that a
 * libxl parent never takes):
 *   - a bad command line gives status 64 and a message, not an assertion;
 *   - log text that would not fit a frame is truncated, not an abort;
 *   - a log line that cannot be formatted for lack of memory is sent as a
 *     fixed text rather than ending the helper;
 *   - reads of replies and writes of frames are retried on EINTR (libxl's
 *     helper exits 254 / 255), so a SIGTERM that arrives while a reply is
 *     awaited lets the reply arrive and libxc unwind;
 *   - if the SIGTERM handler cannot dup2, it reports that on stderr and
 *     exits 255 instead of aborting;
 *   - the logger's destroy hook does nothing (the logger is static);
 *   - SIGPIPE is reset to its default action and unblocked, as libxl does
 *     in the child before exec, so the helper behaves the same whatever
 *     its parent left in place.
 *   - with XENSR_PRECOPY_DOWNTIME_LIMIT_MS in the environment a live save
 *     uses xensr's downtime policy (below, "precopy policy from the
 *     environment") unless the parent answers precopy_policy; a bad
 *     XENSR_PRECOPY_* value fails a save with status 255.
 *
 * The first frame is the DEBUG log "starting save (xensr VERSION, table
 * DIGEST16)" or "starting restore (...)", context "libxl-save-helper",
 * where DIGEST16 is the first 16 hex digits of the message table digest,
 * so that a parent can tell which build of the table it is talking to.
 */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xenctrl.h>
#include <xenguest.h>
#include <xentoollog.h>

#include "xensr_msgs.h"

#ifndef XENSR_VERSION
#define XENSR_VERSION "unknown"
#endif
#ifndef XENSR_XEN_RELEASE
#define XENSR_XEN_RELEASE "4.x"
#endif

#define PROGRAM "xensr-save-helper"

#define EXIT_USAGE 64           /* EX_USAGE */
#define EXIT_REPLY_EOF 254      /* libxl's helper: exit(-2) */
#define EXIT_FAILURE_STATUS 255 /* libxl's helper: exit(-1) */

/*
 * Context of the helper's own log lines.  libxl's helper uses this one,
 * and a libxl parent and log readers expect it.
 */
static const char log_context[] = "libxl-save-helper";

/*----- logger: every line and progress report becomes a frame -----*/

__attribute__((format(printf, 5, 0)))
static void logger_vmessage(xentoollog_logger *lg, xentoollog_level level,
                            int errnoval, const char *context,
                            const char *format, va_list al)
{
    char *text = NULL;
    int r;

    (void)lg;
    r = vasprintf(&text, format, al);
    if (r < 0) {
        xensr_send_log(level, (uint32_t)errnoval, context,
                       "(log message lost: out of memory formatting it)");
        return;
    }
    /* The stub truncates text that would not fit in a frame. */
    xensr_send_log(level, (uint32_t)errnoval, context, text);
    free(text);
}

static void logger_progress(xentoollog_logger *lg, const char *context,
                            const char *doing_what, int percent,
                            unsigned long done, unsigned long total)
{
    (void)lg;
    (void)percent;  /* the parent's logger recomputes it */
    xensr_send_progress(context, doing_what, done, total);
}

static void logger_destroy(xentoollog_logger *lg)
{
    /* Static: nothing to free.  libxc never destroys a caller's logger. */
    (void)lg;
}

static xentoollog_logger logger = {
    logger_vmessage,
    logger_progress,
    logger_destroy,
};

/*----- globals -----*/

static xc_interface *xch;
static int io_fd = -1;
static int unwritable_fd = -1;

/*----- failure -----*/

__attribute__((noreturn, format(printf, 2, 3)))
static void fail(int errnoval, const char *fmt, ...)
{
    va_list al;

    va_start(al, fmt);
    xtl_logv(&logger, XTL_ERROR, errnoval, log_context, fmt, al);
    va_end(al);
    exit(EXIT_FAILURE_STATUS);
}

/* A failure on the control pipes: it cannot be sent as a frame. */
__attribute__((noreturn))
static void fail_pipe(const char *what, int errnoval)
{
    fprintf(stderr, PROGRAM ": %s: %s\n", what, strerror(errnoval));
    exit(EXIT_FAILURE_STATUS);
}

/*----- the two functions the generated stubs need -----*/

void xensr_helper_transmit(const unsigned char *frame, size_t len)
{
    while (len) {
        ssize_t r = write(STDOUT_FILENO, frame, len);

        if (r < 0) {
            if (errno == EINTR)
                continue;
            fail_pipe("write to parent (stdout)", errno);
        }
        if (r == 0)
            fail_pipe("write to parent (stdout) wrote nothing", EIO);
        frame += r;
        len -= (size_t)r;
    }
}

int xensr_helper_getreply(const char *name)
{
    int value;
    unsigned char *p = (unsigned char *)&value;
    size_t left = sizeof(value);

    while (left) {
        ssize_t r = read(STDIN_FILENO, p, left);

        if (r < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr,
                    PROGRAM ": read of the reply to %s from parent (stdin): %s\n",
                    name, strerror(errno));
            exit(EXIT_FAILURE_STATUS);
        }
        if (r == 0) {
            fprintf(stderr,
                    PROGRAM ": end of stdin while waiting for the reply to %s\n",
                    name);
            exit(EXIT_REPLY_EOF);
        }
        p += r;
        left -= (size_t)r;
    }
    return value;
}

/*----- signals -----*/

/*
 * Save: libxc's save loop runs straight through and must run its error
 * path to put the guest back (resume it, turn log-dirty off).  So SIGTERM
 * replaces the io fd with a read-only /dev/null: the write in progress is
 * interrupted or cut short and the next one fails with EBADF, and libxc
 * unwinds.  Only async-signal-safe calls here.  Writing a frame is out of
 * the question (it could interleave with one being written).
 */
static void save_sigterm_handler(int sig)
{
    static const char msg[] =
        PROGRAM ": SIGTERM: dup2 over the io fd failed, giving up\n";
    int esave = errno;
    int r;

    (void)sig;
    do {
        r = dup2(unwritable_fd, io_fd);
    } while (r < 0 && errno == EINTR);
    if (r != io_fd) {
        ssize_t w = write(STDERR_FILENO, msg, sizeof(msg) - 1);

        (void)w;
        _exit(EXIT_FAILURE_STATUS);
    }
    errno = esave;
}

/* handler: save_sigterm_handler for a save, SIG_DFL for a restore. */
static void setup_signals(void (*handler)(int))
{
    struct sigaction sa;
    sigset_t mask;
    int r;

    unwritable_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (unwritable_fd < 0)
        fail(errno, "open /dev/null for reading");

    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    /* No SA_RESTART: a blocked write on the io fd must be interrupted. */
    sa.sa_handler = handler;
    r = sigaction(SIGTERM, &sa, NULL);
    if (r)
        fail(errno, "sigaction SIGTERM failed");

    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    r = sigprocmask(SIG_UNBLOCK, &mask, NULL);
    if (r)
        fail(errno, "sigprocmask unblock SIGTERM failed");
}

/*
 * Before the first frame: SIGPIPE to its default action, unblocked, as
 * libxl sets it in the child before exec, so that a parent that went away
 * ends the helper the same way whatever signal state it was given.
 */
static void reset_sigpipe(void)
{
    struct sigaction sa;
    sigset_t mask;

    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&mask);
    sigaddset(&mask, SIGPIPE);
    /* Neither can fail with these arguments; nothing to report it on yet. */
    if (sigaction(SIGPIPE, &sa, NULL) || sigprocmask(SIG_UNBLOCK, &mask, NULL))
        fail_pipe("resetting SIGPIPE", errno);
}

/*----- command line -----*/

enum arg_kind {
    ARG_FD,         /* 3 .. INT_MAX */
    ARG_FD_OR_NONE, /* -1 or 3 .. INT_MAX */
    ARG_U32,        /* 0 .. UINT32_MAX */
    ARG_DOMID,      /* 0 .. 65535 (domid_t) */
    ARG_STREAM,     /* xc_stream_type_t: 0 .. 2 */
};

/* A mode: its option and how many arguments follow it. */
struct mode_spec {
    const char *option;
    int nargs;
};

enum { MODE_SAVE, MODE_RESTORE };

static const struct mode_spec modes[] = {
    [MODE_SAVE] = { "--save-domain", 6 },
    [MODE_RESTORE] = { "--restore-domain", 9 },
};

/* The arguments after the mode, taken one by one by run_save/run_restore. */
struct cmdline {
    const char *option;
    char **next;
};

static const char usage_text[] =
    "usage: " PROGRAM " --save-domain IO_FD RECV_FD DOMID XCFLAGS CBFLAGS STREAM_TYPE\n"
    "       " PROGRAM " --restore-domain IO_FD SEND_BACK_FD DOMID STORE_EVTCHN STORE_DOMID CONSOLE_EVTCHN CONSOLE_DOMID CBFLAGS STREAM_TYPE\n"
    "       " PROGRAM " --help | --version\n"
    "\n"
    "Runs one xc_domain_save or xc_domain_restore for a toolstack (a drop-in for\n"
    "the libxl-save-helper of Xen " XENSR_XEN_RELEASE ", the release it is built for):\n"
    "frames to the parent on stdout, its replies on stdin, the libxc stream on\n"
    "IO_FD.  Arguments are decimal: file descriptors\n"
    "3 or more (RECV_FD and SEND_BACK_FD may be -1 for none), DOMID, XCFLAGS,\n"
    "CBFLAGS and event channels 0 to 4294967295, STORE_DOMID and CONSOLE_DOMID\n"
    "0 to 65535, STREAM_TYPE 0 (plain), 1 (Remus) or 2 (COLO).\n"
    "\n"
    "Exit status: 0 completed (libxc's result is sent to the parent), 64 usage\n"
    "error, 254 end of stdin while waiting for a reply, 255 failure.  During a\n"
    "save SIGTERM makes libxc unwind and the helper completes; during a restore\n"
    "SIGTERM kills it.\n";

__attribute__((noreturn, format(printf, 1, 2)))
static void usage_error(const char *fmt, ...)
{
    va_list al;

    fputs(PROGRAM ": ", stderr);
    va_start(al, fmt);
    vfprintf(stderr, fmt, al);
    va_end(al);
    fputs("\n", stderr);
    fputs(usage_text, stderr);
    exit(EXIT_USAGE);
}

/* Digits only, at least one, value <= max.  0 on success, -1 otherwise. */
static int parse_decimal(const char *s, unsigned long long max,
                         unsigned long long *out)
{
    unsigned long long v = 0;

    if (!*s)
        return -1;
    for (; *s; s++) {
        unsigned d;

        if (*s < '0' || *s > '9')
            return -1;
        d = (unsigned)(*s - '0');
        if (d > max || v > (max - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static long long parse_arg(const char *mode, enum arg_kind kind,
                           const char *name, const char *s)
{
    unsigned long long v;
    int r;

    switch (kind) {
    case ARG_FD_OR_NONE:
        if (!strcmp(s, "-1"))
            return -1;
        /* fall through */
    case ARG_FD:
        r = parse_decimal(s, INT_MAX, &v);
        if (r || v < 3)
            usage_error("%s: %s must be %sa file descriptor number from 3 to %d, not '%s'",
                        mode, name, kind == ARG_FD_OR_NONE ? "-1 or " : "",
                        INT_MAX, s);
        return (long long)v;
    case ARG_U32:
        r = parse_decimal(s, UINT32_MAX, &v);
        if (r)
            usage_error("%s: %s must be a decimal number from 0 to %lu, not '%s'",
                        mode, name, (unsigned long)UINT32_MAX, s);
        return (long long)v;
    case ARG_DOMID:
        r = parse_decimal(s, UINT16_MAX, &v);
        if (r)
            usage_error("%s: %s must be a decimal number from 0 to %u, not '%s'",
                        mode, name, UINT16_MAX, s);
        return (long long)v;
    case ARG_STREAM:
        r = parse_decimal(s, XC_STREAM_COLO, &v);
        if (r)
            usage_error("%s: %s must be 0 (plain), 1 (Remus) or 2 (COLO), not '%s'",
                        mode, name, s);
        return (long long)v;
    }
    usage_error("%s: %s: internal error: unknown argument kind", mode, name);
}

/* The next argument, named NAME in messages, checked as KIND. */
static long long take_arg(struct cmdline *cl, enum arg_kind kind,
                          const char *name)
{
    return parse_arg(cl->option, kind, name, *cl->next++);
}

/*
 * Returns MODE_SAVE or MODE_RESTORE with cl set to its arguments (their
 * number checked; each is parsed where it is used); exits for --help,
 * --version and any error.
 */
static int parse_cmdline(int argc, char **argv, struct cmdline *cl)
{
    const struct mode_spec *m = NULL;
    int mode;

    if (argc < 2)
        usage_error("no mode given");
    if (!strcmp(argv[1], "--help") && argc == 2) {
        fputs(usage_text, stdout);
        exit(0);
    }
    if (!strcmp(argv[1], "--version") && argc == 2) {
        printf(PROGRAM " %s (message table sha256:%s)\n", XENSR_VERSION,
               XENSR_TABLE_DIGEST);
        exit(0);
    }
    for (mode = 0; mode < (int)(sizeof(modes) / sizeof(modes[0])); mode++) {
        if (!strcmp(argv[1], modes[mode].option)) {
            m = &modes[mode];
            break;
        }
    }
    if (!m)
        usage_error("unknown mode '%s'", argv[1]);
    if (argc - 2 != m->nargs)
        usage_error("%s takes %d arguments, not %d", m->option, m->nargs,
                    argc - 2);
    cl->option = m->option;
    cl->next = argv + 2;
    return mode;
}

/*----- precopy policy from the environment (xensr extension) -----*/

/*
 * A live save's precopy policy aiming at a downtime, configured by the
 * environment the helper inherits (xl passes its own), so that a stock
 * toolstack gets it by pointing LIBXL_SAVE_HELPER here.  The same policy
 * as xensr.policy.DowntimePolicy (its docstring explains the estimate):
 *
 *   XENSR_PRECOPY_DOWNTIME_LIMIT_MS   1 .. 3600000; setting it turns the
 *                                     policy on
 *   XENSR_PRECOPY_MAX_ROUNDS          1 .. 1000000 (default 30)
 *   XENSR_PRECOPY_MAX_TIME_MS         1 .. 2147483647 (default: none)
 *   XENSR_PRECOPY_ON_NO_CONVERGENCE   stop-and-copy (default) or abort
 *
 * A value that does not parse, or another variable set without the limit,
 * fails the save before libxenguest runs (an ERROR frame naming it, exit
 * 255): never a silent default.  When the parent set the precopy_policy
 * cbflag (xensr's Python parent with a policy), the parent's answers
 * decide and the environment only has to be valid.
 */

#define POLICY_MAX_ROUNDS_DEFAULT 30
#define POLICY_FLOOR_PAGES 50
#define POLICY_MIN_SAMPLE_PAGES 1024
#define POLICY_SHRINK_RATIO 0.95

static struct {
    /* configuration */
    double limit;               /* seconds */
    unsigned long max_rounds;
    double max_time;            /* seconds; 0: no limit */
    int abort_on_no_convergence;
    /* state of the save */
    double t0, round_start, sample, average;
    int have_rate, within;
    unsigned long round_pages, rounds;
    long last_count;
} env_policy;

static double monotonic_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* NAME's value as a number from 1 to max; 0 if NAME is unset. */
static unsigned long long env_number(const char *name, unsigned long long max)
{
    const char *v = getenv(name);
    unsigned long long n;

    if (!v)
        return 0;
    if (parse_decimal(v, max, &n) || n < 1)
        fail(EINVAL, "%s='%s': must be a whole number from 1 to %llu", name, v, max);
    return n;
}

static const char *policy_word(int decision)
{
    return decision == XGS_POLICY_ABORT ? "abort"
        : decision == XGS_POLICY_STOP_AND_COPY ? "stop and copy" : "continue";
}

static int policy_answer(struct precopy_stats stats, double now, double estimate,
                         int decision, const char *reason)
{
    double rate = env_policy.sample < env_policy.average
        ? env_policy.sample : env_policy.average;

    xtl_log(&logger, decision == XGS_POLICY_CONTINUE_PRECOPY ? XTL_DETAIL : XTL_INFO,
            0, log_context,
            "precopy policy: iteration %u, dirty %ld, %.3f s, rate %.0f pages/s, "
            "estimate %.1f ms: %s (%s)", stats.iteration, stats.dirty_count,
            now - env_policy.t0, env_policy.have_rate ? rate : 0.0,
            estimate < 0 ? -1.0 : estimate * 1000, policy_word(decision), reason);
    return decision;
}

static int policy_give_up(struct precopy_stats stats, double now, double estimate)
{
    if (env_policy.abort_on_no_convergence)
        return policy_answer(stats, now, estimate, XGS_POLICY_ABORT,
                             "no convergence: abort");
    return policy_answer(stats, now, estimate, XGS_POLICY_STOP_AND_COPY,
                         "no convergence: stop and copy anyway");
}

/* libxenguest's question before the first round, then twice per round. */
static int env_precopy_policy(struct precopy_stats stats, void *data)
{
    double now = monotonic_now(), seconds, estimate = -1, rate;
    long count = stats.dirty_count, last;

    (void)data;
    if (stats.iteration == 0 && count >= 0) {
        env_policy.t0 = env_policy.round_start = now;
        env_policy.round_pages = (unsigned long)count;
        env_policy.last_count = count;
        env_policy.rounds = 0;
        env_policy.have_rate = env_policy.within = 0;
        return policy_answer(stats, now, -1, XGS_POLICY_CONTINUE_PRECOPY,
                             "first round: every page");
    }

    if (count < 0) {
        /* The round just ended: a rate sample, then the limits. */
        env_policy.rounds++;
        seconds = now - env_policy.round_start;
        if (env_policy.round_pages > 0 && seconds > 0 &&
            (!env_policy.have_rate || env_policy.round_pages >= POLICY_MIN_SAMPLE_PAGES)) {
            env_policy.sample = (double)env_policy.round_pages / seconds;
            env_policy.average = env_policy.have_rate
                ? (env_policy.average + env_policy.sample) / 2 : env_policy.sample;
            env_policy.have_rate = 1;
        }
        if (env_policy.rounds >= env_policy.max_rounds ||
            (env_policy.max_time > 0 && now - env_policy.t0 >= env_policy.max_time)) {
            if (env_policy.within)
                return policy_answer(stats, now, -1, XGS_POLICY_STOP_AND_COPY,
                                     "within the limit, stopped at a limit");
            return policy_give_up(stats, now, -1);
        }
        return policy_answer(stats, now, -1, XGS_POLICY_CONTINUE_PRECOPY,
                             "round sent, count not known yet");
    }

    last = env_policy.last_count;
    env_policy.last_count = count;
    env_policy.round_start = now;
    env_policy.round_pages = (unsigned long)count;
    if (env_policy.have_rate) {
        rate = env_policy.sample < env_policy.average
            ? env_policy.sample : env_policy.average;
        estimate = (double)count / rate;
    }
    env_policy.within = estimate >= 0 && estimate <= env_policy.limit;
    if (count == 0)
        return policy_answer(stats, now, 0, XGS_POLICY_STOP_AND_COPY, "nothing dirty");
    if (env_policy.within) {
        if (count >= POLICY_FLOOR_PAGES && (double)count <= (double)last * POLICY_SHRINK_RATIO)
            return policy_answer(stats, now, estimate, XGS_POLICY_CONTINUE_PRECOPY,
                                 "within the limit, still shrinking");
        return policy_answer(stats, now, estimate, XGS_POLICY_STOP_AND_COPY,
                             "within the limit");
    }
    if (env_policy.max_time > 0 && now - env_policy.t0 >= env_policy.max_time)
        return policy_give_up(stats, now, estimate);
    return policy_answer(stats, now, estimate, XGS_POLICY_CONTINUE_PRECOPY,
                         "above the limit");
}

/*
 * Read the environment; install the policy unless the parent answers
 * precopy_policy itself.
 */
static void setup_env_policy(struct save_callbacks *cb)
{
    static const char limit_var[] = "XENSR_PRECOPY_DOWNTIME_LIMIT_MS";
    static const char *const others[] = {
        "XENSR_PRECOPY_MAX_ROUNDS", "XENSR_PRECOPY_MAX_TIME_MS",
        "XENSR_PRECOPY_ON_NO_CONVERGENCE",
    };
    unsigned long long limit_ms, rounds, time_ms;
    const char *onc;
    unsigned i;

    limit_ms = env_number(limit_var, 3600000);
    rounds = env_number("XENSR_PRECOPY_MAX_ROUNDS", 1000000);
    time_ms = env_number("XENSR_PRECOPY_MAX_TIME_MS", INT_MAX);
    onc = getenv("XENSR_PRECOPY_ON_NO_CONVERGENCE");
    if (onc && strcmp(onc, "stop-and-copy") && strcmp(onc, "abort"))
        fail(EINVAL, "XENSR_PRECOPY_ON_NO_CONVERGENCE='%s': must be stop-and-copy or abort",
             onc);
    if (!limit_ms) {
        for (i = 0; i < sizeof(others) / sizeof(others[0]); i++)
            if (getenv(others[i]))
                fail(EINVAL, "%s is set but %s is not: set the downtime limit to use "
                     "xensr's precopy policy", others[i], limit_var);
        return;
    }

    env_policy.limit = (double)limit_ms / 1000;
    env_policy.max_rounds = rounds ? (unsigned long)rounds : POLICY_MAX_ROUNDS_DEFAULT;
    env_policy.max_time = (double)time_ms / 1000;
    env_policy.abort_on_no_convergence = onc && !strcmp(onc, "abort");

    if (cb->precopy_policy) {
        xtl_log(&logger, XTL_INFO, 0, log_context,
                "%s is set but the toolstack answers precopy_policy: its answers decide",
                limit_var);
        return;
    }
    cb->precopy_policy = env_precopy_policy;
    xtl_log(&logger, XTL_INFO, 0, log_context,
            "precopy policy from the environment: downtime limit %llu ms, at most %lu "
            "rounds, %s%llu ms, then %s", limit_ms, env_policy.max_rounds,
            time_ms ? "at most " : "no time limit", time_ms,
            env_policy.abort_on_no_convergence ? "abort" : "stop and copy");
}

/*----- the operation -----*/

/* After the command line was parsed, before the first frame. */
static void startup(const char *op)
{
    reset_sigpipe();
    /* First 16 hex digits of the table digest: enough to tell builds apart. */
    xtl_log(&logger, XTL_DEBUG, 0, log_context,
            "starting %s (xensr %s, table %.16s)", op, XENSR_VERSION,
            XENSR_TABLE_DIGEST);

    xch = xc_interface_open(&logger, &logger, 0);
    if (!xch)
        fail(errno, "xc_interface_open failed");
}

/*
 * r is libxc's return value; errnoval the errno it left, taken right
 * after the call returned.
 */
__attribute__((noreturn))
static void complete(int r, int errnoval)
{
    if (!r)
        errnoval = 0; /* a success's errno means nothing */
    xtl_log(&logger, XTL_DEBUG, errnoval, log_context, "complete r=%d", r);
    xensr_send_complete(r, errnoval);
    xc_interface_close(xch);
    exit(0);
}

/*
 * libxenguest asserts that the callbacks a stream type needs are there (a
 * parent's bad CBFLAGS would kill the helper with SIGABRT): fail first,
 * with a frame saying why.  (That an HVM save has switch_qemu_logdirty is
 * asserted too, but the domain's type is only known inside libxenguest.)
 */
static void check_save_callbacks(const struct save_callbacks *cb,
                                 xc_stream_type_t stream_type, unsigned cbflags)
{
    if (!cb->suspend)
        fail(EINVAL, "a save needs the suspend callback (CBFLAGS %#x)", cbflags);
    if (stream_type != XC_STREAM_PLAIN && !(cb->checkpoint && cb->postcopy))
        fail(EINVAL, "a Remus or COLO save needs the checkpoint and postcopy "
             "callbacks (CBFLAGS %#x)", cbflags);
    if (stream_type == XC_STREAM_COLO && !cb->wait_checkpoint)
        fail(EINVAL, "a COLO save needs the wait_checkpoint callback (CBFLAGS %#x)",
             cbflags);
}

static void check_restore_callbacks(const struct restore_callbacks *cb,
                                    xc_stream_type_t stream_type, unsigned cbflags)
{
    if (stream_type != XC_STREAM_PLAIN && !cb->checkpoint)
        fail(EINVAL, "a Remus or COLO restore needs the checkpoint callback "
             "(CBFLAGS %#x)", cbflags);
    if (stream_type == XC_STREAM_COLO
        && !(cb->suspend && cb->postcopy && cb->wait_checkpoint && cb->restore_results))
        fail(EINVAL, "a COLO restore needs the suspend, postcopy, wait_checkpoint "
             "and restore_results callbacks (CBFLAGS %#x)", cbflags);
}

/* --save-domain IO_FD RECV_FD DOMID XCFLAGS CBFLAGS STREAM_TYPE */
__attribute__((noreturn))
static void run_save(struct cmdline *cl)
{
    static struct save_callbacks cb;
    int recv_fd;
    uint32_t dom, flags;
    unsigned cbflags;
    xc_stream_type_t stream_type;
    int r, errnoval;

    io_fd = (int)take_arg(cl, ARG_FD, "IO_FD");
    recv_fd = (int)take_arg(cl, ARG_FD_OR_NONE, "RECV_FD");
    dom = (uint32_t)take_arg(cl, ARG_U32, "DOMID");
    flags = (uint32_t)take_arg(cl, ARG_U32, "XCFLAGS");
    cbflags = (unsigned)take_arg(cl, ARG_U32, "CBFLAGS");
    stream_type = (xc_stream_type_t)take_arg(cl, ARG_STREAM, "STREAM_TYPE");
    xensr_setcallbacks_save(&cb, cbflags);

    startup("save");
    setup_env_policy(&cb);
    check_save_callbacks(&cb, stream_type, cbflags);
    setup_signals(save_sigterm_handler);

    r = xc_domain_save(xch, io_fd, dom, flags, &cb, stream_type, recv_fd);
    errnoval = errno;
    complete(r, errnoval);
}

/*
 * --restore-domain IO_FD SEND_BACK_FD DOMID STORE_EVTCHN STORE_DOMID
 *                  CONSOLE_EVTCHN CONSOLE_DOMID CBFLAGS STREAM_TYPE
 */
__attribute__((noreturn))
static void run_restore(struct cmdline *cl)
{
    static struct restore_callbacks cb;
    int send_back_fd;
    uint32_t dom;
    unsigned store_evtchn, console_evtchn, cbflags;
    domid_t store_domid, console_domid;
    xc_stream_type_t stream_type;
    unsigned long store_mfn = 0, console_mfn = 0;
    int r, errnoval;

    io_fd = (int)take_arg(cl, ARG_FD, "IO_FD");
    send_back_fd = (int)take_arg(cl, ARG_FD_OR_NONE, "SEND_BACK_FD");
    dom = (uint32_t)take_arg(cl, ARG_U32, "DOMID");
    store_evtchn = (unsigned)take_arg(cl, ARG_U32, "STORE_EVTCHN");
    store_domid = (domid_t)take_arg(cl, ARG_DOMID, "STORE_DOMID");
    console_evtchn = (unsigned)take_arg(cl, ARG_U32, "CONSOLE_EVTCHN");
    console_domid = (domid_t)take_arg(cl, ARG_DOMID, "CONSOLE_DOMID");
    cbflags = (unsigned)take_arg(cl, ARG_U32, "CBFLAGS");
    stream_type = (xc_stream_type_t)take_arg(cl, ARG_STREAM, "STREAM_TYPE");
    xensr_setcallbacks_restore(&cb, cbflags);

    startup("restore");
    check_restore_callbacks(&cb, stream_type, cbflags);
    setup_signals(SIG_DFL);

    r = xc_domain_restore(xch, io_fd, dom, store_evtchn, &store_mfn,
                          store_domid, console_evtchn, &console_mfn,
                          console_domid, stream_type, &cb, send_back_fd);
    errnoval = errno;
    /*
     * Always, even after a failure (libxc leaves both at 0 then): the
     * parent waits for the results before it accepts completion.
     */
    xensr_send_restore_results(store_mfn, console_mfn);
    complete(r, errnoval);
}

int main(int argc, char **argv)
{
    struct cmdline cl;
    int mode = parse_cmdline(argc, argv, &cl);

    if (mode == MODE_SAVE)
        run_save(&cl);
    run_restore(&cl);
}
