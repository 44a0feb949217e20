/*
 * The simulated host's test driver (tests/simhost/): calls the simulated
 * libxenctrl/libxenguest directly, for tests of what no libxl helper
 * exercises (the precopy_policy callback, a NULL logger), and feeds fault
 * specs to the C fault parser (simhost/fault.c, compiled in) so that
 * tests/simhost/test_grammar.py can compare it with the Python one.
 * Output on stdout, one event per line:
 *   log LEVEL ERRNO CONTEXT: MESSAGE
 *   progress CONTEXT DOING DONE TOTAL
 *   policy ITERATION TOTAL_WRITTEN DIRTY_COUNT -> DECISION
 *   callback NAME [ARGS]
 *   rc RC errno ERRNO
 *   parsed FAULT[,FAULT...]     (parse-fault: the normal form of each)
 *   rejected
 *
 * usage: driver save DOMID XCFLAGS OUTFILE POLICY
 *          POLICY: none | simple | stop | abort-at:N | continue-until:N
 *        driver open-null
 *        driver parse-fault SPEC...
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xenctrl.h>
#include <xenguest.h>
#include <xentoollog.h>

#include "simhost.h"

static void vmessage(struct xentoollog_logger *lg, xentoollog_level level,
                     int errnoval, const char *context, const char *format,
                     va_list al)
{
    (void)lg;
    printf("log %d %d %s: ", (int)level, errnoval, context ? context : "");
    vprintf(format, al);
    printf("\n");
}

static void progress(struct xentoollog_logger *lg, const char *context,
                     const char *doing_what, int percent, unsigned long done,
                     unsigned long total)
{
    (void)lg;
    (void)percent;
    printf("progress %s %s %lu %lu\n", context, doing_what, done, total);
}

static void destroy(struct xentoollog_logger *lg)
{
    (void)lg;
}

static xentoollog_logger logger = { vmessage, progress, destroy };

static const char *policy_mode = "none";
static unsigned int policy_calls;

static int policy(struct precopy_stats stats, void *data)
{
    int decision;
    unsigned long n;

    (void)data;
    policy_calls++;
    if (!strcmp(policy_mode, "stop"))
        decision = XGS_POLICY_STOP_AND_COPY;
    else if (!strncmp(policy_mode, "abort-at:", 9)) {
        n = strtoul(policy_mode + 9, NULL, 10);
        decision = policy_calls >= n ? XGS_POLICY_ABORT
                                     : XGS_POLICY_CONTINUE_PRECOPY;
    } else if (!strncmp(policy_mode, "continue-until:", 15)) {
        n = strtoul(policy_mode + 15, NULL, 10);
        decision = stats.iteration >= n ? XGS_POLICY_STOP_AND_COPY
                                        : XGS_POLICY_CONTINUE_PRECOPY;
    } else    /* simple: libxenguest's own */
        decision = ((stats.dirty_count >= 0 && stats.dirty_count < 50) ||
                    stats.iteration >= 5) ? XGS_POLICY_STOP_AND_COPY
                                          : XGS_POLICY_CONTINUE_PRECOPY;
    printf("policy %u %lu %ld -> %d\n", stats.iteration, stats.total_written,
           stats.dirty_count, decision);
    return decision;
}

static int suspend(void *data)
{
    (void)data;
    printf("callback suspend\n");
    return 1;
}

static int logdirty(uint32_t domid, unsigned enable, void *data)
{
    (void)data;
    printf("callback switch_qemu_logdirty %u %u\n", domid, enable);
    return 0;
}

/* A quiet logger: parse errors are reported as "rejected" only. */
static void quiet_vmessage(struct xentoollog_logger *lg,
                           xentoollog_level level, int errnoval,
                           const char *context, const char *format,
                           va_list al)
{
    (void)lg;
    (void)level;
    (void)errnoval;
    (void)context;
    (void)format;
    (void)al;
}

static xentoollog_logger quiet = { quiet_vmessage, progress, destroy };

/* Each spec through simhost/fault.c's parser, one output line per spec. */
static int parse_faults(int nspecs, char **specs)
{
    struct xc_interface_core handle = { .error_handler = &quiet };
    struct sim_faults faults;
    char buf[128];
    unsigned int i;
    int s;

    for (s = 0; s < nspecs; s++) {
        if (sim_faults_parse(&handle, "XENSR_SIMHOST_FAULT", specs[s],
                             &faults)) {
            printf("rejected\n");
            continue;
        }
        printf("parsed ");
        for (i = 0; i < faults.nr; i++) {
            sim_fault_format(&faults.f[i], buf, sizeof(buf));
            printf("%s%s", i ? "," : "", buf);
        }
        printf("\n");
    }
    return 0;
}

static int open_null(void)
{
    xc_interface *xch = xc_interface_open(NULL, NULL, 0);
    int e = errno;

    printf("open %s errno %d\n", xch ? "ok" : "failed", xch ? 0 : e);
    printf("close %d\n", xc_interface_close(xch));
    printf("close-null %d\n", xc_interface_close(NULL));
    return 0;
}

int main(int argc, char **argv)
{
    struct save_callbacks cb = { 0 };
    xc_interface *xch = NULL;
    int fd = -1, rc, e;

    setvbuf(stdout, NULL, _IOLBF, 0);

    if (argc == 2 && !strcmp(argv[1], "open-null"))
        return open_null();
    if (argc >= 2 && !strcmp(argv[1], "parse-fault"))
        return parse_faults(argc - 2, argv + 2);

    if (argc != 6 || strcmp(argv[1], "save")) {
        fprintf(stderr, "usage: driver save DOMID XCFLAGS OUTFILE POLICY\n"
                        "       driver open-null\n"
                        "       driver parse-fault SPEC...\n");
        return 2;
    }

    xch = xc_interface_open(&logger, &logger, 0);
    if (!xch) {
        printf("open failed errno %d\n", errno);
        return 1;
    }
    fd = open(argv[4], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        perror("open");
        return 1;
    }
    policy_mode = argv[5];
    cb.suspend = suspend;
    cb.switch_qemu_logdirty = logdirty;
    if (strcmp(policy_mode, "none"))
        cb.precopy_policy = policy;

    rc = xc_domain_save(xch, fd, (uint32_t)strtoul(argv[2], NULL, 10),
                        (uint32_t)strtoul(argv[3], NULL, 10), &cb,
                        XC_STREAM_PLAIN, -1);
    e = rc ? errno : 0;
    printf("rc %d errno %d\n", rc, e);
    close(fd);
    xc_interface_close(xch);
    return 0;
}
