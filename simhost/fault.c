/*
 * simhost: fault injection.  Linked into both simulated libraries (see
 * simhost/README.md for the layout); nothing here is exported.
 *
 * The fault grammar -- every fault, its arguments, their defaults and its
 * effect -- is defined once, in simhost/README.md ("Faults").  This file
 * parses it (the table `faults` below, one row per fault) and fires the
 * faults; xensr/testing.py parses the same grammar, and
 * tests/simhost/test_grammar.py feeds every fault of the README to both
 * parsers and checks that they agree.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "simhost.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------------ */
/* errno and signal names (README.md, "Argument types")                */

static const struct {
    const char *name;
    int value;
} errno_names[] = {
    { "EPERM", EPERM }, { "ENOENT", ENOENT }, { "ESRCH", ESRCH },
    { "EINTR", EINTR }, { "EIO", EIO }, { "ENXIO", ENXIO },
    { "E2BIG", E2BIG }, { "EBADF", EBADF }, { "EAGAIN", EAGAIN },
    { "ENOMEM", ENOMEM }, { "EACCES", EACCES }, { "EFAULT", EFAULT },
    { "EBUSY", EBUSY }, { "EEXIST", EEXIST }, { "ENODEV", ENODEV },
    { "EINVAL", EINVAL }, { "ENOSPC", ENOSPC }, { "EPIPE", EPIPE },
    { "ERANGE", ERANGE }, { "ENOSYS", ENOSYS }, { "ENODATA", ENODATA },
    { "ETIMEDOUT", ETIMEDOUT }, { "ECONNRESET", ECONNRESET },
    { "ECANCELED", ECANCELED }, { "EOVERFLOW", EOVERFLOW },
    { "EROFS", EROFS }, { "EDQUOT", EDQUOT }, { "ENOTSUP", ENOTSUP },
};

static const struct {
    const char *name;
    int value;
} signal_names[] = {
    { "HUP", SIGHUP }, { "INT", SIGINT }, { "QUIT", SIGQUIT },
    { "ILL", SIGILL }, { "TRAP", SIGTRAP }, { "ABRT", SIGABRT },
    { "BUS", SIGBUS }, { "FPE", SIGFPE }, { "KILL", SIGKILL },
    { "USR1", SIGUSR1 }, { "SEGV", SIGSEGV }, { "USR2", SIGUSR2 },
    { "PIPE", SIGPIPE }, { "ALRM", SIGALRM }, { "TERM", SIGTERM },
    { "SYS", SIGSYS }, { "XCPU", SIGXCPU }, { "XFSZ", SIGXFSZ },
};

/* The callbacks hang-at:POINT can stop in front of. */
static const char *const hang_points[] = {
    "suspend", "postcopy", "checkpoint", "wait_checkpoint",
    "switch_qemu_logdirty", "static_data_done", "precopy_policy",
    "restore_results",
};

#define LOG_FLOOD_DEFAULT_LEN 80
#define LOG_FLOOD_MAX_LEN (64ul << 20)

static int parse_errno(const char *s, int *out)
{
    unsigned long v;
    size_t i;

    if (!sim_parse_ul(s, &v)) {
        if (v == 0 || v > 4095)
            return -1;
        *out = (int)v;
        return 0;
    }
    for (i = 0; i < ARRAY_SIZE(errno_names); i++)
        if (!strcmp(s, errno_names[i].name)) {
            *out = errno_names[i].value;
            return 0;
        }
    return -1;
}

static int parse_signal(const char *s, int *out)
{
    unsigned long v;
    size_t i;

    if (!sim_parse_ul(s, &v)) {
        if (v == 0 || v >= NSIG)
            return -1;
        *out = (int)v;
        return 0;
    }
    if (!strncmp(s, "SIG", 3))
        s += 3;
    for (i = 0; i < ARRAY_SIZE(signal_names); i++)
        if (!strcmp(s, signal_names[i].name)) {
            *out = signal_names[i].value;
            return 0;
        }
    return -1;
}

/* ------------------------------------------------------------------ */
/* The grammar: one parser per fault, called with the arguments split  */
/* at ':' and their count already checked against the row.             */

static int parse_open_fail(struct sim_fault *f, char **args, unsigned int n)
{
    f->err = ENOENT;
    return n == 1 ? parse_errno(args[0], &f->err) : 0;
}

static int parse_fail_at_page(struct sim_fault *f, char **args,
                              unsigned int n)
{
    f->err = EIO;
    if (sim_parse_ul(args[0], &f->n))
        return -1;
    return n == 2 ? parse_errno(args[1], &f->err) : 0;
}

static int parse_signal_at_page(struct sim_fault *f, char **args,
                                unsigned int n)
{
    (void)n;
    return sim_parse_ul(args[0], &f->n) || parse_signal(args[1], &f->sig)
        ? -1 : 0;
}

static int parse_hang_at(struct sim_fault *f, char **args, unsigned int n)
{
    size_t i;

    if (n == 2 && !strcmp(args[0], "page")) {
        strcpy(f->point, "page");
        return sim_parse_ul(args[1], &f->n);
    }
    if (n != 1)
        return -1;
    for (i = 0; i < ARRAY_SIZE(hang_points); i++)
        if (!strcmp(args[0], hang_points[i])) {
            strcpy(f->point, hang_points[i]);
            return 0;
        }
    return -1;
}

/* stall:MS, truncate-stream:BYTES, garbage-control:BYTES */
static int parse_count(struct sim_fault *f, char **args, unsigned int n)
{
    (void)n;
    return sim_parse_ul(args[0], &f->n);
}

static int parse_log_flood(struct sim_fault *f, char **args, unsigned int n)
{
    f->len = LOG_FLOOD_DEFAULT_LEN;
    if (sim_parse_ul(args[0], &f->n))
        return -1;
    if (n == 2 && (sim_parse_ul(args[1], &f->len) || f->len == 0 ||
                   f->len > LOG_FLOOD_MAX_LEN))
        return -1;
    return 0;
}

static int parse_nothing(struct sim_fault *f, char **args, unsigned int n)
{
    (void)f;
    (void)args;
    (void)n;
    return 0;
}

/* Which @scope suffixes a fault accepts. */
enum scope_rule {
    SCOPES_ALL,           /* none, @save or @restore */
    SCOPES_NONE,          /* no suffix: it acts before any operation */
    SCOPES_SAVE,          /* none or @save: it only means something to saves */
};

static const struct fault_syntax {
    const char *name;
    enum sim_fault_kind kind;
    unsigned int min_args, max_args;
    enum scope_rule scopes;
    int (*parse)(struct sim_fault *f, char **args, unsigned int nargs);
} faults[] = {
    { "open-fail",       FAULT_OPEN_FAIL,       0, 1, SCOPES_NONE,
      parse_open_fail },
    { "fail-at-page",    FAULT_FAIL_AT_PAGE,    1, 2, SCOPES_ALL,
      parse_fail_at_page },
    { "signal-at-page",  FAULT_SIGNAL_AT_PAGE,  2, 2, SCOPES_ALL,
      parse_signal_at_page },
    { "hang-at",         FAULT_HANG_AT,         1, 2, SCOPES_ALL,
      parse_hang_at },
    { "stall",           FAULT_STALL,           1, 1, SCOPES_ALL,
      parse_count },
    { "log-flood",       FAULT_LOG_FLOOD,       1, 2, SCOPES_ALL,
      parse_log_flood },
    { "truncate-stream", FAULT_TRUNCATE_STREAM, 1, 1, SCOPES_SAVE,
      parse_count },
    { "garbage-control", FAULT_GARBAGE_CONTROL, 1, 1, SCOPES_ALL,
      parse_count },
    { "exit-early",      FAULT_EXIT_EARLY,      0, 0, SCOPES_ALL,
      parse_nothing },
};

static const struct fault_syntax *syntax_of_name(const char *name)
{
    size_t i;

    for (i = 0; i < ARRAY_SIZE(faults); i++)
        if (!strcmp(name, faults[i].name))
            return &faults[i];
    return NULL;
}

static const struct fault_syntax *syntax_of_kind(enum sim_fault_kind kind)
{
    size_t i;

    for (i = 0; i < ARRAY_SIZE(faults); i++)
        if (faults[i].kind == kind)
            return &faults[i];
    return NULL;
}

/* Cut "@save"/"@restore" off the end of item. */
static int split_scope(char *item, enum sim_fault_scope *scope)
{
    char *at = strrchr(item, '@');

    *scope = SCOPE_ANY;
    if (!at)
        return 0;
    *at++ = '\0';
    if (!strcmp(at, "save"))
        *scope = SCOPE_SAVE;
    else if (!strcmp(at, "restore"))
        *scope = SCOPE_RESTORE;
    else
        return -1;
    return 0;
}

static bool scope_allowed(enum scope_rule rule, enum sim_fault_scope scope)
{
    switch (rule) {
    case SCOPES_NONE:
        return scope == SCOPE_ANY;
    case SCOPES_SAVE:
        return scope != SCOPE_RESTORE;
    default:
        return true;
    }
}

/* Parse one NAME[:ARG...][@SCOPE] item (modified in place). */
static int parse_one_fault(char *item, struct sim_fault *f)
{
    char *args[4] = { NULL };
    unsigned int nargs = 0;
    const struct fault_syntax *syn;
    char *p;

    memset(f, 0, sizeof(*f));
    if (split_scope(item, &f->scope))
        return -1;

    for (p = strchr(item, ':'); p; p = strchr(p, ':')) {
        *p++ = '\0';
        if (nargs == ARRAY_SIZE(args))
            return -1;
        args[nargs++] = p;
    }

    syn = syntax_of_name(item);
    if (!syn || nargs < syn->min_args || nargs > syn->max_args ||
        !scope_allowed(syn->scopes, f->scope))
        return -1;
    f->kind = syn->kind;
    return syn->parse(f, args, nargs);
}

int sim_faults_parse(xc_interface *xch, const char *var, const char *spec,
                     struct sim_faults *out)
{
    char *copy = NULL, *item, *save = NULL;
    int rc = -1;

    memset(out, 0, sizeof(*out));
    if (!spec || !*spec)
        return 0;

    copy = strdup(spec);
    if (!copy) {
        errno = ENOMEM;
        goto out;
    }

    for (item = strtok_r(copy, ",", &save); item;
         item = strtok_r(NULL, ",", &save)) {
        char shown[128];

        snprintf(shown, sizeof(shown), "%s", item);
        if (out->nr == SIM_MAX_FAULTS) {
            SIM_ERROR("%s: more than %d faults", var, SIM_MAX_FAULTS);
            errno = EINVAL;
            goto out;
        }
        if (parse_one_fault(item, &out->f[out->nr])) {
            SIM_ERROR("%s: bad fault \"%s\"", var, shown);
            errno = EINVAL;
            goto out;
        }
        out->nr++;
    }
    rc = 0;

 out:
    free(copy);
    return rc;
}

int sim_fault_format(const struct sim_fault *f, char *buf, size_t len)
{
    const struct fault_syntax *syn = syntax_of_kind(f->kind);
    const char *scope = f->scope == SCOPE_SAVE ? "@save"
        : f->scope == SCOPE_RESTORE ? "@restore" : "";

    if (!syn)
        return snprintf(buf, len, "?");
    switch (f->kind) {
    case FAULT_OPEN_FAIL:
        return snprintf(buf, len, "%s:%d%s", syn->name, f->err, scope);
    case FAULT_FAIL_AT_PAGE:
        return snprintf(buf, len, "%s:%lu:%d%s", syn->name, f->n, f->err,
                        scope);
    case FAULT_SIGNAL_AT_PAGE:
        return snprintf(buf, len, "%s:%lu:%d%s", syn->name, f->n, f->sig,
                        scope);
    case FAULT_HANG_AT:
        if (!strcmp(f->point, "page"))
            return snprintf(buf, len, "%s:page:%lu%s", syn->name, f->n,
                            scope);
        return snprintf(buf, len, "%s:%s%s", syn->name, f->point, scope);
    case FAULT_LOG_FLOOD:
        return snprintf(buf, len, "%s:%lu:%lu%s", syn->name, f->n, f->len,
                        scope);
    case FAULT_EXIT_EARLY:
        return snprintf(buf, len, "%s%s", syn->name, scope);
    default:
        return snprintf(buf, len, "%s:%lu%s", syn->name, f->n, scope);
    }
}

/* ------------------------------------------------------------------ */
/* Firing                                                              */

static bool scope_matches(enum sim_fault_scope fs, enum sim_fault_scope op)
{
    return fs == SCOPE_ANY || fs == op;
}

const struct sim_fault *sim_fault_find(const xc_interface *xch,
                                       enum sim_fault_kind kind,
                                       enum sim_fault_scope scope)
{
    unsigned int i;

    for (i = 0; i < xch->faults.nr; i++) {
        const struct sim_fault *f = &xch->faults.f[i];

        if (f->kind == kind && scope_matches(f->scope, scope))
            return f;
    }
    return NULL;
}

void sim_hang_forever(void)
{
    for (;;)
        pause();
}

static void write_all_ignoring_errors(int fd, const void *buf, size_t len)
{
    const char *p = buf;

    while (len) {
        ssize_t r = write(fd, p, len);

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return;
        p += r;
        len -= r;
    }
}

/* log-flood:N:LEN -- N DEBUG lines of exactly LEN bytes. */
static void flood_log(xc_interface *xch, const struct sim_fault *f)
{
    char *line = malloc(f->len + 1);
    unsigned long l;

    if (!line)
        return;
    for (l = 0; l < f->n; l++) {
        int k = snprintf(line, f->len + 1, "log flood line %lu ", l);

        if (k < 0)
            break;
        if ((unsigned long)k < f->len)
            memset(line + k, 'x', f->len - k);
        line[f->len] = '\0';
        xtl_log(xch->error_handler, XTL_DEBUG, -1, "xc", "%s", line);
    }
    free(line);
}

/* garbage-control:BYTES -- the top byte of each xorshift64* output. */
static void write_garbage(const struct sim_fault *f)
{
    uint64_t st = 0x5eed;
    unsigned char buf[4096];
    unsigned long left = f->n;

    while (left) {
        size_t chunk = left < sizeof(buf) ? left : sizeof(buf), j;

        for (j = 0; j < chunk; j++)
            buf[j] = (unsigned char)(sim_rand_next(&st) >> 56);
        write_all_ignoring_errors(1, buf, chunk);
        left -= chunk;
    }
}

void sim_fault_at_start(xc_interface *xch, enum sim_fault_scope scope)
{
    unsigned int i;

    for (i = 0; i < xch->faults.nr; i++) {
        const struct sim_fault *f = &xch->faults.f[i];

        if (!scope_matches(f->scope, scope))
            continue;
        if (f->kind == FAULT_LOG_FLOOD)
            flood_log(xch, f);
        else if (f->kind == FAULT_GARBAGE_CONTROL)
            write_garbage(f);
    }

    if (sim_fault_find(xch, FAULT_EXIT_EARLY, scope))
        _exit(0);
}

void sim_fault_point(xc_interface *xch, enum sim_fault_scope scope,
                     const char *point)
{
    unsigned int i;

    for (i = 0; i < xch->faults.nr; i++) {
        const struct sim_fault *f = &xch->faults.f[i];

        if (f->kind == FAULT_HANG_AT && scope_matches(f->scope, scope) &&
            !strcmp(f->point, point))
            sim_hang_forever();
    }
}

void sim_stall(xc_interface *xch, enum sim_fault_scope scope)
{
    const struct sim_fault *f = sim_fault_find(xch, FAULT_STALL, scope);
    struct timespec ts;

    if (!f || !f->n)
        return;
    ts.tv_sec = f->n / 1000;
    ts.tv_nsec = (long)(f->n % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static bool is_page_fault(const struct sim_fault *f)
{
    return f->kind == FAULT_FAIL_AT_PAGE || f->kind == FAULT_SIGNAL_AT_PAGE ||
        (f->kind == FAULT_HANG_AT && !strcmp(f->point, "page"));
}

unsigned long sim_fault_page_budget(const xc_interface *xch,
                                    enum sim_fault_scope scope,
                                    unsigned long pages_done)
{
    unsigned long best = ULONG_MAX;
    unsigned int i;

    for (i = 0; i < xch->faults.nr; i++) {
        const struct sim_fault *f = &xch->faults.f[i];

        if (!scope_matches(f->scope, scope) || !is_page_fault(f))
            continue;
        if (f->n < pages_done)
            continue;               /* already passed */
        if (f->n - pages_done < best)
            best = f->n - pages_done;
    }
    return best;
}

int sim_fault_page_fire(xc_interface *xch, enum sim_fault_scope scope,
                        unsigned long pages_done, const char *what)
{
    unsigned int i;

    for (i = 0; i < xch->faults.nr; i++) {
        const struct sim_fault *f = &xch->faults.f[i];

        if (!scope_matches(f->scope, scope) || f->n != pages_done)
            continue;
        if (f->kind == FAULT_HANG_AT && !strcmp(f->point, "page"))
            sim_hang_forever();
        if (f->kind == FAULT_SIGNAL_AT_PAGE) {
            raise(f->sig);
            /* A signal that did not end the process (ignored or handled):
             * carry on as if nothing happened. */
            continue;
        }
        if (f->kind == FAULT_FAIL_AT_PAGE) {
            errno = f->err;
            SIM_PERROR("%s", what);
            errno = f->err;
            return -1;
        }
    }
    return 0;
}
