/*
 * simhost libxenguest.so.4.17: xc_domain_save (the layout of simhost/ is in
 * simhost.h, what is simulated in README.md).
 *
 * Follows the order of libxenguest 4.17 (xg_sr_save.c and friends): image
 * and domain headers; static data (PV: X86_PV_INFO; both: X86_CPUID_POLICY,
 * X86_MSR_POLICY); STATIC_DATA_END; (PV) X86_PV_P2M_FRAMES; PAGE_DATA
 * batches of at most 1024 pages; end of checkpoint (PV: X86_TSC_INFO,
 * SHARED_INFO, per vCPU X86_PV_VCPU_BASIC/EXTENDED/XSAVE; HVM:
 * X86_TSC_INFO, HVM_CONTEXT, HVM_PARAMS); then END, or for Remus/COLO a
 * CHECKPOINT record and the checkpoint loop.
 *
 * Live saves enable log-dirty, iterate with the precopy policy (the
 * installed precopy_policy callback, else libxenguest's: stop after 5
 * iterations or below 50 dirty pages), suspend, send the rest.  The
 * simulated guest runs its workload (seeded by seed) while it is running:
 * dirty_pages pages per round, and dirty_rate pages per second of wall
 * time from its working set, ticked before each PAGE_DATA batch, before
 * each log-dirty read and around the suspend callback.
 *
 * Behaviour of the simulated host (README.md, "Saves"): a nonzero
 * suspend reply suspends the simulated domain (unless its meta says
 * ignore_suspend=1); a positive postcopy reply resumes it; a failed save
 * resumes a domain it suspended, standing in for the toolstack's resume
 * (xl resumes the guest after a failed save).
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>

/* xenctrl.h (through stream.h) first: it sets up the Xen headers. */
#include "stream.h"

#include <xen/hvm/params.h>
#include <xen/hvm/save.h>
#include <xen/foreign/x86_64.h>

#define BITS_PER_UL (sizeof(unsigned long) * 8)
#define BITMAP_LONGS(n) (((n) + BITS_PER_UL - 1) / BITS_PER_UL)

#define SPP_MAX_ITERATIONS      5
#define SPP_TARGET_DIRTY_COUNT 50

struct save_ctx {
    xc_interface *xch;
    struct sim_io io;
    uint32_t domid;
    struct sim_domain d;
    bool hvm, live, debug;
    xc_stream_type_t stream_type;
    struct save_callbacks *cb;
    int recv_fd;

    unsigned long p2m_size;
    unsigned long *dirty;       /* pages to send this round */
    unsigned long *hv_dirty;    /* the simulated host's log-dirty log */
    bool logdirty;
    bool qemu_logdirty;
    bool suspended_by_us;
    bool guest_running;

    uint64_t *batch;            /* pfns of the batch being built */
    unsigned int nr_batch;
    struct iovec *iov;

    unsigned long pages_done;   /* pages written to the stream */
    unsigned long fault_at;     /* absolute page count of the next fault */
    unsigned long iterations;

    struct precopy_stats stats;
    struct sim_workload w;
    char progress_str[64];
};

static inline bool test_bit_ul(unsigned long nr, const unsigned long *bm)
{
    return bm[nr / BITS_PER_UL] & (1ul << (nr % BITS_PER_UL));
}

static inline void set_bit_ul(unsigned long nr, unsigned long *bm)
{
    bm[nr / BITS_PER_UL] |= 1ul << (nr % BITS_PER_UL);
}

static void next_fault(struct save_ctx *ctx, unsigned long from)
{
    unsigned long b = sim_fault_page_budget(ctx->xch, SCOPE_SAVE, from);

    ctx->fault_at = b == ULONG_MAX ? ULONG_MAX : from + b;
}

/* The time-based workload (README.md, "Live saves"): the guest dirtied
 * pages while it ran since the last tick, log-dirty records them. */
static void guest_ticks(struct save_ctx *ctx)
{
    sim_workload_tick(&ctx->w, &ctx->d, ctx->hv_dirty, ctx->guest_running);
}

/* ------------------------------------------------------------------ */
/* Records                                                             */

static int write_headers(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    struct {
        struct sr_ihdr ihdr;
        struct sr_dhdr dhdr;
    } hdrs = {
        .ihdr = {
            .marker = IHDR_MARKER,
            .id = htonl(IHDR_ID),
            .version = htonl(IHDR_VERSION),
            .options = htons(0),       /* little endian */
        },
        .dhdr = {
            .type = ctx->hvm ? DHDR_TYPE_X86_HVM : DHDR_TYPE_X86_PV,
            .page_shift = SIM_PAGE_SHIFT,
            .xen_major = SIM_XEN_MAJOR,
            .xen_minor = SIM_XEN_MINOR,
        },
    };

    if (sim_write_exact(&ctx->io, &hdrs, sizeof(hdrs))) {
        SIM_PERROR("Unable to write Image/Domain headers to stream");
        return -1;
    }
    return 0;
}

static int write_rec(struct save_ctx *ctx, uint32_t type, const void *a,
                     size_t alen, const void *b, size_t blen)
{
    xc_interface *xch = ctx->xch;

    if (sim_write_record(&ctx->io, type, a, alen, b, blen)) {
        SIM_PERROR("Unable to write record to stream");
        return -1;
    }
    return 0;
}

static int write_cpu_policy_records(struct save_ctx *ctx)
{
    /* A small fixed policy: what matters is the record shape. */
    static const xen_cpuid_leaf_t leaves[] = {
        { 0x00000000, XEN_CPUID_NO_SUBLEAF,
          0x0000000d, 0x756e6547, 0x6c65746e, 0x49656e69 },
        { 0x00000001, XEN_CPUID_NO_SUBLEAF,
          0x000906ea, 0x00100800, 0xf6fa3203, 0x178bfbff },
        { 0x00000007, 0x00000000,
          0x00000000, 0x009c4fbb, 0x00000004, 0xbc000400 },
        { 0x80000000, XEN_CPUID_NO_SUBLEAF,
          0x80000008, 0x00000000, 0x00000000, 0x00000000 },
    };
    static const xen_msr_entry_t msrs[] = {
        { .idx = 0x000000ce, .flags = 0, .val = 0 },  /* PLATFORM_INFO */
        { .idx = 0x0000010a, .flags = 0, .val = 0 },  /* ARCH_CAPS */
    };
    int rc;

    rc = write_rec(ctx, REC_TYPE_X86_CPUID_POLICY, leaves, sizeof(leaves),
                   NULL, 0);
    if (rc)
        return rc;
    return write_rec(ctx, REC_TYPE_X86_MSR_POLICY, msrs, sizeof(msrs),
                     NULL, 0);
}

static int write_static_data(struct save_ctx *ctx)
{
    int rc;

    if (!ctx->hvm) {
        struct sr_x86_pv_info info = { .guest_width = 8, .pt_levels = 4 };

        rc = write_rec(ctx, REC_TYPE_X86_PV_INFO, &info, sizeof(info),
                       NULL, 0);
        if (rc)
            return rc;
    }
    rc = write_cpu_policy_records(ctx);
    if (rc)
        return rc;
    return write_rec(ctx, REC_TYPE_STATIC_DATA_END, NULL, 0, NULL, 0);
}

static int write_p2m_frames(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    unsigned long max_pfn = ctx->p2m_size - 1;
    unsigned long frames = max_pfn / 512 + 1, i;
    unsigned long p2m_pfn = sim_meta_get_ul(&ctx->d.meta, "p2m_pfn", 0);
    struct sr_x86_pv_p2m_frames hdr = {
        .start_pfn = 0,
        .end_pfn = (uint32_t)max_pfn,
    };
    uint64_t *pfns = calloc(frames, sizeof(*pfns));
    int rc;

    if (!pfns) {
        SIM_ERROR("Cannot allocate %zu bytes for X86_PV_P2M_FRAMES data",
                  frames * sizeof(*pfns));
        errno = ENOMEM;
        return -1;
    }
    for (i = 0; i < frames; i++)
        pfns[i] = p2m_pfn + i;
    rc = write_rec(ctx, REC_TYPE_X86_PV_P2M_FRAMES, &hdr, sizeof(hdr),
                   pfns, frames * sizeof(*pfns));
    free(pfns);
    return rc;
}

static int write_tsc_info(struct save_ctx *ctx)
{
    struct sr_x86_tsc_info tsc = {
        .mode = 0,
        .khz = (uint32_t)sim_meta_get_ul(&ctx->d.meta, "tsc_khz", 2400000),
        .nsec = 0,
        .incarnation = 0,
    };

    return write_rec(ctx, REC_TYPE_X86_TSC_INFO, &tsc, sizeof(tsc), NULL, 0);
}

/* One PV vCPU's BASIC, EXTENDED and XSAVE records (vcpu: scratch). */
static int write_pv_vcpu(struct save_ctx *ctx, unsigned long i,
                         vcpu_guest_context_x86_64_t *vcpu)
{
    unsigned long si = sim_meta_get_ul(&ctx->d.meta, "start_info_pfn", 0);
    struct sr_x86_pv_vcpu_hdr vhdr = { .vcpu_id = (uint32_t)i };
    struct xen_domctl_ext_vcpucontext ext;
    uint64_t xsave[(16 + 512 + 64) / 8];
    int rc;

    memset(vcpu, 0, sizeof(*vcpu));
    vcpu->flags = 1u << 5;                     /* VGCF_online */
    vcpu->user_regs.rip = 0xffffffff81000000ull + i * 0x10;
    vcpu->user_regs.rsp = 0xffffc90000004000ull + i * 0x4000;
    vcpu->user_regs.cs = 0xe033;
    vcpu->user_regs.ss = 0xe02b;
    if (i == 0)
        vcpu->user_regs.rdx = si;              /* start_info pfn */
    vcpu->kernel_ss = 0xe02b;
    vcpu->ctrlreg[3] = 0;
    rc = write_rec(ctx, REC_TYPE_X86_PV_VCPU_BASIC, &vhdr, sizeof(vhdr),
                   vcpu, sizeof(*vcpu));
    if (rc)
        return rc;

    memset(&ext, 0, sizeof(ext));
    ext.vcpu = (uint32_t)i;
    ext.size = sizeof(ext);
    rc = write_rec(ctx, REC_TYPE_X86_PV_VCPU_EXTENDED, &vhdr, sizeof(vhdr),
                   &ext, sizeof(ext));
    if (rc)
        return rc;

    memset(xsave, 0, sizeof(xsave));
    xsave[0] = 3;     /* xcr0: x87 | SSE */
    xsave[1] = 3;     /* xcr0_accum */
    return write_rec(ctx, REC_TYPE_X86_PV_VCPU_XSAVE, &vhdr, sizeof(vhdr),
                     xsave, sizeof(xsave));
}

static int write_pv_end_of_checkpoint(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    unsigned long vcpus = sim_meta_get_ul(&ctx->d.meta, "vcpus", 1), i;
    shared_info_x86_64_t *shinfo = NULL;
    vcpu_guest_context_x86_64_t *vcpu = NULL;
    int rc = -1;

    shinfo = calloc(1, SIM_PAGE_SIZE);
    vcpu = calloc(1, sizeof(*vcpu));
    if (!shinfo || !vcpu) {
        SIM_ERROR("Unable to allocate vcpu/shared info buffers");
        errno = ENOMEM;
        goto out;
    }

    rc = write_tsc_info(ctx);
    if (rc)
        goto out;

    shinfo->arch.max_pfn = ctx->p2m_size;
    shinfo->arch.pfn_to_mfn_frame_list_list = 0;
    rc = write_rec(ctx, REC_TYPE_SHARED_INFO, shinfo, SIM_PAGE_SIZE, NULL, 0);

    for (i = 0; !rc && i < vcpus; i++)
        rc = write_pv_vcpu(ctx, i, vcpu);

 out:
    free(vcpu);
    free(shinfo);
    return rc;
}

static uint8_t *put_hvm_record(uint8_t *p, uint16_t typecode,
                               uint16_t instance, const void *body,
                               uint32_t len)
{
    struct hvm_save_descriptor desc = { typecode, instance, len };

    memcpy(p, &desc, sizeof(desc));
    p += sizeof(desc);
    if (len)
        memcpy(p, body, len);
    return p + len;
}

/* The HVM context blob: HEADER, one CPU record per vCPU, END. */
static uint8_t *build_hvm_context(struct save_ctx *ctx, unsigned long vcpus,
                                  size_t *len)
{
    struct hvm_save_header hdr = {
        .magic = HVM_FILE_MAGIC,
        .version = HVM_FILE_VERSION,
        .changeset = 0,
        .cpuid = 0x000906ea,
        .gtsc_khz = (uint32_t)sim_meta_get_ul(&ctx->d.meta, "tsc_khz",
                                              2400000),
    };
    uint8_t *buf, *p;
    unsigned long i;

    *len = sizeof(struct hvm_save_descriptor) * (vcpus + 2) +
        sizeof(struct hvm_save_header) + vcpus * sizeof(struct hvm_hw_cpu);
    p = buf = calloc(1, *len);
    if (!buf)
        return NULL;

    p = put_hvm_record(p, 1, 0, &hdr, sizeof(hdr));          /* HEADER */
    for (i = 0; i < vcpus; i++) {
        struct hvm_hw_cpu cpu;

        memset(&cpu, 0, sizeof(cpu));
        cpu.rip = 0xfff0 + i;
        cpu.cr0 = 0x60000010;
        cpu.cs_sel = 0xf000;
        cpu.cs_base = 0xffff0000;
        cpu.cs_limit = 0xffff;
        p = put_hvm_record(p, 2, (uint16_t)i, &cpu, sizeof(cpu));
    }
    put_hvm_record(p, 0, 0, NULL, 0);                           /* END */
    return buf;
}

static int write_hvm_end_of_checkpoint(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    unsigned long vcpus = sim_meta_get_ul(&ctx->d.meta, "vcpus", 1);
    struct {
        struct sr_hvm_params h;
        struct sr_hvm_params_entry e[2];
    } params = {
        .h = { .count = 2 },
        .e = {
            { HVM_PARAM_STORE_PFN,
              sim_meta_get_ul(&ctx->d.meta, "store_gfn", 0) },
            { HVM_PARAM_CONSOLE_PFN,
              sim_meta_get_ul(&ctx->d.meta, "console_gfn", 0) },
        },
    };
    uint8_t *buf;
    size_t len;
    int rc;

    rc = write_tsc_info(ctx);
    if (rc)
        return rc;

    buf = build_hvm_context(ctx, vcpus, &len);
    if (!buf) {
        SIM_PERROR("Couldn't allocate memory");
        errno = ENOMEM;
        return -1;
    }
    rc = write_rec(ctx, REC_TYPE_HVM_CONTEXT, buf, len, NULL, 0);
    free(buf);
    if (rc) {
        SIM_PERROR("error write HVM_CONTEXT record");
        return rc;
    }

    rc = write_rec(ctx, REC_TYPE_HVM_PARAMS, &params, sizeof(params), NULL, 0);
    if (rc)
        SIM_PERROR("Failed to write HVM_PARAMS record");
    return rc;
}

/* ------------------------------------------------------------------ */
/* Pages                                                               */

static int write_batch(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    unsigned int n = ctx->nr_batch, i;
    struct {
        struct sr_rhdr rec;
        struct sr_page_data_header pd;
    } hdrs = {
        .rec = {
            .type = REC_TYPE_PAGE_DATA,
            .length = (uint32_t)(sizeof(struct sr_page_data_header) +
                                 n * sizeof(uint64_t) + n * SIM_PAGE_SIZE),
        },
        .pd = { .count = n },
    };
    int iovcnt = 0;

    if (!n)
        return 0;

    sim_stall(xch, SCOPE_SAVE);
    guest_ticks(ctx);

    ctx->iov[iovcnt].iov_base = &hdrs;
    ctx->iov[iovcnt++].iov_len = sizeof(hdrs);
    ctx->iov[iovcnt].iov_base = ctx->batch;
    ctx->iov[iovcnt++].iov_len = n * sizeof(uint64_t);

    /* Pages straight from the guest's memory; contiguous runs coalesced. */
    for (i = 0; i < n; i++) {
        uint8_t *page = ctx->d.mem + (ctx->batch[i] << SIM_PAGE_SHIFT);
        struct iovec *last = &ctx->iov[iovcnt - 1];

        if (iovcnt > 2 &&
            (uint8_t *)last->iov_base + last->iov_len == page)
            last->iov_len += SIM_PAGE_SIZE;
        else {
            ctx->iov[iovcnt].iov_base = page;
            ctx->iov[iovcnt++].iov_len = SIM_PAGE_SIZE;
        }
    }

    /* The pfn words carry the type in bits 63-60: all pages are NOTAB. */
    if (sim_writev_exact(&ctx->io, ctx->iov, iovcnt)) {
        SIM_PERROR("Failed to write page data to stream");
        return -1;
    }

    ctx->pages_done += n;
    ctx->nr_batch = 0;
    return 0;
}

static int add_to_batch(struct save_ctx *ctx, unsigned long pfn)
{
    int rc;

    if (ctx->nr_batch == SIM_MAX_BATCH) {
        rc = write_batch(ctx);
        if (rc)
            return rc;
    }

    while (ctx->pages_done + ctx->nr_batch == ctx->fault_at) {
        unsigned long at = ctx->fault_at;

        rc = write_batch(ctx);
        if (rc)
            return rc;
        rc = sim_fault_page_fire(ctx->xch, SCOPE_SAVE, at,
                                 "Failed to map guest pages");
        if (rc)
            return rc;
        next_fault(ctx, at + 1);
    }

    ctx->batch[ctx->nr_batch++] = (uint64_t)pfn;
    return 0;
}

static int send_dirty_pages(struct save_ctx *ctx, unsigned long entries)
{
    xc_interface *xch = ctx->xch;
    unsigned long p, written = 0;
    int rc;

    for (p = 0; p < ctx->p2m_size; ++p) {
        if (!test_bit_ul(p, ctx->dirty))
            continue;

        rc = add_to_batch(ctx, p);
        if (rc)
            return rc;

        /* Progress every 4 MiB of memory sent, as libxenguest does. */
        if ((written & ((1u << (22 - 12)) - 1)) == 0)
            sim_progress_step(xch, written, entries);
        ++written;
    }

    rc = write_batch(ctx);
    if (rc)
        return rc;

    if (written > entries)
        SIM_DPRINTF("Bitmap contained more entries than expected...");

    sim_progress_step(xch, entries, entries);
    return 0;
}

static void bitmap_set_all(unsigned long *bm, unsigned long nbits)
{
    unsigned long i;

    memset(bm, 0, BITMAP_LONGS(nbits) * sizeof(unsigned long));
    for (i = 0; i < nbits; i++)
        set_bit_ul(i, bm);
}

static int send_all_pages(struct save_ctx *ctx)
{
    bitmap_set_all(ctx->dirty, ctx->p2m_size);
    return send_dirty_pages(ctx, ctx->p2m_size);
}

/* The simulated XEN_DOMCTL_SHADOW_OP_CLEAN: hand over and reset the log. */
static unsigned long logdirty_clean(struct save_ctx *ctx)
{
    size_t longs = BITMAP_LONGS(ctx->p2m_size), i;
    unsigned long count = 0;

    guest_ticks(ctx);

    memcpy(ctx->dirty, ctx->hv_dirty, longs * sizeof(unsigned long));
    memset(ctx->hv_dirty, 0, longs * sizeof(unsigned long));
    for (i = 0; i < longs; i++)
        count += __builtin_popcountl(ctx->dirty[i]);
    return count;
}

/* The guest runs for one round (it is not suspended). */
static void guest_runs(struct save_ctx *ctx)
{
    if (ctx->guest_running)
        sim_workload_round(&ctx->w, &ctx->d, ctx->hv_dirty);
}

/* ------------------------------------------------------------------ */
/* Callbacks                                                           */

/* XENSR_SIMHOST_AUTO_SUSPEND=1: guests suspend on a nonzero suspend reply
 * by themselves (SimulatedHost(auto_suspend=True)). */
static bool auto_suspend(void)
{
    const char *v = getenv("XENSR_SIMHOST_AUTO_SUSPEND");

    return v && !strcmp(v, "1");
}

static int suspend_domain(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    int cb_rc;

    guest_ticks(ctx);
    sim_fault_point(xch, SCOPE_SAVE, "suspend");
    cb_rc = ctx->cb->suspend(ctx->cb->data);
    /* The guest ran until the toolstack's suspend returned. */
    guest_ticks(ctx);
    if (cb_rc == 0) {
        SIM_ERROR("save callback suspend() failed: %d", cb_rc);
        errno = EINVAL;
        return -1;
    }

    /* With auto-suspend (a host's opt-in) the simulated guest obeys the
     * toolstack's answer itself, unless told to ignore it.  Otherwise, as
     * on real Xen, something must have suspended it by now (the
     * toolstack's suspend callback, through SimulatedHost.suspend): look
     * at the state as it is now. */
    if (auto_suspend() && !sim_meta_get_ul(&ctx->d.meta, "ignore_suspend", 0)) {
        if (sim_domain_update(&ctx->d, "state", "suspended", NULL)) {
            SIM_PERROR("Unable to refresh domain information");
            return -1;
        }
        ctx->suspended_by_us = true;
    } else if (sim_domain_reload(&ctx->d)) {
        SIM_PERROR("Unable to refresh domain information");
        return -1;
    }

    if (strcmp(sim_meta_get(&ctx->d.meta, "state") ?: "", "suspended")) {
        SIM_ERROR("Domain has not been suspended: shutdown %d, reason %d%s",
                  0, 0, auto_suspend() ? "" : " (the simulated host suspends"
                  " a guest only when asked: SimulatedHost.suspend() from the"
                  " suspend callback, or SimulatedHost(auto_suspend=True))");
        errno = EINVAL;
        return -1;
    }
    ctx->guest_running = false;

    sim_progress_single(xch, "Domain now suspended");
    return 0;
}

static int call_precopy_policy(struct save_ctx *ctx)
{
    precopy_policy_t policy = ctx->cb->precopy_policy;

    if (policy) {
        sim_fault_point(ctx->xch, SCOPE_SAVE, "precopy_policy");
        return policy(ctx->stats, ctx->cb->data);
    }

    return ((ctx->stats.dirty_count >= 0 &&
             ctx->stats.dirty_count < SPP_TARGET_DIRTY_COUNT) ||
            ctx->stats.iteration >= SPP_MAX_ITERATIONS)
        ? XGS_POLICY_STOP_AND_COPY : XGS_POLICY_CONTINUE_PRECOPY;
}

static void update_progress_string(struct save_ctx *ctx)
{
    snprintf(ctx->progress_str, sizeof(ctx->progress_str),
             "Frames iteration %u", ctx->stats.iteration);
    sim_set_progress_prefix(ctx->xch, ctx->progress_str);
}

/* ------------------------------------------------------------------ */
/* Memory phases                                                       */

static int send_memory_live(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    unsigned long shadow_dirty = ctx->p2m_size;
    unsigned int x = 0;
    int rc = 0, decision;

    update_progress_string(ctx);

    ctx->stats = (struct precopy_stats){ .dirty_count = ctx->p2m_size };
    bitmap_set_all(ctx->dirty, ctx->p2m_size);

    for (;;) {
        decision = call_precopy_policy(ctx);
        x++;

        if (shadow_dirty > 0 && decision != XGS_POLICY_ABORT) {
            update_progress_string(ctx);
            rc = send_dirty_pages(ctx, shadow_dirty);
            if (rc)
                goto out;
            ctx->iterations++;
            guest_runs(ctx);
        }

        if (decision != XGS_POLICY_CONTINUE_PRECOPY)
            break;

        ctx->stats.iteration = x;
        ctx->stats.total_written += ctx->stats.dirty_count;
        ctx->stats.dirty_count = -1;

        decision = call_precopy_policy(ctx);
        if (decision != XGS_POLICY_CONTINUE_PRECOPY)
            break;

        shadow_dirty = logdirty_clean(ctx);
        ctx->stats.dirty_count = (long)shadow_dirty;
    }

    if (decision == XGS_POLICY_ABORT) {
        errno = ECANCELED;
        SIM_PERROR("Abort precopy loop");
        rc = -1;
    }

 out:
    sim_set_progress_prefix(xch, NULL);
    return rc;
}

static int colo_merge_secondary_dirty_bitmap(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    struct sr_rhdr rh;
    uint64_t *pfns = NULL;
    unsigned int count, i;
    int rc = -1;

    if (sim_read_exact(ctx->recv_fd, &rh, sizeof(rh))) {
        SIM_PERROR("Failed to read Record Header from stream");
        goto out;
    }
    if (rh.type != REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST) {
        errno = EINVAL;
        SIM_PERROR("Expect dirty bitmap record, but received %u", rh.type);
        goto out;
    }
    if (rh.length % sizeof(*pfns) || rh.length > SIM_REC_LENGTH_MAX) {
        errno = EINVAL;
        SIM_PERROR("Invalid dirty pfn list record length %u", rh.length);
        goto out;
    }
    count = rh.length / sizeof(*pfns);
    pfns = malloc(rh.length ? rh.length : 1);
    if (!pfns) {
        errno = ENOMEM;
        goto out;
    }
    /* The back channel record is not padded (libxc writes it raw). */
    if (rh.length && sim_read_exact(ctx->recv_fd, pfns, rh.length)) {
        SIM_PERROR("Failed to read %u bytes of data for record", rh.length);
        goto out;
    }
    for (i = 0; i < count; i++) {
        if (pfns[i] >= ctx->p2m_size) {
            errno = EINVAL;
            SIM_PERROR("Invalid pfn 0x%" PRIx64, pfns[i]);
            goto out;
        }
        set_bit_ul(pfns[i], ctx->dirty);
    }
    rc = 0;

 out:
    free(pfns);
    return rc;
}

static int suspend_and_send_dirty(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    unsigned long count;
    int rc;

    rc = suspend_domain(ctx);
    if (rc)
        goto out;

    count = logdirty_clean(ctx);

    if (ctx->live)
        update_progress_string(ctx);
    else
        sim_set_progress_prefix(xch, "Checkpointed save");

    if (!ctx->live && ctx->stream_type == XC_STREAM_COLO) {
        rc = colo_merge_secondary_dirty_bitmap(ctx);
        if (rc) {
            SIM_PERROR("Failed to get secondary vm's dirty pages");
            goto out;
        }
    }

    rc = send_dirty_pages(ctx, count);
    if (rc)
        goto out;
    ctx->iterations++;

 out:
    sim_set_progress_prefix(xch, NULL);
    return rc;
}

static int verify_frames(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    int rc;

    SIM_DPRINTF("Enabling verify mode");
    rc = write_rec(ctx, REC_TYPE_VERIFY, NULL, 0, NULL, 0);
    if (rc)
        return rc;
    sim_set_progress_prefix(xch, "Frames verify");
    rc = send_all_pages(ctx);
    sim_set_progress_prefix(xch, NULL);
    if (rc)
        return rc;
    SIM_DPRINTF("  Further stats: faults %u, dirty %u", 0u, 0u);
    return 0;
}

static int enable_logdirty(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;

    if (sim_domain_update(&ctx->d, "logdirty", "1", NULL)) {
        SIM_PERROR("Failed to enable logdirty: %d,%d,%d", errno, 0, 0);
        return -1;
    }
    ctx->logdirty = true;
    memset(ctx->hv_dirty, 0,
           BITMAP_LONGS(ctx->p2m_size) * sizeof(unsigned long));
    return 0;
}

static int send_domain_memory_live(struct save_ctx *ctx)
{
    int rc;

    rc = enable_logdirty(ctx);
    if (rc)
        return rc;
    rc = send_memory_live(ctx);
    if (rc)
        return rc;
    rc = suspend_and_send_dirty(ctx);
    if (rc)
        return rc;
    if (ctx->debug && ctx->stream_type == XC_STREAM_PLAIN)
        rc = verify_frames(ctx);
    return rc;
}

static int send_domain_memory_nonlive(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    int rc;

    rc = suspend_domain(ctx);
    if (rc)
        return rc;
    sim_set_progress_prefix(xch, "Frames");
    rc = send_all_pages(ctx);
    sim_set_progress_prefix(xch, NULL);
    if (!rc)
        ctx->iterations++;
    return rc;
}

/* ------------------------------------------------------------------ */
/* Setup, cleanup, the loop                                            */

static int setup(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    size_t longs;

    ctx->p2m_size = ctx->d.nr_pages;
    if (!ctx->p2m_size) {
        errno = EINVAL;
        SIM_PERROR("Unable to obtain the guest p2m size");
        return -1;
    }

    if (ctx->hvm) {
        sim_fault_point(xch, SCOPE_SAVE, "switch_qemu_logdirty");
        if (ctx->cb->switch_qemu_logdirty(ctx->domid, 1, ctx->cb->data)) {
            errno = EINVAL;
            SIM_PERROR("Couldn't enable qemu log-dirty mode");
            return -1;
        }
        ctx->qemu_logdirty = true;
    }

    longs = BITMAP_LONGS(ctx->p2m_size);
    ctx->dirty = calloc(longs, sizeof(unsigned long));
    ctx->hv_dirty = calloc(longs, sizeof(unsigned long));
    ctx->batch = malloc(SIM_MAX_BATCH * sizeof(*ctx->batch));
    ctx->iov = malloc((SIM_MAX_BATCH + 2) * sizeof(*ctx->iov));
    if (!ctx->dirty || !ctx->hv_dirty || !ctx->batch || !ctx->iov) {
        SIM_ERROR("Unable to allocate memory for dirty bitmaps, batch pfns and"
                  " deferred pages");
        errno = ENOMEM;
        return -1;
    }

    sim_workload_init(&ctx->w, &ctx->d);
    return 0;
}

static void cleanup(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;

    if (ctx->logdirty && ctx->d.dir) {
        sim_domain_update(&ctx->d, "logdirty", "0", NULL);
        ctx->logdirty = false;
    }

    if (ctx->qemu_logdirty) {
        sim_fault_point(xch, SCOPE_SAVE, "switch_qemu_logdirty");
        if (ctx->cb->switch_qemu_logdirty(ctx->domid, 0, ctx->cb->data)) {
            SIM_PERROR("Couldn't disable qemu log-dirty mode");
            SIM_PERROR("Failed to clean up");
        }
        ctx->qemu_logdirty = false;
    }

    free(ctx->dirty);
    free(ctx->hv_dirty);
    free(ctx->batch);
    free(ctx->iov);
    ctx->dirty = ctx->hv_dirty = NULL;
    ctx->batch = NULL;
    ctx->iov = NULL;
}

/* Headers, static data and (PV) the p2m frame list: what precedes the
 * first page. */
static int write_stream_start(struct save_ctx *ctx)
{
    int rc;

    sim_progress_single(ctx->xch, "Start of stream");
    rc = write_headers(ctx);
    if (!rc)
        rc = write_static_data(ctx);
    if (!rc && !ctx->hvm)
        rc = write_p2m_frames(ctx);
    return rc;
}

/* Memory (live, checkpointed or not), then the records that end each
 * checkpoint, once the domain is suspended. */
static int send_checkpoint(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    int rc;

    if (ctx->live)
        rc = send_domain_memory_live(ctx);
    else if (ctx->stream_type != XC_STREAM_PLAIN)
        rc = suspend_and_send_dirty(ctx);
    else
        rc = send_domain_memory_nonlive(ctx);
    if (rc)
        return rc;

    if (strcmp(sim_meta_get(&ctx->d.meta, "state") ?: "", "suspended")) {
        SIM_ERROR("Domain has not been suspended");
        errno = EINVAL;
        return -1;
    }

    return ctx->hvm ? write_hvm_end_of_checkpoint(ctx)
                    : write_pv_end_of_checkpoint(ctx);
}

/* next_checkpoint's "carry on": every way out of the loop is <= 0. */
#define CHECKPOINT_NEXT 1

/* Remus/COLO, after a checkpoint's records: the CHECKPOINT record and the
 * toolstack's callbacks, then the guest runs until the next one.  A
 * callback returning 0 ends the stream through the error path with rc 0,
 * as libxenguest does. */
static int next_checkpoint(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    bool colo = ctx->stream_type == XC_STREAM_COLO;
    int rc;

    ctx->live = false;
    rc = write_rec(ctx, REC_TYPE_CHECKPOINT, NULL, 0, NULL, 0);
    if (rc)
        return rc;

    if (colo) {
        sim_fault_point(xch, SCOPE_SAVE, "checkpoint");
        if (!ctx->cb->checkpoint(ctx->cb->data)) {
            errno = EINVAL;
            return -1;
        }
    }

    sim_fault_point(xch, SCOPE_SAVE, "postcopy");
    rc = ctx->cb->postcopy(ctx->cb->data);
    if (rc <= 0) {
        errno = rc ? EINVAL : 0;
        return rc;
    }
    /* The toolstack's postcopy resumed the guest. */
    if (sim_domain_update(&ctx->d, "state", "running", NULL)) {
        SIM_PERROR("Unable to update domain state");
        return -1;
    }
    guest_ticks(ctx);           /* its clock starts now */
    ctx->guest_running = true;

    if (colo) {
        sim_fault_point(xch, SCOPE_SAVE, "wait_checkpoint");
        rc = ctx->cb->wait_checkpoint(ctx->cb->data);
    } else if (ctx->stream_type == XC_STREAM_REMUS) {
        sim_fault_point(xch, SCOPE_SAVE, "checkpoint");
        /* 0 ends a Remus stream: libxenguest takes its error path ("Save
         * failed") but returns 0. */
        rc = ctx->cb->checkpoint(ctx->cb->data);
    } else {
        SIM_ERROR("Unknown checkpointed stream");
        errno = EINVAL;
        return -1;
    }
    if (rc <= 0) {
        errno = rc ? EINVAL : 0;
        return rc;
    }

    /* The guest ran during the checkpoint interval. */
    guest_runs(ctx);
    return CHECKPOINT_NEXT;
}

static int save(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    int rc, saved_rc = 0, saved_errno = 0;

    SIM_IPRINTF("Saving domain %d, type %s", ctx->domid,
                sim_dhdr_type_to_str(ctx->hvm ? DHDR_TYPE_X86_HVM
                                              : DHDR_TYPE_X86_PV));

    rc = setup(ctx);
    if (!rc)
        rc = write_stream_start(ctx);
    if (rc)
        goto err;

    do {
        rc = send_checkpoint(ctx);
        if (rc)
            goto err;
        if (ctx->stream_type != XC_STREAM_PLAIN) {
            rc = next_checkpoint(ctx);
            if (rc != CHECKPOINT_NEXT)
                goto err;
        }
    } while (ctx->stream_type != XC_STREAM_PLAIN);

    sim_progress_single(xch, "End of stream");
    rc = write_rec(ctx, REC_TYPE_END, NULL, 0, NULL, 0);
    if (rc)
        goto err;
    sim_progress_single(xch, "Complete");
    goto done;

 err:
    saved_errno = errno;
    saved_rc = rc;
    SIM_PERROR("Save failed");

 done:
    cleanup(ctx);

    if (saved_rc) {
        rc = saved_rc;
        errno = saved_errno;
    }
    return rc;
}

/* Sanity checks on stream_type-related parameters, as libxenguest (which
 * asserts). */
static void check_save_callbacks(const struct save_callbacks *callbacks,
                                 xc_stream_type_t stream_type, bool hvm)
{
    switch (stream_type) {
    case XC_STREAM_COLO:
        assert(callbacks->wait_checkpoint);
        /* Fallthrough */
    case XC_STREAM_REMUS:
        assert(callbacks->checkpoint && callbacks->postcopy);
        /* Fallthrough */
    case XC_STREAM_PLAIN:
        if (hvm)
            assert(callbacks->switch_qemu_logdirty);
        break;
    default:
        assert(!"Bad stream_type");
        break;
    }
    assert(callbacks->suspend);
}

/* Open the domain and read what the save needs from its meta. */
static int open_domain(struct save_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    const char *kind;

    if (sim_domain_open(xch, ctx->domid, &ctx->d)) {
        SIM_PERROR("Failed to get domain info");
        return -1;
    }

    kind = sim_meta_get(&ctx->d.meta, "kind");
    if (!kind || (strcmp(kind, "pv") && strcmp(kind, "hvm"))) {
        errno = EINVAL;
        SIM_PERROR("Domain %u has no guest to save (kind \"%s\")", ctx->domid,
                   kind ?: "");
        sim_domain_close(&ctx->d);
        return -1;
    }
    ctx->hvm = !strcmp(kind, "hvm");
    ctx->guest_running = !strcmp(sim_meta_get(&ctx->d.meta, "state") ?: "",
                                 "running");
    return 0;
}

/* The simulated host's bookkeeping: statistics, and the toolstack's resume
 * after a failed save. */
static void record_result(struct save_ctx *ctx, int rc)
{
    sim_domain_update_ul(&ctx->d, "save_pages", ctx->pages_done);
    sim_domain_update_ul(&ctx->d, "save_iterations", ctx->iterations);
    sim_domain_update(&ctx->d, "save_result", rc ? "failed" : "ok", NULL);
    if (rc && ctx->suspended_by_us)
        sim_domain_update(&ctx->d, "state", "running", NULL);
}

int xc_domain_save(xc_interface *xch, int io_fd, uint32_t dom,
                   uint32_t flags, struct save_callbacks *callbacks,
                   xc_stream_type_t stream_type, int recv_fd)
{
    struct save_ctx ctx = {
        .xch = xch,
        .io = { .fd = io_fd, .written = 0, .limit = ULLONG_MAX },
        .domid = dom,
        .stream_type = stream_type,
        .cb = callbacks,
        .recv_fd = recv_fd,
        .d = { .opfd = -1, .memfd = -1 },
        .live = !!(flags & XCFLAGS_LIVE),
        .debug = !!(flags & XCFLAGS_DEBUG),
    };
    const struct sim_fault *trunc;
    int rc, saved_errno;

    if (!xch || xch->magic != SIM_HANDLE_MAGIC) {
        errno = EINVAL;
        return -1;
    }

    sim_fault_at_start(xch, SCOPE_SAVE);

    trunc = sim_fault_find(xch, FAULT_TRUNCATE_STREAM, SCOPE_SAVE);
    if (trunc)
        ctx.io.limit = trunc->n;

    if (open_domain(&ctx))
        return -1;

    check_save_callbacks(callbacks, stream_type, ctx.hvm);

    SIM_DPRINTF("fd %d, dom %u, flags %u, hvm %d", io_fd, dom, flags,
                ctx.hvm);

    next_fault(&ctx, 0);
    rc = save(&ctx);
    saved_errno = errno;

    record_result(&ctx, rc);
    sim_domain_close(&ctx.d);
    errno = saved_errno;
    return rc;
}
