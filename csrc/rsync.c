/* rsync.c: the file work of RSync (doc/rsync.md): MD5 digests,
 * whole-file reads and writes, each done with the GIL released. */

#include "execnet.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

/* Files are hashed in pieces of this size. */
#define HASH_CHUNK (1024 * 1024)

/* ---- MD5 (RFC 1321) ------------------------------------------------------ */

typedef struct {
    uint32_t state[4];
    uint64_t length; /* bytes hashed so far */
    unsigned char block[64];
    size_t used; /* bytes waiting in block */
} md5_ctx;

/* floor(|sin(i + 1)| * 2**32), RFC 1321 §3.4 */
static const uint32_t md5_sines[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
};

/* the left rotations of each round, four per round */
static const unsigned char md5_rotations[4][4] = {
    {7, 12, 17, 22}, {5, 9, 14, 20}, {4, 11, 16, 23}, {6, 10, 15, 21}};

/* Returns x rotated left by n bits (0 < n < 32). */
static inline uint32_t
rotl32(uint32_t x, unsigned n)
{
    return (x << n) | (x >> (32u - n));
}

/* One MD5 step: a gets the rotated sum of f, the sine constant of step i
 * and message word g, then the four registers shift (returns nothing). */
#define MD5_STEP(f, i, g, r)                         \
    do {                                             \
        uint32_t t_ = a + (f) + md5_sines[i] + w[g]; \
        a = d;                                       \
        d = c;                                       \
        c = b;                                       \
        b += rotl32(t_, (r));                        \
    } while (0)

/* Mixes one 64-byte block into ctx->state (returns nothing). */
static void
md5_block(md5_ctx *ctx, const unsigned char *p)
{
    uint32_t w[16];
    uint32_t a = ctx->state[0], b = ctx->state[1], c = ctx->state[2], d = ctx->state[3];

    for (int i = 0; i < 16; i++) {
        w[i] = (uint32_t)p[4 * i] | ((uint32_t)p[4 * i + 1] << 8) | ((uint32_t)p[4 * i + 2] << 16) |
               ((uint32_t)p[4 * i + 3] << 24);
    }
    /* one loop per round, so that each has its own function and order */
    for (int i = 0; i < 16; i++) {
        MD5_STEP((b & c) | (~b & d), i, i, md5_rotations[0][i & 3]);
    }
    for (int i = 16; i < 32; i++) {
        MD5_STEP((b & d) | (c & ~d), i, (5 * i + 1) & 15, md5_rotations[1][i & 3]);
    }
    for (int i = 32; i < 48; i++) {
        MD5_STEP(b ^ c ^ d, i, (3 * i + 5) & 15, md5_rotations[2][i & 3]);
    }
    for (int i = 48; i < 64; i++) {
        MD5_STEP(c ^ (b | ~d), i, (7 * i) & 15, md5_rotations[3][i & 3]);
    }
    ctx->state[0] += a;
    ctx->state[1] += b;
    ctx->state[2] += c;
    ctx->state[3] += d;
}

#undef MD5_STEP

/* Starts a digest (returns nothing). */
static void
md5_init(md5_ctx *ctx)
{
    ctx->state[0] = 0x67452301;
    ctx->state[1] = 0xefcdab89;
    ctx->state[2] = 0x98badcfe;
    ctx->state[3] = 0x10325476;
    ctx->length = 0;
    ctx->used = 0;
}

/* Hashes n more bytes at p (returns nothing). */
static void
md5_update(md5_ctx *ctx, const unsigned char *p, size_t n)
{
    ctx->length += n;
    if (ctx->used > 0) {
        size_t take = 64 - ctx->used < n ? 64 - ctx->used : n;
        memcpy(ctx->block + ctx->used, p, take);
        ctx->used += take;
        p += take;
        n -= take;
        if (ctx->used < 64) {
            return;
        }
        md5_block(ctx, ctx->block);
        ctx->used = 0;
    }
    for (; n >= 64; p += 64, n -= 64) {
        md5_block(ctx, p);
    }
    memcpy(ctx->block, p, n);
    ctx->used = n;
}

/* Writes the 16-byte digest to out (returns nothing; ctx is spent). */
static void
md5_final(md5_ctx *ctx, unsigned char out[16])
{
    static const unsigned char pad[64] = {0x80};
    unsigned char bits[8];
    uint64_t nbits = ctx->length * 8u;

    for (int i = 0; i < 8; i++) {
        bits[i] = (unsigned char)(nbits >> (8 * i));
    }
    md5_update(ctx, pad, ctx->used < 56 ? 56 - ctx->used : 120 - ctx->used);
    md5_update(ctx, bits, 8);
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 4; j++) {
            out[4 * i + j] = (unsigned char)(ctx->state[i] >> (8 * j));
        }
    }
}

/* ---- system calls without the GIL ---------------------------------------- */

/* Reads into buf until n bytes came or end of file (no GIL).  Returns the
 * count read; *err is 0, or the errno of the read that failed (EINTR too). */
static size_t
read_upto(int fd, char *buf, size_t n, int *err)
{
    size_t done = 0;
    *err = 0;
    while (done < n) {
        ssize_t got = read(fd, buf + done, n - done);
        if (got < 0) {
            *err = errno;
            break;
        }
        if (got == 0) {
            break;
        }
        done += (size_t)got;
    }
    return done;
}

/* Writes buf[0..n) (no GIL).  Returns the count written; *err is 0, or the
 * errno of the write that failed (EINTR too). */
static size_t
write_all(int fd, const char *buf, size_t n, int *err)
{
    size_t done = 0;
    *err = 0;
    while (done < n) {
        ssize_t put = write(fd, buf + done, n - done);
        if (put < 0) {
            *err = errno;
            break;
        }
        done += (size_t)put;
    }
    return done;
}

/* Sets OSError(err, strerror(err), filename).  Returns -1. */
static int
raise_errno(int err, PyObject *filename)
{
    errno = err;
    PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, filename);
    return -1;
}

/* Returns 0 if err is EINTR and no signal handler raised (the caller
 * retries), else -1 with OSError(err, ..., filename) or the handler's
 * exception set. */
static int
retry_or_raise(int err, PyObject *filename)
{
    if (err == EINTR) {
        return PyErr_CheckSignals();
    }
    return raise_errno(err, filename);
}

/* Returns an open descriptor for path (bytes from PyUnicode_FSConverter),
 * or -1 with OSError set. */
static int
open_path(PyObject *path, int flags, PyObject *filename)
{
    /* taken with the GIL: no object is touched without it */
    const char *name = PyBytes_AS_STRING(path);
    int fd, err;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
            fd = open(name, flags | O_CLOEXEC, 0666);
            err = errno;
        Py_END_ALLOW_THREADS
        if (fd >= 0) {
            return fd;
        }
        if (retry_or_raise(err, filename) < 0) {
            return -1;
        }
    }
}

/* Closes fd (no exception expected); returns 0 or -1 with OSError set. */
static int
close_fd(int fd, PyObject *filename)
{
    int rc, err;
    Py_BEGIN_ALLOW_THREADS
        rc = close(fd);
        err = errno;
    Py_END_ALLOW_THREADS
    if (rc < 0 && err != EINTR) {
        return raise_errno(err, filename);
    }
    return 0;
}

/* Closes fd, if it is one, without the GIL, ignoring errors: for error
 * paths (an exception may be set) and descriptors only read from. */
static void
close_quietly(int fd)
{
    if (fd < 0) {
        return;
    }
    Py_BEGIN_ALLOW_THREADS(void)
        close(fd);
    Py_END_ALLOW_THREADS
}

/* Fills *st for fd; returns 0 or -1 with OSError set. */
static int
stat_fd(int fd, struct stat *st, PyObject *filename)
{
    int rc, err;
    Py_BEGIN_ALLOW_THREADS
        rc = fstat(fd, st);
        err = errno;
    Py_END_ALLOW_THREADS
    return rc < 0 ? raise_errno(err, filename) : 0;
}

/* ---- the module functions ------------------------------------------------ */

PyDoc_STRVAR(md5_doc, "rsync_md5($module, data, /)\n--\n\n"
                      "The 16-byte MD5 digest of a bytes-like object.");

/* Returns the MD5 digest of the buffer arg (new bytes), or NULL with an
 * exception set. */
static PyObject *
rsync_md5(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    md5_ctx ctx;
    unsigned char digest[16];
    (void)module;

    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    md5_init(&ctx);
    Py_BEGIN_ALLOW_THREADS
        md5_update(&ctx, view.buf, (size_t)view.len);
        md5_final(&ctx, digest);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)digest, 16);
}

PyDoc_STRVAR(md5_file_doc, "rsync_md5_file($module, path, /)\n--\n\n"
                           "The 16-byte MD5 digest of a file's content, read in pieces.");

/* Returns the MD5 digest of the file at path_arg (new bytes), or NULL with
 * an exception set (OSError naming the file). */
static PyObject *
rsync_md5_file(PyObject *module, PyObject *path_arg)
{
    PyObject *path = NULL, *result = NULL;
    char *chunk = NULL;
    md5_ctx ctx;
    unsigned char digest[16];
    int fd = -1;
    (void)module;

    if (!PyUnicode_FSConverter(path_arg, &path)) {
        goto error;
    }
    chunk = PyMem_Malloc(HASH_CHUNK);
    if (chunk == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    fd = open_path(path, O_RDONLY, path_arg);
    if (fd < 0) {
        goto error;
    }
    md5_init(&ctx);
    for (;;) {
        size_t got;
        int err;
        Py_BEGIN_ALLOW_THREADS
            got = read_upto(fd, chunk, HASH_CHUNK, &err);
            md5_update(&ctx, (const unsigned char *)chunk, got);
        Py_END_ALLOW_THREADS
        if (err != 0) {
            if (retry_or_raise(err, path_arg) < 0) {
                goto error;
            }
            continue;
        }
        if (got < HASH_CHUNK) {
            break;
        }
    }
    md5_final(&ctx, digest);
    result = PyBytes_FromStringAndSize((const char *)digest, 16);
    if (result == NULL) {
        goto error;
    }
    if (close_fd(fd, path_arg) < 0) {
        fd = -1;
        goto error;
    }
    PyMem_Free(chunk);
    Py_DECREF(path);
    return result;

error:
    close_quietly(fd);
    Py_XDECREF(result);
    PyMem_Free(chunk);
    Py_XDECREF(path);
    return NULL;
}

PyDoc_STRVAR(read_file_doc, "rsync_read_file($module, path, /)\n--\n\n"
                            "The whole content of a file, as bytes.");

/* Returns the content of the file at path_arg (new bytes), or NULL with an
 * exception set (OSError naming the file). */
static PyObject *
rsync_read_file(PyObject *module, PyObject *path_arg)
{
    PyObject *path = NULL, *data = NULL;
    struct stat st;
    Py_ssize_t cap, len = 0;
    int fd = -1, err;
    (void)module;

    if (!PyUnicode_FSConverter(path_arg, &path)) {
        goto error;
    }
    fd = open_path(path, O_RDONLY, path_arg);
    if (fd < 0) {
        goto error;
    }
    if (stat_fd(fd, &st, path_arg) < 0) {
        goto error;
    }
    if (S_ISDIR(st.st_mode)) {
        raise_errno(EISDIR, path_arg);
        goto error;
    }
    /* one byte more than the size, so that end of file shows at once */
    if (st.st_size < 0 || st.st_size >= PY_SSIZE_T_MAX - 1) {
        PyErr_NoMemory();
        goto error;
    }
    cap = (Py_ssize_t)st.st_size + 1;
    data = PyBytes_FromStringAndSize(NULL, cap);
    if (data == NULL) {
        goto error;
    }
    for (;;) {
        size_t got;
        /* nobody else sees data yet: it may be filled without the GIL */
        char *buf = PyBytes_AS_STRING(data);
        Py_BEGIN_ALLOW_THREADS
            got = read_upto(fd, buf + len, (size_t)(cap - len), &err);
        Py_END_ALLOW_THREADS
        len += (Py_ssize_t)got;
        if (err != 0) {
            if (retry_or_raise(err, path_arg) < 0) {
                goto error;
            }
            continue;
        }
        if (len < cap) {
            break; /* end of file */
        }
        /* the file grew while we read it: keep reading */
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            goto error;
        }
        cap *= 2;
        if (_PyBytes_Resize(&data, cap) < 0) {
            goto error; /* data was freed and set to NULL */
        }
    }
    if (_PyBytes_Resize(&data, len) < 0) {
        goto error;
    }
    if (close_fd(fd, path_arg) < 0) {
        fd = -1;
        goto error;
    }
    Py_DECREF(path);
    return data;

error:
    close_quietly(fd);
    Py_XDECREF(data);
    Py_XDECREF(path);
    return NULL;
}

/* Returns 0, having stored the float seconds t as a timespec rounded down
 * (as os.utime does), or -1 with an exception set. */
static int
seconds_to_timespec(PyObject *t, struct timespec *ts)
{
    double d = PyFloat_AsDouble(t), whole, ns;
    if (d == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (!isfinite(d) || d >= 9.2e18 || d <= -9.2e18) {
        PyErr_SetString(PyExc_OverflowError, "timestamp out of range");
        return -1;
    }
    whole = floor(d);
    ns = floor((d - whole) * 1e9);
    if (ns >= 1e9) {
        ns -= 1e9;
        whole += 1.0;
    }
    ts->tv_sec = (time_t)whole;
    ts->tv_nsec = (long)ns;
    return 0;
}

/* Returns 0, having parsed mode (an int, 0 for "leave it") and mtime
 * (float seconds, or None for "leave them"), or -1 with an exception set. */
static int
parse_mode_mtime(PyObject *mode_arg, PyObject *mtime_arg, long *mode, struct timespec times[2],
                 int *have_times)
{
    *mode = PyLong_AsLong(mode_arg);
    if (*mode == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (*mode < 0 || *mode > 07777 + S_IFMT) {
        PyErr_SetString(PyExc_ValueError, "mode out of range");
        return -1;
    }
    *have_times = 0;
    if (mtime_arg != Py_None) {
        if (seconds_to_timespec(mtime_arg, &times[0]) < 0) {
            return -1;
        }
        times[1] = times[0];
        *have_times = 1;
    }
    return 0;
}

/* Sets fd's permission bits and times, best effort, as the reference
 * receiver does (errors are ignored; returns nothing). */
static void
set_metadata(int fd, long mode, const struct timespec times[2], int have_times)
{
    Py_BEGIN_ALLOW_THREADS
        if (mode != 0) {
            (void)fchmod(fd, (mode_t)(mode & 07777));
        }
        if (have_times) {
            (void)futimens(fd, times);
        }
    Py_END_ALLOW_THREADS
}

PyDoc_STRVAR(write_file_doc,
             "rsync_write_file($module, path, data, mode, mtime, /)\n--\n\n"
             "Write data to path (created or truncated; a symlink there is refused),\n"
             "then, best effort, set its permission bits to mode (unless 0) and its\n"
             "access and modification times to mtime (unless None).");

/* Returns None, having written the file, or NULL with an exception set
 * (OSError naming the file). */
static PyObject *
rsync_write_file(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *path = NULL;
    Py_buffer view = {0};
    struct timespec times[2];
    int have_view = 0, have_times = 0, fd = -1;
    long mode;
    const char *buf;
    size_t left;
    (void)module;

    if (xn_check_nargs("rsync_write_file", nargs, 4) < 0) {
        goto error;
    }
    if (parse_mode_mtime(args[2], args[3], &mode, times, &have_times) < 0) {
        goto error;
    }
    if (!PyUnicode_FSConverter(args[0], &path)) {
        goto error;
    }
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) {
        goto error;
    }
    have_view = 1;
    fd = open_path(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, args[0]);
    if (fd < 0) {
        goto error;
    }
    buf = view.buf;
    left = (size_t)view.len;
    while (left > 0) {
        size_t put;
        int err;
        Py_BEGIN_ALLOW_THREADS
            put = write_all(fd, buf, left, &err);
        Py_END_ALLOW_THREADS
        buf += put;
        left -= put;
        if (err != 0 && retry_or_raise(err, args[0]) < 0) {
            goto error;
        }
    }
    set_metadata(fd, mode, times, have_times);
    if (close_fd(fd, args[0]) < 0) {
        fd = -1;
        goto error;
    }
    PyBuffer_Release(&view);
    Py_DECREF(path);
    Py_RETURN_NONE;

error:
    close_quietly(fd);
    if (have_view) {
        PyBuffer_Release(&view);
    }
    Py_XDECREF(path);
    return NULL;
}

/* Copies from in to out until end of file inside the kernel (no GIL):
 * copy_file_range, or where that can't copy between these two files (on
 * two file systems, say) sendfile. Returns the count copied; *err is 0, or
 * the errno of the call that failed (EINTR too); *unsupported is set, with
 * nothing copied, where neither can (the caller copies through a buffer). */
static uint64_t
kernel_copy(int in, int out, int *err, int *unsupported)
{
    uint64_t done = 0;
    int use_sendfile = 0;
    *err = 0;
    for (;;) {
        ssize_t n = use_sendfile ? sendfile(out, in, NULL, 1 << 30)
                                 : copy_file_range(in, NULL, out, NULL, 1 << 30, 0);
        if (n > 0) {
            done += (uint64_t)n;
            continue;
        }
        if (n == 0) {
            return done;
        }
        if (done == 0 &&
            (errno == ENOSYS || errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP)) {
            if (!use_sendfile) {
                use_sendfile = 1;
                continue;
            }
            *unsupported = 1;
            return 0;
        }
        *err = errno;
        return done;
    }
}

/* Copies from in to out until end of file through buf (HASH_CHUNK bytes;
 * no GIL).  Returns the count copied; *err is 0, or the errno of the call
 * that failed (EINTR too), and *in_failed tells whether it was a read. */
static uint64_t
buffer_copy(int in, int out, char *buf, int *err, int *in_failed)
{
    uint64_t done = 0;
    for (;;) {
        int werr;
        size_t put, got = read_upto(in, buf, HASH_CHUNK, err);
        *in_failed = *err != 0;
        put = write_all(out, buf, got, &werr);
        done += put;
        if (werr != 0) {
            *err = werr;
            *in_failed = 0;
            return done;
        }
        if (*err != 0 || got < HASH_CHUNK) {
            return done;
        }
    }
}

PyDoc_STRVAR(copy_file_doc,
             "rsync_copy_file($module, source, path, mode, mtime, /)\n--\n\n"
             "Copy the file source to path (created or truncated; a symlink there is\n"
             "refused) inside the kernel where possible, then, best effort, set the\n"
             "permission bits to mode (unless 0) and the times to mtime (unless\n"
             "None).  Returns the number of bytes copied.");

/* Returns the count of bytes copied (new int), or NULL with an exception
 * set (OSError naming the file that failed). */
static PyObject *
rsync_copy_file(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *source = NULL, *path = NULL;
    char *buf = NULL;
    struct timespec times[2];
    struct stat st;
    int have_times = 0, in = -1, out = -1, unsupported = 0, rc, err;
    long mode;
    uint64_t total = 0;
    (void)module;

    if (xn_check_nargs("rsync_copy_file", nargs, 4) < 0) {
        goto error;
    }
    if (parse_mode_mtime(args[2], args[3], &mode, times, &have_times) < 0) {
        goto error;
    }
    if (!PyUnicode_FSConverter(args[0], &source) || !PyUnicode_FSConverter(args[1], &path)) {
        goto error;
    }
    /* O_NONBLOCK: a FIFO put there meanwhile is refused below, not waited
     * on for a writer (reads of a regular file do not heed it) */
    in = open_path(source, O_RDONLY | O_NONBLOCK, args[0]);
    if (in < 0) {
        goto error;
    }
    if (stat_fd(in, &st, args[0]) < 0) {
        goto error;
    }
    if (!S_ISREG(st.st_mode)) {
        raise_errno(EINVAL, args[0]);
        goto error;
    }
    out = open_path(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, args[1]);
    if (out < 0) {
        goto error;
    }
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
            total += kernel_copy(in, out, &err, &unsupported);
        Py_END_ALLOW_THREADS
        if (err == 0) {
            break;
        }
        /* the kernel does not say which side failed: name the destination */
        if (retry_or_raise(err, args[1]) < 0) {
            goto error;
        }
    }
    if (unsupported) {
        buf = PyMem_Malloc(HASH_CHUNK);
        if (buf == NULL) {
            PyErr_NoMemory();
            goto error;
        }
        for (;;) {
            int in_failed;
            Py_BEGIN_ALLOW_THREADS
                total += buffer_copy(in, out, buf, &err, &in_failed);
            Py_END_ALLOW_THREADS
            if (err == 0) {
                break;
            }
            if (retry_or_raise(err, in_failed ? args[0] : args[1]) < 0) {
                goto error;
            }
        }
    }
    set_metadata(out, mode, times, have_times);
    rc = close_fd(out, args[1]);
    out = -1;
    if (rc < 0) {
        goto error;
    }
    close_quietly(in);
    PyMem_Free(buf);
    Py_DECREF(source);
    Py_DECREF(path);
    return PyLong_FromUnsignedLongLong(total);

error:
    close_quietly(in);
    close_quietly(out);
    PyMem_Free(buf);
    Py_XDECREF(source);
    Py_XDECREF(path);
    return NULL;
}

static PyMethodDef rsync_methods[] = {
    {"rsync_md5", (PyCFunction)rsync_md5, METH_O, md5_doc},
    {"rsync_md5_file", (PyCFunction)rsync_md5_file, METH_O, md5_file_doc},
    {"rsync_read_file", (PyCFunction)rsync_read_file, METH_O, read_file_doc},
    {"rsync_write_file", (PyCFunction)(void (*)(void))rsync_write_file, METH_FASTCALL,
     write_file_doc},
    {"rsync_copy_file", (PyCFunction)(void (*)(void))rsync_copy_file, METH_FASTCALL, copy_file_doc},
    {NULL, NULL, 0, NULL},
};

/* Adds the rsync_* functions to the module.  Returns 0, or -1 with an
 * exception set. */
int
xn_rsync_add_functions(PyObject *module)
{
    return PyModule_AddFunctions(module, rsync_methods);
}
