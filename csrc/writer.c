/* writer.c: the writing side of a connection (xn_writer, connection.h).
 * One writer at a time writes whole messages, the GIL released; a message
 * sent meanwhile is appended for it to write next.  Closely following data
 * sends are batched for the flusher thread, which writes them soon after. */

#include "connection.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* Sends closer together than this are batched, up to BATCH_BYTES, from the
 * STREAM_AFTER-th such send on: a pair or two of sends (a result and a
 * status, say) goes out at once, without waking the flusher thread. */
#define STREAM_NS 10000LL
#define STREAM_AFTER 3
#define BATCH_BYTES (64 * 1024)
/* Messages this big go to a pipe through splice.c. */
#define SPLICE_MIN_BYTES (128 * 1024)

/* Returns 0 once buf holds room for n more bytes, or -1 (no memory). */
static int
buffer_reserve(xn_buffer *buf, Py_ssize_t n)
{
    return xn_grow(&buf->data, &buf->capacity, buf->size, n, 4096);
}

/* Returns 0 having appended data[0..n) to buf, or -1 (no memory). */
static int
buffer_append(xn_buffer *buf, const char *data, Py_ssize_t n)
{
    if (buffer_reserve(buf, n) < 0) {
        return -1;
    }
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

xn_writer *
xn_writer_new(int fd)
{
    xn_writer *w = calloc(1, sizeof(xn_writer));
    if (w == NULL) {
        return NULL;
    }
    if (pthread_mutex_init(&w->lock, NULL) != 0) {
        free(w);
        return NULL;
    }
    if (pthread_cond_init(&w->flush_cond, NULL) != 0) {
        pthread_mutex_destroy(&w->lock);
        free(w);
        return NULL;
    }
    struct stat st;
    w->fd = fd;
    w->fd_is_pipe = fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode);
    w->refs = 1;
    return w;
}

/* Frees w (its last user, no lock held). */
static void
writer_free(xn_writer *w)
{
    if (w->fd >= 0) {
        close(w->fd);
    }
    buffer_free(&w->unwritten);
    xn_splice_ring_free(&w->ring);
    pthread_cond_destroy(&w->flush_cond);
    pthread_mutex_destroy(&w->lock);
    free(w);
}

/* Lets go of one reference to w (w->lock held, released here). */
static void
writer_unref_unlock(xn_writer *w)
{
    int last = --w->refs == 0;
    pthread_mutex_unlock(&w->lock);
    if (last) {
        writer_free(w);
    }
}

/* Writes all count pieces to w's fd (GIL released, the writing thread),
 * with as few calls as the system allows. Returns 0, or an errno value. */
static int
write_pieces(xn_writer *w, const xn_piece *pieces, Py_ssize_t count)
{
    struct iovec iov[64];
    int fd = w->fd;
    Py_ssize_t next = 0;   /* the first piece not fully written */
    Py_ssize_t offset = 0; /* bytes of it already written */
    if (w->fd_is_pipe) {
        Py_ssize_t total = 0;
        for (Py_ssize_t i = 0; i < count; i++) {
            total += pieces[i].size;
        }
        if (total >= SPLICE_MIN_BYTES) {
            int err = xn_splice_write(&w->ring, fd, pieces, count, &next, &offset);
            if (err != 0) {
                return err;
            }
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
            if (errno == EINTR) {
                continue;
            }
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

/* Writes what others appended to unwritten while this thread wrote, then
 * stops being the writer (lock not held, no GIL). err is the result of
 * this thread's own write so far. Returns the final error (0: none). */
static int
finish_writing(xn_writer *w, int err)
{
    xn_buffer spare = {0};
    pthread_mutex_lock(&w->lock);
    while (err == 0 && w->unwritten.size > 0) {
        xn_buffer batch = w->unwritten;
        w->unwritten = spare;
        pthread_mutex_unlock(&w->lock);
        xn_piece piece = {batch.data, batch.size};
        err = write_pieces(w, &piece, 1);
        batch.size = 0;
        spare = batch;
        pthread_mutex_lock(&w->lock);
    }
    if (err != 0) {
        w->failed = 1;
        w->unwritten.size = 0;
    }
    w->writing = 0;
    if (w->closed && w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    pthread_mutex_unlock(&w->lock);
    buffer_free(&spare);
    return err;
}

/* The flusher thread: writes what streaming senders batched, soon after
 * they batched it, until told to stop. Touches no Python object. */
static void *
flusher_main(void *arg)
{
    xn_writer *w = arg;
    pthread_mutex_lock(&w->lock);
    while (!w->flusher_stop) {
        if (w->unwritten.size > 0 && !w->writing) {
            w->writing = 1;
            pthread_mutex_unlock(&w->lock);
            finish_writing(w, 0);
            pthread_mutex_lock(&w->lock);
            continue;
        }
        w->flusher_idle = 1;
        pthread_cond_wait(&w->flush_cond, &w->lock);
        w->flusher_idle = 0;
    }
    writer_unref_unlock(w);
    return NULL;
}

/* Returns 1 if the flusher thread runs (started now if need be), else 0
 * (lock held). */
static int
have_flusher(xn_writer *w)
{
    if (w->flusher_started) {
        return 1;
    }
    if (w->flusher_stop) {
        return 0;
    }
    pthread_t tid;
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0) {
        return 0;
    }
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    w->refs++; /* the flusher's */
    if (pthread_create(&tid, &attr, flusher_main, w) == 0) {
        w->flusher_started = 1;
    }
    else {
        w->refs--;
    }
    pthread_attr_destroy(&attr);
    return w->flusher_started;
}

/* Tells the flusher to end (lock held). */
static void
stop_flusher(xn_writer *w)
{
    w->flusher_stop = 1;
    if (w->flusher_started) {
        pthread_cond_signal(&w->flush_cond);
    }
}

/* Called before a thread waits for data, so that a request is never kept
 * back from the peer whose answer it awaits. */
void
xn_writer_flush(xn_writer *w)
{
    pthread_mutex_lock(&w->lock);
    if (w->writing || w->unwritten.size == 0 || w->failed || w->closed) {
        pthread_mutex_unlock(&w->lock);
        return;
    }
    w->writing = 1;
    pthread_mutex_unlock(&w->lock);
    finish_writing(w, 0);
}

/* Messages never interleave: each is written at once, or appended for the
 * thread that is writing, or, when sends follow each other closely,
 * batched for the flusher thread (one write for many messages). */
int
xn_writer_send(void *ctx, const xn_piece *pieces, Py_ssize_t count)
{
    xn_writer *w = ctx;
    int err = 0;
    pthread_mutex_lock(&w->lock);
    if (w->failed || w->closed) {
        pthread_mutex_unlock(&w->lock);
        goto failed;
    }
    /* a send that closely follows another with no receive between them:
     * a stream (a receive in between: a conversation, written at once).
     * Only channel data streams: other messages (a close that ends a
     * task's output, say) go out at once, with what was batched before. */
    int64_t now = xn_monotonic_ns();
    int is_data = count > 0 && pieces[0].size > 0 && pieces[0].data[0] == XN_MSG_CHANNEL_DATA;
    int close = is_data && now - w->last_send_ns < STREAM_NS &&
                __atomic_load_n(&w->last_get_ns, __ATOMIC_RELAXED) < w->last_send_ns;
    w->close_sends = close ? w->close_sends + 1 : 0;
    int streaming = w->close_sends >= STREAM_AFTER;
    w->last_send_ns = now;
    if (w->writing || (streaming && w->unwritten.size < BATCH_BYTES && have_flusher(w))) {
        Py_ssize_t before = w->unwritten.size;
        int ok = 1;
        for (Py_ssize_t i = 0; i < count && ok; i++) {
            ok = buffer_append(&w->unwritten, pieces[i].data, pieces[i].size) == 0;
        }
        if (!ok) {
            w->unwritten.size = before; /* no partial message */
        }
        else if (!w->writing && w->flusher_idle) {
            pthread_cond_signal(&w->flush_cond);
        }
        pthread_mutex_unlock(&w->lock);
        if (!ok) {
            PyErr_NoMemory();
            return -1;
        }
        return 0;
    }
    w->writing = 1;
    xn_buffer earlier = w->unwritten; /* batched before us: goes first */
    w->unwritten = (xn_buffer){0};
    pthread_mutex_unlock(&w->lock);

    Py_BEGIN_ALLOW_THREADS
        if (earlier.size > 0) {
            xn_piece piece = {earlier.data, earlier.size};
            err = write_pieces(w, &piece, 1);
        }
        if (err == 0) {
            err = write_pieces(w, pieces, count);
        }
        err = finish_writing(w, err);
    Py_END_ALLOW_THREADS
    buffer_free(&earlier);
    if (err == 0) {
        return 0;
    }
failed:
    PyErr_SetString(PyExc_OSError, "cannot send (already closed?)");
    return -1;
}

int
xn_writer_send_frame(xn_writer *w, int code, int32_t channelid, const char *payload,
                     Py_ssize_t size)
{
    if (size > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "payload is too long");
        return -1;
    }
    xn_buffer buf = {0};
    if (buffer_reserve(&buf, XN_HEADER_SIZE + size) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    xn_put_header((unsigned char *)buf.data, (int8_t)code, channelid, (int32_t)size);
    memcpy(buf.data + XN_HEADER_SIZE, payload, (size_t)size);
    buf.size = XN_HEADER_SIZE + size;
    xn_piece piece = {buf.data, buf.size};
    int rc = xn_writer_send(w, &piece, 1);
    buffer_free(&buf);
    return rc;
}

/* Called with w->lock held: no more writes; the descriptor is closed now,
 * or by the thread writing when it is done, and the flusher told to stop. */
static void
mark_closed(xn_writer *w)
{
    w->closed = 1;
    if (!w->writing && w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    stop_flusher(w);
}

void
xn_writer_close(xn_writer *w)
{
    xn_writer_flush(w); /* what was batched goes first */
    pthread_mutex_lock(&w->lock);
    mark_closed(w);
    pthread_mutex_unlock(&w->lock);
}

void
xn_writer_release(xn_writer *w)
{
    pthread_mutex_lock(&w->lock);
    /* what is still batched is dropped, as the connection goes unclosed;
     * a writing flusher closes fd when it is done */
    mark_closed(w);
    writer_unref_unlock(w);
}
