/* The worker's per-message work on proton's C engine, in C.
 *
 * engine.py drives proton through python-qpid-proton's cffi module. Each cffi call costs
 * more than most of the proton functions it calls (argument conversion, a GIL release and
 * errno save around it), and there are about ten a message each way, with Python bytecode
 * between them. This module makes the same calls from C for the four things a worker does
 * per message: a transfer (sender), its outcome (sender), taking a complete message
 * (receiver) and settling it (receiver). Everything else stays in engine.py, whose Python
 * code for the same four is the reference (AMQSCALE_PURE_PYTHON=1 runs it) and the slow
 * path: whatever this module does not handle it leaves untouched and says so.
 *
 * There are no proton headers or library to link against: python-qpid-proton carries
 * proton inside its cffi module. bind() takes the functions' addresses from there; engine.py
 * checks that each has the C type declared below before it hands them over.
 *
 * The state is engine.py's: Link objects (their attributes by name) and dicts keyed by the
 * addresses (ints) of proton's objects. Called with the GIL held, from one thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

typedef struct pn_link_t pn_link_t;
typedef struct pn_delivery_t pn_delivery_t;
typedef struct pn_collector_t pn_collector_t;
typedef struct pn_event_t pn_event_t;
typedef struct { size_t size; const char *start; } pn_bytes_t;

/* The functions, in the order of FUNCTIONS in engine.py's binding. */
static struct {
    pn_delivery_t *(*delivery)(pn_link_t *, pn_bytes_t);
    ssize_t (*link_send)(pn_link_t *, const char *, size_t);
    bool (*link_advance)(pn_link_t *);
    void (*delivery_settle)(pn_delivery_t *);
    uint64_t (*delivery_remote_state)(pn_delivery_t *);
    void (*delivery_update)(pn_delivery_t *, uint64_t);
    size_t (*delivery_pending)(pn_delivery_t *);
    bool (*delivery_partial)(pn_delivery_t *);
    ssize_t (*link_recv)(pn_link_t *, char *, size_t);
    bool (*delivery_settled)(pn_delivery_t *);
    pn_link_t *(*delivery_link)(pn_delivery_t *);
    pn_event_t *(*collector_peek)(pn_collector_t *);
    bool (*collector_pop)(pn_collector_t *);
    int (*event_type)(pn_event_t *);
    pn_delivery_t *(*event_delivery)(pn_event_t *);
} pn;
#define N_FUNCTIONS (sizeof(pn) / sizeof(void *))

static int bound = 0;
static int E_DELIVERY;
static uint64_t ACCEPTED;
static Py_ssize_t RX_BATCH;
static PyObject *recv_buffer;  /* engine.py's bytearray: one message at a time */

/* Link attributes, interned once. */
static PyObject *s_is_sender, *s_unsettled, *s_accepted, *s_dirty, *s_fast_limit, *s_rx,
    *s_rx_first, *s_rx_settled, *s_next_delivery_id, *s_may_presettle, *s_deliveries;

/* Results of drain(). */
#define DRAINED 0       /* the collector is empty */
#define SLOW_PATH 1     /* engine.py takes the event at the head (not popped, untouched) */

static PyObject *
bind(PyObject *module, PyObject *args)
{
    PyObject *addresses, *buffer;
    int delivery_event;
    unsigned long long accepted;
    Py_ssize_t rx_batch;
    if (!PyArg_ParseTuple(args, "O!O!iKn:bind", &PyTuple_Type, &addresses,
                          &PyByteArray_Type, &buffer, &delivery_event, &accepted, &rx_batch))
        return NULL;
    if (PyTuple_GET_SIZE(addresses) != (Py_ssize_t)N_FUNCTIONS) {
        PyErr_Format(PyExc_ValueError, "bind: %zu function addresses expected, got %zd",
                     N_FUNCTIONS, PyTuple_GET_SIZE(addresses));
        return NULL;
    }
    void **slots = (void **)&pn;
    for (Py_ssize_t i = 0; i < (Py_ssize_t)N_FUNCTIONS; i++) {
        void *address = PyLong_AsVoidPtr(PyTuple_GET_ITEM(addresses, i));
        if (address == NULL) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "bind: function %zd has a null address", i);
            return NULL;
        }
        slots[i] = address;
    }
    Py_INCREF(buffer);
    Py_XSETREF(recv_buffer, buffer);
    E_DELIVERY = delivery_event;
    ACCEPTED = accepted;
    RX_BATCH = rx_batch;
    bound = 1;
    Py_RETURN_NONE;
}

static int
check_bound(void)
{
    if (!bound) {
        PyErr_SetString(PyExc_RuntimeError, "amqscale.workers._hotpath: bind() first");
        return -1;
    }
    return 0;
}

/* The 8-byte little-endian tag of a message's seq (unique while unsettled). */
static pn_bytes_t
seq_tag(uint64_t seq, char *storage)
{
    for (int i = 0; i < 8; i++)
        storage[i] = (char)(seq >> (8 * i));
    pn_bytes_t tag = {8, storage};
    return tag;
}

/* transfer(link, payloads, start, end, first_seq, unsettled): one delivery per payload of
 * payloads[start:end], tagged with its seq; each recorded as unsettled[address] = seq, or,
 * when unsettled is None, settled at once (pre-settled). The caller checked the credit. */
static PyObject *
transfer(PyObject *module, PyObject *args)
{
    PyObject *link_address, *payloads, *unsettled;
    Py_ssize_t start, end;
    unsigned long long first_seq;
    if (!PyArg_ParseTuple(args, "OO!nnKO:transfer", &link_address, &PyList_Type, &payloads,
                          &start, &end, &first_seq, &unsettled))
        return NULL;
    if (check_bound() < 0)
        return NULL;
    pn_link_t *link = PyLong_AsVoidPtr(link_address);
    if (link == NULL)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "transfer: null link");
    int settle = unsettled == Py_None;
    if (!settle && !PyDict_CheckExact(unsettled))
        return PyErr_Format(PyExc_TypeError, "transfer: unsettled must be a dict or None");
    if (start < 0 || end > PyList_GET_SIZE(payloads) || start > end)
        return PyErr_Format(PyExc_IndexError, "transfer: [%zd:%zd] of %zd payloads", start,
                            end, PyList_GET_SIZE(payloads));
    for (Py_ssize_t i = start; i < end; i++)  /* all or nothing */
        if (!PyBytes_CheckExact(PyList_GET_ITEM(payloads, i)))
            return PyErr_Format(PyExc_TypeError, "transfer: payload %zd is not bytes", i);
    char tag_storage[8];
    uint64_t seq = first_seq + (uint64_t)start;
    for (Py_ssize_t i = start; i < end; i++, seq++) {
        PyObject *payload = PyList_GET_ITEM(payloads, i);
        pn_delivery_t *delivery = pn.delivery(link, seq_tag(seq, tag_storage));
        pn.link_send(link, PyBytes_AS_STRING(payload), (size_t)PyBytes_GET_SIZE(payload));
        pn.link_advance(link);
        if (settle) {
            pn.delivery_settle(delivery);
            continue;
        }
        PyObject *key = PyLong_FromVoidPtr(delivery);
        PyObject *value = key ? PyLong_FromUnsignedLongLong(seq) : NULL;
        int failed = value == NULL || PyDict_SetItem(unsettled, key, value) < 0;
        Py_XDECREF(key);
        Py_XDECREF(value);
        if (failed)
            return NULL;  /* out of memory: the delivery is out, untracked */
    }
    Py_RETURN_NONE;
}

/* settle(deliveries, ids, state): for each id, pop its delivery (an address) and give it
 * `state` and settle it; ids with no delivery (pre-settled, or their link ended) are
 * skipped. For the plain outcomes (accepted, released) outside transactions. */
static PyObject *
settle(PyObject *module, PyObject *args)
{
    PyObject *deliveries, *ids;
    unsigned long long state;
    if (!PyArg_ParseTuple(args, "O!O!K:settle", &PyDict_Type, &deliveries, &PyList_Type, &ids,
                          &state))
        return NULL;
    if (check_bound() < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(ids); i++) {
        PyObject *id = PyList_GET_ITEM(ids, i);
        PyObject *address = PyDict_GetItemWithError(deliveries, id);
        if (address == NULL) {
            if (PyErr_Occurred())
                return NULL;
            continue;
        }
        pn_delivery_t *delivery = PyLong_AsVoidPtr(address);
        if (delivery == NULL && PyErr_Occurred())
            return NULL;
        if (PyDict_DelItem(deliveries, id) < 0)
            return NULL;
        pn.delivery_update(delivery, state);
        pn.delivery_settle(delivery);
    }
    Py_RETURN_NONE;
}

/* --- drain ------------------------------------------------------------------------------ */

static int
mark_dirty(PyObject *link, PyObject *dirty)
{
    PyObject *flag = PyObject_GetAttr(link, s_dirty);
    if (flag == NULL)
        return -1;
    int is_dirty = PyObject_IsTrue(flag);
    Py_DECREF(flag);
    if (is_dirty)
        return is_dirty < 0 ? -1 : 0;
    if (PyObject_SetAttr(link, s_dirty, Py_True) < 0)
        return -1;
    return PyList_Append(dirty, link);
}

/* Add seq to a list of runs [start, end, start, end, ...] (protocol.add_to_runs). */
static int
add_to_runs(PyObject *runs, uint64_t seq)
{
    Py_ssize_t n = PyList_GET_SIZE(runs);
    if (n > 0) {
        PyObject *last = PyList_GET_ITEM(runs, n - 1);
        unsigned long long end = PyLong_AsUnsignedLongLong(last);
        if (end == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        if (end == seq) {
            PyObject *next = PyLong_FromUnsignedLongLong(seq + 1);
            if (next == NULL)
                return -1;
            return PyList_SetItem(runs, n - 1, next);  /* steals next */
        }
    }
    PyObject *first = PyLong_FromUnsignedLongLong(seq);
    PyObject *next = first ? PyLong_FromUnsignedLongLong(seq + 1) : NULL;
    int rc = next == NULL || PyList_Append(runs, first) < 0 || PyList_Append(runs, next) < 0;
    Py_XDECREF(first);
    Py_XDECREF(next);
    return rc ? -1 : 0;
}

/* An outcome on a sender link: an accepted, tracked delivery is settled here and its seq
 * added to link.accepted; anything else is engine.py's (1). */
static int
on_outcome(PyObject *link, pn_delivery_t *delivery, PyObject *dirty)
{
    if (pn.delivery_remote_state(delivery) != ACCEPTED)
        return SLOW_PATH;
    PyObject *unsettled = PyObject_GetAttr(link, s_unsettled);
    if (unsettled == NULL)
        return -1;
    int rc = -1;
    PyObject *key = PyLong_FromVoidPtr(delivery);
    PyObject *seq_obj = key ? PyDict_GetItemWithError(unsettled, key) : NULL;  /* borrowed */
    if (seq_obj == NULL) {
        rc = PyErr_Occurred() ? -1 : SLOW_PATH;  /* untracked: engine.py knows why */
        goto done;
    }
    unsigned long long seq = PyLong_AsUnsignedLongLong(seq_obj);
    if (seq == (unsigned long long)-1 && PyErr_Occurred())
        goto done;
    if (PyDict_DelItem(unsettled, key) < 0)
        goto done;
    pn.delivery_settle(delivery);
    PyObject *runs = PyObject_GetAttr(link, s_accepted);
    if (runs == NULL)
        goto done;
    if (PyList_CheckExact(runs) && add_to_runs(runs, seq) == 0 && mark_dirty(link, dirty) == 0)
        rc = DRAINED;
    else if (!PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "link.accepted is not a list");
    Py_DECREF(runs);
done:
    Py_XDECREF(key);
    Py_DECREF(unsettled);
    return rc;
}

static Py_ssize_t
long_attr(PyObject *obj, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1;
    Py_ssize_t n = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    return n;
}

static int
set_long_attr(PyObject *obj, PyObject *name, Py_ssize_t n)
{
    PyObject *value = PyLong_FromSsize_t(n);
    if (value == NULL)
        return -1;
    int rc = PyObject_SetAttr(obj, name, value);
    Py_DECREF(value);
    return rc;
}

/* A record of the message taken: link.rx gets its bytes, link.deliveries its delivery
 * (or, pre-settled, link.rx_settled its position), as engine.Engine._on_transfer does. */
static int
record_transfer(PyObject *link, pn_delivery_t *delivery, PyObject *payload, PyObject *dirty,
                Py_ssize_t *rx_length)
{
    Py_ssize_t delivery_id = long_attr(link, s_next_delivery_id);
    if (delivery_id == -1 && PyErr_Occurred())
        return -1;
    if (set_long_attr(link, s_next_delivery_id, delivery_id + 1) < 0)
        return -1;
    PyObject *rx = PyObject_GetAttr(link, s_rx);
    if (rx == NULL)
        return -1;
    int rc = -1;
    if (!PyList_CheckExact(rx)) {
        PyErr_SetString(PyExc_TypeError, "link.rx is not a list");
        goto done;
    }
    Py_ssize_t taken = PyList_GET_SIZE(rx);
    if (taken == 0 && (set_long_attr(link, s_rx_first, delivery_id) < 0
                       || mark_dirty(link, dirty) < 0))
        goto done;
    PyObject *may_presettle = PyObject_GetAttr(link, s_may_presettle);
    if (may_presettle == NULL)
        goto done;
    int presettled = PyObject_IsTrue(may_presettle) == 1 && pn.delivery_settled(delivery);
    Py_DECREF(may_presettle);
    if (presettled) {
        pn.delivery_settle(delivery);  /* nothing more to say */
        PyObject *positions = PyObject_GetAttr(link, s_rx_settled);
        if (positions == NULL)
            goto done;
        if (positions == Py_None) {
            Py_DECREF(positions);
            positions = PyList_New(0);
            if (positions == NULL || PyObject_SetAttr(link, s_rx_settled, positions) < 0) {
                Py_XDECREF(positions);
                goto done;
            }
        }
        PyObject *position = PyLong_FromSsize_t(taken);
        int failed = position == NULL || PyList_Append(positions, position) < 0;
        Py_XDECREF(position);
        Py_DECREF(positions);
        if (failed)
            goto done;
    } else {
        PyObject *deliveries = PyObject_GetAttr(link, s_deliveries);
        if (deliveries == NULL)
            goto done;
        PyObject *key = PyLong_FromSsize_t(delivery_id);
        PyObject *address = key ? PyLong_FromVoidPtr(delivery) : NULL;
        int failed = address == NULL || PyObject_SetItem(deliveries, key, address) < 0;
        Py_XDECREF(key);
        Py_XDECREF(address);
        Py_DECREF(deliveries);
        if (failed)
            goto done;
    }
    if (PyList_Append(rx, payload) < 0)
        goto done;
    *rx_length = taken + 1;
    rc = 0;
done:
    Py_DECREF(rx);
    return rc;
}

/* Bytes arrived on a receiver link: a complete message of at most link.fast_limit bytes
 * is taken here; anything else is engine.py's (SLOW_PATH). A failed read returns its
 * (negative) code for engine.py, the event still at the head. */
static int
on_transfer(PyObject *link, pn_delivery_t *delivery, PyObject *dirty, PyObject *flush)
{
    size_t size = pn.delivery_pending(delivery);
    Py_ssize_t fast_limit = long_attr(link, s_fast_limit);
    if (fast_limit == -1 && PyErr_Occurred())
        return -1;
    if (size == 0 || fast_limit < 0 || size > (size_t)fast_limit || pn.delivery_partial(delivery))
        return SLOW_PATH;
    pn_link_t *plink = pn.delivery_link(delivery);
    ssize_t n = pn.link_recv(plink, PyByteArray_AS_STRING(recv_buffer),
                             (size_t)PyByteArray_GET_SIZE(recv_buffer));
    if (n < 0)
        return n < -1 ? (int)n : -1000;  /* PN_EOS (-1) is a code too: keep it apart */
    PyObject *payload = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(recv_buffer), n);
    if (payload == NULL)
        return -1;
    pn.link_advance(plink);
    Py_ssize_t rx_length = 0;
    int rc = record_transfer(link, delivery, payload, dirty, &rx_length);
    Py_DECREF(payload);
    if (rc == 0 && rx_length >= RX_BATCH) {  /* bound a record's size */
        PyObject *result = PyObject_CallOneArg(flush, link);
        if (result == NULL)
            return -1;
        Py_DECREF(result);
    }
    return rc;
}

/* drain(collector, links, dirty, flush) -> int: act on the collector's delivery events for
 * the links in `links` (address -> Link), popping each, until the collector is empty
 * (DRAINED), an event is engine.py's (SLOW_PATH: it is at the head, untouched), or a read
 * failed (its negative code; the event at the head, the link not advanced). A delivery of
 * a link not in `links` (it ended) is settled, so that proton may free it. Links given
 * work are appended to `dirty` (once, with link.dirty set); flush(link) is called when a
 * link has gathered RX_BATCH messages. */
static PyObject *
drain(PyObject *module, PyObject *args)
{
    PyObject *collector_address, *links, *dirty, *flush;
    if (!PyArg_ParseTuple(args, "OO!O!O:drain", &collector_address, &PyDict_Type, &links,
                          &PyList_Type, &dirty, &flush))
        return NULL;
    if (check_bound() < 0)
        return NULL;
    pn_collector_t *collector = PyLong_AsVoidPtr(collector_address);
    if (collector == NULL)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "drain: null collector");
    for (;;) {
        pn_event_t *event = pn.collector_peek(collector);
        if (event == NULL)
            return PyLong_FromLong(DRAINED);
        if (pn.event_type(event) != E_DELIVERY)
            return PyLong_FromLong(SLOW_PATH);
        pn_delivery_t *delivery = pn.event_delivery(event);
        PyObject *key = PyLong_FromVoidPtr(pn.delivery_link(delivery));
        if (key == NULL)
            return NULL;
        PyObject *link = PyDict_GetItemWithError(links, key);  /* borrowed */
        Py_DECREF(key);
        int rc;
        if (link == NULL) {
            if (PyErr_Occurred())
                return NULL;
            pn.delivery_settle(delivery);  /* its link ended: proton may free it */
            rc = DRAINED;
        } else {
            Py_INCREF(link);
            PyObject *is_sender = PyObject_GetAttr(link, s_is_sender);
            if (is_sender == NULL)
                rc = -1;
            else if (is_sender == Py_True)
                rc = on_outcome(link, delivery, dirty);
            else
                rc = on_transfer(link, delivery, dirty, flush);
            Py_XDECREF(is_sender);
            Py_DECREF(link);
        }
        if (rc == -1 && PyErr_Occurred())
            return NULL;
        if (rc != DRAINED)
            return PyLong_FromLong(rc == -1000 ? -1 : rc);
        pn.collector_pop(collector);
    }
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS,
     "bind(addresses, recv_buffer, delivery_event, accepted, rx_batch): proton's functions "
     "(their addresses, in engine.py's FUNCTIONS order) and the constants used here."},
    {"transfer", transfer, METH_VARARGS,
     "transfer(link, payloads, start, end, first_seq, unsettled): one delivery per payload."},
    {"settle", settle, METH_VARARGS,
     "settle(deliveries, ids, state): give each id's delivery `state` and settle it."},
    {"drain", drain, METH_VARARGS,
     "drain(collector, links, dirty, flush) -> 0 (empty), 1 (the head event is the "
     "caller's) or a failed read's negative code."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "amqscale.workers._hotpath",
    "The worker's per-message calls into proton's C engine (see _hotpath.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__hotpath(void)
{
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(s_is_sender, "is_sender");
    INTERN(s_unsettled, "unsettled");
    INTERN(s_accepted, "accepted");
    INTERN(s_dirty, "dirty");
    INTERN(s_fast_limit, "fast_limit");
    INTERN(s_rx, "rx");
    INTERN(s_rx_first, "rx_first");
    INTERN(s_rx_settled, "rx_settled");
    INTERN(s_next_delivery_id, "next_delivery_id");
    INTERN(s_may_presettle, "may_presettle");
    INTERN(s_deliveries, "deliveries");
#undef INTERN
    return PyModule_Create(&module_def);
}
