/* connection.c: a gateway's connection, the Python type Connection: its
 * life (creation, start, close, dealloc) and its methods.  Frames are
 * written by writer.c and read by reader.c; connection.h has the layout
 * and the thread and lock contract. */

#include "connection.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

/* A pumping thread looks at signals this often. */
#define PUMP_SLICE_NS 50000000LL
/* Pipes (where they are pipes) are made this big. */
#define PIPE_SIZE (1024 * 1024)

void
xn_connection_flush(xn_connection *c)
{
    xn_writer_flush(c->writer);
}

void
xn_connection_note_get(xn_connection *c)
{
    __atomic_store_n(&c->writer->last_get_ns, xn_monotonic_ns(), __ATOMIC_RELAXED);
}

/* Parse (code, channelid) from Python ints. Returns 0 or -1. */
static int
parse_code_id(PyObject *const *args, int *code, int32_t *channelid)
{
    long c = PyLong_AsLong(args[0]);
    if (c == -1 && PyErr_Occurred()) {
        return -1;
    }
    long id = PyLong_AsLong(args[1]);
    if (id == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (c < -128 || c > 127 || id < INT32_MIN || id > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "message code or channel id out of range");
        return -1;
    }
    *code = (int)c;
    *channelid = (int32_t)id;
    return 0;
}

/* Connection.send(code, channelid, item): one frame whose payload is item
 * serialized (nothing is written if that fails). Returns None. */
static PyObject *
conn_send(xn_connection *c, PyObject *const *args, Py_ssize_t nargs)
{
    int code;
    int32_t channelid;
    if (xn_check_nargs("send", nargs, 3) < 0) {
        return NULL;
    }
    if (parse_code_id(args, &code, &channelid) < 0) {
        return NULL;
    }
    xn_state *st = xn_state_of_type(Py_TYPE(c));
    if (st == NULL || xn_require_installed(st) < 0) {
        return NULL;
    }
    if (xn_write_message(st, args[2], code, channelid, xn_writer_send, c->writer) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Connection.send_raw(code, channelid, payload): one frame with payload
 * (bytes-like) as it is. Returns None. */
static PyObject *
conn_send_raw(xn_connection *c, PyObject *const *args, Py_ssize_t nargs)
{
    int code;
    int32_t channelid;
    if (xn_check_nargs("send_raw", nargs, 3) < 0) {
        return NULL;
    }
    if (parse_code_id(args, &code, &channelid) < 0) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[2], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    int rc = xn_writer_send_frame(c->writer, code, channelid, view.buf, view.len);
    PyBuffer_Release(&view);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Connection.close_write(): no more frames; the peer sees end of file. */
static PyObject *
conn_close_write(xn_connection *c, PyObject *Py_UNUSED(ignored))
{
    Py_BEGIN_ALLOW_THREADS
        xn_writer_close(c->writer);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* Connection.start(): start the IO thread. */
static PyObject *
conn_start(xn_connection *c, PyObject *Py_UNUSED(ignored))
{
    if (c->reader_started) {
        PyErr_SetString(PyExc_RuntimeError, "connection already started");
        return NULL;
    }
    pthread_t tid;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    Py_INCREF(c); /* owned by the thread */
    c->reader_started = 1;
    c->reader_running = 1;
    int rc = pthread_create(&tid, &attr, xn_reader_main, c);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        c->reader_running = 0;
        Py_DECREF(c);
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* Connection.queue(channelid, endmarker): a new ItemQueue that the IO
 * thread fills with that channel's data. */
static PyObject *
conn_queue(xn_connection *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (xn_check_nargs("queue", nargs, 2) < 0) {
        return NULL;
    }
    long id = PyLong_AsLong(args[0]);
    if (id == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (id < INT32_MIN || id > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "channel id out of range");
        return NULL;
    }
    xn_state *st = xn_state_of_type(Py_TYPE(c));
    if (st == NULL) {
        return NULL;
    }
    xn_queue *q = (xn_queue *)PyObject_CallOneArg((PyObject *)st->ItemQueueType, args[1]);
    if (q == NULL) {
        return NULL;
    }
    q->channelid = (int32_t)id;
    q->connection = Py_NewRef((PyObject *)c);
    q->lock = &c->state_lock;
    q->cond = &c->get_cond;
    pthread_mutex_lock(&c->table_lock);
    int rc = xn_table_insert(c, (int32_t)id, q);
    pthread_mutex_unlock(&c->table_lock);
    if (rc < 0) {
        Py_CLEAR(q->connection);
        Py_DECREF(q);
        return PyErr_NoMemory();
    }
    return (PyObject *)q;
}

/* Connection.forget(channelid): the IO thread stops queueing for it. */
static PyObject *
conn_forget(xn_connection *c, PyObject *arg)
{
    long id = PyLong_AsLong(arg);
    if (id == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (id >= INT32_MIN && id <= INT32_MAX) {
        pthread_mutex_lock(&c->table_lock);
        xn_table_remove(c, (int32_t)id, NULL);
        pthread_mutex_unlock(&c->table_lock);
    }
    Py_RETURN_NONE;
}

/* Connection.pump(mark, timeout=None): the calling thread, having nothing
 * else to do, reads the connection itself until a frame went to Python
 * since mark (a value of .dispatched), handling frames inline where the
 * inline dispatcher takes them: a worker's idle primary thread gets its
 * next task without another thread waking it. Returns True, or False once
 * reading ended; NULL with an exception set on a signal or (TimeoutError)
 * after timeout seconds. */
static PyObject *
conn_pump(xn_connection *c, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"mark", "timeout"};
    PyObject *params[2];
    if (xn_parse_args("pump", args, nargs, kwnames, names, 2, 1, params) < 0) {
        return NULL;
    }
    unsigned long long mark = PyLong_AsUnsignedLongLong(params[0]);
    if (mark == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    int64_t deadline;
    if (xn_deadline(params[1], &deadline) < 0) {
        return NULL;
    }
    for (;;) {
        int64_t slice_end = xn_monotonic_ns() + PUMP_SLICE_NS;
        if (deadline >= 0 && deadline < slice_end) {
            slice_end = deadline;
        }
        int rc;
        Py_BEGIN_ALLOW_THREADS
            rc = xn_reader_pump_slice(c, (uint64_t)mark, slice_end);
        Py_END_ALLOW_THREADS
        if (rc != XN_PUMP_SLICE) {
            return PyBool_FromLong(rc == XN_PUMP_DISPATCHED);
        }
        if (PyErr_CheckSignals() < 0) {
            return NULL;
        }
        if (deadline >= 0 && xn_monotonic_ns() >= deadline) {
            xn_state *st = xn_state_of_type(Py_TYPE(c));
            if (st != NULL && xn_require_installed(st) == 0) {
                PyErr_Format(st->TimeoutError, "nothing handled after %R seconds", params[1]);
            }
            return NULL;
        }
    }
}

static PyObject *
conn_dispatched(xn_connection *c, void *Py_UNUSED(closure))
{
    pthread_mutex_lock(&c->state_lock);
    uint64_t n = c->dispatched;
    pthread_mutex_unlock(&c->state_lock);
    return PyLong_FromUnsignedLongLong(n);
}

static PyObject *
conn_is_reading(xn_connection *c, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(c->reader_running);
}

/* Initialise c's locks and conditions (monotonic clock). Returns 0 or -1. */
static int
init_sync(xn_connection *c)
{
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0) {
        return -1;
    }
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int ok = pthread_mutex_init(&c->table_lock, NULL) == 0;
    ok = ok && pthread_mutex_init(&c->read_lock, NULL) == 0;
    ok = ok && pthread_mutex_init(&c->state_lock, NULL) == 0;
    ok = ok && pthread_cond_init(&c->get_cond, &attr) == 0;
    ok = ok && pthread_cond_init(&c->io_cond, &attr) == 0;
    pthread_condattr_destroy(&attr);
    if (!ok) {
        return -1; /* (a partial set leaks, on a failure that does not happen) */
    }
    c->locks_ready = 1;
    return 0;
}

/* Connection(rfd, wfd, dispatch, inline=None): takes ownership of both
 * descriptors. */
static PyObject *
conn_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"rfd", "wfd", "dispatch", "inline", NULL};
    int rfd, wfd;
    PyObject *dispatch, *inline_dispatch = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iiO|O:Connection", kwlist, &rfd, &wfd,
                                     &dispatch, &inline_dispatch)) {
        return NULL;
    }
    if (!PyCallable_Check(dispatch) ||
        (inline_dispatch != Py_None && !PyCallable_Check(inline_dispatch))) {
        PyErr_SetString(PyExc_TypeError, "dispatch and inline must be callable");
        return NULL;
    }
    xn_connection *c = (xn_connection *)type->tp_alloc(type, 0);
    if (c == NULL) {
        return NULL;
    }
    c->rfd = -1;
    if (init_sync(c) < 0) {
        Py_DECREF(c);
        PyErr_SetString(PyExc_OSError, "cannot create connection locks");
        return NULL;
    }
    c->writer = xn_writer_new(wfd);
    if (c->writer == NULL) {
        Py_DECREF(c);
        PyErr_SetString(PyExc_OSError, "cannot create the connection's writer");
        return NULL;
    }
    c->rfd = rfd;
    c->spin_ns = xn_spin_setting_ns();
#ifdef F_SETPIPE_SZ
    /* Bigger pipes (where they are pipes) mean fewer wakeups for bulk data;
     * refusals (sockets, limits) leave things as they are. */
    (void)fcntl(rfd, F_SETPIPE_SZ, PIPE_SIZE);
    (void)fcntl(wfd, F_SETPIPE_SZ, PIPE_SIZE);
#endif
    c->dispatch = Py_NewRef(dispatch);
    if (inline_dispatch != Py_None) {
        c->inline_dispatch = Py_NewRef(inline_dispatch);
    }
    return (PyObject *)c;
}

static int
conn_traverse(xn_connection *c, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(c));
    Py_VISIT(c->dispatch);
    Py_VISIT(c->inline_dispatch);
    Py_VISIT(c->inline_error);
    return 0;
}

static int
conn_clear(xn_connection *c)
{
    Py_CLEAR(c->dispatch);
    Py_CLEAR(c->inline_dispatch);
    Py_CLEAR(c->inline_error);
    return 0;
}

static void
conn_dealloc(xn_connection *c)
{
    PyTypeObject *tp = Py_TYPE(c);
    PyObject_GC_UnTrack(c);
    conn_clear(c);
    /* The IO thread holds a reference while it runs: it is done here (or
     * never ran, and then rfd is closed here).  The flusher may still be
     * writing: it is told to stop and not waited for; it frees the writer
     * if it is the last to use it.  No IO waits here. */
    if (c->writer != NULL) {
        xn_writer_release(c->writer);
        c->writer = NULL;
    }
    xn_table_free(c);
    xn_reader_free(c);
    if (c->locks_ready) {
        pthread_mutex_destroy(&c->table_lock);
        pthread_mutex_destroy(&c->read_lock);
        pthread_mutex_destroy(&c->state_lock);
        pthread_cond_destroy(&c->get_cond);
        pthread_cond_destroy(&c->io_cond);
    }
    tp->tp_free(c);
    Py_DECREF(tp);
}

static PyMethodDef conn_methods[] = {
    {"start", (PyCFunction)conn_start, METH_NOARGS, "start the IO thread"},
    {"send", (PyCFunction)(void (*)(void))conn_send, METH_FASTCALL,
     "send(code, channelid, item): write one frame with item serialized"},
    {"send_raw", (PyCFunction)(void (*)(void))conn_send_raw, METH_FASTCALL,
     "send_raw(code, channelid, payload): write one frame"},
    {"queue", (PyCFunction)(void (*)(void))conn_queue, METH_FASTCALL,
     "queue(channelid, endmarker): a native queue for that channel's data"},
    {"forget", (PyCFunction)conn_forget, METH_O, "forget(channelid): stop queueing its data"},
    {"close_write", (PyCFunction)conn_close_write, METH_NOARGS, "close the writing side"},
    {"pump", (PyCFunction)(void (*)(void))conn_pump, METH_FASTCALL | METH_KEYWORDS,
     "pump(mark, timeout=None): read while idle until a frame went to Python since mark"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef conn_getset[] = {
    {"reading", (getter)conn_is_reading, NULL, "True while the IO thread runs", NULL},
    {"dispatched", (getter)conn_dispatched, NULL, "how many frames went to Python", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot conn_slots[] = {
    {Py_tp_new, conn_new},
    {Py_tp_dealloc, conn_dealloc},
    {Py_tp_traverse, conn_traverse},
    {Py_tp_clear, conn_clear},
    {Py_tp_methods, conn_methods},
    {Py_tp_getset, conn_getset},
    {Py_tp_doc, "Connection(rfd, wfd, dispatch, inline=None): frames over two file descriptors"},
    {0, NULL},
};

PyType_Spec xn_connection_spec = {
    .name = "execnet._execnet.Connection",
    .basicsize = sizeof(xn_connection),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = conn_slots,
};
