/* Mean SSIM (Wang et al. 2004) of two 8-bit images, a row at a time in cache.
 *
 * Why: every JPEG output is verified by its SSIM against the rendering it came from
 * (shared/verify.py). With OpenCV and numpy that is four Gaussian blurs of the whole image and a
 * dozen whole-image float64 passes over ~10 MiB of temporaries that leave the core's cache:
 * 5-9 ms of a 512x512 slice, more than the rest of its conversion. Here each output row's four
 * moments are weighted down the columns straight from the 8-bit rows, then along the row, then
 * combined into the SSIM map and summed, all within a few rows' buffers. No image library
 * offers this (OpenCV's quality module is in contrib and blurs whole images; scikit-image goes
 * through SciPy's filters, slower still).
 *
 * The formula is verify.ssim's: an 11-tap Gaussian window (sigma 1.5, weights as OpenCV's
 * getGaussianKernel computes them), reflected edges (cv2.BORDER_REFLECT), K1 = 0.01, K2 = 0.03,
 * all in float64, so that flat bright areas, where the variances are small differences of large
 * moments, score as the formula says (float32 blurs were off by 1e-4 there). Built with
 * -ffp-contract=off and summed in a fixed order: every instruction-set variant below gives the
 * same bits. tests/test_verify.py holds it to an all-float64 evaluation of the formula (to 1e-12)
 * and the variants to each other.
 *
 * mean_ssim(a, b) -> float | None: a, b C-contiguous uint8 buffers of the same 2-D (H, W) or
 * 3-D (H, W, C) shape; None (nothing computed) for anything else, so the caller keeps its route.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(CLONES) /* set on the command line: one instruction set only (to compare them) */
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 /* the level names */
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

#define RADIUS 5
#define TAPS (2 * RADIUS + 1)
#define MOMENTS 4 /* x, y, x*y, x*x + y*y: the blurred moments of a pixel */

/* cv2.BORDER_REFLECT (fedcba|abcdef|fedcba) for any offset, as OpenCV's borderInterpolate. */
static Py_ssize_t reflect(Py_ssize_t p, Py_ssize_t len) {
    if (len == 1) return 0;
    while (p < 0 || p >= len) p = p < 0 ? -p - 1 : 2 * len - p - 1;
    return p;
}

/* The four moments of one output row weighted down the columns, into mx, my, mxy, mss: ra[t],
 * rb[t] are the 8-bit rows at offset t - RADIUS (reflected). Pairs of taps share their weight
 * (the kernel is symmetric), as in OpenCV's column filter. */
static inline void down_columns(const uint8_t *const *ra, const uint8_t *const *rb, const double *k,
                                double *restrict mx, double *restrict my, double *restrict mxy,
                                double *restrict mss, Py_ssize_t n) {
    const uint8_t *restrict a0 = ra[0], *restrict a1 = ra[1], *restrict a2 = ra[2], *restrict a3 = ra[3],
                            *restrict a4 = ra[4], *restrict a5 = ra[5], *restrict a6 = ra[6], *restrict a7 = ra[7],
                            *restrict a8 = ra[8], *restrict a9 = ra[9], *restrict a10 = ra[10];
    const uint8_t *restrict b0 = rb[0], *restrict b1 = rb[1], *restrict b2 = rb[2], *restrict b3 = rb[3],
                            *restrict b4 = rb[4], *restrict b5 = rb[5], *restrict b6 = rb[6], *restrict b7 = rb[7],
                            *restrict b8 = rb[8], *restrict b9 = rb[9], *restrict b10 = rb[10];
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t x = a5[i], y = b5[i];
        double sx = k[0] * x, sy = k[0] * y, sxy = k[0] * (x * y), sss = k[0] * (x * x + y * y);
        /* a pair's sums are integers (below 2^19): exact in int32, one rounding each after */
#define PAIR(j, U, D)                                                                    \
        {                                                                                \
            int32_t xu = a##U[i], xd = a##D[i], yu = b##U[i], yd = b##D[i];              \
            sx = sx + k[j] * (xu + xd);                                                  \
            sy = sy + k[j] * (yu + yd);                                                  \
            sxy = sxy + k[j] * (xu * yu + xd * yd);                                      \
            sss = sss + k[j] * (xu * xu + yu * yu + xd * xd + yd * yd);                  \
        }
        PAIR(1, 4, 6) PAIR(2, 3, 7) PAIR(3, 2, 8) PAIR(4, 1, 9) PAIR(5, 0, 10)
#undef PAIR
        mx[i] = sx;
        my[i] = sy;
        mxy[i] = sxy;
        mss[i] = sss;
    }
}

/* One moment along its row: out[i] from row[i - RADIUS*c .. i + RADIUS*c], c interleaved
 * channels apart (row has RADIUS*c items of reflected edge before and after). */
static inline void along_row(const double *restrict row, const double *k, double *restrict out,
                             Py_ssize_t n, Py_ssize_t c) {
    for (Py_ssize_t i = 0; i < n; i++) {
        double v = k[0] * row[i];
        for (int j = 1; j <= RADIUS; j++) v = v + k[j] * (row[i - j * c] + row[i + j * c]);
        out[i] = v;
    }
}

/* One output row: its moments down the columns, then along the row (the edges reflected through
 * cols[]: the items the edge positions copy, left then right), then the SSIM map, summed by
 * eight fixed partial sums into sum[]. */
CLONES static void ssim_row(const uint8_t *const *ra, const uint8_t *const *rb, const double *k,
                            const Py_ssize_t *cols, Py_ssize_t n, Py_ssize_t c, double *pad, double *blur,
                            double sum[8]) {
    const double c1 = (0.01 * 255) * (0.01 * 255), c2 = (0.03 * 255) * (0.03 * 255);
    Py_ssize_t edge = RADIUS * c, padded = n + 2 * edge;
    down_columns(ra, rb, k, pad + edge, pad + padded + edge, pad + 2 * padded + edge, pad + 3 * padded + edge, n);
    for (int m = 0; m < MOMENTS; m++) {
        double *row = pad + m * padded;
        for (Py_ssize_t i = 0; i < edge; i++) {
            row[i] = row[edge + cols[i]];
            row[edge + n + i] = row[edge + cols[edge + i]];
        }
        along_row(row + edge, k, blur + m * n, n, c);
    }
    const double *restrict mx = blur, *restrict my = blur + n, *restrict sxy = blur + 2 * n,
                           *restrict ss = blur + 3 * n;
    double *restrict map = blur + 4 * n;
    for (Py_ssize_t i = 0; i < n; i++) {
        double x = mx[i], y = my[i], xy = x * y, m2 = x * x + y * y;
        double num = (2 * xy + c1) * (2 * (sxy[i] - xy) + c2);
        double den = (m2 + c1) * ((ss[i] - m2) + c2);
        map[i] = num / den;
    }
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) sum[l] += map[i + l];
    for (; i < n; i++) sum[i % 8] += map[i];
}

/* The 11 weights of cv2.getGaussianKernel(11, 1.5), centre first: k[j] for offset ±j. */
static void gaussian(double k[RADIUS + 1]) {
    double w[TAPS], total = 0, scale = -0.5 / (1.5 * 1.5);
    for (int i = 0; i < TAPS; i++) {
        double x = i - (TAPS - 1) * 0.5;
        w[i] = exp(scale * x * x);
        total += w[i];
    }
    total = 1. / total;
    for (int j = 0; j <= RADIUS; j++) k[j] = w[RADIUS + j] * total;
}

/* Mean SSIM of h rows of w pixels of c channels into *result; 0 when memory runs out. */
static int ssim_rows(const uint8_t *a, const uint8_t *b, Py_ssize_t h, Py_ssize_t w, Py_ssize_t c, double *result) {
    Py_ssize_t n = w * c, edge = RADIUS * c, padded = n + 2 * edge;
    double k[RADIUS + 1];
    gaussian(k);
    Py_ssize_t *cols = PyMem_RawMalloc(sizeof(Py_ssize_t) * 2 * edge);
    double *pad = PyMem_RawMalloc(sizeof(double) * MOMENTS * padded);
    double *blur = PyMem_RawMalloc(sizeof(double) * (MOMENTS + 1) * n);
    if (!cols || !pad || !blur) {
        PyMem_RawFree(cols);
        PyMem_RawFree(pad);
        PyMem_RawFree(blur);
        return 0;
    }
    /* the item each edge position copies, reflected: the RADIUS*c before the row, then after it */
    for (Py_ssize_t i = 0; i < edge; i++) {
        cols[i] = reflect(i / c - RADIUS, w) * c + i % c;
        cols[edge + i] = reflect(w + i / c, w) * c + i % c;
    }
    double sum[8] = {0};
    for (Py_ssize_t r = 0; r < h; r++) {
        const uint8_t *ra[TAPS], *rb[TAPS];
        for (int t = 0; t < TAPS; t++) {
            Py_ssize_t src = reflect(r + t - RADIUS, h);
            ra[t] = a + src * n;
            rb[t] = b + src * n;
        }
        ssim_row(ra, rb, k, cols, n, c, pad, blur, sum);
    }
    double total = 0;
    for (int l = 0; l < 8; l++) total += sum[l];
    *result = total / ((double)h * (double)n);
    PyMem_RawFree(cols);
    PyMem_RawFree(pad);
    PyMem_RawFree(blur);
    return 1;
}

static PyObject *mean_ssim(PyObject *self, PyObject *args) {
    PyObject *a_obj, *b_obj;
    if (!PyArg_ParseTuple(args, "OO:mean_ssim", &a_obj, &b_obj)) return NULL;
    Py_buffer a, b;
    const int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT;
    if (PyObject_GetBuffer(a_obj, &a, flags) < 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (PyObject_GetBuffer(b_obj, &b, flags) < 0) {
        PyErr_Clear();
        PyBuffer_Release(&a);
        Py_RETURN_NONE;
    }
    int ok = a.ndim == b.ndim && (a.ndim == 2 || a.ndim == 3) && a.itemsize == 1 && b.itemsize == 1 &&
             a.format && b.format && !strcmp(a.format, "B") && !strcmp(b.format, "B");
    for (int d = 0; ok && d < a.ndim; d++) ok = a.shape[d] == b.shape[d] && a.shape[d] > 0;
    PyObject *result = Py_None;
    Py_INCREF(result);
    if (ok) {
        double v = 0;
        int done;
        Py_BEGIN_ALLOW_THREADS
        done = ssim_rows(a.buf, b.buf, a.shape[0], a.shape[1], a.ndim == 3 ? a.shape[2] : 1, &v);
        Py_END_ALLOW_THREADS
        Py_DECREF(result);
        result = done ? PyFloat_FromDouble(v) : PyErr_NoMemory();
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return result;
}

static PyMethodDef methods[] = {
    {"mean_ssim", mean_ssim, METH_VARARGS,
     "mean_ssim(a, b) -> float | None: mean SSIM of two C-contiguous uint8 images of one 2-D or 3-D shape"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "shared._ssim",
                                    .m_doc = "Mean SSIM of 8-bit images in one pass (see shared/verify.py)",
                                    .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__ssim(void) { return PyModule_Create(&module); }
