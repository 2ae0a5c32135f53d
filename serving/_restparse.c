/* _restparse: a JSON array of numbers (REST predict's tensor) -> a dense typed buffer and its shape, in one pass;
and floats -> TF Serving's JSON text (format_floats, below; orjson writes shortest digits, not TF's %g / %.9g).

Hand-written because no kept library decodes nested JSON number lists straight into a dense typed buffer with a
shape check: orjson and msgspec build 921,600 Python ints (120-140 ms for a 640x480 image), pysimdjson flattens
ragged lists silently (13 ms), pyarrow.json takes 70 ms on one thread; this pass takes a few ms.

    parse(run, kind, itemsize, max_rank, max_bytes) -> (bytearray, shape tuple) | None

``run`` is the JSON text of one array (bytes-like); ``kind``/``itemsize`` the numpy kind ("u", "i", "f") and
size of the wanted dtype.  Accepted: strict JSON number grammar, one array whose lists are dense (every list at a
level the same length, numbers only at the deepest level, no empty list), depth <= max_rank, at most max_bytes of
output, every integer within the dtype's range, for floats an integer within the float's exact range (2**24-1,
2**53-1) and a finite value.  Anything else returns None, and the caller parses the body the ordinary way (which
gives TF Serving's message).  The GIL is released while parsing.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "values are written as their low bytes: little-endian only (the numpy path serves other machines)"
#endif

#define RANK_CAP 64
#define TOKEN_CAP 128

typedef struct {
    char kind;      /* 'u', 'i' or 'f' */
    int size;       /* bytes per value */
    uint64_t max_pos; /* largest integer accepted */
    uint64_t max_neg; /* largest magnitude of a negative integer accepted */
} target_t;

static locale_t c_locale;

static const double POW10[23] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14,
                                 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static inline int is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* One integer at *pp (strict JSON grammar) as the target's type: 0, or -1 to refuse (a decimal, out of range). */
static inline int integer(const unsigned char **pp, const unsigned char *end, const target_t *t, unsigned char *out) {
    const unsigned char *p = *pp;
    int neg = 0;
    uint64_t mag;
    if (*p == '-') {
        neg = 1;
        if (++p >= end) return -1;
    }
    unsigned d = (unsigned)*p - '0';
    if (d > 9) return -1;
    mag = d;
    p++;
    if (d == 0) {
        if (p < end && is_digit(*p)) return -1; /* a leading zero */
    } else {
        int digits = 1;
        while (p < end && (d = (unsigned)*p - '0') <= 9) {
            if (++digits > 19) return -1; /* past what a uint64 surely holds: the ordinary path decides */
            mag = mag * 10 + d;
            p++;
        }
    }
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E')) return -1; /* a decimal for an integer type */
    if (neg ? (mag > t->max_neg || mag == 0) : mag > t->max_pos) return -1;
    *pp = p;
    uint64_t bits = neg ? (uint64_t)0 - mag : mag; /* two's complement; the low bytes are the value */
    switch (t->size) {
        case 1: *out = (unsigned char)bits; break;
        case 2: { uint16_t v = (uint16_t)bits; memcpy(out, &v, 2); break; }
        case 4: { uint32_t v = (uint32_t)bits; memcpy(out, &v, 4); break; }
        default: memcpy(out, &bits, 8);
    }
    return 0;
}

/* One number at *pp (strict JSON grammar) as the target's float type: 0, or -1 to refuse. */
static int number(const unsigned char **pp, const unsigned char *end, const target_t *t, unsigned char *out) {
    const unsigned char *p = *pp, *start = p;
    int neg = 0, overflow = 0, sig = 0, decimal = 0;
    uint64_t mag = 0;
    long frac = 0, exp10 = 0;
    if (p < end && *p == '-') { neg = 1; p++; }
    if (p >= end || !is_digit(*p)) return -1;
    if (*p == '0') {
        p++;
        if (p < end && is_digit(*p)) return -1; /* a leading zero */
    } else {
        while (p < end && is_digit(*p)) {
            unsigned d = *p++ - '0';
            if (sig < 19) { mag = mag * 10 + d; sig++; } else overflow = 1;
            if (overflow) frac--; /* digits past 19 scale the mantissa */
        }
    }
    if (p < end && *p == '.') {
        decimal = 1; p++;
        if (p >= end || !is_digit(*p)) return -1;
        while (p < end && is_digit(*p)) {
            unsigned d = *p++ - '0';
            if (sig < 19 && (sig > 0 || d != 0)) { mag = mag * 10 + d; sig++; frac++; }
            else if (sig == 0) frac++; /* leading zeros of a fraction */
            else overflow = 1;
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        int eneg = 0;
        decimal = 1; p++;
        if (p < end && (*p == '+' || *p == '-')) { eneg = *p == '-'; p++; }
        if (p >= end || !is_digit(*p)) return -1;
        while (p < end && is_digit(*p)) {
            if (exp10 < 100000) exp10 = exp10 * 10 + (*p - '0');
            p++;
        }
        if (eneg) exp10 = -exp10;
    }
    *pp = p;
    double value;
    if (!decimal) {
        if (mag > t->max_pos) return -1; /* past the float's exact integers: the ordinary path names it */
        value = (double)mag;
        if (neg && mag) value = -value; /* "-0" is the integer 0 */
    } else {
        long e = exp10 - frac;
        if (!overflow && mag < (1ULL << 53) && e >= -22 && e <= 22) {
            value = e < 0 ? (double)mag / POW10[-e] : (double)mag * POW10[e]; /* exact operands: one rounding */
        } else {
            char token[TOKEN_CAP];
            size_t len = (size_t)(p - start);
            if (len >= TOKEN_CAP) return -1;
            memcpy(token, start, len);
            token[len] = 0;
            value = strtod_l(token, NULL, c_locale);
            neg = 0; /* the sign is in the token */
        }
        if (neg) value = -value;
    }
    if (!isfinite(value)) return -1;
    if (t->size == 4) {
        if (fabs(value) > FLT_MAX) return -1;
        float f = (float)value;
        memcpy(out, &f, 4);
    } else {
        memcpy(out, &value, 8);
    }
    return 0;
}

/* The whole run: 0 and the shape on success, -1 to refuse.  No Python calls: runs without the GIL. */
static int parse_run(const unsigned char *p, const unsigned char *end, const target_t *t, int max_rank,
                     unsigned char *out, Py_ssize_t capacity, Py_ssize_t *written, Py_ssize_t *shape, int *rank_out) {
    Py_ssize_t counts[RANK_CAP], n = 0;
    int known[RANK_CAP];
    int depth = 0, rank = -1, is_float = t->kind == 'f';
    memset(known, 0, sizeof known);
    while (p < end && is_space(*p)) p++;
    if (p >= end || *p != '[') return -1;
    for (;;) {
        /* a value */
        while (p < end && is_space(*p)) p++;
        if (p >= end) return -1;
        if (*p == '[') {
            if (depth >= max_rank || (rank >= 0 && depth >= rank)) return -1;
            counts[depth++] = 0;
            p++;
            continue;
        }
        if (depth != rank) {
            if (rank >= 0 || depth == 0) return -1;
            rank = depth;
        }
        if (n >= capacity) return -1;
        if ((is_float ? number(&p, end, t, out + n * t->size) : integer(&p, end, t, out + n * t->size)) < 0)
            return -1;
        n++;
        counts[depth - 1]++;
        /* the common case: more numbers of this innermost list ("1,2" or "1, 2"); a '[' here fails as a number */
        while (p < end && *p == ',') {
            p++;
            while (p < end && is_space(*p)) p++;
            if (p >= end || n >= capacity) return -1;
            if ((is_float ? number(&p, end, t, out + n * t->size) : integer(&p, end, t, out + n * t->size)) < 0)
                return -1;
            n++;
            counts[depth - 1]++;
        }
        /* after a value: ',' for the next one, or ']' closing lists */
        for (;;) {
            while (p < end && is_space(*p)) p++;
            if (p >= end) return -1;
            if (*p == ',') { p++; break; }
            if (*p != ']') return -1;
            p++;
            int level = depth - 1;
            if (known[level] ? counts[level] != shape[level] : 0) return -1;
            shape[level] = counts[level];
            known[level] = 1;
            if (--depth == 0) {
                while (p < end && is_space(*p)) p++;
                if (p != end) return -1;
                *written = n;
                *rank_out = rank;
                return 0;
            }
            counts[depth - 1]++;
        }
    }
}

static PyObject *parse(PyObject *self, PyObject *args) {
    Py_buffer run;
    int kind, itemsize, max_rank;
    Py_ssize_t max_bytes;
    if (!PyArg_ParseTuple(args, "y*Ciin", &run, &kind, &itemsize, &max_rank, &max_bytes)) return NULL;
    target_t t = {(char)kind, itemsize, 0, 0};
    int ok = 1;
    if (kind == 'u' && (itemsize == 1 || itemsize == 2 || itemsize == 4 || itemsize == 8)) {
        t.max_pos = itemsize == 8 ? UINT64_MAX : (1ULL << (8 * itemsize)) - 1;
    } else if (kind == 'i' && (itemsize == 1 || itemsize == 2 || itemsize == 4 || itemsize == 8)) {
        t.max_pos = (1ULL << (8 * itemsize - 1)) - 1;
        t.max_neg = 1ULL << (8 * itemsize - 1);
    } else if (kind == 'f' && (itemsize == 4 || itemsize == 8)) {
        t.max_pos = itemsize == 4 ? (1ULL << 24) - 1 : (1ULL << 53) - 1;
    } else {
        ok = 0;
    }
    if (!ok || max_rank < 1 || max_rank > RANK_CAP || max_bytes < 0) {
        PyBuffer_Release(&run);
        PyErr_SetString(PyExc_ValueError, "unsupported kind, itemsize or bound");
        return NULL;
    }
    /* every number takes at least one byte and a separator, so (len + 1) / 2 values at most */
    Py_ssize_t capacity = (run.len + 1) / 2;
    if (capacity > max_bytes / itemsize) capacity = max_bytes / itemsize;
    PyObject *buffer = PyByteArray_FromStringAndSize(NULL, capacity * itemsize);
    if (buffer == NULL) {
        PyBuffer_Release(&run);
        return NULL;
    }
    Py_ssize_t shape[RANK_CAP], written = 0;
    int rank = 0, status;
    unsigned char *out = (unsigned char *)PyByteArray_AS_STRING(buffer);
    const unsigned char *text = (const unsigned char *)run.buf;
    Py_BEGIN_ALLOW_THREADS
    status = parse_run(text, text + run.len, &t, max_rank, out, capacity, &written, shape, &rank);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&run);
    if (status < 0) {
        Py_DECREF(buffer);
        Py_RETURN_NONE;
    }
    if (PyByteArray_Resize(buffer, written * itemsize) < 0) {
        Py_DECREF(buffer);
        return NULL;
    }
    PyObject *dims = PyTuple_New(rank);
    if (dims == NULL) {
        Py_DECREF(buffer);
        return NULL;
    }
    for (int i = 0; i < rank; i++) PyTuple_SET_ITEM(dims, i, PyLong_FromSsize_t(shape[i]));
    return Py_BuildValue("(NN)", buffer, dims);
}

/* format_floats(values, itemsize) -> list of str: float32/float64 values (native order) as TF Serving writes them:
   "%g" when it reads back to the same value, else "%.9g" (float32) / "%.17g" (float64); ".0" added when there is
   neither a point nor an exponent; NaN, Infinity, -Infinity.  The same text as rest_json's numpy version. */
static PyObject *format_floats(PyObject *self, PyObject *args) {
    Py_buffer values;
    int itemsize;
    if (!PyArg_ParseTuple(args, "y*i", &values, &itemsize)) return NULL;
    if ((itemsize != 4 && itemsize != 8) || values.len % itemsize) {
        PyBuffer_Release(&values);
        PyErr_SetString(PyExc_ValueError, "itemsize must be 4 or 8 and divide the buffer");
        return NULL;
    }
    Py_ssize_t count = values.len / itemsize;
    PyObject *list = PyList_New(count);
    if (list == NULL) {
        PyBuffer_Release(&values);
        return NULL;
    }
    locale_t previous = uselocale(c_locale);
    const unsigned char *data = (const unsigned char *)values.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        char text[40];
        double wide;
        int same;
        if (itemsize == 4) {
            float f;
            memcpy(&f, data + i * 4, 4);
            wide = (double)f;
        } else {
            memcpy(&wide, data + i * 8, 8);
        }
        if (isnan(wide)) {
            strcpy(text, "NaN");
        } else if (isinf(wide)) {
            strcpy(text, wide < 0 ? "-Infinity" : "Infinity");
        } else {
            snprintf(text, sizeof text, "%g", wide);
            double back = strtod(text, NULL);
            same = itemsize == 4 ? (float)back == (float)wide : back == wide;
            if (!same) snprintf(text, sizeof text, itemsize == 4 ? "%.9g" : "%.17g", wide);
            if (!strpbrk(text, ".e")) strcat(text, ".0");
        }
        PyObject *item = PyUnicode_FromString(text);
        if (item == NULL) {
            uselocale(previous);
            PyBuffer_Release(&values);
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    uselocale(previous);
    PyBuffer_Release(&values);
    return list;
}

static PyMethodDef methods[] = {
    {"format_floats", format_floats, METH_VARARGS,
     "format_floats(values, itemsize) -> list of str: float32/float64 values as TF Serving writes them."},
    {"parse", parse, METH_VARARGS,
     "parse(run, kind, itemsize, max_rank, max_bytes) -> (bytearray, shape) or None: a dense JSON number array."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_restparse",
                                    "REST predict's tensor: a JSON number array parsed in one pass (see parse).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__restparse(void) {
    c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (c_locale == (locale_t)0) return PyErr_NoMemory();
    return PyModule_Create(&module);
}
