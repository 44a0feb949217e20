/*
 * simhost libxenguest.so.4.17: stream I/O shared by save and restore (the
 * layout of simhost/ is in simhost.h, what is simulated in README.md).
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "stream.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

static const char *const rec_names[] = {
    [REC_TYPE_END]                       = "End",
    [REC_TYPE_PAGE_DATA]                 = "Page data",
    [REC_TYPE_X86_PV_INFO]               = "x86 PV info",
    [REC_TYPE_X86_PV_P2M_FRAMES]         = "x86 PV P2M frames",
    [REC_TYPE_X86_PV_VCPU_BASIC]         = "x86 PV vcpu basic",
    [REC_TYPE_X86_PV_VCPU_EXTENDED]      = "x86 PV vcpu extended",
    [REC_TYPE_X86_PV_VCPU_XSAVE]         = "x86 PV vcpu xsave",
    [REC_TYPE_SHARED_INFO]               = "Shared info",
    [REC_TYPE_X86_TSC_INFO]              = "x86 TSC info",
    [REC_TYPE_HVM_CONTEXT]               = "HVM context",
    [REC_TYPE_HVM_PARAMS]                = "HVM params",
    [REC_TYPE_TOOLSTACK]                 = "Toolstack",
    [REC_TYPE_X86_PV_VCPU_MSRS]          = "x86 PV vcpu msrs",
    [REC_TYPE_VERIFY]                    = "Verify",
    [REC_TYPE_CHECKPOINT]                = "Checkpoint",
    [REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST] = "Checkpoint dirty pfn list",
    [REC_TYPE_STATIC_DATA_END]           = "Static data end",
    [REC_TYPE_X86_CPUID_POLICY]          = "x86 CPUID policy",
    [REC_TYPE_X86_MSR_POLICY]            = "x86 MSR policy",
};

const char *sim_rec_type_to_str(uint32_t type)
{
    if (!(type & REC_TYPE_OPTIONAL) &&
        type < sizeof(rec_names) / sizeof(rec_names[0]) && rec_names[type])
        return rec_names[type];
    return "Reserved";
}

const char *sim_dhdr_type_to_str(uint32_t type)
{
    switch (type) {
    case DHDR_TYPE_X86_PV:
        return "x86 PV";
    case DHDR_TYPE_X86_HVM:
        return "x86 HVM";
    default:
        return "Reserved";
    }
}

#define GATHER_MAX 64

/* Gather up to GATHER_MAX entries (IOV_MAX is larger) starting at
 * iov[i] + off into local, cut to the ROOM bytes the truncation limit
 * still allows.  Returns how many entries it filled. */
static int gather(struct iovec *local, const struct iovec *iov, int iovcnt,
                  int i, size_t off, unsigned long long room)
{
    int n = 0;

    while (i + n < iovcnt && n < GATHER_MAX) {
        const struct iovec *src = &iov[i + n];
        size_t skip = n == 0 ? off : 0;
        size_t len = src->iov_len - skip;

        if (len > room)
            len = room;
        local[n].iov_base = (char *)src->iov_base + skip;
        local[n].iov_len = len;
        room -= len;
        n++;
        if (!room)
            break;
    }
    return n;
}

/* Advance the position (*i, *off) in iov by r bytes, past empty entries. */
static void advance(const struct iovec *iov, int iovcnt, int *i, size_t *off,
                    size_t r)
{
    while (r > 0 && *i < iovcnt) {
        size_t left = iov[*i].iov_len - *off;

        if (r >= left) {
            r -= left;
            (*i)++;
            *off = 0;
        } else {
            *off += r;
            r = 0;
        }
    }
    while (*i < iovcnt && iov[*i].iov_len == *off) {
        (*i)++;
        *off = 0;
    }
}

int sim_writev_exact(struct sim_io *io, const struct iovec *iov, int iovcnt)
{
    struct iovec local[GATHER_MAX];
    int i = 0;
    size_t off = 0;          /* offset into iov[i] already written */

    while (i < iovcnt) {
        int n = gather(local, iov, iovcnt, i, off, io->limit - io->written);
        ssize_t r;

        if (io->written >= io->limit) {
            /* A lying sender: pretend the rest went out. */
            for (; i < iovcnt; i++, off = 0)
                io->written += iov[i].iov_len - off;
            return 0;
        }

        if (iov[i].iov_len == off) {        /* an empty entry: skip it */
            i++;
            off = 0;
            continue;
        }

        r = writev(io->fd, local, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = EIO;
            return -1;
        }
        io->written += r;
        advance(iov, iovcnt, &i, &off, (size_t)r);
    }
    return 0;
}

int sim_write_exact(struct sim_io *io, const void *buf, size_t len)
{
    struct iovec iov = { (void *)buf, len };

    return sim_writev_exact(io, &iov, 1);
}

int sim_read_exact(int fd, void *buf, size_t len)
{
    size_t off = 0;

    while (off < len) {
        ssize_t r = read(fd, (char *)buf + off, len - off);

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0) {
            /* libxc reports EOF as errno 0; the simulated host says EIO
             * (README.md, "Errors") so that every failure carries an
             * errno. */
            errno = EIO;
            return -1;
        }
        off += r;
    }
    return 0;
}

int sim_write_record(struct sim_io *io, uint32_t type, const void *a,
                     size_t alen, const void *b, size_t blen)
{
    static const uint8_t zeroes[8];
    struct sr_rhdr rh = { .type = type, .length = (uint32_t)(alen + blen) };
    size_t total = alen + blen;
    size_t pad = ((total + 7) & ~(size_t)7) - total;
    struct iovec iov[4];
    int n = 0;

    if (total + pad > SIM_REC_LENGTH_MAX) {
        errno = E2BIG;
        return -1;
    }

    iov[n].iov_base = &rh;
    iov[n++].iov_len = sizeof(rh);
    if (alen) {
        iov[n].iov_base = (void *)a;
        iov[n++].iov_len = alen;
    }
    if (blen) {
        iov[n].iov_base = (void *)b;
        iov[n++].iov_len = blen;
    }
    if (pad) {
        iov[n].iov_base = (void *)zeroes;
        iov[n++].iov_len = pad;
    }
    return sim_writev_exact(io, iov, n);
}
