/*
 * simhost: the libxc migration stream, v3 (libxc-migration-stream.pandoc),
 * and the I/O layer both directions use (guest.c); the layout of simhost/
 * is in simhost.h.
 */
#ifndef SIMHOST_STREAM_H
#define SIMHOST_STREAM_H

#include <stdint.h>
#include <sys/uio.h>

#include "simhost.h"

#define IHDR_MARKER  0xffffffffffffffffULL
#define IHDR_ID      0x58454E46U      /* "XENF" */
#define IHDR_VERSION 3
#define IHDR_OPT_BIG_ENDIAN 0x0001

#define DHDR_TYPE_X86_PV  1
#define DHDR_TYPE_X86_HVM 2

#define REC_TYPE_END                       0x00000000U
#define REC_TYPE_PAGE_DATA                 0x00000001U
#define REC_TYPE_X86_PV_INFO               0x00000002U
#define REC_TYPE_X86_PV_P2M_FRAMES         0x00000003U
#define REC_TYPE_X86_PV_VCPU_BASIC         0x00000004U
#define REC_TYPE_X86_PV_VCPU_EXTENDED      0x00000005U
#define REC_TYPE_X86_PV_VCPU_XSAVE         0x00000006U
#define REC_TYPE_SHARED_INFO               0x00000007U
#define REC_TYPE_X86_TSC_INFO              0x00000008U
#define REC_TYPE_HVM_CONTEXT               0x00000009U
#define REC_TYPE_HVM_PARAMS                0x0000000AU
#define REC_TYPE_TOOLSTACK                 0x0000000BU
#define REC_TYPE_X86_PV_VCPU_MSRS          0x0000000CU
#define REC_TYPE_VERIFY                    0x0000000DU
#define REC_TYPE_CHECKPOINT                0x0000000EU
#define REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST 0x0000000FU
#define REC_TYPE_STATIC_DATA_END           0x00000010U
#define REC_TYPE_X86_CPUID_POLICY          0x00000011U
#define REC_TYPE_X86_MSR_POLICY            0x00000012U
#define REC_TYPE_OPTIONAL                  0x80000000U

#define PAGE_DATA_PFN_MASK  0x000fffffffffffffULL
#define PAGE_DATA_TYPE_MASK 0xf000000000000000ULL
/* XEN_DOMCTL_PFINFO_* (domctl.h), as they appear in bits 63-60. */
#define PFINFO_NOTAB   0x0U
#define PFINFO_L1TAB   0x1U
#define PFINFO_L4TAB   0x4U
#define PFINFO_LPINTAB 0x8U
#define PFINFO_BROKEN  0xdU
#define PFINFO_XALLOC  0xeU
#define PFINFO_XTAB    0xfU

struct sr_ihdr {
    uint64_t marker;
    uint32_t id;
    uint32_t version;
    uint16_t options;
    uint16_t _res1;
    uint32_t _res2;
};

struct sr_dhdr {
    uint32_t type;
    uint16_t page_shift;
    uint16_t _res1;
    uint32_t xen_major;
    uint32_t xen_minor;
};

struct sr_rhdr {
    uint32_t type;
    uint32_t length;
};

struct sr_page_data_header {
    uint32_t count;
    uint32_t _res1;
};

struct sr_x86_pv_info {
    uint8_t guest_width;
    uint8_t pt_levels;
    uint8_t _res[6];
};

struct sr_x86_pv_p2m_frames {
    uint32_t start_pfn;
    uint32_t end_pfn;
};

struct sr_x86_pv_vcpu_hdr {
    uint32_t vcpu_id;
    uint32_t _res1;
};

struct sr_x86_tsc_info {
    uint32_t mode;
    uint32_t khz;
    uint64_t nsec;
    uint32_t incarnation;
    uint32_t _res1;
};

struct sr_hvm_params_entry {
    uint64_t index;
    uint64_t value;
};

struct sr_hvm_params {
    uint32_t count;
    uint32_t _res1;
};

/* One PAGE_DATA record may carry at most this many pfns. */
#define SIM_PFN_PER_REC SIM_MAX_BATCH

/* ---- I/O (guest.c) ---- */

struct sim_io {
    int fd;
    unsigned long long written;   /* bytes the caller asked to write */
    unsigned long long limit;     /* truncate-stream: ULLONG_MAX if none */
};

/* writev of all iov (any count, any sizes), honouring the truncation
 * limit.  -1 with errno on failure. */
int sim_writev_exact(struct sim_io *io, const struct iovec *iov, int iovcnt);
int sim_write_exact(struct sim_io *io, const void *buf, size_t len);
/* Read exactly len bytes.  EOF: -1 with errno = 0 if nothing was read at
 * all when eof_ok_at_start, else -1 with errno = EIO ("stream truncated"). */
int sim_read_exact(int fd, void *buf, size_t len);
/* Write a record: header, body parts, zero padding to 8 bytes. */
int sim_write_record(struct sim_io *io, uint32_t type, const void *a,
                     size_t alen, const void *b, size_t blen);
const char *sim_rec_type_to_str(uint32_t type);
const char *sim_dhdr_type_to_str(uint32_t type);

#endif /* SIMHOST_STREAM_H */
