/* The C fast path of amqscale's AMQP codec (codec.py) and Message (message.py).
 *
 * The pure-Python code stays the reference: this module is an optimistic shortcut for the
 * common cases and gives exactly what the Python code gives, byte for byte when encoding and
 * type for type when decoding (the proton wrapper classes, uuid.UUID, the body forms).
 * Whatever it does not handle (a type it does not know, a subclass, an out-of-range value,
 * malformed or truncated input, nesting deeper than MAX_DEPTH) it reports as "not handled":
 * None, or NOT_HANDLED where None is a valid result, and the caller runs the Python code,
 * which then raises its own exception with its own message and offset. So nothing here
 * raises for bad input; an exception that is not an Exception (KeyboardInterrupt) still
 * propagates.
 *
 * Encoding runs no Python code (it reads exact builtin and proton types only), so the
 * containers it walks cannot change under it. Decoding calls the constructors the Python
 * decoder calls (Described, Array, AmqpValue, ...), with the same arguments.
 *
 * setup() and setup_message() hand over the classes (proton's wrappers, uuid.UUID,
 * Message, ...) once, at import; every function reports "not handled" before they ran.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#if PY_VERSION_HEX < 0x030B0000
#define PyFloat_Pack4(x, p, le) _PyFloat_Pack4((x), (unsigned char *)(p), (le))
#define PyFloat_Pack8(x, p, le) _PyFloat_Pack8((x), (unsigned char *)(p), (le))
#define PyFloat_Unpack4(p, le) _PyFloat_Unpack4((const unsigned char *)(p), (le))
#define PyFloat_Unpack8(p, le) _PyFloat_Unpack8((const unsigned char *)(p), (le))
#endif

#ifndef Py_T_OBJECT_EX
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif

/* Deeper values go to the Python code (whose limit is the interpreter's recursion limit). */
#define MAX_DEPTH 100

/* ------------------------------------------------------------------------------------------
 * State, set once by setup() / setup_message()
 */

static PyTypeObject *T_ulong, *T_uint, *T_ushort, *T_ubyte, *T_byte, *T_short, *T_int32,
    *T_timestamp, *T_decimal32, *T_decimal64, *T_float32, *T_symbol, *T_char, *T_decimal128,
    *T_uuid, *T_described, *T_array, *T_annotation_dict, *T_property_dict, *T_symbol_list,
    *T_type_code;
static PyObject *O_undescribed, *O_uint0, *O_ulong0, *O_safe_unknown;
/* The Python-native values (datetime, Decimal) and the converters (amqscale.types) to the
   raw values encoded here: converting in Python keeps one reference for their rules. */
static PyTypeObject *T_datetime, *T_decimal;
static PyObject *F_timestamp_of, *F_decimal32_of, *F_decimal64_of, *F_decimal128_of;
static Py_ssize_t uuid_int_off, uuid_safe_off;
static int type_code_of[256];         /* constructor byte -> TypeCode (decoded arrays) */
static int array_constructor[64];     /* TypeCode -> element constructor byte, or -1 */
static Py_ssize_t max_zero_width_array;
static int ready;

static PyTypeObject *T_message, *T_amqp_value, *T_amqp_sequence, *T_data_sections,
    *T_sequence_sections;
static int message_ready;

static PyObject *NOT_HANDLED, *EMPTY_TUPLE;
static PyObject *S_descriptor, *S_value, *S_type, *S_elements;

/* Message.__slots__, in this order (setup_message checks the names). */
enum {
    F_DURABLE, F_PRIORITY, F_TTL, F_FIRST_ACQUIRER, F_DELIVERY_COUNT, F_INSTRUCTIONS,
    F_ANNOTATIONS, F_ID, F_USER_ID, F_ADDRESS, F_SUBJECT, F_REPLY_TO, F_CORRELATION_ID,
    F_CONTENT_TYPE, F_CONTENT_ENCODING, F_EXPIRY_TIME, F_CREATION_TIME, F_GROUP_ID,
    F_GROUP_SEQUENCE, F_REPLY_TO_GROUP_ID, F_PROPERTIES, F_BODY, F_FOOTER, N_FIELDS
};
static const char *const field_names[N_FIELDS] = {
    "durable", "priority", "_ttl", "first_acquirer", "delivery_count", "instructions",
    "annotations", "id", "user_id", "address", "subject", "reply_to", "correlation_id",
    "content_type", "content_encoding", "_expiry_time", "_creation_time", "group_id",
    "group_sequence", "reply_to_group_id", "properties", "body", "footer",
};
static Py_ssize_t field_off[N_FIELDS];

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))
/* A field of a Message (a slot: NULL until set), by its index in Message.__slots__ */
#define FIELD(m, f) SLOT((m), field_off[f])

/* The properties list: its 13 fields are the slots F_ID .. F_REPLY_TO_GROUP_ID. */
enum { P_ID, P_BINARY, P_STRING, P_SYMBOL, P_TIMESTAMP, P_UINT };
static const int property_kinds[13] = {
    P_ID, P_BINARY, P_STRING, P_STRING, P_STRING, P_ID, P_SYMBOL, P_SYMBOL, P_TIMESTAMP,
    P_TIMESTAMP, P_STRING, P_UINT, P_STRING,
};

static int
is_known_int(PyTypeObject *t)
{
    /* int and proton's int classes: none overrides a comparison or a conversion. */
    return t == &PyLong_Type || t == T_ulong || t == T_uint || t == T_ushort || t == T_ubyte ||
           t == T_byte || t == T_short || t == T_int32 || t == T_timestamp ||
           t == T_decimal32 || t == T_decimal64;
}

static int
is_list_like(PyTypeObject *t)
{
    /* list subclasses the Python encoder walks as plain lists (none overrides __iter__) */
    return t == &PyList_Type || (t != NULL && (t == T_symbol_list || t == T_amqp_sequence ||
                                               t == T_data_sections || t == T_sequence_sections));
}

static int
is_dict_like(PyTypeObject *t)
{
    return t == &PyDict_Type || t == T_annotation_dict || t == T_property_dict;
}

/* str, symbol and char: str.encode() is not overridden */
static int
is_plain_str(PyTypeObject *t)
{
    return t == &PyUnicode_Type || t == T_symbol || t == T_char;
}

/* ------------------------------------------------------------------------------------------
 * Output buffer
 */

typedef struct {
    unsigned char *p;
    Py_ssize_t len, cap;
    unsigned char stack[1024];
} Out;

static void
out_init(Out *o)
{
    o->p = o->stack;
    o->len = 0;
    o->cap = (Py_ssize_t)sizeof(o->stack);
}

static void
out_free(Out *o)
{
    if (o->p != o->stack)
        PyMem_Free(o->p);
}

static int
out_grow(Out *o, Py_ssize_t extra)
{
    if (extra > PY_SSIZE_T_MAX / 2 - o->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t need = o->len + extra, cap = o->cap * 2;
    while (cap < need)
        cap *= 2;
    unsigned char *p;
    if (o->p == o->stack) {
        p = PyMem_Malloc((size_t)cap);
        if (p != NULL)
            memcpy(p, o->p, (size_t)o->len);
    }
    else {
        p = PyMem_Realloc(o->p, (size_t)cap);
    }
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->p = p;
    o->cap = cap;
    return 0;
}

#define NEED(o, n)                                                                 \
    do {                                                                           \
        if ((o)->cap - (o)->len < (Py_ssize_t)(n) && out_grow((o), (n)) < 0)       \
            return -1;                                                             \
    } while (0)

static inline void
put_u16(unsigned char *w, uint32_t x)
{
    w[0] = (unsigned char)(x >> 8);
    w[1] = (unsigned char)x;
}

static inline void
put_u32(unsigned char *w, uint32_t x)
{
    w[0] = (unsigned char)(x >> 24);
    w[1] = (unsigned char)(x >> 16);
    w[2] = (unsigned char)(x >> 8);
    w[3] = (unsigned char)x;
}

static inline void
put_u64(unsigned char *w, uint64_t x)
{
    put_u32(w, (uint32_t)(x >> 32));
    put_u32(w + 4, (uint32_t)x);
}

static int
put1(Out *o, unsigned char c)
{
    NEED(o, 1);
    o->p[o->len++] = c;
    return 0;
}

static int
put_bytes(Out *o, const void *p, Py_ssize_t n)
{
    NEED(o, n);
    memcpy(o->p + o->len, p, (size_t)n);
    o->len += n;
    return 0;
}

/* code + big-endian value of width bytes */
static int
put_fixed(Out *o, unsigned char code, uint64_t x, int width)
{
    NEED(o, 1 + width);
    unsigned char *w = o->p + o->len;
    w[0] = code;
    switch (width) {
    case 1: w[1] = (unsigned char)x; break;
    case 2: put_u16(w + 1, (uint32_t)x); break;
    case 4: put_u32(w + 1, (uint32_t)x); break;
    default: put_u64(w + 1, x); break;
    }
    o->len += 1 + width;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Integer conversion (on int and its subclasses: no Python code runs)
 */

static int
as_i64(PyObject *v, long long *out)
{
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred()))
        return -1;
    *out = x;
    return 0;
}

static int
as_u64(PyObject *v, unsigned long long *out)
{
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (overflow == 0) {
        if (x < 0)
            return -1;
        *out = (unsigned long long)x;
        return 0;
    }
    if (overflow < 0)
        return -1;
    unsigned long long u = PyLong_AsUnsignedLongLong(v);
    if (u == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = u;
    return 0;
}

/* Range-checked: -1 (no exception) when outside lo..hi. */
static int
as_range(PyObject *v, long long lo, long long hi, long long *out)
{
    if (as_i64(v, out) < 0 || *out < lo || *out > hi)
        return -1;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Encoding
 */

static int enc_value(Out *o, PyObject *v, int depth);

/* UTF-8 size of a str, or -1 for a lone surrogate (which str.encode() refuses). */
static Py_ssize_t
utf8_size(PyObject *s)
{
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(s) < 0)
        return -1;
#endif
    Py_ssize_t len = PyUnicode_GET_LENGTH(s), n = 0, i;
    if (PyUnicode_IS_ASCII(s))
        return len;
    const void *data = PyUnicode_DATA(s);
    switch (PyUnicode_KIND(s)) {
    case PyUnicode_1BYTE_KIND: {
        const Py_UCS1 *d = data;
        for (i = 0; i < len; i++)
            n += d[i] < 0x80 ? 1 : 2;
        break;
    }
    case PyUnicode_2BYTE_KIND: {
        const Py_UCS2 *d = data;
        for (i = 0; i < len; i++) {
            Py_UCS2 c = d[i];
            if (c < 0x80)
                n += 1;
            else if (c < 0x800)
                n += 2;
            else if (c >= 0xD800 && c <= 0xDFFF)
                return -1;
            else
                n += 3;
        }
        break;
    }
    default: {
        const Py_UCS4 *d = data;
        for (i = 0; i < len; i++) {
            Py_UCS4 c = d[i];
            if (c < 0x80)
                n += 1;
            else if (c < 0x800)
                n += 2;
            else if (c < 0x10000) {
                if (c >= 0xD800 && c <= 0xDFFF)
                    return -1;
                n += 3;
            }
            else
                n += 4;
        }
        break;
    }
    }
    return n;
}

static void
utf8_write(PyObject *s, unsigned char *w)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(s), i;
    const void *data = PyUnicode_DATA(s);
    int kind = PyUnicode_KIND(s);
    if (PyUnicode_IS_ASCII(s)) {
        memcpy(w, data, (size_t)len);
        return;
    }
    for (i = 0; i < len; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 0x80) {
            *w++ = (unsigned char)c;
        }
        else if (c < 0x800) {
            *w++ = (unsigned char)(0xC0 | (c >> 6));
            *w++ = (unsigned char)(0x80 | (c & 0x3F));
        }
        else if (c < 0x10000) {
            *w++ = (unsigned char)(0xE0 | (c >> 12));
            *w++ = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
            *w++ = (unsigned char)(0x80 | (c & 0x3F));
        }
        else {
            *w++ = (unsigned char)(0xF0 | (c >> 18));
            *w++ = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
            *w++ = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
            *w++ = (unsigned char)(0x80 | (c & 0x3F));
        }
    }
}

/* A variable-width value: code8 + 1-byte size below 256 bytes, else code32 + 4-byte size. */
static int
put_sized_header(Out *o, unsigned char code8, unsigned char code32, Py_ssize_t n)
{
    if (n < 256) {
        NEED(o, 2 + n);
        o->p[o->len] = code8;
        o->p[o->len + 1] = (unsigned char)n;
        o->len += 2;
    }
    else {
        if ((unsigned long long)n > 0xFFFFFFFFull)
            return -1;
        NEED(o, 5 + n);
        o->p[o->len] = code32;
        put_u32(o->p + o->len + 1, (uint32_t)n);
        o->len += 5;
    }
    return 0;
}

/* str as string (A1/B1) */
static int
enc_string(Out *o, PyObject *s)
{
    Py_ssize_t n = utf8_size(s);
    if (n < 0 || put_sized_header(o, 0xA1, 0xB1, n) < 0)
        return -1;
    utf8_write(s, o->p + o->len);
    o->len += n;
    return 0;
}

/* str as symbol (A3/B3): ASCII only */
static int
enc_symbol(Out *o, PyObject *s)
{
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(s) < 0)
        return -1;
#endif
    if (!PyUnicode_IS_ASCII(s))
        return -1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (put_sized_header(o, 0xA3, 0xB3, n) < 0)
        return -1;
    memcpy(o->p + o->len, PyUnicode_DATA(s), (size_t)n);
    o->len += n;
    return 0;
}

static int
enc_binary(Out *o, const void *p, Py_ssize_t n)
{
    if (put_sized_header(o, 0xA0, 0xB0, n) < 0)
        return -1;
    memcpy(o->p + o->len, p, (size_t)n);
    o->len += n;
    return 0;
}

/* The bytes of a bytes, bytearray or memoryview (what its tobytes() gives); release the
 * view with binary_release. */
static int
binary_get(PyObject *v, Py_buffer *view, const void **p, Py_ssize_t *n)
{
    PyTypeObject *t = Py_TYPE(v);
    view->obj = NULL;
    if (t == &PyBytes_Type) {
        *p = PyBytes_AS_STRING(v);
        *n = PyBytes_GET_SIZE(v);
    }
    else if (t == &PyByteArray_Type) {
        *p = PyByteArray_AS_STRING(v);
        *n = PyByteArray_GET_SIZE(v);
    }
    else if (t == &PyMemoryView_Type) {
        /* C-contiguous only (else not handled): then the memory is tobytes() */
        if (PyObject_GetBuffer(v, view, PyBUF_SIMPLE) < 0)
            return -1;
        *p = view->buf;
        *n = view->len;
    }
    else {
        return -1;
    }
    return 0;
}

static void
binary_release(Py_buffer *view)
{
    if (view->obj != NULL)
        PyBuffer_Release(view);
}

static int
enc_any_binary(Out *o, PyObject *v)
{
    Py_buffer view;
    const void *p;
    Py_ssize_t n;
    if (binary_get(v, &view, &p, &n) < 0)
        return -1;
    int r = enc_binary(o, p, n);
    binary_release(&view);
    return r;
}

static int
is_binary_type(PyTypeObject *t)
{
    return t == &PyBytes_Type || t == &PyByteArray_Type || t == &PyMemoryView_Type;
}

static int
uuid_bytes(PyObject *u, unsigned char *w)
{
    PyObject *i = SLOT(u, uuid_int_off);
    if (i == NULL || !PyLong_CheckExact(i))
        return -1;
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t r = PyLong_AsNativeBytes(i, w, 16,
                                        Py_ASNATIVEBYTES_BIG_ENDIAN |
                                            Py_ASNATIVEBYTES_UNSIGNED_BUFFER |
                                            Py_ASNATIVEBYTES_REJECT_NEGATIVE);
    return (r < 0 || r > 16) ? -1 : 0;
#else
    return _PyLong_AsByteArray((PyLongObject *)i, w, 16, 0, 0);
#endif
}

static int
enc_uuid(Out *o, PyObject *u)
{
    NEED(o, 17);
    if (uuid_bytes(u, o->p + o->len + 1) < 0)
        return -1;
    o->p[o->len] = 0x98;
    o->len += 17;
    return 0;
}

static int
enc_ulong(Out *o, PyObject *v)
{
    unsigned long long u;
    if (as_u64(v, &u) < 0)
        return -1;
    if (u == 0)
        return put1(o, 0x44);
    if (u < 256)
        return put_fixed(o, 0x53, u, 1);
    return put_fixed(o, 0x80, u, 8);
}

static int
enc_uint(Out *o, PyObject *v)
{
    long long x;
    if (as_range(v, 0, 0xFFFFFFFFLL, &x) < 0)
        return -1;
    if (x == 0)
        return put1(o, 0x43);
    if (x < 256)
        return put_fixed(o, 0x52, (uint64_t)x, 1);
    return put_fixed(o, 0x70, (uint64_t)x, 4);
}

static int
enc_long(Out *o, PyObject *v)
{
    long long x;
    if (as_i64(v, &x) < 0)
        return -1;
    if (x >= -128 && x <= 127)
        return put_fixed(o, 0x55, (uint64_t)x, 1);
    return put_fixed(o, 0x81, (uint64_t)x, 8);
}

static int
enc_items(Out *o, PyObject *v, int depth)
{
    /* v is a list or a tuple; encoding runs no Python code, so its size holds still */
    Py_ssize_t n = PySequence_Fast_GET_SIZE(v), i;
    PyObject **items = PySequence_Fast_ITEMS(v);
    for (i = 0; i < n; i++) {
        if (enc_value(o, items[i], depth) < 0)
            return -1;
    }
    return 0;
}

/* size (4 bytes, from after itself) and count (4 bytes) of a 32-bit compound at start */
static int
finish32(Out *o, Py_ssize_t start, Py_ssize_t count)
{
    Py_ssize_t size = o->len - start - 4;
    if ((unsigned long long)size > 0xFFFFFFFFull || (unsigned long long)count > 0xFFFFFFFFull)
        return -1;
    put_u32(o->p + start, (uint32_t)size);
    put_u32(o->p + start + 4, (uint32_t)count);
    return 0;
}

/* list or tuple: list0 when empty, else list32 (proton's choice) */
static int
enc_list(Out *o, PyObject *v, int depth)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(v);
    if (n == 0)
        return put1(o, 0x45);
    if (depth >= MAX_DEPTH)
        return -1;
    NEED(o, 9);
    o->p[o->len++] = 0xD0;
    Py_ssize_t start = o->len;
    o->len += 8;
    if (enc_items(o, v, depth + 1) < 0)
        return -1;
    return finish32(o, start, n);
}

/* list32 body without its constructor: an array element (empty lists too) */
static int
enc_list32_body(Out *o, PyObject *v, int depth)
{
    if (depth >= MAX_DEPTH)
        return -1;
    NEED(o, 8);
    Py_ssize_t start = o->len;
    o->len += 8;
    if (enc_items(o, v, depth + 1) < 0)
        return -1;
    return finish32(o, start, PySequence_Fast_GET_SIZE(v));
}

static int
enc_map32_body(Out *o, PyObject *v, int depth)
{
    if (depth >= MAX_DEPTH)
        return -1;
    NEED(o, 8);
    Py_ssize_t start = o->len, pos = 0;
    o->len += 8;
    PyObject *k, *x;
    while (PyDict_Next(v, &pos, &k, &x)) {
        if (enc_value(o, k, depth + 1) < 0 || enc_value(o, x, depth + 1) < 0)
            return -1;
    }
    return finish32(o, start, 2 * PyDict_GET_SIZE(v));
}

static int
enc_described(Out *o, PyObject *v, int depth)
{
    if (depth >= MAX_DEPTH || put1(o, 0x00) < 0)
        return -1;
    PyObject *d = PyObject_GetAttr(v, S_descriptor);
    if (d == NULL)
        return -1;
    int r = enc_value(o, d, depth + 1);
    Py_DECREF(d);
    if (r < 0)
        return -1;
    PyObject *x = PyObject_GetAttr(v, S_value);
    if (x == NULL)
        return -1;
    r = enc_value(o, x, depth + 1);
    Py_DECREF(x);
    return r;
}

static int enc_array32_body(Out *o, PyObject *v, int depth);

/* The converter of a native value x to the raw value of array type code, or NULL. */
static PyObject *
native_converter(unsigned char code, PyTypeObject *t)
{
    if (code == 0x83)
        return PyType_IsSubtype(t, T_datetime) ? F_timestamp_of : NULL;
    if (!PyType_IsSubtype(t, T_decimal))
        return NULL;
    return code == 0x74 ? F_decimal32_of : code == 0x84 ? F_decimal64_of : F_decimal128_of;
}

/* x, a datetime or Decimal, converted in Python to its raw value and encoded as that by
   enc (an element or a value); a conversion error stays set (Python then re-raises it). */
static int
enc_native(Out *o, PyObject *convert, PyObject *x, unsigned char code,
           int (*enc)(Out *, unsigned char, PyObject *, int), int depth)
{
    PyObject *raw = PyObject_CallOneArg(convert, x);
    if (raw == NULL)
        return -1;
    int r = enc(o, code, raw, depth);
    Py_DECREF(raw);
    return r;
}

static int enc_array_element(Out *o, unsigned char code, PyObject *x, int depth);

/* A raw timestamp or decimal128 as a value (enc_native's enc for enc_value). */
static int
enc_raw_value(Out *o, unsigned char code, PyObject *raw, int depth)
{
    return put1(o, code) < 0 ? -1 : enc_array_element(o, code, raw, depth);
}

/* One array element in the wide encoding of the array's constructor. */
static int
enc_array_element(Out *o, unsigned char code, PyObject *x, int depth)
{
    PyTypeObject *t = Py_TYPE(x);
    long long i;
    unsigned long long u;
    if ((code == 0x83 || code == 0x74 || code == 0x84 || code == 0x94) && !is_known_int(t) &&
        t != &PyBytes_Type && t != T_decimal128) {
        PyObject *convert = native_converter(code, t);
        return convert == NULL ? -1 : enc_native(o, convert, x, code, enc_array_element, depth);
    }
    switch (code) {
    case 0x40:
        return x == Py_None ? 0 : -1;
    case 0x56:
        if (t != &PyBool_Type)
            return -1;
        return put1(o, x == Py_True ? 0x01 : 0x00);
    case 0x50: case 0x51: case 0x60: case 0x61: case 0x70: case 0x71: case 0x74:
    case 0x80: case 0x84: case 0x81: case 0x83: {
        if (!is_known_int(t))
            return -1;
        int width;
        if (code == 0x80 || code == 0x84) {
            if (as_u64(x, &u) < 0)
                return -1;
            width = 8;
        }
        else {
            long long lo, hi;
            switch (code) {
            case 0x50: lo = 0; hi = 0xFF; width = 1; break;
            case 0x51: lo = -0x80; hi = 0x7F; width = 1; break;
            case 0x60: lo = 0; hi = 0xFFFF; width = 2; break;
            case 0x61: lo = -0x8000; hi = 0x7FFF; width = 2; break;
            case 0x70: case 0x74: lo = 0; hi = 0xFFFFFFFFLL; width = 4; break;
            case 0x71: lo = -0x80000000LL; hi = 0x7FFFFFFF; width = 4; break;
            default: lo = LLONG_MIN; hi = LLONG_MAX; width = 8; break;
            }
            if (as_range(x, lo, hi, &i) < 0)
                return -1;
            u = (unsigned long long)i;
        }
        NEED(o, width);
        unsigned char *w = o->p + o->len;
        switch (width) {
        case 1: w[0] = (unsigned char)u; break;
        case 2: put_u16(w, (uint32_t)u); break;
        case 4: put_u32(w, (uint32_t)u); break;
        default: put_u64(w, u); break;
        }
        o->len += width;
        return 0;
    }
    case 0x72: case 0x82: {
        double d;
        if (PyFloat_Check(x))
            d = PyFloat_AS_DOUBLE(x);
        else if (is_known_int(t)) {
            d = PyLong_AsDouble(x);
            if (d == -1.0 && PyErr_Occurred())
                return -1;
        }
        else
            return -1;
        if (code == 0x72) {
            NEED(o, 4);
            if (PyFloat_Pack4(d, (char *)o->p + o->len, 0) < 0)
                return -1;
            o->len += 4;
        }
        else {
            NEED(o, 8);
            if (PyFloat_Pack8(d, (char *)o->p + o->len, 0) < 0)
                return -1;
            o->len += 8;
        }
        return 0;
    }
    case 0x73:
        if (!is_plain_str(t) || PyUnicode_GET_LENGTH(x) != 1)
            return -1;
        NEED(o, 4);
        put_u32(o->p + o->len, PyUnicode_READ_CHAR(x, 0));
        o->len += 4;
        return 0;
    case 0x94:
        if ((t != &PyBytes_Type && t != T_decimal128) || PyBytes_GET_SIZE(x) != 16)
            return -1;
        return put_bytes(o, PyBytes_AS_STRING(x), 16);
    case 0x98:
        if (t != T_uuid)
            return -1;
        NEED(o, 16);
        if (uuid_bytes(x, o->p + o->len) < 0)
            return -1;
        o->len += 16;
        return 0;
    case 0xB0: {
        Py_buffer view;
        const void *p;
        Py_ssize_t n;
        if (binary_get(x, &view, &p, &n) < 0)
            return -1;
        int r = -1;
        if ((unsigned long long)n <= 0xFFFFFFFFull &&
            (o->cap - o->len >= 4 + n || out_grow(o, 4 + n) == 0)) {
            put_u32(o->p + o->len, (uint32_t)n);
            memcpy(o->p + o->len + 4, p, (size_t)n);
            o->len += 4 + n;
            r = 0;
        }
        binary_release(&view);
        return r;
    }
    case 0xB1: case 0xB3: {
        if (!is_plain_str(t))
            return -1;
        Py_ssize_t n;
        if (code == 0xB3) {
#if PY_VERSION_HEX < 0x030C0000
            if (PyUnicode_READY(x) < 0)
                return -1;
#endif
            if (!PyUnicode_IS_ASCII(x))
                return -1;
            n = PyUnicode_GET_LENGTH(x);
        }
        else {
            n = utf8_size(x);
            if (n < 0)
                return -1;
        }
        if ((unsigned long long)n > 0xFFFFFFFFull)
            return -1;
        NEED(o, 4 + n);
        put_u32(o->p + o->len, (uint32_t)n);
        utf8_write(x, o->p + o->len + 4);
        o->len += 4 + n;
        return 0;
    }
    case 0xD0:
        if (!is_list_like(t) && t != &PyTuple_Type)
            return -1;
        return enc_list32_body(o, x, depth);
    case 0xD1:
        if (!is_dict_like(t))
            return -1;
        return enc_map32_body(o, x, depth);
    case 0xF0:
        if (t != T_array)
            return -1;
        return enc_array32_body(o, x, depth);
    }
    return -1;
}

static int
enc_array32_body(Out *o, PyObject *v, int depth)
{
    int r = -1;
    PyObject *type = NULL, *d = NULL, *elements = NULL;
    if (depth >= MAX_DEPTH)
        return -1;
    type = PyObject_GetAttr(v, S_type);
    if (type == NULL)
        goto done;
    if (Py_TYPE(type) != &PyLong_Type && Py_TYPE(type) != T_type_code)
        goto done;
    long long tc;
    if (as_range(type, 0, 63, &tc) < 0 || array_constructor[tc] < 0)
        goto done;
    unsigned char code = (unsigned char)array_constructor[tc];
    d = PyObject_GetAttr(v, S_descriptor);
    if (d == NULL)
        goto done;
    elements = PyObject_GetAttr(v, S_elements);
    if (elements == NULL)
        goto done;
    if (!PyTuple_CheckExact(elements) && !PyList_CheckExact(elements))
        goto done;
    if (o->cap - o->len < 8 && out_grow(o, 8) < 0)
        goto done;
    Py_ssize_t start = o->len, i, n = PySequence_Fast_GET_SIZE(elements);
    o->len += 8;
    if (d != O_undescribed) {
        if (put1(o, 0x00) < 0 || enc_value(o, d, depth + 1) < 0)
            goto done;
    }
    if (put1(o, code) < 0)
        goto done;
    for (i = 0; i < n; i++) {
        if (enc_array_element(o, code, PySequence_Fast_ITEMS(elements)[i], depth + 1) < 0)
            goto done;
    }
    r = finish32(o, start, n);
done:
    Py_XDECREF(type);
    Py_XDECREF(d);
    Py_XDECREF(elements);
    return r;
}

static int
enc_value(Out *o, PyObject *v, int depth)
{
    PyTypeObject *t = Py_TYPE(v);
    long long x;
    if (t == &PyUnicode_Type)
        return enc_string(o, v);
    if (t == &PyLong_Type)
        return enc_long(o, v);
    if (t == &PyBool_Type)
        return put1(o, v == Py_True ? 0x41 : 0x42);
    if (v == Py_None)
        return put1(o, 0x40);
    if (is_binary_type(t))
        return enc_any_binary(o, v);
    if (is_dict_like(t)) {
        if (put1(o, 0xD1) < 0)
            return -1;
        return enc_map32_body(o, v, depth);
    }
    if (is_list_like(t) || t == &PyTuple_Type)
        return enc_list(o, v, depth);
    if (t == &PyFloat_Type) {
        NEED(o, 9);
        o->p[o->len] = 0x82;
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(v), (char *)o->p + o->len + 1, 0) < 0)
            return -1;
        o->len += 9;
        return 0;
    }
    if (!ready)
        return -1;
    if (t == T_symbol)
        return enc_symbol(o, v);
    if (t == T_uuid)
        return enc_uuid(o, v);
    if (t == T_ulong)
        return enc_ulong(o, v);
    if (t == T_uint)
        return enc_uint(o, v);
    if (t == T_int32) {
        if (as_range(v, -0x80000000LL, 0x7FFFFFFF, &x) < 0)
            return -1;
        if (x >= -128 && x <= 127)
            return put_fixed(o, 0x54, (uint64_t)x, 1);
        return put_fixed(o, 0x71, (uint64_t)x, 4);
    }
    if (t == T_ubyte)
        return as_range(v, 0, 0xFF, &x) < 0 ? -1 : put_fixed(o, 0x50, (uint64_t)x, 1);
    if (t == T_byte)
        return as_range(v, -0x80, 0x7F, &x) < 0 ? -1 : put_fixed(o, 0x51, (uint64_t)x, 1);
    if (t == T_ushort)
        return as_range(v, 0, 0xFFFF, &x) < 0 ? -1 : put_fixed(o, 0x60, (uint64_t)x, 2);
    if (t == T_short)
        return as_range(v, -0x8000, 0x7FFF, &x) < 0 ? -1 : put_fixed(o, 0x61, (uint64_t)x, 2);
    if (t == T_timestamp)
        return as_i64(v, &x) < 0 ? -1 : put_fixed(o, 0x83, (uint64_t)x, 8);
    if (t == T_decimal32)
        return as_range(v, 0, 0xFFFFFFFFLL, &x) < 0 ? -1 : put_fixed(o, 0x74, (uint64_t)x, 4);
    if (t == T_decimal64) {
        unsigned long long u;
        return as_u64(v, &u) < 0 ? -1 : put_fixed(o, 0x84, u, 8);
    }
    if (t == T_float32) {
        NEED(o, 5);
        o->p[o->len] = 0x72;
        if (PyFloat_Pack4(PyFloat_AS_DOUBLE(v), (char *)o->p + o->len + 1, 0) < 0)
            return -1;
        o->len += 5;
        return 0;
    }
    if (t == T_char) {
        if (PyUnicode_GET_LENGTH(v) != 1)
            return -1;
        return put_fixed(o, 0x73, PyUnicode_READ_CHAR(v, 0), 4);
    }
    if (t == T_decimal128) {
        if (PyBytes_GET_SIZE(v) != 16 || put1(o, 0x94) < 0)
            return -1;
        return put_bytes(o, PyBytes_AS_STRING(v), 16);
    }
    if (t == T_described)
        return enc_described(o, v, depth);
    if (t == T_array) {
        if (put1(o, 0xF0) < 0)
            return -1;
        return enc_array32_body(o, v, depth);
    }
    /* Last, so that they cost the common types nothing. */
    if (PyType_IsSubtype(t, T_datetime))
        return enc_native(o, F_timestamp_of, v, 0x83, enc_raw_value, depth);
    if (PyType_IsSubtype(t, T_decimal))
        return enc_native(o, F_decimal128_of, v, 0x94, enc_raw_value, depth);
    return -1;
}

/* ------------------------------------------------------------------------------------------
 * Message encoding (message.py's Message.encode and its helpers, in one pass)
 */

/* A described list section with proton's choice of list8 (when it fits) or list32. The
 * content is encoded by the caller at o->len + 3 (room for a list8 header); this moves it
 * when list32 is needed. start is where the list's constructor goes. */
static int
finish_list_section(Out *o, Py_ssize_t start, Py_ssize_t count)
{
    Py_ssize_t content = o->len - start - 3, size = content + 1;
    if (size <= 255) {
        o->p[start] = 0xC0;
        o->p[start + 1] = (unsigned char)size;
        o->p[start + 2] = (unsigned char)count;
        return 0;
    }
    if ((unsigned long long)(size + 3) > 0xFFFFFFFFull)
        return -1;
    NEED(o, 6);
    memmove(o->p + start + 9, o->p + start + 3, (size_t)content);
    o->p[start] = 0xD0;
    put_u32(o->p + start + 1, (uint32_t)(size + 3));
    put_u32(o->p + start + 5, (uint32_t)count);
    o->len += 6;
    return 0;
}

static int
put_descriptor(Out *o, unsigned char code)
{
    NEED(o, 3);
    o->p[o->len] = 0x00;
    o->p[o->len + 1] = 0x53;
    o->p[o->len + 2] = code;
    o->len += 3;
    return 0;
}

/* Truthiness of a map field: None and {} are skipped; anything but a dict goes to Python. */
static int
map_present(PyObject *v, int *present)
{
    if (v == Py_None) {
        *present = 0;
        return 0;
    }
    if (!is_dict_like(Py_TYPE(v)))
        return -1;
    *present = PyDict_GET_SIZE(v) > 0;
    return 0;
}

/* delivery annotations, message annotations, footer: symbol (or str) or ulong keys */
static int
enc_annotations(Out *o, unsigned char code, PyObject *v)
{
    if (put_descriptor(o, code) < 0 || put1(o, 0xD1) < 0)
        return -1;
    NEED(o, 8);
    Py_ssize_t start = o->len, pos = 0;
    o->len += 8;
    PyObject *k, *x;
    while (PyDict_Next(v, &pos, &k, &x)) {
        PyTypeObject *t = Py_TYPE(k);
        if (t == T_symbol || t == &PyUnicode_Type) {
            if (enc_symbol(o, k) < 0)
                return -1;
        }
        else if (t == T_ulong) {
            if (enc_ulong(o, k) < 0)
                return -1;
        }
        else {
            return -1;
        }
        if (enc_value(o, x, 1) < 0)
            return -1;
    }
    return finish32(o, start, 2 * PyDict_GET_SIZE(v));
}

static int
enc_application_properties(Out *o, PyObject *v)
{
    if (put_descriptor(o, 0x74) < 0 || put1(o, 0xD1) < 0)
        return -1;
    NEED(o, 8);
    Py_ssize_t start = o->len, pos = 0;
    o->len += 8;
    PyObject *k, *x;
    while (PyDict_Next(v, &pos, &k, &x)) {
        /* keys: str and its subclasses but symbol and char, as str.encode(k) */
        if (!PyUnicode_CheckExact(k) &&
            (!PyUnicode_Check(k) || PyObject_TypeCheck(k, T_symbol) ||
             PyObject_TypeCheck(k, T_char)))
            return -1;
        if (enc_string(o, k) < 0)
            return -1;
        /* values: simple types only (a list, map or array is an error: Python says so) */
        PyTypeObject *t = Py_TYPE(x);
        if (t == &PyUnicode_Type) {
            if (enc_string(o, x) < 0)
                return -1;
            continue;
        }
        if (t != &PyLong_Type && t != &PyBool_Type &&
            (PyList_Check(x) || PyTuple_Check(x) || PyDict_Check(x) ||
             PyObject_TypeCheck(x, T_array)))
            return -1;
        if (enc_value(o, x, 1) < 0)
            return -1;
    }
    return finish32(o, start, 2 * PyDict_GET_SIZE(v));
}

static int
enc_header(Out *o, PyObject *durable, PyObject *priority, PyObject *ttl,
           PyObject *first_acquirer, PyObject *delivery_count)
{
    long long pr, dc;
    if (as_range(priority, 0, 255, &pr) < 0 || as_range(delivery_count, 0, 0xFFFFFFFFLL, &dc) < 0)
        return -1;
    if (put_descriptor(o, 0x70) < 0)
        return -1;
    NEED(o, 3);
    Py_ssize_t start = o->len;
    o->len += 3;
    int count = 5;
    if (dc == 0) {
        count = 4;
        if (first_acquirer == Py_False) {
            count = 3;
            if (ttl == Py_None) {
                count = 2;
                if (pr == 4)
                    count = durable == Py_True ? 1 : 0;
            }
        }
    }
    if (count >= 1 && put1(o, durable == Py_True ? 0x41 : 0x40) < 0)
        return -1;
    if (count >= 2 && (pr == 4 ? put1(o, 0x40) : put_fixed(o, 0x50, (uint64_t)pr, 1)) < 0)
        return -1;
    if (count >= 3 && (ttl == Py_None ? put1(o, 0x40) : enc_uint(o, ttl)) < 0)
        return -1;
    if (count >= 4 && put1(o, first_acquirer == Py_True ? 0x41 : 0x40) < 0)
        return -1;
    if (count >= 5 && enc_uint(o, delivery_count) < 0)
        return -1;
    return finish_list_section(o, start, count);
}

static int
enc_property(Out *o, int kind, PyObject *v)
{
    PyTypeObject *t = Py_TYPE(v);
    long long x;
    switch (kind) {
    case P_ID:
        if (is_plain_str(t))
            return enc_string(o, v);
        if (t == T_uuid)
            return enc_uuid(o, v);
        if (t != &PyBool_Type && is_known_int(t))
            return enc_ulong(o, v);
        return enc_any_binary(o, v);
    case P_BINARY:
        return enc_any_binary(o, v);
    case P_STRING:
        return is_plain_str(t) ? enc_string(o, v) : -1;
    case P_SYMBOL:
        return is_plain_str(t) ? enc_symbol(o, v) : -1;
    case P_TIMESTAMP:
        if (t != &PyLong_Type || as_i64(v, &x) < 0)
            return -1;
        return put_fixed(o, 0x83, (uint64_t)x, 8);
    default: /* P_UINT */
        return is_known_int(t) ? enc_uint(o, v) : -1;
    }
}

static int
enc_properties(Out *o, PyObject *m)
{
    int i, last = -1;
    for (i = 0; i < 13; i++) {
        if (SLOT(m, field_off[F_ID + i]) != Py_None)
            last = i;
    }
    if (last < 0)
        return 0;
    if (put_descriptor(o, 0x73) < 0)
        return -1;
    NEED(o, 3);
    Py_ssize_t start = o->len;
    o->len += 3;
    for (i = 0; i <= last; i++) {
        PyObject *v = SLOT(m, field_off[F_ID + i]);
        if (v == Py_None) {
            if (put1(o, 0x40) < 0)
                return -1;
        }
        else if (enc_property(o, property_kinds[i], v) < 0) {
            return -1;
        }
    }
    return finish_list_section(o, start, last + 1);
}

static int
enc_body(Out *o, PyObject *body)
{
    PyTypeObject *t = Py_TYPE(body);
    if (body == Py_None)
        return 0;
    if (is_binary_type(t)) {
        if (put_descriptor(o, 0x75) < 0)
            return -1;
        return enc_any_binary(o, body);
    }
    if (t == T_amqp_value) {
        if (put_descriptor(o, 0x77) < 0)
            return -1;
        PyObject *v = PyObject_GetAttr(body, S_value);
        if (v == NULL)
            return -1;
        int r = enc_value(o, v, 0);
        Py_DECREF(v);
        return r;
    }
    if (t == T_amqp_sequence) {
        if (put_descriptor(o, 0x76) < 0)
            return -1;
        return enc_list(o, body, 0);
    }
    if (t == T_data_sections || t == T_sequence_sections) {
        Py_ssize_t i, n = PyList_GET_SIZE(body);
        for (i = 0; i < n; i++) {
            PyObject *part = PyList_GET_ITEM(body, i);
            if (t == T_data_sections) {
                if (!is_binary_type(Py_TYPE(part)) || put_descriptor(o, 0x75) < 0 ||
                    enc_any_binary(o, part) < 0)
                    return -1;
            }
            else {
                PyTypeObject *pt = Py_TYPE(part);
                if ((!is_list_like(pt) && pt != &PyTuple_Type) || put_descriptor(o, 0x76) < 0 ||
                    enc_list(o, part, 0) < 0)
                    return -1;
            }
        }
        return 0;
    }
    if (put_descriptor(o, 0x77) < 0)
        return -1;
    return enc_value(o, body, 0);
}

/* The bare message of a Message with no field set: no section would be left, and a
   zero-byte transfer is not a message (proton's decoder refuses it). */
static const unsigned char EMPTY_MESSAGE[] = {0x00, 0x53, 0x73, 0x45};

static int
enc_message(Out *o, PyObject *m)
{
    PyObject *f[N_FIELDS];
    int i, present;
    Py_ssize_t start = o->len;
    for (i = 0; i < N_FIELDS; i++) {
        f[i] = SLOT(m, field_off[i]);
        if (f[i] == NULL)
            return -1; /* unset: Python's AttributeError */
    }
    /* header: durable and first_acquirer must be bools, the counts plain ints */
    PyObject *durable = f[F_DURABLE], *first_acquirer = f[F_FIRST_ACQUIRER];
    PyObject *priority = f[F_PRIORITY], *ttl = f[F_TTL], *dc = f[F_DELIVERY_COUNT];
    if (Py_TYPE(durable) != &PyBool_Type || Py_TYPE(first_acquirer) != &PyBool_Type ||
        !PyLong_CheckExact(priority) || !PyLong_CheckExact(dc) ||
        (ttl != Py_None && !PyLong_CheckExact(ttl)))
        return -1;
    long long pr, count;
    if (as_i64(priority, &pr) < 0 || as_i64(dc, &count) < 0)
        return -1;
    if (durable == Py_True || pr != 4 || ttl != Py_None || first_acquirer == Py_True ||
        count != 0) {
        if (enc_header(o, durable, priority, ttl, first_acquirer, dc) < 0)
            return -1;
    }
    if (map_present(f[F_INSTRUCTIONS], &present) < 0 ||
        (present && enc_annotations(o, 0x71, f[F_INSTRUCTIONS]) < 0))
        return -1;
    if (map_present(f[F_ANNOTATIONS], &present) < 0 ||
        (present && enc_annotations(o, 0x72, f[F_ANNOTATIONS]) < 0))
        return -1;
    if (enc_properties(o, m) < 0)
        return -1;
    if (map_present(f[F_PROPERTIES], &present) < 0 ||
        (present && enc_application_properties(o, f[F_PROPERTIES]) < 0))
        return -1;
    if (enc_body(o, f[F_BODY]) < 0)
        return -1;
    if (map_present(f[F_FOOTER], &present) < 0 ||
        (present && enc_annotations(o, 0x78, f[F_FOOTER]) < 0))
        return -1;
    /* A message with nothing set: an empty properties section, as Python writes it. */
    if (o->len == start && put_bytes(o, EMPTY_MESSAGE, sizeof(EMPTY_MESSAGE)) < 0)
        return -1;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Decoding. Every function returns a new reference, or NULL for "not handled" (malformed
 * input included), with or without an exception set.
 */

typedef struct {
    const unsigned char *d;
    Py_ssize_t n;
} Src;

static PyObject *dec_value(const Src *s, Py_ssize_t *pp, int depth);
static PyObject *dec_body(const Src *s, int code, Py_ssize_t *pp, int depth);

static inline uint32_t
get_u16(const unsigned char *p)
{
    return ((uint32_t)p[0] << 8) | p[1];
}

static inline uint32_t
get_u32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t
get_u64(const unsigned char *p)
{
    return ((uint64_t)get_u32(p) << 32) | get_u32(p + 4);
}

/* int.__new__(cls, x), which is what the Python decoder calls */
static PyObject *
subclass_new(PyTypeObject *base, PyTypeObject *cls, PyObject *x)
{
    if (x == NULL)
        return NULL;
    PyObject *args = PyTuple_Pack(1, x);
    Py_DECREF(x);
    if (args == NULL)
        return NULL;
    PyObject *r = base->tp_new(cls, args, NULL);
    Py_DECREF(args);
    return r;
}

static PyObject *
new_int(PyTypeObject *cls, long long x)
{
    return subclass_new(&PyLong_Type, cls, PyLong_FromLongLong(x));
}

static PyObject *
new_uint64(PyTypeObject *cls, unsigned long long x)
{
    return subclass_new(&PyLong_Type, cls, PyLong_FromUnsignedLongLong(x));
}

static PyObject *
new_uuid(const unsigned char *p)
{
    /* object.__new__(UUID), then the two slots, as codec._uuid_from_bytes does */
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *i = PyLong_FromUnsignedNativeBytes(p, 16, Py_ASNATIVEBYTES_BIG_ENDIAN);
#else
    PyObject *i = _PyLong_FromByteArray(p, 16, 0, 0);
#endif
    if (i == NULL)
        return NULL;
    PyObject *u = PyBaseObject_Type.tp_new(T_uuid, EMPTY_TUPLE, NULL);
    if (u == NULL) {
        Py_DECREF(i);
        return NULL;
    }
    SLOT(u, uuid_int_off) = i;
    SLOT(u, uuid_safe_off) = Py_NewRef(O_safe_unknown);
    return u;
}

/* Room for k more bytes at p? (p <= n always) */
#define HAVE(s, p, k) ((Py_ssize_t)(k) <= (s)->n - (p))

/* Python's "count > end - p" (an error), without overflow */
static int
count_exceeds(uint32_t count, Py_ssize_t end, Py_ssize_t p)
{
    return end < p || (uint64_t)count > (uint64_t)(end - p);
}

/* count values from p, which must end exactly at end */
static PyObject *
dec_items(const Src *s, Py_ssize_t *pp, Py_ssize_t end, uint32_t count, int depth)
{
    Py_ssize_t p = *pp, i;
    if (end > s->n || count_exceeds(count, end, p) || depth >= MAX_DEPTH)
        return NULL;
    PyObject *list = PyList_New((Py_ssize_t)count);
    if (list == NULL)
        return NULL;
    for (i = 0; i < (Py_ssize_t)count; i++) {
        PyObject *v = dec_value(s, &p, depth + 1);
        if (v == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, v);
    }
    if (p != end) {
        Py_DECREF(list);
        return NULL;
    }
    *pp = p;
    return list;
}

/* Map keys repeat from one message to the next (application-properties, mostly): the str8
 * keys of up to KEY_CACHE_MAX_LEN ASCII bytes are kept in a small direct-mapped cache, so
 * that a repeated key costs a compare instead of a decode, an allocation and a hash. Only
 * plain str (immutable, no __dict__), so sharing one is invisible but to `is`. */
#define KEY_CACHE_SIZE 512
#define KEY_CACHE_MAX_LEN 48
static PyObject *key_cache[KEY_CACHE_SIZE];

static PyObject *
dec_key_str8(const Src *s, Py_ssize_t *pp)
{
    Py_ssize_t p = *pp, n, i;
    PyObject *r;
    if (!HAVE(s, p, 1))
        return NULL;
    n = s->d[p++];
    if (!HAVE(s, p, n))
        return NULL;
    const unsigned char *b = s->d + p;
    if (n > KEY_CACHE_MAX_LEN) {
        r = PyUnicode_DecodeUTF8((const char *)b, n, NULL);
    }
    else {
        uint32_t h = 2166136261u ^ (uint32_t)n;
        for (i = 0; i < n; i++)
            h = (h ^ b[i]) * 16777619u;
        PyObject **slot = &key_cache[(h ^ (h >> 16)) % KEY_CACHE_SIZE];
        PyObject *c = *slot;
        if (c != NULL && PyUnicode_GET_LENGTH(c) == n && memcmp(PyUnicode_DATA(c), b, n) == 0) {
            r = Py_NewRef(c);
        }
        else {
            r = PyUnicode_DecodeUTF8((const char *)b, n, NULL);
            /* ASCII: one byte per character, which the compare above relies on */
            if (r != NULL && PyUnicode_CheckExact(r) && PyUnicode_IS_ASCII(r)) {
                if (PyObject_Hash(r) == -1) {
                    Py_DECREF(r);
                    return NULL;
                }
                Py_XSETREF(*slot, Py_NewRef(r));
            }
        }
    }
    if (r != NULL)
        *pp = p + n;
    return r;
}

static PyObject *
dec_map(const Src *s, Py_ssize_t *pp, Py_ssize_t end, uint32_t count, int depth)
{
    Py_ssize_t p = *pp, i;
    if (end > s->n || count_exceeds(count, end, p) || (count & 1) || depth >= MAX_DEPTH)
        return NULL;
    PyObject *dict = PyDict_New();
    if (dict == NULL)
        return NULL;
    for (i = 0; i < (Py_ssize_t)(count >> 1); i++) {
        PyObject *k;
        if (HAVE(s, p, 1) && s->d[p] == 0xA1) {
            p++;
            k = dec_key_str8(s, &p);
        }
        else {
            k = dec_value(s, &p, depth + 1);
        }
        if (k == NULL)
            goto fail;
        PyObject *v = dec_value(s, &p, depth + 1);
        if (v == NULL) {
            Py_DECREF(k);
            goto fail;
        }
        int r = PyDict_SetItem(dict, k, v);
        Py_DECREF(k);
        Py_DECREF(v);
        if (r < 0)
            goto fail;
    }
    /* duplicate keys are an error */
    if (p != end || PyDict_GET_SIZE(dict) != (Py_ssize_t)(count >> 1))
        goto fail;
    *pp = p;
    return dict;
fail:
    Py_DECREF(dict);
    return NULL;
}

static int
is_zero_width(int code)
{
    return code >= 0x40 && code <= 0x45;
}

static PyObject *
dec_array(const Src *s, Py_ssize_t *pp, Py_ssize_t end, uint32_t count, int depth)
{
    Py_ssize_t p = *pp, i;
    PyObject *descriptor = NULL, *args = NULL, *r = NULL;
    if (end > s->n || depth >= MAX_DEPTH || !HAVE(s, p, 1))
        return NULL;
    int code = s->d[p];
    if (code == 0) {
        p++;
        descriptor = dec_value(s, &p, depth + 1);
        if (descriptor == NULL || !HAVE(s, p, 1))
            goto done;
        code = s->d[p];
    }
    else {
        descriptor = Py_NewRef(O_undescribed);
    }
    if (code == 0 || type_code_of[code] == 0)
        goto done;
    p++;
    if (is_zero_width(code)) {
        if ((uint64_t)count > (uint64_t)max_zero_width_array)
            goto done;
    }
    else if (count_exceeds(count, end, p)) {
        goto done;
    }
    args = PyTuple_New(2 + (Py_ssize_t)count);
    if (args == NULL)
        goto done;
    PyTuple_SET_ITEM(args, 0, descriptor);
    descriptor = NULL;
    PyObject *tc = PyLong_FromLong(type_code_of[code]);
    if (tc == NULL)
        goto done;
    PyTuple_SET_ITEM(args, 1, tc);
    for (i = 0; i < (Py_ssize_t)count; i++) {
        PyObject *v = dec_body(s, code, &p, depth + 1);
        if (v == NULL)
            goto done;
        PyTuple_SET_ITEM(args, 2 + i, v);
    }
    if (p != end)
        goto done;
    r = PyObject_Call((PyObject *)T_array, args, NULL);
    if (r != NULL)
        *pp = p;
done:
    Py_XDECREF(descriptor);
    Py_XDECREF(args);
    return r;
}

static PyObject *
dec_utf8(const Src *s, Py_ssize_t *pp, Py_ssize_t n)
{
    Py_ssize_t p = *pp;
    if (!HAVE(s, p, n))
        return NULL;
    PyObject *r = PyUnicode_DecodeUTF8((const char *)s->d + p, n, NULL);
    if (r != NULL)
        *pp = p + n;
    return r;
}

static PyObject *
dec_symbol(const Src *s, Py_ssize_t *pp, Py_ssize_t n)
{
    Py_ssize_t p = *pp;
    if (!HAVE(s, p, n))
        return NULL;
    PyObject *r = subclass_new(&PyUnicode_Type, T_symbol,
                               PyUnicode_DecodeASCII((const char *)s->d + p, n, NULL));
    if (r != NULL)
        *pp = p + n;
    return r;
}

static PyObject *
dec_binary(const Src *s, Py_ssize_t *pp, Py_ssize_t n)
{
    Py_ssize_t p = *pp;
    if (!HAVE(s, p, n))
        return NULL;
    *pp = p + n;
    return PyBytes_FromStringAndSize((const char *)s->d + p, n);
}

/* The value after its constructor code at *pp (codec._DEC[code](d, p)). */
static PyObject *
dec_body(const Src *s, int code, Py_ssize_t *pp, int depth)
{
    Py_ssize_t p = *pp;
    const unsigned char *d = s->d;
    PyObject *r;
    uint32_t size, count;
    switch (code) {
    case 0x40: return Py_NewRef(Py_None);
    case 0x41: return Py_NewRef(Py_True);
    case 0x42: return Py_NewRef(Py_False);
    case 0x43: return Py_NewRef(O_uint0);
    case 0x44: return Py_NewRef(O_ulong0);
    case 0x45: return PyList_New(0);
    case 0x00: {
        if (depth >= MAX_DEPTH)
            return NULL;
        PyObject *descriptor = dec_value(s, &p, depth + 1);
        if (descriptor == NULL)
            return NULL;
        PyObject *value = dec_value(s, &p, depth + 1);
        if (value == NULL) {
            Py_DECREF(descriptor);
            return NULL;
        }
        PyObject *args[2] = {descriptor, value};
        r = PyObject_Vectorcall((PyObject *)T_described, args, 2, NULL);
        Py_DECREF(descriptor);
        Py_DECREF(value);
        break;
    }
    case 0x56:
        if (!HAVE(s, p, 1) || d[p] > 1)
            return NULL;
        r = Py_NewRef(d[p] ? Py_True : Py_False);
        p += 1;
        break;
    case 0x50: case 0x51: case 0x52: case 0x53: case 0x54: case 0x55: {
        if (!HAVE(s, p, 1))
            return NULL;
        int b = d[p];
        p += 1;
        switch (code) {
        case 0x50: r = new_int(T_ubyte, b); break;
        case 0x51: r = new_int(T_byte, (int8_t)b); break;
        case 0x52: r = new_int(T_uint, b); break;
        case 0x53: r = new_int(T_ulong, b); break;
        case 0x54: r = new_int(T_int32, (int8_t)b); break;
        default: r = PyLong_FromLong((int8_t)b); break;
        }
        break;
    }
    case 0x60: case 0x61:
        if (!HAVE(s, p, 2))
            return NULL;
        r = code == 0x60 ? new_int(T_ushort, get_u16(d + p))
                         : new_int(T_short, (int16_t)get_u16(d + p));
        p += 2;
        break;
    case 0x70: case 0x71: case 0x74: case 0x72: case 0x73:
        if (!HAVE(s, p, 4))
            return NULL;
        switch (code) {
        case 0x70: r = new_int(T_uint, get_u32(d + p)); break;
        case 0x71: r = new_int(T_int32, (int32_t)get_u32(d + p)); break;
        case 0x74: r = new_int(T_decimal32, get_u32(d + p)); break;
        case 0x72: {
            double x = PyFloat_Unpack4((const char *)d + p, 0);
            if (x == -1.0 && PyErr_Occurred())
                return NULL;
            r = subclass_new(&PyFloat_Type, T_float32, PyFloat_FromDouble(x));
            break;
        }
        default: {
            uint32_t c = get_u32(d + p);
            if (c > 0x10FFFF)
                return NULL; /* chr() refuses it */
            r = subclass_new(&PyUnicode_Type, T_char, PyUnicode_FromOrdinal((int)c));
            break;
        }
        }
        p += 4;
        break;
    case 0x80: case 0x81: case 0x83: case 0x84: case 0x82:
        if (!HAVE(s, p, 8))
            return NULL;
        switch (code) {
        case 0x80: r = new_uint64(T_ulong, get_u64(d + p)); break;
        case 0x84: r = new_uint64(T_decimal64, get_u64(d + p)); break;
        case 0x81: r = PyLong_FromLongLong((long long)get_u64(d + p)); break;
        case 0x83: r = new_int(T_timestamp, (long long)get_u64(d + p)); break;
        default: {
            double x = PyFloat_Unpack8((const char *)d + p, 0);
            if (x == -1.0 && PyErr_Occurred())
                return NULL;
            r = PyFloat_FromDouble(x);
            break;
        }
        }
        p += 8;
        break;
    case 0x94:
        if (!HAVE(s, p, 16))
            return NULL;
        r = subclass_new(&PyBytes_Type, T_decimal128,
                         PyBytes_FromStringAndSize((const char *)d + p, 16));
        p += 16;
        break;
    case 0x98:
        if (!HAVE(s, p, 16))
            return NULL;
        r = new_uuid(d + p);
        p += 16;
        break;
    case 0xA0: case 0xA1: case 0xA3:
    case 0xB0: case 0xB1: case 0xB3: {
        Py_ssize_t n;
        if (code < 0xB0) {
            if (!HAVE(s, p, 1))
                return NULL;
            n = d[p];
            p += 1;
        }
        else {
            if (!HAVE(s, p, 4))
                return NULL;
            uint32_t n32 = get_u32(d + p);
            p += 4;
            if ((uint64_t)n32 > (uint64_t)(s->n - p))
                return NULL; /* truncated (and n fits a Py_ssize_t) */
            n = (Py_ssize_t)n32;
        }
        switch (code & 0x0F) {
        case 0x0: r = dec_binary(s, &p, n); break;
        case 0x1: r = dec_utf8(s, &p, n); break;
        default: r = dec_symbol(s, &p, n); break;
        }
        break;
    }
    case 0xC0: case 0xC1: case 0xE0:
        if (!HAVE(s, p, 2))
            return NULL;
        size = d[p];
        count = d[p + 1];
        if (size < (code == 0xE0 ? 2u : 1u))
            return NULL;
        {
            Py_ssize_t end = p + 1 + (Py_ssize_t)size;
            p += 2;
            r = code == 0xC0   ? dec_items(s, &p, end, count, depth)
                : code == 0xC1 ? dec_map(s, &p, end, count, depth)
                               : dec_array(s, &p, end, count, depth);
        }
        break;
    case 0xD0: case 0xD1: case 0xF0:
        if (!HAVE(s, p, 8))
            return NULL;
        size = get_u32(d + p);
        count = get_u32(d + p + 4);
        if (size < (code == 0xF0 ? 5u : 4u) || (uint64_t)size > (uint64_t)(s->n - p))
            return NULL; /* too small, or past the end of the input */
        {
            Py_ssize_t end = p + 4 + (Py_ssize_t)size;
            p += 8;
            r = code == 0xD0   ? dec_items(s, &p, end, count, depth)
                : code == 0xD1 ? dec_map(s, &p, end, count, depth)
                               : dec_array(s, &p, end, count, depth);
        }
        break;
    default:
        return NULL;
    }
    if (r != NULL)
        *pp = p;
    return r;
}

static PyObject *
dec_value(const Src *s, Py_ssize_t *pp, int depth)
{
    Py_ssize_t p = *pp;
    if (!HAVE(s, p, 1))
        return NULL;
    int code = s->d[p];
    p++;
    PyObject *r = dec_body(s, code, &p, depth);
    if (r != NULL)
        *pp = p;
    return r;
}

/* ------------------------------------------------------------------------------------------
 * Message decoding (message.py's Message.decode, _header and _properties)
 */

/* int(v) for the proton int classes: a plain int */
static PyObject *
plain_int(PyObject *v)
{
    return PyNumber_Long(v);
}

static int
is_id_type(PyObject *v)
{
    PyTypeObject *t = Py_TYPE(v);
    return t == T_ulong || t == T_uuid || t == &PyBytes_Type || t == &PyUnicode_Type;
}

/* The header list's fields, type-checked and defaults filled in, into m's slots. On failure
 * some may be set: the caller frees m, and them with it. */
static int
set_header(PyObject *m, PyObject *h)
{
    Py_ssize_t n = PyList_GET_SIZE(h), i;
    if (n > 5)
        return -1;
    PyObject *f[5] = {Py_None, Py_None, Py_None, Py_None, Py_None};
    for (i = 0; i < n; i++)
        f[i] = PyList_GET_ITEM(h, i);
    if ((f[0] != Py_None && Py_TYPE(f[0]) != &PyBool_Type) ||
        (f[1] != Py_None && Py_TYPE(f[1]) != T_ubyte) ||
        (f[2] != Py_None && Py_TYPE(f[2]) != T_uint) ||
        (f[3] != Py_None && Py_TYPE(f[3]) != &PyBool_Type) ||
        (f[4] != Py_None && Py_TYPE(f[4]) != T_uint))
        return -1;
    FIELD(m, F_DURABLE) = Py_NewRef(f[0] == Py_None ? Py_False : f[0]);
    FIELD(m, F_PRIORITY) = f[1] == Py_None ? PyLong_FromLong(4) : plain_int(f[1]);
    FIELD(m, F_TTL) = f[2] == Py_None ? Py_NewRef(Py_None) : plain_int(f[2]);
    FIELD(m, F_FIRST_ACQUIRER) = Py_NewRef(f[3] == Py_None ? Py_False : f[3]);
    FIELD(m, F_DELIVERY_COUNT) = f[4] == Py_None ? PyLong_FromLong(0) : plain_int(f[4]);
    for (i = F_DURABLE; i <= F_DELIVERY_COUNT; i++) {
        if (FIELD(m, i) == NULL)
            return -1;
    }
    return 0;
}

/* The properties list's 13 fields, type-checked, into m's slots (on failure as above). */
static int
set_properties(PyObject *m, PyObject *f)
{
    Py_ssize_t n = PyList_GET_SIZE(f), i;
    if (n > 13)
        return -1;
    for (i = 0; i < 13; i++) {
        PyObject *v = i < n ? PyList_GET_ITEM(f, i) : Py_None, *r;
        PyTypeObject *t = Py_TYPE(v);
        if (v == Py_None) {
            r = Py_NewRef(v);
        }
        else {
            switch (property_kinds[i]) {
            case P_ID:
                r = is_id_type(v) ? Py_NewRef(v) : NULL;
                break;
            case P_BINARY:
                r = t == &PyBytes_Type ? Py_NewRef(v) : NULL;
                break;
            case P_SYMBOL:
                r = t == T_symbol ? Py_NewRef(v) : NULL;
                break;
            case P_TIMESTAMP:
                r = t == T_timestamp ? plain_int(v) : NULL;
                break;
            case P_UINT:
                r = t == T_uint ? plain_int(v) : NULL;
                break;
            default:
                r = t == &PyUnicode_Type ? Py_NewRef(v) : NULL;
                break;
            }
        }
        if (r == NULL)
            return -1;
        FIELD(m, F_ID + i) = r;
    }
    return 0;
}

static PyObject *
call1(PyTypeObject *cls, PyObject *arg)
{
    return PyObject_CallOneArg((PyObject *)cls, arg);
}

static PyObject *
dec_message(const Src *s)
{
    const unsigned char *d = s->d;
    Py_ssize_t n = s->n, p = 0;
    PyObject *header = NULL, *props = NULL, *mid = NULL, *value = NULL;
    PyObject *sec[3] = {NULL, NULL, NULL}; /* delivery annotations, annotations, footer */
    PyObject *app = NULL, *data_parts = NULL, *sequences = NULL, *v = NULL, *m = NULL;
    PyObject *data = NULL; /* the first data section; data_parts from the second on */
    int has_value = 0, last = 0x6F, i;

    while (p < n) {
        /* only the ulong descriptors 00 53 xx; symbolic ones go to Python */
        if (!HAVE(s, p, 4) || d[p] != 0 || d[p + 1] != 0x53)
            goto fail;
        int code = d[p + 2];
        p += 3;
        if (code <= last || code > 0x78) {
            if (code != last || code < 0x75 || code > 0x76)
                goto fail;
        }
        last = code;
        int c = d[p];
        if (code == 0x75) {
            /* data */
            PyObject *b = dec_value(s, &p, 0);
            if (b != NULL && Py_TYPE(b) != &PyBytes_Type)
                Py_CLEAR(b);
            if (b == NULL)
                goto fail;
            if (sequences != NULL || has_value) {
                Py_DECREF(b);
                goto fail;
            }
            if (data == NULL) {
                data = b;
            }
            else {
                if (data_parts == NULL && (data_parts = PyList_New(1)) != NULL)
                    PyList_SET_ITEM(data_parts, 0, Py_NewRef(data));
                int r = data_parts == NULL ? -1 : PyList_Append(data_parts, b);
                Py_DECREF(b);
                if (r < 0)
                    goto fail;
            }
        }
        else if (code == 0x74) {
            /* application-properties */
            app = dec_value(s, &p, 0);
            if (app == NULL || Py_TYPE(app) != &PyDict_Type)
                goto fail;
        }
        else if (code == 0x73) {
            /* properties: most often a list8 holding only a message-id */
            if (c == 0xC0 && HAVE(s, p, 3) && d[p + 2] == 1) {
                Py_ssize_t e = p + 2 + d[p + 1], q = p + 3;
                if (e > n)
                    goto fail;
                mid = dec_value(s, &q, 0);
                if (mid == NULL || (mid != Py_None && !is_id_type(mid)) || q != e)
                    goto fail;
                p = e;
            }
            else {
                v = dec_value(s, &p, 0);
                if (v == NULL || Py_TYPE(v) != &PyList_Type)
                    goto fail;
                props = v;
                v = NULL;
            }
        }
        else if (code == 0x70) {
            if (c == 0x45) {
                p += 1; /* an empty header, as proton always sends */
            }
            else {
                header = dec_value(s, &p, 0);
                if (header == NULL || Py_TYPE(header) != &PyList_Type)
                    goto fail;
            }
        }
        else if (code == 0x77) {
            if (data != NULL || sequences != NULL)
                goto fail;
            value = dec_value(s, &p, 0);
            if (value == NULL)
                goto fail;
            has_value = 1;
        }
        else if (code == 0x76) {
            v = dec_value(s, &p, 0);
            if (v == NULL || Py_TYPE(v) != &PyList_Type || data != NULL || has_value)
                goto fail;
            if (sequences == NULL) {
                sequences = PyList_New(0);
                if (sequences == NULL)
                    goto fail;
            }
            if (PyList_Append(sequences, v) < 0)
                goto fail;
            Py_CLEAR(v);
        }
        else {
            /* 0x71 delivery annotations, 0x72 message annotations, 0x78 footer */
            int k = code == 0x71 ? 0 : code == 0x72 ? 1 : 2;
            sec[k] = dec_value(s, &p, 0);
            if (sec[k] == NULL || Py_TYPE(sec[k]) != &PyDict_Type)
                goto fail;
        }
    }

    /* object.__new__(Message); its slots (NULL until set) are filled in place, and a
     * failure from here on frees it with whatever it holds */
    m = PyBaseObject_Type.tp_new(T_message, EMPTY_TUPLE, NULL);
    if (m == NULL)
        goto fail;
    if (header != NULL) {
        if (set_header(m, header) < 0)
            goto fail;
    }
    else {
        FIELD(m, F_DURABLE) = Py_NewRef(Py_False);
        FIELD(m, F_PRIORITY) = PyLong_FromLong(4);
        FIELD(m, F_TTL) = Py_NewRef(Py_None);
        FIELD(m, F_FIRST_ACQUIRER) = Py_NewRef(Py_False);
        FIELD(m, F_DELIVERY_COUNT) = PyLong_FromLong(0);
        if (FIELD(m, F_PRIORITY) == NULL || FIELD(m, F_DELIVERY_COUNT) == NULL)
            goto fail;
    }
    if (props != NULL) {
        if (set_properties(m, props) < 0)
            goto fail;
    }
    else {
        FIELD(m, F_ID) = mid != NULL ? mid : Py_NewRef(Py_None);
        mid = NULL;
        for (i = F_USER_ID; i <= F_REPLY_TO_GROUP_ID; i++)
            FIELD(m, i) = Py_NewRef(Py_None);
    }
    FIELD(m, F_INSTRUCTIONS) = sec[0] ? sec[0] : Py_NewRef(Py_None);
    FIELD(m, F_ANNOTATIONS) = sec[1] ? sec[1] : Py_NewRef(Py_None);
    FIELD(m, F_FOOTER) = sec[2] ? sec[2] : Py_NewRef(Py_None);
    sec[0] = sec[1] = sec[2] = NULL;
    FIELD(m, F_PROPERTIES) = app ? app : Py_NewRef(Py_None);
    app = NULL;

    PyObject *body;
    if (data_parts != NULL)
        body = call1(T_data_sections, data_parts);
    else if (data != NULL)
        body = Py_NewRef(data);
    else if (sequences != NULL)
        body = PyList_GET_SIZE(sequences) == 1
                   ? call1(T_amqp_sequence, PyList_GET_ITEM(sequences, 0))
                   : call1(T_sequence_sections, sequences);
    else if (has_value && (value == Py_None || Py_TYPE(value) == &PyBytes_Type))
        body = call1(T_amqp_value, value);
    else
        body = Py_NewRef(has_value ? value : Py_None);
    if (body == NULL)
        goto fail;
    FIELD(m, F_BODY) = body;
    goto done;

fail:
    Py_CLEAR(m);
done:
    Py_XDECREF(header);
    Py_XDECREF(props);
    Py_XDECREF(mid);
    Py_XDECREF(value);
    Py_XDECREF(sec[0]);
    Py_XDECREF(sec[1]);
    Py_XDECREF(sec[2]);
    Py_XDECREF(app);
    Py_XDECREF(data);
    Py_XDECREF(data_parts);
    Py_XDECREF(sequences);
    Py_XDECREF(v);
    return m;
}

/* ------------------------------------------------------------------------------------------
 * Module functions
 */

/* "Not handled": clear an Exception (the Python code will meet it again and word it its
 * way); anything else (KeyboardInterrupt, ...) propagates. */
static int
swallow(void)
{
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return -1;
        PyErr_Clear();
    }
    return 0;
}

static PyObject *
finish_encode(Out *o, int r)
{
    PyObject *b = NULL;
    if (r == 0)
        b = PyBytes_FromStringAndSize((const char *)o->p, o->len);
    out_free(o);
    if (b != NULL)
        return b;
    if (swallow() < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
py_encode(PyObject *module, PyObject *value)
{
    Out o;
    if (!ready)
        Py_RETURN_NONE;
    out_init(&o);
    return finish_encode(&o, enc_value(&o, value, 0));
}

static PyObject *
py_encode_message(PyObject *module, PyObject *message)
{
    Out o;
    if (!message_ready || Py_TYPE(message) != T_message)
        Py_RETURN_NONE;
    out_init(&o);
    return finish_encode(&o, enc_message(&o, message));
}

/* The bytes of a buffer; bytes themselves without the buffer protocol. */
static int
get_source(PyObject *data, Py_buffer *view, Src *s)
{
    view->obj = NULL;
    if (PyBytes_CheckExact(data)) {
        s->d = (const unsigned char *)PyBytes_AS_STRING(data);
        s->n = PyBytes_GET_SIZE(data);
        return 0;
    }
    if (PyObject_GetBuffer(data, view, PyBUF_SIMPLE) < 0)
        return -1;
    s->d = view->buf;
    s->n = view->len;
    return 0;
}

static PyObject *
py_decode(PyObject *module, PyObject *data)
{
    Py_buffer view;
    Src s;
    PyObject *r = NULL;
    if (!ready)
        return Py_NewRef(NOT_HANDLED);
    if (get_source(data, &view, &s) == 0) {
        Py_ssize_t p = 0;
        r = dec_value(&s, &p, 0);
        if (r != NULL && p != s.n)
            Py_CLEAR(r);
        if (view.obj != NULL)
            PyBuffer_Release(&view);
    }
    if (r != NULL)
        return r;
    if (swallow() < 0)
        return NULL;
    return Py_NewRef(NOT_HANDLED);
}

static PyObject *
py_decode_from(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Src s;
    PyObject *r = NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "decode_from(data, offset)");
        return NULL;
    }
    if (!ready || !PyLong_CheckExact(args[1]))
        Py_RETURN_NONE;
    Py_ssize_t p = PyLong_AsSsize_t(args[1]);
    if (p < 0) {
        if (swallow() < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (get_source(args[0], &view, &s) == 0) {
        if (p <= s.n) {
            PyObject *v = dec_value(&s, &p, 0);
            if (v != NULL) {
                r = Py_BuildValue("(Nn)", v, p);
            }
        }
        if (view.obj != NULL)
            PyBuffer_Release(&view);
    }
    if (r != NULL)
        return r;
    if (swallow() < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
py_decode_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Src s;
    PyObject *r = NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "decode_message(cls, data)");
        return NULL;
    }
    if (!message_ready || args[0] != (PyObject *)T_message)
        Py_RETURN_NONE;
    if (get_source(args[1], &view, &s) == 0) {
        r = dec_message(&s);
        if (view.obj != NULL)
            PyBuffer_Release(&view);
    }
    if (r != NULL)
        return r;
    if (swallow() < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------
 * Setup
 */

static PyObject *
config_get(PyObject *config, const char *name, int want_type)
{
    PyObject *v = PyDict_GetItemString(config, name);
    if (v == NULL) {
        PyErr_Format(PyExc_KeyError, "setup: missing %s", name);
        return NULL;
    }
    if (want_type && !PyType_Check(v)) {
        PyErr_Format(PyExc_TypeError, "setup: %s is not a class", name);
        return NULL;
    }
    Py_INCREF(v); /* kept for the life of the process */
    return v;
}

/* The byte offset of a __slots__ member of cls. */
static int
slot_offset(PyTypeObject *cls, const char *name, Py_ssize_t *off)
{
    PyObject *descr = PyDict_GetItemString(cls->tp_dict, name);
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
        ((PyMemberDescrObject *)descr)->d_member->type != Py_T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "setup: %s.%s is not a slot", cls->tp_name, name);
        return -1;
    }
    *off = ((PyMemberDescrObject *)descr)->d_member->offset;
    return 0;
}

#define GET_TYPE(var, name)                                                  \
    if ((var = (PyTypeObject *)config_get(config, name, 1)) == NULL)         \
        return NULL;
#define GET_OBJ(var, name)                                                   \
    if ((var = config_get(config, name, 0)) == NULL)                         \
        return NULL;

static PyObject *
py_setup(PyObject *module, PyObject *config)
{
    PyObject *codes, *constructors, *limit;
    Py_ssize_t i;
    if (!PyDict_Check(config)) {
        PyErr_SetString(PyExc_TypeError, "setup(config: dict)");
        return NULL;
    }
    ready = 0;
    GET_TYPE(T_ulong, "ulong");
    GET_TYPE(T_uint, "uint");
    GET_TYPE(T_ushort, "ushort");
    GET_TYPE(T_ubyte, "ubyte");
    GET_TYPE(T_byte, "byte");
    GET_TYPE(T_short, "short");
    GET_TYPE(T_int32, "int32");
    GET_TYPE(T_timestamp, "timestamp");
    GET_TYPE(T_decimal32, "decimal32");
    GET_TYPE(T_decimal64, "decimal64");
    GET_TYPE(T_float32, "float32");
    GET_TYPE(T_symbol, "symbol");
    GET_TYPE(T_char, "char");
    GET_TYPE(T_decimal128, "decimal128");
    GET_TYPE(T_uuid, "UUID");
    GET_TYPE(T_described, "Described");
    GET_TYPE(T_array, "Array");
    GET_TYPE(T_annotation_dict, "AnnotationDict");
    GET_TYPE(T_property_dict, "PropertyDict");
    GET_TYPE(T_symbol_list, "SymbolList");
    GET_TYPE(T_type_code, "TypeCode");
    GET_OBJ(O_undescribed, "UNDESCRIBED");
    GET_OBJ(O_uint0, "uint0");
    GET_OBJ(O_ulong0, "ulong0");
    GET_OBJ(O_safe_unknown, "safe_unknown");
    GET_OBJ(codes, "type_codes");
    GET_OBJ(constructors, "array_constructors");
    GET_OBJ(limit, "max_zero_width_array");
    GET_TYPE(T_datetime, "datetime");
    GET_TYPE(T_decimal, "Decimal");
    GET_OBJ(F_timestamp_of, "timestamp_of");
    GET_OBJ(F_decimal32_of, "decimal32_of");
    GET_OBJ(F_decimal64_of, "decimal64_of");
    GET_OBJ(F_decimal128_of, "decimal128_of");

    /* the subclasses this module builds with int.__new__ & co. must be what they seem */
    PyTypeObject *ints[] = {T_ulong, T_uint, T_ushort, T_ubyte, T_byte, T_short, T_int32,
                            T_timestamp, T_decimal32, T_decimal64};
    for (i = 0; i < (Py_ssize_t)(sizeof(ints) / sizeof(ints[0])); i++) {
        if (!PyType_IsSubtype(ints[i], &PyLong_Type)) {
            PyErr_Format(PyExc_TypeError, "setup: %s is not an int", ints[i]->tp_name);
            return NULL;
        }
    }
    if (!PyType_IsSubtype(T_float32, &PyFloat_Type) ||
        !PyType_IsSubtype(T_symbol, &PyUnicode_Type) ||
        !PyType_IsSubtype(T_char, &PyUnicode_Type) ||
        !PyType_IsSubtype(T_decimal128, &PyBytes_Type) ||
        !PyType_IsSubtype(T_annotation_dict, &PyDict_Type) ||
        !PyType_IsSubtype(T_property_dict, &PyDict_Type) ||
        !PyType_IsSubtype(T_symbol_list, &PyList_Type)) {
        PyErr_SetString(PyExc_TypeError, "setup: a proton class is not what it should be");
        return NULL;
    }
    if (slot_offset(T_uuid, "int", &uuid_int_off) < 0 ||
        slot_offset(T_uuid, "is_safe", &uuid_safe_off) < 0)
        return NULL;

    if (!PyList_Check(codes) || PyList_GET_SIZE(codes) != 256) {
        PyErr_SetString(PyExc_TypeError, "setup: type_codes must be a list of 256 ints");
        return NULL;
    }
    for (i = 0; i < 256; i++) {
        long c = PyLong_AsLong(PyList_GET_ITEM(codes, i));
        if (c == -1 && PyErr_Occurred())
            return NULL;
        type_code_of[i] = (int)c;
    }
    for (i = 0; i < 64; i++)
        array_constructor[i] = -1;
    if (!PyDict_Check(constructors)) {
        PyErr_SetString(PyExc_TypeError, "setup: array_constructors must be a dict");
        return NULL;
    }
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(constructors, &pos, &k, &v)) {
        long tc = PyLong_AsLong(k), c = PyLong_AsLong(v);
        if (PyErr_Occurred())
            return NULL;
        if (tc < 0 || tc >= 64 || c < 0 || c > 255) {
            PyErr_SetString(PyExc_ValueError, "setup: bad array constructor");
            return NULL;
        }
        array_constructor[tc] = (int)c;
    }
    max_zero_width_array = PyLong_AsSsize_t(limit);
    if (max_zero_width_array == -1 && PyErr_Occurred())
        return NULL;
    ready = 1;
    Py_RETURN_NONE;
}

/* Message(...)'s field names that are slots as they are (not ttl, expiry_time and
   creation_time, which convert seconds to milliseconds), to their slot's index. */
static PyObject *init_fields;
static PyObject *O_zero, *O_four;

static int
setup_init_fields(void)
{
    if (init_fields != NULL)
        return 0;
    PyObject *d = PyDict_New();
    if (d == NULL)
        return -1;
    for (int f = 0; f < N_FIELDS; f++) {
        if (field_names[f][0] == '_')
            continue;
        PyObject *index = PyLong_FromLong(f);
        if (index == NULL || PyDict_SetItemString(d, field_names[f], index) < 0) {
            Py_XDECREF(index);
            Py_DECREF(d);
            return -1;
        }
        Py_DECREF(index);
    }
    O_zero = PyLong_FromLong(0);
    O_four = PyLong_FromLong(4);
    if (O_zero == NULL || O_four == NULL) {
        Py_DECREF(d);
        return -1;
    }
    init_fields = d;
    return 0;
}

static PyObject *
py_setup_message(PyObject *module, PyObject *config)
{
    PyObject *slots;
    int i;
    if (!PyDict_Check(config)) {
        PyErr_SetString(PyExc_TypeError, "setup_message(config: dict)");
        return NULL;
    }
    if (!ready) {
        PyErr_SetString(PyExc_RuntimeError, "setup_message: setup() first");
        return NULL;
    }
    message_ready = 0;
    GET_TYPE(T_message, "Message");
    GET_TYPE(T_amqp_value, "AmqpValue");
    GET_TYPE(T_amqp_sequence, "AmqpSequence");
    GET_TYPE(T_data_sections, "DataSections");
    GET_TYPE(T_sequence_sections, "SequenceSections");
    if (!PyType_IsSubtype(T_amqp_sequence, &PyList_Type) ||
        !PyType_IsSubtype(T_data_sections, &PyList_Type) ||
        !PyType_IsSubtype(T_sequence_sections, &PyList_Type)) {
        PyErr_SetString(PyExc_TypeError, "setup_message: the body forms must be lists");
        return NULL;
    }
    slots = PyObject_GetAttrString((PyObject *)T_message, "__slots__");
    if (slots == NULL)
        return NULL;
    if (!PyTuple_Check(slots) || PyTuple_GET_SIZE(slots) != N_FIELDS) {
        Py_DECREF(slots);
        PyErr_SetString(PyExc_TypeError, "setup_message: Message.__slots__ changed");
        return NULL;
    }
    for (i = 0; i < N_FIELDS; i++) {
        PyObject *name = PyTuple_GET_ITEM(slots, i);
        if (!PyUnicode_Check(name) || PyUnicode_CompareWithASCIIString(name, field_names[i])) {
            Py_DECREF(slots);
            PyErr_Format(PyExc_TypeError, "setup_message: Message.__slots__[%d] is not %s", i,
                         field_names[i]);
            return NULL;
        }
        if (slot_offset(T_message, field_names[i], &field_off[i]) < 0) {
            Py_DECREF(slots);
            return NULL;
        }

    }
    Py_DECREF(slots);
    Py_ssize_t value_off;
    if (slot_offset(T_amqp_value, "value", &value_off) < 0)
        return NULL;
    if (setup_init_fields() < 0)
        return NULL;
    message_ready = 1;
    Py_RETURN_NONE;
}

/* ---- data sections: the bytes-in, bytes-out fast path of Sender and Deliveries ---------- */

/* A bare message of one data section holding `size` bytes: its 5- or 8-byte head. */
static Py_ssize_t
data_section_head(unsigned char *d, Py_ssize_t size)
{
    d[0] = 0x00; d[1] = 0x53; d[2] = 0x75;
    if (size < 256) {
        d[3] = 0xa0; d[4] = (unsigned char)size;
        return 5;
    }
    d[3] = 0xb0;
    d[4] = (unsigned char)(size >> 24); d[5] = (unsigned char)(size >> 16);
    d[6] = (unsigned char)(size >> 8); d[7] = (unsigned char)size;
    return 8;
}

/* One data section holding a bytes body, as a new bytes object. */
static PyObject *
data_section(PyObject *body)
{
    Py_ssize_t size = PyBytes_GET_SIZE(body);
    PyObject *payload = PyBytes_FromStringAndSize(NULL, (size < 256 ? 5 : 8) + size);
    if (payload == NULL)
        return NULL;
    unsigned char *d = (unsigned char *)PyBytes_AS_STRING(payload);
    Py_ssize_t head = data_section_head(d, size);
    memcpy(d + head, PyBytes_AS_STRING(body), (size_t)size);
    return payload;
}

/* encode_payloads(items, limit): what Sender.send_many sends for each item: a bytes body
   as one data section, a Message (exactly that class) encoded. None if any item is
   something else, cannot be encoded here, or encodes larger than `limit`: the Python
   path then encodes them one by one and raises for the bad one. */
static PyObject *
py_encode_payloads(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "encode_payloads(items: list, limit: int)");
        return NULL;
    }
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    PyObject *items = args[0];
    Py_ssize_t n = PyList_GET_SIZE(items);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        PyObject *payload;
        if (PyBytes_CheckExact(item) && PyBytes_GET_SIZE(item) <= 0xFFFFFFFFLL)
            payload = data_section(item);
        else if (message_ready && Py_TYPE(item) == T_message)
            payload = py_encode_message(module, item);
        else
            payload = Py_NewRef(Py_None);
        if (payload == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        if (payload == Py_None || PyBytes_GET_SIZE(payload) > limit) {
            Py_DECREF(payload);
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        PyList_SET_ITEM(out, i, payload);
    }
    return out;
}

/* decode_messages(payloads): Message.decode of each payload (a list of bytes), or None if
   any is not handled here (malformed ones included): the caller then decodes them one by
   one, which raises the DecodeError naming the offset. */
static PyObject *
py_decode_messages(PyObject *module, PyObject *payloads)
{
    if (!PyList_CheckExact(payloads)) {
        PyErr_SetString(PyExc_TypeError, "decode_messages(payloads: list)");
        return NULL;
    }
    if (!message_ready)
        Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(payloads);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *payload = PyList_GET_ITEM(payloads, i);
        PyObject *message = NULL;
        if (PyBytes_CheckExact(payload)) {
            Src src;
            src.d = (const unsigned char *)PyBytes_AS_STRING(payload);
            src.n = PyBytes_GET_SIZE(payload);
            message = dec_message(&src);
        }
        if (message == NULL) {
            int fatal = swallow() < 0;
            Py_DECREF(out);
            if (fatal)
                return NULL;
            Py_RETURN_NONE;
        }
        /* Out of the collector's sight until the list is whole: the collections these
           allocations set off then skip the new messages (a thousand of them, nothing
           else refers to them yet). */
        PyObject_GC_UnTrack(message);
        PyList_SET_ITEM(out, i, message);
    }
    for (Py_ssize_t i = 0; i < n; i++)
        PyObject_GC_Track(PyList_GET_ITEM(out, i));
    return out;
}

/* The body of a bare message that is exactly one data section, or NULL (no error set). */
static PyObject *
data_section_body(PyObject *payload)
{
    if (!PyBytes_CheckExact(payload))
        return NULL;
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(payload);
    Py_ssize_t n = PyBytes_GET_SIZE(payload);
    if (n < 5 || d[0] != 0x00 || d[1] != 0x53 || d[2] != 0x75)
        return NULL;
    if (d[3] == 0xa0 && n == 5 + (Py_ssize_t)d[4])
        return PyBytes_FromStringAndSize((const char *)d + 5, n - 5);
    if (d[3] == 0xb0 && n >= 8) {
        Py_ssize_t size = ((Py_ssize_t)d[4] << 24) | ((Py_ssize_t)d[5] << 16)
                          | ((Py_ssize_t)d[6] << 8) | (Py_ssize_t)d[7];
        if (n == 8 + size)
            return PyBytes_FromStringAndSize((const char *)d + 8, size);
    }
    return NULL;
}

/* data_bodies(payloads): each payload's body where it is exactly one data section, None
   in its place where it is anything else (the caller decodes those). */
static PyObject *
py_data_bodies(PyObject *self, PyObject *payloads)
{
    if (!PyList_CheckExact(payloads)) {
        PyErr_SetString(PyExc_TypeError, "data_bodies(payloads: list)");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(payloads);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *body = data_section_body(PyList_GET_ITEM(payloads, i));
        if (body == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(out);
                return NULL;
            }
            body = Py_NewRef(Py_None);
        }
        PyList_SET_ITEM(out, i, body);
    }
    return out;
}

/* data_body(payload): the body where the payload is exactly one data section, else None
   (one Delivery's body: a list of one would cost more than the call). */
static PyObject *
py_data_body(PyObject *self, PyObject *payload)
{
    PyObject *body = data_section_body(payload);
    if (body == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return body;
}

/* MessageBase: the base class of Message, whose __init__ it is. Message(body, **fields) sets
   every slot in one call when every name is a plain slot; anything else (an unknown name, a
   time in seconds to convert, body given twice, setup not done) goes to the Python reference,
   Message._init_python, which converts or raises. */
static PyObject *S_init_python;

static int
init_python(PyObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *method = PyObject_GetAttr(self, S_init_python);
    if (method == NULL)
        return -1;
    PyObject *r = PyObject_Call(method, args, kwds);
    Py_DECREF(method);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int
message_base_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (!message_ready || !PyObject_TypeCheck(self, T_message) || nargs > 1)
        return init_python(self, args, kwds);
    PyObject *values[N_FIELDS] = {NULL};
    values[F_DURABLE] = Py_False;
    values[F_PRIORITY] = O_four;
    values[F_FIRST_ACQUIRER] = Py_False;
    values[F_DELIVERY_COUNT] = O_zero;
    if (nargs == 1)
        values[F_BODY] = PyTuple_GET_ITEM(args, 0);
    if (kwds != NULL) {
        Py_ssize_t pos = 0;
        PyObject *name, *value;
        while (PyDict_Next(kwds, &pos, &name, &value)) {
            PyObject *index = PyDict_GetItemWithError(init_fields, name);
            if (index == NULL) {
                if (PyErr_Occurred())
                    return -1;
                return init_python(self, args, kwds);
            }
            long f = PyLong_AS_LONG(index);
            if (f == F_BODY && nargs == 1)  /* body twice: Python raises */
                return init_python(self, args, kwds);
            values[f] = value;
        }
    }
    for (int f = 0; f < N_FIELDS; f++)  /* every new value held before any old one goes */
        values[f] = Py_NewRef(values[f] != NULL ? values[f] : Py_None);
    for (int f = 0; f < N_FIELDS; f++) {
        PyObject *old = FIELD(self, f);
        FIELD(self, f) = values[f];
        Py_XDECREF(old);
    }
    return 0;
}

static PyTypeObject MessageBase_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "amqscale._ccodec.MessageBase",
    .tp_basicsize = sizeof(PyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Message's base: its __init__ in C, with Message._init_python as the reference.",
    .tp_init = message_base_init,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef ccodec_methods[] = {
    {"setup", py_setup, METH_O, "Hand over the codec's classes (once, at import)."},
    {"setup_message", py_setup_message, METH_O, "Hand over Message and the body forms."},
    {"encode", py_encode, METH_O, "The encoding of a value as bytes, or None: not handled."},
    {"decode", py_decode, METH_O,
     "The one value in a buffer, or NOT_HANDLED (unknown type, trailing bytes, malformed)."},
    {"decode_from", (PyCFunction)(void (*)(void))py_decode_from, METH_FASTCALL,
     "(value, end) of the value at offset, or None: not handled."},
    {"encode_message", py_encode_message, METH_O,
     "Message.encode() for a Message, or None: not handled."},
    {"decode_message", (PyCFunction)(void (*)(void))py_decode_message, METH_FASTCALL,
     "Message.decode(data) for cls Message, or None: not handled."},
    {"encode_payloads", (PyCFunction)(void (*)(void))py_encode_payloads, METH_FASTCALL,
     "(items, limit): each bytes body or Message encoded, or None: not handled."},
    {"decode_messages", py_decode_messages, METH_O,
     "Message.decode of each payload, or None: not handled."},
    {"data_body", py_data_body, METH_O,
     "data_body(payload) -> bytes | None: the body if the payload is one data section."},
    {"data_bodies", py_data_bodies, METH_O,
     "Each payload's body if it is exactly one data section, else None in its place."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ccodec_module = {
    PyModuleDef_HEAD_INIT, "_ccodec",
    "The C fast path of amqscale's codec: the Python code is the reference and the fallback.",
    -1, ccodec_methods,
};

PyMODINIT_FUNC
PyInit__ccodec(void)
{
    PyObject *m = PyModule_Create(&ccodec_module);
    if (m == NULL)
        return NULL;
    NOT_HANDLED = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    EMPTY_TUPLE = PyTuple_New(0);
    S_descriptor = PyUnicode_InternFromString("descriptor");
    S_value = PyUnicode_InternFromString("value");
    S_type = PyUnicode_InternFromString("type");
    S_elements = PyUnicode_InternFromString("elements");
    S_init_python = PyUnicode_InternFromString("_init_python");
    if (S_init_python == NULL || PyType_Ready(&MessageBase_Type) < 0 ||
        PyModule_AddObjectRef(m, "MessageBase", (PyObject *)&MessageBase_Type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (NOT_HANDLED == NULL || EMPTY_TUPLE == NULL || S_descriptor == NULL || S_value == NULL ||
        S_type == NULL || S_elements == NULL ||
        PyModule_AddObjectRef(m, "NOT_HANDLED", NOT_HANDLED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
