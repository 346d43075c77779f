/*
 * Part of enforcer.dataplane._fastpath: _fastpath.c #includes it (one compilation unit, see there).
 *
 * The NFQUEUE callback: Judge reads a packet's source, looks it up in its View, checks a bound source's
 * interface and MAC, gives the packet its verdict and counts it.
 */

#ifndef FASTPATH_JUDGE_H
#define FASTPATH_JUDGE_H

#include <Python.h>
#include <structmember.h>

#include <net/if.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "view.h"

#define UNKNOWN (-1)
#define SPOOFED (-2)

/* ---------------------------------------------------------------- Judge */

/* interface index -> name, direct-mapped by index: 32 KiB a Judge, so that a gateway with a veth a VM (indexes
 * only grow as interfaces come and go) rarely has two live indexes evict each other */
#define IFCACHE 1024
/* How long a name that matched a binding is believed before it is read again (Judge.name_ttl_ns). A link
 * renamed (vmA -> vmOld, another link -> vmA) keeps its index: without a limit a cached match would let a bound
 * source through the old link for as long as the process lives. The worker also forgets every name on each
 * link event (forget_interfaces(), from rtnetlink), usually well within this; the limit bounds the rest. */
#define NAME_TTL_NS 10000000ull  /* 10 ms: at most one ioctl an index in 10 ms (see BENCHMARKS.md) */
#define MISMATCH_TTL_NS 1000000000ull

typedef struct {
    uint32_t index;                  /* 0: empty */
    char name[IF_NAMESIZE];          /* "" when the index had no interface */
    uint64_t resolved_ns;
} IfName;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    ViewObject *view;
    uint64_t *counts;                /* per verdict of the view */
    uint64_t ncounts;
    unsigned long long unknown, spoofed, malformed, errors, unlisted;
    char default_allow;
    PyObject *drops_append, *remember_append; /* bound append methods, or NULL */
    int ifsock;                      /* for SIOCGIFNAME: one ioctl, not if_indextoname()'s socket+ioctl+close */
    unsigned long long name_ttl_ns;
    IfName ifnames[IFCACHE];
} JudgeObject;

static PyObject *s_get_payload, *s_get_hw, *s_accept, *s_drop, *s_indev, *s_append;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void ifname_resolve(JudgeObject *j, IfName *c, uint32_t index, uint64_t now) {
    struct ifreq req;
    memset(&req, 0, sizeof req);
    req.ifr_ifindex = (int)index;
    c->index = index;
    c->resolved_ns = now;
    if (j->ifsock >= 0 ? ioctl(j->ifsock, SIOCGIFNAME, &req) < 0 : if_indextoname(index, req.ifr_name) == NULL)
        c->name[0] = 0; /* no such interface: remembered too, or every packet would cost the syscall */
    else
        memcpy(c->name, req.ifr_name, IF_NAMESIZE);
    c->name[IF_NAMESIZE - 1] = 0;
}

/* Whether interface `index` is named `want` (a record's 16 NUL-padded bytes), from the cache. A match is read
 * again once it is name_ttl_ns old (the link may have been renamed); a mismatch at most once a second an index
 * (the interface may have been recreated under the same index with another name, but a spoofer must not buy a
 * syscall with every packet). forget_interfaces() and swap() empty the cache. */
static int interface_is(JudgeObject *j, uint32_t index, const char *want) {
    if (index == 0)
        return 0;
    IfName *c = &j->ifnames[index % IFCACHE];
    const uint64_t now = now_ns();
    if (c->index != index)
        ifname_resolve(j, c, index, now);
    else if (now - c->resolved_ns >= (strncmp(c->name, want, 16) == 0 ? j->name_ttl_ns : MISMATCH_TTL_NS))
        ifname_resolve(j, c, index, now);
    return c->name[0] != 0 && strncmp(c->name, want, 16) == 0;
}

static void forget_interfaces(JudgeObject *j) { memset(j->ifnames, 0, sizeof j->ifnames); }

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

/* The drop record: (view, verdict, key, payload, came_from); came_from = (indev, hw) for a spoofed source. */
static int record_drop(JudgeObject *j, PyObject *pkt, ViewObject *view, int64_t verdict, const uint8_t *key,
                       int wide, PyObject *payload, PyObject **indev, PyObject **hw) {
    PyObject *came_from = Py_None, *k, *c;
    if (verdict == SPOOFED) {
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
    c = PyLong_FromLongLong(verdict);
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
    int64_t verdict = view_verdict(view, view_find(view, key, wide, &exact), &record);
    if (verdict >= 0) {
        allow = (uint64_t)verdict < view->nverdicts && view->allow[verdict];
        bound = record != NULL && (ld32(record + 4) & (REC_INTERFACE | REC_MAC));
        if (allow && bound) {
            int s = is_spoofed(j, pkt, record, &indev, &hw);
            if (s < 0)
                goto error;
            if (s) {
                allow = 0;
                verdict = SPOOFED;
            }
        }
    }
    /* Counted before the verdict: a packet let through is in the counts by the time anyone can see it arrive,
     * and one whose accept() or drop() raises is counted all the same (and as an error). Per verdict only into
     * the judging view's counts: after a swap mid-packet the number means something else in the new view. */
    if (verdict == UNKNOWN)
        j->unknown++;
    else if (verdict == SPOOFED)
        j->spoofed++;
    else if (j->view == view && (uint64_t)verdict < j->ncounts)
        j->counts[verdict]++;
    else if ((uint64_t)verdict >= view->nverdicts)
        j->unlisted++;

    if (give_verdict(pkt, allow) < 0)
        goto error;
    given = 1;
    if (!allow && j->drops_append && record_drop(j, pkt, view, verdict, key, wide, payload, &indev, &hw) < 0)
        goto error;
    /* the kernel cache may hold only what does not depend on where the packet came from */
    if (j->remember_append && exact && verdict >= 0 && !(allow && bound) &&
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
    uint64_t *c = PyMem_Calloc(view->nverdicts ? view->nverdicts : 1, sizeof(uint64_t));
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
    if (j->ifsock >= 0)
        close(j->ifsock);
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
    /* -1 (no socket: if_indextoname() then, dearer) is no error: names are still read, just slower */
    j->ifsock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    j->name_ttl_ns = NAME_TTL_NS;
    j->view = (ViewObject *)Py_NewRef(view);
    j->default_allow = (char)default_allow;
    j->ncounts = j->view->nverdicts;
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
    j->ncounts = j->view->nverdicts;
    forget_interfaces(j); /* a new table may bind to names that changed since: no old answer carries over */
    PyObject *list = counts_list(old, n); /* NULL: MemoryError, and those hits are lost */
    PyMem_Free(old);
    Py_DECREF(old_view);
    return list;
}

static PyObject *judge_counts(JudgeObject *j, PyObject *Py_UNUSED(ignored)) {
    return counts_list(j->counts, j->ncounts);
}

static PyObject *judge_forget_interfaces(JudgeObject *j, PyObject *Py_UNUSED(ignored)) {
    forget_interfaces(j);
    Py_RETURN_NONE;
}

static PyMethodDef judge_methods[] = {
    {"swap", (PyCFunction)judge_swap, METH_O,
     "swap(view) -> list[int]: judge with `view` from the next packet on; returns the per-verdict counts so far "
     "and starts new ones."},
    {"counts", (PyCFunction)judge_counts, METH_NOARGS, "counts() -> list[int]: hits per verdict so far."},
    {"forget_interfaces", (PyCFunction)judge_forget_interfaces, METH_NOARGS,
     "forget_interfaces(): forget every interface name read so far (call it when a link is added, renamed or "
     "removed); the next packet of a bound source reads its interface's name again."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef judge_members[] = {
    {"view", T_OBJECT, offsetof(JudgeObject, view), READONLY, "the View it judges with"},
    {"default_allow", T_BOOL, offsetof(JudgeObject, default_allow), 0,
     "the verdict for a malformed packet or after an error"},
    {"name_ttl_ns", T_ULONGLONG, offsetof(JudgeObject, name_ttl_ns), 0,
     "how long (ns) an interface name that matched a binding is believed before it is read again"},
    {"unknown", T_ULONGLONG, offsetof(JudgeObject, unknown), READONLY, "packets of unregistered sources"},
    {"spoofed", T_ULONGLONG, offsetof(JudgeObject, spoofed), READONLY,
     "packets of allowed sources that came from where they are not bound"},
    {"malformed", T_ULONGLONG, offsetof(JudgeObject, malformed), READONLY, "packets with no source to read"},
    {"errors", T_ULONGLONG, offsetof(JudgeObject, errors), READONLY, "packets whose judging raised"},
    {"unlisted", T_ULONGLONG, offsetof(JudgeObject, unlisted), READONLY,
     "packets whose verdict the view does not list (blocked)"},
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

#endif /* FASTPATH_JUDGE_H */
