/*
 * simhost libxenctrl.so.4.17: xc_interface_open / xc_interface_close (the
 * layout of simhost/ is in simhost.h, what is simulated in README.md).
 *
 * The simulated host lives in the directory named by XENSR_SIMHOST_DIR
 * (or the old name XENSR_SIM_DIR).  Without it, xc_interface_open behaves
 * as the real one on a host without Xen: libxencall logs "Could not obtain
 * handle on privileged command interface" (context "xencall", level
 * ERROR, errno ENOENT) through the caller's logger and NULL is returned
 * with errno ENOENT.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "simhost.h"

static void log_no_privcmd(xentoollog_logger *lg, int err)
{
    xtl_log(lg, XTL_ERROR, err, "xencall",
            "Could not obtain handle on privileged command interface");
}

/* The value of the variable NAME, else of its old name OLD: the new name
 * wins whenever it is present, even empty.  *used names the one read. */
static const char *getenv_alias(const char *name, const char *old,
                                const char **used)
{
    const char *v = getenv(name);

    *used = name;
    if (v)
        return v;
    *used = old;
    return getenv(old);
}

/* Faults, the state directory and open-fail; an errno value on failure. */
static int attach_host(xc_interface *xch)
{
    const char *dir, *spec, *var;
    const struct sim_fault *open_fail;
    struct stat st;

    spec = getenv_alias(SIM_ENV_FAULT, SIM_ENV_FAULT_OLD, &var);
    if (sim_faults_parse(xch, var, spec, &xch->faults))
        return errno;

    dir = getenv_alias(SIM_ENV_DIR, SIM_ENV_DIR_OLD, &var);
    if (!dir || !*dir || stat(dir, &st) || !S_ISDIR(st.st_mode)) {
        log_no_privcmd(xch->error_handler, ENOENT);
        return ENOENT;
    }

    open_fail = sim_fault_find(xch, FAULT_OPEN_FAIL, SCOPE_ANY);
    if (open_fail) {
        log_no_privcmd(xch->error_handler, open_fail->err);
        return open_fail->err;
    }

    xch->sim_dir = strdup(dir);
    return xch->sim_dir ? 0 : ENOMEM;
}

xc_interface *xc_interface_open(xentoollog_logger *logger,
                                xentoollog_logger *dombuild_logger,
                                unsigned open_flags)
{
    xc_interface *xch;
    int err;

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
            free(xch);
            errno = ENOMEM;
            return NULL;
        }
        logger = xch->logger_tofree;
    }
    xch->error_handler = logger;
    xch->dombuild_logger = dombuild_logger ? dombuild_logger : logger;

    err = attach_host(xch);
    if (!err)
        return xch;

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
