/*
 * simxen: the test rig's simulated hypervisor behind libxenctrl/libxenguest.
 *
 * Internal header shared by the two simulated libraries (each links its own
 * copy of simdomain.c; only the xc_* entry points named in vers.map are
 * exported).  The handle type below is what xenctrl.h calls xc_interface;
 * libxenguest reads it directly, as the real libxenguest reads the real
 * libxenctrl's handle.
 *
 * On-disk state (the Python side, xensr/testing.py, reads and writes the same
 * format):
 *
 *   $XENSR_SIM_DIR/dom<N>/meta     key=value text, one per line, replaced
 *                                  atomically (write meta.tmp.<pid>, rename)
 *                                  under an exclusive flock(2) of
 *                                  dom<N>/lock.
 *   $XENSR_SIM_DIR/dom<N>/memory   guest memory, page (4096 bytes) P at
 *                                  offset P*4096; mmap'd MAP_SHARED.
 *   $XENSR_SIM_DIR/dom<N>/lock     meta lock (short critical sections).
 *   $XENSR_SIM_DIR/dom<N>/oplock   held (flock, non-blocking) for the whole
 *                                  of an xc_domain_save/xc_domain_restore:
 *                                  a second operation on the same domain
 *                                  fails with EBUSY.
 *
 * A domain directory is created complete (meta + memory) under a temporary
 * name and renamed to dom<N>; the rename fails if dom<N> exists, which is
 * how domids are allocated safely by concurrent creators.
 *
 * Meta keys (all written by both sides; unknown keys are preserved):
 *   domid, kind (pv|hvm|"" for an empty restore target that adopts the
 *   stream's type), vcpus (0 = adopt from the stream), nr_pages,
 *   max_pages (restore targets: highest page count accepted),
 *   state (running|paused|suspended|shutdown), store_gfn, console_gfn,
 *   store_evtchn, console_evtchn, store_domid, console_domid,
 *   start_info_pfn and p2m_pfn (PV layout, see below), logdirty (0|1),
 *   dirty_pages and seed (the workload), tsc_khz,
 *   save_iterations, save_pages, save_result, restore_result,
 *   restore_stream_type.
 *
 * PV layout: start_info (struct start_info, x86_64) at start_info_pfn holds
 * store_mfn and console.domU.mfn (identity p2m: pfn == mfn); the p2m itself
 * (8-byte entries, identity) fills the nr_pages/512 rounded up frames from
 * p2m_pfn.  The workload never dirties these pages.
 */
#ifndef SIMXEN_H
#define SIMXEN_H

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
#define SIM_XEN_MAJOR 4
#define SIM_XEN_MINOR 17
#define SIM_HANDLE_MAGIC 0x53494d58u        /* "SIMX" */
#define SIM_MAX_FAULTS 16
#define SIM_DEFAULT_MAX_PAGES (16ul << 18)  /* 16 GiB: empty targets without max_pages */

/* ---- Fault injection (XENSR_SIM_FAULT) ---- */

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

/* Parse XENSR_SIM_FAULT; on error log through xch and return -1 (EINVAL). */
int sim_faults_parse(xc_interface *xch, const char *spec,
                     struct sim_faults *out);
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

/* ---- The simulated guest's workload ---- */

struct sim_workload {
    uint64_t state;            /* xorshift64* state */
    unsigned long per_round;
    unsigned long lo_res, hi_res;   /* reserved pfn range [lo, hi) */
};

void sim_workload_init(struct sim_workload *w, const struct sim_domain *d);
/* Dirty up to per_round pages of d's memory, setting bits in bitmap. */
unsigned long sim_workload_round(struct sim_workload *w, struct sim_domain *d,
                                 unsigned long *bitmap);
uint64_t sim_rand_next(uint64_t *state);

/* ---- Stream I/O ---- */

int sim_parse_errno(const char *s, int *out);
const char *sim_errno_name(int e);

#endif /* SIMXEN_H */
