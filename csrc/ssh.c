/* ssh.c: native SSH sessions over libssh2 for ssh= gateways.
 * The module execnet._ssh, an extension of its own so that only processes
 * that open ssh= gateways load libssh2 and libcrypto (about 1.4 ms).
 * Owns the SshSession type: one TCP connection, its libssh2 session and
 * the pump thread that moves bytes between exec channels and local pipes. */

#include "execnet.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <libssh2.h>

/* bytes buffered per direction and channel */
#define XN_SSH_BUF (64 * 1024)

/* where a channel is in its life */
enum {
    CH_REQUESTED, /* waiting for the pump to open it */
    CH_RUNNING,   /* exec done: bytes flow */
    CH_KILLING,   /* asking sshd to send SIGKILL to the remote command */
    CH_CLOSING,   /* closing the channel */
    CH_FREEING,   /* freeing the libssh2 channel */
    CH_DONE,      /* over: exit_status is final */
    CH_FAILED,    /* could not be opened: error says why */
};

typedef struct xn_sshchan {
    struct xn_sshchan *next;
    int id;
    int state;
    char *command;
    LIBSSH2_CHANNEL *ch;
    int exec_started;
    /* the pump's ends of the gateway's pipes (-1 when closed) */
    int in_fd;  /* the gateway's bytes for the remote */
    int out_fd; /* the remote's bytes for the gateway */
    char *inbuf, *outbuf;
    size_t in_start, in_end, out_start, out_end;
    int local_eof;     /* the gateway closed its writing end */
    int eof_sent;      /* the remote was told */
    int write_pending; /* a channel write left a packet half sent */
    int close_req;     /* Python asked for the channel to end */
    int exit_status;   /* -1: none reported */
    char error[200];
} xn_sshchan;

typedef struct {
    int sock;
    LIBSSH2_SESSION *s;
    pthread_mutex_t lock; /* everything below; the session once started */
    pthread_cond_t cond;  /* a channel changed state (monotonic clock) */
    int wake[2];          /* Python -> pump: look at the requests */
    pthread_t thread;
    int started, stop, dead;
    char dead_text[200];
    xn_sshchan *chans;
    int next_id;
    int busy;    /* a blocking call runs before start() */
    int users;   /* threads using the core without the GIL (enter_core) */
    int closing; /* close() runs: waiters leave */
    /* the remotes' stderr, read under lock, written to ours without it */
    char errbuf[4096];
    size_t errlen;
} xn_ssh_core;

typedef struct {
    PyObject_HEAD
    xn_ssh_core *core; /* NULL once closed */
} xn_ssh_session;

/* ---- helpers ---------------------------------------------------------- */

/* Returns the text of the session's last error (static storage of the
 * session, valid until its next call). */
static const char *
last_error_text(LIBSSH2_SESSION *s)
{
    char *msg = NULL;
    int len = 0;
    libssh2_session_last_error(s, &msg, &len, 0);
    return msg != NULL && len > 0 ? msg : "unknown libssh2 error";
}

/* Returns 1 if rc is an error of one channel, 0 if it ends the session. */
static int
is_channel_error(int rc)
{
    return rc == LIBSSH2_ERROR_CHANNEL_OUTOFORDER || rc == LIBSSH2_ERROR_CHANNEL_FAILURE ||
           rc == LIBSSH2_ERROR_CHANNEL_REQUEST_DENIED || rc == LIBSSH2_ERROR_CHANNEL_UNKNOWN ||
           rc == LIBSSH2_ERROR_CHANNEL_WINDOW_EXCEEDED ||
           rc == LIBSSH2_ERROR_CHANNEL_PACKET_EXCEEDED || rc == LIBSSH2_ERROR_CHANNEL_CLOSED ||
           rc == LIBSSH2_ERROR_CHANNEL_EOF_SENT;
}

/* Closes *fd if open and marks it closed (returns nothing). */
static void
close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* Returns 0 with *rd, *wr a close-on-exec pipe, or -1 with errno set. */
static int
make_pipe(int *rd, int *wr)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        return -1;
    }
    *rd = p[0];
    *wr = p[1];
    return 0;
}

/* Returns 0 having made fd non-blocking, or -1 with errno set. */
static int
set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        return -1;
    }
    return 0;
}

/* Frees a channel record whose libssh2 channel is gone (returns nothing). */
static void
chan_free(xn_sshchan *c)
{
    close_fd(&c->in_fd);
    close_fd(&c->out_fd);
    free(c->inbuf);
    free(c->outbuf);
    free(c->command);
    free(c);
}

/* Returns the channel with id in core (borrowed), or NULL. */
static xn_sshchan *
find_chan(xn_ssh_core *core, int id)
{
    for (xn_sshchan *c = core->chans; c != NULL; c = c->next) {
        if (c->id == id) {
            return c;
        }
    }
    return NULL;
}

/* Wakes the pump thread (returns nothing; the pipe may already be full). */
static void
wake_pump(xn_ssh_core *core)
{
    char b = 1;
    ssize_t n = write(core->wake[1], &b, 1);
    (void)n;
}

/* ---- the pump thread -------------------------------------------------- */

/* Ends channel c: its pipes close, its state becomes final (returns
 * nothing; core->lock held). */
static void
chan_finish(xn_ssh_core *core, xn_sshchan *c, int state)
{
    close_fd(&c->in_fd);
    close_fd(&c->out_fd);
    free(c->inbuf);
    free(c->outbuf);
    c->inbuf = c->outbuf = NULL;
    c->state = state;
    pthread_cond_broadcast(&core->cond);
}

/* The connection is gone: every channel ends as an ssh client would,
 * with status 255 (returns nothing; core->lock held). */
static void
session_died(xn_ssh_core *core, int rc)
{
    if (!core->dead) {
        core->dead = 1;
        snprintf(core->dead_text, sizeof core->dead_text, "ssh connection lost: %s (%d)",
                 last_error_text(core->s), rc);
    }
    for (xn_sshchan *c = core->chans; c != NULL; c = c->next) {
        if (c->state == CH_REQUESTED) {
            snprintf(c->error, sizeof c->error, "%s", core->dead_text);
            chan_finish(core, c, CH_FAILED);
        }
        else if (c->state != CH_DONE && c->state != CH_FAILED) {
            /* the libssh2 channel is freed with the session */
            c->exit_status = 255;
            chan_finish(core, c, CH_DONE);
        }
    }
}

/* Advances the opening of c.  Returns 1 if it made progress, 0 if it
 * waits for the socket, -1 if the session failed (rc in *err). */
static int
pump_open(xn_ssh_core *core, xn_sshchan *c, int *err)
{
    int rc;
    if (c->close_req) {
        snprintf(c->error, sizeof c->error, "channel abandoned while opening");
        if (c->ch == NULL) {
            chan_finish(core, c, CH_FAILED);
            return 1;
        }
        c->state = CH_CLOSING; /* a libssh2 channel to be closed */
        close_fd(&c->out_fd);
        return 1;
    }
    if (c->ch == NULL) {
        c->ch = libssh2_channel_open_session(core->s);
        if (c->ch == NULL) {
            rc = libssh2_session_last_errno(core->s);
            if (rc == LIBSSH2_ERROR_EAGAIN) {
                return 0;
            }
            if (is_channel_error(rc)) {
                snprintf(c->error, sizeof c->error, "cannot open an ssh channel: %s",
                         last_error_text(core->s));
                chan_finish(core, c, CH_FAILED);
                return 1;
            }
            *err = rc;
            return -1;
        }
    }
    rc = libssh2_channel_exec(c->ch, c->command);
    if (rc == LIBSSH2_ERROR_EAGAIN) {
        return 0;
    }
    if (rc < 0) {
        if (!is_channel_error(rc)) {
            *err = rc;
            return -1;
        }
        snprintf(c->error, sizeof c->error, "cannot run the remote command: %s",
                 last_error_text(core->s));
        /* the waiter sees the error now; the channel is closed later */
        c->state = CH_CLOSING;
        c->exit_status = -1;
        close_fd(&c->out_fd);
        pthread_cond_broadcast(&core->cond);
        return 1;
    }
    c->state = CH_RUNNING;
    pthread_cond_broadcast(&core->cond);
    return 1;
}

/* Moves what it can between c's pipes and its channel.  Returns 1 if
 * anything moved, 0 if nothing could, -1 if the session failed (rc in
 * *err).  Sets *want_in / *want_out when the pipes are worth polling. */
static int
pump_running(xn_ssh_core *core, xn_sshchan *c, int *err, short *want_in, short *want_out)
{
    int progress = 0;
    ssize_t n = 0;

    *want_in = *want_out = 0;
    /* the remote's stderr goes to ours, as the ssh program does it (by
     * pump_main, which writes it without holding the lock: a stderr that
     * blocks must not block the threads that wait for that lock) */
    while (core->errlen < sizeof core->errbuf) {
        n = libssh2_channel_read_stderr(c->ch, core->errbuf + core->errlen,
                                        sizeof core->errbuf - core->errlen);
        if (n <= 0) {
            break;
        }
        core->errlen += (size_t)n;
        progress = 1;
    }
    if (n < 0 && n != LIBSSH2_ERROR_EAGAIN && !is_channel_error((int)n)) {
        *err = (int)n;
        return -1;
    }
    /* remote -> gateway (dropped once the gateway stopped reading) */
    while (c->out_end < XN_SSH_BUF) {
        n = libssh2_channel_read(c->ch, c->outbuf + c->out_end, XN_SSH_BUF - c->out_end);
        if (n > 0) {
            c->out_end = c->out_fd >= 0 ? c->out_end + (size_t)n : 0;
            progress = 1;
            continue;
        }
        if (n < 0 && n != LIBSSH2_ERROR_EAGAIN && !is_channel_error((int)n)) {
            *err = (int)n;
            return -1;
        }
        break;
    }
    while (c->out_fd >= 0 && c->out_start < c->out_end) {
        n = write(c->out_fd, c->outbuf + c->out_start, c->out_end - c->out_start);
        if (n > 0) {
            c->out_start += (size_t)n;
            progress = 1;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            *want_out = POLLOUT;
        }
        else {
            /* the gateway stopped reading: drop what it would not take */
            close_fd(&c->out_fd);
        }
        break;
    }
    if (c->out_start == c->out_end) {
        c->out_start = c->out_end = 0;
    }
    /* gateway -> remote */
    for (;;) {
        if (c->in_start == c->in_end && !c->local_eof && c->in_fd >= 0) {
            c->in_start = c->in_end = 0;
            n = read(c->in_fd, c->inbuf, XN_SSH_BUF);
            if (n > 0) {
                c->in_end = (size_t)n;
                progress = 1;
            }
            else if (n < 0 && errno == EINTR) {
                continue;
            }
            else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                *want_in = POLLIN;
                break;
            }
            else {
                c->local_eof = 1;
                progress = 1;
            }
        }
        if (c->in_start == c->in_end) {
            break;
        }
        n = libssh2_channel_write(c->ch, c->inbuf + c->in_start, c->in_end - c->in_start);
        if (n > 0) {
            c->in_start += (size_t)n;
            c->write_pending = 0;
            progress = 1;
            continue;
        }
        if (n == LIBSSH2_ERROR_EAGAIN) {
            c->write_pending =
                (libssh2_session_block_directions(core->s) & LIBSSH2_SESSION_BLOCK_OUTBOUND) != 0;
            break;
        }
        c->write_pending = 0;
        if (n < 0 && !is_channel_error((int)n)) {
            *err = (int)n;
            return -1;
        }
        /* the remote closed its input: nothing more goes there */
        c->in_start = c->in_end = 0;
        c->local_eof = 1;
        close_fd(&c->in_fd);
        break;
    }
    if (c->local_eof && c->in_start == c->in_end && !c->eof_sent) {
        int rc = libssh2_channel_send_eof(c->ch);
        if (rc == 0 || (rc < 0 && is_channel_error(rc))) {
            c->eof_sent = 1;
            progress = 1;
        }
        else if (rc != LIBSSH2_ERROR_EAGAIN) {
            *err = rc;
            return -1;
        }
    }
    /* the remote is done: the gateway gets end of file */
    if (libssh2_channel_eof(c->ch) && c->out_start == c->out_end) {
        close_fd(&c->out_fd);
        if (!c->write_pending) {
            c->state = CH_CLOSING;
        }
        progress = 1;
    }
    if (c->close_req && !c->write_pending) {
        close_fd(&c->out_fd);
        c->state = CH_KILLING;
        progress = 1;
    }
    return progress;
}

/* Advances the "signal" request that kills c's remote command (RFC 4254
 * §6.9; sshd may refuse it, then closing the channel has to do).  Returns
 * 1 on progress, 0 if it waits, -1 if the session failed (rc in *err). */
static int
pump_kill(xn_sshchan *c, int *err)
{
    int rc = libssh2_channel_process_startup(c->ch, "signal", 6, "KILL", 4);
    if (rc == LIBSSH2_ERROR_EAGAIN) {
        return 0;
    }
    if (rc < 0 && !is_channel_error(rc)) {
        *err = rc;
        return -1;
    }
    c->state = CH_CLOSING;
    return 1;
}

/* Advances the closing of c.  Returns 1 on progress, 0 if it waits, -1 if
 * the session failed (rc in *err). */
static int
pump_close(xn_ssh_core *core, xn_sshchan *c, int *err)
{
    int rc;
    if (c->state == CH_CLOSING) {
        rc = libssh2_channel_close(c->ch);
        if (rc == LIBSSH2_ERROR_EAGAIN) {
            return 0;
        }
        if (rc < 0 && !is_channel_error(rc)) {
            *err = rc;
            return -1;
        }
        if (c->error[0] == '\0') {
            char *signal = NULL;
            libssh2_channel_get_exit_signal(c->ch, &signal, NULL, NULL, NULL, NULL, NULL);
            if (signal != NULL) {
                c->exit_status = -1; /* killed: no status */
                libssh2_free(core->s, signal);
            }
            else {
                c->exit_status = libssh2_channel_get_exit_status(c->ch);
            }
        }
        c->state = CH_FREEING;
    }
    rc = libssh2_channel_free(c->ch);
    if (rc == LIBSSH2_ERROR_EAGAIN) {
        return 0;
    }
    c->ch = NULL;
    if (rc < 0 && !is_channel_error(rc)) {
        *err = rc;
        return -1;
    }
    chan_finish(core, c, c->error[0] ? CH_FAILED : CH_DONE);
    return 1;
}

/* One pass over every channel.  Returns 1 on progress, 0 if everything
 * waits, -1 if the session failed (rc in *err).  Fills fds[2..] with the
 * pipes worth polling and counts them in *nfds; *queued is set when a
 * channel has bytes waiting inside libssh2. */
static int
pump_pass(xn_ssh_core *core, struct pollfd *fds, int *nfds, int maxfds, int *active, int *queued,
          int *err)
{
    int progress = 0, opening = 0, r;
    *active = 0;
    *queued = 0;
    for (xn_sshchan *c = core->chans; c != NULL; c = c->next) {
        short want_in = 0, want_out = 0;
        switch (c->state) {
        case CH_REQUESTED:
            /* libssh2 opens one channel at a time */
            if (opening) {
                continue;
            }
            opening = 1;
            r = pump_open(core, c, err);
            break;
        case CH_RUNNING:
            r = pump_running(core, c, err, &want_in, &want_out);
            break;
        case CH_KILLING:
            r = pump_kill(c, err);
            break;
        case CH_CLOSING:
        case CH_FREEING:
            r = pump_close(core, c, err);
            break;
        default:
            continue;
        }
        if (r < 0) {
            return -1;
        }
        progress |= r;
        if (c->state != CH_DONE && c->state != CH_FAILED) {
            *active = 1;
        }
        if (c->state == CH_RUNNING) {
            if (want_in && c->in_fd >= 0 && *nfds < maxfds) {
                fds[*nfds].fd = c->in_fd;
                fds[*nfds].events = POLLIN;
                (*nfds)++;
            }
            if (want_out && c->out_fd >= 0 && *nfds < maxfds) {
                fds[*nfds].fd = c->out_fd;
                fds[*nfds].events = POLLOUT;
                (*nfds)++;
            }
            if (c->out_end < XN_SSH_BUF && libssh2_channel_window_read_ex(c->ch, NULL, NULL) > 0) {
                *queued = 1;
            }
        }
    }
    return progress;
}

/* Returns the number of channel records (core->lock held). */
static int
count_chans(xn_ssh_core *core)
{
    int n = 0;
    for (xn_sshchan *c = core->chans; c != NULL; c = c->next) {
        n++;
    }
    return n;
}

/* Writes the remotes' stderr gathered in core->errbuf to ours, without
 * core->lock meanwhile (held on entry and on return). Returns nothing. */
static void
flush_stderr(xn_ssh_core *core)
{
    char text[sizeof core->errbuf];
    size_t len = core->errlen;
    if (len == 0) {
        return;
    }
    memcpy(text, core->errbuf, len);
    core->errlen = 0;
    pthread_mutex_unlock(&core->lock);
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(STDERR_FILENO, text + done, len - done);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            break; /* nowhere to report it */
        }
        done += (size_t)w;
    }
    pthread_mutex_lock(&core->lock);
}

/* The pump thread: drives the non-blocking session until stop.  Waits in
 * poll() on the socket, the wake pipe and the channels' pipes whenever no
 * byte can move.  Returns NULL. */
static void *
pump_main(void *arg)
{
    xn_ssh_core *core = (xn_ssh_core *)arg;
    struct pollfd *fds = NULL;
    int maxfds = 0, quiet = 0;

    pthread_mutex_lock(&core->lock);
    while (!core->stop) {
        int nfds = 2, active = 0, queued = 0, err = 0, r = 0;
        int want = 2 + 2 * count_chans(core);
        if (want > maxfds) {
            struct pollfd *bigger = realloc(fds, (size_t)want * sizeof *fds);
            if (bigger == NULL) {
                /* out of memory: stop driving the session */
                session_died(core, LIBSSH2_ERROR_ALLOC);
                break;
            }
            fds = bigger;
            maxfds = want;
        }
        if (!core->dead) {
            r = pump_pass(core, fds, &nfds, maxfds, &active, &queued, &err);
            flush_stderr(core);
            if (r < 0) {
                session_died(core, err);
                continue;
            }
        }
        if (r > 0) {
            quiet = 0;
            continue;
        }
        /* bytes sitting in libssh2 are read by the next pass; two quiet
         * passes in a row mean they cannot move now */
        if (queued && ++quiet < 2) {
            continue;
        }
        quiet = 0;
        fds[0].fd = core->wake[0];
        fds[0].events = POLLIN;
        fds[1].fd = -1; /* idle or dead: the socket is not watched */
        fds[1].events = 0;
        if (active && !core->dead) {
            int dirs = libssh2_session_block_directions(core->s);
            fds[1].fd = core->sock;
            fds[1].events = POLLIN;
            if (dirs & LIBSSH2_SESSION_BLOCK_OUTBOUND) {
                fds[1].events |= POLLOUT;
            }
        }
        pthread_mutex_unlock(&core->lock);
        r = poll(fds, (nfds_t)nfds, -1);
        pthread_mutex_lock(&core->lock);
        if (r < 0 && errno != EINTR) {
            session_died(core, LIBSSH2_ERROR_SOCKET_NONE);
        }
        if (r > 0 && (fds[0].revents & POLLIN)) {
            char drain[64];
            while (read(core->wake[0], drain, sizeof drain) > 0) {
            }
        }
    }
    pthread_mutex_unlock(&core->lock);
    free(fds);
    return NULL;
}

/* ---- the core's life ---------------------------------------------------- */

/* Frees core: stops the pump, closes every pipe and the socket first (so
 * that nothing below can block on the network), then frees libssh2's
 * objects.  Called without the GIL; returns nothing. */
static void
core_free(xn_ssh_core *core, int disconnect)
{
    if (core->started) {
        pthread_mutex_lock(&core->lock);
        core->stop = 1;
        pthread_mutex_unlock(&core->lock);
        wake_pump(core);
        pthread_join(core->thread, NULL);
    }
    if (disconnect && core->s != NULL && !core->dead) {
        /* a polite goodbye, bounded in time */
        libssh2_session_set_timeout(core->s, 1000);
        libssh2_session_set_blocking(core->s, 1);
        for (xn_sshchan *c = core->chans; c != NULL; c = c->next) {
            if (c->ch != NULL) {
                libssh2_channel_free(c->ch);
                c->ch = NULL;
            }
        }
        libssh2_session_disconnect(core->s, "execnet: closing");
    }
    /* from here on every send and receive fails at once; the descriptor
     * stays ours until libssh2 is done with it */
    if (core->sock >= 0) {
        shutdown(core->sock, SHUT_RDWR);
    }
    if (core->s != NULL) {
        libssh2_session_free(core->s); /* frees the channels left */
    }
    close_fd(&core->sock);
    while (core->chans != NULL) {
        xn_sshchan *c = core->chans;
        core->chans = c->next;
        chan_free(c);
    }
    close_fd(&core->wake[0]);
    close_fd(&core->wake[1]);
    pthread_cond_destroy(&core->cond);
    pthread_mutex_destroy(&core->lock);
    free(core);
}

/* ---- the Python type ---------------------------------------------------- */

/* the module's state */
typedef struct {
    PyTypeObject *SshSessionType;
    PyObject *SshError;
} ssh_state;

static struct PyModuleDef ssh_module_def;

/* Returns the module's SshError class (borrowed), or NULL with an
 * exception set. */
static PyObject *
ssh_error_class(PyObject *self)
{
    PyObject *module = xn_module_of_type(Py_TYPE(self), &ssh_module_def);
    if (module == NULL) {
        return NULL;
    }
    return ((ssh_state *)PyModule_GetState(module))->SshError;
}

/* Raises SshError(fmt % ...) (PyUnicode_FromFormat's formats).  Returns
 * NULL. */
static PyObject *
raise_ssh_errorf(PyObject *self, const char *fmt, ...)
{
    PyObject *cls = ssh_error_class(self);
    if (cls != NULL) {
        va_list ap;
        va_start(ap, fmt);
        PyErr_FormatV(cls, fmt, ap);
        va_end(ap);
    }
    return NULL;
}

/* Raises SshError(text).  Returns NULL. */
static PyObject *
raise_ssh_error(PyObject *self, const char *text)
{
    return raise_ssh_errorf(self, "%s", text);
}

/* Returns self's core if open and not started, marked busy; or NULL with
 * an exception set.  The caller clears busy again. */
static xn_ssh_core *
claim_setup(xn_ssh_session *self)
{
    xn_ssh_core *core = self->core;
    if (core == NULL) {
        raise_ssh_error((PyObject *)self, "the ssh session is closed");
        return NULL;
    }
    if (core->started) {
        raise_ssh_error((PyObject *)self, "the ssh session is already started");
        return NULL;
    }
    if (core->busy) {
        PyErr_SetString(PyExc_RuntimeError, "another thread is using this ssh session");
        return NULL;
    }
    core->busy = 1;
    return core;
}

/* SshSession(fd, timeout): takes over the connected socket fd.  Returns
 * the new session, or NULL with an exception set (fd is closed then). */
static PyObject *
session_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"fd", "timeout", NULL};
    int fd;
    double timeout;
    xn_ssh_core *core = NULL;
    xn_ssh_session *self = NULL;
    pthread_condattr_t attr;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "id:SshSession", kwlist, &fd, &timeout)) {
        return NULL;
    }
    core = calloc(1, sizeof *core);
    if (core == NULL) {
        close(fd);
        return PyErr_NoMemory();
    }
    core->sock = fd;
    core->wake[0] = core->wake[1] = -1;
    core->next_id = 1;
    pthread_mutex_init(&core->lock, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&core->cond, &attr);
    pthread_condattr_destroy(&attr);
    if (make_pipe(&core->wake[0], &core->wake[1]) < 0 || set_nonblocking(core->wake[0]) < 0 ||
        set_nonblocking(core->wake[1]) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto error;
    }
    core->s = libssh2_session_init();
    if (core->s == NULL) {
        PyErr_SetString(PyExc_MemoryError, "libssh2_session_init failed");
        goto error;
    }
    libssh2_session_set_blocking(core->s, 1);
    libssh2_session_set_timeout(core->s, (long)(timeout * 1000.0));
    self = (xn_ssh_session *)type->tp_alloc(type, 0);
    if (self == NULL) {
        goto error;
    }
    self->core = core;
    return (PyObject *)self;

error:
    core_free(core, 0);
    return NULL;
}

/* set_hostkey_methods(prefs): the host key algorithms to offer, best
 * first, comma-separated (those libssh2 lacks are left out).  Returns
 * None, or NULL with SshError set. */
static PyObject *
session_set_hostkey_methods(xn_ssh_session *self, PyObject *args)
{
    const char *prefs;
    int rc;
    xn_ssh_core *core;

    if (!PyArg_ParseTuple(args, "s:set_hostkey_methods", &prefs)) {
        return NULL;
    }
    core = claim_setup(self);
    if (core == NULL) {
        return NULL;
    }
    rc = libssh2_session_method_pref(core->s, LIBSSH2_METHOD_HOSTKEY, prefs);
    core->busy = 0;
    if (rc != 0) {
        return raise_ssh_errorf((PyObject *)self, "no usable host key algorithm in %s: %s", prefs,
                                last_error_text(core->s));
    }
    Py_RETURN_NONE;
}

/* handshake(): key exchange.  Returns None, or NULL with SshError set. */
static PyObject *
session_handshake(xn_ssh_session *self, PyObject *Py_UNUSED(ignored))
{
    xn_ssh_core *core = claim_setup(self);
    int rc;
    if (core == NULL) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
        rc = libssh2_session_handshake(core->s, core->sock);
    Py_END_ALLOW_THREADS
    core->busy = 0;
    if (rc != 0) {
        return raise_ssh_errorf((PyObject *)self, "ssh handshake failed: %s",
                                last_error_text(core->s));
    }
    Py_RETURN_NONE;
}

/* Returns the known-host key type bits for libssh2's host key type. */
static int
knownhost_keybits(int hostkey_type)
{
    switch (hostkey_type) {
    case LIBSSH2_HOSTKEY_TYPE_RSA:
        return LIBSSH2_KNOWNHOST_KEY_SSHRSA;
    case LIBSSH2_HOSTKEY_TYPE_DSS:
        return LIBSSH2_KNOWNHOST_KEY_SSHDSS;
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_256:
        return LIBSSH2_KNOWNHOST_KEY_ECDSA_256;
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_384:
        return LIBSSH2_KNOWNHOST_KEY_ECDSA_384;
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_521:
        return LIBSSH2_KNOWNHOST_KEY_ECDSA_521;
    case LIBSSH2_HOSTKEY_TYPE_ED25519:
        return LIBSSH2_KNOWNHOST_KEY_ED25519;
    default:
        return LIBSSH2_KNOWNHOST_KEY_UNKNOWN;
    }
}

/* check_host_key(path, host, port): the server's key against the known
 * hosts file.  Returns "match", "mismatch" or "notfound" (a str), or NULL
 * with an exception set.  Lines libssh2 cannot parse are skipped. */
static PyObject *
session_check_host_key(xn_ssh_session *self, PyObject *args)
{
    const char *path, *host;
    int port, type = 0, rc = LIBSSH2_KNOWNHOST_CHECK_NOTFOUND;
    size_t keylen = 0;
    const char *key;
    LIBSSH2_KNOWNHOSTS *kh = NULL;
    FILE *f = NULL;
    char line[16384];
    xn_ssh_core *core;

    if (!PyArg_ParseTuple(args, "ssi:check_host_key", &path, &host, &port)) {
        return NULL;
    }
    core = claim_setup(self);
    if (core == NULL) {
        return NULL;
    }
    key = libssh2_session_hostkey(core->s, &keylen, &type);
    if (key == NULL) {
        raise_ssh_error((PyObject *)self, "the server sent no host key");
        goto error;
    }
    kh = libssh2_knownhost_init(core->s);
    if (kh == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    Py_BEGIN_ALLOW_THREADS
        f = fopen(path, "r");
        if (f != NULL) {
            while (fgets(line, sizeof line, f) != NULL) {
                (void)libssh2_knownhost_readline(kh, line, strlen(line),
                                                 LIBSSH2_KNOWNHOST_FILE_OPENSSH);
            }
            fclose(f);
        }
        rc = libssh2_knownhost_checkp(kh, host, port, key, keylen,
                                      LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW |
                                          knownhost_keybits(type),
                                      NULL);
    Py_END_ALLOW_THREADS
    libssh2_knownhost_free(kh);
    core->busy = 0;
    switch (rc) {
    case LIBSSH2_KNOWNHOST_CHECK_MATCH:
        return PyUnicode_FromString("match");
    case LIBSSH2_KNOWNHOST_CHECK_MISMATCH:
        return PyUnicode_FromString("mismatch");
    case LIBSSH2_KNOWNHOST_CHECK_NOTFOUND:
        return PyUnicode_FromString("notfound");
    default:
        return raise_ssh_error((PyObject *)self, "checking the host key failed");
    }

error:
    core->busy = 0;
    return NULL;
}

/* host_key_line(name): the known_hosts line for the server's key under
 * name ("host" or "[host]:port").  Returns a new str, or NULL with an
 * exception set. */
static PyObject *
session_host_key_line(xn_ssh_session *self, PyObject *args)
{
    const char *name, *key;
    size_t keylen = 0, outlen = 0;
    int type = 0, rc;
    char line[16384];
    LIBSSH2_KNOWNHOSTS *kh = NULL;
    xn_ssh_core *core;

    if (!PyArg_ParseTuple(args, "s:host_key_line", &name)) {
        return NULL;
    }
    core = claim_setup(self);
    if (core == NULL) {
        return NULL;
    }
    key = libssh2_session_hostkey(core->s, &keylen, &type);
    kh = key == NULL ? NULL : libssh2_knownhost_init(core->s);
    if (kh == NULL) {
        raise_ssh_error((PyObject *)self, "no host key to record");
        goto error;
    }
    rc = libssh2_knownhost_addc(kh, name, NULL, key, keylen, NULL, 0,
                                LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW |
                                    knownhost_keybits(type),
                                NULL);
    if (rc == 0) {
        struct libssh2_knownhost *entry = NULL;
        rc = libssh2_knownhost_get(kh, &entry, NULL);
        if (rc == 0) {
            rc = libssh2_knownhost_writeline(kh, entry, line, sizeof line, &outlen,
                                             LIBSSH2_KNOWNHOST_FILE_OPENSSH);
        }
    }
    libssh2_knownhost_free(kh);
    if (rc != 0) {
        raise_ssh_error((PyObject *)self, "cannot format the host key");
        goto error;
    }
    core->busy = 0;
    return PyUnicode_FromStringAndSize(line, (Py_ssize_t)outlen);

error:
    core->busy = 0;
    return NULL;
}

/* auth_methods(user): the methods the server offers user.  Returns a str
 * ("" if the "none" method already succeeded), or NULL with an exception
 * set. */
static PyObject *
session_auth_methods(xn_ssh_session *self, PyObject *args)
{
    const char *user;
    char *list;
    Py_ssize_t ulen;
    xn_ssh_core *core;

    if (!PyArg_ParseTuple(args, "s#:auth_methods", &user, &ulen)) {
        return NULL;
    }
    core = claim_setup(self);
    if (core == NULL) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
        list = libssh2_userauth_list(core->s, user, (unsigned int)ulen);
    Py_END_ALLOW_THREADS
    core->busy = 0;
    if (list == NULL) {
        if (libssh2_userauth_authenticated(core->s)) {
            return PyUnicode_FromString("");
        }
        return raise_ssh_errorf((PyObject *)self, "ssh authentication failed: %s",
                                last_error_text(core->s));
    }
    return PyUnicode_FromString(list);
}

/* Returns 0 if the agent (at socket_path, or where SSH_AUTH_SOCK says if
 * NULL) authenticated user, else -1 with text describing why in
 * why[0..size) (no GIL needed). */
static int
agent_auth(xn_ssh_core *core, const char *user, const char *socket_path, char *why, size_t size)
{
    LIBSSH2_AGENT *agent = libssh2_agent_init(core->s);
    struct libssh2_agent_publickey *identity = NULL, *prev = NULL;
    int rc, tried = 0, result = -1;

    if (agent == NULL) {
        snprintf(why, size, "cannot use the agent");
        return -1;
    }
    if (socket_path != NULL) {
        libssh2_agent_set_identity_path(agent, socket_path);
    }
    if (libssh2_agent_connect(agent) != 0) {
        snprintf(why, size, "no agent");
        goto error;
    }
    if (libssh2_agent_list_identities(agent) != 0) {
        snprintf(why, size, "the agent did not list its keys");
        goto error;
    }
    for (;;) {
        rc = libssh2_agent_get_identity(agent, &identity, prev);
        if (rc != 0) {
            break;
        }
        tried++;
        if (libssh2_agent_userauth(agent, user, identity) == 0) {
            result = 0;
            break;
        }
        prev = identity;
    }
    if (result != 0) {
        snprintf(why, size, "%d agent key%s refused", tried, tried == 1 ? "" : "s");
    }
    libssh2_agent_disconnect(agent);

error:
    libssh2_agent_free(agent);
    return result;
}

/* auth_agent(user, socket_path=None): tries the keys of the ssh agent.
 * Returns None on success, a str saying why not otherwise, or NULL with an
 * exception set. */
static PyObject *
session_auth_agent(xn_ssh_session *self, PyObject *args)
{
    const char *user, *socket_path = NULL;
    char why[200] = "";
    int rc;
    xn_ssh_core *core;

    if (!PyArg_ParseTuple(args, "s|z:auth_agent", &user, &socket_path)) {
        return NULL;
    }
    core = claim_setup(self);
    if (core == NULL) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
        rc = agent_auth(core, user, socket_path, why, sizeof why);
    Py_END_ALLOW_THREADS
    core->busy = 0;
    if (rc == 0) {
        Py_RETURN_NONE;
    }
    return PyUnicode_FromString(why);
}

/* auth_key_file(user, path, passphrase=None): public key authentication
 * with a private key file.  Returns None on success, a str saying why not
 * otherwise, or NULL with an exception set. */
static PyObject *
session_auth_key_file(xn_ssh_session *self, PyObject *args)
{
    const char *user, *path, *passphrase = NULL;
    Py_ssize_t ulen;
    int rc;
    xn_ssh_core *core;

    if (!PyArg_ParseTuple(args, "s#s|z:auth_key_file", &user, &ulen, &path, &passphrase)) {
        return NULL;
    }
    core = claim_setup(self);
    if (core == NULL) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
        rc = libssh2_userauth_publickey_fromfile_ex(core->s, user, (unsigned int)ulen, NULL, path,
                                                    passphrase);
    Py_END_ALLOW_THREADS
    core->busy = 0;
    if (rc == 0) {
        Py_RETURN_NONE;
    }
    return PyUnicode_FromString(last_error_text(core->s));
}

/* start(): switches to non-blocking mode and starts the pump thread.
 * Returns None, or NULL with an exception set. */
static PyObject *
session_start(xn_ssh_session *self, PyObject *Py_UNUSED(ignored))
{
    xn_ssh_core *core = claim_setup(self);
    int rc;
    if (core == NULL) {
        return NULL;
    }
    if (!libssh2_userauth_authenticated(core->s)) {
        core->busy = 0;
        return raise_ssh_error((PyObject *)self, "not authenticated");
    }
    if (set_nonblocking(core->sock) < 0) {
        core->busy = 0;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    libssh2_session_set_blocking(core->s, 0);
    rc = pthread_create(&core->thread, NULL, pump_main, core);
    core->busy = 0;
    if (rc != 0) {
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    core->started = 1;
    Py_RETURN_NONE;
}

/* Returns the core of a started, open session, or NULL with an exception
 * set. */
static xn_ssh_core *
started_core(xn_ssh_session *self)
{
    if (self->core == NULL || !self->core->started) {
        raise_ssh_error((PyObject *)self, "the ssh session is not running");
        return NULL;
    }
    return self->core;
}

/* Counts the calling thread as a user of core, so that close() waits for
 * it to leave.  Called with the GIL held, which close() also holds when it
 * takes the core away; returns nothing. */
static void
enter_core(xn_ssh_core *core)
{
    pthread_mutex_lock(&core->lock);
    core->users++;
    pthread_mutex_unlock(&core->lock);
}

/* Ends the calling thread's use of core begun by enter_core(); close()
 * may free core once core->lock is released.  core->lock held, GIL or
 * not; returns nothing. */
static void
leave_core(xn_ssh_core *core)
{
    if (--core->users == 0) {
        pthread_cond_broadcast(&core->cond);
    }
}

/* Runs Python's signal handlers for a thread waiting in core: releases
 * core->lock and takes the GIL back through *save (the thread state
 * Py_BEGIN_ALLOW_THREADS saved) meanwhile.  core->lock held, no GIL.
 * Returns 1 if a handler raised (the exception is set), else 0. */
static int
signal_raised(xn_ssh_core *core, PyThreadState **save)
{
    int raised;
    pthread_mutex_unlock(&core->lock);
    PyEval_RestoreThread(*save);
    raised = PyErr_CheckSignals() < 0;
    *save = PyEval_SaveThread();
    pthread_mutex_lock(&core->lock);
    return raised;
}

/* Waits on core->cond until deadline_ns (monotonic; <0: a slice of 50 ms
 * for Ctrl-C).  core->lock held, no GIL.  Returns nothing. */
static void
wait_until(xn_ssh_core *core, int64_t deadline_ns)
{
    struct timespec ts;
    int64_t until = xn_monotonic_ns() + 50000000;
    if (deadline_ns >= 0 && deadline_ns < until) {
        until = deadline_ns;
    }
    ts.tv_sec = (time_t)(until / 1000000000);
    ts.tv_nsec = (long)(until % 1000000000);
    pthread_cond_timedwait(&core->cond, &core->lock, &ts);
}

/* Returns a deadline in monotonic ns for timeout (None: -1), or -2 with
 * an exception set. */
static int64_t
deadline_of(PyObject *timeout)
{
    int64_t deadline;
    return xn_deadline(timeout, &deadline) < 0 ? -2 : deadline;
}

/* open_channel(command, timeout=None): runs command on a new channel.
 * Returns (id, read_fd, write_fd) for the gateway's side, or NULL with an
 * exception set. */
static PyObject *
session_open_channel(xn_ssh_session *self, PyObject *args)
{
    const char *command;
    PyObject *timeout = NULL, *result = NULL;
    xn_ssh_core *core;
    xn_sshchan *c = NULL;
    int gw_read = -1, gw_write = -1, state = CH_FAILED, id = 0, interrupted = 0;
    int64_t deadline;
    char error[200] = "";

    /* arguments first: converting them may run Python code, close() too */
    if (!PyArg_ParseTuple(args, "s|O:open_channel", &command, &timeout)) {
        return NULL;
    }
    deadline = deadline_of(timeout);
    if (deadline == -2) {
        return NULL;
    }
    core = started_core(self);
    if (core == NULL) {
        return NULL;
    }
    c = calloc(1, sizeof *c);
    if (c == NULL) {
        return PyErr_NoMemory();
    }
    c->in_fd = c->out_fd = -1;
    c->exit_status = -1;
    c->command = strdup(command);
    c->inbuf = malloc(XN_SSH_BUF);
    c->outbuf = malloc(XN_SSH_BUF);
    if (c->command == NULL || c->inbuf == NULL || c->outbuf == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    if (make_pipe(&c->in_fd, &gw_write) < 0 || make_pipe(&gw_read, &c->out_fd) < 0 ||
        set_nonblocking(c->in_fd) < 0 || set_nonblocking(c->out_fd) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto error;
    }
    enter_core(core);
    Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&core->lock);
        if (core->dead) {
            snprintf(error, sizeof error, "%s", core->dead_text);
            state = CH_FAILED;
        }
        else {
            xn_sshchan **tail = &core->chans;
            while (*tail != NULL) {
                tail = &(*tail)->next;
            }
            c->id = core->next_id++;
            *tail = c;
            wake_pump(core);
            for (;;) {
                state = c->state;
                if (state != CH_REQUESTED) {
                    break;
                }
                if (core->closing) {
                    snprintf(error, sizeof error, "the ssh session was closed");
                    break;
                }
                if (deadline >= 0 && xn_monotonic_ns() >= deadline) {
                    c->close_req = 1;
                    wake_pump(core);
                    snprintf(error, sizeof error, "timed out opening an ssh channel");
                    break;
                }
                interrupted = signal_raised(core, &_save);
                if (interrupted) {
                    c->close_req = 1;
                    wake_pump(core);
                    break;
                }
                wait_until(core, deadline);
            }
            if (error[0] == '\0' && !interrupted && (state == CH_FAILED || c->error[0] != '\0')) {
                snprintf(error, sizeof error, "%s",
                         c->error[0] ? c->error : "cannot open an ssh channel");
            }
            id = c->id;
            c = NULL; /* the pump owns it now */
        }
        leave_core(core);
        pthread_mutex_unlock(&core->lock);
    Py_END_ALLOW_THREADS
    if (interrupted) {
        goto error;
    }
    if (error[0] != '\0') {
        raise_ssh_error((PyObject *)self, error);
        goto error;
    }
    result = Py_BuildValue("(iii)", id, gw_read, gw_write);
    if (result == NULL) {
        goto error;
    }
    return result;

error:
    close_fd(&gw_read);
    close_fd(&gw_write);
    if (c != NULL) {
        chan_free(c);
    }
    return NULL;
}

/* close_channel(id): asks for the channel to end (its pipes close, the
 * remote sees the channel closed).  Returns None, or NULL with an
 * exception set. */
static PyObject *
session_close_channel(xn_ssh_session *self, PyObject *args)
{
    int id;
    xn_ssh_core *core;
    if (!PyArg_ParseTuple(args, "i:close_channel", &id)) {
        return NULL;
    }
    core = started_core(self);
    if (core == NULL) {
        return NULL;
    }
    enter_core(core);
    Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&core->lock);
        xn_sshchan *c = find_chan(core, id);
        if (c != NULL) {
            c->close_req = 1;
            wake_pump(core);
        }
        leave_core(core);
        pthread_mutex_unlock(&core->lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* wait_channel(id, timeout=None): waits for the channel to end.  Returns
 * its exit status (an int; -1 if the remote reported none), None on
 * timeout, or NULL with an exception set. */
static PyObject *
session_wait_channel(xn_ssh_session *self, PyObject *args)
{
    int id, done = 0, status = -1, known = 1, interrupted = 0;
    PyObject *timeout = NULL;
    int64_t deadline;
    xn_ssh_core *core;

    if (!PyArg_ParseTuple(args, "i|O:wait_channel", &id, &timeout)) {
        return NULL;
    }
    deadline = deadline_of(timeout);
    if (deadline == -2) {
        return NULL;
    }
    core = started_core(self);
    if (core == NULL) {
        return NULL;
    }
    enter_core(core);
    Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&core->lock);
        for (;;) {
            xn_sshchan *c = find_chan(core, id);
            if (c == NULL) {
                known = 0;
                break;
            }
            if (c->state == CH_DONE || c->state == CH_FAILED) {
                done = 1;
                status = c->exit_status;
                break;
            }
            if (core->closing || (deadline >= 0 && xn_monotonic_ns() >= deadline)) {
                break;
            }
            interrupted = signal_raised(core, &_save);
            if (interrupted) {
                break;
            }
            wait_until(core, deadline);
        }
        leave_core(core);
        pthread_mutex_unlock(&core->lock);
    Py_END_ALLOW_THREADS
    if (interrupted) {
        return NULL;
    }
    if (!known) {
        PyErr_Format(PyExc_KeyError, "no ssh channel %d", id);
        return NULL;
    }
    if (!done) {
        Py_RETURN_NONE;
    }
    return PyLong_FromLong(status);
}

/* close(): ends every channel and the connection.  Returns None. */
static PyObject *
session_close(xn_ssh_session *self, PyObject *Py_UNUSED(ignored))
{
    xn_ssh_core *core = self->core;
    if (core == NULL) {
        Py_RETURN_NONE;
    }
    if (core->busy) {
        PyErr_SetString(PyExc_RuntimeError, "another thread is using this ssh session");
        return NULL;
    }
    self->core = NULL;
    Py_BEGIN_ALLOW_THREADS
        /* threads waiting in the core leave before it goes */
        pthread_mutex_lock(&core->lock);
        core->closing = 1;
        pthread_cond_broadcast(&core->cond);
        while (core->users > 0) {
            pthread_cond_wait(&core->cond, &core->lock);
        }
        pthread_mutex_unlock(&core->lock);
        core_free(core, 1);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* Returns self.alive: True while the connection works (a new bool). */
static PyObject *
session_get_alive(xn_ssh_session *self, void *Py_UNUSED(closure))
{
    int alive = 0;
    xn_ssh_core *core = self->core;
    if (core != NULL) {
        /* with the GIL, which close() holds to take the core away; the
         * pump holds the lock only briefly (as for enter_core) */
        pthread_mutex_lock(&core->lock);
        alive = !core->dead;
        pthread_mutex_unlock(&core->lock);
    }
    return PyBool_FromLong(alive);
}

/* Returns self.open_channels: channels not yet over (a new int). */
static PyObject *
session_get_open_channels(xn_ssh_session *self, void *Py_UNUSED(closure))
{
    long n = 0;
    xn_ssh_core *core = self->core;
    if (core != NULL) {
        pthread_mutex_lock(&core->lock); /* GIL held: as in alive */
        for (xn_sshchan *c = core->chans; c != NULL; c = c->next) {
            n += c->state != CH_DONE && c->state != CH_FAILED;
        }
        pthread_mutex_unlock(&core->lock);
    }
    return PyLong_FromLong(n);
}

/* Frees the session; one still open is torn down without a goodbye
 * (its socket is closed before libssh2 is freed, so no IO blocks). */
static void
session_dealloc(xn_ssh_session *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->core != NULL) {
        xn_ssh_core *core = self->core;
        self->core = NULL;
        Py_BEGIN_ALLOW_THREADS
            core_free(core, 0);
        Py_END_ALLOW_THREADS
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef session_methods[] = {
    {"set_hostkey_methods", (PyCFunction)session_set_hostkey_methods, METH_VARARGS,
     "set_hostkey_methods($self, prefs, /)\n--\n\nHost key algorithms to offer, best "
     "first."},
    {"handshake", (PyCFunction)session_handshake, METH_NOARGS,
     "handshake($self, /)\n--\n\nKey exchange with the server (blocking)."},
    {"check_host_key", (PyCFunction)session_check_host_key, METH_VARARGS,
     "check_host_key($self, path, host, port, /)\n--\n\n"
     "'match', 'mismatch' or 'notfound' for the server's key."},
    {"host_key_line", (PyCFunction)session_host_key_line, METH_VARARGS,
     "host_key_line($self, name, /)\n--\n\nThe known_hosts line for the server's key."},
    {"auth_methods", (PyCFunction)session_auth_methods, METH_VARARGS,
     "auth_methods($self, user, /)\n--\n\nThe server's authentication methods, "
     "comma-separated."},
    {"auth_agent", (PyCFunction)session_auth_agent, METH_VARARGS,
     "auth_agent($self, user, socket_path=None, /)\n--\n\nNone on success, else why "
     "not."},
    {"auth_key_file", (PyCFunction)session_auth_key_file, METH_VARARGS,
     "auth_key_file($self, user, path, passphrase=None, /)\n--\n\n"
     "None on success, else why not."},
    {"start", (PyCFunction)session_start, METH_NOARGS,
     "start($self, /)\n--\n\nStart the pump thread; the session is non-blocking."},
    {"open_channel", (PyCFunction)session_open_channel, METH_VARARGS,
     "open_channel($self, command, timeout=None, /)\n--\n\n"
     "Run command; return (id, read_fd, write_fd)."},
    {"close_channel", (PyCFunction)session_close_channel, METH_VARARGS,
     "close_channel($self, id, /)\n--\n\nEnd the channel."},
    {"wait_channel", (PyCFunction)session_wait_channel, METH_VARARGS,
     "wait_channel($self, id, timeout=None, /)\n--\n\n"
     "The exit status once the channel is over; None on timeout."},
    {"close", (PyCFunction)session_close, METH_NOARGS,
     "close($self, /)\n--\n\nEnd all channels and the connection."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef session_getset[] = {
    {"alive", (getter)session_get_alive, NULL, "True while connected.", NULL},
    {"open_channels", (getter)session_get_open_channels, NULL, "Channels not over yet.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot session_slots[] = {
    {Py_tp_new, session_new},
    {Py_tp_dealloc, session_dealloc},
    {Py_tp_methods, session_methods},
    {Py_tp_getset, session_getset},
    {Py_tp_doc, "SshSession(fd, timeout)\n--\n\n"
                "An SSH connection over the connected socket fd (taken "
                "over), driven by a thread of its own once started."},
    {0, NULL},
};

static PyType_Spec session_spec = {
    .name = "execnet._ssh.SshSession",
    .basicsize = sizeof(xn_ssh_session),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = session_slots,
};

/* hostkey_algorithms(): the host key algorithms this libssh2 has.
 * Returns a new list of str, or NULL with an exception set. */
static PyObject *
ssh_hostkey_algorithms(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    LIBSSH2_SESSION *s = libssh2_session_init();
    const char **algs = NULL;
    PyObject *list = NULL, *name = NULL;
    int n;

    (void)module;
    if (s == NULL) {
        return PyErr_NoMemory();
    }
    n = libssh2_session_supported_algs(s, LIBSSH2_METHOD_HOSTKEY, &algs);
    if (n < 0) {
        PyErr_SetString(PyExc_RuntimeError, "libssh2 does not list its host key algorithms");
        goto error;
    }
    list = PyList_New(0);
    if (list == NULL) {
        goto error;
    }
    for (int i = 0; i < n; i++) {
        name = PyUnicode_FromString(algs[i]);
        if (name == NULL || PyList_Append(list, name) < 0) {
            Py_CLEAR(list);
            goto error;
        }
        Py_CLEAR(name);
    }

error:
    Py_XDECREF(name);
    if (algs != NULL) {
        libssh2_free(s, (void *)algs);
    }
    libssh2_session_free(s);
    return list;
}

static PyMethodDef ssh_functions[] = {
    {"ssh_hostkey_algorithms", ssh_hostkey_algorithms, METH_NOARGS,
     "ssh_hostkey_algorithms()\n--\n\nThe host key algorithms libssh2 has."},
    {NULL, NULL, 0, NULL},
};

/* Sets up the module: libssh2, LIBSSH2_VERSION, SshError and SshSession.
 * Returns 0, or -1 with an exception set. */
static int
ssh_module_exec(PyObject *module)
{
    static int initialized = 0;
    ssh_state *st = PyModule_GetState(module);

    if (!initialized) {
        if (libssh2_init(0) != 0) {
            PyErr_SetString(PyExc_ImportError, "libssh2_init failed");
            return -1;
        }
        initialized = 1;
    }
    if (PyModule_AddStringConstant(module, "LIBSSH2_VERSION", libssh2_version(0)) < 0) {
        return -1;
    }
    st->SshError =
        PyErr_NewExceptionWithDoc("execnet._ssh.SshError", "An SSH session failed.", NULL, NULL);
    if (st->SshError == NULL || PyModule_AddObjectRef(module, "SshError", st->SshError) < 0) {
        return -1;
    }
    st->SshSessionType = (PyTypeObject *)xn_type_from_spec(module, &session_spec);
    if (st->SshSessionType == NULL) {
        return -1;
    }
    return PyModule_AddType(module, st->SshSessionType);
}

/* Returns 0 or the first nonzero result of visit. */
static int
ssh_module_traverse(PyObject *module, visitproc visit, void *arg)
{
    ssh_state *st = PyModule_GetState(module);
    Py_VISIT(st->SshSessionType);
    Py_VISIT(st->SshError);
    return 0;
}

/* Returns 0, having dropped the state's references. */
static int
ssh_module_clear(PyObject *module)
{
    ssh_state *st = PyModule_GetState(module);
    Py_CLEAR(st->SshSessionType);
    Py_CLEAR(st->SshError);
    return 0;
}

/* Frees the module state's references (returns nothing). */
static void
ssh_module_free(void *module)
{
    (void)ssh_module_clear((PyObject *)module);
}

static PyModuleDef_Slot ssh_module_slots[] = {
    {Py_mod_exec, (void *)ssh_module_exec},
    XN_SLOT_INTERPRETERS /* see compat.h for why */
        XN_SLOT_GIL{0, NULL},
};

/* clang-format off */
static struct PyModuleDef ssh_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "execnet._ssh",
    .m_doc = "execnet's native SSH transport: libssh2 sessions (SshSession).\n\n"
             "Used by execnet.gateway_ssh.",
    .m_size = sizeof(ssh_state),
    .m_methods = ssh_functions,
    .m_slots = ssh_module_slots,
    .m_traverse = ssh_module_traverse,
    .m_clear = ssh_module_clear,
    .m_free = ssh_module_free,
};
/* clang-format on */

/* Returns the module definition (PEP 489), never NULL. */
PyMODINIT_FUNC
PyInit__ssh(void)
{
    return PyModuleDef_Init(&ssh_module_def);
}
