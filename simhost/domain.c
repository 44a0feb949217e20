/*
 * simhost: the simulated host's domains (the state directory), its log
 * helpers and the guest's workload.  Linked into both simulated libraries
 * (simhost/ctrl.c builds libxenctrl, guest.c + save.c + restore.c build
 * libxenguest; fault.c holds fault injection); nothing here is exported
 * (see releases.py).  The state directory format -- every file and meta
 * key -- is documented once, in simhost/README.md ("State directory").
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "simhost.h"

/* ------------------------------------------------------------------ */
/* Logging                                                             */

void sim_report(xc_interface *xch, xentoollog_level level, int code,
                const char *fmt, ...)
{
    int saved_errno = errno;
    char msg[1024];
    va_list ap;
    size_t l;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    /* Like xc_reportv: no trailing newline. */
    l = strlen(msg);
    if (l && msg[l - 1] == '\n')
        msg[l - 1] = '\0';

    if (xch && xch->error_handler)
        xtl_log(xch->error_handler, level, -1, "xc", "%s%s%s", msg,
                code ? ": " : "", code ? "Internal error" : "");

    errno = saved_errno;
}

const char *sim_set_progress_prefix(xc_interface *xch, const char *doing)
{
    const char *old = xch->progress_prefix;

    xch->progress_prefix = doing;
    return old;
}

void sim_progress_single(xc_interface *xch, const char *doing)
{
    int saved_errno = errno;

    xtl_progress(xch->error_handler, "xc", doing, 0, 0);
    errno = saved_errno;
}

void sim_progress_step(xc_interface *xch, unsigned long done,
                       unsigned long total)
{
    int saved_errno = errno;

    if (xch->progress_prefix)
        xtl_progress(xch->error_handler, "xc", xch->progress_prefix,
                     done, total);
    errno = saved_errno;
}

/* ------------------------------------------------------------------ */
/* Numbers                                                             */

int sim_parse_ul(const char *s, unsigned long *out)
{
    char *end;
    unsigned long v;

    if (!s || !*s || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Meta                                                                */

void sim_meta_free(struct sim_meta *m)
{
    unsigned int i;

    for (i = 0; i < m->nr; i++) {
        free(m->kv[i].key);
        free(m->kv[i].val);
    }
    free(m->kv);
    m->kv = NULL;
    m->nr = 0;
}

const char *sim_meta_get(const struct sim_meta *m, const char *key)
{
    unsigned int i;

    for (i = 0; i < m->nr; i++)
        if (!strcmp(m->kv[i].key, key))
            return m->kv[i].val;
    return NULL;
}

unsigned long sim_meta_get_ul(const struct sim_meta *m, const char *key,
                              unsigned long dflt)
{
    const char *v = sim_meta_get(m, key);
    unsigned long r;

    if (!v || sim_parse_ul(v, &r))
        return dflt;
    return r;
}

int sim_meta_set(struct sim_meta *m, const char *key, const char *val)
{
    struct sim_kv *kv;
    char *k = NULL, *v = NULL;
    unsigned int i;

    v = strdup(val);
    if (!v)
        return -1;
    for (i = 0; i < m->nr; i++)
        if (!strcmp(m->kv[i].key, key)) {
            free(m->kv[i].val);
            m->kv[i].val = v;
            return 0;
        }

    k = strdup(key);
    kv = realloc(m->kv, (m->nr + 1) * sizeof(*kv));
    if (!k || !kv) {
        free(k);
        free(v);
        if (kv)
            m->kv = kv;
        errno = ENOMEM;
        return -1;
    }
    m->kv = kv;
    m->kv[m->nr].key = k;
    m->kv[m->nr].val = v;
    m->nr++;
    return 0;
}

int sim_meta_set_ul(struct sim_meta *m, const char *key, unsigned long v)
{
    char buf[32];

    snprintf(buf, sizeof(buf), "%lu", v);
    return sim_meta_set(m, key, buf);
}

static int meta_parse(const char *text, struct sim_meta *m)
{
    const char *p = text;

    while (*p) {
        const char *nl = strchr(p, '\n'), *eq;
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        char *line = strndup(p, len);
        int r = 0;

        if (!line)
            return -1;
        eq = strchr(line, '=');
        if (eq && eq != line) {
            line[eq - line] = '\0';
            r = sim_meta_set(m, line, line + (eq - line) + 1);
        }
        free(line);
        if (r)
            return -1;
        p += len;
        if (*p == '\n')
            p++;
    }
    return 0;
}

static int meta_read(const char *dir, struct sim_meta *m)
{
    char path[PATH_MAX];
    char *buf = NULL;
    size_t cap = 0, len = 0;
    int fd = -1, rc = -1;

    snprintf(path, sizeof(path), "%s/meta", dir);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        goto out;

    for (;;) {
        ssize_t r;

        if (len + 4097 > cap) {
            char *nb = realloc(buf, cap + 8192);

            if (!nb) {
                errno = ENOMEM;
                goto out;
            }
            buf = nb;
            cap += 8192;
        }
        r = read(fd, buf + len, cap - len - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            goto out;
        if (r == 0)
            break;
        len += r;
    }
    buf[len] = '\0';
    sim_meta_free(m);
    rc = meta_parse(buf, m);

 out:
    if (fd >= 0)
        close(fd);
    free(buf);
    return rc;
}

static int meta_write(const char *dir, const struct sim_meta *m)
{
    char path[PATH_MAX], tmp[PATH_MAX];
    FILE *f = NULL;
    unsigned int i;
    int fd = -1, rc = -1;

    snprintf(path, sizeof(path), "%s/meta", dir);
    snprintf(tmp, sizeof(tmp), "%s/meta.tmp.%ld", dir, (long)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        goto out;
    f = fdopen(fd, "w");
    if (!f)
        goto out;
    fd = -1;
    for (i = 0; i < m->nr; i++)
        fprintf(f, "%s=%s\n", m->kv[i].key, m->kv[i].val);
    if (fflush(f) || ferror(f))
        goto out;
    if (fclose(f)) {
        f = NULL;
        goto out;
    }
    f = NULL;
    if (rename(tmp, path))
        goto out;
    rc = 0;

 out:
    if (f)
        fclose(f);
    if (fd >= 0)
        close(fd);
    if (rc) {
        int e = errno;

        unlink(tmp);
        errno = e;
    }
    return rc;
}

static int lock_meta(const char *dir, int how)
{
    char path[PATH_MAX];
    int fd;

    snprintf(path, sizeof(path), "%s/lock", dir);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    while (flock(fd, how) < 0) {
        if (errno != EINTR) {
            int e = errno;

            close(fd);
            errno = e;
            return -1;
        }
    }
    return fd;
}

int sim_domain_update(struct sim_domain *d, ...)
{
    struct sim_meta m = { 0 };
    const char *k, *v;
    va_list ap;
    int lfd = -1, rc = -1;

    lfd = lock_meta(d->dir, LOCK_EX);
    if (lfd < 0)
        goto out;
    if (meta_read(d->dir, &m))
        goto out;

    va_start(ap, d);
    while ((k = va_arg(ap, const char *)) != NULL) {
        v = va_arg(ap, const char *);
        if (sim_meta_set(&m, k, v) || sim_meta_set(&d->meta, k, v)) {
            va_end(ap);
            goto out;
        }
    }
    va_end(ap);

    if (meta_write(d->dir, &m))
        goto out;
    rc = 0;

 out:
    sim_meta_free(&m);
    if (lfd >= 0) {
        int e = errno;

        close(lfd);
        errno = e;
    }
    return rc;
}

int sim_domain_update_ul(struct sim_domain *d, const char *key,
                         unsigned long v)
{
    char buf[32];

    snprintf(buf, sizeof(buf), "%lu", v);
    return sim_domain_update(d, key, buf, NULL);
}

/* ------------------------------------------------------------------ */
/* Domains                                                             */

/* Take dom<N>/oplock for the whole operation: EBUSY if someone has it. */
static int take_oplock(struct sim_domain *d)
{
    char path[PATH_MAX];

    snprintf(path, sizeof(path), "%s/oplock", d->dir);
    d->opfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (d->opfd < 0)
        return -1;
    if (flock(d->opfd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK)
            errno = EBUSY;
        return -1;
    }
    return 0;
}

/* A snapshot of dom<N>/meta, under the shared meta lock. */
static int read_meta_locked(struct sim_domain *d)
{
    int lfd = lock_meta(d->dir, LOCK_SH), rc;

    if (lfd < 0)
        return -1;
    rc = meta_read(d->dir, &d->meta);
    if (rc && errno == ENOENT)
        errno = ESRCH;
    close(lfd);
    return rc;
}

int sim_domain_reload(struct sim_domain *d)
{
    return read_meta_locked(d);
}

/* Open and map dom<N>/memory.  A restore target may grow up to max_pages
 * (an empty target without max_pages up to SIM_DEFAULT_MAX_PAGES), so the
 * mapping covers that much; a domain with a kind has the size it has. */
static int map_memory(struct sim_domain *d)
{
    char path[PATH_MAX];
    struct stat st;
    unsigned long map_pages;
    void *p;

    snprintf(path, sizeof(path), "%s/memory", d->dir);
    d->memfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (d->memfd < 0 || fstat(d->memfd, &st))
        return -1;
    d->nr_pages = st.st_size >> SIM_PAGE_SHIFT;

    map_pages = d->nr_pages;
    if (sim_meta_get_ul(&d->meta, "max_pages", 0) > map_pages)
        map_pages = sim_meta_get_ul(&d->meta, "max_pages", 0);
    else if (!*(sim_meta_get(&d->meta, "kind") ?: "") &&
             !sim_meta_get(&d->meta, "max_pages") &&
             map_pages < SIM_DEFAULT_MAX_PAGES)
        map_pages = SIM_DEFAULT_MAX_PAGES;    /* an empty target */
    if (!map_pages)
        return 0;

    p = mmap(NULL, map_pages << SIM_PAGE_SHIFT, PROT_READ | PROT_WRITE,
             MAP_SHARED, d->memfd, 0);
    if (p == MAP_FAILED)
        return -1;
    d->mem = p;
    d->map_pages = map_pages;
    return 0;
}

int sim_domain_open(xc_interface *xch, uint32_t domid, struct sim_domain *d)
{
    struct stat st;
    int e;

    memset(d, 0, sizeof(*d));
    d->domid = domid;
    d->opfd = -1;
    d->memfd = -1;

    if (asprintf(&d->dir, "%s/dom%u", xch->sim_dir, domid) < 0) {
        d->dir = NULL;
        errno = ENOMEM;
        return -1;
    }
    if (stat(d->dir, &st) || !S_ISDIR(st.st_mode))
        errno = ESRCH;
    else if (!take_oplock(d) && !read_meta_locked(d) && !map_memory(d))
        return 0;

    e = errno;
    sim_domain_close(d);
    errno = e;
    return -1;
}

void sim_domain_close(struct sim_domain *d)
{
    int e = errno;

    if (d->mem)
        munmap(d->mem, d->map_pages << SIM_PAGE_SHIFT);
    d->mem = NULL;
    if (d->memfd >= 0)
        close(d->memfd);
    d->memfd = -1;
    if (d->opfd >= 0)
        close(d->opfd);
    d->opfd = -1;
    sim_meta_free(&d->meta);
    free(d->dir);
    d->dir = NULL;
    errno = e;
}

int sim_domain_grow(struct sim_domain *d, unsigned long nr_pages)
{
    if (nr_pages <= d->nr_pages)
        return 0;
    if (nr_pages > d->map_pages) {
        errno = ENOMEM;
        return -1;
    }
    if (ftruncate(d->memfd, (off_t)nr_pages << SIM_PAGE_SHIFT))
        return -1;
    d->nr_pages = nr_pages;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Workload                                                            */

uint64_t sim_rand_next(uint64_t *state)
{
    uint64_t x = *state ? *state : 0x9e3779b97f4a7c15ull;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dull;
}

void sim_workload_init(struct sim_workload *w, const struct sim_domain *d)
{
    const char *kind = sim_meta_get(&d->meta, "kind");
    unsigned long seed = sim_meta_get_ul(&d->meta, "seed", 1);

    memset(w, 0, sizeof(*w));
    w->state = 0x9e3779b97f4a7c15ull ^ ((uint64_t)seed * 0xbf58476d1ce4e5b9ull);
    w->per_round = sim_meta_get_ul(&d->meta, "dirty_pages", 0);
    w->rate = sim_meta_get_ul(&d->meta, "dirty_rate", 0);
    w->working_set = sim_meta_get_ul(&d->meta, "dirty_working_set", 0);
    if (!w->working_set || w->working_set > d->nr_pages)
        w->working_set = d->nr_pages;
    w->last = sim_monotonic();

    if (kind && !strcmp(kind, "pv")) {
        unsigned long si = sim_meta_get_ul(&d->meta, "start_info_pfn",
                                           ULONG_MAX);
        unsigned long p2m = sim_meta_get_ul(&d->meta, "p2m_pfn", ULONG_MAX);
        unsigned long frames = (d->nr_pages + 511) / 512;

        if (si != ULONG_MAX && p2m != ULONG_MAX) {
            w->lo_res = si < p2m ? si : p2m;
            w->hi_res = si + 1 > p2m + frames ? si + 1 : p2m + frames;
        }
    }
}

/* The guest writes 64 bytes of page pfn (not a reserved one): 1 if the
 * page was not dirty yet in bitmap. */
static unsigned long dirty_page(struct sim_workload *w, struct sim_domain *d,
                                unsigned long pfn, unsigned long *bitmap)
{
    const unsigned long bpl = sizeof(unsigned long) * 8;
    uint64_t words[8];
    unsigned int j;

    if (pfn >= w->lo_res && pfn < w->hi_res)
        return 0;
    for (j = 0; j < 8; j++)
        words[j] = sim_rand_next(&w->state);
    memcpy(d->mem + (pfn << SIM_PAGE_SHIFT) + (words[0] % 64) * 64,
           words, sizeof(words));
    if (bitmap[pfn / bpl] & (1ul << (pfn % bpl)))
        return 0;
    bitmap[pfn / bpl] |= 1ul << (pfn % bpl);
    return 1;
}

unsigned long sim_workload_round(struct sim_workload *w, struct sim_domain *d,
                                 unsigned long *bitmap)
{
    unsigned long i, newly = 0;

    if (!d->nr_pages)
        return 0;

    for (i = 0; i < w->per_round; i++) {
        uint64_t r = sim_rand_next(&w->state);

        newly += dirty_page(w, d, r % d->nr_pages, bitmap);
    }
    return newly;
}

double sim_monotonic(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Writes are drawn at random (with repeats) from the working set; past
 * this many working sets in one tick every page of it is written once
 * instead (a long stall of a fast guest costs the simulation no more). */
#define TICK_FULL_SETS 3

unsigned long sim_workload_tick(struct sim_workload *w, struct sim_domain *d,
                                unsigned long *bitmap, bool running)
{
    double now = sim_monotonic(), owed;
    unsigned long n, i, newly = 0, ws = w->working_set;

    owed = w->carry + (now - w->last) * (double)w->rate;
    w->last = now;
    if (!running || !w->rate || !ws || !d->nr_pages) {
        w->carry = 0;
        return 0;
    }
    if (owed >= (double)ws * TICK_FULL_SETS) {
        w->carry = 0;
        for (i = 0; i < ws; i++)
            newly += dirty_page(w, d, i, bitmap);
        return newly;
    }
    n = (unsigned long)owed;
    w->carry = owed - (double)n;
    for (i = 0; i < n; i++)
        newly += dirty_page(w, d, sim_rand_next(&w->state) % ws, bitmap);
    return newly;
}
