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
    uint64_t prefix_cap;
    unsigned prefix_shift;
    /* the prefix lengths present in each family, longest first: read from the image once, when the View is made,
     * and never again, so a lookup builds its keys from these, whatever the buffer holds by then */
    uint8_t lengths[2][129];
    unsigned nlengths[2];
    /* the guard: every prefix of the family cut to its shortest length present, in a set of the View's own
     * (prefix slots, value 1). An address outside all of them (an unknown or spoofed source, usually) is
     * answered by one probe here instead of one a length. */
    uint8_t *guard[2];
    uint64_t guard_cap[2];
    unsigned guard_shift[2];
} ViewObject;

static void view_dealloc(ViewObject *v) {
    PyMem_Free(v->guard[0]);
    PyMem_Free(v->guard[1]);
    if (v->held)
        PyBuffer_Release(&v->buffer);
    Py_TYPE(v)->tp_free((PyObject *)v);
}

static int bad_image(const char *why) {
    PyErr_Format(PyExc_ValueError, "not a verdict table image: %s", why);
    return -1;
}

/* Into the guard set of `cap` slots (a power of two, at most half full): `key`, once. */
static void guard_add(uint8_t *guard, uint64_t cap, unsigned shift, const uint8_t *key) {
    for (uint64_t i = hash_prefix(key) >> shift;; i = (i + 1) & (cap - 1)) {
        uint8_t *s = guard + i * SLOTLEN(KEYPREFIX);
        if (ld32(s + KEYLEN(KEYPREFIX)) == 0) {
            memcpy(s, key, KEYLEN(KEYPREFIX));
            st32(s + KEYLEN(KEYPREFIX), 1);
            return;
        }
        if (memcmp(s, key, KEYLEN(KEYPREFIX)) == 0)
            return;
    }
}

/* Family w's guard, from the prefix slots as they are now (the View holds what it built, whatever happens to the
 * buffer later). */
static int guard_build(ViewObject *v, int w, uint64_t members) {
    uint64_t cap = MIN_CAP;
    while (cap < 2 * members)
        cap *= 2;
    v->guard[w] = PyMem_Calloc(cap, SLOTLEN(KEYPREFIX));
    if (v->guard[w] == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    v->guard_cap[w] = cap;
    v->guard_shift[w] = 64 - log2u(cap);
    const unsigned shortest = v->lengths[w][v->nlengths[w] - 1];
    uint8_t key[20];
    for (uint64_t i = 0; i < v->prefix_cap; i++) {
        const uint8_t *s = v->prefixes + i * SLOTLEN(KEYPREFIX);
        if (ld32(s + KEYLEN(KEYPREFIX)) != 0 && s[0] == (w ? 6 : 4)) {
            prefix_key(key, s + 4, w, shortest);
            guard_add(v->guard[w], cap, v->guard_shift[w], key);
        }
    }
    return 0;
}

/* The prefix map: its size, the lengths present in each family (a slot of no family or too long: refused), and
 * each family's guard. */
static int view_prefixes(ViewObject *v, const uint8_t *slots, uint64_t cap) {
    if (cap < MIN_CAP || cap > MAX_CAP || (cap & (cap - 1)))
        return bad_image("a hash map's size is not a power of two >= 8");
    uint8_t present[2][129] = {{0}};
    uint64_t used = 0, members[2] = {0, 0};
    for (uint64_t i = 0; i < cap; i++) {
        const uint8_t *s = slots + i * SLOTLEN(KEYPREFIX);
        if (ld32(s + KEYLEN(KEYPREFIX)) == 0)
            continue;
        if (!((s[0] == 4 && s[1] <= 32) || (s[0] == 6 && s[1] <= 128)))
            return bad_image("a prefix entry of no family or too long");
        present[s[0] == 6][s[1]] = 1;
        members[s[0] == 6]++;
        used++;
    }
    v->prefixes = slots;
    v->prefix_cap = cap;
    v->prefix_shift = 64 - log2u(cap);
    v->nprefixes = used;
    for (int w = 0; w < 2; w++) {
        v->nlengths[w] = 0;
        for (int plen = 128; plen >= 0; plen--)
            if (present[w][plen])
                v->lengths[w][v->nlengths[w]++] = (uint8_t)plen;
        if (members[w] && guard_build(v, w, members[w]) < 0)
            return -1;
    }
    return 0;
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
    if (view_prefixes(v, at[S_PREFIXES], count[S_PREFIXES]) < 0)
        return -1;
    v->generation = ld64(b + 16);
    v->entries = ld64(b + 32);
    /* len() answers it (past 2^63 it was a SystemError); an address takes at least a page's cell of 4 bytes */
    if (v->entries > total / 4)
        return bad_image("more addresses than it has room for");
    v->pages = at[S_PAGES];
    v->npages = count[S_PAGES];
    v->records = at[S_RECORDS];
    v->nrecords = count[S_RECORDS];
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
    const unsigned n = v->nlengths[wide];
    if (n == 0)
        return 0;
    uint8_t k[20];
    prefix_key(k, key, wide, v->lengths[wide][n - 1]);
    if (!probe(v->guard[wide], v->guard_cap[wide], v->guard_shift[wide], k, KEYPREFIX))
        return 0; /* in none of the prefixes' shortest ancestors: in no prefix */
    for (unsigned i = 0; i < n; i++) { /* longest first: the first hit is the longest match */
        prefix_key(k, key, wide, v->lengths[wide][i]);
        value = probe(v->prefixes, v->prefix_cap, v->prefix_shift, k, KEYPREFIX);
        if (value)
            return value;
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
