/*
 * simxen libxenctrl.so.4.17: xc_interface_open / xc_interface_close.
 *
 * The simulated hypervisor lives in the directory named by XENSR_SIM_DIR.
 * Without it, xc_interface_open behaves as the real one on a host without
 * Xen: libxencall logs "Could not obtain handle on privileged command
 * interface" (context "xencall", level ERROR, errno ENOENT) through the
 * caller's logger and NULL is returned with errno ENOENT.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "simxen.h"

static void log_no_privcmd(xentoollog_logger *lg, int err)
{
    xtl_log(lg, XTL_ERROR, err, "xencall",
            "Could not obtain handle on privileged command interface");
}

xc_interface *xc_interface_open(xentoollog_logger *logger,
                                xentoollog_logger *dombuild_logger,
                                unsigned open_flags)
{
    xc_interface *xch = NULL;
    const char *dir, *spec;
    struct stat st;
    int err = 0;

    (void)open_flags;

    xch = calloc(1, sizeof(*xch));
    if (!xch) {
        errno = ENOMEM;
        return NULL;
    }
    xch->magic = SIM_HANDLE_MAGIC;

    if (!logger) {
        /* As libxenctrl: a stderr logger at PROGRESS when given none. */
        xch->logger_tofree = (xentoollog_logger *)
            xtl_createlogger_stdiostream(stderr, XTL_PROGRESS, 0);
        if (!xch->logger_tofree) {
            err = ENOMEM;
            goto fail;
        }
        logger = xch->logger_tofree;
    }
    xch->error_handler = logger;
    xch->dombuild_logger = dombuild_logger ? dombuild_logger : logger;

    spec = getenv("XENSR_SIM_FAULT");
    if (sim_faults_parse(xch, spec, &xch->faults)) {
        err = errno;
        goto fail;
    }

    dir = getenv("XENSR_SIM_DIR");
    if (!dir || !*dir || stat(dir, &st) || !S_ISDIR(st.st_mode)) {
        err = ENOENT;
        log_no_privcmd(logger, err);
        goto fail;
    }

    if (sim_fault_find(xch, FAULT_OPEN_FAIL, SCOPE_ANY)) {
        err = sim_fault_find(xch, FAULT_OPEN_FAIL, SCOPE_ANY)->err;
        log_no_privcmd(logger, err);
        goto fail;
    }

    xch->sim_dir = strdup(dir);
    if (!xch->sim_dir) {
        err = ENOMEM;
        goto fail;
    }
    return xch;

 fail:
    xtl_logger_destroy(xch->logger_tofree);
    free(xch->sim_dir);
    free(xch);
    errno = err;
    return NULL;
}

int xc_interface_close(xc_interface *xch)
{
    if (!xch)
        return 0;
    if (xch->magic != SIM_HANDLE_MAGIC) {
        errno = EINVAL;
        return -1;
    }
    xch->magic = 0;
    xtl_logger_destroy(xch->logger_tofree);
    free(xch->sim_dir);
    free(xch);
    return 0;
}
