/*
 * enforcer.dataplane._fastpath: the verdict table in C, and the per-packet callback that reads it.
 *
 *   Table (the daemon: mutable, owns its arrays) --image()--> bytes --memfd, mmap PROT_READ--> View (the workers)
 *   Judge (the NFQUEUE callback) reads a View; swap() replaces it between two packets.
 *
 * Why: at a million registered addresses a Python dict costs 3-4 cache misses a lookup and ~1.4 GiB a worker.
 * Here a lookup touches one or two cache lines whatever the inventory size, the image costs <= 64 bytes an
 * address in the usual cases (see "Memory" below), and every worker maps the same read-only image.
 *
 * Addresses
 *   An address (4 bytes IPv4, 16 bytes IPv6, network order, as the IP header carries it) splits into its
 *   *prefix* (all but the last byte: a /24 or a /120) and its *last byte*. IPv4 and IPv6 have separate hash
 *   maps (index 0 and 1 of each pair below), so the family needs no tag and IPv4 slots stay 8 bytes.
 *
 * Values (u32, in pages, exact slots and prefix entries)
 *   0                 absent
 *   1 .. 2^31-1       class index + 1 (unbound)
 *   0x80000000 | r    bound: r indexes a binding record, which holds the class
 *
 * Image (little-endian; the arrays are written as they lie in the Table's memory, so image() is memcpys)
 *   header, 192 bytes:
 *     0   magic "P25FAST\0"        8   u32 format version (1)      12  u32 header size (192)
 *     16  u64 generation           24  u64 total size              32  u64 exact entries (addresses)
 *     40  24 bytes zero (reserved)
 *     64  8 sections x { u64 offset, u64 count }, each offset a multiple of 64:
 *   DIR4, DIR6      the directory: open addressing, linear probing, load <= 0.5, a power of two >= 8 slots;
 *                   dense prefix (last byte zeroed) -> page number + 1. Slots: DIR4 { u8 key[4]; u32 value }
 *                   (8 bytes), DIR6 { u8 key[16]; u32 value } (20 bytes). Few entries: it stays in cache.
 *   EXACT4, EXACT6  the same kind of map, full address -> value, for addresses whose prefix is sparse.
 *   PAGES           count x 256 u32 values (1 KiB), indexed by the last byte: every address of a dense prefix.
 *   RECORDS         binding records, 32 bytes: { u32 class; u32 flags (1 interface, 2 MAC);
 *                   u8 mac[8] (as NFQUEUE's get_hw() gives it); char interface[16] (NUL-padded) }.
 *   PREFIXES        prefix-registered sources (scale sets), 24 bytes: { u8 family (4 or 6); u8 length;
 *                   u8 zero[2]; u32 value; u8 network[16] }, longest first; scanned only on an exact miss.
 *   CLASSES         one byte a class index: nonzero = that class allows. Past the end: blocked.
 *   A lookup: hash the prefix, probe the directory; a hit is one read of the page (two cache lines in all,
 *   the directory's usually cached). A miss probes the exact map (one line, sometimes two: a 20-byte slot
 *   can straddle), then, only if that misses too, the prefix entries.
 *
 * Table (daemon side, not in the image)
 *   A count of addresses per prefix (one more map per family). A prefix is promoted to a page when it reaches
 *   PROMOTE_AT addresses and demoted back to exact entries when it falls to DEMOTE_AT (hysteresis: a prefix at
 *   the threshold does not flap). Free pages and records are kept on free lists and reused. Maps double when
 *   they would pass load 0.5, halve when below 1/8, and delete by backward shift (no tombstones). Every
 *   allocation an operation needs happens before it changes anything, so a MemoryError leaves the table as it
 *   was (a promotion, demotion or shrink that cannot allocate is skipped: the table stays correct).
 *
 * Memory (image bytes an address): a page is 1 KiB for 64..256 dense addresses (4-16 bytes each; down to 32
 *   after removals); an exact slot is 8 (IPv4) or 20 (IPv6) bytes at load 1/4..1/2, i.e. 16-32 or 40-80 bytes
 *   an address (80 only just after a doubling); a binding record adds 32.
 *
 * View trusts nothing in the buffer: the header's offsets and sizes are checked against the buffer's length,
 * probes stop after `cap` slots, page and record numbers are checked at every use. Garbage cannot crash it.
 * It holds the buffer (an mmap cannot be closed under it); what it cannot stop is the file under a mapping
 * shrinking, which faults (SIGBUS): a memfd to be mapped should be sealed (F_SEAL_SHRINK, F_SEAL_WRITE).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <net/if.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the image is little-endian and written as the arrays lie in memory; a big-endian build needs byte swaps"
#endif

#define MAGIC "P25FAST"            /* with its NUL: 8 bytes */
#define FORMAT_VERSION 1u
#define HEADER_SIZE 192u
#define ALIGN 64u
#define MIN_CAP 8u
#define MAX_CAP (1ull << 40)       /* a View refuses bigger maps: keeps the shift arithmetic in range */
#define PROMOTE_AT 64u
#define DEMOTE_AT 32u
#define BOUND 0x80000000u
#define MAX_CLASS 0x7ffffffeu      /* cls + 1 must stay below BOUND */
#define REC_INTERFACE 1u
#define REC_MAC 2u
#define UNKNOWN (-1)
#define SPOOFED (-2)

enum { S_DIR4, S_DIR6, S_EXACT4, S_EXACT6, S_PAGES, S_RECORDS, S_PREFIXES, S_CLASSES, NSECTIONS };
static const uint64_t ELEM[NSECTIONS] = {8, 20, 8, 20, 1024, 32, 24, 1};
static const char *const SECTION_NAME[NSECTIONS] = {
    "dir4", "dir6", "exact4", "exact6", "pages", "records", "prefixes", "classes"};

typedef struct {
    uint32_t cls;
    uint32_t flags;
    uint8_t mac[8];
    char interface[16];
} Record;

typedef struct {
    uint8_t family;
    uint8_t plen;
    uint8_t zero[2];
    uint32_t value;
    uint8_t net[16];
} Prefix;

_Static_assert(sizeof(Record) == 32, "a binding record is 32 bytes");
_Static_assert(sizeof(Prefix) == 24, "a prefix entry is 24 bytes");

/* ---------------------------------------------------------------- loads, hashes, probing */

/* Through memcpy: a View's buffer need not be aligned (the compiler makes these plain loads). */
static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void st64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

#define KEYLEN(wide) ((wide) ? 16u : 4u)
#define SLOTLEN(wide) (KEYLEN(wide) + 4u)

/* 64x64 -> 128-bit multiply folded (the wyhash mixer): a few cycles, and every input bit reaches the top bits,
 * which are the ones the index takes. */
static inline uint64_t fold(uint64_t a, uint64_t b) {
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t hash4(const uint8_t *key) {
    return fold(ld32(key) ^ 0x243f6a8885a308d3ull, 0x9e3779b97f4a7c15ull);
}

/* Two rounds, so that no value of either half makes the other one irrelevant (a single
 * fold(a ^ c, b ^ d) would hash every key of one particular a to the same place). */
static inline uint64_t hash6(const uint8_t *key) {
    return fold(fold(ld64(key) ^ 0x243f6a8885a308d3ull, 0x9e3779b97f4a7c15ull) ^ ld64(key + 8),
                0xbf58476d1ce4e5b9ull);
}

static inline __attribute__((always_inline)) uint64_t hash_key(const uint8_t *key, const int wide) {
    return wide ? hash6(key) : hash4(key);
}

static inline unsigned log2u(uint64_t x) { return 63u - (unsigned)__builtin_clzll(x); }

/* The value stored for key in a map of cap slots (a power of two; index = hash >> shift), or 0. At most cap
 * probes: a Table keeps an empty slot in every probe run, but a garbage image might not. */
static inline __attribute__((always_inline)) uint32_t
probe(const uint8_t *slots, uint64_t cap, unsigned shift, const uint8_t *key, const int wide) {
    const uint64_t mask = cap - 1;
    uint64_t i = hash_key(key, wide) >> shift;
    for (uint64_t n = 0; n < cap; n++, i = (i + 1) & mask) {
        const uint8_t *s = slots + i * SLOTLEN(wide);
        uint32_t v = ld32(s + KEYLEN(wide));
        if (v == 0)
            return 0;
        if (memcmp(s, key, KEYLEN(wide)) == 0)
            return v;
    }
    return 0;
}

/* Whether key lies in net/plen (net's host bits are masked here too: a View does not trust them). */
static inline int prefix_contains(const uint8_t *net, unsigned plen, const uint8_t *key) {
    unsigned full = plen / 8, rest = plen % 8;
    if (memcmp(net, key, full) != 0)
        return 0;
    if (rest == 0)
        return 1;
    uint8_t m = (uint8_t)(0xffu << (8 - rest));
    return (net[full] & m) == (key[full] & m);
}

static inline uint64_t align_up(uint64_t x) { return (x + ALIGN - 1) & ~(uint64_t)(ALIGN - 1); }

/* ---------------------------------------------------------------- Map (Table side) */

typedef struct {
    uint8_t *slots;
    uint64_t cap, used;
    unsigned shift; /* 64 - log2(cap) */
    int wide;
} Map;

static int map_init(Map *m, int wide) {
    m->wide = wide;
    m->cap = MIN_CAP;
    m->used = 0;
    m->shift = 64 - log2u(MIN_CAP);
    m->slots = PyMem_Calloc(MIN_CAP, SLOTLEN(wide));
    if (m->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static uint32_t map_get(const Map *m, const uint8_t *key) {
    return m->wide ? probe(m->slots, m->cap, m->shift, key, 1) : probe(m->slots, m->cap, m->shift, key, 0);
}

/* The slot holding key, or the empty slot that ends its probe run (there is one: load <= 0.5). */
static uint8_t *map_slot(const Map *m, const uint8_t *key) {
    const unsigned klen = KEYLEN(m->wide), slen = SLOTLEN(m->wide);
    const uint64_t mask = m->cap - 1;
    uint64_t i = hash_key(key, m->wide) >> m->shift;
    for (;;) {
        uint8_t *s = m->slots + i * slen;
        if (ld32(s + klen) == 0 || memcmp(s, key, klen) == 0)
            return s;
        i = (i + 1) & mask;
    }
}

static int map_resize(Map *m, uint64_t cap) {
    const unsigned klen = KEYLEN(m->wide), slen = SLOTLEN(m->wide);
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
        uint64_t i = hash_key(s, m->wide) >> shift;
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
    const unsigned klen = KEYLEN(m->wide);
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
    const unsigned klen = KEYLEN(m->wide), slen = SLOTLEN(m->wide);
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
        uint64_t home = hash_key(t, m->wide) >> m->shift;
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
    Prefix *prefixes;                /* longest first */
    uint64_t nprefixes, prefixes_cap;
    uint8_t *allow;
    uint64_t nclasses;
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
    PyMem_Free(t->prefixes);
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

/* The value for (cls, binding) replacing `old`: a bound old keeps its record for a bound new one, and frees it
 * for an unbound one. A bound new one with an unbound old needs record_reserve() first. */
static uint32_t make_value(TableObject *t, uint32_t old, uint32_t cls, const Binding *b) {
    if (!b->set) {
        if (old & BOUND)
            record_free(t, old & ~BOUND);
        return cls + 1;
    }
    uint32_t r = (old & BOUND) ? old & ~BOUND : record_take(t);
    Record *rec = &t->records[r];
    memset(rec, 0, sizeof(Record));
    rec->cls = cls;
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

static int table_put_key(TableObject *t, const uint8_t *key, int wide, uint32_t cls, const Binding *b) {
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
    uint32_t value = make_value(t, old, cls, b);
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

/* A packed address: 4 or 16 bytes. Returns wide (0/1), or -1 with ValueError. */
static int address_arg(const char *what, Py_ssize_t len) {
    if (len == 4)
        return 0;
    if (len == 16)
        return 1;
    PyErr_Format(PyExc_ValueError, "%s must be a packed address (4 or 16 bytes), not %zd bytes", what, len);
    return -1;
}

static int class_arg(PyObject *o, uint32_t *cls) {
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < 0 || v > MAX_CLASS) {
        PyErr_Format(PyExc_ValueError, "cls must be 0 <= cls < 2**31 - 1, not %R", o);
        return -1;
    }
    *cls = (uint32_t)v;
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

/* (cls, interface | None, mac | None) of a value that is present. */
static PyObject *describe(uint32_t value, const uint8_t *records, uint64_t nrecords) {
    if (!(value & BOUND))
        return Py_BuildValue("(IOO)", value - 1, Py_None, Py_None);
    uint32_t r = value & ~BOUND;
    if (r >= nrecords) /* only a garbage image */
        Py_RETURN_NONE;
    Record rec;
    memcpy(&rec, records + (uint64_t)r * sizeof(Record), sizeof rec);
    PyObject *interface, *mac;
    if (rec.flags & REC_INTERFACE) {
        interface = PyUnicode_DecodeUTF8(rec.interface, (Py_ssize_t)strnlen(rec.interface, 16), "replace");
        if (interface == NULL)
            return NULL;
    } else {
        interface = Py_NewRef(Py_None);
    }
    mac = (rec.flags & REC_MAC) ? PyBytes_FromStringAndSize((const char *)rec.mac, 8) : Py_NewRef(Py_None);
    if (mac == NULL) {
        Py_DECREF(interface);
        return NULL;
    }
    return Py_BuildValue("(INN)", rec.cls, interface, mac);
}

/* ---- methods */

static PyObject *table_put(TableObject *t, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"key", "cls", "interface", "mac", NULL};
    const char *key;
    Py_ssize_t len;
    PyObject *clso, *interface = Py_None, *mac = Py_None;
    uint32_t cls;
    Binding b;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y#O|OO:put", kwlist, &key, &len, &clso, &interface, &mac))
        return NULL;
    int wide = address_arg("key", len);
    if (wide < 0 || class_arg(clso, &cls) < 0 || binding_arg(interface, mac, &b) < 0)
        return NULL;
    if (table_put_key(t, (const uint8_t *)key, wide, cls, &b) < 0)
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

static Prefix *find_prefix(TableObject *t, int family, int plen, const char *net) {
    for (uint64_t i = 0; i < t->nprefixes; i++) {
        Prefix *p = &t->prefixes[i];
        if (p->family == family && p->plen == plen && memcmp(p->net, net, family == 4 ? 4 : 16) == 0)
            return p;
    }
    return NULL;
}

static PyObject *table_put_prefix(TableObject *t, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"network", "plen", "cls", "interface", "mac", NULL};
    const char *net;
    Py_ssize_t len;
    int plen;
    PyObject *clso, *interface = Py_None, *mac = Py_None;
    uint32_t cls;
    Binding b;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y#iO|OO:put_prefix", kwlist, &net, &len, &plen, &clso,
                                     &interface, &mac))
        return NULL;
    int wide = network_arg(net, len, plen);
    if (wide < 0 || class_arg(clso, &cls) < 0 || binding_arg(interface, mac, &b) < 0)
        return NULL;
    int family = wide ? 6 : 4;
    Prefix *p = find_prefix(t, family, plen, net);
    if (b.set && record_reserve(t) < 0)
        return NULL;
    if (p != NULL) {
        p->value = make_value(t, p->value, cls, &b);
        Py_RETURN_NONE;
    }
    if (grow((void **)&t->prefixes, &t->prefixes_cap, t->nprefixes + 1, sizeof(Prefix)) < 0)
        return NULL;
    uint64_t at = 0; /* after every longer or equally long one */
    while (at < t->nprefixes && t->prefixes[at].plen >= plen)
        at++;
    memmove(&t->prefixes[at + 1], &t->prefixes[at], (t->nprefixes - at) * sizeof(Prefix));
    p = &t->prefixes[at];
    memset(p, 0, sizeof(*p));
    p->family = (uint8_t)family;
    p->plen = (uint8_t)plen;
    memcpy(p->net, net, (size_t)len);
    p->value = make_value(t, 0, cls, &b);
    t->nprefixes++;
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
    Prefix *p = find_prefix(t, wide ? 6 : 4, plen, net);
    if (p == NULL)
        Py_RETURN_FALSE;
    if (p->value & BOUND)
        record_free(t, p->value & ~BOUND);
    uint64_t at = (uint64_t)(p - t->prefixes);
    memmove(p, p + 1, (t->nprefixes - at - 1) * sizeof(Prefix));
    t->nprefixes--;
    Py_RETURN_TRUE;
}

static PyObject *table_set_classes(TableObject *t, PyObject *arg) {
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
    t->nclasses = (uint64_t)allow.len;
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
    l->count[S_PREFIXES] = t->nprefixes;    l->src[S_PREFIXES] = t->prefixes;
    l->count[S_CLASSES] = t->nclasses;      l->src[S_CLASSES] = t->allow;
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
        "prefixes", (unsigned long long)t->nprefixes, "classes", (unsigned long long)t->nclasses);
}

static Py_ssize_t table_len(TableObject *t) { return (Py_ssize_t)(t->nexact + t->nprefixes); }

static PyMethodDef table_methods[] = {
    {"put", (PyCFunction)(void (*)(void))table_put, METH_VARARGS | METH_KEYWORDS,
     "put(key, cls, interface=None, mac=None): register a packed address (replaces its entry)."},
    {"remove", (PyCFunction)table_remove, METH_O, "remove(key) -> bool: whether it was registered."},
    {"put_prefix", (PyCFunction)(void (*)(void))table_put_prefix, METH_VARARGS | METH_KEYWORDS,
     "put_prefix(network, plen, cls, interface=None, mac=None): register a prefix (matched longest first, only "
     "when the exact lookup misses)."},
    {"remove_prefix", (PyCFunction)(void (*)(void))table_remove_prefix, METH_VARARGS | METH_KEYWORDS,
     "remove_prefix(network, plen) -> bool"},
    {"set_classes", (PyCFunction)table_set_classes, METH_O,
     "set_classes(allow): one byte a class index, nonzero = that class allows."},
    {"get", (PyCFunction)table_get, METH_O, "get(key) -> (cls, interface, mac) | None, exact entries only."},
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
    uint64_t npages, nrecords, nprefixes, nclasses;
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
    v->allow = at[S_CLASSES];
    v->nclasses = count[S_CLASSES];
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

/* A value's class and binding record (NULL: unbound); -1 for 0 or a record number past the end. */
static inline int64_t view_class(const ViewObject *v, uint32_t value, const uint8_t **record) {
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
    return PyLong_FromLongLong(view_class(v, view_find(v, addr, wide, &exact), &record));
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

static PyObject *view_allows(ViewObject *v, PyObject *clso) {
    long long cls = PyLong_AsLongLong(clso);
    if (cls == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return NULL;
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    return PyBool_FromLong(cls >= 0 && (uint64_t)cls < v->nclasses && v->allow[cls]);
}

static Py_ssize_t view_len(ViewObject *v) { return (Py_ssize_t)(v->entries + v->nprefixes); }

static PyObject *view_get_buffer(ViewObject *v, void *Py_UNUSED(closure)) {
    return Py_NewRef(v->buffer.obj ? v->buffer.obj : Py_None);
}

static PyMethodDef view_methods[] = {
    {"lookup", (PyCFunction)view_lookup, METH_O,
     "lookup(key) -> int: the class index registered for the packed address (exact, else longest prefix), "
     "-1 if none."},
    {"entry", (PyCFunction)view_entry, METH_O,
     "entry(key) -> (cls, interface, mac) | None, exact entries and prefixes."},
    {"allows", (PyCFunction)view_allows, METH_O, "allows(cls) -> bool"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef view_members[] = {
    {"generation", T_ULONGLONG, offsetof(ViewObject, generation), READONLY, "the image's generation"},
    {"classes", T_ULONGLONG, offsetof(ViewObject, nclasses), READONLY, "how many class indexes it knows"},
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

/* ---------------------------------------------------------------- Judge */

/* interface index -> name, direct-mapped by index: 32 KiB a Judge, so that a gateway with a veth a VM (indexes
 * only grow as interfaces come and go) rarely has two live indexes evict each other */
#define IFCACHE 1024

typedef struct {
    uint32_t index;                  /* 0: empty */
    char name[IF_NAMESIZE];          /* "" when the index had no interface */
    uint64_t resolved_ns;
} IfName;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    ViewObject *view;
    uint64_t *counts;                /* per class index of the view */
    uint64_t ncounts;
    unsigned long long unknown, spoofed, malformed, errors, unclassed;
    char default_allow;
    PyObject *drops_append, *remember_append; /* bound append methods, or NULL */
    IfName ifnames[IFCACHE];
} JudgeObject;

static PyObject *s_get_payload, *s_get_hw, *s_accept, *s_drop, *s_indev, *s_append;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void ifname_resolve(IfName *c, uint32_t index) {
    char name[IF_NAMESIZE];
    c->index = index;
    c->resolved_ns = now_ns();
    if (if_indextoname(index, name) == NULL)
        c->name[0] = 0; /* no such interface: remembered too, or every packet would cost the syscalls */
    else
        memcpy(c->name, name, IF_NAMESIZE);
}

/* Whether interface `index` is named `want` (a record's 16 NUL-padded bytes). A mismatch looks the index up
 * again, at most once a second an index: the interface may have been recreated under the same index with
 * another name, but a spoofer must not buy three syscalls with every packet. */
static int interface_is(JudgeObject *j, uint32_t index, const char *want) {
    if (index == 0)
        return 0;
    IfName *c = &j->ifnames[index % IFCACHE];
    if (c->index != index)
        ifname_resolve(c, index);
    else if (strncmp(c->name, want, 16) != 0 && now_ns() - c->resolved_ns >= 1000000000u)
        ifname_resolve(c, index);
    return c->name[0] != 0 && strncmp(c->name, want, 16) == 0;
}

/* Whether an allowed, bound source's packet came from elsewhere; -1 with an exception. *indev, *hw: what it
 * fetched of the packet (new references), for the drop record. */
static int is_spoofed(JudgeObject *j, PyObject *pkt, const uint8_t *record, PyObject **indev, PyObject **hw) {
    Record rec;
    memcpy(&rec, record, sizeof rec);
    if (rec.flags & REC_INTERFACE) {
        *indev = PyObject_GetAttr(pkt, s_indev);
        if (*indev == NULL)
            return -1;
        unsigned long index = PyLong_AsUnsignedLong(*indev);
        if (index == (unsigned long)-1 && PyErr_Occurred())
            return -1;
        if (index > UINT32_MAX || !interface_is(j, (uint32_t)index, rec.interface))
            return 1;
    }
    if (rec.flags & REC_MAC) {
        *hw = PyObject_CallMethodNoArgs(pkt, s_get_hw);
        if (*hw == NULL)
            return -1;
        if (!PyBytes_Check(*hw) || PyBytes_GET_SIZE(*hw) != 8 || memcmp(PyBytes_AS_STRING(*hw), rec.mac, 8) != 0)
            return 1;
    }
    return 0;
}

static int give_verdict(PyObject *pkt, int allow) {
    PyObject *r = PyObject_CallMethodNoArgs(pkt, allow ? s_accept : s_drop);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int append(PyObject *method, PyObject *item) {
    if (item == NULL)
        return -1;
    PyObject *r = PyObject_CallOneArg(method, item);
    Py_DECREF(item);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The drop record: (view, cls, key, payload, came_from); came_from = (indev, hw) for a spoofed source. */
static int record_drop(JudgeObject *j, PyObject *pkt, ViewObject *view, int64_t cls, const uint8_t *key,
                       int wide, PyObject *payload, PyObject **indev, PyObject **hw) {
    PyObject *came_from = Py_None, *k, *c;
    if (cls == SPOOFED) {
        if (*indev == NULL && (*indev = PyObject_GetAttr(pkt, s_indev)) == NULL)
            return -1;
        if (*hw == NULL && (*hw = PyObject_CallMethodNoArgs(pkt, s_get_hw)) == NULL)
            return -1;
        if ((came_from = PyTuple_Pack(2, *indev, *hw)) == NULL)
            return -1;
    } else {
        Py_INCREF(came_from);
    }
    k = PyBytes_FromStringAndSize((const char *)key, KEYLEN(wide));
    c = PyLong_FromLongLong(cls);
    PyObject *item = (k && c) ? PyTuple_Pack(5, (PyObject *)view, c, k, payload, came_from) : NULL;
    Py_XDECREF(k);
    Py_XDECREF(c);
    Py_DECREF(came_from);
    return append(j->drops_append, item);
}

static void judge_packet(JudgeObject *j, PyObject *pkt) {
    PyObject *payload = NULL, *indev = NULL, *hw = NULL;
    ViewObject *view = NULL;
    int given = 0; /* a verdict went out: an error after it must not try another */

    payload = PyObject_CallMethodNoArgs(pkt, s_get_payload);
    if (payload == NULL)
        goto error;
    if (!PyBytes_Check(payload)) {
        PyErr_SetString(PyExc_TypeError, "get_payload() returned no bytes");
        goto error;
    }
    /* The source sits at a fixed offset in both versions (options and extension headers come after it); read
     * in place. 0x45..0x4f: version 4 with a header length of 5 words or more. */
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(payload), *key;
    const Py_ssize_t n = PyBytes_GET_SIZE(payload);
    int wide;
    if (n >= 20 && p[0] >= 0x45 && p[0] <= 0x4f) {
        key = p + 12;
        wide = 0;
    } else if (n >= 40 && p[0] >= 0x60 && p[0] <= 0x6f) {
        key = p + 8;
        wide = 1;
    } else {
        j->malformed++;
        if (give_verdict(pkt, j->default_allow) < 0)
            goto error;
        goto done;
    }

    /* Our own reference: a swap() while a packet method runs Python code must not free what we read. */
    view = (ViewObject *)Py_NewRef(j->view);
    const uint8_t *record;
    int exact, allow = 0, bound = 0;
    int64_t cls = view_class(view, view_find(view, key, wide, &exact), &record);
    if (cls >= 0) {
        allow = (uint64_t)cls < view->nclasses && view->allow[cls];
        bound = record != NULL && (ld32(record + 4) & (REC_INTERFACE | REC_MAC));
        if (allow && bound) {
            int s = is_spoofed(j, pkt, record, &indev, &hw);
            if (s < 0)
                goto error;
            if (s) {
                allow = 0;
                cls = SPOOFED;
            }
        }
    }
    /* counted before the verdict, as the Python callback does; per class only into the judging view's counts */
    if (cls == UNKNOWN)
        j->unknown++;
    else if (cls == SPOOFED)
        j->spoofed++;
    else if (j->view == view && (uint64_t)cls < j->ncounts)
        j->counts[cls]++;
    else if ((uint64_t)cls >= view->nclasses)
        j->unclassed++;

    if (give_verdict(pkt, allow) < 0)
        goto error;
    given = 1;
    if (!allow && j->drops_append && record_drop(j, pkt, view, cls, key, wide, payload, &indev, &hw) < 0)
        goto error;
    /* the kernel cache may hold only what does not depend on where the packet came from */
    if (j->remember_append && exact && cls >= 0 && !(allow && bound) &&
        append(j->remember_append, Py_BuildValue("(y#O)", key, (Py_ssize_t)KEYLEN(wide),
                                                 allow ? Py_True : Py_False)) < 0)
        goto error;
    goto done;

error:
    /* the loop must survive anything: count it and decide */
    PyErr_Clear();
    j->errors++;
    if (!given && give_verdict(pkt, j->default_allow) < 0)
        PyErr_Clear();
done:
    Py_XDECREF(payload);
    Py_XDECREF(indev);
    Py_XDECREF(hw);
    Py_XDECREF(view);
}

static PyObject *judge_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Judge takes one packet");
        return NULL;
    }
    judge_packet((JudgeObject *)self, args[0]);
    Py_RETURN_NONE;
}

static uint64_t *new_counts(const ViewObject *view) {
    uint64_t *c = PyMem_Calloc(view->nclasses ? view->nclasses : 1, sizeof(uint64_t));
    if (c == NULL)
        PyErr_NoMemory();
    return c;
}

static int bound_append(PyObject *o, PyObject **method) {
    *method = NULL;
    if (o == NULL || o == Py_None)
        return 0;
    *method = PyObject_GetAttr(o, s_append);
    return *method ? 0 : -1;
}

static void judge_dealloc(JudgeObject *j) {
    Py_XDECREF(j->view);
    Py_XDECREF(j->drops_append);
    Py_XDECREF(j->remember_append);
    PyMem_Free(j->counts);
    Py_TYPE(j)->tp_free((PyObject *)j);
}

static PyObject *judge_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"view", "default_allow", "drops", "remember", NULL};
    PyObject *view, *drops = Py_None, *remember = Py_None;
    int default_allow = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!|pOO:Judge", kwlist, &ViewType, &view, &default_allow, &drops,
                                     &remember))
        return NULL;
    JudgeObject *j = (JudgeObject *)type->tp_alloc(type, 0);
    if (j == NULL)
        return NULL;
    j->vectorcall = judge_vectorcall;
    j->view = (ViewObject *)Py_NewRef(view);
    j->default_allow = (char)default_allow;
    j->ncounts = j->view->nclasses;
    if ((j->counts = new_counts(j->view)) == NULL || bound_append(drops, &j->drops_append) < 0 ||
        bound_append(remember, &j->remember_append) < 0) {
        Py_DECREF(j);
        return NULL;
    }
    return (PyObject *)j;
}

static PyObject *counts_list(const uint64_t *counts, uint64_t n) {
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (uint64_t i = 0; list != NULL && i < n; i++) {
        PyObject *c = PyLong_FromUnsignedLongLong(counts[i]);
        if (c == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, c);
    }
    return list;
}

static PyObject *judge_swap(JudgeObject *j, PyObject *view) {
    if (!PyObject_TypeCheck(view, &ViewType)) {
        PyErr_Format(PyExc_TypeError, "swap() takes a View, not %.100s", Py_TYPE(view)->tp_name);
        return NULL;
    }
    uint64_t *counts = new_counts((ViewObject *)view);
    if (counts == NULL)
        return NULL;
    /* The exchange itself calls no Python code, so no packet can land between its steps; the old counts are
     * ours alone once it is done, and only then do we allocate (which may run code, even switch threads). */
    uint64_t *old = j->counts, n = j->ncounts;
    ViewObject *old_view = j->view;
    j->view = (ViewObject *)Py_NewRef(view);
    j->counts = counts;
    j->ncounts = j->view->nclasses;
    PyObject *list = counts_list(old, n); /* NULL: MemoryError, and those hits are lost */
    PyMem_Free(old);
    Py_DECREF(old_view);
    return list;
}

static PyObject *judge_counts(JudgeObject *j, PyObject *Py_UNUSED(ignored)) {
    return counts_list(j->counts, j->ncounts);
}

static PyMethodDef judge_methods[] = {
    {"swap", (PyCFunction)judge_swap, METH_O,
     "swap(view) -> list[int]: judge with `view` from the next packet on; returns the per-class counts so far "
     "and starts new ones."},
    {"counts", (PyCFunction)judge_counts, METH_NOARGS, "counts() -> list[int]: hits per class index so far."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef judge_members[] = {
    {"view", T_OBJECT, offsetof(JudgeObject, view), READONLY, "the View it judges with"},
    {"default_allow", T_BOOL, offsetof(JudgeObject, default_allow), 0,
     "the verdict for a malformed packet or after an error"},
    {"unknown", T_ULONGLONG, offsetof(JudgeObject, unknown), READONLY, "packets of unregistered sources"},
    {"spoofed", T_ULONGLONG, offsetof(JudgeObject, spoofed), READONLY,
     "packets of allowed sources that came from where they are not bound"},
    {"malformed", T_ULONGLONG, offsetof(JudgeObject, malformed), READONLY, "packets with no source to read"},
    {"errors", T_ULONGLONG, offsetof(JudgeObject, errors), READONLY, "packets whose judging raised"},
    {"unclassed", T_ULONGLONG, offsetof(JudgeObject, unclassed), READONLY,
     "packets of a class index past the view's classes (blocked)"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject JudgeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "enforcer.dataplane._fastpath.Judge",
    .tp_doc = "Judge(view, default_allow=False, drops=None, remember=None): the NFQUEUE callback; gives every "
              "packet exactly one verdict and never raises.",
    .tp_basicsize = sizeof(JudgeObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(JudgeObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = judge_new,
    .tp_dealloc = (destructor)judge_dealloc,
    .tp_methods = judge_methods,
    .tp_members = judge_members,
};

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
