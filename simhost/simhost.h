/*
 * simhost: the simulated host behind the stand-in libxenctrl.so.4.X and
 * libxenguest.so.4.X (see simhost/README.md: what is simulated, the state
 * directory, the fault grammar).
 *
 * Internal header of the simulated libraries.  Layout of simhost/:
 *   ctrl.c     libxenctrl: xc_interface_open/close, the environment
 *   guest.c    libxenguest: stream I/O shared by save and restore
 *   save.c     libxenguest: xc_domain_save and the simulated guest's rounds
 *   restore.c  libxenguest: xc_domain_restore
 *   domain.c   both: the state directory (meta, memory, locks), logging,
 *              the guest's workload
 *   fault.c    both: the fault grammar and the faults' effects
 *   stream.h   the libxc migration stream (v3) layout
 *   releases.py  the Xen releases simulated: sonames, the version node,
 *              the exports (setup.py writes each library's version script)
 * Each library links its own copy of domain.c and fault.c; only the xc_*
 * entry points releases.py names are exported.  The handle type below is
 * what xenctrl.h calls xc_interface; libxenguest reads it directly, as the
 * real libxenguest reads the real libxenctrl's handle.
 *
 * The state directory (every file and meta key) and the fault grammar are
 * documented once, in simhost/README.md; xensr/testing.py reads and writes
 * the same directory and parses the same grammar.
 */
#ifndef SIMHOST_H
#define SIMHOST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <xenctrl.h>
#include <xenguest.h>
#include <xentoollog.h>

#define SIM_PAGE_SHIFT 12
#define SIM_PAGE_SIZE (1UL << SIM_PAGE_SHIFT)
#define SIM_MAX_BATCH 1024                  /* pages per PAGE_DATA record */
#define SIM_REC_LENGTH_MAX (128u << 20)     /* libxc's REC_LENGTH_MAX */
/* The Xen release simulated (SIM_XEN_MAJOR.SIM_XEN_MINOR) comes from the
 * build (simhost/releases.py's c_defines): the same as the headers'. */
#if !defined(SIM_XEN_MAJOR) || !defined(SIM_XEN_MINOR) || !defined(SIM_COLO_BACK_HEADER)
#error "build simhost with releases.py's c_defines (SIM_XEN_MAJOR, SIM_XEN_MINOR, SIM_COLO_BACK_HEADER)"
#endif
#define SIM_HANDLE_MAGIC 0x53494d48u        /* "SIMH" */
#define SIM_MAX_FAULTS 16
#define SIM_DEFAULT_MAX_PAGES (16ul << 18)  /* 16 GiB: empty targets without max_pages */

/* The environment (README.md, "Environment"): the old names are still read
 * when the new ones are absent from the environment. */
#define SIM_ENV_DIR       "XENSR_SIMHOST_DIR"
#define SIM_ENV_DIR_OLD   "XENSR_SIM_DIR"
#define SIM_ENV_FAULT     "XENSR_SIMHOST_FAULT"
#define SIM_ENV_FAULT_OLD "XENSR_SIM_FAULT"

/* ---- Fault injection (README.md, "Faults") ---- */

enum sim_fault_kind {
    FAULT_OPEN_FAIL = 1,
    FAULT_FAIL_AT_PAGE,
    FAULT_SIGNAL_AT_PAGE,
    FAULT_HANG_AT,
    FAULT_STALL,
    FAULT_LOG_FLOOD,
    FAULT_TRUNCATE_STREAM,
    FAULT_GARBAGE_CONTROL,
    FAULT_EXIT_EARLY,
};

enum sim_fault_scope {
    SCOPE_ANY = 0,
    SCOPE_SAVE,
    SCOPE_RESTORE,
};

struct sim_fault {
    enum sim_fault_kind kind;
    enum sim_fault_scope scope;
    unsigned long n;        /* page number, count, milliseconds, bytes */
    unsigned long len;      /* log-flood line length */
    int err;                /* errno for open-fail / fail-at-page */
    int sig;                /* signal-at-page */
    char point[32];         /* hang-at: callback name, or "page" */
};

struct sim_faults {
    unsigned int nr;
    struct sim_fault f[SIM_MAX_FAULTS];
};

/* ---- The handle (xc_interface) ---- */

struct xc_interface_core {
    uint32_t magic;
    xentoollog_logger *error_handler;
    xentoollog_logger *dombuild_logger;
    xentoollog_logger *logger_tofree;       /* created when NULL passed */
    const char *progress_prefix;
    char *sim_dir;
    struct sim_faults faults;
};

/* ---- Logging, libxc style (context "xc") ---- */

void sim_report(xc_interface *xch, xentoollog_level level, int code,
                const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void sim_progress_single(xc_interface *xch, const char *doing);
void sim_progress_step(xc_interface *xch, unsigned long done,
                       unsigned long total);
const char *sim_set_progress_prefix(xc_interface *xch, const char *doing);

/* XC_INTERNAL_ERROR = 1, reported as ": Internal error" like xc_reportv. */
#define SIM_IPRINTF(_f, _a...) do { int e_ = errno;                       \
        sim_report(xch, XTL_INFO, 0, _f, ## _a); errno = e_; } while (0)
#define SIM_DPRINTF(_f, _a...) do { int e_ = errno;                       \
        sim_report(xch, XTL_DETAIL, 0, _f, ## _a); errno = e_; } while (0)
#define SIM_DBGPRINTF(_f, _a...) do { int e_ = errno;                     \
        sim_report(xch, XTL_DEBUG, 0, _f, ## _a); errno = e_; } while (0)
#define SIM_ERROR(_m, _a...) do { int e_ = errno;                         \
        sim_report(xch, XTL_ERROR, 1, _m, ## _a); errno = e_; } while (0)
#define SIM_PERROR(_m, _a...) do { int e_ = errno;                        \
        sim_report(xch, XTL_ERROR, 1, _m " (%d = %s)", ## _a, e_,          \
                   strerror(e_)); errno = e_; } while (0)

/* ---- Faults ---- */

/* Parse a fault spec read from the environment variable VAR; on error log
 * (naming VAR) through xch and return -1 (EINVAL). */
int sim_faults_parse(xc_interface *xch, const char *var, const char *spec,
                     struct sim_faults *out);
/* The normal form of a parsed fault: NAME[:ARG...][@SCOPE] with every
 * argument given and as a number (snprintf's return value).  The test
 * driver prints it to compare this parser with xensr/testing.py's. */
int sim_fault_format(const struct sim_fault *f, char *buf, size_t len);
const struct sim_fault *sim_fault_find(const xc_interface *xch,
                                       enum sim_fault_kind kind,
                                       enum sim_fault_scope scope);
/* Faults that act when an operation starts: log-flood, garbage-control,
 * exit-early. */
void sim_fault_at_start(xc_interface *xch, enum sim_fault_scope scope);
/* hang-at:POINT for a callback name: blocks forever if it matches. */
void sim_fault_point(xc_interface *xch, enum sim_fault_scope scope,
                     const char *point);
void sim_hang_forever(void);
void sim_stall(xc_interface *xch, enum sim_fault_scope scope);

/* Page-count faults: pages_done is the number of pages already processed.
 * Returns how many more pages may be processed before a page fault fires
 * (ULONG_MAX if none). */
unsigned long sim_fault_page_budget(const xc_interface *xch,
                                    enum sim_fault_scope scope,
                                    unsigned long pages_done);
/* Called when pages_done reached the budget: hangs, raises a signal, or
 * sets errno, logs like libxc and returns -1. */
int sim_fault_page_fire(xc_interface *xch, enum sim_fault_scope scope,
                        unsigned long pages_done, const char *what);

/* ---- Domains ---- */

struct sim_kv {
    char *key;
    char *val;
};

struct sim_meta {
    unsigned int nr;
    struct sim_kv *kv;
};

struct sim_domain {
    uint32_t domid;
    char *dir;                 /* .../dom<N> */
    int opfd;                  /* oplock fd, -1 if not held */
    int memfd;                 /* memory file, -1 if closed */
    uint8_t *mem;              /* mapping of map_pages pages */
    unsigned long map_pages;   /* size of the mapping, in pages */
    unsigned long nr_pages;    /* current size of the memory file */
    struct sim_meta meta;      /* snapshot read at open */
};

void sim_meta_free(struct sim_meta *m);
const char *sim_meta_get(const struct sim_meta *m, const char *key);
unsigned long sim_meta_get_ul(const struct sim_meta *m, const char *key,
                              unsigned long dflt);
int sim_meta_set(struct sim_meta *m, const char *key, const char *val);
int sim_meta_set_ul(struct sim_meta *m, const char *key, unsigned long v);

/* Open dom<domid> under the state dir: take the op lock, read meta, open
 * and map memory (map_pages pages; 0 = current size).  Returns -1 with
 * errno (ESRCH no such domain, EBUSY another operation) after logging. */
int sim_domain_open(xc_interface *xch, uint32_t domid,
                    struct sim_domain *d);
void sim_domain_close(struct sim_domain *d);
/* Grow the memory file to cover nr_pages pages (<= map_pages). */
int sim_domain_grow(struct sim_domain *d, unsigned long nr_pages);
/* Update keys of the on-disk meta (read-modify-write under the meta lock);
 * pairs of key, value strings, NULL-terminated.  Also updates d->meta. */
int sim_domain_update(struct sim_domain *d, ...) __attribute__((sentinel));
int sim_domain_update_ul(struct sim_domain *d, const char *key,
                         unsigned long v);
/* Re-read the on-disk meta into d->meta (another process may have changed
 * it, e.g. the toolstack suspending the guest). */
int sim_domain_reload(struct sim_domain *d);

/* ---- The simulated guest's workload ---- */

struct sim_workload {
    uint64_t state;            /* xorshift64* state */
    unsigned long per_round;
    unsigned long lo_res, hi_res;   /* reserved pfn range [lo, hi) */
    /* Time-based dirtying (meta dirty_rate, dirty_working_set): pages per
     * second of wall time, drawn from pfns [0, working_set). */
    unsigned long rate;
    unsigned long working_set;
    double last;               /* CLOCK_MONOTONIC seconds of the last tick */
    double carry;              /* fraction of a page owed from last tick */
};

void sim_workload_init(struct sim_workload *w, const struct sim_domain *d);
/* Dirty up to per_round pages of d's memory, setting bits in bitmap. */
unsigned long sim_workload_round(struct sim_workload *w, struct sim_domain *d,
                                 unsigned long *bitmap);
/* The guest ran from the last tick until now: dirty rate x elapsed pages
 * of its working set (nothing without a dirty_rate), setting bits in
 * bitmap.  running false: only restart the clock (the guest was not
 * running since the last tick). */
unsigned long sim_workload_tick(struct sim_workload *w, struct sim_domain *d,
                                unsigned long *bitmap, bool running);
uint64_t sim_rand_next(uint64_t *state);
/* CLOCK_MONOTONIC, in seconds. */
double sim_monotonic(void);

/* Strict unsigned decimal: digits only, no sign, no overflow. */
int sim_parse_ul(const char *s, unsigned long *out);

#endif /* SIMHOST_H */
