/* reader.c: the reading side of a connection.  Whoever holds read_lock
 * reads rfd and parses the frames: the IO thread (xn_reader_main), or a
 * getter, a thread waiting for items of this connection's queues or
 * pumping (connection.h says who may do what). */

#include "connection.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define READ_CHUNK (256 * 1024)
#define CODE_END (-1)
/* The IO thread checks this often (at first) whether getters still read. */
#define PARK_NS 1000000LL
#define PARK_MAX_NS 50000000LL
#define DEFAULT_SPIN_US 50
#define SPIN_FAILURES 4
#define SPIN_PAUSE 64
#define SPIN_PROBE 8
enum { END_EOF, END_OS, END_PROTOCOL };
/* A big frame's item has room for this much of its payload at first and
 * grows as the rest arrives: a bogus length allocates no more. */
#define BIG_FIRST_BYTES (16 * 1024 * 1024)

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
            if (errno == EINTR) {
                continue;
            }
            *err = errno;
            return -1;
        }
        if (n == 0) {
            break;
        }
        got += n;
    }
    return got;
}

/* Queue channel data natively if its channel takes it: data that looks
 * well-formed, for a channel with a queue that is not passing items on.
 * item, if given, holds the payload; ownership passes on success.
 * Returns 1 if queued. No GIL needed. */
static int
try_native(xn_connection *c, int code, int32_t channelid, const char *payload, Py_ssize_t size,
           xn_item *item)
{
    if (code != XN_MSG_CHANNEL_DATA) {
        return 0;
    }
    const char *data = item ? xn_item_data(item) : payload;
    if (!xn_payload_plausible((const unsigned char *)data, (size_t)size)) {
        return 0;
    }
    int queued = 0;
    pthread_mutex_lock(&c->table_lock);
    xn_queue *q = xn_table_lookup(c, channelid);
    if (q != NULL) {
        xn_item *copy = item;
        if (copy == NULL) {
            copy = xn_item_new(size);
            if (copy != NULL) {
                memcpy(xn_item_data(copy), payload, (size_t)size);
            }
        }
        if (copy != NULL) {
            queued = xn_queue_push(q, copy);
            if (!queued && copy != item) {
                free(copy);
            }
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
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* Note that a frame went to Python, for pumpers waiting for one. */
static void
count_dispatch(xn_connection *c)
{
    pthread_mutex_lock(&c->state_lock);
    c->dispatched++;
    if (c->pumpers > 0) {
        pthread_cond_broadcast(&c->get_cond);
    }
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
    if (bytes == NULL) {
        return -1;
    }
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
dispatch_inline(xn_connection *c, int code, int32_t channelid, const char *data, Py_ssize_t size)
{
    if (c->inline_dispatch == NULL || xn_is_finalizing()) {
        return 0;
    }
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
    else if (fn != NULL) {
        handled = -1;
    }
    Py_XDECREF(pycode);
    Py_XDECREF(pyid);
    Py_XDECREF(payload);
    if (handled < 0) {
        PyObject *exc = xn_fetch_exception();
        pthread_mutex_lock(&c->state_lock);
        if (c->inline_error == NULL && !c->read_ended) {
            c->inline_error = exc;
        }
        else {
            Py_XSETREF(exc, NULL);
        }
        pthread_mutex_unlock(&c->state_lock);
        set_end(c, END_PROTOCOL, 0, "the inline dispatcher failed");
    }
    PyGILState_Release(gstate);
    if (handled != 0) {
        count_dispatch(c);
    }
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
    if (item != NULL) {
        c->spare = NULL;
    }
    pthread_mutex_unlock(&c->state_lock);
    if (item != NULL) {
        return item;
    }
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
        if (room > size) {
            room = size; /* the spare item, bigger */
        }
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
        if (got < 0) {
            return -1;
        }
        done += got;
        if (done < room) {
            break; /* end of file */
        }
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

/* Returns the spare bytes object if it has n bytes (taken from c), else
 * one whose object is NULL. No GIL needed. */
static xn_raw_bytes
take_spare_bytes(xn_connection *c, Py_ssize_t n)
{
    xn_raw_bytes none = {NULL, 0, NULL};
    pthread_mutex_lock(&c->state_lock);
    xn_raw_bytes bytes = c->spare_bytes;
    if (bytes.object != NULL && bytes.size == n) {
        c->spare_bytes = none;
    }
    else {
        bytes = none;
    }
    pthread_mutex_unlock(&c->state_lock);
    return bytes;
}

/* Drops a reference without holding the GIL yet (g: the IO thread's
 * hold, which keeps the GIL; NULL: a getter's thread). */
static void
release_object(xn_connection *c, gil_hold *g, PyObject *obj)
{
    (void)c;
    if (xn_is_finalizing()) {
        return; /* the process ends: left as it is */
    }
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
return_spare_bytes(xn_connection *c, gil_hold *g, xn_raw_bytes bytes)
{
    pthread_mutex_lock(&c->state_lock);
    if (c->spare_bytes.object == NULL) {
        c->spare_bytes = bytes;
        bytes.object = NULL;
    }
    pthread_mutex_unlock(&c->state_lock);
    if (bytes.object != NULL) {
        release_object(c, g, bytes.object);
    }
}

void
xn_connection_expect_bytes(xn_connection *c, Py_ssize_t n)
{
    if (n + XN_LONE_BYTES_EXTRA < XN_DIRECT_PAYLOAD) {
        return; /* not a big frame's (an empty bytes object is shared) */
    }
    pthread_mutex_lock(&c->state_lock);
    int ready = c->read_ended || (c->spare_bytes.object != NULL && c->spare_bytes.size == n);
    pthread_mutex_unlock(&c->state_lock);
    if (ready) {
        return;
    }
    PyObject *fresh = PyBytes_FromStringAndSize(NULL, n);
    if (fresh == NULL) {
        PyErr_Clear(); /* the next such frame is copied once more, that is all */
        return;
    }
    xn_raw_bytes made = {fresh, n, PyBytes_AS_STRING(fresh)};
    pthread_mutex_lock(&c->state_lock);
    PyObject *old = c->spare_bytes.object;
    c->spare_bytes = made;
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
    xn_queue *q = xn_table_lookup(c, channelid);
    if (q != NULL) {
        xn_item *item = xn_item_of_value(bytes);
        if (item != NULL) {
            queued = xn_queue_push(q, item);
            if (!queued) {
                free(item); /* its value was not its own yet */
            }
        }
    }
    pthread_mutex_unlock(&c->table_lock);
    return queued;
}

/* Reads the rest of a big frame holding one byte string of
 * size - XN_LONE_BYTES_EXTRA bytes (have bytes of its payload are at
 * payload) straight into the memory of bytes, and queues it (no GIL). Returns 1 if queued; 0 if it was read but is not
 * for a queue (or is malformed): *item is then the frame as an ordinary
 * item; -1 at the end of the stream or out of memory (set_end done). */
static int
read_lone_bytes(xn_connection *c, gil_hold *g, int32_t channelid, const char *payload,
                Py_ssize_t have, int32_t size, xn_raw_bytes bytes, xn_item **item)
{
    char *dst = bytes.data;
    Py_ssize_t n = size - XN_LONE_BYTES_EXTRA;
    Py_ssize_t have_data = have - 5; /* have < size: no stop byte yet */
    memcpy(dst, payload + 5, (size_t)have_data);
    c->rstart = c->rend = 0;
    if (g != NULL) {
        drop_gil(g);
    }
    int err = 0;
    char stop = 0;
    Py_ssize_t got = read_fully(c->rfd, dst + have_data, n - have_data, &err);
    if (got == n - have_data) {
        got += read_fully(c->rfd, &stop, 1, &err);
    }
    if (got < n - have_data + 1) {
        return_spare_bytes(c, g, bytes);
        char text[160];
        snprintf(text, sizeof(text), "expected %d bytes, got %zd", (int)size,
                 have + (got > 0 ? got : 0));
        set_end(c, got < 0 ? END_OS : END_EOF, err, text);
        return -1;
    }
    if (stop == XN_OP_STOP && queue_decoded(c, channelid, bytes.object)) {
        return 1;
    }
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
            if (rc == 0) {
                return PARSE_HANDOFF;
            }
        }
        else {
            rc = dispatch_frame(c, g, c->pending_code, c->pending_id, xn_item_data(item),
                                c->pending_size);
        }
        c->pending = NULL;
        free(item);
        if (rc < 0) {
            return g == NULL ? PARSE_END : PARSE_PYERR;
        }
    }
    for (;;) {
        Py_ssize_t avail = c->rend - c->rstart;
        if (avail < XN_HEADER_SIZE) {
            c->need = XN_HEADER_SIZE;
            return PARSE_MORE;
        }
        const unsigned char *h = (const unsigned char *)c->rbuf + c->rstart;
        int code = (signed char)h[0];
        int32_t channelid = xn_get_i32(h + 1);
        int32_t size = xn_get_i32(h + 5);
        if (size < 0 || code < 0 || code > XN_MSG_MAX) {
            char text[160];
            if (size < 0) {
                snprintf(text, sizeof(text), "invalid message: negative length %d (channel %d)",
                         (int)size, (int)channelid);
            }
            else {
                snprintf(text, sizeof(text),
                         "invalid message: unknown message code %d (channel %d)", code,
                         (int)channelid);
            }
            set_end(c, END_PROTOCOL, 0, text);
            return PARSE_END;
        }
        const char *payload = (const char *)h + XN_HEADER_SIZE;
        Py_ssize_t have = avail - XN_HEADER_SIZE;
        if (have >= size) {
            if (try_native(c, code, channelid, payload, size, NULL)) {
                c->rstart += XN_HEADER_SIZE + size;
                continue;
            }
            if (g == NULL) {
                int rc = dispatch_inline(c, code, channelid, payload, size);
                if (rc == 0) {
                    return PARSE_HANDOFF; /* left in the buffer */
                }
                c->rstart += XN_HEADER_SIZE + size;
                if (rc < 0) {
                    return PARSE_END;
                }
                continue;
            }
            c->rstart += XN_HEADER_SIZE + size;
            if (dispatch_frame(c, g, code, channelid, payload, size) < 0) {
                return PARSE_PYERR;
            }
            continue;
        }
        if (size < XN_DIRECT_PAYLOAD) {
            c->need = XN_HEADER_SIZE + size;
            return PARSE_MORE;
        }
        /* a big payload: read the rest straight into its item, or, for one
         * byte string of the size of the spare bytes object, into that */
        xn_item *item = NULL;
        int queued;
        xn_raw_bytes bytes = {NULL, 0, NULL};
        if (code == XN_MSG_CHANNEL_DATA && have >= 5 && payload[0] == XN_OP_BYTES &&
            xn_get_i32((const unsigned char *)payload + 1) == size - XN_LONE_BYTES_EXTRA) {
            bytes = take_spare_bytes(c, size - XN_LONE_BYTES_EXTRA);
        }
        if (bytes.object != NULL) {
            queued = read_lone_bytes(c, g, channelid, payload, have, size, bytes, &item);
            if (queued < 0) {
                return PARSE_END;
            }
        }
        else {
            item = big_item(c, size, have);
            if (item == NULL) {
                set_end(c, END_OS, ENOMEM, "");
                return PARSE_END;
            }
            memcpy(xn_item_data(item), payload, (size_t)have);
            c->rstart = c->rend = 0;
            if (g != NULL) {
                drop_gil(g);
            }
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
            if (g == NULL) {
                return PARSE_HANDOFF; /* the IO thread reads on while we decode */
            }
            continue;
        }
        if (g == NULL) {
            int rc = dispatch_inline(c, code, channelid, xn_item_data(item), size);
            if (rc != 0) {
                free(item);
                if (rc < 0) {
                    return PARSE_END;
                }
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
        if (rc < 0) {
            return PARSE_PYERR;
        }
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
    if (want < READ_CHUNK / 2) {
        want = READ_CHUNK / 2;
    }
    return xn_grow(&c->rbuf, &c->rcap, c->rend, want, READ_CHUNK);
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
    if (partial < XN_HEADER_SIZE) {
        snprintf(text, sizeof(text), "couldn't load message header, expected 9 bytes, got %zd",
                 partial);
    }
    else {
        snprintf(text, sizeof(text), "expected %zd bytes, got %zd", c->need - XN_HEADER_SIZE,
                 partial - XN_HEADER_SIZE);
    }
    set_end(c, n < 0 ? END_OS : END_EOF, n < 0 ? errno : 0, text);
    return 0;
}

/* How long a receiver looks for a reply before it sleeps: sleeping and
 * waking cost far more (tens of microseconds on virtual machines) than a
 * round trip between two processes that are awake. EXECNET_SPIN_US sets
 * it (0: never); on one CPU there is nobody to wait for. */
int64_t
xn_spin_setting_ns(void)
{
    const char *env = getenv("EXECNET_SPIN_US");
    long long us = env != NULL ? atoll(env) : DEFAULT_SPIN_US;
    if (us < 0 || us > 1000000 || sysconf(_SC_NPROCESSORS_ONLN) < 2) {
        us = 0;
    }
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
    if (c->spin_ns == 0) {
        return 0;
    }
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
    if (ready > 0) {
        c->spin_failures = 0;
    }
    else if (probing || ++c->spin_failures >= SPIN_FAILURES) {
        c->spin_skips = SPIN_PAUSE;
    }
    return ready;
}

/* A getter's turn at reading (read_lock held, no GIL): parse what is
 * buffered, else wait until deadline_ns for bytes and parse them. */
static void
read_for_getter(xn_connection *c, int64_t deadline_ns)
{
    int rc = parse_frames(c, NULL);
    if (rc == PARSE_MORE) {
        struct pollfd pfd = {.fd = c->rfd, .events = POLLIN};
        int ready = poll(&pfd, 1, 0);
        if (ready == 0) {
            ready = spin_for_data(c, &pfd);
        }
        int64_t wait_ns = deadline_ns - xn_monotonic_ns();
        int ms = wait_ns <= 0 ? 0 : (int)((wait_ns + 999999) / 1000000);
        if (ready <= 0) {
            ready = poll(&pfd, 1, ms);
        }
        if (ready <= 0) {
            return; /* nothing yet (or EINTR): the caller tries again */
        }
        if (!read_some(c)) {
            rc = PARSE_END;
        }
        else {
            rc = parse_frames(c, NULL);
        }
    }
    if (rc == PARSE_HANDOFF || rc == PARSE_END) {
        pthread_mutex_lock(&c->state_lock);
        c->handoff = 1;
        pthread_cond_signal(&c->io_cond);
        pthread_mutex_unlock(&c->state_lock);
    }
}

void
xn_connection_enter_getters(xn_connection *c)
{
    c->getters++;
}

int
xn_connection_read_if_free(xn_connection *c, int64_t deadline_ns)
{
    if (c->handoff || c->read_ended || pthread_mutex_trylock(&c->read_lock) != 0) {
        return 0;
    }
    pthread_mutex_unlock(&c->state_lock);
    read_for_getter(c, deadline_ns);
    pthread_mutex_unlock(&c->read_lock);
    pthread_mutex_lock(&c->state_lock);
    pthread_cond_broadcast(&c->get_cond); /* the read role is free */
    return 1;
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
    if (--c->getters == 0 && c->io_park_ns > PARK_NS) {
        pthread_cond_signal(&c->io_cond);
    }
}

/* Build the exception that ended reading (GIL held). New reference or NULL. */
static PyObject *
make_end_error(xn_connection *c)
{
    xn_state *st = xn_state_of_type(Py_TYPE(c));
    if (st == NULL) {
        return NULL;
    }
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
void *
xn_reader_main(void *arg)
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
            if (c->io_park_ns < PARK_MAX_NS) {
                c->io_park_ns *= 2;
            }
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
            if (rc != PARSE_MORE) {
                break;
            }
            drop_gil(&g);
            pthread_mutex_lock(&c->state_lock);
            int getters = c->getters;
            pthread_mutex_unlock(&c->state_lock);
            if (getters > 0) {
                break; /* they read */
            }
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
        if (rc == PARSE_END) {
            break;
        }
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
    if (exc == NULL) {
        exc = make_end_error(c);
    }
    if (exc == NULL) {
        PyErr_WriteUnraisable(c->dispatch);
    }
    else if (call_dispatch(c, CODE_END, 0, exc) < 0) {
        PyErr_WriteUnraisable(c->dispatch);
    }
    Py_XDECREF(exc);
    c->reader_running = 0;
    Py_DECREF(c);
    PyGILState_Release(gstate);
    return NULL;
}

/* Read c until slice_end, handling frames inline, unless a frame went to
 * Python since mark or reading ended (no GIL). Returns a PUMP_ value. */
int
xn_reader_pump_slice(xn_connection *c, uint64_t mark, int64_t slice_end)
{
    int result = XN_PUMP_SLICE;
    pthread_mutex_lock(&c->state_lock);
    xn_connection_enter_getters(c);
    c->pumpers++;
    for (;;) {
        if (c->dispatched != mark) {
            result = XN_PUMP_DISPATCHED;
            break;
        }
        if (c->read_ended) {
            result = XN_PUMP_END;
            break;
        }
        if (xn_monotonic_ns() >= slice_end) {
            break;
        }
        if (xn_connection_read_if_free(c, slice_end)) {
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

void
xn_reader_free(xn_connection *c)
{
    if (c->rfd >= 0) {
        close(c->rfd); /* never started: nobody read it */
        c->rfd = -1;
    }
    free(c->rbuf);
    c->rbuf = NULL;
    free(c->pending);
    c->pending = NULL;
    free(c->spare);
    c->spare = NULL;
    Py_CLEAR(c->spare_bytes.object);
}
