/* unserializer.c: loads() and loads_internal(), the decoding of values (doc/protocol.md).
 * The C twin of the Unserializer class in execnet/gateway_base.py. */

#include "execnet.h"

#include <string.h>

#define STACK_INLINE 32

/* A value on the decoder's stack.  Plain int32s (F, G) stay unboxed until
 * something needs them as objects: list indices never do. */
typedef struct {
    PyObject *obj; /* owned reference, or NULL: the int `ival` */
    int32_t ival;
    int depth; /* nesting depth (see Unserializer in gateway_base.py) */
} entry;

typedef struct {
    xn_state *st;
    const unsigned char *start, *p, *end; /* the data; the bytes not read yet */
    Py_ssize_t listed;                    /* the sizes of all lists so far, added up */
    entry *stack;
    Py_ssize_t height, cap;
    PyObject *owner;                               /* channel_or_gateway (borrowed), or NULL */
    PyObject *py2str_as_py3str, *py3str_as_py2str; /* owned */
    entry stack_inline[STACK_INLINE];
} decoder;

/* Initializes d to read the n bytes at data (returns nothing). */
static void
decoder_init(decoder *d, xn_state *st, const void *data, Py_ssize_t n)
{
    d->st = st;
    d->start = d->p = (const unsigned char *)data;
    d->end = d->p + n;
    d->listed = 0;
    d->stack = d->stack_inline;
    d->height = 0;
    d->cap = STACK_INLINE;
    d->owner = NULL;
    d->py2str_as_py3str = NULL;
    d->py3str_as_py2str = NULL;
}

/* Releases everything d holds (returns nothing). */
static void
decoder_free(decoder *d)
{
    for (Py_ssize_t i = 0; i < d->height; i++) {
        Py_XDECREF(d->stack[i].obj);
    }
    d->height = 0;
    if (d->stack != d->stack_inline) {
        PyMem_Free(d->stack);
    }
    Py_CLEAR(d->py2str_as_py3str);
    Py_CLEAR(d->py3str_as_py2str);
}

/* Returns 0 if n more bytes are there, else -1 with EOFError set. */
static inline int
need(decoder *d, Py_ssize_t n)
{
    Py_ssize_t have = d->end - d->p;
    if (have < n) {
        PyErr_Format(PyExc_EOFError, "expected %zd bytes, got %zd", n, have);
        return -1;
    }
    return 0;
}

/* Returns 0, having read a non-negative int32 length into *n, or -1 with
 * EOFError or LoadError set. */
static inline int
read_length(decoder *d, Py_ssize_t *n)
{
    int32_t v;
    if (need(d, 4) < 0) {
        return -1;
    }
    v = xn_get_i32(d->p);
    d->p += 4;
    if (v < 0) {
        PyErr_Format(d->st->LoadError, "negative length %d", (int)v);
        return -1;
    }
    *n = v;
    return 0;
}

/* Returns 0, having read a length and checked that many bytes follow
 * (*data points at them, consumed), or -1 with an exception set. */
static inline int
read_sized(decoder *d, const char **data, Py_ssize_t *n)
{
    if (read_length(d, n) < 0 || need(d, *n) < 0) {
        return -1;
    }
    *data = (const char *)d->p;
    d->p += *n;
    return 0;
}

/* Returns -1 with LoadError set for data nested too deep. */
static int
nested_too_deep(decoder *d)
{
    PyErr_Format(d->st->LoadError, "data nested deeper than %d levels", XN_MAX_NESTING);
    return -1;
}

/* Returns 0, having doubled the stack's capacity, or -1 with MemoryError
 * set.  Each entry comes from at least one input byte: the stack never
 * outgrows the input. */
static int
grow_stack(decoder *d)
{
    Py_ssize_t cap = d->cap * 2;
    entry *stack =
        xn_grow_block(d->stack, d->stack == d->stack_inline, d->height, cap, sizeof(entry));
    if (stack == NULL) {
        return -1;
    }
    d->stack = stack;
    d->cap = cap;
    return 0;
}

/* Returns 0, having pushed value (a reference the stack takes over), or -1
 * with an exception set (value released; NULL value: already failed). */
static inline int
push(decoder *d, PyObject *value, int depth)
{
    entry *top;
    if (value == NULL) {
        return -1;
    }
    if (depth > XN_MAX_NESTING) {
        Py_DECREF(value);
        return nested_too_deep(d);
    }
    if (d->height == d->cap && grow_stack(d) < 0) {
        Py_DECREF(value);
        return -1;
    }
    top = &d->stack[d->height++];
    top->obj = value;
    top->ival = 0;
    top->depth = depth;
    return 0;
}

/* Returns 0, having pushed the unboxed int32 v, or -1 with MemoryError. */
static inline int
push_int(decoder *d, int32_t v)
{
    entry *top;
    if (d->height == d->cap && grow_stack(d) < 0) {
        return -1;
    }
    top = &d->stack[d->height++];
    top->obj = NULL;
    top->ival = v;
    top->depth = 0;
    return 0;
}

/* Returns the object of stack entry en, boxing an unboxed int (a borrowed
 * reference: the entry keeps owning it), or NULL with MemoryError set. */
static inline PyObject *
entry_object(entry *en)
{
    if (en->obj == NULL) {
        en->obj = PyLong_FromLong(en->ival);
    }
    return en->obj;
}

/* Returns str(bytes) decoded as UTF-8 (new reference), or NULL with
 * LoadError (invalid data) or another exception set. */
static PyObject *
decode_utf8(decoder *d, const char *data, Py_ssize_t n)
{
    PyObject *s = PyUnicode_DecodeUTF8(data, n, NULL), *exc;
    if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        exc = xn_fetch_exception();
        xn_raise_from_none(d->st->LoadError, "invalid string data: %S", exc);
        Py_XDECREF(exc);
    }
    return s;
}

/* ---- fast paths ------------------------------------------------------------
 * Lists and dicts of plain values make up most payloads.  Right after a
 * container is opened or an item set on it, the functions below take the
 * following "index value P" (list) or "key value P" (dict) groups whose
 * parts are all simple, and do what the general loop would do with them
 * (stack unchanged, nesting depth unchanged: the items are leaves), without
 * going through the stack.  They look at a whole group before decoding any
 * of it, and stop at anything else, so that the general loop takes it from
 * there.  The only error they raise is the one the general loop would
 * raise at that point. */

/* Returns the size of the simple value (F N D L R C) that starts at p and
 * ends before the end of the input, or 0 if there is none. */
static inline Py_ssize_t
leaf_size(decoder *d, const unsigned char *p)
{
    Py_ssize_t have = d->end - p;
    int32_t n;

    if (have < 1) {
        return 0;
    }
    switch (p[0]) {
    case XN_OP_PY3STRING:
        if (have < 5 || d->py3str_as_py2str != Py_False) {
            return 0;
        }
        n = xn_get_i32(p + 1);
        return n >= 0 && have - 5 >= n ? 5 + (Py_ssize_t)n : 0;
    case XN_OP_INT:
        return have >= 5 ? 5 : 0;
    case XN_OP_FLOAT:
        return have >= 9 ? 9 : 0;
    case XN_OP_NONE:
    case XN_OP_TRUE:
    case XN_OP_FALSE:
        return 1;
    default:
        return 0;
    }
}

/* Returns the value of the simple value at p, which leaf_size() measured
 * (new reference), or NULL with the exception the general loop would
 * raise for it. */
static PyObject *
leaf_value(decoder *d, const unsigned char *p)
{
    PyObject *value;
    switch (p[0]) {
    case XN_OP_PY3STRING:
        return decode_utf8(d, (const char *)p + 5, xn_get_i32(p + 1));
    case XN_OP_INT:
        return PyLong_FromLong(xn_get_i32(p + 1));
    case XN_OP_FLOAT:
        return PyFloat_FromDouble(xn_get_f64(p + 1));
    case XN_OP_NONE:
        value = Py_None;
        break;
    case XN_OP_TRUE:
        value = Py_True;
        break;
    default: /* XN_OP_FALSE */
        value = Py_False;
        break;
    }
    Py_INCREF(value);
    return value;
}

/* Returns 0, having stored the groups "F <index> <value> P" that follow,
 * for index = next, next + 1, ..., into list (the top of the stack), or -1
 * with an exception set. */
static int
fill_list(decoder *d, PyObject *list, Py_ssize_t next)
{
    for (;; next++) {
        const unsigned char *p = d->p;
        PyObject *value, *old;
        Py_ssize_t vsize;

        if (d->end - p < 6 || p[0] != XN_OP_INT || xn_get_i32(p + 1) != next) {
            return 0;
        }
        vsize = leaf_size(d, p + 5);
        if (vsize == 0 || d->end - p == 5 + vsize || p[5 + vsize] != XN_OP_SETITEM) {
            return 0;
        }
        value = leaf_value(d, p + 5);
        if (value == NULL) {
            return -1;
        }
        /* (checked after the allocation, which may run a collection whose
         * finalizers could reach the list) */
        if (next >= PyList_GET_SIZE(list)) {
            Py_DECREF(value); /* the general loop reports the index */
            return 0;
        }
        d->p = p + 5 + vsize + 1;
        old = PyList_GET_ITEM(list, next);
        PyList_SET_ITEM(list, next, value);
        Py_DECREF(old);
    }
}

/* Returns 0, having stored the groups "<key> <value> P" that follow into
 * dict (the top of the stack), or -1 with an exception set. */
static int
fill_dict(decoder *d, PyObject *dict)
{
    for (;;) {
        const unsigned char *p = d->p;
        PyObject *key, *value;
        Py_ssize_t ksize, vsize;
        int rc;

        ksize = leaf_size(d, p);
        if (ksize == 0) {
            return 0;
        }
        vsize = leaf_size(d, p + ksize);
        if (vsize == 0 || d->end - p == ksize + vsize || p[ksize + vsize] != XN_OP_SETITEM) {
            return 0;
        }
        key = leaf_value(d, p);
        if (key == NULL) {
            return -1;
        }
        value = leaf_value(d, p + ksize);
        if (value == NULL) {
            Py_DECREF(key);
            return -1;
        }
        d->p = p + ksize + vsize + 1;
        rc = PyDict_SetItem(dict, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (rc < 0) {
            return -1;
        }
    }
}

/* Returns 0, having pushed the int whose decimal text follows (H, I), or -1
 * with an exception set.  The text is parsed by int() itself, so that it
 * accepts and refuses exactly what int(bytes) does. */
static int
op_longint(decoder *d)
{
    const char *data;
    Py_ssize_t n;
    PyObject *text, *value, *exc;

    if (read_sized(d, &data, &n) < 0) {
        return -1;
    }
    text = PyBytes_FromStringAndSize(data, n);
    if (text == NULL) {
        return -1;
    }
    value = PyObject_CallFunctionObjArgs((PyObject *)&PyLong_Type, text, NULL);
    Py_DECREF(text);
    if (value == NULL) {
        if (PyErr_ExceptionMatches(PyExc_ValueError)) {
            exc = xn_fetch_exception();
            xn_raise_from_none(d->st->LoadError, "invalid integer data: %S", exc);
            Py_XDECREF(exc);
        }
        return -1;
    }
    return push(d, value, 0);
}

/* Returns 0, having pushed a str or bytes for M, N and S according to the
 * string config, or -1 with an exception set. */
static int
op_string(decoder *d, unsigned char op)
{
    const char *data;
    Py_ssize_t n;
    PyObject *value;
    int flag;

    if (read_sized(d, &data, &n) < 0) {
        return -1;
    }
    if (op == XN_OP_UNICODE) {
        return push(d, decode_utf8(d, data, n), 0);
    }
    flag = PyObject_IsTrue(op == XN_OP_PY2STRING ? d->py2str_as_py3str : d->py3str_as_py2str);
    if (flag < 0) {
        return -1;
    }
    if (op == XN_OP_PY2STRING) { /* Latin-1 text, or the bytes */
        value = flag ? PyUnicode_DecodeLatin1(data, n, NULL) : PyBytes_FromStringAndSize(data, n);
    }
    else { /* N: the UTF-8 bytes, or their text */
        value = flag ? PyBytes_FromStringAndSize(data, n) : decode_utf8(d, data, n);
    }
    return push(d, value, 0);
}

/* Returns 0, having pushed a list of n Nones (K), or -1 with an exception
 * set.  n bytes of setitems must follow, and the data must be as long as
 * all lists so far together: checked before allocating.  (The lists nested
 * in a list lie in the bytes that follow it: with the first check alone, a
 * run of K opcodes would claim those bytes again and again, and n bytes of
 * data would allocate lists of n * n / 10 items.) */
static int
op_newlist(decoder *d)
{
    Py_ssize_t n, claim;
    PyObject *list;

    if (read_length(d, &n) < 0) {
        return -1;
    }
    d->listed += n;
    claim = d->listed - (d->p - d->start);
    if (need(d, claim > n ? claim : n) < 0) {
        return -1;
    }
    list = PyList_New(n);
    if (list == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_INCREF(Py_None);
        PyList_SET_ITEM(list, i, Py_None);
    }
    if (push(d, list, 1) < 0) {
        return -1;
    }
    return fill_list(d, list, 0);
}

/* Returns 0, having pushed a new dict (J) and filled what follows, or -1
 * with an exception set. */
static int
op_newdict(decoder *d)
{
    PyObject *dict = PyDict_New();
    if (push(d, dict, 1) < 0) {
        return -1;
    }
    return fill_dict(d, dict);
}

/* Returns 0 after list[index] = value for an int index (negative ones
 * count from the end), or -1 with IndexError set. */
static int
list_store(PyObject *list, Py_ssize_t index, PyObject *value)
{
    Py_ssize_t size = PyList_GET_SIZE(list);
    PyObject *old;
    if (index < 0) {
        index += size;
    }
    if (index < 0 || index >= size) {
        PyErr_SetString(PyExc_IndexError, "list assignment index out of range");
        return -1;
    }
    old = PyList_GET_ITEM(list, index);
    Py_INCREF(value);
    PyList_SET_ITEM(list, index, value);
    Py_DECREF(old);
    return 0;
}

/* Returns 0, having done stack[-3][stack[-2]] = stack[-1] (P), or -1 with
 * an exception set. */
static int
op_setitem(decoder *d)
{
    entry *top;
    PyObject *target, *key, *value, *name, *exc;
    int depth, rc, is_dict = 0;
    Py_ssize_t resume = -1; /* the list index a fast fill continues at */

    if (d->height < 3) {
        PyErr_SetString(d->st->LoadError, "not enough items for setitem");
        return -1;
    }
    top = &d->stack[d->height - 1];
    depth = (top[0].depth > top[-1].depth ? top[0].depth : top[-1].depth) + 1;
    target = top[-2].obj;
    if (target != NULL && PyDict_CheckExact(target)) {
        if ((value = entry_object(&top[0])) == NULL || (key = entry_object(&top[-1])) == NULL) {
            return -1;
        }
        rc = PyDict_SetItem(target, key, value);
        is_dict = 1;
    }
    else if (target != NULL && PyList_CheckExact(target)) {
        if ((value = entry_object(&top[0])) == NULL) {
            return -1;
        }
        key = top[-1].obj;
        if (key == NULL) {
            rc = list_store(target, top[-1].ival, value);
            resume = top[-1].ival >= 0 ? (Py_ssize_t)top[-1].ival + 1 : -1;
        }
        else if (PyLong_CheckExact(key)) {
            Py_ssize_t i = PyLong_AsSsize_t(key);
            if (i == -1 && PyErr_Occurred()) {
                /* huge: let the generic path phrase the error */
                PyErr_Clear();
                rc = PyObject_SetItem(target, key, value);
            }
            else {
                rc = list_store(target, i, value);
            }
        }
        else {
            rc = PyObject_SetItem(target, key, value);
        }
    }
    else {
        if (target == NULL) {
            name = PyUnicode_FromString("int");
        }
        else {
            name = PyObject_GetAttr((PyObject *)Py_TYPE(target), d->st->s_name);
        }
        if (name != NULL) {
            PyErr_Format(d->st->LoadError, "can't set an item on %S", name);
            Py_DECREF(name);
        }
        return -1;
    }
    if (rc < 0) {
        if (PyErr_ExceptionMatches(PyExc_TypeError) || PyErr_ExceptionMatches(PyExc_IndexError)) {
            exc = xn_fetch_exception();
            xn_raise_from_none(d->st->LoadError, "bad setitem: %S", exc);
            Py_XDECREF(exc);
        }
        return -1;
    }
    Py_XDECREF(top[0].obj);
    Py_XDECREF(top[-1].obj);
    d->height -= 2;
    if (depth > top[-2].depth) {
        if (depth > XN_MAX_NESTING) {
            return nested_too_deep(d);
        }
        top[-2].depth = depth;
    }
    if (is_dict) {
        return fill_dict(d, target);
    }
    if (resume >= 0) {
        return fill_list(d, target, resume);
    }
    return 0;
}

/* Returns 0, having read the count n of @ O E, checked it against the
 * stack and boxed the top n entries (*depth: the nesting depth of a
 * collection of them), or -1 with an exception set. */
static int
read_count(decoder *d, const char *what, Py_ssize_t *n, int *depth)
{
    int deepest = 0;
    if (read_length(d, n) < 0) {
        return -1;
    }
    if (*n > d->height) {
        PyErr_Format(d->st->LoadError, "not enough items for %s", what);
        return -1;
    }
    for (Py_ssize_t i = d->height - *n; i < d->height; i++) {
        if (d->stack[i].depth > deepest) {
            deepest = d->stack[i].depth;
        }
        if (entry_object(&d->stack[i]) == NULL) {
            return -1;
        }
    }
    *depth = deepest + 1;
    return 0;
}

/* Returns 0, having replaced the top n entries by a tuple of them (@), or
 * -1 with an exception set. */
static int
op_tuple(decoder *d)
{
    Py_ssize_t n, start;
    int depth;
    PyObject *tuple;

    if (read_count(d, "tuple", &n, &depth) < 0) {
        return -1;
    }
    tuple = PyTuple_New(n);
    if (tuple == NULL) {
        return -1;
    }
    start = d->height - n;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* moves the reference from the stack to the tuple */
        PyTuple_SET_ITEM(tuple, i, d->stack[start + i].obj);
    }
    d->height = start;
    return push(d, tuple, depth);
}

/* Returns 0, having replaced the top n entries by a set (O) or frozenset
 * (E) of them, or -1 with an exception set. */
static int
op_set(decoder *d, unsigned char op)
{
    Py_ssize_t n, start;
    int depth;
    PyObject *set, *exc;

    if (read_count(d, "set", &n, &depth) < 0) {
        return -1;
    }
    set = op == XN_OP_SET ? PySet_New(NULL) : PyFrozenSet_New(NULL);
    if (set == NULL) {
        return -1;
    }
    start = d->height - n;
    for (Py_ssize_t i = start; i < d->height; i++) {
        if (PySet_Add(set, d->stack[i].obj) < 0) {
            Py_DECREF(set);
            if (PyErr_ExceptionMatches(PyExc_TypeError)) {
                exc = xn_fetch_exception();
                xn_raise_from_none(d->st->LoadError, "bad set item: %S", exc);
                Py_XDECREF(exc);
            }
            return -1;
        }
    }
    while (d->height > start) {
        d->height--;
        Py_DECREF(d->stack[d->height].obj);
    }
    return push(d, set, depth);
}

/* Returns 0, having pushed the channel for a B reference, made by the
 * gateway's channel factory, or -1 with an exception set. */
static int
op_channel(decoder *d)
{
    PyObject *gateway = NULL, *factory = NULL, *id = NULL, *channel = NULL;
    int32_t channel_id;

    if (need(d, 4) < 0) {
        return -1;
    }
    channel_id = xn_get_i32(d->p);
    d->p += 4;
    if (d->owner == NULL) {
        PyErr_SetString(d->st->LoadError, "can't load a channel reference without a gateway");
        return -1;
    }
    gateway = PyObject_GetAttr(d->owner, d->st->s_gateway);
    if (gateway == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            goto error;
        }
        PyErr_Clear();
        Py_INCREF(d->owner);
        gateway = d->owner;
    }
    factory = PyObject_GetAttr(gateway, d->st->s_channelfactory);
    if (factory == NULL) {
        goto error;
    }
    id = PyLong_FromLong(channel_id);
    if (id == NULL) {
        goto error;
    }
    channel = PyObject_CallMethodObjArgs(factory, d->st->s_new, id, NULL);

error:
    Py_XDECREF(gateway);
    Py_XDECREF(factory);
    Py_XDECREF(id);
    return push(d, channel, 0);
}

/* Returns the value of the opcodes at d->p up to STOP (new reference), or
 * NULL with an exception set. */
static PyObject *
decode(decoder *d)
{
    PyObject *result, *opbyte;
    int rc;

    for (;;) {
        unsigned char op;
        if (need(d, 1) < 0) {
            return NULL;
        }
        op = *d->p++;
        switch (op) {
        case XN_OP_PY3STRING:
        case XN_OP_PY2STRING:
        case XN_OP_UNICODE:
            rc = op_string(d, op);
            break;
        case XN_OP_INT:
        case XN_OP_LONG:
            rc = need(d, 4);
            if (rc == 0) {
                rc = push_int(d, xn_get_i32(d->p));
                d->p += 4;
            }
            break;
        case XN_OP_SETITEM:
            rc = op_setitem(d);
            break;
        case XN_OP_NEWDICT:
            rc = op_newdict(d);
            break;
        case XN_OP_BUILDTUPLE:
            rc = op_tuple(d);
            break;
        case XN_OP_NEWLIST:
            rc = op_newlist(d);
            break;
        case XN_OP_FLOAT:
            rc = need(d, 8);
            if (rc == 0) {
                rc = push(d, PyFloat_FromDouble(xn_get_f64(d->p)), 0);
                d->p += 8;
            }
            break;
        case XN_OP_NONE:
            Py_INCREF(Py_None);
            rc = push(d, Py_None, 0);
            break;
        case XN_OP_TRUE:
            Py_INCREF(Py_True);
            rc = push(d, Py_True, 0);
            break;
        case XN_OP_FALSE:
            Py_INCREF(Py_False);
            rc = push(d, Py_False, 0);
            break;
        case XN_OP_BYTES: {
            const char *data;
            Py_ssize_t n;
            rc = read_sized(d, &data, &n);
            if (rc == 0) {
                rc = push(d, PyBytes_FromStringAndSize(data, n), 0);
            }
            break;
        }
        case XN_OP_LONGINT:
        case XN_OP_LONGLONG:
            rc = op_longint(d);
            break;
        case XN_OP_COMPLEX:
            rc = need(d, 16);
            if (rc == 0) {
                double real = xn_get_f64(d->p), imag = xn_get_f64(d->p + 8);
                rc = push(d, PyComplex_FromDoubles(real, imag), 0);
                d->p += 16;
            }
            break;
        case XN_OP_SET:
        case XN_OP_FROZENSET:
            rc = op_set(d, op);
            break;
        case XN_OP_CHANNEL:
            rc = op_channel(d);
            break;
        case XN_OP_STOP:
            if (d->height != 1) {
                PyErr_SetString(d->st->LoadError, "internal unserialization error");
                return NULL;
            }
            result = entry_object(&d->stack[0]);
            if (result != NULL) {
                d->height = 0; /* the reference moves to the caller */
            }
            return result;
        default:
            opbyte = PyBytes_FromStringAndSize((const char *)&op, 1);
            if (opbyte != NULL) {
                PyErr_Format(d->st->LoadError, "unknown opcode %R - wire protocol corruption?",
                             opbyte);
                Py_DECREF(opbyte);
            }
            return NULL;
        }
        if (rc < 0) {
            return NULL;
        }
    }
}

/* Returns 0, having unpacked the two-item iterable config into the string
 * flags of d (owned), with the errors of `a, b = config`, or -1. */
static int
set_strconfig(decoder *d, PyObject *config)
{
    PyObject *it = NULL, *items[3] = {NULL, NULL, NULL};
    int got = 0, rc = -1;

    if (PyTuple_CheckExact(config) && PyTuple_GET_SIZE(config) == 2) {
        d->py2str_as_py3str = PyTuple_GET_ITEM(config, 0);
        d->py3str_as_py2str = PyTuple_GET_ITEM(config, 1);
        Py_INCREF(d->py2str_as_py3str);
        Py_INCREF(d->py3str_as_py2str);
        return 0;
    }
    it = PyObject_GetIter(config);
    if (it == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError) && Py_TYPE(config)->tp_iter == NULL &&
            !PySequence_Check(config)) {
            PyErr_Format(PyExc_TypeError, "cannot unpack non-iterable %.200s object",
                         Py_TYPE(config)->tp_name);
        }
        return -1;
    }
    while (got < 3 && (items[got] = PyIter_Next(it)) != NULL) {
        got++;
    }
    if (PyErr_Occurred()) {
        goto error;
    }
    if (got < 2) {
        PyErr_Format(PyExc_ValueError, "not enough values to unpack (expected 2, got %d)", got);
        goto error;
    }
    if (got > 2) {
        PyErr_SetString(PyExc_ValueError, "too many values to unpack (expected 2)");
        goto error;
    }
    d->py2str_as_py3str = items[0];
    d->py3str_as_py2str = items[1];
    items[0] = items[1] = NULL;
    rc = 0;

error:
    Py_XDECREF(it);
    for (int i = 0; i < 3; i++) {
        Py_XDECREF(items[i]);
    }
    return rc;
}

/* Returns 0, having read the version byte and compared it with
 * DUMPFORMAT_VERSION, or -1 with an exception set (LoadError if they
 * differ). */
static int
check_version(decoder *d)
{
    PyObject *expected, *got = NULL;
    int differ;
    Py_ssize_t n = d->p < d->end ? 1 : 0;

    expected = xn_dumpformat_version(d->st);
    if (expected == NULL) {
        return -1;
    }
    if (PyBytes_CheckExact(expected) && PyBytes_GET_SIZE(expected) == n &&
        (n == 0 || (unsigned char)PyBytes_AS_STRING(expected)[0] == d->p[0])) {
        d->p += n;
        return 0;
    }
    got = PyBytes_FromStringAndSize((const char *)d->p, n);
    if (got == NULL) {
        return -1;
    }
    d->p += n;
    Py_INCREF(expected);
    differ = PyObject_RichCompareBool(got, expected, Py_NE);
    Py_DECREF(expected);
    if (differ > 0) {
        PyErr_Format(d->st->LoadError, "wrong dumpformat version %R", got);
    }
    Py_DECREF(got);
    return differ == 0 ? 0 : -1;
}

/* Returns Unserializer(data, owner, strconfig).load(versioned) of the pure
 * code (new reference), or NULL with an exception set: the path for
 * file-like objects, which the pure code reads as streams.  Arguments as
 * for load(). */
static PyObject *
load_stream(xn_state *st, PyObject *data, PyObject *owner, PyObject *const *flags,
            PyObject *strconfig, int versioned)
{
    PyObject *cls, *config = NULL, *unserializer = NULL, *result = NULL;

    cls = PyDict_GetItemWithError(st->namespace, st->s_Unserializer);
    if (cls == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_NameError, "name '%U' is not defined", st->s_Unserializer);
        }
        return NULL;
    }
    Py_INCREF(cls);
    if (flags != NULL) {
        config = PyTuple_Pack(2, flags[0], flags[1]);
        if (config == NULL) {
            goto error;
        }
        strconfig = config;
    }
    unserializer = PyObject_CallFunctionObjArgs(cls, data, owner != NULL ? owner : Py_None,
                                                strconfig != NULL ? strconfig : Py_None, NULL);
    if (unserializer == NULL) {
        goto error;
    }
    result =
        PyObject_CallMethodObjArgs(unserializer, st->s_load, versioned ? Py_True : Py_False, NULL);

error:
    Py_DECREF(cls);
    Py_XDECREF(config);
    Py_XDECREF(unserializer);
    return result;
}

/* Returns 0, having set the string flags of d (owned references) from
 * flags (the two flags of loads()), else strconfig, else the owner's
 * _strconfig, else (False, False); or -1 with an exception set. */
static int
choose_strconfig(decoder *d, PyObject *const *flags, PyObject *strconfig)
{
    PyObject *config;
    int rc;

    if (flags != NULL) {
        Py_INCREF(flags[0]);
        Py_INCREF(flags[1]);
        d->py2str_as_py3str = flags[0];
        d->py3str_as_py2str = flags[1];
        return 0;
    }
    if (strconfig != NULL) {
        return set_strconfig(d, strconfig);
    }
    if (d->owner != NULL) {
        config = PyObject_GetAttr(d->owner, d->st->s_strconfig);
        if (config != NULL) {
            rc = set_strconfig(d, config);
            Py_DECREF(config);
            return rc;
        }
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return -1;
        }
        PyErr_Clear();
    }
    Py_INCREF(Py_False);
    Py_INCREF(Py_False);
    d->py2str_as_py3str = Py_False;
    d->py3str_as_py2str = Py_False;
    return 0;
}

/* Returns the value serialized in data (new reference), or NULL with an
 * exception set: the common body of loads() and loads_internal().  owner
 * is channel_or_gateway or NULL; the string config comes from flags, else
 * strconfig, else the owner (see choose_strconfig). */
static PyObject *
load(xn_state *st, PyObject *data, PyObject *owner, PyObject *const *flags, PyObject *strconfig,
     int versioned)
{
    decoder d;
    Py_buffer view;
    int have_view = 0;
    PyObject *copy = NULL, *result = NULL;
    const void *bytes;
    Py_ssize_t size;

    if (PyBytes_CheckExact(data)) {
        bytes = PyBytes_AS_STRING(data);
        size = PyBytes_GET_SIZE(data);
    }
    else {
        if (!PyByteArray_CheckExact(data) && !PyMemoryView_Check(data)) {
            /* anything with a read method is a stream to the pure code */
            PyObject *read = PyObject_GetAttr(data, st->s_read);
            if (read != NULL) {
                Py_DECREF(read);
                return load_stream(st, data, owner, flags, strconfig, versioned);
            }
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
                return NULL;
            }
            PyErr_Clear();
        }
        if (PyUnicode_Check(data)) {
            PyErr_SetString(PyExc_TypeError, "can't load from str, expected a bytes-like object");
            return NULL;
        }
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) == 0) {
            have_view = 1;
            bytes = view.buf;
            size = view.len;
        }
        else {
            /* not contiguous, or no buffer at all: copy as the pure code
             * does, with its errors */
            PyObject *mv;
            PyErr_Clear();
            mv = PyMemoryView_FromObject(data);
            if (mv == NULL) {
                return NULL;
            }
            copy = PyBytes_FromObject(mv);
            Py_DECREF(mv);
            if (copy == NULL) {
                return NULL;
            }
            bytes = PyBytes_AS_STRING(copy);
            size = PyBytes_GET_SIZE(copy);
        }
    }
    decoder_init(&d, st, bytes, size);
    d.owner = owner;
    if (choose_strconfig(&d, flags, strconfig) < 0) {
        goto error;
    }
    if (versioned && check_version(&d) < 0) {
        goto error;
    }
    result = decode(&d);

error:
    decoder_free(&d);
    Py_XDECREF(copy);
    if (have_view) {
        PyBuffer_Release(&view);
    }
    return result;
}

/* Returns the value of the message payload data[0..n) (new reference), or
 * NULL with an exception set; owner (a channel or NULL) as in
 * loads_internal(). */
PyObject *
xn_load_payload(xn_state *st, const char *data, Py_ssize_t n, PyObject *owner)
{
    decoder d;
    PyObject *result = NULL;

    decoder_init(&d, st, data, n);
    d.owner = owner;
    if (choose_strconfig(&d, NULL, NULL) == 0) {
        result = decode(&d);
    }
    decoder_free(&d);
    return result;
}

static const char *const loads_params[] = {"bytestring", "py2str_as_py3str", "py3str_as_py2str"};

PyDoc_STRVAR(loads_doc, "loads($module, /, bytestring, py2str_as_py3str=False, "
                        "py3str_as_py2str=False)\n"
                        "--\n\n"
                        "Return the value serialized in bytestring by dumps().");

/* Returns the value of a public dump (new reference), or NULL with an
 * exception set. */
static PyObject *
unserializer_loads(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    xn_state *st = xn_get_state(module);
    PyObject *argv[3], *flags[2];

    if (xn_parse_args("loads", args, nargs, kwnames, loads_params, 3, 1, argv) < 0) {
        return NULL;
    }
    if (xn_require_installed(st) < 0) {
        return NULL;
    }
    flags[0] = argv[1] != NULL ? argv[1] : Py_False;
    flags[1] = argv[2] != NULL ? argv[2] : Py_False;
    return load(st, argv[0], NULL, flags, NULL, 1);
}

static const char *const loads_internal_params[] = {"data", "channel_or_gateway", "strconfig"};

PyDoc_STRVAR(loads_internal_doc,
             "loads_internal($module, /, data, channel_or_gateway=None, "
             "strconfig=None)\n"
             "--\n\n"
             "Return the value of a message payload (serialized without version).");

/* Returns the value of a message payload (new reference), or NULL with an
 * exception set. */
static PyObject *
unserializer_loads_internal(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    xn_state *st = xn_get_state(module);
    PyObject *argv[3];

    if (xn_parse_args("loads_internal", args, nargs, kwnames, loads_internal_params, 3, 1, argv) <
        0) {
        return NULL;
    }
    if (xn_require_installed(st) < 0) {
        return NULL;
    }
    return load(st, argv[0], argv[1] == Py_None ? NULL : argv[1], NULL,
                argv[2] == Py_None ? NULL : argv[2], 0);
}

static PyMethodDef loads_methods[] = {
    {"loads", (PyCFunction)(void (*)(void))unserializer_loads, METH_FASTCALL | METH_KEYWORDS,
     loads_doc},
    {"loads_internal", (PyCFunction)(void (*)(void))unserializer_loads_internal,
     METH_FASTCALL | METH_KEYWORDS, loads_internal_doc},
    {NULL, NULL, 0, NULL},
};

/* Adds loads and loads_internal to the module.  Returns 0, or -1 with an
 * exception set. */
int
xn_unserializer_add_functions(PyObject *module)
{
    return PyModule_AddFunctions(module, loads_methods);
}
