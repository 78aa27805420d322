/* Ordered access to 64-bit words in shared memory.
 *
 * Python has no memory-ordering primitives: a plain store through a memoryview is only
 * ordered by luck (x86's TSO), not on aarch64. The rings publish their cursors through this
 * module: store_release after a record is complete, load_acquire before reading it, and a
 * sequentially consistent fence around the "consumer parked" handshake (store-load order).
 *
 * Words(buffer) pins a writable buffer once; each call then takes a byte offset, which must
 * be 8-byte aligned and inside the buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view;
} WordsObject;

static int
words_init(WordsObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *obj;
    static char *kwlist[] = {"buffer", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Words", kwlist, &obj))
        return -1;
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
    }
    if (PyObject_GetBuffer(obj, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    self->has_view = 1;
    if (((uintptr_t)self->view.buf) % 8 != 0) {
        PyErr_SetString(PyExc_ValueError, "Words: buffer is not 8-byte aligned");
        return -1;
    }
    return 0;
}

static void
words_dealloc(WordsObject *self)
{
    if (self->has_view)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static uint64_t *
word_at(WordsObject *self, PyObject *offset_obj)
{
    if (!self->has_view) {
        PyErr_SetString(PyExc_ValueError, "Words: released");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(offset_obj);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    if (offset < 0 || offset % 8 != 0 || offset + 8 > self->view.len) {
        PyErr_Format(PyExc_IndexError,
                     "Words: offset %zd is not an aligned word inside %zd bytes",
                     offset, self->view.len);
        return NULL;
    }
    return (uint64_t *)((char *)self->view.buf + offset);
}

/* Parse (offset, value) for the storing methods: the word's address, and the value. */
static uint64_t *
word_and_value(WordsObject *self, PyObject *const *args, Py_ssize_t nargs,
               const char *usage, uint64_t *value)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    uint64_t *p = word_at(self, args[0]);
    if (p == NULL)
        return NULL;
    unsigned long long v = PyLong_AsUnsignedLongLong(args[1]);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    *value = (uint64_t)v;
    return p;
}

static PyObject *
words_load_acquire(WordsObject *self, PyObject *offset)
{
    uint64_t *p = word_at(self, offset);
    if (p == NULL)
        return NULL;
    return PyLong_FromUnsignedLongLong(__atomic_load_n(p, __ATOMIC_ACQUIRE));
}

static PyObject *
words_store_release(WordsObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t v;
    uint64_t *p = word_and_value(self, args, nargs, "store_release(offset, value)", &v);
    if (p == NULL)
        return NULL;
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

/* Store, then a full fence: what follows (a load of the other side's word) cannot be
 * reordered before the store. This is the Dekker handshake behind "park without losing a
 * wake-up". */
static PyObject *
words_store_fence(WordsObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t v;
    uint64_t *p = word_and_value(self, args, nargs, "store_fence(offset, value)", &v);
    if (p == NULL)
        return NULL;
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

/* Sequentially consistent exchange: the waker takes the peer's "parked" flag with it, so
 * exactly one publication per parking writes the eventfd. */
static PyObject *
words_exchange(WordsObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t v;
    uint64_t *p = word_and_value(self, args, nargs, "exchange(offset, value)", &v);
    if (p == NULL)
        return NULL;
    return PyLong_FromUnsignedLongLong(__atomic_exchange_n(p, v, __ATOMIC_SEQ_CST));
}

static PyObject *
words_fence(WordsObject *self, PyObject *Py_UNUSED(ignored))
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *
words_release(WordsObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
    }
    Py_RETURN_NONE;
}

static PyMethodDef words_methods[] = {
    {"load_acquire", (PyCFunction)words_load_acquire, METH_O,
     "load_acquire(offset) -> int: the word at offset, with acquire ordering."},
    {"store_release", (PyCFunction)(void (*)(void))words_store_release, METH_FASTCALL,
     "store_release(offset, value): store the word with release ordering."},
    {"store_fence", (PyCFunction)(void (*)(void))words_store_fence, METH_FASTCALL,
     "store_fence(offset, value): sequentially consistent store followed by a full fence."},
    {"exchange", (PyCFunction)(void (*)(void))words_exchange, METH_FASTCALL,
     "exchange(offset, value) -> int: store the word, return the old one (seq. consistent)."},
    {"fence", (PyCFunction)words_fence, METH_NOARGS, "fence(): a full memory fence."},
    {"release", (PyCFunction)words_release, METH_NOARGS,
     "release(): let go of the buffer (the memory map can then be closed)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WordsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "amqscale.ipc._atomics.Words",
    .tp_basicsize = sizeof(WordsObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Ordered 64-bit word access to a writable, 8-byte aligned buffer.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)words_init,
    .tp_dealloc = (destructor)words_dealloc,
    .tp_methods = words_methods,
};

/* ------------------------------------------------------------------------------------------
 * RingCore: the hot path of one end of a one-to-one ring (amqscale/ipc/ring.py), in C because
 * the same loop in Python costs about a microsecond per record.
 *
 * The layout (amqscale/ipc/layout.py is the reference) comes in as constructor arguments;
 * only the record format is fixed here and exported as constants that ring.py checks:
 * a record is a little-endian u32 length, a reserved u32, the payload, padding to 8 bytes;
 * a length of RECORD_PADDING marks "skip to the start of the data area".
 *
 * A writer core owns the tail: write()/write_batch() copy records at the tail, then store
 * the tail (sequentially consistent store + full fence) and, if the reader's parked word is
 * set, write 1 to the reader's eventfd. A reader core owns the head: read_batch() loads the
 * tail with acquire, copies records out as bytes, then publishes the head the same way and
 * wakes a parked writer. One publication and one wake-up check per call. Waking takes the
 * peer's parked flag (exchange to 0): one eventfd write per parking, however many
 * publications happen before the peer runs.
 * ---------------------------------------------------------------------------------------- */
#define RECORD_HEADER 8
#define RECORD_ALIGN 8
#define RECORD_PADDING 0xFFFFFFFFu

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view;
    unsigned char *data;      /* start of the data area */
    uint64_t *own;            /* this end's cursor word */
    uint64_t *peer;           /* the other end's cursor word */
    uint64_t *peer_parked;    /* the other end's parked flag */
    uint64_t capacity;
    uint64_t mask;
    uint64_t cursor;          /* this end's cursor (the only writer of *own) */
    uint64_t peer_cache;      /* last value loaded from *peer */
    Py_ssize_t max_length;
    int wake_fd;
    PyObject *too_large;      /* called as too_large(length, max_length, where) -> exception */
} RingCoreObject;

static inline uint64_t
record_size(uint64_t length)
{
    return (RECORD_HEADER + length + RECORD_ALIGN - 1) & ~(uint64_t)(RECORD_ALIGN - 1);
}

static inline void
store_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static inline uint32_t
load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static inline void
put_header(unsigned char *p, uint32_t length)
{
    store_le32(p, length);
    store_le32(p + 4, 0);
}

static uint64_t *
core_word(RingCoreObject *self, Py_ssize_t offset, const char *what)
{
    if (offset < 0 || offset % 8 != 0 || offset + 8 > self->view.len) {
        PyErr_Format(PyExc_ValueError, "RingCore: %s offset %zd is not an aligned word "
                     "inside %zd bytes", what, offset, self->view.len);
        return NULL;
    }
    return (uint64_t *)((char *)self->view.buf + offset);
}

static void
core_drop(RingCoreObject *self)
{
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
    }
    Py_CLEAR(self->too_large);
}

static int
core_init(RingCoreObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *obj, *too_large;
    Py_ssize_t data_offset, own, peer, peer_parked, max_length;
    unsigned long long capacity;
    int wake_fd;
    static char *kwlist[] = {"buffer", "data_offset", "capacity", "own_cursor", "peer_cursor",
                             "peer_parked", "wake_fd", "max_length", "too_large", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnKnnninO:RingCore", kwlist, &obj,
                                     &data_offset, &capacity, &own, &peer, &peer_parked,
                                     &wake_fd, &max_length, &too_large))
        return -1;
    core_drop(self);
    if (PyObject_GetBuffer(obj, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    self->has_view = 1;
    if (((uintptr_t)self->view.buf) % 8 != 0) {
        PyErr_SetString(PyExc_ValueError, "RingCore: buffer is not 8-byte aligned");
        return -1;
    }
    if (capacity < 64 || (capacity & (capacity - 1)) != 0 || data_offset < 0 ||
        data_offset % 8 != 0 || (unsigned long long)data_offset + capacity >
        (unsigned long long)self->view.len) {
        PyErr_Format(PyExc_ValueError, "RingCore: data area of %llu bytes at %zd does not "
                     "fit %zd bytes or is not a power of two", capacity, data_offset,
                     self->view.len);
        return -1;
    }
    if (max_length < 0 || record_size((uint64_t)max_length) > capacity / 2 ||
        (uint64_t)max_length >= RECORD_PADDING) {
        PyErr_Format(PyExc_ValueError, "RingCore: max_length %zd is too large for a "
                     "capacity of %llu", max_length, capacity);
        return -1;
    }
    self->own = core_word(self, own, "own_cursor");
    self->peer = core_word(self, peer, "peer_cursor");
    self->peer_parked = core_word(self, peer_parked, "peer_parked");
    if (self->own == NULL || self->peer == NULL || self->peer_parked == NULL)
        return -1;
    self->data = (unsigned char *)self->view.buf + data_offset;
    self->capacity = capacity;
    self->mask = capacity - 1;
    self->cursor = __atomic_load_n(self->own, __ATOMIC_ACQUIRE);
    self->peer_cache = __atomic_load_n(self->peer, __ATOMIC_ACQUIRE);
    self->max_length = max_length;
    self->wake_fd = wake_fd;
    Py_INCREF(too_large);
    self->too_large = too_large;
    return 0;
}

static void
core_dealloc(RingCoreObject *self)
{
    core_drop(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
core_ready(RingCoreObject *self)
{
    if (!self->has_view) {
        PyErr_SetString(PyExc_ValueError, "RingCore: released");
        return 0;
    }
    return 1;
}

/* Publish this end's cursor, then wake the other end if it announced itself parked. The
 * sequentially consistent store and the fence order the store before the parked-flag load:
 * the other half of the handshake is "store parked flag, fence, load our cursor". The
 * exchange clears the flag, so a peer that is slow to get scheduled costs one eventfd write,
 * not one per publication; a sleeper sets the flag again before each sleep. */
static int
core_publish(RingCoreObject *self)
{
    __atomic_store_n(self->own, self->cursor, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(self->peer_parked, __ATOMIC_ACQUIRE) &&
        __atomic_exchange_n(self->peer_parked, 0, __ATOMIC_SEQ_CST)) {
        uint64_t one = 1;
        if (write(self->wake_fd, &one, sizeof one) < 0 && errno != EAGAIN) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    return 0;
}

static PyObject *
core_too_large(RingCoreObject *self, Py_ssize_t length, Py_ssize_t index, Py_ssize_t count)
{
    PyObject *where = index < 0 ? PyUnicode_FromString("")
        : PyUnicode_FromFormat(" %zd of a batch of %zd (none written)", index, count);
    if (where == NULL)
        return NULL;
    PyObject *exc = PyObject_CallFunction(self->too_large, "nnO", length, self->max_length,
                                          where);
    Py_DECREF(where);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* Copy one record at the tail if it fits; 1 if copied, 0 if the ring is full. */
static int
core_put(RingCoreObject *self, const void *src, uint64_t length)
{
    uint64_t size = record_size(length);
    uint64_t tail = self->cursor;
    uint64_t position = tail & self->mask;
    uint64_t to_end = self->capacity - position;
    uint64_t need = size <= to_end ? size : to_end + size;
    if (tail + need - self->peer_cache > self->capacity) {
        self->peer_cache = __atomic_load_n(self->peer, __ATOMIC_ACQUIRE);
        if (tail + need - self->peer_cache > self->capacity)
            return 0;
    }
    if (size > to_end) {
        put_header(self->data + position, RECORD_PADDING);
        tail += to_end;
        position = 0;
    }
    put_header(self->data + position, (uint32_t)length);
    memcpy(self->data + position + RECORD_HEADER, src, (size_t)length);
    self->cursor = tail + size;
    return 1;
}

static PyObject *
core_write(RingCoreObject *self, PyObject *record)
{
    if (!core_ready(self))
        return NULL;
    Py_buffer rec;
    if (PyObject_GetBuffer(record, &rec, PyBUF_SIMPLE) < 0)
        return NULL;
    if (rec.len > self->max_length) {
        Py_ssize_t len = rec.len;
        PyBuffer_Release(&rec);
        return core_too_large(self, len, -1, 0);
    }
    int put = core_put(self, rec.buf, (uint64_t)rec.len);
    PyBuffer_Release(&rec);
    if (!put)
        Py_RETURN_FALSE;
    if (core_publish(self) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

/* Every record's length, before anything is written: a bad record refuses the whole batch. */
static int
core_check_batch(RingCoreObject *self, PyObject **items, Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t len;
        if (PyBytes_CheckExact(items[i])) {
            len = PyBytes_GET_SIZE(items[i]);
        } else {
            Py_buffer rec;
            if (PyObject_GetBuffer(items[i], &rec, PyBUF_SIMPLE) < 0)
                return -1;
            len = rec.len;
            PyBuffer_Release(&rec);
        }
        if (len > self->max_length) {
            core_too_large(self, len, i, count);
            return -1;
        }
    }
    return 0;
}

static PyObject *
core_write_batch(RingCoreObject *self, PyObject *records)
{
    if (!core_ready(self))
        return NULL;
    PyObject *seq = PySequence_Fast(records, "write_batch() needs a sequence of records");
    if (seq == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Py_ssize_t written = 0;
    if (core_check_batch(self, items, count) < 0)
        goto fail;
    for (; written < count; written++) {
        int put;
        if (PyBytes_CheckExact(items[written])) {
            put = core_put(self, PyBytes_AS_STRING(items[written]),
                           (uint64_t)PyBytes_GET_SIZE(items[written]));
        } else {
            Py_buffer rec;
            if (PyObject_GetBuffer(items[written], &rec, PyBUF_SIMPLE) < 0)
                goto fail;
            put = core_put(self, rec.buf, (uint64_t)rec.len);
            PyBuffer_Release(&rec);
        }
        if (!put)
            break;
    }
    Py_DECREF(seq);
    if (written > 0 && core_publish(self) < 0)
        return NULL;
    return PyLong_FromSsize_t(written);
fail:
    Py_DECREF(seq);
    if (written > 0)
        core_publish(self);  /* what was copied before a failure is published, not lost */
    return NULL;
}

static PyObject *
core_corrupt(uint64_t cursor, uint32_t length)
{
    PyErr_Format(PyExc_RuntimeError, "ring corrupted: record at cursor %llu claims %lu bytes "
                 "beyond what was published", (unsigned long long)cursor,
                 (unsigned long)length);
    return NULL;
}

static PyObject *
core_read_batch(RingCoreObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!core_ready(self))
        return NULL;
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "read_batch(max_records)");
        return NULL;
    }
    Py_ssize_t max_records = PyLong_AsSsize_t(args[0]);
    if (max_records == -1 && PyErr_Occurred())
        return NULL;
    uint64_t head = self->cursor;
    uint64_t tail = __atomic_load_n(self->peer, __ATOMIC_ACQUIRE);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    while (head != tail && PyList_GET_SIZE(out) < max_records) {
        uint64_t position = head & self->mask;
        uint32_t length = load_le32(self->data + position);
        if (length == RECORD_PADDING) {
            head += self->capacity - position;
            continue;
        }
        uint64_t size = record_size(length);
        if (size > tail - head || size > self->capacity - position) {
            Py_DECREF(out);
            return core_corrupt(head, length);
        }
        PyObject *rec = PyBytes_FromStringAndSize(
            (const char *)self->data + position + RECORD_HEADER, (Py_ssize_t)length);
        if (rec == NULL || PyList_Append(out, rec) < 0) {
            Py_XDECREF(rec);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(rec);
        head += size;
    }
    if (head != self->cursor) {
        self->cursor = head;
        if (core_publish(self) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

static PyObject *
core_get_cursor(RingCoreObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->cursor);
}

/* 0: the peer is behind this end's cursor; 1: caught up and awake; 2: caught up and
   parked. One call where a writer deciding whether to hand over would make three. */
static PyObject *
core_peer_state(RingCoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->has_view) {
        PyErr_SetString(PyExc_ValueError, "RingCore: released");
        return NULL;
    }
    if (__atomic_load_n(self->peer, __ATOMIC_ACQUIRE) != self->cursor)
        return PyLong_FromLong(0);
    return PyLong_FromLong(__atomic_load_n(self->peer_parked, __ATOMIC_ACQUIRE) ? 2 : 1);
}

static PyObject *
core_release(RingCoreObject *self, PyObject *Py_UNUSED(ignored))
{
    core_drop(self);
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"write", (PyCFunction)core_write, METH_O,
     "write(record) -> bool: copy one record and publish it; False if the ring is full."},
    {"write_batch", (PyCFunction)core_write_batch, METH_O,
     "write_batch(records) -> int: copy as many records as fit, publish once; how many."},
    {"read_batch", (PyCFunction)(void (*)(void))core_read_batch, METH_FASTCALL,
     "read_batch(max_records) -> list[bytes]: copy records out, publish the head once."},
    {"peer_state", (PyCFunction)core_peer_state, METH_NOARGS,
     "peer_state() -> int: 0 the peer is behind this end, 1 caught up, 2 caught up and parked."},
    {"release", (PyCFunction)core_release, METH_NOARGS,
     "release(): let go of the buffer (the memory map can then be closed)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef core_getset[] = {
    {"cursor", (getter)core_get_cursor, NULL, "This end's cursor (bytes ever written/read).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RingCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "amqscale.ipc._atomics.RingCore",
    .tp_basicsize = sizeof(RingCoreObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One end of a one-to-one ring: batched record copies and cursor publication.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)core_init,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_methods = core_methods,
    .tp_getset = core_getset,
};

static struct PyModuleDef atomics_module = {
    PyModuleDef_HEAD_INIT, "_atomics",
    "Acquire/release access to shared-memory words.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__atomics(void)
{
    if (PyType_Ready(&WordsType) < 0 || PyType_Ready(&RingCoreType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&atomics_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&WordsType);
    if (PyModule_AddObject(m, "Words", (PyObject *)&WordsType) < 0) {
        Py_DECREF(&WordsType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&RingCoreType);
    if (PyModule_AddObject(m, "RingCore", (PyObject *)&RingCoreType) < 0) {
        Py_DECREF(&RingCoreType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "RECORD_HEADER_SIZE", RECORD_HEADER) < 0 ||
        PyModule_AddIntConstant(m, "RECORD_ALIGNMENT", RECORD_ALIGN) < 0 ||
        PyModule_AddObject(m, "PADDING_LENGTH",
                           PyLong_FromUnsignedLong(RECORD_PADDING)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
