/* wire.h: the constants of the wire format, in one place.
 * doc/protocol.md describes the format; every C file that needs a message
 * number, an opcode letter or the header's size takes it from here.
 * Free of Python: wire.c includes it with nothing else. */

#ifndef XN_WIRE_H
#define XN_WIRE_H

/* ---- a frame: header, then payload ---------------------------------------
 * The header is 9 bytes: the message number (a signed byte), the channel id
 * and the payload's length (big-endian int32 each). */
#define XN_HEADER_SIZE 9

/* Message numbers (the header's first byte). */
#define XN_MSG_STATUS 0
#define XN_MSG_RECONFIGURE 1
#define XN_MSG_GATEWAY_TERMINATE 2
#define XN_MSG_CHANNEL_EXEC 3
#define XN_MSG_CHANNEL_DATA 4
#define XN_MSG_CHANNEL_CLOSE 5
#define XN_MSG_CHANNEL_CLOSE_ERROR 6
#define XN_MSG_CHANNEL_LAST_MESSAGE 7
/* The highest message number there is: a frame with a higher one (or a
 * negative one) is a protocol error. */
#define XN_MSG_MAX XN_MSG_CHANNEL_LAST_MESSAGE

/* ---- a payload: a serialized value, one opcode byte per step -------------
 * Operands follow their opcode: int32 (F, G, B, K and the counts of @ O E),
 * a length and that many bytes (A M N S H I), a binary64 (D), two (T). */
#define XN_OP_BUILDTUPLE '@'
#define XN_OP_BYTES 'A'
#define XN_OP_CHANNEL 'B'
#define XN_OP_FALSE 'C'
#define XN_OP_FLOAT 'D'
#define XN_OP_FROZENSET 'E'
#define XN_OP_INT 'F'
#define XN_OP_LONG 'G'
#define XN_OP_LONGINT 'H'
#define XN_OP_LONGLONG 'I'
#define XN_OP_NEWDICT 'J'
#define XN_OP_NEWLIST 'K'
#define XN_OP_NONE 'L'
#define XN_OP_PY2STRING 'M'
#define XN_OP_PY3STRING 'N'
#define XN_OP_SET 'O'
#define XN_OP_SETITEM 'P'
#define XN_OP_STOP 'Q'
#define XN_OP_TRUE 'R'
#define XN_OP_UNICODE 'S'
#define XN_OP_COMPLEX 'T'

/* A payload that is one byte string: BYTES, its int32 length, the bytes,
 * STOP; this many bytes besides the string's own. */
#define XN_LONE_BYTES_EXTRA 6

#endif /* XN_WIRE_H */
