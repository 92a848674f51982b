/* Mask areas and mask IoU straight from COCO compressed-RLE strings, in one pass.
 *
 * The evaluator's segm hot path. pycocotools needs a Python dict per mask and decodes each
 * string again in every call (area, then IoU per (image, category) group); here every
 * detection string is decoded once, from the shared counts buffer, and met with the already
 * decoded GT masks of its group. The arithmetic is pycocotools' (maskApi.c), so the numbers
 * are identical: the string decoding of rleFrString, the area of rleArea, and rleIou with
 * iscrowd = 0. rleIou's bounding-box pre-check only matters for masks of different sizes
 * (0 or -1), so boxes are computed for those pairs alone (see iou()).
 *
 * One function, measure(); see its docstring. It releases the GIL while it runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {            /* one decoded mask */
    uint32_t *cnts;         /* run lengths, alternately 0s and 1s (column-major) */
    int64_t m, h, w;
    uint32_t area;          /* rleArea: the sum of the 1-runs */
} Rle;

/* rleFrString: decode s[0:len) into cnts (room for len counts) and sum the runs. Strings hold
 * only '0'..'o' (48..111); anything else, or a string ending mid-number, is malformed: -1. */
static int64_t decode(const unsigned char *s, int64_t len, uint32_t *cnts, uint64_t *total, uint32_t *area)
{
    int64_t m = 0, p = 0;
    uint64_t sum = 0;
    uint32_t ones = 0;
    while (p < len) {
        uint32_t c = (uint32_t)s[p++] - 48;
        if (c > 63) return -1;
        long x = c & 0x1f;
        int k = 1;
        while (c & 0x20) {
            if (p >= len) return -1;
            c = (uint32_t)s[p++] - 48;
            if (c > 63) return -1;
            x |= (long)(c & 0x1f) << 5 * k++;
        }
        if (c & 0x10) x |= (long)(~0UL << 5 * k);
        if (m > 2) x += (long)cnts[m - 2];
        cnts[m] = (uint32_t)x;
        sum += cnts[m];
        if (m & 1) ones += cnts[m];
        m++;
    }
    *total = sum;
    *area = ones;
    return m;
}

/* rleToBbox of one mask: x, y, w, h. */
static void to_bbox(const Rle *r, double *bb)
{
    uint32_t h = (uint32_t)r->h, xs = (uint32_t)r->w, ys = h, xe = 0, ye = 0, cc = 0, xp = 0;
    int64_t m = (r->m / 2) * 2;
    if (m == 0) {
        bb[0] = bb[1] = bb[2] = bb[3] = 0;
        return;
    }
    for (int64_t j = 0; j < m; j++) {
        cc += r->cnts[j];
        uint32_t t = cc - (uint32_t)(j % 2), y = t % h, x = (t - y) / h;
        if (j % 2 == 0) xp = x;
        else if (xp < x) { ys = 0; ye = h - 1; }
        if (x < xs) xs = x;
        if (x > xe) xe = x;
        if (y < ys) ys = y;
        if (y > ye) ye = y;
    }
    bb[0] = xs; bb[2] = xe - xs + 1;
    bb[1] = ys; bb[3] = ye - ys + 1;
}

/* Decode a mask and check that its runs cover exactly h * w pixels (pycocotools would loop
 * forever on some masks that do not). 0 on success. */
static int load(Rle *r, const unsigned char *s, int64_t len, int64_t h, int64_t w)
{
    uint64_t total;
    r->h = h;
    r->w = w;
    r->m = decode(s, len, r->cnts, &total, &r->area);
    if (r->m < 0 || h < 0 || w < 0 || total != (uint64_t)h * (uint64_t)w) return -1;
    return 0;
}

/* Pixels in both masks (same size): a walk over the two lists of 1-runs. */
static uint32_t intersection(const Rle *d, const Rle *g)
{
    const uint32_t *A = d->cnts, *B = g->cnts;
    int64_t ma = d->m, mb = g->m;
    if (ma < 2 || mb < 2) return 0;
    uint32_t sa = A[0], ea = sa + A[1], sb = B[0], eb = sb + B[1], i = 0;   /* 1-runs [s, e) */
    int64_t ja = 2, jb = 2;
    for (;;) {
        uint32_t lo = sa > sb ? sa : sb, hi = ea < eb ? ea : eb;
        if (hi > lo) i += hi - lo;
        if (ea <= eb) {
            if (ja + 1 >= ma) break;
            sa = ea + A[ja];
            ea = sa + A[ja + 1];
            ja += 2;
        } else {
            if (jb + 1 >= mb) break;
            sb = eb + B[jb];
            eb = sb + B[jb + 1];
            jb += 2;
        }
    }
    return i;
}

/* rleIou of one (detection, GT) pair with iscrowd = 0. For masks of one size its box pre-check
 * changes nothing (masks that share a pixel have overlapping boxes); for different sizes it
 * decides between 0 (boxes apart) and -1. */
static double iou(const Rle *d, const Rle *g)
{
    if (d->h != g->h || d->w != g->w) {
        double D[4], G[4];
        to_bbox(d, D);
        to_bbox(g, G);
        double w = fmin(D[2] + D[0], G[2] + G[0]) - fmax(D[0], G[0]);
        double h = fmin(D[3] + D[1], G[3] + G[1]) - fmax(D[1], G[1]);
        return (w <= 0 || h <= 0) ? 0.0 : -1.0;
    }
    uint32_t i = intersection(d, g);
    return i ? (double)i / (double)(d->area + g->area - i) : 0.0;
}

/* A read-only or writable contiguous buffer of n items of itemsize bytes (n < 0: any), else an error. */
static int get_array(PyObject *obj, Py_buffer *view, Py_ssize_t itemsize, Py_ssize_t n, int writable,
                     const char *name)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    if (view->itemsize != itemsize || (n >= 0 && view->len != n * itemsize)) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items of %zd bytes, got %zd bytes of %zd",
                     name, n, itemsize, view->len, view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

typedef struct {            /* a set of masks: strings in buffers[buf[i]][start[i]:end[i]] */
    Py_ssize_t nbuf, n;
    Py_buffer *bufs;
    Py_buffer buf, start, end, hw;
    int have_buf, have_start, have_end, have_hw;
} Masks;

static void release_masks(Masks *s)
{
    for (Py_ssize_t j = 0; j < s->nbuf; j++) PyBuffer_Release(&s->bufs[j]);
    free(s->bufs);
    if (s->have_buf) PyBuffer_Release(&s->buf);
    if (s->have_start) PyBuffer_Release(&s->start);
    if (s->have_end) PyBuffer_Release(&s->end);
    if (s->have_hw) PyBuffer_Release(&s->hw);
}

static int get_masks(Masks *s, PyObject *bufs, PyObject *buf, PyObject *start, PyObject *end, PyObject *hw,
                     const char *what)
{
    if (!PyTuple_Check(bufs)) {
        PyErr_Format(PyExc_TypeError, "%s buffers: expected a tuple", what);
        return -1;
    }
    s->bufs = calloc((size_t)PyTuple_GET_SIZE(bufs) + 1, sizeof(Py_buffer));
    if (!s->bufs) { PyErr_NoMemory(); return -1; }
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(bufs); j++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(bufs, j), &s->bufs[j], PyBUF_SIMPLE) < 0) return -1;
        s->nbuf = j + 1;
    }
    if (get_array(buf, &s->buf, 8, -1, 0, what) < 0) return -1;
    s->have_buf = 1;
    s->n = s->buf.len / 8;
    if (get_array(start, &s->start, 8, s->n, 0, what) < 0) return -1;
    s->have_start = 1;
    if (get_array(end, &s->end, 8, s->n, 0, what) < 0) return -1;
    s->have_end = 1;
    if (get_array(hw, &s->hw, 8, 2 * s->n, 0, what) < 0) return -1;
    s->have_hw = 1;
    const int64_t *b = s->buf.buf, *st = s->start.buf, *en = s->end.buf;
    for (Py_ssize_t i = 0; i < s->n; i++) {
        if (b[i] < 0 || b[i] >= s->nbuf || st[i] < 0 || en[i] < st[i] || en[i] > s->bufs[b[i]].len) {
            PyErr_Format(PyExc_IndexError, "%s %zd: counts span out of its buffer", what, i);
            return -1;
        }
    }
    return 0;
}

/* Decode mask i of s into r (cnts must have room for its string length). */
static int load_mask(const Masks *s, Py_ssize_t i, Rle *r)
{
    const int64_t *b = s->buf.buf, *st = s->start.buf, *en = s->end.buf, *hw = s->hw.buf;
    const unsigned char *base = (const unsigned char *)s->bufs[b[i]].buf;
    return load(r, base + st[i], en[i] - st[i], hw[2 * i], hw[2 * i + 1]);
}

PyDoc_STRVAR(measure_doc,
"measure(det_bufs, det_buf, det_start, det_end, det_hw, gt_bufs, gt_buf, gt_start, gt_end, gt_hw,\n"
"        gt_first, gt_count, area_out, iou_out) -> int\n\n"
"Areas of N detection masks and their IoU with GT masks, pycocotools' numbers exactly.\n\n"
"A mask set (det_* with N rows, gt_* with M rows) is a tuple of byte buffers and, per mask,\n"
"int64 buffer index, counts string [start, end) in that buffer and (height, width) ``(n, 2)``.\n"
"Detection d meets GT rows gt_first[d] : gt_first[d] + gt_count[d] (int64, N each).\n"
"Writes area_out ``(N,)`` float64 and iou_out ``(sum(gt_count),)`` float64, the pairs in row\n"
"order. Returns -1, or the first malformed mask (whose runs do not cover height * width\n"
"pixels): d for a detection, N + j for a GT.");

static PyObject *measure(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *dbufs, *dbuf, *dstart, *dend, *dhw, *gbufs, *gbuf, *gstart, *gend, *ghw, *gfirst, *gcount, *aout, *iout;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOO", &dbufs, &dbuf, &dstart, &dend, &dhw, &gbufs, &gbuf, &gstart,
                          &gend, &ghw, &gfirst, &gcount, &aout, &iout))
        return NULL;
    Masks det, gt;
    memset(&det, 0, sizeof(det));
    memset(&gt, 0, sizeof(gt));
    Py_buffer first = {0}, count = {0}, area_out = {0}, iou_out = {0};
    int have_first = 0, have_count = 0, have_area = 0, have_iou = 0;
    PyObject *result = NULL;
    Rle *gts = NULL;
    uint32_t *gcnts = NULL, *dcnts = NULL;
    if (get_masks(&det, dbufs, dbuf, dstart, dend, dhw, "detection") < 0
        || get_masks(&gt, gbufs, gbuf, gstart, gend, ghw, "GT") < 0)
        goto done;
    Py_ssize_t n = det.n, m = gt.n;
    if (get_array(gfirst, &first, 8, n, 0, "gt_first") < 0) goto done;
    have_first = 1;
    if (get_array(gcount, &count, 8, n, 0, "gt_count") < 0) goto done;
    have_count = 1;
    if (get_array(aout, &area_out, 8, n, 1, "area_out") < 0) goto done;
    have_area = 1;
    const int64_t *gf = first.buf, *gc = count.buf;
    int64_t pairs = 0, longest = 1;
    for (Py_ssize_t d = 0; d < n; d++) {
        if (gc[d] < 0 || gf[d] < 0 || gf[d] + gc[d] > m) {
            PyErr_Format(PyExc_IndexError, "detection %zd: GT rows out of range", d);
            goto done;
        }
        pairs += gc[d];
        int64_t len = ((const int64_t *)det.end.buf)[d] - ((const int64_t *)det.start.buf)[d];
        if (len > longest) longest = len;
    }
    if (get_array(iout, &iou_out, 8, pairs, 1, "iou_out") < 0) goto done;
    have_iou = 1;

    int64_t gtotal = 0;
    for (Py_ssize_t j = 0; j < m; j++)
        gtotal += ((const int64_t *)gt.end.buf)[j] - ((const int64_t *)gt.start.buf)[j];
    gts = calloc((size_t)m + 1, sizeof(Rle));
    gcnts = malloc(sizeof(uint32_t) * (size_t)(gtotal + 1));
    dcnts = malloc(sizeof(uint32_t) * (size_t)longest);
    if (!gts || !gcnts || !dcnts) { PyErr_NoMemory(); goto done; }
    int64_t bad = -1;
    double *ao = area_out.buf, *io = iou_out.buf;
    Py_BEGIN_ALLOW_THREADS
    int64_t at = 0;
    for (Py_ssize_t j = 0; j < m && bad < 0; j++) {
        gts[j].cnts = gcnts + at;
        if (load_mask(&gt, j, &gts[j]) < 0) bad = n + j;
        at += gts[j].m;
    }
    Rle r;
    r.cnts = dcnts;
    int64_t p = 0;
    for (Py_ssize_t d = 0; d < n && bad < 0; d++) {
        if (load_mask(&det, d, &r) < 0) { bad = d; break; }
        ao[d] = (double)r.area;
        for (int64_t j = gf[d]; j < gf[d] + gc[d]; j++) io[p++] = iou(&r, &gts[j]);
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromLongLong(bad);
done:
    free(gts);
    free(gcnts);
    free(dcnts);
    if (have_first) PyBuffer_Release(&first);
    if (have_count) PyBuffer_Release(&count);
    if (have_area) PyBuffer_Release(&area_out);
    if (have_iou) PyBuffer_Release(&iou_out);
    release_masks(&det);
    release_masks(&gt);
    return result;
}

static PyMethodDef methods[] = {
    {"measure", measure, METH_VARARGS, measure_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rle", "Mask areas and IoU from COCO compressed RLE (pycocotools' arithmetic).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__rle(void)
{
    return PyModule_Create(&module);
}
