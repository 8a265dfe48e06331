/* Run-length deflate (RFC 1951) of PNG's filtered rows, in one pass with a 64-bit bit writer.
 *
 * Why: deflating the Sub-filtered rows is the largest single cost of a PNG output. The rows of a
 * CT slice are runs (air, flat regions) and noise: matches beyond the previous byte buy almost
 * nothing, so the stream is literals and distance-1 runs under dynamic Huffman codes. zlib-ng's
 * run-length strategy writes exactly that kind of stream, but through its general machinery
 * (symbol tally, per-symbol bit sends): 0.5 ms for an 8-bit 512x512 slice and 2.7 ms for a
 * 16-bit one, ~190 MB/s. Here the same kind of stream is written at ~3x that (0.17 and 0.74 ms
 * on a Sapphire Rapids Xeon): runs found 32 bytes at a time, a block's symbols stored as they
 * are found and counted in eight tables, codes emitted through a 64-bit accumulator, four
 * symbols a store. ISA-L is faster still but its output depends on the CPU's code path, and
 * libdeflate's level 1 runs a hash-chain match finder (3.4 ms on a 16-bit slice).
 *
 * The stream depends on the input bytes only: integer code throughout, ties in the Huffman
 * construction broken by symbol number, blocks cut every BLOCK_SYMBOLS symbols, so every CPU and
 * compiler writes the same bytes (tests/test_png.py pins them, tests/test_deflate.py compares
 * the builds; a redelivered job rewrites the same file). Symbols as zlib's Z_RLE defines them: a byte equal to the one before it starts a
 * match of distance 1 when at least MIN_MATCH bytes repeat it, up to 258.
 *
 * rle_deflate(data) -> bytes: the raw deflate stream (no zlib header or Adler-32; png.py adds
 * those) of any C-contiguous buffer, the GIL released while it runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#if defined(CLONES) /* set on the command line: one instruction set only (to compare them) */
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 /* the level names */
/* x86-64-v3 for BMI2's shifts by a register (SHLX/SHRX: one instruction where the plain shift by
 * CL takes three): 0.84 -> 0.73 ms a 16-bit slice. Integer code: every clone writes the same bytes. */
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

#define LITLEN 286        /* literal/length alphabet: 0-255 literals, 256 end of block, 257-285 lengths */
#define END_OF_BLOCK 256
#define CODELEN 19        /* the code-length alphabet of a dynamic block's header */
#define MAX_BITS 15       /* longest literal/length code */
#define MAX_CL_BITS 7     /* longest code-length code */
#define MIN_MATCH 3
#define MAX_MATCH 258
#define BLOCK_SYMBOLS 32768 /* a block's Huffman codes fit its own stretch of rows */
#define TABLES 8 /* symbol counts kept apart, summed at the end */

/* ---- bit writer: LSB first, as deflate packs its bits ---- */

typedef struct {
    uint8_t *out;
    uint64_t acc;
    unsigned count; /* bits held in acc, < 32 between calls */
} Bits;

static inline __attribute__((always_inline)) void put_bits(Bits *w, uint64_t value, unsigned n) /* n <= 32 */
{
    w->acc |= value << w->count;
    w->count += n;
    if (w->count >= 32) {
        uint32_t word = (uint32_t)w->acc;
        memcpy(w->out, &word, 4); /* little-endian hosts only: see the check in PyInit */
        w->out += 4;
        w->acc >>= 32;
        w->count -= 32;
    }
}

static void flush_bits(Bits *w)
{
    while (w->count > 0) {
        *w->out++ = (uint8_t)w->acc;
        w->acc >>= 8;
        w->count = w->count > 8 ? w->count - 8 : 0;
    }
    w->acc = 0;
}

/* ---- length symbols (RFC 1951 3.2.5) ---- */

static uint16_t length_code[MAX_MATCH + 1];  /* match length -> symbol 257..285 */
static uint8_t length_extra_bits[MAX_MATCH + 1];
static uint16_t length_extra_value[MAX_MATCH + 1];

static void init_length_tables(void)
{
    static const uint16_t base[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
                                      35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
    static const uint8_t extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
                                      3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
    for (int code = 0; code < 29; code++) {
        int last = code == 28 ? 258 : base[code] + (1 << extra[code]) - 1;
        if (code == 27) last = 257; /* 258 has its own symbol, 285 */
        for (int len = base[code]; len <= last; len++) {
            length_code[len] = (uint16_t)(257 + code);
            length_extra_bits[len] = extra[code];
            length_extra_value[len] = (uint16_t)(len - base[code]);
        }
    }
}

/* ---- Huffman code lengths, limited to max_bits ---- */

/* keys[0..n) in ascending order (a bottom-up merge sort; n <= LITLEN) */
static void sort_keys(uint64_t *keys, int n)
{
    uint64_t buffer[LITLEN], *from = keys, *to = buffer;
    for (int width = 1; width < n; width *= 2) {
        for (int lo = 0; lo < n; lo += 2 * width) {
            int mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            int a = lo, b = mid, o = lo;
            while (a < mid && b < hi) to[o++] = from[a] <= from[b] ? from[a++] : from[b++];
            while (a < mid) to[o++] = from[a++];
            while (b < hi) to[o++] = from[b++];
        }
        uint64_t *swap = from; from = to; to = swap;
    }
    if (from != keys) memcpy(keys, from, sizeof keys[0] * (size_t)n);
}

/* Code lengths for freq[0..n) (0 for unused symbols), at most max_bits. Huffman's construction on
 * the used symbols sorted by (frequency, symbol), a leaf before an internal node of equal weight;
 * lengths beyond max_bits are then brought down by moving leaves (as miniz does), and lengths are
 * dealt back in the sorted order, shortest to the most frequent. At least two symbols get a code
 * (a lone symbol is paired with the lowest other), so every code is complete. */
static void code_lengths(const uint32_t *freq, int n, int max_bits, uint8_t *lens)
{
    int sym[LITLEN], used = 0;
    uint32_t weight[2 * LITLEN];
    int parent[2 * LITLEN];
    uint8_t depth[2 * LITLEN];
    memset(lens, 0, (size_t)n);
    for (int s = 0; s < n; s++)
        if (freq[s]) sym[used++] = s;
    if (used < 2) { /* pair a lone (or absent) symbol so that the code is complete */
        int extra = (used == 1 && sym[0] == 0) ? 1 : 0;
        if (used == 0) { lens[0] = lens[1] = 1; return; }
        lens[sym[0]] = 1;
        lens[extra] = 1;
        return;
    }
    /* sorted by (frequency, symbol): keys are unique, so any sort gives this order */
    uint64_t key[LITLEN];
    for (int i = 0; i < used; i++) key[i] = (uint64_t)freq[sym[i]] << 16 | (uint64_t)sym[i];
    sort_keys(key, used);
    for (int i = 0; i < used; i++) sym[i] = (int)(key[i] & 0xFFFF);
    for (int i = 0; i < used; i++) weight[i] = freq[sym[i]];
    /* two queues: leaves 0..used-1, internal nodes used.. in the order made (non-decreasing) */
    int leaf = 0, node = used, made = used;
    for (int k = 0; k < used - 1; k++) {
        int pick[2];
        for (int p = 0; p < 2; p++) {
            if (leaf < used && (node >= made || weight[leaf] <= weight[node])) pick[p] = leaf++;
            else pick[p] = node++;
        }
        weight[made] = weight[pick[0]] + weight[pick[1]];
        parent[pick[0]] = parent[pick[1]] = made;
        made++;
    }
    depth[made - 1] = 0;
    for (int i = made - 2; i >= 0; i--) depth[i] = (uint8_t)(depth[parent[i]] + 1 > 255 ? 255 : depth[parent[i]] + 1);
    /* count lengths, clipped, then restore Kraft's equality by lengthening shorter codes */
    uint32_t count[256] = {0};
    for (int i = 0; i < used; i++) count[depth[i] > max_bits ? max_bits : depth[i]]++;
    uint32_t total = 0;
    for (int b = max_bits; b > 0; b--) total += count[b] << (max_bits - b);
    while (total != (1u << max_bits)) { /* over-full: one leaf at max_bits moves below a shorter one */
        count[max_bits]--;
        for (int b = max_bits - 1; b > 0; b--) {
            if (count[b]) { count[b]--; count[b + 1] += 2; break; }
        }
        total--;
    }
    /* deal the lengths: the least frequent symbols (sorted first) get the longest */
    int i = 0;
    for (int b = max_bits; b > 0; b--)
        for (uint32_t c = 0; c < count[b]; c++) lens[sym[i++]] = (uint8_t)b;
}

/* Canonical codes (RFC 1951 3.2.2), bit-reversed for an LSB-first writer. */
static void canonical_codes(const uint8_t *lens, int n, uint16_t *codes)
{
    uint16_t count[MAX_BITS + 1] = {0}, next[MAX_BITS + 2];
    for (int s = 0; s < n; s++) count[lens[s]]++;
    count[0] = 0;
    uint16_t code = 0;
    for (int b = 1; b <= MAX_BITS; b++) {
        code = (uint16_t)((code + count[b - 1]) << 1);
        next[b] = code;
    }
    for (int s = 0; s < n; s++) {
        int len = lens[s];
        if (!len) { codes[s] = 0; continue; }
        uint16_t c = next[len]++, r = 0;
        for (int b = 0; b < len; b++) r = (uint16_t)((r << 1) | ((c >> b) & 1));
        codes[s] = r;
    }
}

/* ---- one dynamic block ---- */

static const uint8_t CODELEN_ORDER[CODELEN] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};

/* The header's code lengths as code-length symbols: runs of zeros as 17/18, repeats of the
 * previous length as 16 (zlib's scan_tree rules). item = symbol | extra value << 8. */
static int run_length_lengths(const uint8_t *lens, int n, uint16_t *items, uint32_t *cl_freq)
{
    int count = 0;
    for (int i = 0; i < n;) {
        int len = lens[i], run = 1;
        while (i + run < n && lens[i + run] == len) run++;
        int left = run;
        if (len == 0) {
            while (left >= 11) { int r = left > 138 ? 138 : left; items[count++] = (uint16_t)(18 | (r - 11) << 8); cl_freq[18]++; left -= r; }
            if (left >= 3) { items[count++] = (uint16_t)(17 | (left - 3) << 8); cl_freq[17]++; left = 0; }
        } else {
            items[count++] = (uint16_t)len; cl_freq[len]++; left--;
            while (left >= 3) { int r = left > 6 ? 6 : left; items[count++] = (uint16_t)(16 | (r - 3) << 8); cl_freq[16]++; left -= r; }
        }
        while (left > 0) { items[count++] = (uint16_t)len; cl_freq[len]++; left--; }
        i += run;
    }
    return count;
}

/* Write one block of symbols (literal byte, or MAX_MATCH-limited length + 256 for a distance-1
 * match) with its own dynamic codes. */
static inline __attribute__((always_inline)) void write_block(Bits *w, const uint16_t *symbols, size_t n, int final)
{
    /* the symbols counted in eight tables: a value that recurs every other symbol (the high
     * bytes of 16-bit samples) would otherwise wait on its own count's last increment */
    uint32_t counts[TABLES][256 + MAX_MATCH + 1];
    memset(counts, 0, sizeof counts);
    size_t k = 0;
    for (; k + TABLES <= n; k += TABLES)
        for (int t = 0; t < TABLES; t++) counts[t][symbols[k + t]]++;
    for (; k < n; k++) counts[0][symbols[k]]++;
    uint32_t litlen_freq[LITLEN] = {0};
    for (int s = 0; s < 256 + MAX_MATCH + 1; s++) {
        uint32_t sum = 0;
        for (int t = 0; t < TABLES; t++) sum += counts[t][s];
        if (s < 256) litlen_freq[s] = sum;
        else if (s >= 256 + MIN_MATCH) litlen_freq[length_code[s - 256]] += sum;
    }
    litlen_freq[END_OF_BLOCK] = 1;
    uint8_t lens[LITLEN + 2];
    uint16_t codes[LITLEN];
    code_lengths(litlen_freq, LITLEN, MAX_BITS, lens);
    canonical_codes(lens, LITLEN, codes);
    int hlit = LITLEN;
    while (hlit > 257 && lens[hlit - 1] == 0) hlit--;
    /* distance codes 0 and 1 at one bit each: a complete code, of which only 0 (distance 1) is used */
    lens[hlit] = 1;
    lens[hlit + 1] = 1;
    const int hdist = 2;

    uint16_t items[LITLEN + 2];
    uint32_t cl_freq[CODELEN] = {0};
    int n_items = run_length_lengths(lens, hlit + hdist, items, cl_freq);
    uint8_t cl_lens[CODELEN];
    uint16_t cl_codes[CODELEN];
    code_lengths(cl_freq, CODELEN, MAX_CL_BITS, cl_lens);
    canonical_codes(cl_lens, CODELEN, cl_codes);
    int hclen = CODELEN;
    while (hclen > 4 && cl_lens[CODELEN_ORDER[hclen - 1]] == 0) hclen--;

    put_bits(w, (uint64_t)(final ? 1 : 0) | 2u << 1, 3); /* BFINAL, BTYPE 10: dynamic codes */
    put_bits(w, (uint64_t)(hlit - 257) | (uint64_t)(hdist - 1) << 5 | (uint64_t)(hclen - 4) << 10, 14);
    for (int i = 0; i < hclen; i++) put_bits(w, cl_lens[CODELEN_ORDER[i]], 3);
    static const uint8_t repeat_bits[3] = {2, 3, 7}; /* extra bits of 16, 17, 18 */
    for (int i = 0; i < n_items; i++) {
        int s = items[i] & 0xFF, extra = items[i] >> 8;
        put_bits(w, cl_codes[s], cl_lens[s]);
        if (s >= 16) put_bits(w, (uint64_t)extra, repeat_bits[s - 16]);
    }

    /* Every symbol's whole bit string in one table: a literal's code, or a length's code, its
     * extra bits and distance code 0 (a 0 bit: distance 1 of the two one-bit codes). */
    uint64_t table[256 + MAX_MATCH + 1];
    for (int s = 0; s < 256; s++) table[s] = codes[s] | (uint64_t)lens[s] << 32;
    for (int len = MIN_MATCH; len <= MAX_MATCH; len++) {
        unsigned code = length_code[len], nb = lens[code];
        table[256 + len] = (codes[code] | (uint64_t)length_extra_value[len] << nb)
                           | (uint64_t)(nb + length_extra_bits[len] + 1) << 32;
    }
    /* The accumulator's whole bytes are stored after four symbols when their bits fit beside
     * the (at most 7) bits held, else after each two (at most 2 x 21 bits). */
    uint64_t acc = w->acc;
    unsigned count = w->count;
    uint8_t *out = w->out;
    memcpy(out, &acc, 8); /* the header's whole bytes out first: at most 7 bits held from here */
    out += count >> 3;
    acc >>= count & ~7u;
    count &= 7;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        uint64_t a = table[symbols[i]], b = table[symbols[i + 1]];
        uint64_t c = table[symbols[i + 2]], d = table[symbols[i + 3]];
        unsigned la = (unsigned)(a >> 32), lb = (unsigned)(b >> 32), lc = (unsigned)(c >> 32), ld = (unsigned)(d >> 32);
        acc |= (a & 0xFFFFFFFFu) << count;
        count += la;
        acc |= (b & 0xFFFFFFFFu) << count;
        count += lb;
        if (la + lb + lc + ld > 56) {
            memcpy(out, &acc, 8);
            out += count >> 3;
            acc >>= count & ~7u;
            count &= 7;
        }
        acc |= (c & 0xFFFFFFFFu) << count;
        count += lc;
        acc |= (d & 0xFFFFFFFFu) << count;
        count += ld;
        memcpy(out, &acc, 8);
        out += count >> 3;
        acc >>= count & ~7u; /* count <= 7 + 56: never the whole word */
        count &= 7;
    }
    w->acc = acc;
    w->count = count;
    w->out = out;
    for (; i < n; i++) put_bits(w, table[symbols[i]] & 0xFFFFFFFFu, (unsigned)(table[symbols[i]] >> 32));
    put_bits(w, codes[END_OF_BLOCK], lens[END_OF_BLOCK]);
}

/* Bytes a stream of n input bytes can take at most: every byte a 15-bit literal, plus each
 * block's header (3 + 14 + 19*3 + 288*7 bits with extra bits: < 400 bytes) and the final bits. */
static size_t stream_bound(size_t n)
{
    size_t blocks = n / BLOCK_SYMBOLS + 1;
    return n * 2 + blocks * 400 + 16;
}

/* The whole stream of data[0..n) into out; returns its length. */
CLONES static size_t deflate_rle(const uint8_t *data, size_t n, uint8_t *out, uint16_t *symbols)
{
    Bits w = {out, 0, 0};
    size_t i = 0;
    do {
        size_t count = 0;
        while (i < n && count < BLOCK_SYMBOLS) {
#if defined(__SSE2__)
            /* Sixteen bytes compared with their left neighbours at once, twice: up to where three
             * consecutive bytes equal their left neighbours (a run can start), all are literals. */
            if (i > 0 && i + 32 <= n && count + 30 <= BLOCK_SYMBOLS) {
                __m128i lo = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(data + i)),
                                            _mm_loadu_si128((const __m128i *)(data + i - 1)));
                __m128i hi = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(data + i + 16)),
                                            _mm_loadu_si128((const __m128i *)(data + i + 15)));
                uint32_t eq = (uint32_t)_mm_movemask_epi8(lo) | (uint32_t)_mm_movemask_epi8(hi) << 16;
                uint32_t starts = eq & eq >> 1 & eq >> 2 & 0x3FFFFFFFu; /* bit k: a run from i + k */
                unsigned literals = starts ? (unsigned)__builtin_ctz(starts) : 30;
                /* 32 symbols stored (the buffer has room), `literals` of them kept */
                const __m128i zero = _mm_setzero_si128();
                __m128i a = _mm_loadu_si128((const __m128i *)(data + i));
                __m128i c = _mm_loadu_si128((const __m128i *)(data + i + 16));
                _mm_storeu_si128((__m128i *)(symbols + count), _mm_unpacklo_epi8(a, zero));
                _mm_storeu_si128((__m128i *)(symbols + count + 8), _mm_unpackhi_epi8(a, zero));
                _mm_storeu_si128((__m128i *)(symbols + count + 16), _mm_unpacklo_epi8(c, zero));
                _mm_storeu_si128((__m128i *)(symbols + count + 24), _mm_unpackhi_epi8(c, zero));
                count += literals;
                i += literals;
                if (!starts) continue; /* else i is where a run starts: measured below */
            }
#endif
            if (i > 0 && data[i] == data[i - 1]) {
                /* the run of bytes equal to data[i - 1] from i, eight at a time */
                const uint8_t b = data[i - 1];
                size_t limit = n - i < MAX_MATCH ? n - i : MAX_MATCH, run = 0;
                const uint64_t pattern = 0x0101010101010101ull * b;
                while (run + 8 <= limit) {
                    uint64_t word;
                    memcpy(&word, data + i + run, 8);
                    uint64_t diff = word ^ pattern;
                    if (diff) { run += (size_t)__builtin_ctzll(diff) >> 3; goto measured; }
                    run += 8;
                }
                while (run < limit && data[i + run] == b) run++;
            measured:
                if (run >= MIN_MATCH) {
                    symbols[count++] = (uint16_t)(256 + run);
                    i += run;
                    continue;
                }
            }
            symbols[count++] = data[i];
            i++;
        }
        write_block(&w, symbols, count, i >= n);
    } while (i < n);
    flush_bits(&w);
    return (size_t)(w.out - out);
}

static PyObject *rle_deflate(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    size_t n = (size_t)view.len, bound = stream_bound(n);
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)bound);
    uint16_t *symbols = PyMem_RawMalloc(sizeof(uint16_t) * (BLOCK_SYMBOLS + 32)); /* + a fast store's slack */
    if (!result || !symbols) {
        Py_XDECREF(result);
        PyMem_RawFree(symbols);
        PyBuffer_Release(&view);
        return symbols ? NULL : PyErr_NoMemory();
    }
    size_t written;
    Py_BEGIN_ALLOW_THREADS
    written = deflate_rle((const uint8_t *)view.buf, n, (uint8_t *)PyBytes_AS_STRING(result), symbols);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(symbols);
    PyBuffer_Release(&view);
    if (_PyBytes_Resize(&result, (Py_ssize_t)written) < 0) return NULL;
    return result;
}

/* PNG's Sub filter (filter type 1) of one row of big-endian sample bytes: each byte minus the
 * byte one pixel (bpp bytes) to its left, modulo 256, after the filter-type byte. */
static void sub_row(const uint8_t *row, size_t n, size_t bpp, uint8_t *out)
{
    out[0] = 1;
    for (size_t j = 0; j < bpp && j < n; j++) out[1 + j] = row[j];
    for (size_t j = bpp; j < n; j++) out[1 + j] = (uint8_t)(row[j] - row[j - bpp]);
}

CLONES static void sub_filter_rows(const uint8_t *src, size_t height, size_t row_bytes, size_t bpp,
                                   int swap16, uint8_t *dst, uint8_t *be)
{
    for (size_t r = 0; r < height; r++) {
        const uint8_t *row = src + r * row_bytes;
        if (swap16) { /* native little-endian 16-bit samples to PNG's big-endian bytes */
            for (size_t k = 0; k + 1 < row_bytes; k += 2) {
                be[k] = row[k + 1];
                be[k + 1] = row[k];
            }
            row = be;
        }
        sub_row(row, row_bytes, bpp, dst + r * (row_bytes + 1));
    }
}

static PyObject *sub_filter(PyObject *self, PyObject *args)
{
    Py_buffer src, dst;
    Py_ssize_t height, row_bytes, bpp;
    int swap16;
    if (!PyArg_ParseTuple(args, "y*w*nnnp:sub_filter", &src, &dst, &height, &row_bytes, &bpp, &swap16)) return NULL;
    PyObject *result = NULL;
    uint8_t *be = NULL;
    if (height < 0 || row_bytes < 0 || bpp < 1 || bpp > 8 || (swap16 && row_bytes % 2) ||
        src.len != height * row_bytes || dst.len != height * (row_bytes + 1)) {
        PyErr_SetString(PyExc_ValueError, "sub_filter: buffers do not match height x row bytes");
        goto done;
    }
    if (swap16 && !(be = PyMem_RawMalloc(row_bytes ? (size_t)row_bytes : 1))) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    sub_filter_rows(src.buf, (size_t)height, (size_t)row_bytes, (size_t)bpp, swap16, dst.buf, be);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyMem_RawFree(be);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"rle_deflate", rle_deflate, METH_O,
     "rle_deflate(data) -> bytes: the raw deflate stream (RFC 1951) of a C-contiguous buffer, "
     "literals and distance-1 runs under each block's own Huffman codes."},
    {"sub_filter", sub_filter, METH_VARARGS,
     "sub_filter(src, dst, height, row_bytes, bpp, swap16): PNG's Sub-filtered rows of src "
     "(height rows of row_bytes, 16-bit samples swapped to big-endian when swap16) into dst, "
     "height rows of a filter-type byte and row_bytes filtered bytes."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "shared._deflate",
                                    .m_doc = "PNG rows: Sub filter and run-length deflate (png.py).", .m_size = -1,
                                    .m_methods = methods};

PyMODINIT_FUNC PyInit__deflate(void)
{
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    PyErr_SetString(PyExc_ImportError, "shared._deflate writes words little-endian: this host is not");
    return NULL;
#else
    init_length_tables();
    PyObject *m = PyModule_Create(&module);
#if defined(__SSE2__)
    const char *scan = "sse2";
#else
    const char *scan = "bytewise";
#endif
    if (m && PyModule_AddStringConstant(m, "SCAN", scan) < 0) Py_CLEAR(m); /* how runs are found */
    return m;
#endif
}
