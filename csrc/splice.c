/* splice.c: big writes to a pipe without the kernel's copy under the pipe's lock.
 *
 * write() copies into the pipe's pages holding the pipe's lock, and the
 * reader's read() copies out of them holding the same lock, so the two
 * copies of a bulk transfer run one after the other. vmsplice() instead
 * lends the pipe our own pages: we copy the message into a ring of pages
 * (no lock held, in parallel with the reader) and the reader's copy is
 * the only one under the lock.
 *
 * The catch: a lent page must not change until the reader has consumed
 * it. Each lent page is one of the pipe's buffers, buffers are consumed in
 * order, and the pipe never holds more buffers than its size in pages. So
 * once `slots` (the pipe's current size in pages) more ring pages have
 * been lent after page P, P is no longer in the pipe and may be rewritten.
 * A resize cannot break this: the kernel refuses to shrink a pipe below
 * what it holds, and a released page stays released. Plain writes between
 * our splices take buffers too, which only moves P out sooner.
 *
 * This holds for a reader that consumes the pipe with read(), as every
 * execnet peer does; a reader that splices our pages onwards (into a
 * socket, say) could still hold them. Only connections on pipes use it. */

#include "execnet.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#define RING_BYTES (4 * 1024 * 1024)
/* at most this much is copied into the ring before it is lent, so that
 * our copy of the next part overlaps the reader's copy of this one */
#define CHUNK_BYTES (256 * 1024)

static size_t
page_size(void)
{
    static size_t size;
    if (size == 0) {
        long n = sysconf(_SC_PAGESIZE);
        size = n > 0 ? (size_t)n : 4096;
    }
    return size;
}

/* Lends data[0..n) to fd, all of it. Returns 0 or an errno value; -1
 * if vmsplice is refused before anything was lent (not a pipe, a
 * sandbox that forbids it). */
static int
lend(int fd, char *data, size_t n)
{
    int first = 1;
    while (n > 0) {
        struct iovec iov = {data, n};
        ssize_t done = vmsplice(fd, &iov, 1, 0);
        if (done < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (first && (errno == EINVAL || errno == EBADF || errno == ENOSYS || errno == EPERM)) {
                return -1;
            }
            return errno;
        }
        first = 0;
        data += done;
        n -= (size_t)done;
    }
    return 0;
}

int
xn_splice_write(xn_splice_ring *r, int fd, const xn_piece *pieces, Py_ssize_t count,
                Py_ssize_t *pieces_done, Py_ssize_t *offset_done)
{
    size_t page = page_size();
    if (r->unusable) {
        return 0;
    }
    if (r->base == NULL) {
        void *base =
            mmap(NULL, RING_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED) {
            return 0; /* not now: the caller writes it all */
        }
#ifdef MADV_WIPEONFORK
        /* a forked child gets fresh pages here instead of sharing ours
         * (which would cost us a copy of each page we then rewrite); a
         * refusal leaves copy on write, which is as safe */
        (void)madvise(base, RING_BYTES, MADV_WIPEONFORK);
#endif
        r->base = base;
        r->pages = RING_BYTES / page;
    }
    Py_ssize_t next = *pieces_done, offset = *offset_done;
    while (next < count) {
        int size = fcntl(fd, F_GETPIPE_SZ);
        if (size <= 0) {
            break;
        }
        uint64_t slots = (uint64_t)size / page;
        if (slots + CHUNK_BYTES / page > r->pages) {
            break; /* a pipe this big would still hold pages we rewrite */
        }
        size_t start = (size_t)(r->lent % r->pages);
        size_t room = (r->pages - start) * page;
        if (room > CHUNK_BYTES) {
            room = CHUNK_BYTES;
        }
        /* the pages from start on were lent at least r->pages pages ago,
         * more than slots: released. Fill as much as allowed. */
        char *chunk = r->base + start * page;
        size_t filled = 0;
        while (filled < room && next < count) {
            size_t n = (size_t)(pieces[next].size - offset);
            if (n > room - filled) {
                n = room - filled;
            }
            memcpy(chunk + filled, pieces[next].data + offset, n);
            filled += n;
            offset += (Py_ssize_t)n;
            if (offset == pieces[next].size) {
                next++;
                offset = 0;
            }
        }
        int err = lend(fd, chunk, filled);
        if (err == -1) {
            r->unusable = 1; /* the caller writes this chunk and the rest */
            return 0;
        }
        if (err != 0) {
            return err;
        }
        r->lent += (filled + page - 1) / page;
        *pieces_done = next;
        *offset_done = offset;
    }
    return 0;
}

void
xn_splice_ring_free(xn_splice_ring *r)
{
    if (r->base != NULL) {
        munmap(r->base, RING_BYTES);
    }
    r->base = NULL;
}
