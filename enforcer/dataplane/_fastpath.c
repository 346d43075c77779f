/*
 * enforcer.dataplane._fastpath: the verdict table in C, and the per-packet callback that reads it.
 *
 *   Table (the daemon: mutable, owns its arrays) --image()--> bytes --memfd, mmap PROT_READ--> View (the workers)
 *   Judge (the NFQUEUE callback) reads a View; swap() replaces it between two packets.
 *
 * Why: at a million registered addresses a Python dict costs 3-4 cache misses a lookup and ~1.4 GiB a worker.
 * Here a lookup touches one or two cache lines whatever the inventory size, the image costs <= 64 bytes an
 * address in the usual cases (see "Memory" in _fastpath/image.h), and every worker maps the same read-only
 * image.
 *
 * One compilation unit, split by job: the headers hold static code, are included once, here, in this order,
 * and the compiler inlines across them as within one file.
 *   _fastpath/image.h   the image format (described there) and what the writer and the reader share
 *   _fastpath/table.h   Table: the daemon's writer
 *   _fastpath/view.h    View: the workers' reader, validation and lookup
 *   _fastpath/judge.h   Judge: the NFQUEUE callback
 *   here                the module
 */

#define PY_SSIZE_T_CLEAN /* before the first Python.h: the headers include it too */
#include <Python.h>

#include "_fastpath/image.h"
#include "_fastpath/table.h"
#include "_fastpath/view.h"
#include "_fastpath/judge.h"

/* ---------------------------------------------------------------- module */

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "enforcer.dataplane._fastpath",
    .m_doc = "The verdict table in C (Table, View) and the per-packet callback that reads it (Judge).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    struct { PyObject **s; const char *text; } names[] = {
        {&s_get_payload, "get_payload"}, {&s_get_hw, "get_hw"}, {&s_accept, "accept"},
        {&s_drop, "drop"}, {&s_indev, "indev"}, {&s_append, "append"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (*names[i].s == NULL && (*names[i].s = PyUnicode_InternFromString(names[i].text)) == NULL)
            return NULL;
    if (PyType_Ready(&TableType) < 0 || PyType_Ready(&ViewType) < 0 || PyType_Ready(&JudgeType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastpath_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddType(m, &TableType) < 0 || PyModule_AddType(m, &ViewType) < 0 ||
        PyModule_AddType(m, &JudgeType) < 0 || PyModule_AddIntConstant(m, "UNKNOWN", UNKNOWN) < 0 ||
        PyModule_AddIntConstant(m, "SPOOFED", SPOOFED) < 0 ||
        PyModule_AddIntConstant(m, "PROMOTE_AT", PROMOTE_AT) < 0 ||
        PyModule_AddIntConstant(m, "DEMOTE_AT", DEMOTE_AT) < 0 ||
        PyModule_AddIntConstant(m, "FORMAT_VERSION", FORMAT_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "HEADER_SIZE", HEADER_SIZE) < 0 ||
        PyModule_AddObject(m, "MAGIC", PyBytes_FromStringAndSize(MAGIC, 8)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
