/*
 * Part of enforcer.dataplane._fastpath: _fastpath.c #includes it (one compilation unit, see there).
 *
 * The image: the format the Table writes and a View reads, and what both sides share: its constants and
 * sections, unaligned loads and stores, the hashes, probing, prefix matching, and the Python face of a key
 * and of a value.
 *
 * Addresses
 *   An address (4 bytes IPv4, 16 bytes IPv6, network order, as the IP header carries it) splits into its
 *   *prefix* (all but the last byte: a /24 or a /120) and its *last byte*. IPv4 and IPv6 have separate hash
 *   maps (index 0 and 1 of each pair below), so the family needs no tag and IPv4 slots stay 8 bytes.
 *
 * Values (u32, in pages, exact slots and prefix entries)
 *   0                 absent
 *   1 .. 2^31-1       verdict + 1 (unbound)
 *   0x80000000 | r    bound: r indexes a binding record, which holds the verdict
 *
 * Image (little-endian; the arrays are written as they lie in the Table's memory, so image() is memcpys)
 *   header, 192 bytes:
 *     0   magic "P25FAST\0"        8   u32 format version (2)      12  u32 header size (192)
 *     16  u64 generation           24  u64 total size              32  u64 exact entries (addresses)
 *     40  24 bytes zero (reserved)
 *     64  8 sections x { u64 offset, u64 count }, each offset a multiple of 64:
 *   DIR4, DIR6      the directory: open addressing, linear probing, load <= 0.5, a power of two >= 8 slots;
 *                   dense prefix (last byte zeroed) -> page number + 1. Slots: DIR4 { u8 key[4]; u32 value }
 *                   (8 bytes), DIR6 { u8 key[16]; u32 value } (20 bytes). Few entries: it stays in cache.
 *   EXACT4, EXACT6  the same kind of map, full address -> value, for addresses whose prefix is sparse.
 *   PAGES           count x 256 u32 values (1 KiB), indexed by the last byte: every address of a dense prefix.
 *   RECORDS         binding records, 32 bytes: { u32 verdict; u32 flags (1 interface, 2 MAC);
 *                   u8 mac[8] (as NFQUEUE's get_hw() gives it); char interface[16] (NUL-padded) }.
 *   PREFIXES        prefix-registered sources (scale sets): the same kind of map, keyed by { u8 family (4 or 6);
 *                   u8 length; u8 zero[2]; u8 network[16] (host bits and an IPv4 network's last 12 bytes zero) }:
 *                   slots of 24 bytes, the value last. Looked up only on an exact miss, once for each length
 *                   present in the family, longest first: a cost that grows with the lengths in use (at most 33
 *                   or 129), never with the number of prefixes. A View first asks a set of its own (the guard:
 *                   every prefix cut to the family's shortest length), so that a source outside every prefix,
 *                   as unknown and spoofed ones mostly are, costs one probe.
 *   ALLOW           one byte a verdict: nonzero = that verdict allows. Past the end: blocked.
 *   A lookup: hash the prefix, probe the directory; a hit is one read of the page (two cache lines in all,
 *   the directory's usually cached). A miss probes the exact map (one line, sometimes two: a 20-byte slot
 *   can straddle), then, only if that misses too, the prefix map (a probe a length present).
 *
 * Memory (image bytes an address): a page is 1 KiB for 64..256 dense addresses (4-16 bytes each; down to 32
 *   after removals); an exact slot is 8 (IPv4) or 20 (IPv6) bytes at load 1/4..1/2, i.e. 16-32 or 40-80 bytes
 *   an address (80 only just after a doubling); a binding record adds 32.
 */

#ifndef FASTPATH_IMAGE_H
#define FASTPATH_IMAGE_H

#include <Python.h>

#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the image is little-endian and written as the arrays lie in memory; a big-endian build needs byte swaps"
#endif

#define MAGIC "P25FAST"            /* with its NUL: 8 bytes */
#define FORMAT_VERSION 2u       /* 2: the prefixes in a hash map (1: a list scanned in order) */
#define HEADER_SIZE 192u
#define ALIGN 64u
#define MIN_CAP 8u
#define MAX_CAP (1ull << 40)       /* a View refuses bigger maps: keeps the shift arithmetic in range */
#define BOUND 0x80000000u
#define MAX_VERDICT 0x7ffffffeu    /* verdict + 1 must stay below BOUND */
#define REC_INTERFACE 1u
#define REC_MAC 2u

enum { S_DIR4, S_DIR6, S_EXACT4, S_EXACT6, S_PAGES, S_RECORDS, S_PREFIXES, S_ALLOW, NSECTIONS };
static const uint64_t ELEM[NSECTIONS] = {8, 20, 8, 20, 1024, 32, 24, 1};
/* the sections' names in error messages (S_ALLOW keeps the name they have always given it) */
static const char *const SECTION_NAME[NSECTIONS] = {
    "dir4", "dir6", "exact4", "exact6", "pages", "records", "prefixes", "classes"};

typedef struct {
    uint32_t verdict;
    uint32_t flags;
    uint8_t mac[8];
    char interface[16];
} Record;

_Static_assert(sizeof(Record) == 32, "a binding record is 32 bytes");

/* ---------------------------------------------------------------- loads, hashes, probing */

/* Through memcpy: a View's buffer need not be aligned (the compiler makes these plain loads). */
static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void st64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* What a hash map is keyed by: an IPv4 address (or its /24), an IPv6 address (or its /120), or a prefix key
 * (family, length, network: a Prefix but its value). For an address map the kind is also its family's index,
 * [0] IPv4 and [1] IPv6, so code that knows it has an address calls it `wide`. */
enum { KEY4 = 0, KEY6 = 1, KEYPREFIX = 2 };
#define KEYLEN(kind) ((kind) == KEY4 ? 4u : (kind) == KEY6 ? 16u : 20u)
#define SLOTLEN(kind) (KEYLEN(kind) + 4u)
_Static_assert(SLOTLEN(KEYPREFIX) == 24, "a prefix slot is 24 bytes (ELEM)");

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

/* A prefix key: its network as an IPv6 key, folded once more with its family and length. */
static inline uint64_t hash_prefix(const uint8_t *key) {
    return fold(hash6(key + 4) ^ ld32(key), 0x94d049bb133111ebull);
}

static inline __attribute__((always_inline)) uint64_t hash_key(const uint8_t *key, const int kind) {
    return kind == KEY4 ? hash4(key) : kind == KEY6 ? hash6(key) : hash_prefix(key);
}

static inline unsigned log2u(uint64_t x) { return 63u - (unsigned)__builtin_clzll(x); }

/* The value stored for key in a map of cap slots (a power of two; index = hash >> shift), or 0. At most cap
 * probes: a Table keeps an empty slot in every probe run, but a garbage image might not. */
static inline __attribute__((always_inline)) uint32_t
probe(const uint8_t *slots, uint64_t cap, unsigned shift, const uint8_t *key, const int kind) {
    const uint64_t mask = cap - 1;
    uint64_t i = hash_key(key, kind) >> shift;
    for (uint64_t n = 0; n < cap; n++, i = (i + 1) & mask) {
        const uint8_t *s = slots + i * SLOTLEN(kind);
        uint32_t v = ld32(s + KEYLEN(kind));
        if (v == 0)
            return 0;
        if (memcmp(s, key, KEYLEN(kind)) == 0)
            return v;
    }
    return 0;
}

/* The prefix key of addr's first plen bits (plen <= 32 or 128, as the caller knows: never read from an image):
 * what a Table files a prefix under, and what a View looks an address up by, one length at a time. */
static inline void prefix_key(uint8_t out[20], const uint8_t *addr, const int wide, unsigned plen) {
    unsigned full = plen / 8, rest = plen % 8;
    memset(out, 0, 20);
    out[0] = wide ? 6 : 4;
    out[1] = (uint8_t)plen;
    memcpy(out + 4, addr, full);
    if (rest)
        out[4 + full] = (uint8_t)(addr[full] & (0xffu << (8 - rest)));
}

static inline uint64_t align_up(uint64_t x) { return (x + ALIGN - 1) & ~(uint64_t)(ALIGN - 1); }

/* ---------------------------------------------------------------- the key argument, a value (Table and View) */

/* A packed address: 4 or 16 bytes. Returns wide (0/1), or -1 with ValueError. */
static int address_arg(const char *what, Py_ssize_t len) {
    if (len == 4)
        return 0;
    if (len == 16)
        return 1;
    PyErr_Format(PyExc_ValueError, "%s must be a packed address (4 or 16 bytes), not %zd bytes", what, len);
    return -1;
}

/* (verdict, interface | None, mac | None) of a value that is present. */
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
    return Py_BuildValue("(INN)", rec.verdict, interface, mac);
}

#endif /* FASTPATH_IMAGE_H */
