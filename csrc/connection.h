/* connection.h: a gateway's connection, as the files that implement it see
 * it (connection.c, table.c, writer.c, reader.c).  The rest of the
 * extension sees only the functions declared in execnet.h.
 *
 * ---- threads -------------------------------------------------------------
 *
 * Python threads  call the methods of Connection (connection.c) with the GIL.
 *                 A send serializes with the GIL held and writes with it
 *                 released (writer.c).
 * the IO thread   reader_main() in reader.c, one per started connection,
 *                 detached.  It holds a reference to the connection while it
 *                 runs, so the connection outlives it.  It reads frames,
 *                 queues channel data natively and hands everything else to
 *                 the Python dispatcher, taking the GIL for that only.
 * getters         Python threads waiting in ItemQueue.get() (channel.c) or
 *                 Connection.pump() on this connection, GIL released.  While
 *                 the IO thread is not reading, one of them at a time takes
 *                 the read role itself (xn_connection_read_if_free): it
 *                 queues channel data and handles frames the inline
 *                 dispatcher takes; at the first frame it must leave to the
 *                 IO thread it stops and sets handoff, so frames stay in
 *                 order.
 * the flusher     flusher_main() in writer.c, started at the first burst of
 *                 closely following data sends, detached.  It writes what
 *                 such sends batched and touches no Python object.  It shares
 *                 the writer (below) with the connection, the writer's last
 *                 user frees it: a connection that is dropped does not wait
 *                 for a flusher blocked in a write.
 *
 * ---- locks and what they guard -------------------------------------------
 *
 * read_lock    the read role: rfd, the read buffer and the big frame left
 *              to the IO thread (the "read_lock" group of xn_connection).
 *              Whoever holds it reads; the others do not touch these.
 * table_lock   the channel table (table.c).
 * state_lock   what the IO thread and the getters share (the "state_lock"
 *              group).  It is also the lock of every ItemQueue that this
 *              connection fills, and get_cond their condition.
 * write_lock   the writer's lock (xn_writer.lock): what is batched or
 *              appended, who writes, and the end of writing.  The fd and
 *              the splice ring belong to the one thread whose `writing` is
 *              set, without the lock.
 * the GIL      every Python object and every Python C-API call.
 *
 * Set once before the connection is used by a second thread (in tp_new or
 * start()), read without a lock afterwards: dispatch, inline_dispatch,
 * spin_ns, reader_started; reader_running is written by the IO thread at
 * its end, GIL held, and read with the GIL.
 *
 * ---- lock order ----------------------------------------------------------
 *
 *     read_lock  ->  GIL  ->  table_lock  ->  state_lock
 *
 * A lock on the left may be held while one on its right is taken, never the
 * other way round.  A getter holding state_lock only ever *tries* read_lock
 * (pthread_mutex_trylock), which cannot deadlock.  table_lock is held while
 * an item is pushed onto a queue, which takes the queue's lock: state_lock.
 * write_lock is a leaf: taken with or without the GIL, never while another
 * of these locks is held, and nothing else is taken while it is held (apart
 * from starting the flusher).  A queue's own lock (a queue no connection
 * fills) is a leaf too.
 *
 * ---- without the GIL -----------------------------------------------------
 *
 * Reading and writing descriptors, parsing frames, the channel table,
 * pushing items (malloc'd memory) onto queues, and waiting on the
 * conditions are done with the GIL released; none of them touches a Python
 * object.  The one Python object the reading side uses without the GIL is
 * the spare bytes object (state_lock group): a fresh object that only this
 * connection references, made with the GIL held, whose size and data
 * pointer are taken then; without the GIL the reading side uses that memory
 * only, and moves the object's pointer between owners (the connection, a
 * queue item) without touching its reference count.  Dropping or creating
 * a reference takes the GIL (release_object in reader.c).
 */

#ifndef XN_CONNECTION_H
#define XN_CONNECTION_H

#include "execnet.h"

/* A growable byte buffer (malloc'd). */
/* Grows the malloc'ed block *data (capacity *cap, of which used bytes are
 * taken) by doubling, from first when empty, until need more bytes fit.
 * Returns 0, or -1 (no memory; the block is left as it was). */
static inline int
xn_grow(char **data, Py_ssize_t *cap, Py_ssize_t used, Py_ssize_t need, Py_ssize_t first)
{
    if (*cap - used >= need) {
        return 0;
    }
    Py_ssize_t n = *cap ? *cap : first;
    while (n - used < need) {
        n *= 2;
    }
    char *grown = realloc(*data, (size_t)n);
    if (grown == NULL) {
        return -1;
    }
    *data = grown;
    *cap = n;
    return 0;
}

typedef struct {
    char *data;
    Py_ssize_t size, capacity;
} xn_buffer;

/* A bytes object that only its holder references, with its size and
 * bytes taken when it was made (GIL held): the reading side writes into
 * data without the GIL (object NULL: none). */
typedef struct {
    PyObject *object;
    Py_ssize_t size;
    char *data;
} xn_raw_bytes;

/* ---- writer.c: the writing side ----------------------------------------- */

/* The writing side of a connection: a block of its own, so that a flusher
 * still blocked in a write when the connection goes can finish with it. */
typedef struct xn_writer {
    pthread_mutex_t lock; /* write_lock */
    pthread_cond_t flush_cond;
    /* guarded by lock */
    int refs;            /* the connection, and the flusher while it runs */
    int writing;         /* a thread is writing fd (it owns fd and ring) */
    int failed;          /* a write failed: every later send fails */
    int closed;          /* close_write(): fd closed once nobody writes */
    xn_buffer unwritten; /* appended while another thread writes */
    int64_t last_send_ns;
    int close_sends; /* data sends in a row, each soon after the one before */
    int flusher_started, flusher_idle, flusher_stop;
    /* the writing thread's (writing set), without lock; fd is closed under
     * lock */
    int fd;
    int fd_is_pipe;
    xn_splice_ring ring;
    /* atomic: when a receiver last asked for an item (getters write it) */
    int64_t last_get_ns;
} xn_writer;

/* Returns a new writer for fd (which it then owns), or NULL (no memory or
 * no locks; no exception set, fd left open). */
xn_writer *xn_writer_new(int fd);

/* Hands one complete message to the writer (GIL held; released while it
 * writes).  An xn_piece_writer for xn_write_message(), ctx the writer.
 * Returns 0, or -1 with an exception set. */
int xn_writer_send(void *ctx, const xn_piece *pieces, Py_ssize_t count);

/* Sends one frame with payload[0..size) as it is (GIL held).  Returns 0,
 * or -1 with an exception set. */
int xn_writer_send_frame(xn_writer *w, int code, int32_t channelid, const char *payload,
                         Py_ssize_t size);

/* Writes what was batched now, unless another thread is writing (no GIL
 * needed). */
void xn_writer_flush(xn_writer *w);

/* No more frames: flushes what was batched, closes fd once nobody writes
 * and tells the flusher to end (no GIL needed; does not wait for it). */
void xn_writer_close(xn_writer *w);

/* The connection lets go of w (it does not wait for the flusher: the last
 * one to let go frees it).  No GIL needed. */
void xn_writer_release(xn_writer *w);

/* ---- table.c: channel id -> queue --------------------------------------- */

struct xn_slot;

/* ---- the connection ------------------------------------------------------ */

typedef struct xn_connection {
    PyObject_HEAD

    /* -- set before a second thread sees the connection; read freely -- */
    PyObject *dispatch; /* dispatch(code, channelid, payload) */
    /* inline(code, channelid, payload) -> bool: a getter handles a frame
     * needing Python itself, if it says so */
    PyObject *inline_dispatch;
    int64_t spin_ns; /* how long a getter may poll before it sleeps */
    int locks_ready;
    int reader_started; /* start() ran (GIL) */
    int reader_running; /* the IO thread runs (GIL) */

    /* -- the writing side: its own lock, write_lock (writer.c) -- */
    xn_writer *writer;

    /* -- table_lock: channel id -> queue (table.c) -- */
    pthread_mutex_t table_lock;
    struct xn_slot *slots;
    size_t capacity, used, filled;

    /* -- read_lock: the read role (reader.c) -- */
    pthread_mutex_t read_lock;
    int rfd;
    char *rbuf;
    Py_ssize_t rstart, rend, rcap, need;
    xn_item *pending; /* a big frame a getter read but left to the IO thread */
    int pending_code;
    int32_t pending_id;
    Py_ssize_t pending_size;
    int spin_failures; /* polls in a row that found nothing */
    int spin_skips;    /* waits left that sleep without polling */

    /* -- state_lock: shared by the IO thread and the getters; also the
     * lock of this connection's queues -- */
    pthread_mutex_t state_lock;
    pthread_cond_t get_cond; /* getters: an item came, or the read role is free */
    pthread_cond_t io_cond;  /* the IO thread, parked while getters read */
    int getters;             /* threads waiting in get() on our queues, or pumping */
    int pumpers;             /* threads in pump() */
    uint64_t dispatched;     /* frames handed to Python so far */
    int handoff;             /* the IO thread's turn: frames need Python */
    int64_t io_park_ns;      /* the IO thread's sleep while parked (0: not parked) */
    int read_ended;          /* reading is over (end_* say why) */
    int end_kind, end_err;
    char end_text[160];
    PyObject *inline_error; /* what inline raised: it ended reading */
    xn_item *spare;         /* a big item's memory, kept for the next one */
    /* a fresh bytes object the next big frame holding one byte string of
     * its size is read into, sparing a copy */
    xn_raw_bytes spare_bytes;
} xn_connection;

/* ---- table.c -------------------------------------------------------------- */

/* Each of these: caller holds c->table_lock. */
/* Returns the queue registered for id, or NULL. */
xn_queue *xn_table_lookup(xn_connection *c, int32_t id);
/* Registers q under id, replacing an earlier one. Returns 0 or -1 (no memory). */
int xn_table_insert(xn_connection *c, int32_t id, xn_queue *q);
/* Removes id's entry if it is q (q NULL: whatever it is). */
void xn_table_remove(xn_connection *c, int32_t id, xn_queue *q);
/* Frees the table (the connection is going; no lock needed). */
void xn_table_free(xn_connection *c);

/* ---- reader.c -------------------------------------------------------------- */

/* The IO thread's body; arg is the connection, whose reference it owns. */
void *xn_reader_main(void *arg);

/* Reads c until slice_end, handling frames inline, unless a frame went to
 * Python since mark or reading ended (no GIL).  Returns a XN_PUMP_ value. */
enum { XN_PUMP_SLICE, XN_PUMP_DISPATCHED, XN_PUMP_END };
int xn_reader_pump_slice(xn_connection *c, uint64_t mark, int64_t slice_end);

/* The getters' polling time from EXECNET_SPIN_US (see reader.c). */
int64_t xn_spin_setting_ns(void);

/* Frees what the reading side holds (the connection is going; GIL held). */
void xn_reader_free(xn_connection *c);

#endif /* XN_CONNECTION_H */
