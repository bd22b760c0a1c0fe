/* event.c: a native threading.Event (type Event) for the thread execution
 * models: set() and is_set() without Python locks, wait() without the GIL. */

#include "execnet.h"

#include <time.h>

/* A blocked wait() wakes at least this often to let Ctrl-C through. */
#define EVENT_SLICE_NS 50000000LL

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int ready; /* lock and cond were initialised */
    int flag;
    int waiters;
} xn_event;

/* Event(): a new event, not set. New reference, or NULL with an exception set. */
static PyObject *
event_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Event() takes no arguments");
        return NULL;
    }
    xn_event *e = (xn_event *)type->tp_alloc(type, 0);
    if (e == NULL) {
        return NULL;
    }
    pthread_condattr_t attr;
    int ok = pthread_condattr_init(&attr) == 0;
    if (ok) {
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        ok = pthread_mutex_init(&e->lock, NULL) == 0;
        if (ok && pthread_cond_init(&e->cond, &attr) != 0) {
            pthread_mutex_destroy(&e->lock);
            ok = 0;
        }
        pthread_condattr_destroy(&attr);
    }
    if (!ok) {
        Py_DECREF(e);
        PyErr_SetString(PyExc_OSError, "cannot create an event's lock");
        return NULL;
    }
    e->ready = 1;
    return (PyObject *)e;
}

static void
event_dealloc(xn_event *e)
{
    PyTypeObject *tp = Py_TYPE(e);
    if (e->ready) {
        pthread_cond_destroy(&e->cond);
        pthread_mutex_destroy(&e->lock);
    }
    tp->tp_free(e);
    Py_DECREF(tp);
}

/* set(): set the flag and wake every waiter. Returns None. */
static PyObject *
event_set(xn_event *e, PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&e->lock);
    e->flag = 1;
    if (e->waiters > 0) {
        pthread_cond_broadcast(&e->cond);
    }
    pthread_mutex_unlock(&e->lock);
    Py_RETURN_NONE;
}

/* clear(): reset the flag. Returns None. */
static PyObject *
event_clear(xn_event *e, PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&e->lock);
    e->flag = 0;
    pthread_mutex_unlock(&e->lock);
    Py_RETURN_NONE;
}

/* is_set(): the flag. Returns a bool. */
static PyObject *
event_is_set(xn_event *e, PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&e->lock);
    int flag = e->flag;
    pthread_mutex_unlock(&e->lock);
    return PyBool_FromLong(flag);
}

/* Wait without the GIL until the flag is set or until slice_end.
 * Returns the flag. */
static int
wait_slice(xn_event *e, int64_t slice_end)
{
    struct timespec ts = {.tv_sec = slice_end / 1000000000LL, .tv_nsec = slice_end % 1000000000LL};
    pthread_mutex_lock(&e->lock);
    e->waiters++;
    while (!e->flag && xn_monotonic_ns() < slice_end) {
        pthread_cond_timedwait(&e->cond, &e->lock, &ts);
    }
    e->waiters--;
    int flag = e->flag;
    pthread_mutex_unlock(&e->lock);
    return flag;
}

/* wait(timeout=None): block until the flag is set, at most timeout
 * seconds. Returns the flag (a bool), or NULL with an exception set (a
 * signal handler raised). */
static PyObject *
event_wait(xn_event *e, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout"};
    PyObject *timeout = NULL;
    if (xn_parse_args("wait", args, nargs, kwnames, names, 1, 0, &timeout) < 0) {
        return NULL;
    }
    int64_t deadline;
    if (xn_deadline(timeout, &deadline) < 0) {
        return NULL;
    }
    pthread_mutex_lock(&e->lock);
    int flag = e->flag;
    pthread_mutex_unlock(&e->lock);
    while (!flag) {
        int64_t now = xn_monotonic_ns();
        if (deadline >= 0 && now >= deadline) {
            break;
        }
        int64_t slice_end = now + EVENT_SLICE_NS;
        if (deadline >= 0 && deadline < slice_end) {
            slice_end = deadline;
        }
        Py_BEGIN_ALLOW_THREADS
            flag = wait_slice(e, slice_end);
        Py_END_ALLOW_THREADS
        if (!flag && PyErr_CheckSignals() < 0) {
            return NULL;
        }
    }
    return PyBool_FromLong(flag);
}

static PyMethodDef event_methods[] = {
    {"set", (PyCFunction)event_set, METH_NOARGS, "set the flag, waking every waiter"},
    {"clear", (PyCFunction)event_clear, METH_NOARGS, "reset the flag"},
    {"is_set", (PyCFunction)event_is_set, METH_NOARGS, "the flag"},
    {"wait", (PyCFunction)(void (*)(void))event_wait, METH_FASTCALL | METH_KEYWORDS,
     "wait(timeout=None): block until the flag is set; returns the flag"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot event_slots[] = {
    {Py_tp_new, event_new},
    {Py_tp_dealloc, event_dealloc},
    {Py_tp_methods, event_methods},
    {Py_tp_doc, "Event(): threading.Event's interface, its waits without the GIL"},
    {0, NULL},
};

PyType_Spec xn_event_spec = {
    .name = "execnet._execnet.Event",
    .basicsize = sizeof(xn_event),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = event_slots,
};
