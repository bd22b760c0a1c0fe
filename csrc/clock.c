/* clock.c: the monotonic clock and the deadlines of waits.
 * Compiled into both extensions: the core and the ssh transport. */

#include "execnet.h"

#include <math.h>
#include <time.h>

int64_t
xn_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int
xn_deadline(PyObject *timeout, int64_t *deadline)
{
    *deadline = -1;
    if (timeout == NULL || timeout == Py_None) {
        return 0;
    }
    double seconds = PyFloat_AsDouble(timeout);
    if (seconds == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (isnan(seconds)) {
        PyErr_SetString(PyExc_ValueError, "Invalid value NaN (not a number)");
        return -1;
    }
    if (seconds > 9223372036.0) { /* threading.TIMEOUT_MAX */
        PyErr_SetString(PyExc_OverflowError, "timeout value is too large");
        return -1;
    }
    if (seconds <= 1e9) { /* else: decades, as good as no end (and no overflow) */
        *deadline = xn_monotonic_ns() + (seconds > 0 ? (int64_t)(seconds * 1e9) : 0);
    }
    return 0;
}
