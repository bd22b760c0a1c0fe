/* compat.h: the C-API calls csrc/ uses that are newer than CPython 3.8,
 * each given for the older versions in terms of calls they have.
 * Included by execnet.h after Python.h; the rest of csrc/ is written
 * against the current API and has no version tests of its own. */

#ifndef XN_COMPAT_H
#define XN_COMPAT_H

/* 3.10: types that refuse attribute assignment.  Before, heap types cannot
 * say so; ours are then mutable, which changes nothing they do. */
#ifndef Py_TPFLAGS_IMMUTABLETYPE
#define Py_TPFLAGS_IMMUTABLETYPE 0
#endif

#if PY_VERSION_HEX < 0x030A0000
/* 3.10: Py_NewRef and PyModule_AddObjectRef. */
static inline PyObject *
xn_compat_new_ref(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
#define Py_NewRef(o) xn_compat_new_ref((PyObject *)(o))

/* Adds value (not stolen) to module as name.  Returns 0, or -1 with an
 * exception set. */
static inline int
xn_compat_add_object_ref(PyObject *module, const char *name, PyObject *value)
{
    if (value == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_SystemError, "PyModule_AddObjectRef: no value");
        }
        return -1;
    }
    Py_INCREF(value);
    if (PyModule_AddObject(module, name, value) < 0) {
        Py_DECREF(value);
        return -1;
    }
    return 0;
}
#define PyModule_AddObjectRef xn_compat_add_object_ref
#endif

#if PY_VERSION_HEX < 0x03090000
/* 3.9: PyObject_CallOneArg, PyModule_AddType, and vectorcall under its
 * public name (3.8 has it only as a provisional underscore name). */
#define PyObject_CallOneArg(fn, arg) PyObject_CallFunctionObjArgs((fn), (arg), NULL)

/* Calls fn with the nargsf positional arguments at args (no keywords).
 * Returns a new reference, or NULL with an exception set. */
static inline PyObject *
xn_compat_vectorcall(PyObject *fn, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t n = (Py_ssize_t)(nargsf & ~(size_t)PY_VECTORCALL_ARGUMENTS_OFFSET);
    PyObject *tuple, *result;
    if (kwnames != NULL) {
        PyErr_SetString(PyExc_SystemError, "vectorcall with keywords is not provided");
        return NULL;
    }
    tuple = PyTuple_New(n);
    if (tuple == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_INCREF(args[i]);
        PyTuple_SET_ITEM(tuple, i, args[i]);
    }
    result = PyObject_Call(fn, tuple, NULL);
    Py_DECREF(tuple);
    return result;
}
#define PyObject_Vectorcall xn_compat_vectorcall

/* Adds tp to module under the last dotted part of its name.  Returns 0, or
 * -1 with an exception set. */
static inline int
xn_compat_add_type(PyObject *module, PyTypeObject *tp)
{
    const char *name = strrchr(tp->tp_name, '.');
    return PyModule_AddObjectRef(module, name != NULL ? name + 1 : tp->tp_name, (PyObject *)tp);
}
#define PyModule_AddType xn_compat_add_type
#endif

/* Before 3.9 a type does not know the module that made it: the module is
 * kept in the type's dictionary under this key instead. */
#define XN_COMPAT_MODULE_KEY "__xn_module__"

/* Returns a new type made from spec for module (a new reference), or NULL
 * with an exception set. */
static inline PyObject *
xn_type_from_spec(PyObject *module, PyType_Spec *spec)
{
#if PY_VERSION_HEX >= 0x03090000
    return PyType_FromModuleAndSpec(module, spec, NULL);
#else
    PyObject *tp = PyType_FromSpecWithBases(spec, NULL);
    if (tp != NULL &&
        PyDict_SetItemString(((PyTypeObject *)tp)->tp_dict, XN_COMPAT_MODULE_KEY, module) < 0) {
        Py_CLEAR(tp);
    }
    return tp;
#endif
}

/* Returns the module (of definition def) that made tp with
 * xn_type_from_spec (borrowed), or NULL with TypeError set.  Our types
 * cannot be subclassed, so an instance's type is always the type made. */
static inline PyObject *
xn_module_of_type(PyTypeObject *tp, struct PyModuleDef *def)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyType_GetModuleByDef(tp, def); /* public from 3.11 */
#else
    PyObject *module;
#if PY_VERSION_HEX >= 0x03090000
    module = PyType_GetModule(tp);
    if (module == NULL) {
        return NULL;
    }
#else
    module = PyDict_GetItemString(tp->tp_dict, XN_COMPAT_MODULE_KEY);
#endif
    if (module == NULL || !PyModule_Check(module) || PyModule_GetDef(module) != def) {
        PyErr_Format(PyExc_TypeError, "type %.200s is not one of module %.200s", tp->tp_name,
                     def->m_name);
        return NULL;
    }
    return module;
#endif
}

/* Returns nonzero once the interpreter is finalizing.  A C thread asks
 * before PyGILState_Ensure, which must not be called then; it holds no GIL,
 * so sys.is_finalizing() is not an option.  Before 3.13 the only call that
 * answers without the GIL is the private _Py_IsFinalizing (3.7 to 3.12). */
static inline int
xn_is_finalizing(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

/* The module slots both extensions declare about interpreters and the GIL
 * (each a slot entry where the running version knows the slot, else
 * nothing):
 * - not in sub-interpreters: the core's C threads (a connection's reader
 *   and flusher) enter Python with PyGILState_Ensure, which knows the main
 *   interpreter only, and _ssh initialises libssh2 once per process under
 *   a static flag that the GIL guards;
 * - the GIL is used: those threads, the ssh sessions' lock hand-offs and
 *   the channel queues count on it to serialise their access to Python
 *   objects and to their own state. */
#if PY_VERSION_HEX >= 0x030C0000
#define XN_SLOT_INTERPRETERS \
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#else
#define XN_SLOT_INTERPRETERS
#endif
#if PY_VERSION_HEX >= 0x030D0000
#define XN_SLOT_GIL {Py_mod_gil, Py_MOD_GIL_USED},
#else
#define XN_SLOT_GIL
#endif

#endif /* XN_COMPAT_H */
