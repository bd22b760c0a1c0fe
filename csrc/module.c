/* module.c: the execnet._execnet module object (PEP 489 multi-phase init).
 * Owns the module state, _install() and the helpers shared by all files. */

#include "execnet.h"

#include <stdarg.h>
#include <string.h>

/* ---- shared helpers ------------------------------------------------------ */

/* Returns the state of the module that defined tp (borrowed), or NULL with
 * an exception set. */
xn_state *
xn_state_of_type(PyTypeObject *tp)
{
    PyObject *module = xn_module_of_type(tp, &xn_module_def);
    if (module == NULL) {
        return NULL;
    }
    return xn_get_state(module);
}

/* Returns 0 if _install() has run, else -1 with RuntimeError set. */
int
xn_require_installed(xn_state *st)
{
    if (st->namespace == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "execnet._execnet is not bound to execnet.gateway_base "
                                            "yet: call _install(namespace) first");
        return -1;
    }
    return 0;
}

/* Returns a heap block of new_cap elements of size elsize holding the
 * first used elements of block, or NULL with MemoryError set (block is
 * then left as it was).  block is a heap block (or NULL), which this frees
 * or reuses, or else, if is_inline, a buffer inside a struct. */
void *
xn_grow_block(void *block, int is_inline, Py_ssize_t used, Py_ssize_t new_cap, size_t elsize)
{
    void *bigger;
    if ((size_t)new_cap > PY_SSIZE_T_MAX / elsize) {
        PyErr_NoMemory();
        return NULL;
    }
    if (is_inline) {
        bigger = PyMem_Malloc((size_t)new_cap * elsize);
        if (bigger != NULL && used > 0) {
            memcpy(bigger, block, (size_t)used * elsize);
        }
    }
    else {
        bigger = PyMem_Realloc(block, (size_t)new_cap * elsize);
    }
    if (bigger == NULL) {
        PyErr_NoMemory();
    }
    return bigger;
}

/* Returns namespace["DUMPFORMAT_VERSION"] (a borrowed reference), or NULL
 * with NameError set. */
PyObject *
xn_dumpformat_version(xn_state *st)
{
    PyObject *version = PyDict_GetItemWithError(st->namespace, st->s_DUMPFORMAT_VERSION);
    if (version == NULL && !PyErr_Occurred()) {
        PyErr_Format(PyExc_NameError, "name '%U' is not defined", st->s_DUMPFORMAT_VERSION);
    }
    return version;
}

/* Returns the exception being raised (new reference, normalized) and clears
 * it, or NULL if none is set. */
PyObject *
xn_fetch_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL) {
        return NULL;
    }
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_DECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

/* Sets exc as the exception being raised (steals the reference). */
static void
restore_exception(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyObject *type = (PyObject *)Py_TYPE(exc);
    Py_INCREF(type);
    PyErr_Restore(type, exc, PyException_GetTraceback(exc));
#endif
}

/* Raises exc_type(formatted message) with its cause suppressed, as Python's
 * `raise ... from None` does.  Returns -1 (for `return xn_raise...`). */
int
xn_raise_from_none(PyObject *exc_type, const char *format, ...)
{
    va_list va;
    PyObject *msg, *exc;

    va_start(va, format);
    msg = PyUnicode_FromFormatV(format, va);
    va_end(va);
    if (msg == NULL) {
        return -1;
    }
    exc = PyObject_CallFunctionObjArgs(exc_type, msg, NULL);
    Py_DECREF(msg);
    if (exc == NULL) {
        return -1;
    }
    if (!PyExceptionInstance_Check(exc)) {
        /* not an exception class after all: let PyErr_SetObject complain */
        PyErr_SetObject(exc_type, exc);
        Py_DECREF(exc);
        return -1;
    }
    PyException_SetCause(exc, NULL); /* sets __suppress_context__ */
    restore_exception(exc);
    return -1;
}

/* Returns the index of the parameter called name, or -1. */
static int
param_index(PyObject *name, const char *const *names, int nparams)
{
    for (int i = 0; i < nparams; i++) {
        if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

int
xn_check_nargs(const char *fname, Py_ssize_t nargs, int n)
{
    if (nargs == n) {
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "%s() takes %d positional argument%s but %zd %s given", fname, n,
                 n == 1 ? "" : "s", nargs, nargs == 1 ? "was" : "were");
    return -1;
}

/* Returns 0, having filled out[0..nparams) from a METH_FASTCALL |
 * METH_KEYWORDS argument list, or -1 with TypeError set. */
int
xn_parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
              const char *const *names, int nparams, int nrequired, PyObject **out)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);

    if (nargs > nparams) {
        if (nparams == nrequired) {
            PyErr_Format(PyExc_TypeError, "%s() takes %d positional argument%s but %zd %s given",
                         fname, nparams, nparams == 1 ? "" : "s", nargs,
                         nargs == 1 ? "was" : "were");
        }
        else {
            PyErr_Format(PyExc_TypeError,
                         "%s() takes from %d to %d positional arguments but "
                         "%zd were given",
                         fname, nrequired, nparams, nargs);
        }
        return -1;
    }
    for (int i = 0; i < nparams; i++) {
        out[i] = i < nargs ? args[i] : NULL;
    }
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int i = param_index(name, names, nparams);
        if (i < 0) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%S'", fname,
                         name);
            return -1;
        }
        if (out[i] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                         names[i]);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    for (int i = 0; i < nrequired; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing 1 required positional argument: '%s'",
                         fname, names[i]);
            return -1;
        }
    }
    return 0;
}

/* ---- _install ------------------------------------------------------------ */

/* Returns namespace[key] if it is an exception class (new reference), or
 * NULL with KeyError or TypeError set. */
static PyObject *
exception_class_from(PyObject *namespace, PyObject *key)
{
    PyObject *cls = PyDict_GetItemWithError(namespace, key);
    if (cls == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetObject(PyExc_KeyError, key);
        }
        return NULL;
    }
    if (!PyExceptionClass_Check(cls)) {
        PyErr_Format(PyExc_TypeError, "namespace[%R] is not an exception class", key);
        return NULL;
    }
    Py_INCREF(cls);
    return cls;
}

PyDoc_STRVAR(install_doc, "_install($module, namespace, /)\n--\n\n"
                          "Bind the module to execnet.gateway_base's namespace (a dict).\n\n"
                          "dumps() and loads() read DUMPFORMAT_VERSION from it at every call and\n"
                          "raise its DumpError and LoadError.");

/* Returns None, having stored namespace and its exception classes in the
 * module state, or NULL with an exception set. */
static PyObject *
module_install(PyObject *module, PyObject *namespace)
{
    xn_state *st = xn_get_state(module);
    PyObject *dump_error = NULL, *load_error = NULL, *timeout_error = NULL;

    if (!PyDict_Check(namespace)) {
        PyErr_Format(PyExc_TypeError, "_install() argument must be a dict, not %.200s",
                     Py_TYPE(namespace)->tp_name);
        goto error;
    }
    dump_error = exception_class_from(namespace, st->s_DumpError);
    if (dump_error == NULL) {
        goto error;
    }
    load_error = exception_class_from(namespace, st->s_LoadError);
    if (load_error == NULL) {
        goto error;
    }
    timeout_error = exception_class_from(namespace, st->s_TimeoutError);
    if (timeout_error == NULL) {
        goto error;
    }
    Py_INCREF(namespace);
    Py_XSETREF(st->namespace, namespace);
    Py_XSETREF(st->DumpError, dump_error);
    Py_XSETREF(st->LoadError, load_error);
    Py_XSETREF(st->TimeoutError, timeout_error);
    Py_RETURN_NONE;

error:
    Py_XDECREF(dump_error);
    Py_XDECREF(load_error);
    Py_XDECREF(timeout_error);
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"_install", (PyCFunction)module_install, METH_O, install_doc},
    {NULL, NULL, 0, NULL},
};

/* ---- module lifecycle ---------------------------------------------------- */

/* Returns 0, having created the constant strings of the state, or -1. */
static int
module_exec(PyObject *module)
{
    xn_state *st = xn_get_state(module);

#define XN_STRING_INIT(name, text)                   \
    st->s_##name = PyUnicode_InternFromString(text); \
    if (st->s_##name == NULL) {                      \
        return -1;                                   \
    }
    XN_STRINGS(XN_STRING_INIT)
#undef XN_STRING_INIT

    if (PyModule_AddIntConstant(module, "MAX_NESTING", XN_MAX_NESTING) < 0) {
        return -1;
    }
    if (xn_serializer_add_functions(module) < 0) {
        return -1;
    }
    if (xn_unserializer_add_functions(module) < 0) {
        return -1;
    }
    if (xn_rsync_add_functions(module) < 0) {
        return -1;
    }
    st->ConnectionType = (PyTypeObject *)xn_type_from_spec(module, &xn_connection_spec);
    if (st->ConnectionType == NULL) {
        return -1;
    }
    if (PyModule_AddType(module, st->ConnectionType) < 0) {
        return -1;
    }
    st->ItemQueueType = (PyTypeObject *)xn_type_from_spec(module, &xn_queue_spec);
    if (st->ItemQueueType == NULL) {
        return -1;
    }
    if (PyModule_AddType(module, st->ItemQueueType) < 0) {
        return -1;
    }
    st->EventType = (PyTypeObject *)xn_type_from_spec(module, &xn_event_spec);
    if (st->EventType == NULL) {
        return -1;
    }
    if (PyModule_AddType(module, st->EventType) < 0) {
        return -1;
    }
    return 0;
}

/* Returns 0 or the first nonzero result of visit. */
static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    xn_state *st = xn_get_state(module);
    Py_VISIT(st->namespace);
    Py_VISIT(st->DumpError);
    Py_VISIT(st->LoadError);
    Py_VISIT(st->TimeoutError);
    Py_VISIT(st->ConnectionType);
    Py_VISIT(st->ItemQueueType);
    Py_VISIT(st->EventType);
#define XN_STRING_VISIT(name, text) Py_VISIT(st->s_##name);
    XN_STRINGS(XN_STRING_VISIT)
#undef XN_STRING_VISIT
    return 0;
}

/* Returns 0, having dropped every reference of the state. */
static int
module_clear(PyObject *module)
{
    xn_state *st = xn_get_state(module);
    Py_CLEAR(st->namespace);
    Py_CLEAR(st->DumpError);
    Py_CLEAR(st->LoadError);
    Py_CLEAR(st->TimeoutError);
    Py_CLEAR(st->ConnectionType);
    Py_CLEAR(st->ItemQueueType);
    Py_CLEAR(st->EventType);
#define XN_STRING_CLEAR(name, text) Py_CLEAR(st->s_##name);
    XN_STRINGS(XN_STRING_CLEAR)
#undef XN_STRING_CLEAR
    return 0;
}

/* Frees the module state's references (returns nothing). */
static void
module_free(void *module)
{
    (void)module_clear((PyObject *)module);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, (void *)module_exec},
    XN_SLOT_INTERPRETERS /* see compat.h for why */
        XN_SLOT_GIL{0, NULL},
};

PyDoc_STRVAR(module_doc,
             "execnet's C core: the serializer, and the connection with its IO thread\n"
             "and native channel queues.\n\n"
             "Bound to execnet.gateway_base by _install(); use it through that module.");

/* clang-format off */
struct PyModuleDef xn_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "execnet._execnet",
    .m_doc = module_doc,
    .m_size = sizeof(xn_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};
/* clang-format on */

/* Returns the module definition (PEP 489), never NULL. */
PyMODINIT_FUNC
PyInit__execnet(void)
{
    return PyModuleDef_Init(&xn_module_def);
}
