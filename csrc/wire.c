/* wire.c: byte-level routines of the wire format (WIRE.md), free of Python.
 * Owns the message header layout; the operand helpers are in execnet.h. */

#define XN_WIRE_ONLY
#include "execnet.h"

/* Writes the message header for a payload of length bytes at p. */
void
xn_put_header(unsigned char *p, int8_t msgcode, int32_t channel, int32_t length)
{
    p[0] = (unsigned char)msgcode;
    xn_put_i32(p + 1, channel);
    xn_put_i32(p + 5, length);
}

/* Reads the message header at p into its three fields (returns nothing). */
void
xn_get_header(const unsigned char *p, int8_t *msgcode, int32_t *channel,
              int32_t *length)
{
    *msgcode = (int8_t)(p[0] <= 127 ? p[0] : (int)p[0] - 256);
    *channel = xn_get_i32(p + 1);
    *length = xn_get_i32(p + 5);
}
