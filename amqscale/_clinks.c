/* The blocking face's once-a-message calls in C: Sender.send(), Receiver.receive(),
 * Delivery.accept(), Delivery.body and Delivery.message.
 *
 * Sent and received one at a time, a message costs its sender and its receiver a dozen
 * Python-level steps each (the call, the link, the lock, the batch, the Tracker; the take,
 * the credit, the Delivery, the settlement batch), and on two cores that interpreter time
 * is the rate. This module does the common case of each in one C call, on the same objects
 * (core.py's SenderState, SenderLink, Batch, ReceiverState, Arrival, ReceiverLink; links.py's
 * Tracker and Delivery), reading and writing their __slots__ at the offsets their member
 * descriptors give (setup() resolves them once, and every object is type-checked before its
 * offsets are used).
 *
 * links.py's Python is the reference and the slow path. Each call here either does the
 * whole of the common case, or changes nothing and calls the Python method with the same
 * arguments: a message that opens a new batch or completes one (a hand-over), goes in
 * parts or must wait for room, a delivery that ends its arrival or makes credit due, a
 * settlement that fills its batch, any failure. A short bytes body is encoded here, a
 * Message by the codec's C encoder, anything else by the Python. AMQSCALE_PURE_PYTHON=1
 * runs the Python alone.
 *
 * Called with the GIL held. The driver's lock is taken as the Python code takes it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>

#ifndef Py_T_OBJECT_EX
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif

/* A slot's value, borrowed; NULL if it was never set. */
#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* ---- layouts: the classes and the offsets of the slots used here -------------------- */

static struct {
    PyTypeObject *type;
    Py_ssize_t closed, links, current, window, max_message_size;
} SenderState;
static struct {
    PyTypeObject *type;
    Py_ssize_t failure, unsettled, remote_max, open, slot, next_seq, dirty;
} SenderLink;
static struct { PyTypeObject *type; Py_ssize_t size, pending, payloads; } Batch;
static struct { PyTypeObject *type; Py_ssize_t index; } WorkerSlot;
static struct { PyTypeObject *type; Py_ssize_t batch, index; } Tracker;
static struct { PyTypeObject *type; Py_ssize_t buffer, position, waiter; } ReceiverState;
static struct {
    PyTypeObject *type;
    Py_ssize_t link, first_id, payloads, settled, generation, messages;
} Arrival;
static struct {
    PyTypeObject *type;
    Py_ssize_t consumed, credit, settling, failure, generation, dirty, receiver;
} ReceiverLink;
static struct { PyTypeObject *type; Py_ssize_t arrival, index; } Delivery;

/* Constants of core.py, _driver.py and protocol.py, and links.py's Python fallbacks. */
static Py_ssize_t SEND_BATCH, AWAKE_BATCH, SETTLE_BATCH;
static double WAKE_INTERVAL;
static PyObject *ACCEPTED;            /* the accepted state's code, an int */
static PyObject *accept_python;       /* the Python Delivery.accept */
static PyObject *body_python;         /* Delivery.body's Python getter */
static PyObject *message_python;      /* Delivery.message's Python getter */
static PyObject *data_body;           /* _ccodec.data_body(payload) -> bytes | None */
static PyObject *encode_message;      /* _ccodec.encode_message(message) -> bytes | None */
static PyTypeObject *Message;
static int ready = 0;

static PyObject *S_lock, *S_acquire, *S_release, *S_mark_dirty, *S_outbound,
    *S_handed_over_at, *S_reader_state, *S_auto_accept, *S_timeout;

static int
slot_offset(PyTypeObject *cls, const char *name, Py_ssize_t *off)
{
    PyObject *descr = PyObject_GetAttrString((PyObject *)cls, name);
    if (descr == NULL)
        return -1;
    int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
             ((PyMemberDescrObject *)descr)->d_member->type == Py_T_OBJECT_EX &&
             !(((PyMemberDescrObject *)descr)->d_member->flags & READONLY);
    if (ok)
        *off = ((PyMemberDescrObject *)descr)->d_member->offset;
    Py_DECREF(descr);
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "setup: %s.%s is not a slot", cls->tp_name, name);
        return -1;
    }
    return 0;
}

static PyTypeObject *
config_type(PyObject *config, const char *name)
{
    PyObject *v = PyDict_GetItemString(config, name);
    if (v == NULL || !PyType_Check(v)) {
        PyErr_Format(PyExc_TypeError, "setup: %s must be a class", name);
        return NULL;
    }
    Py_INCREF(v); /* kept for the life of the process */
    return (PyTypeObject *)v;
}

static PyObject *
config_object(PyObject *config, const char *name)
{
    PyObject *v = PyDict_GetItemString(config, name);
    if (v == NULL) {
        PyErr_Format(PyExc_KeyError, "setup: %s is missing", name);
        return NULL;
    }
    Py_INCREF(v);
    return v;
}

static int
config_ssize(PyObject *config, const char *name, Py_ssize_t *out)
{
    PyObject *v = PyDict_GetItemString(config, name);
    if (v == NULL || !PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "setup: %s must be an int", name);
        return -1;
    }
    *out = PyLong_AsSsize_t(v);
    return PyErr_Occurred() ? -1 : 0;
}

#define TYPE(layout, name) \
    if ((layout.type = config_type(config, name)) == NULL) return NULL
#define OFF(layout, field, name) \
    if (slot_offset(layout.type, name, &layout.field) < 0) return NULL

static PyObject *
py_setup(PyObject *module, PyObject *config)
{
    if (!PyDict_Check(config)) {
        PyErr_SetString(PyExc_TypeError, "setup(config: dict)");
        return NULL;
    }
    TYPE(SenderState, "SenderState");
    OFF(SenderState, closed, "closed"); OFF(SenderState, links, "links");
    OFF(SenderState, current, "current"); OFF(SenderState, window, "window");
    OFF(SenderState, max_message_size, "max_message_size");
    TYPE(SenderLink, "SenderLink");
    OFF(SenderLink, failure, "failure"); OFF(SenderLink, unsettled, "unsettled");
    OFF(SenderLink, remote_max, "remote_max"); OFF(SenderLink, open, "open");
    OFF(SenderLink, slot, "slot"); OFF(SenderLink, next_seq, "next_seq");
    OFF(SenderLink, dirty, "dirty");
    TYPE(Batch, "Batch");
    OFF(Batch, size, "size"); OFF(Batch, pending, "pending"); OFF(Batch, payloads, "payloads");
    TYPE(WorkerSlot, "WorkerSlot");
    OFF(WorkerSlot, index, "index");
    TYPE(Tracker, "Tracker");
    OFF(Tracker, batch, "_batch"); OFF(Tracker, index, "_index");
    TYPE(ReceiverState, "ReceiverState");
    OFF(ReceiverState, buffer, "buffer"); OFF(ReceiverState, position, "position");
    OFF(ReceiverState, waiter, "waiter");
    TYPE(Arrival, "Arrival");
    OFF(Arrival, link, "link"); OFF(Arrival, first_id, "first_id");
    OFF(Arrival, payloads, "payloads"); OFF(Arrival, settled, "settled");
    OFF(Arrival, generation, "generation"); OFF(Arrival, messages, "messages");
    TYPE(ReceiverLink, "ReceiverLink");
    OFF(ReceiverLink, consumed, "consumed"); OFF(ReceiverLink, credit, "credit");
    OFF(ReceiverLink, settling, "settling"); OFF(ReceiverLink, failure, "failure");
    OFF(ReceiverLink, generation, "generation"); OFF(ReceiverLink, dirty, "dirty");
    OFF(ReceiverLink, receiver, "receiver");
    TYPE(Delivery, "Delivery");
    OFF(Delivery, arrival, "_arrival"); OFF(Delivery, index, "_index");
    if (config_ssize(config, "SEND_BATCH", &SEND_BATCH) < 0 ||
        config_ssize(config, "AWAKE_BATCH", &AWAKE_BATCH) < 0 ||
        config_ssize(config, "SETTLE_BATCH", &SETTLE_BATCH) < 0)
        return NULL;
    PyObject *interval = PyDict_GetItemString(config, "WAKE_INTERVAL");
    if (interval == NULL || !PyFloat_Check(interval)) {
        PyErr_SetString(PyExc_TypeError, "setup: WAKE_INTERVAL must be a float");
        return NULL;
    }
    WAKE_INTERVAL = PyFloat_AS_DOUBLE(interval);
    if ((ACCEPTED = config_object(config, "ACCEPTED")) == NULL ||
        (accept_python = config_object(config, "accept_python")) == NULL ||
        (body_python = config_object(config, "body_python")) == NULL ||
        (message_python = config_object(config, "message_python")) == NULL ||
        (data_body = config_object(config, "data_body")) == NULL ||
        (encode_message = config_object(config, "encode_message")) == NULL ||
        (Message = config_type(config, "Message")) == NULL)
        return NULL;
    ready = 1;
    Py_RETURN_NONE;
}

/* ---- small helpers -------------------------------------------------------------------- */

/* An int slot's value; -1 (with no exception set) if it is not a plain int. */
static Py_ssize_t
int_slot(PyObject *obj, Py_ssize_t off)
{
    PyObject *v = SLOT(obj, off);
    if (v == NULL || !PyLong_CheckExact(v))
        return -1;
    Py_ssize_t n = PyLong_AsSsize_t(v);
    if (n == -1)
        PyErr_Clear();
    return n;
}

static int
set_int_slot(PyObject *obj, Py_ssize_t off, Py_ssize_t value)
{
    PyObject *v = PyLong_FromSsize_t(value);
    if (v == NULL)
        return -1;
    Py_XSETREF(SLOT(obj, off), v);
    return 0;
}

static int
set_slot(PyObject *obj, Py_ssize_t off, PyObject *value)
{
    Py_XSETREF(SLOT(obj, off), Py_NewRef(value));
    return 0;
}

static int
call0(PyObject *callable)
{
    PyObject *r = PyObject_CallNoArgs(callable);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* callable() (a lock's release) with an exception pending, if one is: it stays the one
   raised. -1 if either failed. */
static int
call0_keeping_error(PyObject *callable)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    int failed = call0(callable);
    if (type == NULL)
        return failed;
    PyErr_Clear();
    PyErr_Restore(type, value, traceback);
    return -1;
}

/* driver.mark_dirty(link): the partial batch goes with the linger pass. */
static int
mark_dirty(PyObject *driver, PyObject *link)
{
    PyObject *r = PyObject_CallMethodOneArg(driver, S_mark_dirty, link);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* An object of `cls` (a slotted class with no __init__ of its own that matters here). */
static PyObject *
new_object(PyTypeObject *cls)
{
    return cls->tp_alloc(cls, 0);
}

static double
monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* what time.monotonic() reads on Linux */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- Send: Sender.send(bytes) --------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *state;      /* the SenderState */
    PyObject *driver;
    PyObject *acquire;    /* driver.lock.acquire, driver.lock.release */
    PyObject *release;
    PyTypeObject *tracker;
    PyObject *fallback;   /* the Python send(message, timeout=None) */
    PyObject *encode;     /* its _encode(message) -> payload */
    PyObject *send_payload; /* its _send_payload(payload, timeout) */
    Py_ssize_t fragment;  /* larger payloads cross in parts */
} SendObject;

/* Driver.wants_work(slot, size), in C: should the batch go to the worker now? 1 yes, 0 no,
   -1 error. */
static int
wants_work(PyObject *driver, Py_ssize_t slot_index, Py_ssize_t size)
{
    PyObject *outbound = PyObject_GetAttr(driver, S_outbound);
    if (outbound == NULL)
        return -1;
    PyObject *ring = PyList_Check(outbound) && slot_index < PyList_GET_SIZE(outbound)
                         ? PyList_GET_ITEM(outbound, slot_index) : NULL;
    PyObject *state = ring == NULL ? NULL : PyObject_CallMethodNoArgs(ring, S_reader_state);
    Py_DECREF(outbound);
    if (state == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_IndexError, "no ring for the worker slot");
        return -1;
    }
    long reader = PyLong_AsLong(state);
    Py_DECREF(state);
    if (reader == -1 && PyErr_Occurred())
        return -1;
    if (reader == 0 || (reader == 1 && size >= AWAKE_BATCH))
        return reader == 1;
    PyObject *handed = PyObject_GetAttr(driver, S_handed_over_at);
    if (handed == NULL)
        return -1;
    double at = 0.0;
    if (PyList_Check(handed) && slot_index < PyList_GET_SIZE(handed))
        at = PyFloat_AsDouble(PyList_GET_ITEM(handed, slot_index));
    Py_DECREF(handed);
    if (at == -1.0 && PyErr_Occurred())
        return -1;
    return monotonic() - at > WAKE_INTERVAL;
}

/* The link that takes the next message, if the common case holds for it (else NULL). */
static PyObject *
send_link(PyObject *state, Py_ssize_t payload_size)
{
    if (!Py_IS_TYPE(state, SenderState.type) || SLOT(state, SenderState.closed) != Py_False)
        return NULL;
    PyObject *links = SLOT(state, SenderState.links);
    Py_ssize_t current = int_slot(state, SenderState.current);
    if (links == NULL || !PyList_CheckExact(links) || current < 0 ||
        current >= PyList_GET_SIZE(links))
        return NULL;
    PyObject *link = PyList_GET_ITEM(links, current);
    if (!Py_IS_TYPE(link, SenderLink.type) || SLOT(link, SenderLink.failure) != Py_None)
        return NULL;
    Py_ssize_t unsettled = int_slot(link, SenderLink.unsettled);
    Py_ssize_t window = int_slot(state, SenderState.window);
    Py_ssize_t remote_max = int_slot(link, SenderLink.remote_max);
    if (unsettled < 0 || window < 0 || unsettled >= window || remote_max < 0 ||
        (remote_max && payload_size > remote_max))
        return NULL;
    if (!Py_IS_TYPE(SLOT(link, SenderLink.slot), WorkerSlot.type))
        return NULL;
    return link;
}

/* Under the lock: add `body` to `link`'s open batch unless that would hand it over.
   Returns the batch (borrowed) and its index, NULL with no exception if not added. */
static PyObject *
add_to_open_batch(PyObject *driver, PyObject *link, PyObject *payload, Py_ssize_t *index)
{
    PyObject *batch = SLOT(link, SenderLink.open);
    if (batch == NULL || !Py_IS_TYPE(batch, Batch.type))
        return NULL;  /* None: the message opens a batch */
    PyObject *payloads = SLOT(batch, Batch.payloads);
    Py_ssize_t size = int_slot(batch, Batch.size);
    Py_ssize_t next_seq = int_slot(link, SenderLink.next_seq);
    Py_ssize_t unsettled = int_slot(link, SenderLink.unsettled);
    Py_ssize_t slot_index = int_slot(SLOT(link, SenderLink.slot), WorkerSlot.index);
    if (payloads == NULL || !PyList_CheckExact(payloads) || size < 0 || next_seq < 0 ||
        unsettled < 0 || slot_index < 0 || size + 1 >= SEND_BATCH)
        return NULL;
    int hand_over = wants_work(driver, slot_index, size + 1);
    if (hand_over != 0)
        return NULL;  /* the Python code hands it over (or raises what failed here) */
    if (PyList_Append(payloads, payload) < 0 || set_int_slot(batch, Batch.size, size + 1) < 0 ||
        set_slot(batch, Batch.pending, SLOT(batch, Batch.size)) < 0 ||
        set_int_slot(link, SenderLink.next_seq, next_seq + 1) < 0 ||
        set_int_slot(link, SenderLink.unsettled, unsettled + 1) < 0)
        return NULL;  /* out of memory: the exception stands */
    *index = size;
    return batch;
}

/* A bytes body of less than 256 bytes as one data section (links.py's _DATA8_PREFIXES). */
static PyObject *
short_data_section(PyObject *body)
{
    Py_ssize_t n = PyBytes_GET_SIZE(body);
    PyObject *payload = PyBytes_FromStringAndSize(NULL, 5 + n);
    if (payload == NULL)
        return NULL;
    char *d = PyBytes_AS_STRING(payload);
    d[0] = 0x00; d[1] = 0x53; d[2] = 0x75; d[3] = (char)0xa0; d[4] = (char)n;
    memcpy(d + 5, PyBytes_AS_STRING(body), n);
    return payload;
}

/* The message encoded as Sender.send encodes it (raising what its _encode raises). */
static PyObject *
encoded(SendObject *self, PyObject *message)
{
    PyObject *state = self->state;
    int open = SLOT(state, SenderState.closed) == Py_False;
    if (open && PyBytes_CheckExact(message) && PyBytes_GET_SIZE(message) < 256)
        return short_data_section(message);
    if (open && Py_IS_TYPE(message, Message) &&
        int_slot(state, SenderState.max_message_size) == 0) {
        PyObject *payload = PyObject_CallOneArg(encode_message, message);
        if (payload == NULL || PyBytes_CheckExact(payload))
            return payload;
        Py_DECREF(payload);  /* None: not handled in C */
    }
    return PyObject_CallOneArg(self->encode, message);
}

/* Take `payload` if that is the common case: its Tracker, or NULL with no exception (then
   nothing changed). */
static PyObject *
take_payload(SendObject *self, PyObject *payload)
{
    if (PyBytes_GET_SIZE(payload) > self->fragment)
        return NULL;
    PyObject *link = send_link(self->state, PyBytes_GET_SIZE(payload));
    if (link == NULL)
        return NULL;
    Py_INCREF(link);
    if (call0(self->acquire) < 0) {
        Py_DECREF(link);
        return NULL;
    }
    Py_ssize_t index = 0;
    PyObject *batch = add_to_open_batch(self->driver, link, payload, &index);
    Py_XINCREF(batch);
    PyObject *tracker = NULL;
    if (call0_keeping_error(self->release) == 0 && batch != NULL &&
        (SLOT(link, SenderLink.dirty) == Py_True || mark_dirty(self->driver, link) == 0)) {
        tracker = new_object(self->tracker);
        if (tracker != NULL && (set_slot(tracker, Tracker.batch, batch) < 0 ||
                                set_int_slot(tracker, Tracker.index, index) < 0))
            Py_CLEAR(tracker);
    }
    Py_XDECREF(batch);
    Py_DECREF(link);
    return tracker;
}

static PyObject *
send_vectorcall(SendObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *timeout = Py_None;
    if (nargs == 2 && kwnames == NULL)
        timeout = args[1];
    else if (nargs == 1 && kwnames != NULL && PyTuple_GET_SIZE(kwnames) == 1 &&
             PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), S_timeout) == 0)
        timeout = args[1];
    else if (nargs != 1 || kwnames != NULL || !ready)
        return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
    PyObject *payload = encoded(self, args[0]);
    if (payload == NULL)
        return NULL;
    if (!PyBytes_CheckExact(payload)) {
        Py_DECREF(payload);
        return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
    }
    PyObject *tracker = take_payload(self, payload);
    if (tracker == NULL && !PyErr_Occurred())
        tracker = PyObject_CallFunctionObjArgs(self->send_payload, payload, timeout, NULL);
    Py_DECREF(payload);
    return tracker;
}

static PyObject *
send_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *state, *driver, *tracker, *fallback, *encode, *send_payload;
    Py_ssize_t fragment;
    static char *names[] = {"state", "driver", "tracker", "fallback", "encode",
                            "send_payload", "fragment", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO!OOOn:Send", names, &state, &driver,
                                     &PyType_Type, &tracker, &fallback, &encode,
                                     &send_payload, &fragment))
        return NULL;
    if (!ready || !PyType_IsSubtype((PyTypeObject *)tracker, Tracker.type)) {
        PyErr_SetString(PyExc_TypeError, "Send: setup() first, and a Tracker class");
        return NULL;
    }
    PyObject *lock = PyObject_GetAttr(driver, S_lock);
    if (lock == NULL)
        return NULL;
    PyObject *acquire = PyObject_GetAttr(lock, S_acquire);
    PyObject *release = acquire == NULL ? NULL : PyObject_GetAttr(lock, S_release);
    Py_DECREF(lock);
    if (release == NULL) {
        Py_XDECREF(acquire);
        return NULL;
    }
    SendObject *self = (SendObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(acquire);
        Py_DECREF(release);
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)send_vectorcall;
    self->state = Py_NewRef(state);
    self->driver = Py_NewRef(driver);
    self->acquire = acquire;
    self->release = release;
    self->tracker = (PyTypeObject *)Py_NewRef(tracker);
    self->fallback = Py_NewRef(fallback);
    self->encode = Py_NewRef(encode);
    self->send_payload = Py_NewRef(send_payload);
    self->fragment = fragment;
    return (PyObject *)self;
}

static int
send_traverse(SendObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->state);
    Py_VISIT(self->driver);
    Py_VISIT(self->acquire);
    Py_VISIT(self->release);
    Py_VISIT(self->tracker);
    Py_VISIT(self->fallback);
    Py_VISIT(self->encode);
    Py_VISIT(self->send_payload);
    return 0;
}

static int
send_clear(SendObject *self)
{
    Py_CLEAR(self->state);
    Py_CLEAR(self->driver);
    Py_CLEAR(self->acquire);
    Py_CLEAR(self->release);
    Py_CLEAR(self->tracker);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->encode);
    Py_CLEAR(self->send_payload);
    return 0;
}

static void
send_dealloc(SendObject *self)
{
    PyObject_GC_UnTrack(self);
    send_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject SendType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "amqscale._clinks.Send",
    .tp_basicsize = sizeof(SendObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Send(state, driver, tracker, fallback, encode, send_payload, fragment): a"
              " Sender's send(message, timeout=None) with its common case in C; its Python"
              " _encode and _send_payload do the rest, its send() any other arguments.",
    .tp_new = send_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(SendObject, vectorcall),
    .tp_traverse = (traverseproc)send_traverse,
    .tp_clear = (inquiry)send_clear,
    .tp_dealloc = (destructor)send_dealloc,
};

/* ---- Delivery.accept() and Delivery.body ---------------------------------------------- */

/* Under the lock: batch the accept of delivery `id` unless that fills the batch. 1 done,
   0 not done (nothing changed), -1 error. */
static int
batch_accept(PyObject *link, Py_ssize_t id)
{
    PyObject *settling = SLOT(link, ReceiverLink.settling);
    if (settling == NULL || !PyDict_CheckExact(settling))
        return 0;
    PyObject *ids = PyDict_GetItemWithError(settling, ACCEPTED);
    if (ids == NULL || !PyList_CheckExact(ids) || PyList_GET_SIZE(ids) + 1 >= SETTLE_BATCH)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *value = PyLong_FromSsize_t(id);
    if (value == NULL)
        return -1;
    int failed = PyList_Append(ids, value);
    Py_DECREF(value);
    return failed ? -1 : 1;
}

/* The accept's common case; 1 done, 0 not handled here (nothing changed), -1 error. */
static int
accept_fast(PyObject *delivery)
{
    if (!ready || !PyObject_TypeCheck(delivery, Delivery.type))
        return 0;
    PyObject *arrival = SLOT(delivery, Delivery.arrival);
    Py_ssize_t index = int_slot(delivery, Delivery.index);
    if (arrival == NULL || !Py_IS_TYPE(arrival, Arrival.type) || index < 0)
        return 0;
    PyObject *settled = SLOT(arrival, Arrival.settled);
    PyObject *link = SLOT(arrival, Arrival.link);
    Py_ssize_t first_id = int_slot(arrival, Arrival.first_id);
    if (settled == NULL || !PyByteArray_CheckExact(settled) ||
        index >= PyByteArray_GET_SIZE(settled) || link == NULL ||
        !Py_IS_TYPE(link, ReceiverLink.type) || first_id < 0)
        return 0;
    if (PyByteArray_AS_STRING(settled)[index])
        return 1;  /* settled already: nothing to do */
    Py_ssize_t generation = int_slot(arrival, Arrival.generation);
    if (generation < 0 || generation != int_slot(link, ReceiverLink.generation) ||
        SLOT(link, ReceiverLink.failure) != Py_None)
        return 0;  /* lost, or failed: the Python code raises */
    PyObject *receiver = SLOT(link, ReceiverLink.receiver);
    if (receiver == NULL || !Py_IS_TYPE(receiver, ReceiverState.type))
        return 0;
    PyObject *driver = SLOT(receiver, ReceiverState.waiter);
    PyObject *lock = driver == NULL ? NULL : PyObject_GetAttr(driver, S_lock);
    PyObject *acquire = lock == NULL ? NULL : PyObject_GetAttr(lock, S_acquire);
    PyObject *release = acquire == NULL ? NULL : PyObject_GetAttr(lock, S_release);
    Py_XDECREF(lock);
    if (release == NULL) {
        Py_XDECREF(acquire);
        PyErr_Clear();
        return 0;  /* no driver's lock: the Python code says what is wrong */
    }
    Py_INCREF(driver);
    Py_INCREF(link);
    int acquired = call0(acquire) == 0;
    int done = acquired ? batch_accept(link, first_id + index) : -1;
    if (done == 1)
        PyByteArray_AS_STRING(settled)[index] = 1;
    if (acquired && call0_keeping_error(release) < 0)
        done = -1;
    Py_DECREF(acquire);
    Py_DECREF(release);
    if (done == 1 && SLOT(link, ReceiverLink.dirty) != Py_True && mark_dirty(driver, link) < 0)
        done = -1;
    Py_DECREF(link);
    Py_DECREF(driver);
    return done;
}

static PyObject *
delivery_accept(PyObject *delivery, PyObject *Py_UNUSED(ignored))
{
    int done = accept_fast(delivery);
    if (done < 0)
        return NULL;
    if (done == 0)
        return PyObject_CallOneArg(accept_python, delivery);
    Py_RETURN_NONE;
}

/* The delivery's item of one of its arrival's per-message lists (the slot at `list_off`:
   payloads, messages), borrowed; NULL (no exception) where that is not the common case. */
static PyObject *
arrival_item(PyObject *delivery, Py_ssize_t list_off)
{
    if (!ready || !PyObject_TypeCheck(delivery, Delivery.type))
        return NULL;
    PyObject *arrival = SLOT(delivery, Delivery.arrival);
    Py_ssize_t index = int_slot(delivery, Delivery.index);
    PyObject *items = arrival != NULL && Py_IS_TYPE(arrival, Arrival.type)
                          ? SLOT(arrival, list_off) : NULL;
    if (items == NULL || !PyList_CheckExact(items) || index < 0 ||
        index >= PyList_GET_SIZE(items))
        return NULL;
    return PyList_GET_ITEM(items, index);
}

static PyObject *
delivery_body(PyObject *module, PyObject *delivery)
{
    PyObject *payload = arrival_item(delivery, Arrival.payloads);
    if (payload != NULL) {
        PyObject *body = PyObject_CallOneArg(data_body, payload);
        if (body != Py_None)
            return body;  /* the body, or NULL: an error */
        Py_DECREF(body);
    }
    return PyObject_CallOneArg(body_python, delivery);
}

static PyObject *
delivery_message(PyObject *module, PyObject *delivery)
{
    PyObject *message = arrival_item(delivery, Arrival.messages);
    if (message != NULL && message != Py_None)
        return Py_NewRef(message);  /* decoded already */
    return PyObject_CallOneArg(message_python, delivery);
}

/* ---- Receive: Receiver.receive() ------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *receiver;   /* the links.Receiver: its auto_accept */
    PyObject *state;      /* its ReceiverState */
    PyObject *fallback;   /* the Python receive(timeout=None) */
} ReceiveObject;

/* The next delivery if taking it is the common case (not the last of its arrival, no
   credit due), else NULL with no exception: nothing was taken. */
static PyObject *
take_delivery(PyObject *state)
{
    if (!Py_IS_TYPE(state, ReceiverState.type))
        return NULL;
    PyObject *buffer = SLOT(state, ReceiverState.buffer);
    Py_ssize_t position = int_slot(state, ReceiverState.position);
    if (buffer == NULL || position < 0)
        return NULL;
    Py_ssize_t buffered = PyObject_Size(buffer);
    if (buffered <= 0) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *arrival = PySequence_GetItem(buffer, 0);
    if (arrival == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *delivery = NULL;
    PyObject *payloads = Py_IS_TYPE(arrival, Arrival.type)
                             ? SLOT(arrival, Arrival.payloads) : NULL;
    PyObject *link = Py_IS_TYPE(arrival, Arrival.type) ? SLOT(arrival, Arrival.link) : NULL;
    if (payloads == NULL || !PyList_CheckExact(payloads) ||
        position + 1 >= PyList_GET_SIZE(payloads) || link == NULL ||
        !Py_IS_TYPE(link, ReceiverLink.type))
        goto done;
    Py_ssize_t consumed = int_slot(link, ReceiverLink.consumed);
    Py_ssize_t credit = int_slot(link, ReceiverLink.credit);
    if (consumed < 0 || credit < 0 || (consumed + 1) * 2 >= credit)
        goto done;  /* credit is due: the Python code grants it */
    delivery = new_object(Delivery.type);
    if (delivery == NULL || set_slot(delivery, Delivery.arrival, arrival) < 0 ||
        set_int_slot(delivery, Delivery.index, position) < 0 ||
        set_int_slot(state, ReceiverState.position, position + 1) < 0 ||
        set_int_slot(link, ReceiverLink.consumed, consumed + 1) < 0)
        Py_CLEAR(delivery);
done:
    Py_DECREF(arrival);
    return delivery;
}

static PyObject *
receive_vectorcall(ReceiveObject *self, PyObject *const *args, size_t nargsf,
                   PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    /* receive(), receive(t), receive(timeout=t): the timeout only matters when it waits. */
    int plain = nargs == 0 && kwnames == NULL;
    int timeout = (nargs == 1 && kwnames == NULL) ||
                  (nargs == 0 && kwnames != NULL && PyTuple_GET_SIZE(kwnames) == 1 &&
                   PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), S_timeout) == 0);
    PyObject *delivery = ready && (plain || timeout) ? take_delivery(self->state) : NULL;
    if (delivery == NULL) {
        if (PyErr_Occurred())
            return NULL;
        return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
    }
    PyObject *auto_accept = PyObject_GetAttr(self->receiver, S_auto_accept);
    int accept = auto_accept == NULL ? -1 : PyObject_IsTrue(auto_accept);
    Py_XDECREF(auto_accept);
    if (accept == 1) {
        PyObject *r = delivery_accept(delivery, NULL);
        accept = r == NULL ? -1 : 0;
        Py_XDECREF(r);
    }
    if (accept < 0) {
        Py_DECREF(delivery);
        return NULL;
    }
    return delivery;
}

static PyObject *
receive_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *receiver, *state, *fallback;
    static char *names[] = {"receiver", "state", "fallback", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:Receive", names, &receiver, &state,
                                     &fallback))
        return NULL;
    ReceiveObject *self = (ReceiveObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = (vectorcallfunc)receive_vectorcall;
    self->receiver = Py_NewRef(receiver);
    self->state = Py_NewRef(state);
    self->fallback = Py_NewRef(fallback);
    return (PyObject *)self;
}

static int
receive_traverse(ReceiveObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->receiver);
    Py_VISIT(self->state);
    Py_VISIT(self->fallback);
    return 0;
}

static int
receive_clear(ReceiveObject *self)
{
    Py_CLEAR(self->receiver);
    Py_CLEAR(self->state);
    Py_CLEAR(self->fallback);
    return 0;
}

static void
receive_dealloc(ReceiveObject *self)
{
    PyObject_GC_UnTrack(self);
    receive_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject ReceiveType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "amqscale._clinks.Receive",
    .tp_basicsize = sizeof(ReceiveObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Receive(receiver, state, fallback): a Receiver's receive(timeout=None) with"
              " its common case in C; `fallback` (the Python receive) does the rest.",
    .tp_new = receive_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(ReceiveObject, vectorcall),
    .tp_traverse = (traverseproc)receive_traverse,
    .tp_clear = (inquiry)receive_clear,
    .tp_dealloc = (destructor)receive_dealloc,
};

/* ---- the module ----------------------------------------------------------------------- */

static PyMethodDef accept_def = {
    "accept", delivery_accept, METH_NOARGS,
    "Accept the delivery (batched with others: the settlement goes with the next batch)."};

/* accept_method(Delivery): Delivery.accept in C, a method of that class. */
static PyObject *
py_accept_method(PyObject *module, PyObject *cls)
{
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "accept_method(cls: type)");
        return NULL;
    }
    return PyDescr_NewMethod((PyTypeObject *)cls, &accept_def);
}

static PyMethodDef methods[] = {
    {"setup", py_setup, METH_O, "setup(config): the classes, constants and fallbacks."},
    {"accept_method", py_accept_method, METH_O,
     "accept_method(cls) -> the method descriptor of Delivery.accept in C."},
    {"delivery_body", delivery_body, METH_O,
     "delivery_body(delivery) -> its body (Delivery.body's getter)."},
    {"delivery_message", delivery_message, METH_O,
     "delivery_message(delivery) -> its Message (Delivery.message's getter)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "amqscale._clinks",
    "The blocking face's once-a-message calls in C (see _clinks.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__clinks(void)
{
#define INTERN(var, s) if ((var = PyUnicode_InternFromString(s)) == NULL) return NULL
    INTERN(S_lock, "lock"); INTERN(S_acquire, "acquire"); INTERN(S_release, "release");
    INTERN(S_mark_dirty, "mark_dirty"); INTERN(S_outbound, "_outbound");
    INTERN(S_handed_over_at, "_handed_over_at"); INTERN(S_reader_state, "reader_state");
    INTERN(S_auto_accept, "auto_accept"); INTERN(S_timeout, "timeout");
#undef INTERN
    if (PyType_Ready(&SendType) < 0 || PyType_Ready(&ReceiveType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Send", (PyObject *)&SendType) < 0 ||
        PyModule_AddObjectRef(m, "Receive", (PyObject *)&ReceiveType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
