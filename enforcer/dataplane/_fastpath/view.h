/*
 * Part of enforcer.dataplane._fastpath: _fastpath.c #includes it (one compilation unit, see there).
 *
 * The workers' reader: View, over a read-only image (see image.h): validation and lookup.
 *
 * View trusts nothing in the buffer: the header's offsets and sizes are checked against the buffer's length,
 * probes stop after `cap` slots, page and record numbers are checked at every use. Garbage cannot crash it.
 * It holds the buffer (an mmap cannot be closed under it); what it cannot stop is the file under a mapping
 * shrinking, which faults (SIGBUS): a memfd to be mapped should be sealed (F_SEAL_SHRINK, F_SEAL_WRITE).
 */

#ifndef FASTPATH_VIEW_H
#define FASTPATH_VIEW_H

#include <Python.h>
#include <structmember.h>

#include "image.h"

/* ---------------------------------------------------------------- View */

typedef struct {
    PyObject_HEAD
    Py_buffer buffer;                /* held for the View's life: the exporter (an mmap) cannot go away */
    int held;
    uint64_t generation, entries;
    const uint8_t *dir[2], *exact[2];
    uint64_t dir_cap[2], exact_cap[2];
    unsigned dir_shift[2], exact_shift[2];
    const uint8_t *pages, *records, *prefixes, *allow;
    uint64_t npages, nrecords, nprefixes, nverdicts;
} ViewObject;

static void view_dealloc(ViewObject *v) {
    if (v->held)
        PyBuffer_Release(&v->buffer);
    Py_TYPE(v)->tp_free((PyObject *)v);
}

static int bad_image(const char *why) {
    PyErr_Format(PyExc_ValueError, "not a verdict table image: %s", why);
    return -1;
}

static int view_validate(ViewObject *v) {
    const uint8_t *b = v->buffer.buf;
    const uint64_t len = (uint64_t)v->buffer.len;
    if (len < HEADER_SIZE)
        return bad_image("shorter than its header");
    if (memcmp(b, MAGIC, 8) != 0)
        return bad_image("wrong magic");
    if (ld32(b + 8) != FORMAT_VERSION) {
        PyErr_Format(PyExc_ValueError, "verdict table image of format %u; this build reads %u", ld32(b + 8),
                     FORMAT_VERSION);
        return -1;
    }
    if (ld32(b + 12) != HEADER_SIZE)
        return bad_image("wrong header size");
    const uint64_t total = ld64(b + 24);
    if (total < HEADER_SIZE || total > len)
        return bad_image("truncated (its header gives a size past the buffer)");
    if (ld64(b + 32) > total) /* len() answers it: past 2^63 a SystemError. No image holds more addresses than bytes */
        return bad_image("more entries than bytes");
    const uint8_t *at[NSECTIONS];
    uint64_t count[NSECTIONS];
    for (int i = 0; i < NSECTIONS; i++) {
        uint64_t off = ld64(b + 64 + 16 * i), n = ld64(b + 72 + 16 * i);
        if (off % ALIGN || off < HEADER_SIZE || off > total || n > (total - off) / ELEM[i]) {
            PyErr_Format(PyExc_ValueError, "not a verdict table image: section %s lies outside it",
                         SECTION_NAME[i]);
            return -1;
        }
        at[i] = b + off;
        count[i] = n;
    }
    for (int w = 0; w < 2; w++) {
        uint64_t dn = count[S_DIR4 + w], en = count[S_EXACT4 + w];
        if (dn < MIN_CAP || dn > MAX_CAP || (dn & (dn - 1)) || en < MIN_CAP || en > MAX_CAP || (en & (en - 1)))
            return bad_image("a hash map's size is not a power of two >= 8");
        v->dir[w] = at[S_DIR4 + w];
        v->dir_cap[w] = dn;
        v->dir_shift[w] = 64 - log2u(dn);
        v->exact[w] = at[S_EXACT4 + w];
        v->exact_cap[w] = en;
        v->exact_shift[w] = 64 - log2u(en);
    }
    for (uint64_t i = 0; i < count[S_PREFIXES]; i++) {
        const uint8_t *p = at[S_PREFIXES] + i * sizeof(Prefix);
        if (!((p[0] == 4 && p[1] <= 32) || (p[0] == 6 && p[1] <= 128)))
            return bad_image("a prefix entry of no family or too long");
    }
    v->generation = ld64(b + 16);
    v->entries = ld64(b + 32);
    v->pages = at[S_PAGES];
    v->npages = count[S_PAGES];
    v->records = at[S_RECORDS];
    v->nrecords = count[S_RECORDS];
    v->prefixes = at[S_PREFIXES];
    v->nprefixes = count[S_PREFIXES];
    v->allow = at[S_ALLOW];
    v->nverdicts = count[S_ALLOW];
    return 0;
}

static PyObject *view_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"buffer", NULL};
    PyObject *obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:View", kwlist, &obj))
        return NULL;
    ViewObject *v = (ViewObject *)type->tp_alloc(type, 0);
    if (v == NULL)
        return NULL;
    if (PyObject_GetBuffer(obj, &v->buffer, PyBUF_SIMPLE) < 0) {
        Py_DECREF(v);
        return NULL;
    }
    v->held = 1;
    if (view_validate(v) < 0) {
        Py_DECREF(v);
        return NULL;
    }
    return (PyObject *)v;
}

static inline __attribute__((always_inline)) uint32_t
find_in(const ViewObject *v, const uint8_t *key, const int wide, int *exact) {
    const unsigned klen = KEYLEN(wide);
    uint8_t pk[16];
    memcpy(pk, key, klen);
    pk[klen - 1] = 0;
    uint32_t page = probe(v->dir[wide], v->dir_cap[wide], v->dir_shift[wide], pk, wide), value = 0;
    if (page) {
        if (page - 1 < v->npages) /* else a garbage image */
            value = ld32(v->pages + (uint64_t)(page - 1) * 1024 + 4u * key[klen - 1]);
    } else {
        value = probe(v->exact[wide], v->exact_cap[wide], v->exact_shift[wide], key, wide);
    }
    if (value) {
        *exact = 1;
        return value;
    }
    *exact = 0;
    const int family = wide ? 6 : 4;
    for (uint64_t i = 0; i < v->nprefixes; i++) {
        const uint8_t *p = v->prefixes + i * sizeof(Prefix);
        if (p[0] == family && prefix_contains(p + 8, p[1], key))
            return ld32(p + 4);
    }
    return 0;
}

/* The value registered for key (exact, else the longest prefix holding it), or 0; *exact: not via a prefix. */
static uint32_t view_find(const ViewObject *v, const uint8_t *key, int wide, int *exact) {
    return wide ? find_in(v, key, 1, exact) : find_in(v, key, 0, exact);
}

/* A value's verdict and binding record (NULL: unbound); -1 for 0 or a record number past the end. */
static inline int64_t view_verdict(const ViewObject *v, uint32_t value, const uint8_t **record) {
    *record = NULL;
    if (value == 0)
        return -1;
    if (!(value & BOUND))
        return (int64_t)value - 1;
    uint32_t r = value & ~BOUND;
    if (r >= v->nrecords)
        return -1;
    *record = v->records + (uint64_t)r * sizeof(Record);
    return ld32(*record);
}

/* A bytes key's address and family, or -1 with an exception. */
static inline int key_of(PyObject *key, const uint8_t **addr) {
    if (!PyBytes_Check(key)) {
        PyErr_Format(PyExc_TypeError, "key must be bytes, not %.100s", Py_TYPE(key)->tp_name);
        return -1;
    }
    *addr = (const uint8_t *)PyBytes_AS_STRING(key);
    return address_arg("key", PyBytes_GET_SIZE(key));
}

static PyObject *view_lookup(ViewObject *v, PyObject *key) {
    const uint8_t *addr, *record;
    int exact, wide = key_of(key, &addr);
    if (wide < 0)
        return NULL;
    return PyLong_FromLongLong(view_verdict(v, view_find(v, addr, wide, &exact), &record));
}

static PyObject *view_entry(ViewObject *v, PyObject *key) {
    const uint8_t *addr;
    int exact, wide = key_of(key, &addr);
    if (wide < 0)
        return NULL;
    uint32_t value = view_find(v, addr, wide, &exact);
    if (value == 0)
        Py_RETURN_NONE;
    return describe(value, v->records, v->nrecords);
}

static PyObject *view_allows(ViewObject *v, PyObject *verdicto) {
    long long verdict = PyLong_AsLongLong(verdicto);
    if (verdict == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return NULL;
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    return PyBool_FromLong(verdict >= 0 && (uint64_t)verdict < v->nverdicts && v->allow[verdict]);
}

static Py_ssize_t view_len(ViewObject *v) { return (Py_ssize_t)(v->entries + v->nprefixes); }

static PyObject *view_get_buffer(ViewObject *v, void *Py_UNUSED(closure)) {
    return Py_NewRef(v->buffer.obj ? v->buffer.obj : Py_None);
}

static PyMethodDef view_methods[] = {
    {"lookup", (PyCFunction)view_lookup, METH_O,
     "lookup(key) -> int: the verdict registered for the packed address (exact, else longest prefix), "
     "-1 if none."},
    {"entry", (PyCFunction)view_entry, METH_O,
     "entry(key) -> (verdict, interface, mac) | None, exact entries and prefixes."},
    {"allows", (PyCFunction)view_allows, METH_O, "allows(verdict) -> bool"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef view_members[] = {
    {"generation", T_ULONGLONG, offsetof(ViewObject, generation), READONLY, "the image's generation"},
    {"verdicts", T_ULONGLONG, offsetof(ViewObject, nverdicts), READONLY, "how many verdicts it knows"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef view_getset[] = {
    {"buffer", (getter)view_get_buffer, NULL, "the object whose buffer it reads", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods view_as_sequence = {.sq_length = (lenfunc)view_len};

static PyTypeObject ViewType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "enforcer.dataplane._fastpath.View",
    .tp_doc = "View(buffer): a read-only verdict table over an image (bytes, an mmap opened read-only, ...).",
    .tp_basicsize = sizeof(ViewObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = view_new,
    .tp_dealloc = (destructor)view_dealloc,
    .tp_methods = view_methods,
    .tp_members = view_members,
    .tp_getset = view_getset,
    .tp_as_sequence = &view_as_sequence,
};

#endif /* FASTPATH_VIEW_H */
