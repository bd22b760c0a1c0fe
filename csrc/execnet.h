/* execnet.h: the declarations shared by the csrc/ translation units.
 * Owns the module state layout, the xn_ names and the inline byte helpers. */

#ifndef XN_EXECNET_H
#define XN_EXECNET_H

/* wire.c includes this header with XN_WIRE_ONLY defined: it sees the byte
 * helpers and nothing of Python. */
#ifndef XN_WIRE_ONLY
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <string.h>

#include "compat.h"
#endif

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "wire.h"

/* Our cross-file functions are internal to the extension: keep them out of
 * its dynamic symbol table so that calls between files are direct (the
 * module's init function is exported by PyMODINIT_FUNC regardless). */
#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

/* ---- the wire format's byte helpers (no Python) --------------------------
 * The int32 and binary64 operands, inline: the serializer runs them for
 * nearly every opcode.  Longer byte routines live in wire.c. */

_Static_assert(sizeof(double) == 8, "IEEE-754 binary64 doubles are required");

/* Writes v as 4 big-endian bytes at p. */
static inline void
xn_put_i32(unsigned char *p, int32_t v)
{
    uint32_t u = (uint32_t)v;
    p[0] = (unsigned char)(u >> 24);
    p[1] = (unsigned char)(u >> 16);
    p[2] = (unsigned char)(u >> 8);
    p[3] = (unsigned char)u;
}

/* Returns the signed 32-bit big-endian integer at p. */
static inline int32_t
xn_get_i32(const unsigned char *p)
{
    uint32_t u =
        ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
    /* two's complement without relying on an implementation-defined cast */
    if (u <= (uint32_t)INT32_MAX) {
        return (int32_t)u;
    }
    return (int32_t)(u - (uint32_t)INT32_MAX - 1u) + INT32_MIN;
}

/* Writes v as IEEE-754 binary64, big-endian, at p (8 bytes). */
static inline void
xn_put_f64(unsigned char *p, double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)u;
        u >>= 8;
    }
}

/* Returns the big-endian IEEE-754 binary64 at p. */
static inline double
xn_get_f64(const unsigned char *p)
{
    uint64_t u = 0;
    double v;
    for (int i = 0; i < 8; i++) {
        u = (u << 8) | p[i];
    }
    memcpy(&v, &u, sizeof v);
    return v;
}

/* Writes the message header for a payload of length bytes at p. */
void xn_put_header(unsigned char *p, int8_t msgcode, int32_t channel, int32_t length);
/* Returns 1 if the payload p[0..n) is a well-formed serialized value as far
 * as can be told without building it, else 0. */
int xn_payload_plausible(const unsigned char *p, size_t n);

/* Reads the message header at p into its three fields (returns nothing). */
void xn_get_header(const unsigned char *p, int8_t *msgcode, int32_t *channel, int32_t *length);

#ifndef XN_WIRE_ONLY

/* Containers nested deeper than this are refused in both directions
 * (gateway_base.MAX_NESTING). */
#define XN_MAX_NESTING 1000

/* ---- module.c: module state ---------------------------------------------- */

/* Attribute and key names, created once per module object.  Each entry
 * becomes a field `s_<name>` of xn_state holding the string "<text>". */
#define XN_STRINGS(X)                           \
    X(DUMPFORMAT_VERSION, "DUMPFORMAT_VERSION") \
    X(DumpError, "DumpError")                   \
    X(LoadError, "LoadError")                   \
    X(TimeoutError, "TimeoutError")             \
    X(Unserializer, "Unserializer")             \
    X(load, "load")                             \
    X(read, "read")                             \
    X(gateway, "gateway")                       \
    X(channelfactory, "_channelfactory")        \
    X(new, "new")                               \
    X(strconfig, "_strconfig")                  \
    X(id, "id")                                 \
    X(name, "__name__")                         \
    X(Channel, "Channel")

typedef struct {
    /* set by _install(): gateway_base's namespace and its exceptions */
    PyObject *namespace;
    PyObject *DumpError;
    PyObject *LoadError;
    PyObject *TimeoutError;
    /* the C core's types (connection.c, channel.c, event.c) */
    PyTypeObject *ConnectionType;
    PyTypeObject *ItemQueueType;
    PyTypeObject *EventType;
#define XN_STRING_FIELD(name, text) PyObject *s_##name;
    XN_STRINGS(XN_STRING_FIELD)
#undef XN_STRING_FIELD
} xn_state;

/* Returns the state of this module (a borrowed pointer, never NULL). */
static inline xn_state *
xn_get_state(PyObject *module)
{
    return (xn_state *)PyModule_GetState(module);
}

/* The module definition, to find the state from a type of the module. */
extern struct PyModuleDef xn_module_def;

/* Returns the state of the module that defined tp (borrowed), or NULL with
 * an exception set. */
xn_state *xn_state_of_type(PyTypeObject *tp);

/* Returns 0 if _install() has run, else -1 with RuntimeError set. */
int xn_require_installed(xn_state *st);

/* Returns namespace["DUMPFORMAT_VERSION"], read at every call as the pure
 * code reads its global (a borrowed reference), or NULL with NameError set. */
PyObject *xn_dumpformat_version(xn_state *st);

/* Returns a heap block of new_cap elements of size elsize holding the
 * first used elements of block, or NULL with MemoryError set (block is
 * then left as it was).  block is a heap block (or NULL), which this frees
 * or reuses, or else, if is_inline, a buffer inside a struct. */
void *xn_grow_block(void *block, int is_inline, Py_ssize_t used, Py_ssize_t new_cap, size_t elsize);

/* Raises exc_type(formatted message) with its cause suppressed, as Python's
 * `raise ... from None` does.  Returns -1 (for `return xn_raise...`). */
int xn_raise_from_none(PyObject *exc_type, const char *format, ...);

/* Returns the exception being raised (new reference, normalized) and clears
 * it, or NULL if none is set. */
PyObject *xn_fetch_exception(void);

/* Returns 0 if a METH_FASTCALL function (positional parameters only) got
 * its n arguments, else -1 with TypeError set, worded as Python's own. */
int xn_check_nargs(const char *fname, Py_ssize_t nargs, int n);

/* Returns 0, having filled out[0..nparams) from a METH_FASTCALL |
 * METH_KEYWORDS argument list (positional first, then keywords by name;
 * absent optional parameters are left NULL), or -1 with TypeError set.
 * The messages follow those of a Python function with the same signature. */
int xn_parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                  const char *const *names, int nparams, int nrequired, PyObject **out);

/* ---- serializer.c, unserializer.c ---------------------------------------- */

/* Adds dumps and dumps_internal to the module.  Returns 0, or -1 with an
 * exception set. */
int xn_serializer_add_functions(PyObject *module);

/* Adds loads and loads_internal to the module.  Returns 0, or -1 with an
 * exception set. */
int xn_unserializer_add_functions(PyObject *module);

/* A piece of an encoded message. */
typedef struct {
    const char *data;
    Py_ssize_t size;
} xn_piece;

/* Writes count pieces; returns 0, or -1 with an exception set. */
typedef int (*xn_piece_writer)(void *ctx, const xn_piece *pieces, Py_ssize_t count);

/* Encodes obj as one message for msgcode and channelid and hands it to
 * write as pieces (large byte strings uncopied). Returns write's result,
 * or -1 with an exception set. */
int xn_write_message(xn_state *st, PyObject *obj, int msgcode, int32_t channelid,
                     xn_piece_writer write, void *ctx);

/* Returns the value of the message payload data[0..n) (new reference), or
 * NULL with an exception set.  Channel references and the string config
 * come from owner, a channel (or gateway), as in loads_internal(). */
PyObject *xn_load_payload(xn_state *st, const char *data, Py_ssize_t n, PyObject *owner);

/* ---- rsync.c ------------------------------------------------------------- */

/* Adds the rsync_* file helpers (MD5, whole-file read and write) to the
 * module.  Returns 0, or -1 with an exception set. */
int xn_rsync_add_functions(PyObject *module);

/* ---- channel.c: the native item queue of a channel ----------------------- */

/* One serialized item, as it came off the wire. */
typedef struct xn_item xn_item;

/* Returns a new item of size bytes, contents unset, or NULL (no exception
 * set: callable without the GIL). */
xn_item *xn_item_new(Py_ssize_t size);
/* Returns the item's bytes. */
char *xn_item_data(xn_item *item);
/* Returns item made ready for size bytes if its memory suits them (room
 * enough, not twice too much), else NULL. No GIL needed. */
xn_item *xn_item_reuse(xn_item *item, Py_ssize_t size);
Py_ssize_t xn_item_capacity(xn_item *item);
/* Returns item (moved, perhaps) with room for capacity bytes, its size,
 * keeping its contents up to there, or NULL (item untouched). No GIL needed. */
xn_item *xn_item_grow(xn_item *item, Py_ssize_t capacity);
/* Returns a new item holding value, a bytes object decoded already (the
 * item owns the reference), or NULL. No GIL needed; freeing it needs it. */
xn_item *xn_item_of_value(PyObject *value);

/* A payload at least this big is read straight into its queue item. */
#define XN_DIRECT_PAYLOAD (64 * 1024)

typedef struct {
    PyObject_HEAD
    /* lock and cond point to own_lock/own_cond, or for a queue filled by
     * a connection to the connection's state_lock and get_cond */
    pthread_mutex_t *lock;
    pthread_cond_t *cond;
    pthread_mutex_t own_lock;
    pthread_cond_t own_cond;
    int sync_ready;
    xn_item *head, *tail;
    Py_ssize_t count;
    int waiters;
    int ended;   /* nothing more will come: get() returns the endmarker */
    int passing; /* items go to Python (a callback), not into the queue */
    PyObject *endmarker;
    PyObject *connection; /* the xn_connection filling it, or NULL */
    int32_t channelid;
} xn_queue;

/* Appends item, taking ownership, unless the queue ended or passes items
 * on; no GIL needed.  Returns 1 if queued, 0 if the caller keeps item. */
int xn_queue_push(xn_queue *q, xn_item *item);

extern PyType_Spec xn_queue_spec;

/* ---- event.c: threading.Event's interface in C -------------------------- */

extern PyType_Spec xn_event_spec;

/* ---- splice.c: big writes to a pipe through vmsplice ------------------- */

typedef struct {
    char *base;    /* the ring of pages lent to the pipe (NULL: none yet) */
    size_t pages;  /* its size in pages */
    uint64_t lent; /* pages lent so far */
    int unusable;  /* vmsplice refused: write normally */
} xn_splice_ring;

/* Writes pieces[*pieces_done..count) (the first from *offset_done on) to
 * the pipe fd through r, advancing both as it goes, and stops early where
 * the ring cannot be used (the caller writes the rest). No GIL needed;
 * one writer at a time. Returns 0, or an errno value. */
int xn_splice_write(xn_splice_ring *r, int fd, const xn_piece *pieces, Py_ssize_t count,
                    Py_ssize_t *pieces_done, Py_ssize_t *offset_done);

void xn_splice_ring_free(xn_splice_ring *r);

/* ---- connection.c, table.c, writer.c, reader.c: a gateway's connection --
 * Its layout and its thread and lock contract are in connection.h; the
 * rest of the extension uses these functions only. */

typedef struct xn_connection xn_connection;

/* Takes back a decoded item: a big one's memory is kept for the next big
 * frame (saving the allocator's work of returning it to the system and
 * getting it back), others are freed. No GIL needed. */
void xn_connection_recycle(xn_connection *c, xn_item *item);

/* A byte string of n bytes was received in a big frame, and more of that
 * size may follow: have a bytes object ready to read the next into (GIL
 * held; a failure only costs the copy it would spare). */
void xn_connection_expect_bytes(xn_connection *c, Py_ssize_t n);

/* Drops q from c's table (called by a dying queue; GIL held). */
void xn_connection_forget_queue(xn_connection *c, xn_queue *q);

/* A thread starts waiting for items of c's queues (c's state_lock held,
 * which is the lock of those queues). */
void xn_connection_enter_getters(xn_connection *c);

/* A getter stops waiting (state_lock held): the last one wakes the IO
 * thread if it is parked for long. */
void xn_connection_leave_getters(xn_connection *c);

/* A getter's chance to read (state_lock held, no GIL): if the read role is
 * free and no frame waits for the IO thread, takes it, reads and parses
 * until deadline_ns at most (state_lock released meanwhile, held again on
 * return) and wakes the other getters.  Returns 1 if it read, else 0. */
int xn_connection_read_if_free(xn_connection *c, int64_t deadline_ns);

/* A receiver asks for an item now (no lock, no GIL needed): sends that
 * follow are a conversation, not a stream. */
void xn_connection_note_get(xn_connection *c);

/* Writes what was batched for sending now, unless another thread is
 * writing (no GIL needed). */
void xn_connection_flush(xn_connection *c);

/* ---- clock.c: time and deadlines (also in the ssh extension) ---------- */

/* Returns CLOCK_MONOTONIC in nanoseconds. */
int64_t xn_monotonic_ns(void);

/* Sets *deadline to when a wait of timeout seconds ends, in monotonic ns
 * (None or NULL: -1, no end; negative: now; beyond 1e9 s: no end either).
 * Returns 0, or -1 with an exception set: not a number, NaN, or more than
 * threading.TIMEOUT_MAX (the errors threading's waits raise). */
int xn_deadline(PyObject *timeout, int64_t *deadline);

extern PyType_Spec xn_connection_spec;

#endif /* XN_WIRE_ONLY */

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif /* XN_EXECNET_H */
