/* wire.c: byte-level routines of the wire format (doc/protocol.md), free of Python.
 * Owns the message header layout; the constants are in wire.h, the operand helpers in execnet.h. */

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
xn_get_header(const unsigned char *p, int8_t *msgcode, int32_t *channel, int32_t *length)
{
    *msgcode = (int8_t)(p[0] <= 127 ? p[0] : (int)p[0] - 256);
    *channel = xn_get_i32(p + 1);
    *length = xn_get_i32(p + 5);
}

/* Returns 1 if the n bytes at p are valid UTF-8 as Python's strict decoder
 * sees it (no overlong forms, no surrogates, nothing above U+10FFFF). */
static int
valid_utf8(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned char lo = 0x80, hi = 0xBF; /* bounds of the second byte */
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        }
        else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) {
                lo = 0xA0; /* overlong */
            }
            else if (c == 0xED) {
                hi = 0x9F; /* surrogates */
            }
        }
        else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) {
                lo = 0x90; /* overlong */
            }
            else if (c == 0xF4) {
                hi = 0x8F; /* above U+10FFFF */
            }
        }
        else {
            return 0;
        }
        if (n - i < len || p[i + 1] < lo || p[i + 1] > hi) {
            return 0;
        }
        for (size_t k = 2; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80) {
                return 0;
            }
        }
        i += len;
    }
    return 1;
}

/* Returns 1 if the n bytes at p look like an integer's decimal text. */
static int
plausible_int_text(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (!((c >= '0' && c <= '9') || c == '-' || c == '+' || c == '_' || c == ' ')) {
            return 0;
        }
    }
    return n > 0;
}

/* Reads the 4-byte length or count at p + *pos (left bytes from there on)
 * into *v and moves *pos past it. Returns 1 if it is not negative and the
 * bytes after it can hold that many, else 0. */
static int
length_operand(const unsigned char *p, size_t *pos, size_t left, int32_t *v)
{
    if (left < 4) {
        return 0;
    }
    *v = xn_get_i32(p + *pos);
    *pos += 4;
    return *v >= 0 && (size_t)*v <= left - 4;
}

/* Returns 1 if the payload p[0..n) is a well-formed serialized value as far
 * as can be told without building it: known opcodes, complete operands,
 * lengths that fit, a consistent stack, valid UTF-8, one value before STOP.
 * Payloads of which that can't be said return 0 and are decoded at once. */
int
xn_payload_plausible(const unsigned char *p, size_t n)
{
    size_t pos = 0, height = 0;
    while (pos < n) {
        unsigned char op = p[pos++];
        size_t left = n - pos;
        int32_t v;
        switch (op) {
        case XN_OP_NONE:
        case XN_OP_TRUE:
        case XN_OP_FALSE:
        case XN_OP_NEWDICT:
            height++;
            break;
        case XN_OP_INT:
        case XN_OP_LONG:
        case XN_OP_CHANNEL:
            if (left < 4) {
                return 0;
            }
            pos += 4;
            height++;
            break;
        case XN_OP_FLOAT:
        case XN_OP_COMPLEX:
            if (left < (op == XN_OP_FLOAT ? 8u : 16u)) {
                return 0;
            }
            pos += op == XN_OP_FLOAT ? 8 : 16;
            height++;
            break;
        case XN_OP_BYTES:
        case XN_OP_PY2STRING:
        case XN_OP_PY3STRING:
        case XN_OP_UNICODE:
        case XN_OP_LONGINT:
        case XN_OP_LONGLONG:
            if (!length_operand(p, &pos, left, &v)) {
                return 0;
            }
            if ((op == XN_OP_PY3STRING || op == XN_OP_UNICODE) && !valid_utf8(p + pos, (size_t)v)) {
                return 0;
            }
            if ((op == XN_OP_LONGINT || op == XN_OP_LONGLONG) &&
                !plausible_int_text(p + pos, (size_t)v)) {
                return 0;
            }
            pos += (size_t)v;
            height++;
            break;
        case XN_OP_NEWLIST:
            /* a list's size: each item takes a byte at least */
            if (!length_operand(p, &pos, left, &v)) {
                return 0;
            }
            height++;
            break;
        case XN_OP_SETITEM:
            if (height < 3) {
                return 0;
            }
            height -= 2;
            break;
        case XN_OP_BUILDTUPLE:
        case XN_OP_SET:
        case XN_OP_FROZENSET:
            if (left < 4) {
                return 0;
            }
            v = xn_get_i32(p + pos);
            pos += 4;
            if (v < 0 || (size_t)v > height) {
                return 0;
            }
            height = height - (size_t)v + 1;
            break;
        case XN_OP_STOP:
            return height == 1;
        default:
            return 0;
        }
    }
    return 0;
}
