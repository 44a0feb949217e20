/*
 * simhost libxenguest.so.4.17: xc_domain_restore (the layout of simhost/ is
 * in simhost.h, what is simulated in README.md).
 *
 * Reads a libxc stream (v2 or v3) into a simulated domain, with the checks
 * and the record handling of libxenguest 4.17 (xg_sr_restore*.c), plus
 * stricter checks of its own: reserved header fields and padding must be
 * zero, reserved pfn bits must be clear, static records (X86_PV_INFO,
 * CPUID/MSR policy) must precede STATIC_DATA_END, STATIC_DATA_END must be
 * empty, the HVM context must be well formed.
 *
 * Checkpointed streams behave as libxenguest: after the first CHECKPOINT
 * all records are buffered and applied at the next CHECKPOINT; a read
 * error or EOF after a checkpoint, or a checkpoint reply of
 * XGR_CHECKPOINT_FAILOVER, commits the last complete checkpoint and returns
 * 0 ("failover").  COLO calls restore_results/postcopy/wait_checkpoint/
 * suspend at each checkpoint and sends a (here empty) dirty pfn list on the
 * back channel.
 *
 * The target's memory receives exactly the stream's page data: unlike the
 * real libxenguest, the simulated host does not rewrite start_info, the p2m or the
 * store page, so the restored memory is byte-identical to the source's.
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

#define RECORD_NOT_PROCESSED 1
#define BROKEN_CHANNEL 2
#define MAX_VCPUS 128
#define DEFAULT_BUF_RECORDS 1024

struct sr_record {
    uint32_t type;
    uint32_t length;
    void *data;
};

struct restore_ctx {
    xc_interface *xch;
    int fd;
    uint32_t domid;
    struct sim_domain d;
    xc_stream_type_t stream_type;
    struct restore_callbacks *cb;
    int send_back_fd;
    unsigned int store_evtchn, console_evtchn;
    uint32_t store_domid, console_domid;

    uint32_t format_version;
    uint32_t guest_type;
    bool hvm;
    bool adopt_kind;

    bool seen_static_data_end;
    bool seen_pv_info;
    bool seen_cpuid, seen_msr;
    bool verify;

    /* PV */
    bool seen_p2m_frames;
    unsigned long max_pfn;
    uint64_t *p2m_pfns;
    unsigned long p2m_frames;
    unsigned long nr_vcpus;         /* limit for vcpu ids */
    bool vcpu_basic[MAX_VCPUS];
    unsigned long start_info_pfn;
    unsigned long restored_vcpus;

    /* HVM */
    uint8_t *hvm_context;
    size_t hvm_context_len;

    unsigned long tsc_khz;
    xen_pfn_t xenstore_gfn, console_gfn;

    bool buffer_all_records;
    struct sr_record *buffered;
    unsigned int buffered_nr, buffered_alloc;

    unsigned long pages_done;
    unsigned long fault_at;
};

static void next_fault(struct restore_ctx *ctx, unsigned long from)
{
    unsigned long b = sim_fault_page_budget(ctx->xch, SCOPE_RESTORE, from);

    ctx->fault_at = b == ULONG_MAX ? ULONG_MAX : from + b;
}

/* ------------------------------------------------------------------ */
/* Reading                                                             */

static int read_image_header(struct restore_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    struct sr_ihdr ihdr;

    if (sim_read_exact(ctx->fd, &ihdr, sizeof(ihdr))) {
        SIM_PERROR("Failed to read Image Header from stream");
        return -1;
    }

    ihdr.id = ntohl(ihdr.id);
    ihdr.version = ntohl(ihdr.version);
    ihdr.options = ntohs(ihdr.options);

    errno = EINVAL;
    if (ihdr.marker != IHDR_MARKER) {
        SIM_ERROR("Invalid marker: Got 0x%016" PRIx64, ihdr.marker);
        return -1;
    }
    if (ihdr.id != IHDR_ID) {
        SIM_ERROR("Invalid ID: Expected 0x%08x, Got 0x%08x", IHDR_ID, ihdr.id);
        return -1;
    }
    if (ihdr.version < 2 || ihdr.version > 3) {
        SIM_ERROR("Invalid Version: Expected 2 <= ver <= 3, Got %d",
                  ihdr.version);
        return -1;
    }
    if (ihdr.options & IHDR_OPT_BIG_ENDIAN) {
        SIM_ERROR("Unable to handle big endian streams");
        return -1;
    }
    if ((ihdr.options & ~IHDR_OPT_BIG_ENDIAN) || ihdr._res1 || ihdr._res2) {
        SIM_ERROR("Reserved bits set in Image Header: options 0x%04x,"
                  " 0x%04x:0x%08x", ihdr.options, ihdr._res1, ihdr._res2);
        return -1;
    }
    ctx->format_version = ihdr.version;
    errno = 0;
    return 0;
}

static int read_domain_header(struct restore_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    struct sr_dhdr dhdr;

    if (sim_read_exact(ctx->fd, &dhdr, sizeof(dhdr))) {
        SIM_PERROR("Failed to read Domain Header from stream");
        return -1;
    }

    errno = EINVAL;
    if (dhdr._res1) {
        SIM_ERROR("Reserved bits set in Domain Header: 0x%04x", dhdr._res1);
        return -1;
    }
    ctx->guest_type = dhdr.type;
    if (dhdr.page_shift != SIM_PAGE_SHIFT) {
        SIM_ERROR("Invalid page size %u for %s domains",
                  1u << (dhdr.page_shift & 31),
                  sim_dhdr_type_to_str(dhdr.type));
        return -1;
    }

    if (dhdr.xen_major == 0) {
        SIM_IPRINTF("Found %s domain, converted from legacy stream format",
                    sim_dhdr_type_to_str(dhdr.type));
        SIM_DPRINTF("  Legacy conversion script version %u", dhdr.xen_minor);
    } else
        SIM_IPRINTF("Found %s domain from Xen %u.%u",
                    sim_dhdr_type_to_str(dhdr.type), dhdr.xen_major,
                    dhdr.xen_minor);
    errno = 0;
    return 0;
}

static int read_headers(struct restore_ctx *ctx)
{
    if (read_image_header(ctx))
        return -1;
    return read_domain_header(ctx);
}

static int read_record(struct restore_ctx *ctx, struct sr_record *rec)
{
    xc_interface *xch = ctx->xch;
    struct sr_rhdr rhdr;
    size_t datasz, i;

    rec->data = NULL;

    if (sim_read_exact(ctx->fd, &rhdr, sizeof(rhdr))) {
        SIM_PERROR("Failed to read Record Header from stream");
        return -1;
    }

    if (rhdr.length > SIM_REC_LENGTH_MAX) {
        errno = EINVAL;
        SIM_ERROR("Record (0x%08x, %s) length %#x exceeds max (%#x)",
                  rhdr.type, sim_rec_type_to_str(rhdr.type), rhdr.length,
                  SIM_REC_LENGTH_MAX);
        return -1;
    }

    datasz = ((size_t)rhdr.length + 7) & ~(size_t)7;
    if (datasz) {
        rec->data = malloc(datasz);
        if (!rec->data) {
            errno = ENOMEM;
            SIM_ERROR("Unable to allocate %zu bytes for record data"
                      " (0x%08x, %s)", datasz, rhdr.type,
                      sim_rec_type_to_str(rhdr.type));
            return -1;
        }
        if (sim_read_exact(ctx->fd, rec->data, datasz)) {
            free(rec->data);
            rec->data = NULL;
            SIM_PERROR("Failed to read %zu bytes of data for record"
                       " (0x%08x, %s)", datasz, rhdr.type,
                       sim_rec_type_to_str(rhdr.type));
            return -1;
        }
        for (i = rhdr.length; i < datasz; i++)
            if (((uint8_t *)rec->data)[i]) {
                free(rec->data);
                rec->data = NULL;
                errno = EINVAL;
                SIM_ERROR("Record (0x%08x, %s) has non-zero padding",
                          rhdr.type, sim_rec_type_to_str(rhdr.type));
                return -1;
            }
    }

    rec->type = rhdr.type;
    rec->length = rhdr.length;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Static data                                                         */

static int handle_static_data_end(struct restore_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    unsigned int missing = 0;
    int rc = 0;

    if (ctx->seen_static_data_end) {
        errno = EINVAL;
        SIM_ERROR("Multiple STATIC_DATA_END records found");
        return -1;
    }
    ctx->seen_static_data_end = true;

    if (!ctx->seen_cpuid)
        missing |= XGR_SDD_MISSING_CPUID;
    if (!ctx->seen_msr)
        missing |= XGR_SDD_MISSING_MSR;

    if (ctx->cb->static_data_done) {
        sim_fault_point(xch, SCOPE_RESTORE, "static_data_done");
        /* libxenguest 4.17 stores the comparison, not the value: a failing
         * callback yields 1, which its caller then reads as "record not
         * processed". */
        rc = ctx->cb->static_data_done(missing, ctx->cb->data) != 0;
        if (rc) {
            SIM_ERROR("static_data_done() callback failed: %d\n", rc);
            errno = EINVAL;
        }
    }
    return rc;
}

static int infer_static_data_end(struct restore_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    int rc;

    if (ctx->format_version < 3 && !ctx->seen_static_data_end) {
        rc = handle_static_data_end(ctx);
        if (rc) {
            SIM_ERROR("Inferred STATIC_DATA_END record failed");
            return rc;
        }
    }
    if (!ctx->seen_static_data_end) {
        errno = EINVAL;
        SIM_ERROR("No STATIC_DATA_END seen");
        return -1;
    }
    return 0;
}

static int static_record_allowed(struct restore_ctx *ctx, const char *name)
{
    xc_interface *xch = ctx->xch;

    errno = EINVAL;
    if (ctx->format_version < 3) {
        SIM_ERROR("%s record found in v2 stream", name);
        return -1;
    }
    if (ctx->seen_static_data_end) {
        SIM_ERROR("%s record after STATIC_DATA_END", name);
        return -1;
    }
    errno = 0;
    return 0;
}

static int handle_cpuid_policy(struct restore_ctx *ctx, struct sr_record *rec)
{
    xc_interface *xch = ctx->xch;

    if (static_record_allowed(ctx, "X86_CPUID_POLICY"))
        return -1;
    if (rec->length == 0 || rec->length % sizeof(xen_cpuid_leaf_t)) {
        errno = EINVAL;
        SIM_ERROR("X86_CPUID_POLICY size %u should be multiple of %zu",
                  rec->length, sizeof(xen_cpuid_leaf_t));
        return -1;
    }
    ctx->seen_cpuid = true;
    return 0;
}

static int handle_msr_policy(struct restore_ctx *ctx, struct sr_record *rec)
{
    xc_interface *xch = ctx->xch;

    if (static_record_allowed(ctx, "X86_MSR_POLICY"))
        return -1;
    if (rec->length == 0 || rec->length % sizeof(xen_msr_entry_t)) {
        errno = EINVAL;
        SIM_ERROR("X86_MSR_POLICY size %u should be multiple of %zu",
                  rec->length, sizeof(xen_msr_entry_t));
        return -1;
    }
    ctx->seen_msr = true;
    return 0;
}

static int handle_tsc_info(struct restore_ctx *ctx, struct sr_record *rec)
{
    xc_interface *xch = ctx->xch;
    const struct sr_x86_tsc_info *tsc = rec->data;

    if (rec->length != sizeof(*tsc)) {
        errno = EINVAL;
        SIM_ERROR("X86_TSC_INFO record wrong size: length %u, expected %zu",
                  rec->length, sizeof(*tsc));
        return -1;
    }
    if (tsc->_res1) {
        errno = EINVAL;
        SIM_ERROR("Reserved bits set in X86_TSC_INFO: 0x%08x", tsc->_res1);
        return -1;
    }
    ctx->tsc_khz = tsc->khz;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Pages                                                               */

static bool type_has_data(uint32_t type)
{
    return type <= PFINFO_L4TAB ||
        (type >= (PFINFO_LPINTAB | PFINFO_L1TAB) &&
         type <= (PFINFO_LPINTAB | PFINFO_L4TAB));
}

static bool type_is_known(uint32_t type)
{
    return type_has_data(type) || type == PFINFO_BROKEN ||
        type == PFINFO_XALLOC || type == PFINFO_XTAB;
}

static bool pfn_is_valid(const struct restore_ctx *ctx, uint64_t pfn)
{
    if (ctx->hvm)
        return pfn < ctx->d.map_pages;
    return ctx->seen_p2m_frames && pfn <= ctx->max_pfn;
}

static int process_page_data(struct restore_ctx *ctx, unsigned int count,
                             const uint64_t *words, const uint8_t *data)
{
    xc_interface *xch = ctx->xch;
    unsigned long top = 0;
    unsigned int i;

    /* Populate: grow the memory file over every pfn that gets memory. */
    for (i = 0; i < count; i++) {
        uint64_t pfn = words[i] & PAGE_DATA_PFN_MASK;
        uint32_t type = (uint32_t)(words[i] >> 60);

        if ((type_has_data(type) || type == PFINFO_XALLOC) && pfn + 1 > top)
            top = pfn + 1;
    }
    if (sim_domain_grow(&ctx->d, top)) {
        SIM_PERROR("Failed to populate physmap");
        return -1;
    }

    for (i = 0; i < count; i++) {
        uint64_t pfn = words[i] & PAGE_DATA_PFN_MASK;
        uint32_t type = (uint32_t)(words[i] >> 60);
        uint8_t *page;

        if (!type_has_data(type))
            continue;

        while (ctx->pages_done == ctx->fault_at) {
            unsigned long at = ctx->fault_at;
            char what[96];

            snprintf(what, sizeof(what),
                     "Unable to map %u mfns for %u pages of data",
                     count, count);
            if (sim_fault_page_fire(xch, SCOPE_RESTORE, at, what))
                return -1;
            next_fault(ctx, at + 1);
        }

        page = ctx->d.mem + (pfn << SIM_PAGE_SHIFT);
        if (ctx->verify) {
            if (memcmp(page, data, SIM_PAGE_SIZE))
                SIM_ERROR("verify pfn %#" PRIx64 " failed (type %#" PRIx32 ")",
                          pfn, type);
        } else
            memcpy(page, data, SIM_PAGE_SIZE);
        data += SIM_PAGE_SIZE;
        ctx->pages_done++;
    }
    return 0;
}

/* The PAGE_DATA header: a count, and room for that many pfns. */
static int check_page_data_header(struct restore_ctx *ctx,
                                  const struct sr_record *rec)
{
    xc_interface *xch = ctx->xch;
    const struct sr_page_data_header *pages = rec->data;

    errno = EINVAL;
    if (rec->length < sizeof(*pages)) {
        SIM_ERROR("PAGE_DATA record truncated: length %u, min %zu",
                  rec->length, sizeof(*pages));
        return -1;
    }
    if (pages->count < 1) {
        SIM_ERROR("Expected at least 1 pfn in PAGE_DATA record");
        return -1;
    }
    if (pages->_res1) {
        SIM_ERROR("Reserved bits set in PAGE_DATA record: 0x%08x",
                  pages->_res1);
        return -1;
    }
    if (rec->length < sizeof(*pages) + (uint64_t)pages->count * 8) {
        SIM_ERROR("PAGE_DATA record (length %u) too short to contain %u"
                  " pfns worth of information", rec->length, pages->count);
        return -1;
    }
    return 0;
}

/* Each pfn word: no reserved bits, a pfn the domain has, a known type.
 * Counts the pages that carry data; errno is EINVAL on failure. */
static int check_pfns(struct restore_ctx *ctx, const uint64_t *words,
                      unsigned int count, unsigned int *pages_of_data)
{
    xc_interface *xch = ctx->xch;
    unsigned int i;

    *pages_of_data = 0;
    for (i = 0; i < count; i++) {
        uint64_t pfn = words[i] & PAGE_DATA_PFN_MASK;
        uint32_t type = (uint32_t)(words[i] >> 60);

        if (words[i] & ~(PAGE_DATA_PFN_MASK | PAGE_DATA_TYPE_MASK)) {
            SIM_ERROR("Reserved bits set in pfn[%u]: 0x%016" PRIx64, i,
                      words[i]);
            return -1;
        }
        if (!pfn_is_valid(ctx, pfn)) {
            SIM_ERROR("pfn %#" PRIx64 " (index %u) outside domain maximum",
                      pfn, i);
            return -1;
        }
        if (!type_is_known(type)) {
            SIM_ERROR("Unknown type %#" PRIx32 " for pfn %#" PRIx64
                      " (index %u)", type << 28, pfn, i);
            return -1;
        }
        if (type_has_data(type))
            (*pages_of_data)++;
    }
    return 0;
}

static int handle_page_data(struct restore_ctx *ctx, struct sr_record *rec)
{
    xc_interface *xch = ctx->xch;
    const struct sr_page_data_header *pages = rec->data;
    const uint64_t *words;
    unsigned int pages_of_data;
    int rc;

    /* v2 compatibility: HVM infers STATIC_DATA_END at the first
     * PAGE_DATA (PV at X86_PV_P2M_FRAMES, which must precede it). */
    rc = infer_static_data_end(ctx);
    if (rc)
        return rc;

    if (check_page_data_header(ctx, rec))
        return -1;
    words = (const uint64_t *)(pages + 1);
    if (check_pfns(ctx, words, pages->count, &pages_of_data))
        return -1;
    if (rec->length != sizeof(*pages) + (uint64_t)pages->count * 8 +
        (uint64_t)pages_of_data * SIM_PAGE_SIZE) {
        SIM_ERROR("PAGE_DATA record wrong size: length %u, expected "
                  "%zu + %zu + %lu", rec->length, sizeof(*pages),
                  (size_t)pages->count * 8,
                  (unsigned long)pages_of_data * SIM_PAGE_SIZE);
        return -1;
    }
    errno = 0;

    sim_stall(xch, SCOPE_RESTORE);
    return process_page_data(ctx, pages->count, words,
                             (const uint8_t *)(words + pages->count));
}

/* ------------------------------------------------------------------ */
/* PV records                                                          */

static int handle_x86_pv_info(struct restore_ctx *ctx, struct sr_record *rec)
{
    xc_interface *xch = ctx->xch;
    const struct sr_x86_pv_info *info = rec->data;
    unsigned int i;

    errno = EINVAL;
    if (ctx->seen_pv_info) {
        SIM_ERROR("Already received X86_PV_INFO record");
        return -1;
    }
    if (ctx->format_version >= 3 && ctx->seen_static_data_end) {
        SIM_ERROR("X86_PV_INFO record after STATIC_DATA_END");
        return -1;
    }
    if (rec->length < sizeof(*info)) {
        SIM_ERROR("X86_PV_INFO record truncated: length %u, expected %zu",
                  rec->length, sizeof(*info));
        return -1;
    }
    if (!((info->guest_width == 4 && info->pt_levels == 3) ||
          (info->guest_width == 8 && info->pt_levels == 4))) {
        SIM_ERROR("Invalid X86_PV_INFO combination: width %u, pt_levels %u",
                  info->guest_width, info->pt_levels);
        return -1;
    }
    for (i = 0; i < sizeof(info->_res); i++)
        if (info->_res[i]) {
            SIM_ERROR("Reserved bits set in X86_PV_INFO");
            return -1;
        }
    if (info->guest_width != 8) {
        SIM_ERROR("X86_PV_INFO width/pt_levels settings %u/%u mismatch with"
                  " d%d %u/%u", info->guest_width, info->pt_levels,
                  ctx->domid, 8, 4);
        return -1;
    }
    ctx->seen_pv_info = true;
    errno = 0;
    return 0;
}

/* The record's shape, and an end pfn the domain can hold; errno is EINVAL
 * (ENOMEM past the domain's maximum) on failure. */
static int check_p2m_frames(struct restore_ctx *ctx,
                            const struct sr_record *rec)
{
    xc_interface *xch = ctx->xch;
    const struct sr_x86_pv_p2m_frames *data = rec->data;
    unsigned long start, end;

    errno = EINVAL;
    if (!ctx->seen_pv_info) {
        SIM_ERROR("Not yet received X86_PV_INFO record");
        return -1;
    }
    if (rec->length < sizeof(*data)) {
        SIM_ERROR("X86_PV_P2M_FRAMES record truncated: length %u, min %zu",
                  rec->length, sizeof(*data) + sizeof(uint64_t));
        return -1;
    }
    if (data->start_pfn > data->end_pfn) {
        SIM_ERROR("End pfn in stream (%#x) exceeds Start (%#x)",
                  data->end_pfn, data->start_pfn);
        return -1;
    }

    start = data->start_pfn / 512;
    end = data->end_pfn / 512 + 1;
    if (rec->length != sizeof(*data) + (end - start) * sizeof(uint64_t)) {
        SIM_ERROR("X86_PV_P2M_FRAMES record wrong size: start_pfn %#x"
                  ", end_pfn %#x, length %u, expected %zu + (%lu - %lu) * %zu",
                  data->start_pfn, data->end_pfn, rec->length,
                  sizeof(*data), end, start, sizeof(uint64_t));
        return -1;
    }
    if (data->end_pfn >= ctx->d.map_pages) {
        errno = ENOMEM;
        SIM_ERROR("Failed to (re)alloc %zu bytes for p2m: end pfn %#x beyond"
                  " the domain's maximum %#lx",
                  ((size_t)data->end_pfn + 1) * 8, data->end_pfn,
                  ctx->d.map_pages - 1);
        return -1;
    }
    return 0;
}

static int handle_x86_pv_p2m_frames(struct restore_ctx *ctx,
                                    struct sr_record *rec)
{
    xc_interface *xch = ctx->xch;
    const struct sr_x86_pv_p2m_frames *data = rec->data;
    unsigned long start, end, x;
    uint64_t *p;
    int rc;

    rc = infer_static_data_end(ctx);
    if (rc)
        return rc;
    if (check_p2m_frames(ctx, rec))
        return -1;

    start = data->start_pfn / 512;
    end = data->end_pfn / 512 + 1;
    if (end > ctx->p2m_frames) {
        p = realloc(ctx->p2m_pfns, end * sizeof(*p));
        if (!p) {
            errno = ENOMEM;
            SIM_ERROR("Failed to (re)alloc %zu bytes for p2m frame list",
                      end * sizeof(*p));
            return -1;
        }
        for (x = ctx->p2m_frames; x < end; x++)
            p[x] = ~0ULL;
        ctx->p2m_pfns = p;
        ctx->p2m_frames = end;
    }
    if (!ctx->seen_p2m_frames || data->end_pfn > ctx->max_pfn)
        ctx->max_pfn = data->end_pfn;
    ctx->seen_p2m_frames = true;

    for (x = 0; x < end - start; x++)
        ctx->p2m_pfns[start + x] = ((const uint64_t *)(data + 1))[x];
    errno = 0;
    return 0;
}

static const char *vcpu_rec_name(uint32_t type)
{
    switch (type) {
    case REC_TYPE_X86_PV_VCPU_BASIC:
        return "X86_PV_VCPU_BASIC";
    case REC_TYPE_X86_PV_VCPU_EXTENDED:
        return "X86_PV_VCPU_EXTENDED";
    case REC_TYPE_X86_PV_VCPU_XSAVE:
        return "X86_PV_VCPU_XSAVE";
    default:
        return "X86_PV_VCPU_MSRS";
    }
}

/* The size each kind of vCPU blob must have; BASIC also gives vCPU0's
 * start_info pfn (in rdx) and counts the vCPUs. */
static int handle_vcpu_blob_body(struct restore_ctx *ctx,
                                 const struct sr_record *rec,
                                 const char *rec_name, size_t blobsz)
{
    xc_interface *xch = ctx->xch;
    const struct sr_x86_pv_vcpu_hdr *vhdr = rec->data;

    switch (rec->type) {
    case REC_TYPE_X86_PV_VCPU_BASIC:
        if (blobsz != sizeof(vcpu_guest_context_x86_64_t)) {
            SIM_ERROR("%s record wrong size: expected %zu, got %u", rec_name,
                      sizeof(*vhdr) + sizeof(vcpu_guest_context_x86_64_t),
                      rec->length);
            return -1;
        }
        ctx->vcpu_basic[vhdr->vcpu_id] = true;
        if (vhdr->vcpu_id == 0) {
            vcpu_guest_context_x86_64_t v;

            memcpy(&v, vhdr + 1, sizeof(v));
            ctx->start_info_pfn = v.user_regs.rdx;
        }
        if (vhdr->vcpu_id + 1 > ctx->restored_vcpus)
            ctx->restored_vcpus = vhdr->vcpu_id + 1;
        return 0;
    case REC_TYPE_X86_PV_VCPU_EXTENDED:
        if (blobsz > 128) {
            SIM_ERROR("%s record too long: max %zu, got %u", rec_name,
                      sizeof(*vhdr) + 128, rec->length);
            return -1;
        }
        return 0;
    case REC_TYPE_X86_PV_VCPU_XSAVE:
        if (blobsz < 16) {
            SIM_ERROR("%s record too short: min %zu, got %u", rec_name,
                      sizeof(*vhdr) + 16, rec->length);
            return -1;
        }
        return 0;
    default:
        if (blobsz % 16) {
            SIM_ERROR("%s record payload size %zu expected to be a multiple"
                      " of %d", rec_name, blobsz, 16);
            return -1;
        }
        return 0;
    }
}

static int handle_x86_pv_vcpu_blob(struct restore_ctx *ctx,
                                   struct sr_record *rec)
{
    xc_interface *xch = ctx->xch;
    const struct sr_x86_pv_vcpu_hdr *vhdr = rec->data;
    const char *rec_name = vcpu_rec_name(rec->type);
    size_t blobsz;

    errno = EINVAL;
    if (!ctx->seen_pv_info) {
        SIM_ERROR("Not yet received X86_PV_INFO record");
        return -1;
    }
    if (rec->length < sizeof(*vhdr)) {
        SIM_ERROR("%s record truncated: length %u, header size %zu",
                  rec_name, rec->length, sizeof(*vhdr));
        return -1;
    }
    blobsz = rec->length - sizeof(*vhdr);
    if (blobsz == 0) {
        SIM_DBGPRINTF("Skipping empty %s record for vcpu %u\n",
                      sim_rec_type_to_str(rec->type), vhdr->vcpu_id);
        errno = 0;
        return 0;
    }
    if (vhdr->_res1) {
        SIM_ERROR("Reserved bits set in %s record: 0x%08x", rec_name,
                  vhdr->_res1);
        return -1;
    }
    if (vhdr->vcpu_id >= ctx->nr_vcpus) {
        SIM_ERROR("%s record vcpu_id (%u) exceeds domain max (%lu)",
                  rec_name, vhdr->vcpu_id, ctx->nr_vcpus - 1);
        return -1;
    }

    if (handle_vcpu_blob_body(ctx, rec, rec_name, blobsz))
        return -1;
    errno = 0;
    return 0;
}

static int handle_shared_info(struct restore_ctx *ctx, struct sr_record *rec)
{
    xc_interface *xch = ctx->xch;

    errno = EINVAL;
    if (!ctx->seen_pv_info) {
        SIM_ERROR("Not yet received X86_PV_INFO record");
        return -1;
    }
    if (rec->length != SIM_PAGE_SIZE) {
        SIM_ERROR("X86_PV_SHARED_INFO record wrong size: length %u"
                  ", expected 4096", rec->length);
        return -1;
    }
    errno = 0;
    return 0;
}

/* ------------------------------------------------------------------ */
/* HVM records                                                         */

static int handle_hvm_context(struct restore_ctx *ctx, struct sr_record *rec)
{
    xc_interface *xch = ctx->xch;
    uint8_t *p = realloc(ctx->hvm_context, rec->length ? rec->length : 1);

    if (!p) {
        errno = ENOMEM;
        SIM_ERROR("Unable to allocate %u bytes for hvm context", rec->length);
        return -1;
    }
    memcpy(p, rec->data, rec->length);
    ctx->hvm_context = p;
    ctx->hvm_context_len = rec->length;
    return 0;
}

static int handle_hvm_params(struct restore_ctx *ctx, struct sr_record *rec)
{
    xc_interface *xch = ctx->xch;
    const struct sr_hvm_params *hdr = rec->data;
    const struct sr_hvm_params_entry *entry;
    unsigned int i;

    errno = EINVAL;
    if (rec->length < sizeof(*hdr)) {
        SIM_ERROR("HVM_PARAMS record truncated: length %u, header size %zu",
                  rec->length, sizeof(*hdr));
        return -1;
    }
    if (rec->length != sizeof(*hdr) + (uint64_t)hdr->count * sizeof(*entry)) {
        SIM_ERROR("HVM_PARAMS record truncated: header %zu, count %u, "
                  "expected len %zu, got %u", sizeof(*hdr), hdr->count,
                  (size_t)hdr->count * sizeof(*entry), rec->length);
        return -1;
    }
    if (hdr->_res1) {
        SIM_ERROR("Reserved field set in HVM_PARAMS record: 0x%08x",
                  hdr->_res1);
        return -1;
    }
    errno = 0;
    if (hdr->count == 0) {
        SIM_DBGPRINTF("Skipping empty HVM_PARAMS record\n");
        return 0;
    }

    entry = (const struct sr_hvm_params_entry *)(hdr + 1);
    for (i = 0; i < hdr->count; i++, entry++) {
        switch (entry->index) {
        case HVM_PARAM_CONSOLE_PFN:
            ctx->console_gfn = entry->value;
            break;
        case HVM_PARAM_STORE_PFN:
            ctx->xenstore_gfn = entry->value;
            break;
        default:
            break;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Dispatch                                                            */

static int process_record(struct restore_ctx *ctx, struct sr_record *rec);

static int stream_complete(struct restore_ctx *ctx);

static int send_checkpoint_dirty_pfn_list(struct restore_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    /* The simulated secondary does not run: its dirty list is empty. */
    struct sr_rhdr rh = { REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST, 0 };
    struct sim_io io = { .fd = ctx->send_back_fd, .limit = ULLONG_MAX };
    /* The header as the simulated release writes it: 8 bytes up to 4.17,
     * then the real library's whole record struct, zero-padded to 16
     * (releases.py), which the primary does not expect. */
    unsigned char header[SIM_COLO_BACK_HEADER] = { 0 };

    _Static_assert(sizeof(header) >= sizeof(rh), "back channel header");
    memcpy(header, &rh, sizeof(rh));
    if (sim_write_exact(&io, header, sizeof(header))) {
        SIM_PERROR("Failed to write dirty bitmap to stream");
        return -1;
    }
    return 0;
}

static int colo_callback_rc(int ret)
{
    if (ret == 1)
        return 0;
    errno = EINVAL;
    return ret == 2 ? BROKEN_CHANNEL : -1;
}

/* A checkpoint's records, buffered since the last one, now applied. */
static int apply_buffered_records(struct restore_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    unsigned int i;
    int rc;

    SIM_IPRINTF("All records buffered");
    for (i = 0; i < ctx->buffered_nr; i++) {
        rc = process_record(ctx, &ctx->buffered[i]);
        if (rc) {
            /* Free what is left. */
            for (i++; i < ctx->buffered_nr; i++) {
                free(ctx->buffered[i].data);
                ctx->buffered[i].data = NULL;
            }
            ctx->buffered_nr = 0;
            return rc;
        }
    }
    ctx->buffered_nr = 0;
    SIM_IPRINTF("All records processed");
    return 0;
}

/* COLO at each checkpoint: the secondary commits and runs (the toolstack's
 * callbacks), then reports its (empty) dirty pfn list. */
static int colo_checkpoint(struct restore_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    int rc;

    rc = stream_complete(ctx);
    if (rc)
        return rc;

    sim_fault_point(xch, SCOPE_RESTORE, "restore_results");
    ctx->cb->restore_results(ctx->xenstore_gfn, ctx->console_gfn,
                             ctx->cb->data);

    sim_fault_point(xch, SCOPE_RESTORE, "postcopy");
    rc = colo_callback_rc(ctx->cb->postcopy(ctx->cb->data));
    if (rc)
        return rc;
    sim_fault_point(xch, SCOPE_RESTORE, "wait_checkpoint");
    rc = colo_callback_rc(ctx->cb->wait_checkpoint(ctx->cb->data));
    if (rc)
        return rc;
    sim_fault_point(xch, SCOPE_RESTORE, "suspend");
    rc = colo_callback_rc(ctx->cb->suspend(ctx->cb->data));
    if (rc)
        return rc;

    return send_checkpoint_dirty_pfn_list(ctx);
}

static int handle_checkpoint(struct restore_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    int rc, ret;

    if (ctx->stream_type == XC_STREAM_PLAIN) {
        errno = EINVAL;
        SIM_ERROR("Found checkpoint in non-checkpointed stream");
        return -1;
    }

    sim_fault_point(xch, SCOPE_RESTORE, "checkpoint");
    ret = ctx->cb->checkpoint(ctx->cb->data);
    switch (ret) {
    case XGR_CHECKPOINT_SUCCESS:
        break;
    case XGR_CHECKPOINT_FAILOVER:
        if (ctx->buffer_all_records)
            return BROKEN_CHANNEL;
        errno = EINVAL;        /* no consistent state yet */
        return -1;
    default:
        errno = EINVAL;
        return -1;
    }

    if (ctx->buffer_all_records) {
        rc = apply_buffered_records(ctx);
        if (rc)
            return rc;
    } else
        ctx->buffer_all_records = true;

    return ctx->stream_type == XC_STREAM_COLO ? colo_checkpoint(ctx) : 0;
}

static int buffer_record(struct restore_ctx *ctx, struct sr_record *rec)
{
    xc_interface *xch = ctx->xch;

    if (ctx->buffered_nr >= ctx->buffered_alloc) {
        unsigned int n = ctx->buffered_alloc + DEFAULT_BUF_RECORDS;
        struct sr_record *p = realloc(ctx->buffered, n * sizeof(*p));

        if (!p) {
            errno = ENOMEM;
            SIM_ERROR("Failed to realloc memory for buffered records");
            return -1;
        }
        ctx->buffered = p;
        ctx->buffered_alloc = n;
    }
    ctx->buffered[ctx->buffered_nr++] = *rec;
    rec->data = NULL;
    return 0;
}

static int handle_end(struct restore_ctx *ctx, struct sr_record *rec)
{
    if (rec->length) {
        errno = EINVAL;
        sim_report(ctx->xch, XTL_ERROR, 1, "END record with length %u",
                   rec->length);
        return -1;
    }
    return 0;
}

static int handle_verify(struct restore_ctx *ctx, struct sr_record *rec)
{
    (void)rec;
    sim_report(ctx->xch, XTL_DETAIL, 0, "Verify mode enabled");
    ctx->verify = true;
    return 0;
}

static int handle_checkpoint_record(struct restore_ctx *ctx,
                                    struct sr_record *rec)
{
    (void)rec;
    return handle_checkpoint(ctx);
}

static int handle_static_data_end_record(struct restore_ctx *ctx,
                                         struct sr_record *rec)
{
    if (rec->length) {
        errno = EINVAL;
        sim_report(ctx->xch, XTL_ERROR, 1,
                   "STATIC_DATA_END record with length %u", rec->length);
        return -1;
    }
    return handle_static_data_end(ctx);
}

/* Which guests a record type means something for. */
enum rec_guest { FOR_ALL, FOR_PV, FOR_HVM };

static const struct {
    uint32_t type;
    enum rec_guest guest;
    int (*handle)(struct restore_ctx *ctx, struct sr_record *rec);
} record_handlers[] = {
    { REC_TYPE_END,                  FOR_ALL, handle_end },
    { REC_TYPE_PAGE_DATA,            FOR_ALL, handle_page_data },
    { REC_TYPE_VERIFY,               FOR_ALL, handle_verify },
    { REC_TYPE_CHECKPOINT,           FOR_ALL, handle_checkpoint_record },
    { REC_TYPE_STATIC_DATA_END,      FOR_ALL, handle_static_data_end_record },
    { REC_TYPE_X86_TSC_INFO,         FOR_ALL, handle_tsc_info },
    { REC_TYPE_X86_CPUID_POLICY,     FOR_ALL, handle_cpuid_policy },
    { REC_TYPE_X86_MSR_POLICY,       FOR_ALL, handle_msr_policy },
    { REC_TYPE_HVM_CONTEXT,          FOR_HVM, handle_hvm_context },
    { REC_TYPE_HVM_PARAMS,           FOR_HVM, handle_hvm_params },
    { REC_TYPE_X86_PV_INFO,          FOR_PV,  handle_x86_pv_info },
    { REC_TYPE_X86_PV_P2M_FRAMES,    FOR_PV,  handle_x86_pv_p2m_frames },
    { REC_TYPE_X86_PV_VCPU_BASIC,    FOR_PV,  handle_x86_pv_vcpu_blob },
    { REC_TYPE_X86_PV_VCPU_EXTENDED, FOR_PV,  handle_x86_pv_vcpu_blob },
    { REC_TYPE_X86_PV_VCPU_XSAVE,    FOR_PV,  handle_x86_pv_vcpu_blob },
    { REC_TYPE_X86_PV_VCPU_MSRS,     FOR_PV,  handle_x86_pv_vcpu_blob },
    { REC_TYPE_SHARED_INFO,          FOR_PV,  handle_shared_info },
};

/* Handle one record and free its data; RECORD_NOT_PROCESSED for a type
 * this guest has no handler for. */
static int process_record(struct restore_ctx *ctx, struct sr_record *rec)
{
    enum rec_guest guest = ctx->hvm ? FOR_HVM : FOR_PV;
    int rc = RECORD_NOT_PROCESSED;
    size_t i;

    for (i = 0; i < sizeof(record_handlers) / sizeof(record_handlers[0]);
         i++)
        if (record_handlers[i].type == rec->type &&
            (record_handlers[i].guest == FOR_ALL ||
             record_handlers[i].guest == guest)) {
            rc = record_handlers[i].handle(ctx, rec);
            break;
        }

    free(rec->data);
    rec->data = NULL;
    return rc;
}

/* ------------------------------------------------------------------ */
/* Completion                                                          */

static int check_hvm_context(struct restore_ctx *ctx, unsigned long *vcpus)
{
    const uint8_t *p = ctx->hvm_context, *end = p + ctx->hvm_context_len;
    struct hvm_save_descriptor desc;
    struct hvm_save_header hdr;
    bool first = true;

    *vcpus = 0;
    if (!p)
        return -1;
    for (;;) {
        if ((size_t)(end - p) < sizeof(desc))
            return -1;
        memcpy(&desc, p, sizeof(desc));
        p += sizeof(desc);
        if ((size_t)(end - p) < desc.length)
            return -1;
        if (first) {
            if (desc.typecode != 1 || desc.length != sizeof(hdr))
                return -1;
            memcpy(&hdr, p, sizeof(hdr));
            if (hdr.magic != HVM_FILE_MAGIC)
                return -1;
            first = false;
        } else if (desc.typecode == 2) {
            if (desc.length != sizeof(struct hvm_hw_cpu))
                return -1;
            if ((unsigned long)desc.instance + 1 > *vcpus)
                *vcpus = desc.instance + 1;
        } else if (desc.typecode == 0) {
            return desc.length == 0 && p == end && *vcpus ? 0 : -1;
        }
        p += desc.length;
    }
}

/* A PV guest's end of stream: vCPU0 was sent, its start_info (found
 * through vCPU0's rdx) names ring frames the guest has, and so does the
 * p2m frame list. */
static int pv_complete(struct restore_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    start_info_x86_64_t sinfo;
    unsigned long x;

    if (!ctx->vcpu_basic[0]) {
        errno = EINVAL;
        SIM_ERROR("Sender didn't send vcpu0's basic state");
        return -1;
    }
    if (ctx->start_info_pfn > ctx->max_pfn ||
        ctx->start_info_pfn >= ctx->d.nr_pages) {
        errno = EINVAL;
        SIM_ERROR("Start Info pfn %#lx out of range", ctx->start_info_pfn);
        return -1;
    }
    memcpy(&sinfo, ctx->d.mem + (ctx->start_info_pfn << SIM_PAGE_SHIFT),
           sizeof(sinfo));
    if (sinfo.store_mfn > ctx->max_pfn) {
        errno = EINVAL;
        SIM_ERROR("XenStore pfn %#" PRIx64 " out of range",
                  (uint64_t)sinfo.store_mfn);
        return -1;
    }
    if (sinfo.console.domU.mfn > ctx->max_pfn) {
        errno = EINVAL;
        SIM_ERROR("Console pfn %#" PRIx64 " out of range",
                  (uint64_t)sinfo.console.domU.mfn);
        return -1;
    }
    ctx->xenstore_gfn = sinfo.store_mfn;
    ctx->console_gfn = sinfo.console.domU.mfn;
    for (x = 0; x < ctx->p2m_frames; x++)
        if (ctx->p2m_pfns[x] > ctx->max_pfn) {
            errno = EINVAL;
            SIM_ERROR("pfn (%#" PRIx64 ") for p2m_frame_list[%lu] out of"
                      " range", ctx->p2m_pfns[x], x);
            return -1;
        }
    return 0;
}

/* Write what the restore established to the domain's meta. */
static int commit_restored(struct restore_ctx *ctx, unsigned long nvcpus)
{
    xc_interface *xch = ctx->xch;
    char kind[8], vcpus[24], nr[24], store[24], cons[24], sev[24], cev[24];
    char sdom[24], cdom[24], khz[24], st[8], si[24], p2m[24];
    int rc;

    snprintf(kind, sizeof(kind), "%s", ctx->hvm ? "hvm" : "pv");
    snprintf(vcpus, sizeof(vcpus), "%lu", nvcpus);
    snprintf(nr, sizeof(nr), "%lu", ctx->d.nr_pages);
    snprintf(store, sizeof(store), "%lu", (unsigned long)ctx->xenstore_gfn);
    snprintf(cons, sizeof(cons), "%lu", (unsigned long)ctx->console_gfn);
    snprintf(sev, sizeof(sev), "%u", ctx->store_evtchn);
    snprintf(cev, sizeof(cev), "%u", ctx->console_evtchn);
    snprintf(sdom, sizeof(sdom), "%u", ctx->store_domid);
    snprintf(cdom, sizeof(cdom), "%u", ctx->console_domid);
    snprintf(khz, sizeof(khz), "%lu", ctx->tsc_khz);
    snprintf(st, sizeof(st), "%d", (int)ctx->stream_type);
    snprintf(si, sizeof(si), "%lu", ctx->start_info_pfn);
    snprintf(p2m, sizeof(p2m), "%lu",
             ctx->p2m_frames ? (unsigned long)ctx->p2m_pfns[0] : 0ul);

    rc = sim_domain_update(&ctx->d, "kind", kind, "vcpus", vcpus,
                           "nr_pages", nr, "store_gfn", store,
                           "console_gfn", cons, "store_evtchn", sev,
                           "console_evtchn", cev, "store_domid", sdom,
                           "console_domid", cdom, "tsc_khz", khz,
                           "restore_stream_type", st, "state", "paused",
                           NULL);
    if (!rc && !ctx->hvm)
        rc = sim_domain_update(&ctx->d, "start_info_pfn", si, "p2m_pfn", p2m,
                               NULL);
    if (rc) {
        SIM_PERROR("Unable to commit the restored domain");
        return -1;
    }
    return 0;
}

/* libxenguest's stream_complete (vCPU context, start info, grant table
 * seeding): check the guest is whole, then commit it to the meta. */
static int stream_complete(struct restore_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    unsigned long nvcpus = 0;

    if (ctx->hvm) {
        if (check_hvm_context(ctx, &nvcpus)) {
            errno = EINVAL;
            SIM_PERROR("Unable to restore HVM context");
            return -1;
        }
    } else {
        if (pv_complete(ctx))
            return -1;
        nvcpus = ctx->restored_vcpus;
    }
    return commit_restored(ctx, nvcpus);
}

/* ------------------------------------------------------------------ */
/* The loop                                                            */

static void cleanup(struct restore_ctx *ctx)
{
    unsigned int i;

    for (i = 0; i < ctx->buffered_nr; i++)
        free(ctx->buffered[i].data);
    free(ctx->buffered);
    ctx->buffered = NULL;
    ctx->buffered_nr = 0;
    free(ctx->hvm_context);
    ctx->hvm_context = NULL;
    free(ctx->p2m_pfns);
    ctx->p2m_pfns = NULL;
}

/* setup: the stream must match the target (an empty target adopts the
 * stream's type). */
static int match_target(struct restore_ctx *ctx)
{
    xc_interface *xch = ctx->xch;

    if (ctx->guest_type != DHDR_TYPE_X86_PV &&
        ctx->guest_type != DHDR_TYPE_X86_HVM) {
        errno = EINVAL;
        SIM_ERROR("Unable to restore %s domain into an x86 %s domain",
                  sim_dhdr_type_to_str(ctx->guest_type),
                  ctx->adopt_kind ? "PV or HVM" : ctx->hvm ? "HVM" : "PV");
        return -1;
    }
    if (ctx->adopt_kind)
        ctx->hvm = ctx->guest_type == DHDR_TYPE_X86_HVM;
    else if (ctx->hvm != (ctx->guest_type == DHDR_TYPE_X86_HVM)) {
        errno = EINVAL;
        SIM_ERROR("Unable to restore %s domain into an x86%s domain",
                  sim_dhdr_type_to_str(ctx->guest_type),
                  ctx->hvm ? " HVM" : "_pv");
        return -1;
    }
    return 0;
}

/* A record no handler took: skipped if optional, else an error. */
static int unhandled_record(struct restore_ctx *ctx,
                            const struct sr_record *rec)
{
    xc_interface *xch = ctx->xch;

    if (rec->type & REC_TYPE_OPTIONAL) {
        SIM_DPRINTF("Ignoring optional record %#x (%s)",
                    rec->type, sim_rec_type_to_str(rec->type));
        return 0;
    }
    errno = EINVAL;
    SIM_ERROR("Mandatory record %#x (%s) not handled",
              rec->type, sim_rec_type_to_str(rec->type));
    return -1;
}

/* Read and handle records up to END (after the first CHECKPOINT, buffer
 * them until the next).  0 at END, and on a failover: a read error after a
 * checkpoint, or a broken channel, leaves the last complete checkpoint
 * standing.  Otherwise the failing rc. */
static int read_records(struct restore_ctx *ctx)
{
    struct sr_record rec = { 0 };
    int rc;

    do {
        rc = read_record(ctx, &rec);
        if (rc)
            return ctx->buffer_all_records ? 0 : rc;

        if (ctx->buffer_all_records && rec.type != REC_TYPE_END &&
            rec.type != REC_TYPE_CHECKPOINT) {
            rc = buffer_record(ctx, &rec);
            if (rc) {
                free(rec.data);
                return rc;
            }
            continue;
        }

        rc = process_record(ctx, &rec);
        if (rc == RECORD_NOT_PROCESSED)
            rc = unhandled_record(ctx, &rec);
        if (rc == BROKEN_CHANNEL)
            return 0;
        if (rc)
            return rc;
    } while (rec.type != REC_TYPE_END);
    return 0;
}

static int restore(struct restore_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    int rc, saved_rc = 0, saved_errno = 0;

    SIM_IPRINTF("Restoring domain");

    rc = match_target(ctx);
    if (!rc)
        rc = read_records(ctx);
    if (rc)
        goto err;

    if (ctx->stream_type == XC_STREAM_COLO) {
        /* With COLO, stream_complete already ran at the checkpoint. */
        SIM_IPRINTF("COLO Failover");
        goto done;
    }

    rc = stream_complete(ctx);
    if (rc)
        goto err;

    SIM_IPRINTF("Restore successful");
    goto done;

 err:
    saved_errno = errno ? errno : EINVAL;
    saved_rc = rc;
    SIM_PERROR("Restore failed");

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
static void check_restore_callbacks(const struct restore_callbacks *callbacks,
                                    xc_stream_type_t stream_type)
{
    switch (stream_type) {
    case XC_STREAM_COLO:
        assert(callbacks->suspend && callbacks->postcopy &&
               callbacks->wait_checkpoint && callbacks->restore_results);
        /* Fallthrough */
    case XC_STREAM_REMUS:
        assert(callbacks->checkpoint);
        /* Fallthrough */
    case XC_STREAM_PLAIN:
        break;
    default:
        assert(!"Bad stream_type");
        break;
    }
}

/* Open the target and read what the restore needs from its meta. */
static int open_target(struct restore_ctx *ctx)
{
    xc_interface *xch = ctx->xch;
    const char *kind;

    if (sim_domain_open(xch, ctx->domid, &ctx->d)) {
        SIM_PERROR("Failed to get domain info");
        return -1;
    }

    kind = sim_meta_get(&ctx->d.meta, "kind") ?: "";
    ctx->adopt_kind = !*kind;
    ctx->hvm = !strcmp(kind, "hvm");
    ctx->nr_vcpus = sim_meta_get_ul(&ctx->d.meta, "vcpus", 0);
    if (!ctx->nr_vcpus || ctx->nr_vcpus > MAX_VCPUS)
        ctx->nr_vcpus = MAX_VCPUS;
    ctx->tsc_khz = sim_meta_get_ul(&ctx->d.meta, "tsc_khz", 0);
    return 0;
}

int xc_domain_restore(xc_interface *xch, int io_fd, uint32_t dom,
                      unsigned int store_evtchn, unsigned long *store_mfn,
                      uint32_t store_domid, unsigned int console_evtchn,
                      unsigned long *console_mfn, uint32_t console_domid,
                      xc_stream_type_t stream_type,
                      struct restore_callbacks *callbacks, int send_back_fd)
{
    struct restore_ctx ctx = {
        .xch = xch,
        .fd = io_fd,
        .domid = dom,
        .stream_type = stream_type,
        .cb = callbacks,
        .send_back_fd = send_back_fd,
        .store_evtchn = store_evtchn,
        .console_evtchn = console_evtchn,
        .store_domid = store_domid,
        .console_domid = console_domid,
        .d = { .opfd = -1, .memfd = -1 },
    };
    int rc, saved_errno;

    if (!xch || xch->magic != SIM_HANDLE_MAGIC) {
        errno = EINVAL;
        return -1;
    }

    sim_fault_at_start(xch, SCOPE_RESTORE);
    check_restore_callbacks(callbacks, stream_type);
    if (open_target(&ctx))
        return -1;

    SIM_DPRINTF("fd %d, dom %u, hvm %u, stream_type %d", io_fd, dom,
                ctx.hvm, stream_type);

    if (read_headers(&ctx)) {
        rc = -1;
        saved_errno = errno;
        goto out;
    }

    next_fault(&ctx, 0);
    rc = restore(&ctx);
    saved_errno = errno;
    if (rc)
        goto out;

    SIM_IPRINTF("XenStore: mfn %#lx, dom %d, evt %u",
                (unsigned long)ctx.xenstore_gfn, ctx.store_domid,
                ctx.store_evtchn);
    SIM_IPRINTF("Console: mfn %#lx, dom %d, evt %u",
                (unsigned long)ctx.console_gfn, ctx.console_domid,
                ctx.console_evtchn);

    *console_mfn = ctx.console_gfn;
    *store_mfn = ctx.xenstore_gfn;

 out:
    sim_domain_update(&ctx.d, "restore_result", rc ? "failed" : "ok", NULL);
    sim_domain_close(&ctx.d);
    errno = saved_errno;
    return rc;
}
