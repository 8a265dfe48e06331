/* Multi-buffer SHA-256 (FIPS 180-4): the digests of many independent messages at once, one
 * message per SIMD lane (16 lanes with AVX-512, 8 with AVX2).
 *
 * Why: every instance's source and every output gets a SHA-256 (DESIGN.md). On x86 CPUs without
 * the SHA extensions (Intel before Ice Lake: most hospital servers and many cloud hosts) OpenSSL
 * hashes one message at ~370 MB/s, a third of a CT slice's conversion time. Lanes of 32-bit words
 * hash 16 messages together at ~2.2 GB/s on the same core. No library on PyPI or Debian offers
 * this (ISA-L's crypto half is not packaged), hence this file. Where the CPU has the SHA
 * extensions, OpenSSL's one-message code is as fast and shared/digest.py uses hashlib instead.
 *
 * The same digests as hashlib for any input: tests/test_digest.py compares both kernels with
 * hashlib on NIST's vectors and thousands of random lengths and lane mixes.
 *
 * digests(buffers, lanes=0) -> list[bytes]   (lanes: 0 = widest this CPU runs, 16, 8)
 * kernels() -> tuple[int, ...]               lane counts this CPU runs
 * sha_ni() -> bool                           whether the CPU has the SHA extensions
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define X86 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define X86 0
#endif

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static const uint32_t IV[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

#define MAXLANES 16
#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

/* One lane's compression function: the tail blocks (last bytes and padding) of each message. */
static void compress1(uint32_t s[8], const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++) {
        uint32_t x;
        memcpy(&x, p + 4 * i, 4);
        w[i] = __builtin_bswap32(x);
    }
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = s[0], b = s[1], c = s[2], d = s[3], e = s[4], f = s[5], g = s[6], h = s[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    s[0] += a; s[1] += b; s[2] += c; s[3] += d; s[4] += e; s[5] += f; s[6] += g; s[7] += h;
}

/* The rounds of one block in every lane: W holds the 16 message words, one vector per word. */
#define ROUNDS(V, W, S)                                                                   \
    do {                                                                                  \
        V a = S[0], b = S[1], c = S[2], d = S[3], e = S[4], f = S[5], g = S[6], h = S[7]; \
        for (int i = 0; i < 64; i++) {                                                    \
            V wi;                                                                         \
            if (i < 16) {                                                                 \
                wi = W[i];                                                                \
            } else {                                                                      \
                V x = W[(i - 15) & 15], y = W[(i - 2) & 15];                              \
                V s0 = ROR(x, 7) ^ ROR(x, 18) ^ (x >> 3);                                 \
                V s1 = ROR(y, 17) ^ ROR(y, 19) ^ (y >> 10);                               \
                wi = W[i & 15] = W[i & 15] + s0 + W[(i - 7) & 15] + s1;                   \
            }                                                                             \
            V t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + wi; \
            V t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c)); \
            h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;            \
        }                                                                                 \
        S[0] += a; S[1] += b; S[2] += c; S[3] += d;                                       \
        S[4] += e; S[5] += f; S[6] += g; S[7] += h;                                       \
    } while (0)

#if X86
typedef uint32_t v16 __attribute__((vector_size(64)));
typedef uint32_t v8 __attribute__((vector_size(32)));

/* 16 lanes, ``n`` blocks each from p[l]: the message words come from a 16x16 transpose of the
 * lanes' blocks (4 shuffle stages), not 256 scalar loads. */
__attribute__((target("avx512f,avx512bw"))) static void blocks16(uint32_t st[8][MAXLANES],
                                                                  const uint8_t *p[MAXLANES],
                                                                  size_t n) {
    const __m512i swap = _mm512_set4_epi32(0x0c0d0e0f, 0x08090a0b, 0x04050607, 0x00010203);
    v16 s[8];
    memcpy(s, st, sizeof s);
    for (size_t blk = 0; blk < n; blk++) {
        __m512i r[16], t[16];
        v16 w[16];
        for (int l = 0; l < 16; l++)
            r[l] = _mm512_shuffle_epi8(_mm512_loadu_si512((const void *)(p[l] + 64 * blk)), swap);
        for (int l = 0; l < 16; l += 2) {
            t[l] = _mm512_unpacklo_epi32(r[l], r[l + 1]);
            t[l + 1] = _mm512_unpackhi_epi32(r[l], r[l + 1]);
        }
        for (int l = 0; l < 16; l += 4) {
            r[l] = _mm512_unpacklo_epi64(t[l], t[l + 2]);
            r[l + 1] = _mm512_unpackhi_epi64(t[l], t[l + 2]);
            r[l + 2] = _mm512_unpacklo_epi64(t[l + 1], t[l + 3]);
            r[l + 3] = _mm512_unpackhi_epi64(t[l + 1], t[l + 3]);
        }
        for (int k = 0; k < 4; k++) {
            __m512i a = _mm512_shuffle_i32x4(r[k], r[4 + k], 0x88);
            __m512i b = _mm512_shuffle_i32x4(r[k], r[4 + k], 0xdd);
            __m512i c = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0x88);
            __m512i d = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0xdd);
            t[k] = _mm512_shuffle_i32x4(a, c, 0x88);
            t[8 + k] = _mm512_shuffle_i32x4(a, c, 0xdd);
            t[4 + k] = _mm512_shuffle_i32x4(b, d, 0x88);
            t[12 + k] = _mm512_shuffle_i32x4(b, d, 0xdd);
        }
        memcpy(w, t, sizeof w);
        ROUNDS(v16, w, s);
    }
    memcpy(st, s, sizeof s);
}

/* 8 lanes (AVX2): scalar loads into the word vectors. */
__attribute__((target("avx2"))) static void blocks8(uint32_t st[8][MAXLANES],
                                                    const uint8_t *p[MAXLANES], size_t n) {
    v8 s[8];
    for (int j = 0; j < 8; j++) memcpy(&s[j], st[j], sizeof(v8));
    for (size_t blk = 0; blk < n; blk++) {
        v8 w[16];
        for (int i = 0; i < 16; i++) {
            uint32_t x[8];
            for (int l = 0; l < 8; l++) {
                memcpy(&x[l], p[l] + 64 * blk + 4 * i, 4);
                x[l] = __builtin_bswap32(x[l]);
            }
            memcpy(&w[i], x, sizeof x);
        }
        ROUNDS(v8, w, s);
    }
    for (int j = 0; j < 8; j++) memcpy(st[j], &s[j], sizeof(v8));
}

typedef void (*kernel_fn)(uint32_t st[8][MAXLANES], const uint8_t *p[MAXLANES], size_t n);

static int sha_extensions(void) {
    unsigned a, b, c, d;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 29));
}

static int runs(int lanes) {
    __builtin_cpu_init();
    if (lanes == 16) return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    if (lanes == 8) return __builtin_cpu_supports("avx2");
    return 0;
}
#else /* elsewhere no kernel runs and shared/digest.py keeps to hashlib */
static void blocks16(uint32_t st[8][MAXLANES], const uint8_t *p[MAXLANES], size_t n) {}
static void blocks8(uint32_t st[8][MAXLANES], const uint8_t *p[MAXLANES], size_t n) {}
typedef void (*kernel_fn)(uint32_t st[8][MAXLANES], const uint8_t *p[MAXLANES], size_t n);
static int sha_extensions(void) { return 0; }
static int runs(int lanes) { return 0; }
#endif

/* The last bytes of one message and its padding (1 or 2 blocks), then the digest, big-endian. */
static void finish(uint32_t s[8], const uint8_t *tail, size_t rest, uint64_t total, uint8_t out[32]) {
    uint8_t buf[128] = {0};
    memcpy(buf, tail, rest);
    buf[rest] = 0x80;
    size_t nb = rest + 9 <= 64 ? 1 : 2;
    uint64_t bits = total * 8;
    for (int i = 0; i < 8; i++) buf[nb * 64 - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t i = 0; i < nb; i++) compress1(s, buf + 64 * i);
    for (int i = 0; i < 8; i++) {
        uint32_t be = __builtin_bswap32(s[i]);
        memcpy(out + 4 * i, &be, 4);
    }
}

/* Every message through ``lanes`` lanes: a lane takes the next message as soon as its own has
 * no full block left, so lanes stay busy until the last messages; idle lanes re-read an active
 * lane's blocks and their result is dropped. Messages in order of decreasing length keep the
 * last round short (shared/digest.py orders them). */
static void hash_all(kernel_fn kernel, int lanes, Py_buffer *msg, Py_ssize_t count, uint8_t *out) {
    uint32_t st[8][MAXLANES];
    const uint8_t *ptr[MAXLANES];
    size_t left[MAXLANES];   /* full blocks left in the lane's message */
    Py_ssize_t who[MAXLANES]; /* the lane's message, or -1 */
    Py_ssize_t next = 0;
    for (int l = 0; l < lanes; l++) who[l] = -1;
    for (;;) {
        int active = 0;
        for (int l = 0; l < lanes; l++) {
            while (who[l] < 0 && next < count) {
                Py_ssize_t m = next++;
                uint32_t s[8];
                size_t blocks = (size_t)msg[m].len / 64;
                memcpy(s, IV, sizeof s);
                if (blocks == 0) { /* shorter than a block: the tail is the whole message */
                    finish(s, msg[m].buf, (size_t)msg[m].len, (uint64_t)msg[m].len, out + 32 * m);
                    continue;
                }
                for (int j = 0; j < 8; j++) st[j][l] = s[j];
                who[l] = m;
                ptr[l] = msg[m].buf;
                left[l] = blocks;
            }
            active += who[l] >= 0;
        }
        if (!active) return;
        size_t n = SIZE_MAX;
        int first = -1;
        for (int l = 0; l < lanes; l++)
            if (who[l] >= 0) {
                if (left[l] < n) n = left[l];
                if (first < 0) first = l;
            }
        const uint8_t *p[MAXLANES];
        for (int l = 0; l < lanes; l++) p[l] = who[l] >= 0 ? ptr[l] : ptr[first];
        kernel(st, p, n);
        for (int l = 0; l < lanes; l++) {
            if (who[l] < 0) continue;
            ptr[l] += 64 * n;
            left[l] -= n;
            if (left[l]) continue;
            Py_ssize_t m = who[l];
            uint32_t s[8];
            for (int j = 0; j < 8; j++) s[j] = st[j][l];
            finish(s, ptr[l], (size_t)msg[m].len % 64, (uint64_t)msg[m].len, out + 32 * m);
            who[l] = -1;
        }
    }
}

static PyObject *py_digests(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"buffers", "lanes", NULL};
    PyObject *seq;
    int lanes = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|i:digests", names, &seq, &lanes)) return NULL;
    if (lanes == 0 && !(lanes = runs(16) ? 16 : runs(8) ? 8 : 0))
        return PyErr_Format(PyExc_ValueError, "this CPU has no multi-buffer kernel");
    if (lanes != 16 && lanes != 8) return PyErr_Format(PyExc_ValueError, "lanes must be 16 or 8, got %d", lanes);
    if (!runs(lanes)) return PyErr_Format(PyExc_ValueError, "this CPU has no %d-lane kernel", lanes);
    PyObject *fast = PySequence_Fast(seq, "buffers must be a sequence of bytes-like objects");
    if (!fast) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(fast), got = 0;
    Py_buffer *msg = PyMem_Calloc(count ? count : 1, sizeof(Py_buffer));
    uint8_t *out = PyMem_Malloc(32 * (count ? count : 1));
    PyObject *result = NULL;
    if (!msg || !out) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < count; got++)
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, got), &msg[got], PyBUF_SIMPLE) < 0) goto done;
    Py_BEGIN_ALLOW_THREADS
    hash_all(lanes == 16 ? blocks16 : blocks8, lanes, msg, count, out);
    Py_END_ALLOW_THREADS
    result = PyList_New(count);
    for (Py_ssize_t i = 0; result && i < count; i++) {
        PyObject *d = PyBytes_FromStringAndSize((const char *)out + 32 * i, 32);
        if (!d) Py_CLEAR(result);
        else PyList_SET_ITEM(result, i, d);
    }
done:
    for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&msg[i]);
    PyMem_Free(msg);
    PyMem_Free(out);
    Py_DECREF(fast);
    return result;
}

static PyObject *py_kernels(PyObject *self, PyObject *unused) {
    return runs(16) ? Py_BuildValue("(ii)", 16, 8) : runs(8) ? Py_BuildValue("(i)", 8) : PyTuple_New(0);
}

static PyObject *py_sha_ni(PyObject *self, PyObject *unused) { return PyBool_FromLong(sha_extensions()); }

static PyMethodDef methods[] = {
    {"digests", (PyCFunction)(void (*)(void))py_digests, METH_VARARGS | METH_KEYWORDS,
     "digests(buffers, lanes=0) -> list of 32-byte SHA-256 digests, in order"},
    {"kernels", py_kernels, METH_NOARGS, "lane counts this CPU runs"},
    {"sha_ni", py_sha_ni, METH_NOARGS, "whether this CPU has the SHA extensions"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "shared._sha256x",
                                    .m_doc = "Multi-buffer SHA-256 (see shared/digest.py)",
                                    .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__sha256x(void) { return PyModule_Create(&module); }
