/* io.c: a gateway's connection (type Connection): framed writes without the GIL
 * and one IO thread reading frames, queueing channel data natively, the rest to Python. */

#include "execnet.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define HEADER_SIZE 9
#define READ_CHUNK (256 * 1024)
#define MSG_DATA 4
#define MSG_MAX 7
#define CODE_END (-1)
/* The IO thread checks this often (at first) whether getters still read. */
#define PARK_NS 1000000LL
#define PARK_MAX_NS 50000000LL
#define DEFAULT_SPIN_US 50
#define SPIN_FAILURES 4
#define SPIN_PAUSE 64
#define SPIN_PROBE 8
/* A pumping thread looks at signals this often. */
#define PUMP_SLICE_NS 50000000LL
enum { END_EOF, END_OS, END_PROTOCOL };
#define PIPE_SIZE (1024 * 1024)
/* Sends closer together than this are batched, up to BATCH_BYTES, from the
 * STREAM_AFTER-th such send on: a pair or two of sends (a result and a
 * status, say) goes out at once, without waking the flusher thread. */
#define STREAM_NS 10000LL
#define STREAM_AFTER 3
#define BATCH_BYTES (64 * 1024)
/* Messages this big go to a pipe through splice.c. */
#define SPLICE_MIN_BYTES (128 * 1024)
/* A big frame's item has room for this much of its payload at first and
 * grows as the rest arrives: a bogus length allocates no more. */
#define BIG_FIRST_BYTES (16 * 1024 * 1024)

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

/* Write all count pieces to c's wfd (GIL released, the writing thread),
 * with as few calls as the system allows. Returns 0, or an errno value. */
static int
write_pieces(xn_connection *c, const xn_piece *pieces, Py_ssize_t count)
{
    struct iovec iov[64];
    int fd = c->wfd;
    Py_ssize_t next = 0;   /* the first piece not fully written */
    Py_ssize_t offset = 0; /* bytes of it already written */
    if (c->wfd_is_pipe) {
        Py_ssize_t total = 0;
        for (Py_ssize_t i = 0; i < count; i++)
            total += pieces[i].size;
        if (total >= SPLICE_MIN_BYTES) {
            int err = xn_splice_write(&c->ring, fd, pieces, count, &next, &offset);
            if (err != 0)
                return err;
        }
    }
    while (next < count) {
        int n = 0;
        for (Py_ssize_t i = next; i < count && n < 64; i++, n++) {
            Py_ssize_t skip = i == next ? offset : 0;
            iov[n].iov_base = (void *)(pieces[i].data + skip);
            iov[n].iov_len = (size_t)(pieces[i].size - skip);
        }
        ssize_t written = writev(fd, iov, n);
        if (written < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        /* advance past what went out */
        while (next < count && written >= pieces[next].size - offset) {
            written -= pieces[next].size - offset;
            next++;
            offset = 0;
        }
        offset += written;
    }
    return 0;
}

/* Write what others appended to unwritten while this thread writes, then
 * stop being the writer (write_lock not held, no GIL). err is the result
 * of this thread's own write so far. Returns the final error (0: none). */
static int
finish_writing(xn_connection *c, int err)
{
    xn_buffer spare = {0};
    pthread_mutex_lock(&c->write_lock);
    while (err == 0 && c->unwritten.size > 0) {
        xn_buffer batch = c->unwritten;
        c->unwritten = spare;
        pthread_mutex_unlock(&c->write_lock);
        xn_piece piece = {batch.data, batch.size};
        err = write_pieces(c, &piece, 1);
        batch.size = 0;
        spare = batch;
        pthread_mutex_lock(&c->write_lock);
    }
    if (err != 0) {
        c->write_failed = 1;
        c->unwritten.size = 0;
    }
    c->writing = 0;
    if (c->write_closed && c->wfd >= 0) {
        close(c->wfd);
        c->wfd = -1;
    }
    pthread_mutex_unlock(&c->write_lock);
    buffer_free(&spare);
    return err;
}

/* The flusher thread: writes what streaming senders batched, soon after
 * they batched it. Touches no Python object. */
static void *
flusher_main(void *arg)
{
    xn_connection *c = arg;
    pthread_mutex_lock(&c->write_lock);
    while (!c->flusher_stop) {
        if (c->unwritten.size > 0 && !c->writing) {
            c->writing = 1;
            pthread_mutex_unlock(&c->write_lock);
            finish_writing(c, 0);
            pthread_mutex_lock(&c->write_lock);
            continue;
        }
        c->flusher_idle = 1;
        pthread_cond_wait(&c->flush_cond, &c->write_lock);
        c->flusher_idle = 0;
    }
    pthread_mutex_unlock(&c->write_lock);
    return NULL;
}

/* Returns 1 if the flusher thread runs (started now if need be), else 0
 * (write_lock held). */
static int
have_flusher(xn_connection *c)
{
    if (!c->flusher_started && pthread_create(&c->flusher, NULL, flusher_main, c) == 0)
        c->flusher_started = 1;
    return c->flusher_started;
}

/* Write what streaming senders batched now, unless another thread is
 * writing (and so will). Called before a thread waits for data, so that
 * a request is never kept back from the peer whose answer it awaits.
 * No GIL needed. */
void
xn_connection_flush(xn_connection *c)
{
    pthread_mutex_lock(&c->write_lock);
    if (c->writing || c->unwritten.size == 0 || c->write_failed || c->write_closed) {
        pthread_mutex_unlock(&c->write_lock);
        return;
    }
    c->writing = 1;
    pthread_mutex_unlock(&c->write_lock);
    finish_writing(c, 0);
}

/* Hand one complete message (count pieces) to the connection, so that
 * messages never interleave: written at once, or appended for the thread
 * that is writing, or, when sends follow each other closely, batched for
 * the flusher thread (one write for many messages). Returns 0, or -1 with
 * an exception set. */
static int
write_message(void *ctx, const xn_piece *pieces, Py_ssize_t count)
{
    xn_connection *c = ctx;
    int err = 0;
    pthread_mutex_lock(&c->write_lock);
    if (c->write_failed || c->write_closed) {
        pthread_mutex_unlock(&c->write_lock);
        goto failed;
    }
    /* a send that closely follows another with no receive between them:
     * a stream (a receive in between: a conversation, written at once).
     * Only channel data streams: other messages (a close that ends a
     * task's output, say) go out at once, with what was batched before. */
    int64_t now = xn_monotonic_ns();
    int is_data = count > 0 && pieces[0].size > 0 && pieces[0].data[0] == MSG_DATA;
    int close = is_data && now - c->last_send_ns < STREAM_NS &&
                __atomic_load_n(&c->last_get_ns, __ATOMIC_RELAXED) < c->last_send_ns;
    c->close_sends = close ? c->close_sends + 1 : 0;
    int streaming = c->close_sends >= STREAM_AFTER;
    c->last_send_ns = now;
    if (c->writing || (streaming && c->unwritten.size < BATCH_BYTES && have_flusher(c))) {
        Py_ssize_t before = c->unwritten.size;
        int ok = 1;
        for (Py_ssize_t i = 0; i < count && ok; i++)
            ok = buffer_append(&c->unwritten, pieces[i].data, pieces[i].size) == 0;
        if (!ok)
            c->unwritten.size = before; /* no partial message */
        else if (!c->writing && c->flusher_idle)
            pthread_cond_signal(&c->flush_cond);
        pthread_mutex_unlock(&c->write_lock);
        if (!ok) {
            PyErr_NoMemory();
            return -1;
        }
        return 0;
    }
    c->writing = 1;
    xn_buffer earlier = c->unwritten; /* batched before us: goes first */
    c->unwritten = (xn_buffer){0};
    pthread_mutex_unlock(&c->write_lock);

    Py_BEGIN_ALLOW_THREADS
    if (earlier.size > 0) {
        xn_piece piece = {earlier.data, earlier.size};
        err = write_pieces(c, &piece, 1);
    }
    if (err == 0)
        err = write_pieces(c, pieces, count);
    err = finish_writing(c, err);
    Py_END_ALLOW_THREADS
    buffer_free(&earlier);
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
    if (xn_write_message(st, args[2], code, channelid, write_message, c) < 0)
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
    xn_piece piece = {buf.data, buf.size};
    if (write_message(c, &piece, 1) == 0)
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
    Py_BEGIN_ALLOW_THREADS
    xn_connection_flush(c); /* what was batched goes first */
    pthread_mutex_lock(&c->write_lock);
    c->write_closed = 1;
    if (!c->writing && c->wfd >= 0) {
        close(c->wfd);
        c->wfd = -1;
    }
    pthread_mutex_unlock(&c->write_lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ */
/* reading                                                             */
/*                                                                      */
/* Whoever holds read_lock reads rfd and parses rbuf: the IO thread, or  */
/* a thread waiting in get() on one of this connection's queues (so that */
/* a reply reaches its receiver without a second thread's wakeup). A     */
/* getter queues channel data only; at the first frame that needs Python */
/* it stops and hands over to the IO thread, which keeps message order.  */

enum { PARSE_MORE, PARSE_HANDOFF, PARSE_END, PARSE_PYERR };

/* The IO thread's hold on the GIL. */
typedef struct {
    PyThreadState *tstate;
    int held;
} gil_hold;

static void
take_gil(gil_hold *g)
{
    if (!g->held) {
        PyEval_RestoreThread(g->tstate);
        g->held = 1;
    }
}

static void
drop_gil(gil_hold *g)
{
    if (g->held) {
        g->tstate = PyEval_SaveThread();
        g->held = 0;
    }
}

/* Record why reading ended (any thread; the IO thread reports it). */
static void
set_end(xn_connection *c, int kind, int err, const char *text)
{
    pthread_mutex_lock(&c->state_lock);
    if (!c->read_ended) {
        c->read_ended = 1;
        c->end_kind = kind;
        c->end_err = err;
        snprintf(c->end_text, sizeof(c->end_text), "%s", text);
    }
    pthread_mutex_unlock(&c->state_lock);
}

/* Read exactly size bytes into dst. Returns the count read: less than
 * size at end of file; -1 with *err set on error. */
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

/* Queue channel data natively if its channel takes it: data that looks
 * well-formed, for a channel with a queue that is not passing items on.
 * item, if given, holds the payload; ownership passes on success.
 * Returns 1 if queued. No GIL needed. */
static int
try_native(xn_connection *c, int code, int32_t channelid, const char *payload,
           Py_ssize_t size, xn_item *item)
{
    if (code != MSG_DATA)
        return 0;
    const char *data = item ? xn_item_data(item) : payload;
    if (!xn_payload_plausible((const unsigned char *)data, (size_t)size))
        return 0;
    int queued = 0;
    pthread_mutex_lock(&c->table_lock);
    xn_queue *q = table_lookup(c, channelid);
    if (q != NULL) {
        xn_item *copy = item;
        if (copy == NULL) {
            copy = xn_item_new(size);
            if (copy != NULL)
                memcpy(xn_item_data(copy), payload, (size_t)size);
        }
        if (copy != NULL) {
            queued = xn_queue_push(q, copy);
            if (!queued && copy != item)
                free(copy);
        }
    }
    pthread_mutex_unlock(&c->table_lock);
    return queued;
}

/* Call the Python dispatcher (GIL held). Returns 0, or -1 if it raised:
 * the exception stays set. */
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

/* Note that a frame went to Python, for pumpers waiting for one. */
static void
count_dispatch(xn_connection *c)
{
    pthread_mutex_lock(&c->state_lock);
    c->dispatched++;
    if (c->pumpers > 0)
        pthread_cond_broadcast(&c->get_cond);
    pthread_mutex_unlock(&c->state_lock);
}

/* Hand one frame to Python (IO thread). Returns 0, or -1 with the
 * dispatcher's exception set (GIL held). */
static int
dispatch_frame(xn_connection *c, gil_hold *g, int code, int32_t channelid, const char *data,
               Py_ssize_t size)
{
    take_gil(g);
    PyObject *bytes = PyBytes_FromStringAndSize(data, size);
    if (bytes == NULL)
        return -1;
    int rc = call_dispatch(c, code, channelid, bytes);
    Py_DECREF(bytes);
    count_dispatch(c);
    return rc;
}

/* A reading thread other than the IO thread (a getter) handles a frame
 * needing Python itself, if the inline dispatcher takes it: one thread's
 * wakeup less (read_lock held, no GIL). Returns 1 if handled, 0 if it is
 * the IO thread's, -1 if the dispatcher raised: that ends reading, and the
 * IO thread reports the exception. */
static int
dispatch_inline(xn_connection *c, int code, int32_t channelid, const char *data,
                Py_ssize_t size)
{
    if (c->inline_dispatch == NULL || xn_is_finalizing())
        return 0;
    PyGILState_STATE gstate = PyGILState_Ensure();
    int handled = 0;
    PyObject *fn = c->inline_dispatch;
    PyObject *pycode = PyLong_FromLong(code);
    PyObject *pyid = PyLong_FromLong(channelid);
    PyObject *payload = PyBytes_FromStringAndSize(data, size);
    if (fn != NULL && pycode != NULL && pyid != NULL && payload != NULL) {
        PyObject *args[3] = {pycode, pyid, payload};
        PyObject *result = PyObject_Vectorcall(fn, args, 3, NULL);
        handled = result == NULL ? -1 : PyObject_IsTrue(result);
        Py_XDECREF(result);
    }
    else if (fn != NULL)
        handled = -1;
    Py_XDECREF(pycode);
    Py_XDECREF(pyid);
    Py_XDECREF(payload);
    if (handled < 0) {
        PyObject *exc = xn_fetch_exception();
        pthread_mutex_lock(&c->state_lock);
        if (c->inline_error == NULL && !c->read_ended)
            c->inline_error = exc;
        else
            Py_XSETREF(exc, NULL);
        pthread_mutex_unlock(&c->state_lock);
        set_end(c, END_PROTOCOL, 0, "the inline dispatcher failed");
    }
    PyGILState_Release(gstate);
    if (handled != 0)
        count_dispatch(c);
    return handled;
}

/* Returns an item for a big payload of size bytes, have of which are
 * there: the spare one if it suits, else a new one with room for the first
 * BIG_FIRST_BYTES (or the have) of them, which read_big_payload() grows as
 * more come; NULL if out of memory. */
static xn_item *
big_item(xn_connection *c, Py_ssize_t size, Py_ssize_t have)
{
    pthread_mutex_lock(&c->state_lock);
    xn_item *item = xn_item_reuse(c->spare, size);
    if (item != NULL)
        c->spare = NULL;
    pthread_mutex_unlock(&c->state_lock);
    if (item != NULL)
        return item;
    Py_ssize_t first = size < BIG_FIRST_BYTES ? size : BIG_FIRST_BYTES;
    return xn_item_new(first > have ? first : have);
}

/* Reads the rest of a big payload of size bytes, the first have of which
 * are in *item, growing the item (it may move) as the bytes come (no GIL).
 * Returns the count read: less than size - have at end of file; -1 with
 * *err set on error (ENOMEM: the item could not grow). */
static Py_ssize_t
read_big_payload(int fd, xn_item **item, Py_ssize_t have, Py_ssize_t size, int *err)
{
    Py_ssize_t done = have;
    while (done < size) {
        Py_ssize_t room = xn_item_capacity(*item);
        if (room > size)
            room = size; /* the spare item, bigger */
        if (room == done) {
            room = room < size / 2 ? room * 2 : size;
            xn_item *bigger = xn_item_grow(*item, room);
            if (bigger == NULL) {
                *err = ENOMEM;
                return -1;
            }
            *item = bigger;
        }
        Py_ssize_t got = read_fully(fd, xn_item_data(*item) + done, room - done, err);
        if (got < 0)
            return -1;
        done += got;
        if (done < room)
            break; /* end of file */
    }
    return done - have;
}

void
xn_connection_recycle(xn_connection *c, xn_item *item)
{
    if (xn_item_capacity(item) >= XN_DIRECT_PAYLOAD) {
        pthread_mutex_lock(&c->state_lock);
        xn_item *spare = c->spare;
        if (spare == NULL || xn_item_capacity(spare) < xn_item_capacity(item)) {
            c->spare = item; /* keep the bigger one */
            item = spare;
        }
        pthread_mutex_unlock(&c->state_lock);
    }
    free(item);
}

/* Returns the spare bytes object if it has n bytes (taken from c), else NULL. */
static PyObject *
take_spare_bytes(xn_connection *c, Py_ssize_t n)
{
    pthread_mutex_lock(&c->state_lock);
    PyObject *bytes = c->spare_bytes;
    if (bytes != NULL && PyBytes_GET_SIZE(bytes) == n)
        c->spare_bytes = NULL;
    else
        bytes = NULL;
    pthread_mutex_unlock(&c->state_lock);
    return bytes;
}

/* Drops a reference without holding the GIL yet (g: the IO thread's
 * hold, which keeps the GIL; NULL: a getter's thread). */
static void
release_object(xn_connection *c, gil_hold *g, PyObject *obj)
{
    (void)c;
    if (xn_is_finalizing())
        return; /* the process ends: left as it is */
    if (g != NULL) {
        take_gil(g);
        Py_DECREF(obj);
        return;
    }
    PyGILState_STATE gstate = PyGILState_Ensure();
    Py_DECREF(obj);
    PyGILState_Release(gstate);
}

/* Puts back a spare bytes object that was not used after all. */
static void
return_spare_bytes(xn_connection *c, gil_hold *g, PyObject *bytes)
{
    pthread_mutex_lock(&c->state_lock);
    if (c->spare_bytes == NULL) {
        c->spare_bytes = bytes;
        bytes = NULL;
    }
    pthread_mutex_unlock(&c->state_lock);
    if (bytes != NULL)
        release_object(c, g, bytes);
}

void
xn_connection_expect_bytes(xn_connection *c, Py_ssize_t n)
{
    pthread_mutex_lock(&c->state_lock);
    int ready = c->read_ended ||
                (c->spare_bytes != NULL && PyBytes_GET_SIZE(c->spare_bytes) == n);
    pthread_mutex_unlock(&c->state_lock);
    if (ready)
        return;
    PyObject *fresh = PyBytes_FromStringAndSize(NULL, n);
    if (fresh == NULL) {
        PyErr_Clear(); /* the next such frame is copied once more, that is all */
        return;
    }
    pthread_mutex_lock(&c->state_lock);
    PyObject *old = c->spare_bytes;
    c->spare_bytes = fresh;
    pthread_mutex_unlock(&c->state_lock);
    Py_XDECREF(old);
}

/* Queues bytes, a decoded item, for channelid. Returns 1 if queued (the
 * queue owns it now), else 0. No GIL needed. */
static int
queue_decoded(xn_connection *c, int32_t channelid, PyObject *bytes)
{
    int queued = 0;
    pthread_mutex_lock(&c->table_lock);
    xn_queue *q = table_lookup(c, channelid);
    if (q != NULL) {
        xn_item *item = xn_item_of_value(bytes);
        if (item != NULL) {
            queued = xn_queue_push(q, item);
            if (!queued)
                free(item); /* its value was not its own yet */
        }
    }
    pthread_mutex_unlock(&c->table_lock);
    return queued;
}

/* Reads the rest of a big frame holding one byte string of size - 6 bytes
 * (have bytes of its payload are at payload) straight into bytes, and
 * queues it (no GIL). Returns 1 if queued; 0 if it was read but is not
 * for a queue (or is malformed): *item is then the frame as an ordinary
 * item; -1 at the end of the stream or out of memory (set_end done). */
static int
read_lone_bytes(xn_connection *c, gil_hold *g, int32_t channelid, const char *payload,
                Py_ssize_t have, int32_t size, PyObject *bytes, xn_item **item)
{
    char *dst = PyBytes_AS_STRING(bytes);
    Py_ssize_t n = size - 6, have_data = have - 5; /* have < size: no stop byte yet */
    memcpy(dst, payload + 5, (size_t)have_data);
    c->rstart = c->rend = 0;
    if (g != NULL)
        drop_gil(g);
    int err = 0;
    char stop = 0;
    Py_ssize_t got = read_fully(c->rfd, dst + have_data, n - have_data, &err);
    if (got == n - have_data)
        got += read_fully(c->rfd, &stop, 1, &err);
    if (got < n - have_data + 1) {
        return_spare_bytes(c, g, bytes);
        char text[160];
        snprintf(text, sizeof(text), "expected %d bytes, got %zd", (int)size,
                 have + (got > 0 ? got : 0));
        set_end(c, got < 0 ? END_OS : END_EOF, err, text);
        return -1;
    }
    if (stop == 'Q' && queue_decoded(c, channelid, bytes))
        return 1;
    *item = xn_item_new(size);
    if (*item != NULL) {
        char *out = xn_item_data(*item);
        memcpy(out, payload, 5);
        memcpy(out + 5, dst, (size_t)n);
        out[size - 1] = stop;
    }
    return_spare_bytes(c, g, bytes);
    if (*item == NULL) {
        set_end(c, END_OS, ENOMEM, "");
        return -1;
    }
    return 0;
}

/* Process the complete frames buffered in c (read_lock held). g is the IO
 * thread's GIL hold, or NULL for a getter, which stops at frames needing
 * Python. Returns PARSE_MORE (c->need: bytes wanted in the buffer),
 * PARSE_HANDOFF (getter: the IO thread's turn), PARSE_END (set_end done)
 * or PARSE_PYERR (IO thread: the dispatcher raised, GIL held). */
static int
parse_frames(xn_connection *c, gil_hold *g)
{
    if (c->pending != NULL) {
        /* a big frame that a getter read and could not queue */
        xn_item *item = c->pending;
        int rc;
        if (g == NULL) {
            rc = dispatch_inline(c, c->pending_code, c->pending_id, xn_item_data(item),
                                 c->pending_size);
            if (rc == 0)
                return PARSE_HANDOFF;
        }
        else
            rc = dispatch_frame(c, g, c->pending_code, c->pending_id, xn_item_data(item),
                                c->pending_size);
        c->pending = NULL;
        free(item);
        if (rc < 0)
            return g == NULL ? PARSE_END : PARSE_PYERR;
    }
    for (;;) {
        Py_ssize_t avail = c->rend - c->rstart;
        if (avail < HEADER_SIZE) {
            c->need = HEADER_SIZE;
            return PARSE_MORE;
        }
        const unsigned char *h = (const unsigned char *)c->rbuf + c->rstart;
        int code = (signed char)h[0];
        int32_t channelid = xn_get_i32(h + 1);
        int32_t size = xn_get_i32(h + 5);
        if (size < 0 || code < 0 || code > MSG_MAX) {
            char text[160];
            if (size < 0)
                snprintf(text, sizeof(text), "invalid message: negative length %d (channel %d)",
                         (int)size, (int)channelid);
            else
                snprintf(text, sizeof(text),
                         "invalid message: unknown message code %d (channel %d)", code,
                         (int)channelid);
            set_end(c, END_PROTOCOL, 0, text);
            return PARSE_END;
        }
        const char *payload = (const char *)h + HEADER_SIZE;
        Py_ssize_t have = avail - HEADER_SIZE;
        if (have >= size) {
            if (try_native(c, code, channelid, payload, size, NULL)) {
                c->rstart += HEADER_SIZE + size;
                continue;
            }
            if (g == NULL) {
                int rc = dispatch_inline(c, code, channelid, payload, size);
                if (rc == 0)
                    return PARSE_HANDOFF; /* left in the buffer */
                c->rstart += HEADER_SIZE + size;
                if (rc < 0)
                    return PARSE_END;
                continue;
            }
            c->rstart += HEADER_SIZE + size;
            if (dispatch_frame(c, g, code, channelid, payload, size) < 0)
                return PARSE_PYERR;
            continue;
        }
        if (size < XN_DIRECT_PAYLOAD) {
            c->need = HEADER_SIZE + size;
            return PARSE_MORE;
        }
        /* a big payload: read the rest straight into its item, or, for one
         * byte string of the size of the spare bytes object, into that */
        xn_item *item = NULL;
        int queued;
        PyObject *bytes = NULL;
        if (code == MSG_DATA && have >= 5 && payload[0] == 'A' &&
            xn_get_i32((const unsigned char *)payload + 1) == size - 6)
            bytes = take_spare_bytes(c, size - 6);
        if (bytes != NULL) {
            queued = read_lone_bytes(c, g, channelid, payload, have, size, bytes, &item);
            if (queued < 0)
                return PARSE_END;
        }
        else {
            item = big_item(c, size, have);
            if (item == NULL) {
                set_end(c, END_OS, ENOMEM, "");
                return PARSE_END;
            }
            memcpy(xn_item_data(item), payload, (size_t)have);
            c->rstart = c->rend = 0;
            if (g != NULL)
                drop_gil(g);
            int err = 0;
            Py_ssize_t got = read_big_payload(c->rfd, &item, have, size, &err);
            if (got < size - have) {
                free(item);
                char text[160];
                snprintf(text, sizeof(text), "expected %d bytes, got %zd", (int)size,
                         have + (got > 0 ? got : 0));
                set_end(c, got < 0 ? END_OS : END_EOF, err, text);
                return PARSE_END;
            }
            queued = try_native(c, code, channelid, NULL, size, item);
        }
        if (queued) {
            if (g == NULL)
                return PARSE_HANDOFF; /* the IO thread reads on while we decode */
            continue;
        }
        if (g == NULL) {
            int rc = dispatch_inline(c, code, channelid, xn_item_data(item), size);
            if (rc != 0) {
                free(item);
                if (rc < 0)
                    return PARSE_END;
                continue;
            }
            c->pending = item;
            c->pending_code = code;
            c->pending_id = channelid;
            c->pending_size = size;
            return PARSE_HANDOFF;
        }
        int rc = dispatch_frame(c, g, code, channelid, xn_item_data(item), size);
        free(item);
        if (rc < 0)
            return PARSE_PYERR;
    }
}

/* Make room in the buffer for what parse_frames wants, plus some.
 * Returns 0, or -1 (no memory). */
static int
make_room(xn_connection *c)
{
    if (c->rstart > 0) {
        memmove(c->rbuf, c->rbuf + c->rstart, (size_t)(c->rend - c->rstart));
        c->rend -= c->rstart;
        c->rstart = 0;
    }
    Py_ssize_t want = c->need - c->rend;
    if (want < READ_CHUNK / 2)
        want = READ_CHUNK / 2;
    if (c->rcap - c->rend >= want)
        return 0;
    Py_ssize_t cap = c->rcap ? c->rcap : READ_CHUNK;
    while (cap - c->rend < want)
        cap *= 2;
    char *buf = realloc(c->rbuf, (size_t)cap);
    if (buf == NULL)
        return -1;
    c->rbuf = buf;
    c->rcap = cap;
    return 0;
}

/* Read once into the buffer (read_lock held, no GIL). Returns 1 if bytes
 * came, 0 at the end (set_end done). */
static int
read_some(xn_connection *c)
{
    if (make_room(c) < 0) {
        set_end(c, END_OS, ENOMEM, "");
        return 0;
    }
    ssize_t n;
    do {
        n = read(c->rfd, c->rbuf + c->rend, (size_t)(c->rcap - c->rend));
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
        c->rend += n;
        return 1;
    }
    char text[160];
    Py_ssize_t partial = c->rend - c->rstart;
    if (partial < HEADER_SIZE)
        snprintf(text, sizeof(text), "couldn't load message header, expected 9 bytes, got %zd",
                 partial);
    else
        snprintf(text, sizeof(text), "expected %zd bytes, got %zd", c->need - HEADER_SIZE,
                 partial - HEADER_SIZE);
    set_end(c, n < 0 ? END_OS : END_EOF, n < 0 ? errno : 0, text);
    return 0;
}

/* How long a receiver looks for a reply before it sleeps: sleeping and
 * waking cost far more (tens of microseconds on virtual machines) than a
 * round trip between two processes that are awake. EXECNET_SPIN_US sets
 * it (0: never); on one CPU there is nobody to wait for. */
static int64_t
spin_setting_ns(void)
{
    const char *env = getenv("EXECNET_SPIN_US");
    long long us = env != NULL ? atoll(env) : DEFAULT_SPIN_US;
    if (us < 0 || us > 1000000 || sysconf(_SC_NPROCESSORS_ONLN) < 2)
        us = 0;
    return (int64_t)us * 1000;
}

/* A reply often follows within microseconds: poll up to spin_ns before
 * sleeping, which costs a wakeup here and a costlier write at the peer.
 * Only while that pays: after SPIN_FAILURES polls in a row found nothing
 * (a slow peer, or busy CPUs where polling takes the peer's time) the next
 * SPIN_PAUSE waits sleep at once, then one polls again. Returns poll's
 * result (read_lock held, no GIL). */
static int
spin_for_data(xn_connection *c, struct pollfd *pfd)
{
    if (c->spin_ns == 0)
        return 0;
    if (c->spin_skips > 0) {
        c->spin_skips--;
        return 0;
    }
    /* The first poll after a pause polls longer: a peer that sleeps too
     * (it paused as well) answers only after its own wakeup, which a short
     * poll never sees, and two sleeping peers would stay paused for good. */
    int probing = c->spin_failures >= SPIN_FAILURES;
    int ready = 0;
    int64_t spin_end = xn_monotonic_ns() + c->spin_ns * (probing ? SPIN_PROBE : 1);
    while (xn_monotonic_ns() < spin_end && (ready = poll(pfd, 1, 0)) == 0)
        ;
    if (ready > 0)
        c->spin_failures = 0;
    else if (probing || ++c->spin_failures >= SPIN_FAILURES)
        c->spin_skips = SPIN_PAUSE;
    return ready;
}

/* A getter's turn at reading (read_lock held, no GIL): parse what is
 * buffered, else wait until deadline_ns for bytes and parse them. */
void
xn_connection_read_for_getter(xn_connection *c, int64_t deadline_ns)
{
    int rc = parse_frames(c, NULL);
    if (rc == PARSE_MORE) {
        struct pollfd pfd = {.fd = c->rfd, .events = POLLIN};
        int ready = poll(&pfd, 1, 0);
        if (ready == 0)
            ready = spin_for_data(c, &pfd);
        int64_t wait_ns = deadline_ns - xn_monotonic_ns();
        int ms = wait_ns <= 0 ? 0 : (int)((wait_ns + 999999) / 1000000);
        if (ready <= 0)
            ready = poll(&pfd, 1, ms);
        if (ready <= 0)
            return; /* nothing yet (or EINTR): the caller tries again */
        if (!read_some(c))
            rc = PARSE_END;
        else
            rc = parse_frames(c, NULL);
    }
    if (rc == PARSE_HANDOFF || rc == PARSE_END) {
        pthread_mutex_lock(&c->state_lock);
        c->handoff = 1;
        pthread_cond_signal(&c->io_cond);
        pthread_mutex_unlock(&c->state_lock);
    }
}

/* A getter stops waiting (state_lock held). Getters that come and go
 * (a loop of receive() calls) leave the IO thread parked: it looks again
 * within 1 ms, and the next getter reads what came meanwhile. After a long
 * wait the IO thread sleeps up to 50 ms at a time: then the last getter to
 * leave wakes it, so that frames nobody waits for (a callback's, a task's
 * while the worker's primary thread runs it) are read at once. */
void
xn_connection_leave_getters(xn_connection *c)
{
    if (--c->getters == 0 && c->io_park_ns > PARK_NS)
        pthread_cond_signal(&c->io_cond);
}

/* Build the exception that ended reading (GIL held). New reference or NULL. */
static PyObject *
make_end_error(xn_connection *c)
{
    xn_state *st = xn_state_of_type(Py_TYPE(c));
    if (st == NULL)
        return NULL;
    switch (c->end_kind) {
    case END_EOF:
        return PyObject_CallFunction(PyExc_EOFError, "s", c->end_text);
    case END_OS:
        return PyObject_CallFunction(PyExc_OSError, "is", c->end_err, strerror(c->end_err));
    default:
        return PyObject_CallFunction(st->LoadError, "s", c->end_text);
    }
}

/* The IO thread: reads and dispatches while no getter does, until the end;
 * then tells Python with dispatch(-1, 0, exception). */
static void *
reader_main(void *arg)
{
    xn_connection *c = arg;
    PyGILState_STATE gstate = PyGILState_Ensure();
    gil_hold g = {.tstate = PyEval_SaveThread(), .held = 0};
    PyObject *exc = NULL;

    for (;;) {
        /* Step aside while getters read for themselves, looking again after
         * 1 ms, 2 ms, ... 50 ms: soon after they stop, rarely while they
         * wait long (a worker waiting for its next command). The last
         * getter to leave wakes this thread once it sleeps longer than the
         * first 1 ms (xn_connection_leave_getters). */
        pthread_mutex_lock(&c->state_lock);
        c->io_park_ns = PARK_NS;
        while (c->getters > 0 && !c->handoff && !c->read_ended) {
            struct timespec ts;
            int64_t until = xn_monotonic_ns() + c->io_park_ns;
            ts.tv_sec = until / 1000000000LL;
            ts.tv_nsec = until % 1000000000LL;
            pthread_cond_timedwait(&c->io_cond, &c->state_lock, &ts);
            if (c->io_park_ns < PARK_MAX_NS)
                c->io_park_ns *= 2;
        }
        c->io_park_ns = 0;
        c->handoff = 0;
        pthread_mutex_unlock(&c->state_lock);

        pthread_mutex_lock(&c->read_lock);
        int rc;
        for (;;) {
            pthread_mutex_lock(&c->state_lock);
            int over = c->read_ended;
            pthread_mutex_unlock(&c->state_lock);
            if (over) {
                rc = PARSE_END;
                break;
            }
            rc = parse_frames(c, &g);
            if (rc != PARSE_MORE)
                break;
            drop_gil(&g);
            pthread_mutex_lock(&c->state_lock);
            int getters = c->getters;
            pthread_mutex_unlock(&c->state_lock);
            if (getters > 0)
                break; /* they read */
            if (!read_some(c)) {
                rc = PARSE_END;
                break;
            }
        }
        drop_gil(&g);
        pthread_mutex_unlock(&c->read_lock);
        pthread_mutex_lock(&c->state_lock);
        pthread_cond_broadcast(&c->get_cond); /* the read role is free */
        pthread_mutex_unlock(&c->state_lock);
        if (rc == PARSE_PYERR) {
            take_gil(&g);
            exc = xn_fetch_exception();
            drop_gil(&g);
            break;
        }
        if (rc == PARSE_END)
            break;
    }
    /* Getters stop reading; the descriptor is closed before Python hears
     * of the end, so that nothing needs the GIL again afterwards (the
     * interpreter may be finalizing by then). */
    pthread_mutex_lock(&c->state_lock);
    c->read_ended = 1;
    pthread_cond_broadcast(&c->get_cond);
    pthread_mutex_unlock(&c->state_lock);
    pthread_mutex_lock(&c->read_lock);
    if (c->rfd >= 0) {
        close(c->rfd);
        c->rfd = -1;
    }
    pthread_mutex_unlock(&c->read_lock);
    if (xn_is_finalizing()) {
        /* Python is going away: nobody is left to tell, and taking the GIL
         * now would end this thread inside CPython. */
        return NULL;
    }
    take_gil(&g);
    if (exc == NULL) {
        pthread_mutex_lock(&c->state_lock);
        exc = c->inline_error;
        c->inline_error = NULL;
        pthread_mutex_unlock(&c->state_lock);
    }
    if (exc == NULL)
        exc = make_end_error(c);
    if (exc == NULL)
        PyErr_WriteUnraisable(c->dispatch);
    else if (call_dispatch(c, CODE_END, 0, exc) < 0)
        PyErr_WriteUnraisable(c->dispatch);
    Py_XDECREF(exc);
    c->reader_running = 0;
    Py_DECREF(c);
    PyGILState_Release(gstate);
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
    xn_queue *q = (xn_queue *)PyObject_CallOneArg((PyObject *)st->ItemQueueType, args[1]);
    if (q == NULL)
        return NULL;
    q->channelid = (int32_t)id;
    q->connection = Py_NewRef((PyObject *)c);
    q->lock = &c->state_lock;
    q->cond = &c->get_cond;
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

enum { PUMP_SLICE, PUMP_DISPATCHED, PUMP_END };

/* Read c until slice_end, handling frames inline, unless a frame went to
 * Python since mark or reading ended (no GIL). Returns a PUMP_ value. */
static int
pump_slice(xn_connection *c, uint64_t mark, int64_t slice_end)
{
    int result = PUMP_SLICE;
    pthread_mutex_lock(&c->state_lock);
    c->getters++;
    c->pumpers++;
    for (;;) {
        if (c->dispatched != mark) {
            result = PUMP_DISPATCHED;
            break;
        }
        if (c->read_ended) {
            result = PUMP_END;
            break;
        }
        if (xn_monotonic_ns() >= slice_end)
            break;
        if (!c->handoff && pthread_mutex_trylock(&c->read_lock) == 0) {
            pthread_mutex_unlock(&c->state_lock);
            xn_connection_read_for_getter(c, slice_end);
            pthread_mutex_unlock(&c->read_lock);
            pthread_mutex_lock(&c->state_lock);
            pthread_cond_broadcast(&c->get_cond); /* the read role is free */
            continue;
        }
        struct timespec ts = {.tv_sec = slice_end / 1000000000LL,
                              .tv_nsec = slice_end % 1000000000LL};
        pthread_cond_timedwait(&c->get_cond, &c->state_lock, &ts);
    }
    c->pumpers--;
    xn_connection_leave_getters(c);
    pthread_mutex_unlock(&c->state_lock);
    return result;
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
    if (xn_parse_args("pump", args, nargs, kwnames, names, 2, 1, params) < 0)
        return NULL;
    unsigned long long mark = PyLong_AsUnsignedLongLong(params[0]);
    if (mark == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    int64_t deadline;
    if (xn_deadline(params[1], &deadline) < 0)
        return NULL;
    for (;;) {
        int64_t slice_end = xn_monotonic_ns() + PUMP_SLICE_NS;
        if (deadline >= 0 && deadline < slice_end)
            slice_end = deadline;
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = pump_slice(c, (uint64_t)mark, slice_end);
        Py_END_ALLOW_THREADS
        if (rc != PUMP_SLICE)
            return PyBool_FromLong(rc == PUMP_DISPATCHED);
        if (PyErr_CheckSignals() < 0)
            return NULL;
        if (deadline >= 0 && xn_monotonic_ns() >= deadline) {
            xn_state *st = xn_state_of_type(Py_TYPE(c));
            if (st != NULL && xn_require_installed(st) == 0)
                PyErr_Format(st->TimeoutError, "nothing handled after %R seconds", params[1]);
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
    if (pthread_condattr_init(&attr) != 0)
        return -1;
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int ok = pthread_mutex_init(&c->table_lock, NULL) == 0;
    ok = ok && pthread_mutex_init(&c->write_lock, NULL) == 0;
    ok = ok && pthread_mutex_init(&c->read_lock, NULL) == 0;
    ok = ok && pthread_mutex_init(&c->state_lock, NULL) == 0;
    ok = ok && pthread_cond_init(&c->get_cond, &attr) == 0;
    ok = ok && pthread_cond_init(&c->io_cond, &attr) == 0;
    ok = ok && pthread_cond_init(&c->flush_cond, NULL) == 0;
    pthread_condattr_destroy(&attr);
    if (!ok)
        return -1; /* (a partial set leaks, on a failure that does not happen) */
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
                                     &dispatch, &inline_dispatch))
        return NULL;
    if (!PyCallable_Check(dispatch) ||
        (inline_dispatch != Py_None && !PyCallable_Check(inline_dispatch))) {
        PyErr_SetString(PyExc_TypeError, "dispatch and inline must be callable");
        return NULL;
    }
    xn_connection *c = (xn_connection *)type->tp_alloc(type, 0);
    if (c == NULL)
        return NULL;
    c->rfd = c->wfd = -1;
    if (init_sync(c) < 0) {
        Py_DECREF(c);
        PyErr_SetString(PyExc_OSError, "cannot create connection locks");
        return NULL;
    }
    c->rfd = rfd;
    c->wfd = wfd;
    struct stat st;
    c->wfd_is_pipe = fstat(wfd, &st) == 0 && S_ISFIFO(st.st_mode);
    c->spin_ns = spin_setting_ns();
#ifdef F_SETPIPE_SZ
    /* Bigger pipes (where they are pipes) mean fewer wakeups for bulk data;
     * refusals (sockets, limits) leave things as they are. */
    (void)fcntl(rfd, F_SETPIPE_SZ, PIPE_SIZE);
    (void)fcntl(wfd, F_SETPIPE_SZ, PIPE_SIZE);
#endif
    c->dispatch = Py_NewRef(dispatch);
    if (inline_dispatch != Py_None)
        c->inline_dispatch = Py_NewRef(inline_dispatch);
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
    /* the IO thread holds a reference while it runs: it is done here; the
     * flusher touches no Python object and is stopped here */
    if (c->flusher_started) {
        pthread_mutex_lock(&c->write_lock);
        c->flusher_stop = 1;
        pthread_cond_signal(&c->flush_cond);
        pthread_mutex_unlock(&c->write_lock);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(c->flusher, NULL);
        Py_END_ALLOW_THREADS
    }
    if (c->rfd >= 0)
        close(c->rfd);
    if (c->wfd >= 0)
        close(c->wfd);
    buffer_free(&c->unwritten);
    xn_splice_ring_free(&c->ring);
    free(c->slots);
    free(c->rbuf);
    free(c->pending);
    free(c->spare);
    Py_CLEAR(c->spare_bytes);
    if (c->locks_ready) {
        pthread_mutex_destroy(&c->table_lock);
        pthread_mutex_destroy(&c->write_lock);
        pthread_mutex_destroy(&c->read_lock);
        pthread_mutex_destroy(&c->state_lock);
        pthread_cond_destroy(&c->get_cond);
        pthread_cond_destroy(&c->io_cond);
        pthread_cond_destroy(&c->flush_cond);
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
