/* io.c: a gateway's connection (type Connection): framed writes without the GIL
 * and one IO thread reading frames, queueing channel data natively, the rest to Python. */

#include "execnet.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#define HEADER_SIZE 9
#define READ_CHUNK (256 * 1024)
/* A payload at least this big is read straight into its queue item. */
#define DIRECT_PAYLOAD (64 * 1024)
#define MSG_DATA 4
#define MSG_MAX 7
#define CODE_END (-1)
#define PIPE_SIZE (1024 * 1024)

/* ------------------------------------------------------------------ */
/* the channel table: id -> queue, open addressing                      */

#define TOMBSTONE ((xn_queue *)1)

typedef struct xn_slot {
    int32_t id;
    xn_queue *queue; /* NULL: free, TOMBSTONE: deleted */
} table_slot;

static size_t
slot_index(int32_t id, size_t mask)
{
    return ((uint32_t)id * 2654435761u) & mask;
}

/* Returns the queue registered for id, or NULL. Caller holds table_lock. */
static xn_queue *
table_lookup(xn_connection *c, int32_t id)
{
    if (c->slots == NULL)
        return NULL;
    size_t mask = c->capacity - 1;
    for (size_t i = slot_index(id, mask);; i = (i + 1) & mask) {
        table_slot *s = &c->slots[i];
        if (s->queue == NULL)
            return NULL;
        if (s->queue != TOMBSTONE && s->id == id)
            return s->queue;
    }
}

/* Rebuild the table with room for more entries. Returns 0 or -1 (no memory). */
static int
table_grow(xn_connection *c)
{
    size_t newcap = c->capacity ? c->capacity * 2 : 16;
    while (c->used * 4 >= newcap)
        newcap *= 2;
    table_slot *slots = calloc(newcap, sizeof(table_slot));
    if (slots == NULL)
        return -1;
    for (size_t i = 0; i < c->capacity; i++) {
        table_slot *s = &c->slots[i];
        if (s->queue == NULL || s->queue == TOMBSTONE)
            continue;
        size_t j = slot_index(s->id, newcap - 1);
        while (slots[j].queue != NULL)
            j = (j + 1) & (newcap - 1);
        slots[j] = *s;
    }
    free(c->slots);
    c->slots = slots;
    c->capacity = newcap;
    c->filled = c->used;
    return 0;
}

/* Register q under id, replacing an earlier one. Caller holds table_lock.
 * Returns 0 or -1 (no memory). */
static int
table_insert(xn_connection *c, int32_t id, xn_queue *q)
{
    if ((c->filled + 1) * 2 > c->capacity && table_grow(c) < 0)
        return -1;
    size_t mask = c->capacity - 1;
    table_slot *free_slot = NULL;
    for (size_t i = slot_index(id, mask);; i = (i + 1) & mask) {
        table_slot *s = &c->slots[i];
        if (s->queue == NULL) {
            if (free_slot == NULL) {
                free_slot = s;
                c->filled++;
            }
            break;
        }
        if (s->queue == TOMBSTONE) {
            if (free_slot == NULL)
                free_slot = s;
        }
        else if (s->id == id) {
            s->queue = q;
            return 0;
        }
    }
    free_slot->id = id;
    free_slot->queue = q;
    c->used++;
    return 0;
}

/* Remove id's entry if it is q (q NULL: whatever it is). Caller holds table_lock. */
static void
table_remove(xn_connection *c, int32_t id, xn_queue *q)
{
    if (c->slots == NULL)
        return;
    size_t mask = c->capacity - 1;
    for (size_t i = slot_index(id, mask);; i = (i + 1) & mask) {
        table_slot *s = &c->slots[i];
        if (s->queue == NULL)
            return;
        if (s->queue != TOMBSTONE && s->id == id) {
            if (q == NULL || s->queue == q) {
                s->queue = TOMBSTONE;
                c->used--;
            }
            return;
        }
    }
}

/* Called by a dying queue: drop it from the table (GIL held, no IO). */
void
xn_connection_forget_queue(xn_connection *c, xn_queue *q)
{
    pthread_mutex_lock(&c->table_lock);
    table_remove(c, q->channelid, q);
    pthread_mutex_unlock(&c->table_lock);
}

/* ------------------------------------------------------------------ */
/* writing                                                             */

/* Returns 0 once buf holds room for n more bytes, or -1 (no memory). */
static int
buffer_reserve(xn_buffer *buf, Py_ssize_t n)
{
    if (buf->capacity - buf->size >= n)
        return 0;
    Py_ssize_t cap = buf->capacity ? buf->capacity : 4096;
    while (cap - buf->size < n)
        cap *= 2;
    char *data = realloc(buf->data, (size_t)cap);
    if (data == NULL)
        return -1;
    buf->data = data;
    buf->capacity = cap;
    return 0;
}

/* Returns 0 having appended data[0..n) to buf, or -1 (no memory). */
static int
buffer_append(xn_buffer *buf, const char *data, Py_ssize_t n)
{
    if (buffer_reserve(buf, n) < 0)
        return -1;
    memcpy(buf->data + buf->size, data, (size_t)n);
    buf->size += n;
    return 0;
}

static void
buffer_free(xn_buffer *buf)
{
    free(buf->data);
    buf->data = NULL;
    buf->size = buf->capacity = 0;
}

/* Write all of data to fd (GIL released). Returns 0, or an errno value. */
static int
write_all(int fd, const char *data, size_t size)
{
    while (size > 0) {
        ssize_t n = write(fd, data, size);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        data += n;
        size -= (size_t)n;
    }
    return 0;
}

/* Hand one complete frame to the connection: written at once if nobody is
 * writing, else appended for the thread that is (frames never interleave).
 * Returns 0, or -1 with OSError set. */
static int
write_frame(xn_connection *c, const char *frame, size_t size)
{
    int err = 0;
    pthread_mutex_lock(&c->write_lock);
    if (c->write_failed || c->write_closed) {
        pthread_mutex_unlock(&c->write_lock);
        goto failed;
    }
    if (c->writing) {
        int ok = buffer_append(&c->pending, frame, (Py_ssize_t)size) == 0;
        pthread_mutex_unlock(&c->write_lock);
        if (!ok) {
            PyErr_NoMemory();
            return -1;
        }
        return 0;
    }
    c->writing = 1;
    pthread_mutex_unlock(&c->write_lock);

    xn_buffer spare = {0};
    Py_BEGIN_ALLOW_THREADS
    err = write_all(c->wfd, frame, size);
    pthread_mutex_lock(&c->write_lock);
    /* flush what other threads appended meanwhile */
    while (err == 0 && c->pending.size > 0) {
        xn_buffer batch = c->pending;
        c->pending = spare;
        pthread_mutex_unlock(&c->write_lock);
        err = write_all(c->wfd, batch.data, (size_t)batch.size);
        batch.size = 0;
        spare = batch;
        pthread_mutex_lock(&c->write_lock);
    }
    if (err != 0) {
        c->write_failed = 1;
        c->pending.size = 0;
    }
    c->writing = 0;
    if (c->write_closed && c->wfd >= 0) {
        close(c->wfd);
        c->wfd = -1;
    }
    pthread_mutex_unlock(&c->write_lock);
    Py_END_ALLOW_THREADS
    buffer_free(&spare);
    if (err == 0)
        return 0;
failed:
    PyErr_SetString(PyExc_OSError, "cannot send (already closed?)");
    return -1;
}

/* Parse (code, channelid) from Python ints. Returns 0 or -1. */
static int
parse_code_id(PyObject *const *args, int *code, int32_t *channelid)
{
    long c = PyLong_AsLong(args[0]);
    if (c == -1 && PyErr_Occurred())
        return -1;
    long id = PyLong_AsLong(args[1]);
    if (id == -1 && PyErr_Occurred())
        return -1;
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
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "send() takes 3 arguments (code, channelid, item)");
        return NULL;
    }
    if (parse_code_id(args, &code, &channelid) < 0)
        return NULL;
    xn_state *st = xn_state_of_type(Py_TYPE(c));
    if (st == NULL || xn_require_installed(st) < 0)
        return NULL;
    PyObject *frame = xn_encode_message(st, args[2], code, channelid);
    if (frame == NULL)
        return NULL;
    int rc = write_frame(c, PyBytes_AS_STRING(frame), (size_t)PyBytes_GET_SIZE(frame));
    Py_DECREF(frame);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Connection.send_raw(code, channelid, payload): one frame with payload
 * (bytes-like) as it is. Returns None. */
static PyObject *
conn_send_raw(xn_connection *c, PyObject *const *args, Py_ssize_t nargs)
{
    int code;
    int32_t channelid;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "send_raw() takes 3 arguments (code, channelid, payload)");
        return NULL;
    }
    if (parse_code_id(args, &code, &channelid) < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[2], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL;
    xn_buffer buf = {0};
    if (view.len > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "payload is too long");
        goto done;
    }
    if (buffer_reserve(&buf, HEADER_SIZE + view.len) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    xn_put_header((unsigned char *)buf.data, (int8_t)code, channelid, (int32_t)view.len);
    memcpy(buf.data + HEADER_SIZE, view.buf, (size_t)view.len);
    buf.size = HEADER_SIZE + view.len;
    if (write_frame(c, buf.data, (size_t)buf.size) == 0)
        result = Py_NewRef(Py_None);
done:
    buffer_free(&buf);
    PyBuffer_Release(&view);
    return result;
}

/* Connection.close_write(): no more frames; the peer sees end of file. */
static PyObject *
conn_close_write(xn_connection *c, PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&c->write_lock);
    c->write_closed = 1;
    if (!c->writing && c->wfd >= 0) {
        close(c->wfd);
        c->wfd = -1;
    }
    pthread_mutex_unlock(&c->write_lock);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ */
/* reading                                                             */

/* Read exactly size bytes into dst (no GIL). Returns the count read:
 * less than size at end of file; -1 with *err set on error. */
static Py_ssize_t
read_fully(int fd, char *dst, Py_ssize_t size, int *err)
{
    Py_ssize_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, dst + got, (size_t)(size - got));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            *err = errno;
            return -1;
        }
        if (n == 0)
            break;
        got += n;
    }
    return got;
}

/* Per-thread reading state. */
typedef struct {
    xn_connection *conn;
    char *buf;
    Py_ssize_t start, end, capacity;
    PyGILState_STATE gil;
    int has_gil;
} reader_state;

static void
take_gil(reader_state *r)
{
    if (!r->has_gil) {
        r->gil = PyGILState_Ensure();
        r->has_gil = 1;
    }
}

static void
drop_gil(reader_state *r)
{
    if (r->has_gil) {
        PyGILState_Release(r->gil);
        r->has_gil = 0;
    }
}

/* Call the Python dispatcher (GIL held). Returns 0, or -1 if it raised:
 * the exception is kept set for the caller to report. */
static int
call_dispatch(xn_connection *c, int code, int32_t channelid, PyObject *payload)
{
    PyObject *pycode = PyLong_FromLong(code);
    PyObject *pyid = PyLong_FromLong(channelid);
    PyObject *result = NULL;
    if (pycode != NULL && pyid != NULL) {
        PyObject *args[3] = {pycode, pyid, payload};
        result = PyObject_Vectorcall(c->dispatch, args, 3, NULL);
    }
    Py_XDECREF(pycode);
    Py_XDECREF(pyid);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* Route one complete frame: channel data to its native queue if it takes
 * it, everything else to Python. item, if given, already holds the
 * payload (ownership passes here). Returns 0, or -1 (stop reading; the
 * Python exception is set, GIL held). */
static int
route_frame(reader_state *r, int code, int32_t channelid, const char *payload,
            Py_ssize_t size, xn_item *item)
{
    xn_connection *c = r->conn;
    /* Data is queued undecoded: only what looks well-formed, so that a
     * corrupt payload still ends the connection when it arrives. */
    if (code == MSG_DATA &&
        xn_payload_plausible((const unsigned char *)(item ? xn_item_data(item) : payload),
                             (size_t)size)) {
        int queued = 0;
        pthread_mutex_lock(&c->table_lock);
        xn_queue *q = table_lookup(c, channelid);
        if (q != NULL) {
            if (item == NULL) {
                item = xn_item_new(size);
                if (item != NULL)
                    memcpy(xn_item_data(item), payload, (size_t)size);
            }
            if (item != NULL)
                queued = xn_queue_push(q, item);
        }
        pthread_mutex_unlock(&c->table_lock);
        if (queued)
            return 0;
    }
    take_gil(r);
    PyObject *bytes = PyBytes_FromStringAndSize(item ? xn_item_data(item) : payload, size);
    free(item);
    if (bytes == NULL)
        return -1;
    int rc = call_dispatch(c, code, channelid, bytes);
    Py_DECREF(bytes);
    return rc;
}

/* Make room for at least want more bytes after r->end. Returns 0 or -1. */
static int
reader_room(reader_state *r, Py_ssize_t want)
{
    if (r->start > 0) {
        memmove(r->buf, r->buf + r->start, (size_t)(r->end - r->start));
        r->end -= r->start;
        r->start = 0;
    }
    if (r->capacity - r->end >= want)
        return 0;
    Py_ssize_t cap = r->capacity;
    while (cap - r->end < want)
        cap *= 2;
    char *buf = realloc(r->buf, (size_t)cap);
    if (buf == NULL)
        return -1;
    r->buf = buf;
    r->capacity = cap;
    return 0;
}

/* Build the exception that ends the connection (GIL held): kind 0 = end of
 * file, 1 = OS error, 2 = protocol error. New reference or NULL. */
static PyObject *
make_end_error(xn_connection *c, int kind, int err, const char *text)
{
    xn_state *st = xn_state_of_type(Py_TYPE(c));
    if (st == NULL)
        return NULL;
    switch (kind) {
    case 0:
        return PyObject_CallFunction(PyExc_EOFError, "s", text);
    case 1:
        return PyObject_CallFunction(PyExc_OSError, "is", err, strerror(err));
    default:
        return PyObject_CallFunction(st->LoadError, "s", text);
    }
}

/* The IO thread: read frames until end of file or error, then tell Python
 * with dispatch(-1, 0, exception). */
static void *
reader_main(void *arg)
{
    reader_state r = {.conn = arg, .capacity = READ_CHUNK};
    xn_connection *c = r.conn;
    int kind = 0, err = 0;
    char text[160] = "couldn't load message header, expected 9 bytes, got 0";

    r.buf = malloc((size_t)r.capacity);
    if (r.buf == NULL) {
        kind = 1;
        err = ENOMEM;
        goto end;
    }
    for (;;) {
        /* complete frames first */
        while (r.end - r.start >= HEADER_SIZE) {
            const char *h = r.buf + r.start;
            int code = (signed char)h[0];
            int32_t channelid = xn_get_i32((const unsigned char *)h + 1);
            int32_t size = xn_get_i32((const unsigned char *)h + 5);
            if (size < 0 || code < 0 || code > MSG_MAX) {
                kind = 2;
                if (size < 0)
                    snprintf(text, sizeof(text),
                             "invalid message: negative length %d (channel %d)", (int)size,
                             (int)channelid);
                else
                    snprintf(text, sizeof(text),
                             "invalid message: unknown message code %d (channel %d)", code,
                             (int)channelid);
                goto end;
            }
            Py_ssize_t have = r.end - r.start - HEADER_SIZE;
            if (have >= size) {
                r.start += HEADER_SIZE + size;
                if (route_frame(&r, code, channelid, h + HEADER_SIZE, size, NULL) < 0)
                    goto python_error;
                continue;
            }
            if (size < DIRECT_PAYLOAD)
                break; /* wait for the rest in the buffer */
            /* a big payload: read the rest straight into its item */
            xn_item *item = xn_item_new(size);
            if (item == NULL) {
                kind = 1;
                err = ENOMEM;
                goto end;
            }
            memcpy(xn_item_data(item), h + HEADER_SIZE, (size_t)have);
            r.start = r.end = 0;
            drop_gil(&r);
            Py_ssize_t got = read_fully(c->rfd, xn_item_data(item) + have, size - have, &err);
            if (got < size - have) {
                free(item);
                if (got < 0) {
                    kind = 1;
                }
                else {
                    snprintf(text, sizeof(text), "expected %d bytes, got %zd", (int)size,
                             have + got);
                }
                goto end;
            }
            if (route_frame(&r, code, channelid, NULL, size, item) < 0)
                goto python_error;
        }
        /* then more bytes */
        Py_ssize_t partial = r.end - r.start;
        Py_ssize_t need = HEADER_SIZE;
        if (partial >= HEADER_SIZE)
            need = HEADER_SIZE + xn_get_i32((const unsigned char *)r.buf + r.start + 5);
        if (reader_room(&r, need > READ_CHUNK ? need - partial : READ_CHUNK / 2) < 0) {
            kind = 1;
            err = ENOMEM;
            goto end;
        }
        drop_gil(&r);
        ssize_t n;
        do {
            n = read(c->rfd, r.buf + r.end, (size_t)(r.capacity - r.end));
        } while (n < 0 && errno == EINTR);
        if (n < 0) {
            kind = 1;
            err = errno;
            goto end;
        }
        if (n == 0) {
            if (partial < HEADER_SIZE)
                snprintf(text, sizeof(text),
                         "couldn't load message header, expected 9 bytes, got %zd", partial);
            else
                snprintf(text, sizeof(text), "expected %zd bytes, got %zd",
                         need - HEADER_SIZE, partial - HEADER_SIZE);
            goto end;
        }
        r.end += n;
    }

python_error:
    /* the dispatcher raised (GIL held): that exception ends the connection */
    {
        PyObject *exc = xn_fetch_exception();
        free(r.buf);
        r.buf = NULL;
        if (call_dispatch(c, CODE_END, 0, exc ? exc : Py_None) < 0)
            PyErr_WriteUnraisable(c->dispatch);
        Py_XDECREF(exc);
        goto finish;
    }
end:
    free(r.buf);
    r.buf = NULL;
    take_gil(&r);
    {
        PyObject *exc = make_end_error(c, kind, err, text);
        if (exc == NULL || call_dispatch(c, CODE_END, 0, exc) < 0)
            PyErr_WriteUnraisable(c->dispatch);
        Py_XDECREF(exc);
    }
finish:
    /* GIL held here */
    c->reader_running = 0;
    if (c->rfd >= 0) {
        close(c->rfd);
        c->rfd = -1;
    }
    Py_DECREF(c);
    drop_gil(&r);
    return NULL;
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
    int rc = pthread_create(&tid, &attr, reader_main, c);
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
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "queue() takes 2 arguments (channelid, endmarker)");
        return NULL;
    }
    long id = PyLong_AsLong(args[0]);
    if (id == -1 && PyErr_Occurred())
        return NULL;
    if (id < INT32_MIN || id > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "channel id out of range");
        return NULL;
    }
    xn_state *st = xn_state_of_type(Py_TYPE(c));
    if (st == NULL)
        return NULL;
    PyObject *kwargs = NULL;
    PyObject *targs = PyTuple_Pack(1, args[1]);
    if (targs == NULL)
        return NULL;
    xn_queue *q = (xn_queue *)PyObject_Call((PyObject *)st->ItemQueueType, targs, kwargs);
    Py_DECREF(targs);
    if (q == NULL)
        return NULL;
    q->channelid = (int32_t)id;
    q->connection = Py_NewRef((PyObject *)c);
    pthread_mutex_lock(&c->table_lock);
    int rc = table_insert(c, (int32_t)id, q);
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
    if (id == -1 && PyErr_Occurred())
        return NULL;
    if (id >= INT32_MIN && id <= INT32_MAX) {
        pthread_mutex_lock(&c->table_lock);
        table_remove(c, (int32_t)id, NULL);
        pthread_mutex_unlock(&c->table_lock);
    }
    Py_RETURN_NONE;
}

static PyObject *
conn_is_reading(xn_connection *c, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(c->reader_running);
}

/* Connection(rfd, wfd, dispatch): takes ownership of both descriptors. */
static PyObject *
conn_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"rfd", "wfd", "dispatch", NULL};
    int rfd, wfd;
    PyObject *dispatch;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iiO:Connection", kwlist, &rfd, &wfd,
                                     &dispatch))
        return NULL;
    if (!PyCallable_Check(dispatch)) {
        PyErr_SetString(PyExc_TypeError, "dispatch must be callable");
        return NULL;
    }
    xn_connection *c = (xn_connection *)type->tp_alloc(type, 0);
    if (c == NULL)
        return NULL;
    c->rfd = c->wfd = -1;
    if (pthread_mutex_init(&c->table_lock, NULL) != 0 ||
        pthread_mutex_init(&c->write_lock, NULL) != 0) {
        Py_DECREF(c);
        PyErr_SetString(PyExc_OSError, "cannot create connection locks");
        return NULL;
    }
    c->locks_ready = 1;
    c->rfd = rfd;
    c->wfd = wfd;
#ifdef F_SETPIPE_SZ
    /* Bigger pipes (where they are pipes) mean fewer wakeups for bulk data;
     * refusals (sockets, limits) leave things as they are. */
    (void)fcntl(rfd, F_SETPIPE_SZ, PIPE_SIZE);
    (void)fcntl(wfd, F_SETPIPE_SZ, PIPE_SIZE);
#endif
    c->dispatch = Py_NewRef(dispatch);
    return (PyObject *)c;
}

static int
conn_traverse(xn_connection *c, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(c));
    Py_VISIT(c->dispatch);
    return 0;
}

static int
conn_clear(xn_connection *c)
{
    Py_CLEAR(c->dispatch);
    return 0;
}

static void
conn_dealloc(xn_connection *c)
{
    PyTypeObject *tp = Py_TYPE(c);
    PyObject_GC_UnTrack(c);
    conn_clear(c);
    /* the IO thread holds a reference while it runs: it is done here */
    if (c->rfd >= 0)
        close(c->rfd);
    if (c->wfd >= 0)
        close(c->wfd);
    buffer_free(&c->pending);
    free(c->slots);
    if (c->locks_ready) {
        pthread_mutex_destroy(&c->table_lock);
        pthread_mutex_destroy(&c->write_lock);
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
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef conn_getset[] = {
    {"reading", (getter)conn_is_reading, NULL, "True while the IO thread runs", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot conn_slots[] = {
    {Py_tp_new, conn_new},
    {Py_tp_dealloc, conn_dealloc},
    {Py_tp_traverse, conn_traverse},
    {Py_tp_clear, conn_clear},
    {Py_tp_methods, conn_methods},
    {Py_tp_getset, conn_getset},
    {Py_tp_doc, "Connection(rfd, wfd, dispatch): frames over two file descriptors"},
    {0, NULL},
};

PyType_Spec xn_connection_spec = {
    .name = "execnet._execnet.Connection",
    .basicsize = sizeof(xn_connection),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = conn_slots,
};
