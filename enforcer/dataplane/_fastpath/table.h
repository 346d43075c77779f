/*
 * Part of enforcer.dataplane._fastpath: _fastpath.c #includes it (one compilation unit, see there).
 *
 * The daemon's writer: Table (mutable, owns its arrays), its hash maps, growable arrays and free lists, its
 * arguments, its methods, and writing its image (the format: image.h).
 *
 * Table (daemon side, not in the image)
 *   A count of addresses per prefix (one more map per family). A prefix is promoted to a page when it reaches
 *   PROMOTE_AT addresses and demoted back to exact entries when it falls to DEMOTE_AT (hysteresis: a prefix at
 *   the threshold does not flap). Free pages and records are kept on free lists and reused. Maps double when
 *   they would pass load 0.5, halve when below 1/8, and delete by backward shift (no tombstones). Every
 *   allocation an operation needs happens before it changes anything, so a MemoryError leaves the table as it
 *   was (a promotion, demotion or shrink that cannot allocate is skipped: the table stays correct).
 */

#ifndef FASTPATH_TABLE_H
#define FASTPATH_TABLE_H

#include "image.h"

#define PROMOTE_AT 64u
#define DEMOTE_AT 32u

/* ---------------------------------------------------------------- Map (Table side) */

typedef struct {
    uint8_t *slots;
    uint64_t cap, used;
    unsigned shift; /* 64 - log2(cap) */
    int kind;       /* KEY4, KEY6, KEYPREFIX */
} Map;

static int map_init(Map *m, int kind) {
    m->kind = kind;
    m->cap = MIN_CAP;
    m->used = 0;
    m->shift = 64 - log2u(MIN_CAP);
    m->slots = PyMem_Calloc(MIN_CAP, SLOTLEN(kind));
    if (m->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static uint32_t map_get(const Map *m, const uint8_t *key) {
    switch (m->kind) {
    case KEY4: return probe(m->slots, m->cap, m->shift, key, KEY4);
    case KEY6: return probe(m->slots, m->cap, m->shift, key, KEY6);
    default: return probe(m->slots, m->cap, m->shift, key, KEYPREFIX);
    }
}

/* The slot holding key, or the empty slot that ends its probe run (there is one: load <= 0.5). */
static uint8_t *map_slot(const Map *m, const uint8_t *key) {
    const unsigned klen = KEYLEN(m->kind), slen = SLOTLEN(m->kind);
    const uint64_t mask = m->cap - 1;
    uint64_t i = hash_key(key, m->kind) >> m->shift;
    for (;;) {
        uint8_t *s = m->slots + i * slen;
        if (ld32(s + klen) == 0 || memcmp(s, key, klen) == 0)
            return s;
        i = (i + 1) & mask;
    }
}

static int map_resize(Map *m, uint64_t cap) {
    const unsigned klen = KEYLEN(m->kind), slen = SLOTLEN(m->kind);
    uint8_t *slots = PyMem_Calloc(cap, slen);
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    const unsigned shift = 64 - log2u(cap);
    for (uint64_t j = 0; j < m->cap; j++) {
        const uint8_t *s = m->slots + j * slen;
        if (ld32(s + klen) == 0)
            continue;
        uint64_t i = hash_key(s, m->kind) >> shift;
        while (ld32(slots + i * slen + klen) != 0)
            i = (i + 1) & (cap - 1);
        memcpy(slots + i * slen, s, slen);
    }
    PyMem_Free(m->slots);
    m->slots = slots;
    m->cap = cap;
    m->shift = shift;
    return 0;
}

/* Room for `extra` more keys at load <= 0.5. */
static int map_reserve(Map *m, uint64_t extra) {
    uint64_t cap = m->cap;
    while ((m->used + extra) * 2 > cap)
        cap *= 2;
    return cap == m->cap ? 0 : map_resize(m, cap);
}

/* After removals: halve while below load 1/8 (ends between 1/8 and 1/4, far from the doubling at 1/2, so a
 * put/remove at the edge does not rehash every time). Failing to allocate just keeps the bigger map. */
static void map_trim(Map *m) {
    uint64_t cap = m->cap;
    while (cap > MIN_CAP && m->used * 8 < cap)
        cap /= 2;
    if (cap != m->cap && map_resize(m, cap) < 0)
        PyErr_Clear();
}

/* Sets key's value (nonzero); returns the old one (0: inserted; map_reserve(m, 1) must have made room). */
static uint32_t map_set(Map *m, const uint8_t *key, uint32_t value) {
    const unsigned klen = KEYLEN(m->kind);
    uint8_t *s = map_slot(m, key);
    uint32_t old = ld32(s + klen);
    if (old == 0) {
        memcpy(s, key, klen);
        m->used++;
    }
    st32(s + klen, value);
    return old;
}

/* Removes key; returns its value (0: was absent). Backward-shift deletion: every later slot of the run that
 * may live in the hole moves into it, so that no probe run is cut short and no tombstones pile up. */
static uint32_t map_del(Map *m, const uint8_t *key) {
    const unsigned klen = KEYLEN(m->kind), slen = SLOTLEN(m->kind);
    const uint64_t mask = m->cap - 1;
    uint8_t *s = map_slot(m, key);
    uint32_t old = ld32(s + klen);
    if (old == 0)
        return 0;
    uint64_t hole = (uint64_t)(s - m->slots) / slen, j = hole;
    for (;;) {
        j = (j + 1) & mask;
        uint8_t *t = m->slots + j * slen;
        if (ld32(t + klen) == 0)
            break;
        uint64_t home = hash_key(t, m->kind) >> m->shift;
        /* t may move into the hole only if the hole lies on its probe path home .. j */
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            memcpy(m->slots + hole * slen, t, slen);
            hole = j;
        }
    }
    memset(m->slots + hole * slen, 0, slen);
    m->used--;
    return old;
}

/* ---------------------------------------------------------------- growable arrays, free lists */

static int grow(void **array, uint64_t *cap, uint64_t need, size_t elem) {
    if (need <= *cap)
        return 0;
    uint64_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *p = PyMem_Realloc(*array, c * elem);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *array = p;
    *cap = c;
    return 0;
}

typedef struct {
    uint32_t *v;
    uint64_t n, cap;
} Stack;

/* ---------------------------------------------------------------- Table */

typedef struct {
    PyObject_HEAD
    Map dir[2], exact[2], count[2];  /* [0] IPv4, [1] IPv6; count: prefix -> addresses (daemon side only) */
    uint32_t *pages;                 /* npages x 256 values */
    uint64_t npages, pages_cap;
    Stack free_pages;                /* capacity kept >= npages, so that freeing never allocates */
    Record *records;
    uint64_t nrecords, records_cap;
    Stack free_records;              /* likewise */
    Map prefixes;                    /* prefix key -> value (scale sets) */
    uint8_t *allow;
    uint64_t nverdicts;
    uint64_t nexact;                 /* addresses (exact entries) */
} TableObject;

typedef struct {
    int set;                         /* 0: unbound */
    uint32_t flags;
    uint8_t mac[8];
    char interface[16];
} Binding;

static void table_dealloc(TableObject *t) {
    for (int w = 0; w < 2; w++) {
        PyMem_Free(t->dir[w].slots);
        PyMem_Free(t->exact[w].slots);
        PyMem_Free(t->count[w].slots);
    }
    PyMem_Free(t->pages);
    PyMem_Free(t->free_pages.v);
    PyMem_Free(t->records);
    PyMem_Free(t->free_records.v);
    PyMem_Free(t->prefixes.slots);
    PyMem_Free(t->allow);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyObject *table_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Table", kwlist))
        return NULL;
    TableObject *t = (TableObject *)type->tp_alloc(type, 0); /* zeroed */
    if (t == NULL)
        return NULL;
    for (int w = 0; w < 2; w++) {
        if (map_init(&t->dir[w], w) < 0 || map_init(&t->exact[w], w) < 0 || map_init(&t->count[w], w) < 0) {
            Py_DECREF(t);
            return NULL;
        }
    }
    if (map_init(&t->prefixes, KEYPREFIX) < 0) {
        Py_DECREF(t);
        return NULL;
    }
    return (PyObject *)t;
}

/* A page that is all zeros: a freed one, else a new one at the end. */
static int page_take(TableObject *t, uint32_t *page) {
    if (t->free_pages.n) {
        *page = t->free_pages.v[--t->free_pages.n];
        return 0;
    }
    if (t->npages >= UINT32_MAX - 1) { /* the directory stores page + 1 in a u32 */
        PyErr_SetString(PyExc_OverflowError, "too many pages");
        return -1;
    }
    if (grow((void **)&t->pages, &t->pages_cap, t->npages + 1, 1024) < 0 ||
        grow((void **)&t->free_pages.v, &t->free_pages.cap, t->npages + 1, 4) < 0)
        return -1;
    memset(t->pages + t->npages * 256, 0, 1024);
    *page = (uint32_t)t->npages++;
    return 0;
}

static void page_free(TableObject *t, uint32_t page) {
    memset(t->pages + (uint64_t)page * 256, 0, 1024);
    t->free_pages.v[t->free_pages.n++] = page;
}

/* Makes sure a record can be taken without allocating. */
static int record_reserve(TableObject *t) {
    if (t->free_records.n)
        return 0;
    if (t->nrecords >= BOUND - 1) {
        PyErr_SetString(PyExc_OverflowError, "too many binding records");
        return -1;
    }
    if (grow((void **)&t->records, &t->records_cap, t->nrecords + 1, sizeof(Record)) < 0 ||
        grow((void **)&t->free_records.v, &t->free_records.cap, t->nrecords + 1, 4) < 0)
        return -1;
    return 0;
}

static uint32_t record_take(TableObject *t) {
    if (t->free_records.n)
        return t->free_records.v[--t->free_records.n];
    return (uint32_t)t->nrecords++;
}

static void record_free(TableObject *t, uint32_t r) {
    memset(&t->records[r], 0, sizeof(Record));
    t->free_records.v[t->free_records.n++] = r;
}

/* The value for (verdict, binding) replacing `old`: a bound old keeps its record for a bound new one, and frees it
 * for an unbound one. A bound new one with an unbound old needs record_reserve() first. */
static uint32_t make_value(TableObject *t, uint32_t old, uint32_t verdict, const Binding *b) {
    if (!b->set) {
        if (old & BOUND)
            record_free(t, old & ~BOUND);
        return verdict + 1;
    }
    uint32_t r = (old & BOUND) ? old & ~BOUND : record_take(t);
    Record *rec = &t->records[r];
    memset(rec, 0, sizeof(Record));
    rec->verdict = verdict;
    rec->flags = b->flags;
    memcpy(rec->mac, b->mac, 8);
    memcpy(rec->interface, b->interface, 16);
    return BOUND | r;
}

/* A prefix reached PROMOTE_AT addresses: move them from the exact map into a page of their own. */
static void promote(TableObject *t, const uint8_t *pk, int wide) {
    const unsigned klen = KEYLEN(wide);
    uint32_t page;
    if (map_reserve(&t->dir[wide], 1) < 0 || page_take(t, &page) < 0) {
        PyErr_Clear(); /* stays sparse, which is correct too; the next put retries */
        return;
    }
    uint32_t *cells = t->pages + (uint64_t)page * 256;
    uint8_t key[16];
    memcpy(key, pk, klen);
    for (unsigned last = 0; last < 256; last++) {
        key[klen - 1] = (uint8_t)last;
        cells[last] = map_del(&t->exact[wide], key);
    }
    map_set(&t->dir[wide], pk, page + 1);
    map_trim(&t->exact[wide]);
}

/* A dense prefix fell to DEMOTE_AT (n) addresses: back into the exact map, and free its page. */
static void demote(TableObject *t, const uint8_t *pk, int wide, uint32_t n) {
    const unsigned klen = KEYLEN(wide);
    if (map_reserve(&t->exact[wide], n) < 0) {
        PyErr_Clear(); /* stays dense; the next removal retries */
        return;
    }
    uint32_t page = map_get(&t->dir[wide], pk) - 1;
    uint32_t *cells = t->pages + (uint64_t)page * 256;
    uint8_t key[16];
    memcpy(key, pk, klen);
    for (unsigned last = 0; last < 256; last++) {
        if (cells[last]) {
            key[klen - 1] = (uint8_t)last;
            map_set(&t->exact[wide], key, cells[last]);
        }
    }
    map_del(&t->dir[wide], pk);
    page_free(t, page);
    map_trim(&t->dir[wide]);
}

static int table_put_key(TableObject *t, const uint8_t *key, int wide, uint32_t verdict, const Binding *b) {
    const unsigned klen = KEYLEN(wide);
    Map *exact = &t->exact[wide], *count = &t->count[wide];
    uint8_t pk[16];
    memcpy(pk, key, klen);
    pk[klen - 1] = 0;
    /* every allocation first: after this point nothing fails */
    if (map_reserve(exact, 1) < 0 || map_reserve(count, 1) < 0 || (b->set && record_reserve(t) < 0))
        return -1;
    uint32_t page = map_get(&t->dir[wide], pk);
    uint8_t *cell = page ? (uint8_t *)(t->pages + (uint64_t)(page - 1) * 256 + key[klen - 1])
                         : map_slot(exact, key) + klen;
    uint32_t old = ld32(cell);
    uint32_t value = make_value(t, old, verdict, b);
    if (old) {
        st32(cell, value);
        return 0;
    }
    if (page)
        st32(cell, value);
    else
        map_set(exact, key, value);
    t->nexact++;
    uint32_t n = map_get(count, pk) + 1;
    map_set(count, pk, n);
    if (!page && n >= PROMOTE_AT)
        promote(t, pk, wide);
    return 0;
}

static int table_remove_key(TableObject *t, const uint8_t *key, int wide) {
    const unsigned klen = KEYLEN(wide);
    Map *count = &t->count[wide];
    uint8_t pk[16];
    memcpy(pk, key, klen);
    pk[klen - 1] = 0;
    uint32_t page = map_get(&t->dir[wide], pk), old;
    if (page) {
        uint32_t *cell = t->pages + (uint64_t)(page - 1) * 256 + key[klen - 1];
        old = *cell;
        *cell = 0;
    } else {
        old = map_del(&t->exact[wide], key);
        map_trim(&t->exact[wide]);
    }
    if (old == 0)
        return 0;
    if (old & BOUND)
        record_free(t, old & ~BOUND);
    t->nexact--;
    uint32_t n = map_get(count, pk) - 1;
    if (n == 0) {
        map_del(count, pk);
        map_trim(count);
    } else {
        map_set(count, pk, n); /* an existing key: no room needed */
    }
    if (page && n <= DEMOTE_AT)
        demote(t, pk, wide, n);
    return 1;
}

/* ---- argument parsing */

static int verdict_arg(PyObject *o, uint32_t *verdict) {
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < 0 || v > MAX_VERDICT) {
        PyErr_Format(PyExc_ValueError, "verdict must be 0 <= verdict < 2**31 - 1, not %R", o);
        return -1;
    }
    *verdict = (uint32_t)v;
    return 0;
}

static int binding_arg(PyObject *interface, PyObject *mac, Binding *b) {
    memset(b, 0, sizeof(*b));
    if (interface != NULL && interface != Py_None) {
        if (!PyUnicode_Check(interface)) {
            PyErr_SetString(PyExc_TypeError, "interface must be a str or None");
            return -1;
        }
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(interface, &n);
        if (s == NULL)
            return -1;
        if (n < 1 || n > 15 || memchr(s, 0, (size_t)n) != NULL) {
            PyErr_Format(PyExc_ValueError, "interface must be a name of 1 to 15 bytes (UTF-8) and no NUL, not %R",
                         interface);
            return -1;
        }
        memcpy(b->interface, s, (size_t)n);
        b->flags |= REC_INTERFACE;
    }
    if (mac != NULL && mac != Py_None) {
        if (!PyBytes_Check(mac)) {
            PyErr_SetString(PyExc_TypeError, "mac must be bytes or None");
            return -1;
        }
        const char *m = PyBytes_AS_STRING(mac);
        if (PyBytes_GET_SIZE(mac) != 8 || m[6] != 0 || m[7] != 0) {
            PyErr_Format(PyExc_ValueError, "mac must be 8 bytes as NFQUEUE reports it (6 address bytes and two "
                         "zeros), not %R", mac);
            return -1;
        }
        memcpy(b->mac, m, 8);
        b->flags |= REC_MAC;
    }
    b->set = b->flags != 0;
    return 0;
}

/* ---- methods */

static PyObject *table_put(TableObject *t, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"key", "verdict", "interface", "mac", NULL};
    const char *key;
    Py_ssize_t len;
    PyObject *verdicto, *interface = Py_None, *mac = Py_None;
    uint32_t verdict;
    Binding b;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y#O|OO:put", kwlist, &key, &len, &verdicto, &interface, &mac))
        return NULL;
    int wide = address_arg("key", len);
    if (wide < 0 || verdict_arg(verdicto, &verdict) < 0 || binding_arg(interface, mac, &b) < 0)
        return NULL;
    if (table_put_key(t, (const uint8_t *)key, wide, verdict, &b) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *table_remove(TableObject *t, PyObject *arg) {
    Py_buffer key;
    if (PyObject_GetBuffer(arg, &key, PyBUF_SIMPLE) < 0)
        return NULL;
    int wide = address_arg("key", key.len);
    PyObject *result = wide < 0 ? NULL : PyBool_FromLong(table_remove_key(t, key.buf, wide));
    PyBuffer_Release(&key);
    return result;
}

static PyObject *table_get(TableObject *t, PyObject *arg) {
    Py_buffer key;
    if (PyObject_GetBuffer(arg, &key, PyBUF_SIMPLE) < 0)
        return NULL;
    int wide = address_arg("key", key.len);
    if (wide < 0) {
        PyBuffer_Release(&key);
        return NULL;
    }
    const unsigned klen = KEYLEN(wide);
    const uint8_t *k = key.buf;
    uint8_t pk[16];
    memcpy(pk, k, klen);
    pk[klen - 1] = 0;
    uint32_t page = map_get(&t->dir[wide], pk);
    uint32_t value = page ? t->pages[(uint64_t)(page - 1) * 256 + k[klen - 1]] : map_get(&t->exact[wide], k);
    PyBuffer_Release(&key);
    if (value == 0)
        Py_RETURN_NONE;
    return describe(value, (const uint8_t *)t->records, t->nrecords);
}

/* A network argument: its family (0/1), checked for host bits past plen. */
static int network_arg(const char *net, Py_ssize_t len, int plen) {
    int wide = address_arg("network", len);
    if (wide < 0)
        return -1;
    int bits = (int)KEYLEN(wide) * 8;
    if (plen < 0 || plen > bits) {
        PyErr_Format(PyExc_ValueError, "plen must be 0..%d, not %d", bits, plen);
        return -1;
    }
    for (int i = plen; i < bits; i++) {
        if (net[i / 8] & (0x80 >> (i % 8))) {
            PyErr_SetString(PyExc_ValueError, "network has host bits set past its prefix length");
            return -1;
        }
    }
    return wide;
}

static PyObject *table_put_prefix(TableObject *t, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"network", "plen", "verdict", "interface", "mac", NULL};
    const char *net;
    Py_ssize_t len;
    int plen;
    PyObject *verdicto, *interface = Py_None, *mac = Py_None;
    uint32_t verdict;
    Binding b;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y#iO|OO:put_prefix", kwlist, &net, &len, &plen, &verdicto,
                                     &interface, &mac))
        return NULL;
    int wide = network_arg(net, len, plen);
    if (wide < 0 || verdict_arg(verdicto, &verdict) < 0 || binding_arg(interface, mac, &b) < 0)
        return NULL;
    uint8_t key[20];
    prefix_key(key, (const uint8_t *)net, wide, (unsigned)plen);
    if ((b.set && record_reserve(t) < 0) || map_reserve(&t->prefixes, 1) < 0)
        return NULL;
    map_set(&t->prefixes, key, make_value(t, map_get(&t->prefixes, key), verdict, &b));
    Py_RETURN_NONE;
}

static PyObject *table_remove_prefix(TableObject *t, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"network", "plen", NULL};
    const char *net;
    Py_ssize_t len;
    int plen;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y#i:remove_prefix", kwlist, &net, &len, &plen))
        return NULL;
    int wide = network_arg(net, len, plen);
    if (wide < 0)
        return NULL;
    uint8_t key[20];
    prefix_key(key, (const uint8_t *)net, wide, (unsigned)plen);
    uint32_t old = map_del(&t->prefixes, key);
    if (old == 0)
        Py_RETURN_FALSE;
    if (old & BOUND)
        record_free(t, old & ~BOUND);
    map_trim(&t->prefixes);
    Py_RETURN_TRUE;
}

static PyObject *table_set_allowed(TableObject *t, PyObject *arg) {
    Py_buffer allow;
    if (PyObject_GetBuffer(arg, &allow, PyBUF_SIMPLE) < 0)
        return NULL;
    uint8_t *copy = PyMem_Malloc(allow.len ? (size_t)allow.len : 1);
    if (copy == NULL) {
        PyBuffer_Release(&allow);
        return PyErr_NoMemory();
    }
    memcpy(copy, allow.buf, (size_t)allow.len);
    PyMem_Free(t->allow);
    t->allow = copy;
    t->nverdicts = (uint64_t)allow.len;
    PyBuffer_Release(&allow);
    Py_RETURN_NONE;
}

/* ---- the image */

typedef struct {
    uint64_t off[NSECTIONS], count[NSECTIONS], total;
    const void *src[NSECTIONS];
} Layout;

static void table_layout(const TableObject *t, Layout *l) {
    l->count[S_DIR4] = t->dir[0].cap;       l->src[S_DIR4] = t->dir[0].slots;
    l->count[S_DIR6] = t->dir[1].cap;       l->src[S_DIR6] = t->dir[1].slots;
    l->count[S_EXACT4] = t->exact[0].cap;   l->src[S_EXACT4] = t->exact[0].slots;
    l->count[S_EXACT6] = t->exact[1].cap;   l->src[S_EXACT6] = t->exact[1].slots;
    l->count[S_PAGES] = t->npages;          l->src[S_PAGES] = t->pages;
    l->count[S_RECORDS] = t->nrecords;      l->src[S_RECORDS] = t->records;
    l->count[S_PREFIXES] = t->prefixes.cap; l->src[S_PREFIXES] = t->prefixes.slots;
    l->count[S_ALLOW] = t->nverdicts;       l->src[S_ALLOW] = t->allow;
    uint64_t pos = HEADER_SIZE;
    for (int i = 0; i < NSECTIONS; i++) {
        l->off[i] = align_up(pos);
        pos = l->off[i] + l->count[i] * ELEM[i];
    }
    l->total = pos;
}

static void table_write(const TableObject *t, const Layout *l, uint8_t *out, uint64_t generation) {
    memset(out, 0, HEADER_SIZE);
    memcpy(out, MAGIC, 8);
    st32(out + 8, FORMAT_VERSION);
    st32(out + 12, HEADER_SIZE);
    st64(out + 16, generation);
    st64(out + 24, l->total);
    st64(out + 32, t->nexact);
    uint64_t pos = HEADER_SIZE;
    for (int i = 0; i < NSECTIONS; i++) {
        st64(out + 64 + 16 * i, l->off[i]);
        st64(out + 72 + 16 * i, l->count[i]);
        memset(out + pos, 0, l->off[i] - pos); /* padding: only the gaps, not the whole image */
        uint64_t size = l->count[i] * ELEM[i];
        if (size)
            memcpy(out + l->off[i], l->src[i], size);
        pos = l->off[i] + size;
    }
}

static int generation_arg(PyObject *o, uint64_t *generation) {
    if (!PyLong_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "generation must be an int");
        return -1;
    }
    *generation = PyLong_AsUnsignedLongLong(o);
    if (*generation == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "generation must be 0 <= generation < 2**64, not %R", o);
        return -1;
    }
    return 0;
}

static PyObject *table_image(TableObject *t, PyObject *arg) {
    uint64_t generation;
    if (generation_arg(arg, &generation) < 0)
        return NULL;
    Layout l;
    table_layout(t, &l);
    PyObject *image = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)l.total);
    if (image == NULL)
        return NULL;
    table_write(t, &l, (uint8_t *)PyBytes_AS_STRING(image), generation);
    return image;
}

static PyObject *table_image_into(TableObject *t, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"buffer", "generation", NULL};
    Py_buffer out;
    PyObject *go;
    uint64_t generation;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "w*O:image_into", kwlist, &out, &go))
        return NULL;
    Layout l;
    table_layout(t, &l);
    PyObject *result = NULL;
    if (generation_arg(go, &generation) < 0)
        goto done;
    if ((uint64_t)out.len < l.total) {
        PyErr_Format(PyExc_ValueError, "the buffer holds %zd bytes; the image needs %llu", out.len,
                     (unsigned long long)l.total);
        goto done;
    }
    table_write(t, &l, out.buf, generation);
    result = PyLong_FromUnsignedLongLong(l.total);
done:
    PyBuffer_Release(&out);
    return result;
}

static PyObject *table_nbytes(TableObject *t, void *Py_UNUSED(closure)) {
    Layout l;
    table_layout(t, &l);
    return PyLong_FromUnsignedLongLong(l.total);
}

static PyObject *table_stats(TableObject *t, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsKsKsKsK}",
        "addresses", (unsigned long long)t->nexact,
        "dense4", (unsigned long long)t->dir[0].used, "dense6", (unsigned long long)t->dir[1].used,
        "exact4", (unsigned long long)t->exact[0].used, "exact6", (unsigned long long)t->exact[1].used,
        "exact4_slots", (unsigned long long)t->exact[0].cap, "exact6_slots", (unsigned long long)t->exact[1].cap,
        "pages", (unsigned long long)t->npages, "free_pages", (unsigned long long)t->free_pages.n,
        "records", (unsigned long long)t->nrecords, "free_records", (unsigned long long)t->free_records.n,
        "prefixes", (unsigned long long)t->prefixes.used, "verdicts", (unsigned long long)t->nverdicts);
}

static Py_ssize_t table_len(TableObject *t) { return (Py_ssize_t)(t->nexact + t->prefixes.used); }

static PyMethodDef table_methods[] = {
    {"put", (PyCFunction)(void (*)(void))table_put, METH_VARARGS | METH_KEYWORDS,
     "put(key, verdict, interface=None, mac=None): register a packed address (replaces its entry)."},
    {"remove", (PyCFunction)table_remove, METH_O, "remove(key) -> bool: whether it was registered."},
    {"put_prefix", (PyCFunction)(void (*)(void))table_put_prefix, METH_VARARGS | METH_KEYWORDS,
     "put_prefix(network, plen, verdict, interface=None, mac=None): register a prefix (the longest holding an "
     "address decides, only when the exact lookup misses)."},
    {"remove_prefix", (PyCFunction)(void (*)(void))table_remove_prefix, METH_VARARGS | METH_KEYWORDS,
     "remove_prefix(network, plen) -> bool"},
    {"set_allowed", (PyCFunction)table_set_allowed, METH_O,
     "set_allowed(allow): one byte a verdict, nonzero = that verdict allows."},
    {"get", (PyCFunction)table_get, METH_O, "get(key) -> (verdict, interface, mac) | None, exact entries only."},
    {"image", (PyCFunction)table_image, METH_O, "image(generation) -> bytes: the read-only image a View reads."},
    {"image_into", (PyCFunction)(void (*)(void))table_image_into, METH_VARARGS | METH_KEYWORDS,
     "image_into(buffer, generation) -> int: write the image into a writable buffer of at least nbytes bytes "
     "(an mmap of a memfd, say); returns its size."},
    {"stats", (PyCFunction)table_stats, METH_NOARGS, "stats() -> dict: how the table is laid out (for tests)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef table_getset[] = {
    {"nbytes", (getter)table_nbytes, NULL, "bytes of the image image() would produce", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods table_as_sequence = {.sq_length = (lenfunc)table_len};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "enforcer.dataplane._fastpath.Table",
    .tp_doc = "Table(): the mutable verdict table the daemon builds and patches; image() publishes it.",
    .tp_basicsize = sizeof(TableObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = table_new,
    .tp_dealloc = (destructor)table_dealloc,
    .tp_methods = table_methods,
    .tp_getset = table_getset,
    .tp_as_sequence = &table_as_sequence,
};

#endif /* FASTPATH_TABLE_H */
