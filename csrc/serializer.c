/* serializer.c: dumps() and dumps_internal(), the encoding of values (doc/protocol.md).
 * The C twin of _encode() and friends in execnet/gateway_base.py. */

#include "execnet.h"

#include <string.h>

#define INT32_LIMIT 2147483647

/* A container being encoded.  Its items are either a tuple's own items or
 * a snapshot of owned references in the encoder's arena (lists, dicts, sets:
 * like the pure code, we encode what the container held when we met it). */
typedef struct {
    PyObject *const *items; /* a tuple's items, or NULL: items in the arena */
    Py_ssize_t base;        /* arena index of the snapshot */
    Py_ssize_t n;           /* item slots (a dict has two per entry) */
    Py_ssize_t next;        /* the next slot to encode */
    int level;              /* nesting level of the items */
    unsigned char kind;     /* XN_OP_NEWLIST, XN_OP_NEWDICT, or a BUILDTUPLE, SET, FROZENSET */
} frame;

/* A large byte string of the output that is not copied into the encoder's
 * buffer: it goes, from the object holding it, straight into the result. */
typedef struct {
    Py_ssize_t pos;   /* its offset in the buffer's bytes */
    const char *data; /* its bytes, kept alive by owner */
    Py_ssize_t n;
    PyObject *owner; /* owned reference */
} chunk;

/* Byte strings from this size on are chunks. */
#define CHUNK_MIN (32 * 1024)

#define OUT_INLINE 4096
#define ARENA_INLINE 64
#define FRAMES_INLINE 16

typedef struct {
    xn_state *st;
    unsigned char *out; /* the bytes produced so far, chunks left out */
    Py_ssize_t len, cap;
    chunk *chunks; /* in output order */
    Py_ssize_t nchunks, chunks_cap;
    Py_ssize_t chunked; /* total size of the chunks */
    PyObject **arena;   /* owned references: snapshots of open containers */
    Py_ssize_t arena_len, arena_cap;
    frame *frames; /* open containers, innermost last */
    Py_ssize_t nframes, frames_cap;
    unsigned char out_inline[OUT_INLINE];
    PyObject *arena_inline[ARENA_INLINE];
    frame frames_inline[FRAMES_INLINE];
} encoder;

/* Initializes e (returns nothing). */
static void
encoder_init(encoder *e, xn_state *st)
{
    e->st = st;
    e->out = e->out_inline;
    e->len = 0;
    e->cap = OUT_INLINE;
    e->chunks = NULL;
    e->nchunks = 0;
    e->chunks_cap = 0;
    e->chunked = 0;
    e->arena = e->arena_inline;
    e->arena_len = 0;
    e->arena_cap = ARENA_INLINE;
    e->frames = e->frames_inline;
    e->nframes = 0;
    e->frames_cap = FRAMES_INLINE;
}

/* Releases everything e holds (returns nothing). */
static void
encoder_free(encoder *e)
{
    for (Py_ssize_t i = 0; i < e->arena_len; i++) {
        Py_DECREF(e->arena[i]);
    }
    for (Py_ssize_t i = 0; i < e->nchunks; i++) {
        Py_DECREF(e->chunks[i].owner);
    }
    PyMem_Free(e->chunks);
    if (e->out != e->out_inline) {
        PyMem_Free(e->out);
    }
    if (e->arena != e->arena_inline) {
        PyMem_Free(e->arena);
    }
    if (e->frames != e->frames_inline) {
        PyMem_Free(e->frames);
    }
}

/* Returns the capacity to grow to so that need more than have fits. */
static Py_ssize_t
grown_capacity(Py_ssize_t cap, Py_ssize_t have, Py_ssize_t need)
{
    Py_ssize_t want = have + need, bigger;
    if (need > PY_SSIZE_T_MAX - have) {
        return -1;
    }
    bigger = cap <= PY_SSIZE_T_MAX / 2 ? cap * 2 : PY_SSIZE_T_MAX;
    return bigger > want ? bigger : want;
}

/* Returns 0 once n more output bytes fit, or -1 with MemoryError set. */
static int
out_grow(encoder *e, Py_ssize_t n)
{
    Py_ssize_t cap = grown_capacity(e->cap, e->len, n);
    unsigned char *out;
    if (cap < 0) {
        PyErr_NoMemory();
        return -1;
    }
    out = xn_grow_block(e->out, e->out == e->out_inline, e->len, cap, 1);
    if (out == NULL) {
        return -1;
    }
    e->out = out;
    e->cap = cap;
    return 0;
}

/* Returns a pointer to n writable output bytes (counted as written), or
 * NULL with MemoryError set. */
static inline unsigned char *
out_take(encoder *e, Py_ssize_t n)
{
    unsigned char *p;
    if (e->cap - e->len < n && out_grow(e, n) < 0) {
        return NULL;
    }
    p = e->out + e->len;
    e->len += n;
    return p;
}

/* Returns 0, having written the opcode op, or -1 with MemoryError set. */
static inline int
put_op(encoder *e, unsigned char op)
{
    unsigned char *p = out_take(e, 1);
    if (p == NULL) {
        return -1;
    }
    p[0] = op;
    return 0;
}

/* Returns 0, having written op and its int32 operand, or -1. */
static inline int
put_op_i32(encoder *e, unsigned char op, int32_t v)
{
    unsigned char *p = out_take(e, 5);
    if (p == NULL) {
        return -1;
    }
    p[0] = op;
    xn_put_i32(p + 1, v);
    return 0;
}

/* Returns 0, having recorded the n bytes at data, held by owner, as the
 * next piece of output, or -1 with MemoryError set. */
static int
add_chunk(encoder *e, const char *data, Py_ssize_t n, PyObject *owner)
{
    chunk *c;
    if (e->chunked > PY_SSIZE_T_MAX - n) {
        PyErr_NoMemory();
        return -1;
    }
    if (e->nchunks == e->chunks_cap) {
        Py_ssize_t cap = e->chunks_cap == 0 ? 8 : e->chunks_cap * 2;
        chunk *chunks = xn_grow_block(e->chunks, 0, e->nchunks, cap, sizeof(chunk));
        if (chunks == NULL) {
            return -1;
        }
        e->chunks = chunks;
        e->chunks_cap = cap;
    }
    c = &e->chunks[e->nchunks++];
    c->pos = e->len;
    c->data = data;
    c->n = n;
    Py_INCREF(owner);
    c->owner = owner;
    e->chunked += n;
    return 0;
}

/* Returns 0, having written op, the length n and the n bytes of data (held
 * by owner), or -1 with DumpError ("<what> is too long") or MemoryError
 * set. */
static int
put_sized(encoder *e, unsigned char op, const char *data, Py_ssize_t n, PyObject *owner,
          const char *what)
{
    unsigned char *p;
    if (n > INT32_LIMIT) {
        PyErr_Format(e->st->DumpError, "%s is too long", what);
        return -1;
    }
    if (n >= CHUNK_MIN) {
        p = out_take(e, 5);
        if (p == NULL) {
            return -1;
        }
        p[0] = op;
        xn_put_i32(p + 1, (int32_t)n);
        return add_chunk(e, data, n, owner);
    }
    p = out_take(e, 5 + n);
    if (p == NULL) {
        return -1;
    }
    p[0] = op;
    xn_put_i32(p + 1, (int32_t)n);
    memcpy(p + 5, data, (size_t)n);
    return 0;
}

/* Returns the arena index of n newly reserved slots, or -1 with MemoryError
 * set.  The caller fills all n slots with owned references. */
static Py_ssize_t
arena_reserve(encoder *e, Py_ssize_t n)
{
    Py_ssize_t base = e->arena_len;
    if (e->arena_cap - e->arena_len < n) {
        Py_ssize_t cap = grown_capacity(e->arena_cap, e->arena_len, n);
        PyObject **arena;
        if (cap < 0) {
            PyErr_NoMemory();
            return -1;
        }
        arena = xn_grow_block(e->arena, e->arena == e->arena_inline, e->arena_len, cap,
                              sizeof(PyObject *));
        if (arena == NULL) {
            return -1;
        }
        e->arena = arena;
        e->arena_cap = cap;
    }
    e->arena_len += n;
    return base;
}

/* Returns 0, having opened a container frame, or -1 with MemoryError set. */
static int
push_frame(encoder *e, unsigned char kind, PyObject *const *items, Py_ssize_t base, Py_ssize_t n,
           int level)
{
    frame *f;
    if (e->nframes == e->frames_cap) {
        Py_ssize_t cap = e->frames_cap * 2;
        frame *frames =
            xn_grow_block(e->frames, e->frames == e->frames_inline, e->nframes, cap, sizeof(frame));
        if (frames == NULL) {
            return -1;
        }
        e->frames = frames;
        e->frames_cap = cap;
    }
    f = &e->frames[e->nframes++];
    f->items = items;
    f->base = base;
    f->n = n;
    f->next = 0;
    f->level = level;
    f->kind = kind;
    return 0;
}

/* Closes the innermost frame, releasing its snapshot (returns nothing). */
static void
pop_frame(encoder *e)
{
    frame *f = &e->frames[--e->nframes];
    if (f->items == NULL) {
        for (Py_ssize_t i = f->base; i < e->arena_len; i++) {
            Py_DECREF(e->arena[i]);
        }
        e->arena_len = f->base;
    }
}

/* Returns -1 with DumpError set for a container nested too deep. */
static int
too_deep(encoder *e, PyObject *obj)
{
    PyErr_Format(e->st->DumpError, "can't serialize %S: nested deeper than %d levels",
                 (PyObject *)Py_TYPE(obj), XN_MAX_NESTING);
    return -1;
}

/* Returns 0, having written an int (F, or H with its decimal text), or -1
 * with an exception set. */
static int
put_int(encoder *e, PyObject *obj)
{
    int overflow;
    long v = PyLong_AsLongAndOverflow(obj, &overflow);
    PyObject *text;
    const char *digits;
    Py_ssize_t n;
    int rc;

    if (overflow == 0) {
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (v >= INT32_MIN && v <= INT32_MAX) {
            return put_op_i32(e, XN_OP_INT, (int32_t)v);
        }
    }
    text = PyObject_Str(obj);
    if (text == NULL) {
        return -1;
    }
    digits = PyUnicode_AsUTF8AndSize(text, &n);
    rc = digits == NULL ? -1 : put_sized(e, XN_OP_LONGINT, digits, n, text, "string");
    Py_DECREF(text);
    return rc;
}

/* Returns 0, having written a str as N + UTF-8, or -1 with an exception set
 * (DumpError for a string that UTF-8 cannot encode). */
static int
put_str(encoder *e, PyObject *obj)
{
    Py_ssize_t n;
    const char *data = PyUnicode_AsUTF8AndSize(obj, &n);
    if (data == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            PyErr_Clear();
            return xn_raise_from_none(e->st->DumpError, "strings must be utf-8 encodable");
        }
        return -1;
    }
    return put_sized(e, XN_OP_PY3STRING, data, n, obj, "string");
}

/* Returns 0, having written B + the channel id packed as struct's "!i"
 * packs it (raising its errors), or -1 with an exception set. */
static int
put_channel_id(encoder *e, PyObject *id)
{
    PyObject *structmod = NULL, *packed = NULL;
    unsigned char *p;
    int rc = -1;

    if (PyLong_CheckExact(id)) {
        int overflow;
        long v = PyLong_AsLongAndOverflow(id, &overflow);
        if (overflow == 0 && v >= INT32_MIN && v <= INT32_MAX) {
            return put_op_i32(e, XN_OP_CHANNEL, (int32_t)v);
        }
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    /* anything else: let struct accept it or raise exactly its error */
    structmod = PyImport_ImportModule("struct");
    if (structmod == NULL) {
        goto error;
    }
    packed = PyObject_CallMethod(structmod, "pack", "sO", "!i", id);
    if (packed == NULL) {
        goto error;
    }
    if (!PyBytes_Check(packed) || PyBytes_GET_SIZE(packed) != 4) {
        PyErr_SetString(PyExc_SystemError, "struct.pack('!i') gave no int32");
        goto error;
    }
    p = out_take(e, 5);
    if (p == NULL) {
        goto error;
    }
    p[0] = XN_OP_CHANNEL;
    memcpy(p + 1, PyBytes_AS_STRING(packed), 4);
    rc = 0;

error:
    Py_XDECREF(structmod);
    Py_XDECREF(packed);
    return rc;
}

/* Returns 0, having written a channel reference (an object whose class is
 * named "Channel"), or -1 with an exception set (DumpError for any other
 * unsupported object). */
static int
put_other(encoder *e, PyObject *obj)
{
    PyObject *name, *id;
    int is_channel, rc;

    name = PyObject_GetAttr((PyObject *)Py_TYPE(obj), e->st->s_name);
    if (name == NULL) {
        return -1;
    }
    is_channel = PyObject_RichCompareBool(name, e->st->s_Channel, Py_EQ);
    Py_DECREF(name);
    if (is_channel < 0) {
        return -1;
    }
    if (!is_channel) {
        PyErr_Format(e->st->DumpError, "can't serialize %S", (PyObject *)Py_TYPE(obj));
        return -1;
    }
    /* the attribute lookup may run Python code: hold obj meanwhile */
    Py_INCREF(obj);
    id = PyObject_GetAttr(obj, e->st->s_id);
    Py_DECREF(obj);
    if (id == NULL) {
        return -1;
    }
    rc = put_channel_id(e, id);
    Py_DECREF(id);
    return rc;
}

/* Returns 0, having written a list's header and opened its frame, or -1. */
static int
enter_list(encoder *e, PyObject *list, int level)
{
    Py_ssize_t n = PyList_GET_SIZE(list), base;
    if (level >= XN_MAX_NESTING) {
        return too_deep(e, list);
    }
    if (n > INT32_LIMIT) {
        PyErr_SetString(e->st->DumpError, "list is too long");
        return -1;
    }
    if (put_op_i32(e, XN_OP_NEWLIST, (int32_t)n) < 0) {
        return -1;
    }
    if (n == 0) {
        return 0;
    }
    base = arena_reserve(e, n);
    if (base < 0) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        Py_INCREF(item);
        e->arena[base + i] = item;
    }
    return push_frame(e, XN_OP_NEWLIST, NULL, base, n, level + 1);
}

/* Returns 0, having written a dict's header and opened its frame, or -1. */
static int
enter_dict(encoder *e, PyObject *dict, int level)
{
    Py_ssize_t n = PyDict_GET_SIZE(dict), base, pos = 0, i = 0;
    PyObject *key, *value;
    if (level >= XN_MAX_NESTING) {
        return too_deep(e, dict);
    }
    if (put_op(e, XN_OP_NEWDICT) < 0) {
        return -1;
    }
    if (n == 0) {
        return 0;
    }
    base = arena_reserve(e, 2 * n);
    if (base < 0) {
        return -1;
    }
    /* no Python code runs while we iterate: the size holds */
    while (i < n && PyDict_Next(dict, &pos, &key, &value)) {
        Py_INCREF(key);
        Py_INCREF(value);
        e->arena[base + 2 * i] = key;
        e->arena[base + 2 * i + 1] = value;
        i++;
    }
    if (i != n) {
        e->arena_len = base + 2 * i;
        PyErr_SetString(PyExc_RuntimeError, "dictionary changed size");
        return -1;
    }
    return push_frame(e, XN_OP_NEWDICT, NULL, base, 2 * n, level + 1);
}

/* Returns 0, having opened a tuple's frame (or written an empty tuple), or
 * -1 with an exception set. */
static int
enter_tuple(encoder *e, PyObject *tuple, int level)
{
    Py_ssize_t n = PyTuple_GET_SIZE(tuple);
    if (level >= XN_MAX_NESTING) {
        return too_deep(e, tuple);
    }
    if (n > INT32_LIMIT) {
        PyErr_SetString(e->st->DumpError, "tuple is too long");
        return -1;
    }
    if (n == 0) {
        return put_op_i32(e, XN_OP_BUILDTUPLE, 0);
    }
    /* a tuple cannot change: no snapshot needed, and it stays alive as
     * long as whatever holds it, which is an outer frame or the caller */
    return push_frame(e, XN_OP_BUILDTUPLE, ((PyTupleObject *)tuple)->ob_item, 0, n, level + 1);
}

/* Returns 0, having opened a set's or frozenset's frame (or written an
 * empty one), or -1 with an exception set. */
static int
enter_set(encoder *e, PyObject *set, unsigned char op, int level)
{
    Py_ssize_t n = PySet_GET_SIZE(set), base, i = 0;
    PyObject *it, *item;
    if (level >= XN_MAX_NESTING) {
        return too_deep(e, set);
    }
    if (n > INT32_LIMIT) {
        PyErr_SetString(e->st->DumpError, "set is too long");
        return -1;
    }
    if (n == 0) {
        return put_op_i32(e, op, 0);
    }
    base = arena_reserve(e, n);
    if (base < 0) {
        return -1;
    }
    e->arena_len = base; /* filled one by one below */
    it = PyObject_GetIter(set);
    if (it == NULL) {
        return -1;
    }
    while (i < n && (item = PyIter_Next(it)) != NULL) {
        e->arena[base + i++] = item;
        e->arena_len++;
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
        return -1;
    }
    if (i != n) {
        PyErr_SetString(PyExc_RuntimeError, "set changed size");
        return -1;
    }
    return push_frame(e, op, NULL, base, n, level + 1);
}

/* Returns 0, having written obj (a leaf) or its container's header and
 * frame, or -1 with an exception set. */
static int
encode_value(encoder *e, PyObject *obj, int level)
{
    PyTypeObject *tp = Py_TYPE(obj);
    unsigned char *p;

    if (tp == &PyUnicode_Type) {
        return put_str(e, obj);
    }
    if (tp == &PyLong_Type) {
        return put_int(e, obj);
    }
    if (tp == &PyDict_Type) {
        return enter_dict(e, obj, level);
    }
    if (tp == &PyTuple_Type) {
        return enter_tuple(e, obj, level);
    }
    if (tp == &PyList_Type) {
        return enter_list(e, obj, level);
    }
    if (tp == &PyFloat_Type) {
        p = out_take(e, 9);
        if (p == NULL) {
            return -1;
        }
        p[0] = XN_OP_FLOAT;
        xn_put_f64(p + 1, PyFloat_AS_DOUBLE(obj));
        return 0;
    }
    if (obj == Py_None) {
        return put_op(e, XN_OP_NONE);
    }
    if (tp == &PyBool_Type) {
        return put_op(e, obj == Py_True ? XN_OP_TRUE : XN_OP_FALSE);
    }
    if (tp == &PyBytes_Type) {
        return put_sized(e, XN_OP_BYTES, PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj), obj,
                         "string");
    }
    if (tp == &PyComplex_Type) {
        p = out_take(e, 17);
        if (p == NULL) {
            return -1;
        }
        p[0] = XN_OP_COMPLEX;
        xn_put_f64(p + 1, PyComplex_RealAsDouble(obj));
        xn_put_f64(p + 9, PyComplex_ImagAsDouble(obj));
        return 0;
    }
    if (tp == &PySet_Type) {
        return enter_set(e, obj, XN_OP_SET, level);
    }
    if (tp == &PyFrozenSet_Type) {
        return enter_set(e, obj, XN_OP_FROZENSET, level);
    }
    return put_other(e, obj);
}

/* Returns 0, having written obj and the final STOP opcode, or -1 with an
 * exception set.  Containers are walked with an explicit stack of frames,
 * in the order of the pure code: list items as "index item P", dict
 * entries as "key value P", tuple and set items before their opcode.  The
 * value itself is the one item of an outermost frame that writes nothing. */
static int
encode(encoder *e, PyObject *obj)
{
    if (push_frame(e, 0, &obj, 0, 1, 0) < 0) {
        return -1;
    }
    while (e->nframes > 0) {
        frame *f = &e->frames[e->nframes - 1];
        PyObject *item;
        unsigned char *p;
        int level;

        switch (f->kind) {
        case XN_OP_NEWLIST:
            if (f->next == f->n) {
                if (put_op(e, XN_OP_SETITEM) < 0) {
                    return -1;
                }
                pop_frame(e);
                continue;
            }
            /* the previous item's P, and this one's index */
            p = out_take(e, 6);
            if (p == NULL) {
                return -1;
            }
            if (f->next > 0) {
                *p++ = XN_OP_SETITEM;
            }
            else {
                e->len--;
            }
            p[0] = XN_OP_INT;
            xn_put_i32(p + 1, (int32_t)f->next);
            break;
        case XN_OP_NEWDICT:
            if (f->next > 0 && (f->next & 1) == 0 && put_op(e, XN_OP_SETITEM) < 0) {
                return -1;
            }
            if (f->next == f->n) {
                pop_frame(e);
                continue;
            }
            break;
        case 0: /* the value itself */
            if (f->next == f->n) {
                pop_frame(e);
                continue;
            }
            break;
        default: /* XN_OP_BUILDTUPLE, XN_OP_SET, XN_OP_FROZENSET */
            if (f->next == f->n) {
                if (put_op_i32(e, f->kind, (int32_t)f->n) < 0) {
                    return -1;
                }
                pop_frame(e);
                continue;
            }
            break;
        }
        item = f->items != NULL ? f->items[f->next] : e->arena[f->base + f->next];
        f->next++;
        level = f->level;
        /* f may move: encode_value can grow the frame array */
        if (encode_value(e, item, level) < 0) {
            return -1;
        }
    }
    return put_op(e, XN_OP_STOP);
}

/* Returns the output of e, its buffer and chunks joined, as a new bytes
 * object, or NULL with MemoryError set. */
static PyObject *
join_output(encoder *e)
{
    PyObject *result;
    char *dst;
    Py_ssize_t done = 0;

    if (e->len > PY_SSIZE_T_MAX - e->chunked) {
        return PyErr_NoMemory();
    }
    result = PyBytes_FromStringAndSize(NULL, e->len + e->chunked);
    if (result == NULL) {
        return NULL;
    }
    dst = PyBytes_AS_STRING(result);
    for (Py_ssize_t i = 0; i < e->nchunks; i++) {
        chunk *c = &e->chunks[i];
        memcpy(dst, e->out + done, (size_t)(c->pos - done));
        dst += c->pos - done;
        done = c->pos;
        memcpy(dst, c->data, (size_t)c->n);
        dst += c->n;
    }
    memcpy(dst, e->out + done, (size_t)(e->len - done));
    return result;
}

/* Returns the encoding of obj, preceded by prefix if it is not NULL, as a
 * new bytes object, or NULL with an exception set. */
static PyObject *
encode_to_bytes(xn_state *st, PyObject *obj, PyObject *prefix)
{
    encoder e;
    PyObject *result = NULL;

    encoder_init(&e, st);
    if (prefix != NULL) {
        unsigned char *p = out_take(&e, PyBytes_GET_SIZE(prefix));
        if (p == NULL) {
            goto error;
        }
        memcpy(p, PyBytes_AS_STRING(prefix), (size_t)PyBytes_GET_SIZE(prefix));
    }
    if (encode(&e, obj) < 0) {
        goto error;
    }
    if (e.nchunks == 0) {
        result = PyBytes_FromStringAndSize((const char *)e.out, e.len);
    }
    else {
        result = join_output(&e);
    }

error:
    encoder_free(&e);
    return result;
}

/* Encodes obj as one message (header for msgcode and channelid, then the
 * payload) and hands its bytes to write(ctx, pieces, count) as pieces:
 * large byte strings are not copied but passed from the objects holding
 * them. Returns what write returned, or -1 with an exception set. */
int
xn_write_message(xn_state *st, PyObject *obj, int msgcode, int32_t channelid, xn_piece_writer write,
                 void *ctx)
{
    encoder e;
    xn_piece *pieces = NULL;
    int rc = -1;

    encoder_init(&e, st);
    if (out_take(&e, XN_HEADER_SIZE) == NULL || encode(&e, obj) < 0) {
        goto done;
    }
    Py_ssize_t payload = e.len + e.chunked - XN_HEADER_SIZE;
    if (payload > INT32_LIMIT) {
        PyErr_SetString(st->DumpError, "message is too long");
        goto done;
    }
    xn_put_header(e.out, (int8_t)msgcode, channelid, (int32_t)payload);
    pieces = PyMem_Malloc(sizeof(xn_piece) * (size_t)(2 * e.nchunks + 1));
    if (pieces == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t n = 0, done_len = 0;
    for (Py_ssize_t i = 0; i < e.nchunks; i++) {
        chunk *c = &e.chunks[i];
        if (c->pos > done_len) {
            pieces[n].data = (const char *)e.out + done_len;
            pieces[n++].size = c->pos - done_len;
        }
        done_len = c->pos;
        pieces[n].data = c->data;
        pieces[n++].size = c->n;
    }
    if (e.len > done_len) {
        pieces[n].data = (const char *)e.out + done_len;
        pieces[n++].size = e.len - done_len;
    }
    rc = write(ctx, pieces, n);

done:
    PyMem_Free(pieces);
    encoder_free(&e);
    return rc;
}

static const char *const dumps_params[] = {"obj"};

PyDoc_STRVAR(dumps_doc, "dumps($module, /, obj)\n--\n\n"
                        "Serialize obj to bytes (with the dump format version byte).");

/* Returns DUMPFORMAT_VERSION + the encoding of obj (new reference), or NULL
 * with an exception set. */
static PyObject *
serializer_dumps(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    xn_state *st = xn_get_state(module);
    PyObject *obj, *version, *body, *result;

    if (nargs == 1 && kwnames == NULL) {
        obj = args[0];
    }
    else if (xn_parse_args("dumps", args, nargs, kwnames, dumps_params, 1, 1, &obj) < 0) {
        return NULL;
    }
    if (xn_require_installed(st) < 0) {
        return NULL;
    }
    version = xn_dumpformat_version(st);
    if (version == NULL) {
        return NULL;
    }
    if (PyBytes_CheckExact(version)) {
        return encode_to_bytes(st, obj, version);
    }
    /* an unusual version object: concatenate as the pure code does */
    Py_INCREF(version);
    body = encode_to_bytes(st, obj, NULL);
    result = body == NULL ? NULL : PyNumber_Add(version, body);
    Py_DECREF(version);
    Py_XDECREF(body);
    return result;
}

PyDoc_STRVAR(dumps_internal_doc,
             "dumps_internal($module, /, obj)\n--\n\n"
             "Serialize obj without version byte, as message payloads carry it.");

/* Returns the encoding of obj without version (new reference), or NULL with
 * an exception set. */
static PyObject *
serializer_dumps_internal(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames)
{
    xn_state *st = xn_get_state(module);
    PyObject *obj;

    if (nargs == 1 && kwnames == NULL) {
        obj = args[0];
    }
    else if (xn_parse_args("dumps_internal", args, nargs, kwnames, dumps_params, 1, 1, &obj) < 0) {
        return NULL;
    }
    if (xn_require_installed(st) < 0) {
        return NULL;
    }
    return encode_to_bytes(st, obj, NULL);
}

static PyMethodDef dumps_methods[] = {
    {"dumps", (PyCFunction)(void (*)(void))serializer_dumps, METH_FASTCALL | METH_KEYWORDS,
     dumps_doc},
    {"dumps_internal", (PyCFunction)(void (*)(void))serializer_dumps_internal,
     METH_FASTCALL | METH_KEYWORDS, dumps_internal_doc},
    {NULL, NULL, 0, NULL},
};

/* Adds dumps and dumps_internal to the module.  Returns 0, or -1 with an
 * exception set. */
int
xn_serializer_add_functions(PyObject *module)
{
    return PyModule_AddFunctions(module, dumps_methods);
}
