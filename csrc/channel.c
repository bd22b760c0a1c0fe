/* channel.c: the native item queue of a channel (type ItemQueue).
 * Filled by a connection's IO thread without the GIL; get() waits with the GIL released. */

#include "execnet.h"

#include <errno.h>
#include <string.h>
#include <time.h>

/* A blocked get() wakes at least this often to let Ctrl-C through. */
#define SIGNAL_CHECK_NS 50000000LL

struct xn_item {
    struct xn_item *next;
    Py_ssize_t size, capacity;
    PyObject *value; /* or the item decoded already (a bytes object), owned */
    char data[];
};

/* Returns a new item of size bytes (contents unset), or NULL (no exception set). */
xn_item *
xn_item_new(Py_ssize_t size)
{
    xn_item *item = malloc(sizeof(xn_item) + (size_t)size);
    if (item != NULL) {
        item->next = NULL;
        item->size = item->capacity = size;
        item->value = NULL;
    }
    return item;
}

/* Returns item (moved, perhaps) with room for capacity bytes, its size,
 * keeping its contents up to there, or NULL (item untouched). No GIL needed. */
xn_item *
xn_item_grow(xn_item *item, Py_ssize_t capacity)
{
    xn_item *bigger = realloc(item, sizeof(xn_item) + (size_t)capacity);
    if (bigger != NULL) {
        bigger->size = bigger->capacity = capacity;
    }
    return bigger;
}

xn_item *
xn_item_of_value(PyObject *value)
{
    xn_item *item = xn_item_new(0);
    if (item != NULL) {
        item->value = value;
    }
    return item;
}

/* Returns the serialized payload of item (new reference), or NULL with an
 * exception set (GIL held). */
static PyObject *
item_payload(xn_item *item)
{
    if (item->value == NULL) {
        return PyBytes_FromStringAndSize(item->data, item->size);
    }
    /* a lone byte string: opcode, length, bytes, stop */
    Py_ssize_t n = PyBytes_GET_SIZE(item->value);
    PyObject *payload = PyBytes_FromStringAndSize(NULL, n + XN_LONE_BYTES_EXTRA);
    if (payload != NULL) {
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(payload);
        out[0] = XN_OP_BYTES;
        xn_put_i32(out + 1, (int32_t)n);
        memcpy(out + 5, PyBytes_AS_STRING(item->value), (size_t)n);
        out[n + 5] = XN_OP_STOP;
    }
    return payload;
}

/* Returns item, used again for size bytes if it has room for them and is
 * not much bigger, else NULL (item untouched). */
xn_item *
xn_item_reuse(xn_item *item, Py_ssize_t size)
{
    if (item == NULL || item->capacity < size || item->capacity / 2 > size) {
        return NULL;
    }
    item->next = NULL;
    item->size = size;
    return item;
}

Py_ssize_t
xn_item_capacity(xn_item *item)
{
    return item->capacity;
}

char *
xn_item_data(xn_item *item)
{
    return item->data;
}

/* Frees a list of items (GIL held: they may own objects). */
static void
free_items(xn_item *item)
{
    while (item != NULL) {
        xn_item *next = item->next;
        Py_XDECREF(item->value);
        free(item);
        item = next;
    }
}

/* Initialise the queue's own lock and condition (monotonic clock).
 * Returns 0, or -1 with an exception set. */
static int
queue_init_sync(xn_queue *q)
{
    pthread_condattr_t attr;
    if (pthread_mutex_init(&q->own_lock, NULL) != 0) {
        PyErr_SetString(PyExc_OSError, "cannot create a queue lock");
        return -1;
    }
    if (pthread_condattr_init(&attr) != 0) {
        pthread_mutex_destroy(&q->own_lock);
        PyErr_SetString(PyExc_OSError, "cannot create a queue condition");
        return -1;
    }
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&q->own_cond, &attr);
    pthread_condattr_destroy(&attr);
    if (rc != 0) {
        pthread_mutex_destroy(&q->own_lock);
        PyErr_SetString(PyExc_OSError, "cannot create a queue condition");
        return -1;
    }
    q->lock = &q->own_lock;
    q->cond = &q->own_cond;
    q->sync_ready = 1;
    return 0;
}

/* Append item (ownership passes to the queue) unless the queue has ended
 * or passes items on; callable without the GIL. Returns 1 if queued, 0 if
 * the caller keeps the item. */
int
xn_queue_push(xn_queue *q, xn_item *item)
{
    int queued = 0;
    pthread_mutex_lock(q->lock);
    if (!q->ended && !q->passing) {
        if (q->tail != NULL) {
            q->tail->next = item;
        }
        else {
            q->head = item;
        }
        q->tail = item;
        q->count++;
        queued = 1;
        if (q->waiters > 0) {
            pthread_cond_broadcast(q->cond);
        }
    }
    pthread_mutex_unlock(q->lock);
    return queued;
}

/* Mark the end of the items; wakes every waiter. Callable without the GIL. */
static void
xn_queue_end(xn_queue *q)
{
    pthread_mutex_lock(q->lock);
    q->ended = 1;
    pthread_cond_broadcast(q->cond);
    pthread_mutex_unlock(q->lock);
}

static PyObject *
queue_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"endmarker", NULL};
    PyObject *endmarker = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:ItemQueue", kwlist, &endmarker)) {
        return NULL;
    }
    xn_queue *q = (xn_queue *)type->tp_alloc(type, 0);
    if (q == NULL) {
        return NULL;
    }
    if (queue_init_sync(q) < 0) {
        Py_DECREF(q);
        return NULL;
    }
    q->endmarker = Py_NewRef(endmarker);
    return (PyObject *)q;
}

static int
queue_traverse(xn_queue *q, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(q));
    Py_VISIT(q->endmarker);
    Py_VISIT(q->connection);
    return 0;
}

static int
queue_clear(xn_queue *q)
{
    Py_CLEAR(q->endmarker);
    return 0;
}

static void
queue_dealloc(xn_queue *q)
{
    PyTypeObject *tp = Py_TYPE(q);
    PyObject_GC_UnTrack(q);
    if (q->connection != NULL) {
        xn_connection_forget_queue((xn_connection *)q->connection, q);
    }
    Py_CLEAR(q->connection);
    queue_clear(q);
    free_items(q->head);
    if (q->sync_ready) {
        pthread_cond_destroy(&q->own_cond);
        pthread_mutex_destroy(&q->own_lock);
    }
    tp->tp_free(q);
    Py_DECREF(tp);
}

enum { TAKE_ITEM, TAKE_END, TAKE_SLICE };

/* Pop the head item into *out if there is one (q->lock held). */
static int
pop_item(xn_queue *q, xn_item **out)
{
    if (q->head == NULL) {
        return 0;
    }
    *out = q->head;
    q->head = q->head->next;
    if (q->head == NULL) {
        q->tail = NULL;
    }
    q->count--;
    (*out)->next = NULL;
    return 1;
}

/* Wait (no GIL) until an item is there, the queue ended, or slice_end
 * passed. A queue of a connection reads the connection itself while no
 * other thread does. Returns TAKE_ITEM (*out set), TAKE_END or TAKE_SLICE. */
static int
wait_slice(xn_queue *q, int64_t slice_end, xn_item **out)
{
    xn_connection *c = (xn_connection *)q->connection;
    int result = TAKE_SLICE;
    pthread_mutex_lock(q->lock);
    q->waiters++;
    if (c != NULL) {
        xn_connection_enter_getters(c);
    }
    for (;;) {
        if (pop_item(q, out)) {
            result = TAKE_ITEM;
            break;
        }
        if (q->ended) {
            result = TAKE_END;
            break;
        }
        if (xn_monotonic_ns() >= slice_end) {
            break;
        }
        /* (q->lock is c's state_lock) */
        if (c != NULL && xn_connection_read_if_free(c, slice_end)) {
            continue;
        }
        struct timespec ts = {.tv_sec = slice_end / 1000000000LL,
                              .tv_nsec = slice_end % 1000000000LL};
        pthread_cond_timedwait(q->cond, q->lock, &ts);
    }
    q->waiters--;
    if (c != NULL) {
        xn_connection_leave_getters(c);
    }
    pthread_mutex_unlock(q->lock);
    return result;
}

/* Take the next item, waiting at most timeout seconds (None: forever).
 * Returns 1 with *out set (owned by the caller), 0 at end of queue,
 * or -1 with an exception set (timeout or signal). */
static int
queue_take(xn_queue *q, PyObject *timeout, xn_item **out)
{
    int64_t deadline;
    if (xn_deadline(timeout, &deadline) < 0) {
        return -1;
    }
    if (q->connection != NULL) {
        xn_connection_note_get((xn_connection *)q->connection);
    }
    /* without waiting first, if there is something */
    pthread_mutex_lock(q->lock);
    int got = pop_item(q, out);
    int ended = q->ended;
    pthread_mutex_unlock(q->lock);
    if (got) {
        return 1;
    }
    if (ended) {
        return 0;
    }
    if (q->connection != NULL) {
        /* our requests must be out before we wait for the answers */
        Py_BEGIN_ALLOW_THREADS
            xn_connection_flush((xn_connection *)q->connection);
        Py_END_ALLOW_THREADS
    }
    for (;;) {
        int64_t slice_end = xn_monotonic_ns() + SIGNAL_CHECK_NS;
        if (deadline >= 0 && deadline < slice_end) {
            slice_end = deadline;
        }
        int result;
        Py_BEGIN_ALLOW_THREADS
            result = wait_slice(q, slice_end, out);
        Py_END_ALLOW_THREADS
        if (result == TAKE_ITEM) {
            return 1;
        }
        if (result == TAKE_END) {
            return 0;
        }
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
        if (deadline >= 0 && xn_monotonic_ns() >= deadline) {
            xn_state *st = xn_state_of_type(Py_TYPE(q));
            if (st == NULL) {
                return -1;
            }
            PyErr_Format(st->TimeoutError, "no item after %R seconds", timeout);
            return -1;
        }
    }
}

/* ItemQueue.get(timeout, owner): the next item decoded (channel references
 * and string config from owner, a channel or None), or the endmarker once
 * the queue ended. New reference, or NULL with an exception set. */
static PyObject *
queue_get(xn_queue *q, PyObject *const *args, Py_ssize_t nargs)
{
    if (xn_check_nargs("get", nargs, 2) < 0) {
        return NULL;
    }
    PyObject *timeout = args[0], *owner = args[1];
    xn_item *item;
    int got = queue_take(q, timeout, &item);
    if (got < 0) {
        return NULL;
    }
    if (got == 0) {
        return Py_NewRef(q->endmarker);
    }
    xn_connection *c = (xn_connection *)q->connection;
    PyObject *value = item->value;
    if (value != NULL) {
        /* read straight into its bytes object */
        free(item);
        xn_connection_expect_bytes(c, PyBytes_GET_SIZE(value));
        return value;
    }
    xn_state *st = xn_state_of_type(Py_TYPE(q));
    if (st != NULL && xn_require_installed(st) == 0) {
        value = xn_load_payload(st, item->data, item->size, owner == Py_None ? NULL : owner);
    }
    if (c == NULL) {
        free(item);
        return value;
    }
    if (value != NULL && PyBytes_CheckExact(value) && item->size >= XN_DIRECT_PAYLOAD &&
        item->data[0] == XN_OP_BYTES &&
        item->size == PyBytes_GET_SIZE(value) + XN_LONE_BYTES_EXTRA) {
        xn_connection_expect_bytes(c, PyBytes_GET_SIZE(value)); /* more may follow */
    }
    xn_connection_recycle(c, item);
    return value;
}

/* ItemQueue.put(payload): queue serialized bytes from Python code; the
 * endmarker ends the queue. Returns True if queued, False if the queue
 * ended or passes items on. */
static PyObject *
queue_put(xn_queue *q, PyObject *payload)
{
    Py_buffer view;
    if (payload == q->endmarker) {
        Py_BEGIN_ALLOW_THREADS
            xn_queue_end(q);
        Py_END_ALLOW_THREADS
        Py_RETURN_FALSE;
    }
    if (PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    xn_item *item = xn_item_new(view.len);
    if (item == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    memcpy(item->data, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    int queued;
    Py_BEGIN_ALLOW_THREADS
        queued = xn_queue_push(q, item);
    Py_END_ALLOW_THREADS
    if (!queued) {
        free(item);
    }
    return PyBool_FromLong(queued);
}

/* ItemQueue.end(): no more items will come; waiters get the endmarker. */
static PyObject *
queue_end_py(xn_queue *q, PyObject *Py_UNUSED(ignored))
{
    Py_BEGIN_ALLOW_THREADS
        xn_queue_end(q);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ItemQueue.pass_on(): from now on the IO thread hands this channel's
 * data to Python instead of queueing it. Returns (payloads, ended): the
 * items queued so far as a list of bytes, and whether the queue ended. */
static PyObject *
queue_pass_on(xn_queue *q, PyObject *Py_UNUSED(ignored))
{
    xn_item *items;
    int ended;
    Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(q->lock);
        q->passing = 1;
        items = q->head;
        q->head = q->tail = NULL;
        q->count = 0;
        ended = q->ended;
        pthread_mutex_unlock(q->lock);
    Py_END_ALLOW_THREADS
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        goto error;
    }
    for (xn_item *it = items; it != NULL; it = it->next) {
        PyObject *b = item_payload(it);
        if (b == NULL) {
            goto error;
        }
        int rc = PyList_Append(list, b);
        Py_DECREF(b);
        if (rc < 0) {
            goto error;
        }
    }
    free_items(items);
    PyObject *result = Py_BuildValue("(NO)", list, ended ? Py_True : Py_False);
    return result;
error:
    free_items(items);
    Py_XDECREF(list);
    return NULL;
}

static PyObject *
queue_qsize(xn_queue *q, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t n;
    Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(q->lock);
        n = q->count;
        pthread_mutex_unlock(q->lock);
    Py_END_ALLOW_THREADS
    return PyLong_FromSsize_t(n);
}

static PyMethodDef queue_methods[] = {
    {"get", (PyCFunction)(void (*)(void))queue_get, METH_FASTCALL,
     "get(timeout, owner): next item, or the endmarker at the end"},
    {"put", (PyCFunction)queue_put, METH_O, "put(payload): queue serialized bytes"},
    {"end", (PyCFunction)queue_end_py, METH_NOARGS, "mark the end of the items"},
    {"pass_on", (PyCFunction)queue_pass_on, METH_NOARGS,
     "stop queueing; return (queued payloads, ended)"},
    {"qsize", (PyCFunction)queue_qsize, METH_NOARGS, "number of queued items"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot queue_slots[] = {
    {Py_tp_new, queue_new},
    {Py_tp_dealloc, queue_dealloc},
    {Py_tp_traverse, queue_traverse},
    {Py_tp_clear, queue_clear},
    {Py_tp_methods, queue_methods},
    {Py_tp_doc, "ItemQueue(endmarker=None): serialized items of one channel"},
    {0, NULL},
};

PyType_Spec xn_queue_spec = {
    .name = "execnet._execnet.ItemQueue",
    .basicsize = sizeof(xn_queue),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = queue_slots,
};
