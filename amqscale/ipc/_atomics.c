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
#include <stdint.h>

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
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "store_release(offset, value)");
        return NULL;
    }
    uint64_t *p = word_at(self, args[0]);
    if (p == NULL)
        return NULL;
    unsigned long long v = PyLong_AsUnsignedLongLong(args[1]);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    __atomic_store_n(p, (uint64_t)v, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

/* Store, then a full fence: what follows (a load of the other side's word) cannot be
 * reordered before the store. This is the Dekker handshake behind "park without losing a
 * wake-up". */
static PyObject *
words_store_fence(WordsObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "store_fence(offset, value)");
        return NULL;
    }
    uint64_t *p = word_at(self, args[0]);
    if (p == NULL)
        return NULL;
    unsigned long long v = PyLong_AsUnsignedLongLong(args[1]);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    __atomic_store_n(p, (uint64_t)v, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
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

static struct PyModuleDef atomics_module = {
    PyModuleDef_HEAD_INIT, "_atomics",
    "Acquire/release access to shared-memory words.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__atomics(void)
{
    if (PyType_Ready(&WordsType) < 0)
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
    return m;
}
