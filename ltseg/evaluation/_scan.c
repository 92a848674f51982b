/* Scanner for LVIS results files in the usual layout, straight into flat arrays.
 *
 * Accepts exactly a JSON list of objects whose members are "image_id" and "category_id"
 * (integers), "score" (a number), "bbox" (4 numbers) and "segmentation" ({"size": [h, w],
 * "counts": "<compressed RLE>"}), in any order, each at most once. "segmentation" is required
 * when masks are read and skipped (still checked) otherwise. Anything else (another member, a
 * missing one, a JSON escape other than \\ and \/, a non-ASCII byte, NaN, an integer written as
 * 1.0 or too large for int64, invalid JSON) returns None, and the caller parses that piece with
 * its general parsers, which accept or word the problem. Numbers are converted as Python does
 * (correctly rounded, like float()).
 *
 * scan(text, segm, out, out_at) -> None | (n, ids, score, bbox, hw, cstart, cend)
 *   text: the JSON list (a bytes-like object). out: a writable buffer that receives the counts
 *   strings from out_at on (None when segm is false); a file whose counts do not fit gives None. Returns bytearrays of
 *   int64 ids (n, 2) [image_id, category_id], float64 score (n,), float64 bbox (n, 4), int64 hw
 *   (n, 2), and int64 cstart / cend (n,) offsets of each counts string in out.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const unsigned char *p, *end;
} Cursor;

typedef struct {            /* where the counts strings go: buf[at:len) is free (buf NULL: nowhere) */
    unsigned char *buf;
    Py_ssize_t at, len;
} Out;

typedef struct {            /* growable columns */
    int64_t *ids, *hw, *cstart, *cend;
    double *score, *bbox;
    Py_ssize_t n, cap;
} Columns;

static void ws(Cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t')) c->p++;
}

static int eat(Cursor *c, unsigned char ch)
{
    ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* The span of a JSON number token at c->p (its grammar checked); 0 if there is none. */
static int number_token(Cursor *c, const unsigned char **a, Py_ssize_t *len, int *integer)
{
    ws(c);
    const unsigned char *s = c->p, *p = s, *e = c->end;
    if (p < e && *p == '-') p++;
    if (p >= e || *p < '0' || *p > '9') return 0;
    if (*p == '0') p++;
    else while (p < e && *p >= '0' && *p <= '9') p++;
    *integer = 1;
    if (p < e && *p == '.') {
        p++;
        if (p >= e || *p < '0' || *p > '9') return 0;
        while (p < e && *p >= '0' && *p <= '9') p++;
        *integer = 0;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (p >= e || *p < '0' || *p > '9') return 0;
        while (p < e && *p >= '0' && *p <= '9') p++;
        *integer = 0;
    }
    *a = s;
    *len = p - s;
    c->p = p;
    return 1;
}

/* The token as a double, rounded like Python's float(). Clinger's fast path when the digits
 * fit in 53 bits and the power of ten is exact (one correctly rounded IEEE operation), else
 * strtod. */
static int read_double(Cursor *c, double *out)
{
    static const double pow10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                                   1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    const unsigned char *a;
    Py_ssize_t len;
    int integer;
    char tmp[64];
    if (!number_token(c, &a, &len, &integer) || len >= (Py_ssize_t)sizeof(tmp)) return 0;
    const unsigned char *p = a, *e = a + len;
    int neg = *p == '-', digits = 0, exp10 = 0, frac = 0;
    uint64_t w = 0;
    p += neg;
    for (; p < e && *p != 'e' && *p != 'E'; p++) {
        if (*p == '.') { frac = 1; continue; }
        if (w || *p != '0') {
            if (++digits > 19) break;
            w = 10 * w + (uint64_t)(*p - '0');
        }
        exp10 -= frac;
    }
    if (digits <= 19 && p < e) {                  /* exponent; large ones go to strtod */
        int eneg = 0, ev = 0;
        p++;
        if (*p == '+' || *p == '-') eneg = *p++ == '-';
        for (; p < e && ev < 1000; p++) ev = 10 * ev + (*p - '0');
        exp10 += eneg ? -ev : ev;
    }
    if (digits <= 19 && w <= (1ULL << 53) && exp10 >= -22 && exp10 <= 22) {
        double v = (double)w;
        v = exp10 < 0 ? v / pow10[-exp10] : v * pow10[exp10];
        *out = neg ? -v : v;
        return 1;
    }
    memcpy(tmp, a, (size_t)len);
    tmp[len] = 0;
    *out = strtod(tmp, NULL);
    return 1;
}

static int read_int(Cursor *c, int64_t *out)
{
    const unsigned char *a;
    Py_ssize_t len;
    int integer;
    if (!number_token(c, &a, &len, &integer) || !integer || len > 18) return 0;   /* fits in int64 */
    int neg = *a == '-';
    int64_t v = 0;
    for (Py_ssize_t j = neg; j < len; j++) v = 10 * v + (a[j] - '0');
    *out = neg ? -v : v;
    return 1;
}

/* A string's raw span (after the opening quote): ASCII, no control bytes, escapes only \\ \/. */
static int string_span(Cursor *c, const unsigned char **a, const unsigned char **b, int *escaped)
{
    if (!eat(c, '"')) return 0;
    const unsigned char *p = c->p, *e = c->end;
    *escaped = 0;
    while (p < e && *p != '"') {
        if (*p < 0x20 || *p >= 0x80) return 0;
        if (*p == '\\') {
            if (p + 1 >= e || (p[1] != '\\' && p[1] != '/')) return 0;
            *escaped = 1;
            p++;
        }
        p++;
    }
    if (p >= e) return 0;
    *a = c->p;
    *b = p;
    c->p = p + 1;
    return 1;
}

/* A member key: returns the index of the known name, or -1. */
static int key(Cursor *c, const char *const *names, int count)
{
    const unsigned char *a, *b;
    int escaped;
    if (!string_span(c, &a, &b, &escaped) || escaped || !eat(c, ':')) return -1;
    for (int j = 0; j < count; j++)
        if ((size_t)(b - a) == strlen(names[j]) && memcmp(a, names[j], (size_t)(b - a)) == 0) return j;
    return -1;
}

static int grow(Columns *t)
{
    if (t->n < t->cap) return 1;
    Py_ssize_t cap = t->cap ? 2 * t->cap : 4096;
    int64_t *ids = realloc(t->ids, sizeof(int64_t) * 2 * cap), *hw, *cs, *ce;
    if (ids) t->ids = ids;
    hw = realloc(t->hw, sizeof(int64_t) * 2 * cap);
    if (hw) t->hw = hw;
    cs = realloc(t->cstart, sizeof(int64_t) * cap);
    if (cs) t->cstart = cs;
    ce = realloc(t->cend, sizeof(int64_t) * cap);
    if (ce) t->cend = ce;
    double *sc = realloc(t->score, sizeof(double) * cap), *bb;
    if (sc) t->score = sc;
    bb = realloc(t->bbox, sizeof(double) * 4 * cap);
    if (bb) t->bbox = bb;
    if (!ids || !hw || !cs || !ce || !sc || !bb) return 0;
    t->cap = cap;
    return 1;
}

/* {"size": [h, w], "counts": "..."}: copies the counts (unescaped) to the free part of out. */
static int segmentation(Cursor *c, Columns *t, Out *out)
{
    static const char *const names[] = {"size", "counts"};
    int seen[2] = {0, 0};
    Py_ssize_t i = t->n;
    if (!eat(c, '{')) return 0;
    do {
        int k = key(c, names, 2);
        if (k < 0 || seen[k]) return 0;
        seen[k] = 1;
        if (k == 0) {
            if (!eat(c, '[') || !read_int(c, &t->hw[2 * i]) || !eat(c, ',') || !read_int(c, &t->hw[2 * i + 1])
                || !eat(c, ']'))
                return 0;
        } else {
            const unsigned char *a, *b;
            int escaped;
            if (!string_span(c, &a, &b, &escaped)) return 0;
            t->cstart[i] = out->at;
            if (out->buf) {
                if (out->len - out->at < b - a) return 0;
                if (!escaped) {
                    memcpy(out->buf + out->at, a, (size_t)(b - a));
                    out->at += b - a;
                } else {
                    for (const unsigned char *p = a; p < b; p++) {
                        if (*p == '\\') p++;
                        out->buf[out->at++] = *p;
                    }
                }
            }
            t->cend[i] = out->at;
        }
    } while (eat(c, ','));
    return eat(c, '}') && seen[0] && seen[1];
}

static int object(Cursor *c, Columns *t, int segm, Out *out)
{
    static const char *const names[] = {"image_id", "category_id", "score", "bbox", "segmentation"};
    int seen[5] = {0, 0, 0, 0, 0};
    Py_ssize_t i = t->n;
    if (!grow(t) || !eat(c, '{')) return 0;
    do {
        int k = key(c, names, 5), ok;
        if (k < 0 || seen[k]) return 0;
        seen[k] = 1;
        switch (k) {
        case 0: ok = read_int(c, &t->ids[2 * i]); break;
        case 1: ok = read_int(c, &t->ids[2 * i + 1]); break;
        case 2: ok = read_double(c, &t->score[i]); break;
        case 3:
            ok = eat(c, '[');
            for (int j = 0; j < 4 && ok; j++) ok = (j == 0 || eat(c, ',')) && read_double(c, &t->bbox[4 * i + j]);
            ok = ok && eat(c, ']');
            break;
        default: {
            Out none = {NULL, 0, 0};
            ok = segmentation(c, t, segm ? out : &none);
            break;
        }
        }
        if (!ok) return 0;
    } while (eat(c, ','));
    if (!eat(c, '}') || !seen[0] || !seen[1] || !seen[2] || !seen[3] || (segm && !seen[4])) return 0;
    if (!segm) t->hw[2 * i] = t->hw[2 * i + 1] = t->cstart[i] = t->cend[i] = 0;
    t->n++;
    return 1;
}

static PyObject *column(const void *data, Py_ssize_t bytes)
{
    return PyByteArray_FromStringAndSize(bytes ? (const char *)data : "", bytes);
}

static PyObject *scan(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *text_obj, *out_obj;
    int segm;
    Py_ssize_t at;
    if (!PyArg_ParseTuple(args, "OpOn", &text_obj, &segm, &out_obj, &at)) return NULL;
    Py_buffer text, out_view = {0};
    Out out = {NULL, at, 0};
    int have_out = 0;
    if (PyObject_GetBuffer(text_obj, &text, PyBUF_SIMPLE) < 0) return NULL;
    if (segm) {
        if (PyObject_GetBuffer(out_obj, &out_view, PyBUF_WRITABLE) < 0) {
            PyBuffer_Release(&text);
            return NULL;
        }
        have_out = 1;
        out.buf = out_view.buf;
        out.len = out_view.len;
        if (at < 0 || at > out.len) {
            PyErr_SetString(PyExc_ValueError, "scan: out_at outside out");
            PyBuffer_Release(&text);
            PyBuffer_Release(&out_view);
            return NULL;
        }
    }
    Columns t;
    memset(&t, 0, sizeof(t));
    Cursor c = {(const unsigned char *)text.buf, (const unsigned char *)text.buf + text.len};
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = eat(&c, '[');
    if (ok && !eat(&c, ']')) {
        do ok = object(&c, &t, segm, &out);
        while (ok && eat(&c, ','));
        ok = ok && eat(&c, ']');
    }
    if (ok) {
        ws(&c);
        ok = c.p == c.end;
    }
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (!ok) {
        result = Py_None;
        Py_INCREF(result);
    } else {
        Py_ssize_t n = t.n;
        result = Py_BuildValue("(nNNNNNN)", n, column(t.ids, 16 * n), column(t.score, 8 * n),
                               column(t.bbox, 32 * n), column(t.hw, 16 * n), column(t.cstart, 8 * n),
                               column(t.cend, 8 * n));
    }
    free(t.ids);
    free(t.hw);
    free(t.cstart);
    free(t.cend);
    free(t.score);
    free(t.bbox);
    PyBuffer_Release(&text);
    if (have_out) PyBuffer_Release(&out_view);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "scan(text, segm, out, out_at): LVIS results in the usual layout as flat "
                                  "arrays, or None (see the module source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scan", "Scanner for LVIS results files in the usual layout.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__scan(void)
{
    return PyModule_Create(&module);
}
