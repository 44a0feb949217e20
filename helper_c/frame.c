/*
 * Building frames: the fixed part of the helper's senders.
 *
 * The generated senders (xensr_msgs.c) include this file rather than link
 * it, so that every program built from the stubs (the helper, the
 * benchmark helper, the code generator's test driver) gets it without
 * listing another source, and so that these stay static to one
 * translation unit.  Nothing here depends on the message table beyond
 * XENSR_FRAME_BODY_MAX.
 *
 * A frame is a native u16 body length, then the body: the u16 message
 * type and the arguments, integers at their native width, a STRING as a
 * u32 length counting its NUL, the bytes and the NUL (docs/protocol.md §4).
 */

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "xensr_msgs.h"

/* The helper is single-threaded: one frame is built at a time. */
static unsigned char frame[2 + XENSR_FRAME_BODY_MAX];

static inline unsigned char *put(unsigned char *p, const void *v, size_t n)
{
    memcpy(p, v, n);
    return p + n;
}

/* A STRING: u32 length including the NUL, the bytes, the NUL. */
static inline unsigned char *put_string(unsigned char *p, const char *s, size_t len)
{
    uint32_t wire = (uint32_t)len + 1;

    p = put(p, &wire, sizeof(wire));
    p = put(p, s, len);
    *p++ = 0;
    return p;
}

/*
 * Shorten string lengths, last string first, until the body fits:
 * fixed is the body size without string contents and NULs.
 */
static inline void fit(size_t fixed, size_t *lens, int n)
{
    size_t total = fixed;
    int i;

    for (i = 0; i < n; i++)
        total += lens[i] + 1;
    for (i = n - 1; i >= 0 && total > XENSR_FRAME_BODY_MAX; i--) {
        size_t over = total - XENSR_FRAME_BODY_MAX;
        size_t cut = over < lens[i] ? over : lens[i];

        lens[i] -= cut;
        total -= cut;
    }
}

/* Fill in the body length of the frame ending at end, and send it. */
static inline void transmit(unsigned char *end)
{
    uint16_t body_len = (uint16_t)(end - (frame + 2));

    memcpy(frame, &body_len, sizeof(body_len));
    xensr_helper_transmit(frame, (size_t)(end - frame));
}
