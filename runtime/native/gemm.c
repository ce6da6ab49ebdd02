/* Matrix products y[M, N] = x[M, K] W[K, N] + b, chosen at build time:
 *   -DBERXIT_OPENBLAS  cblas_sgemm of OpenBLAS (scipy-openblas32's `scipy_` prefixed symbols
 *                      with -DBERXIT_BLAS_PREFIX=scipy_; its own threads)
 *   default            a portable, cache-blocked sgemm: W packed once at open into panels of
 *                      NR columns (each k row of a panel contiguous), an MR x NR register
 *                      kernel over K blocks of 256 (one thread; GCC/Clang vector extensions,
 *                      which lower to SSE, AVX, AVX-512 or NEON as the target allows). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "simd.h"

#ifdef BERXIT_OPENBLAS
#include <cblas.h>
#ifndef BERXIT_BLAS_PREFIX
#define BERXIT_BLAS_PREFIX
#endif
#define BX_CAT2(a, b) a##b
#define BX_CAT(a, b) BX_CAT2(a, b)
#define BX_SGEMM BX_CAT(BERXIT_BLAS_PREFIX, cblas_sgemm)

const char *bx_blas_name(void) { return "openblas"; }
int bx_pack(bx_linear *l) { (void)l; return BERXIT_OK; }
size_t bx_panels(const bx_linear *l) { (void)l; return 1; } /* OpenBLAS runs its own threads */

void bx_linear_panels(const bx_linear *l, const float *x, int32_t rows, float *y, const float *res, size_t p0,
                      size_t p1) {
    if (p0 >= p1) return;
    size_t N = (size_t)l->out;
    for (int32_t i = 0; i < rows; i++) {
        float *yr = y + (size_t)i * N;
        memcpy(yr, l->b, sizeof(float) * N);
        if (res)
            for (size_t j = 0; j < N; j++) yr[j] += res[(size_t)i * N + j];
    }
    BX_SGEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, l->out, l->in, 1.0f, x, l->in, l->w, l->out, 1.0f, y,
             l->out);
    if (l->act == BX_ACT_GELU)
        for (size_t k = 0; k < (size_t)rows * N; k++) y[k] = bx_gelu1(y[k]);
}
#else

/* Register tile MR x NR: two vectors of VW floats per row. AVX-512: 8 x 32 (16 zmm accumulators);
 * otherwise 6 x 16 (12 ymm accumulators, or pairs of xmm on SSE / NEON). With AVX2 + FMA the
 * kernel is written with intrinsics (fused multiply-adds whatever -ffp-contract says, one kernel
 * per row count so a last partial block of rows costs only its rows). */
#if defined(__AVX512F__)
#define VW 16
#define MR 8
#elif defined(__AVX__)
#define VW 8
#define MR 6
#else /* SSE / NEON: 16-byte vectors (12 accumulators in 16 registers) */
#define VW 4
#define MR 6
#endif
#define NR (2 * VW)
#define KC 256
#ifndef BX_PREFETCH
#define BX_PREFETCH 256 /* floats ahead in the packed stream (16 k rows, 1 KiB) */
#endif
#ifndef BX_PREFETCH_HINT
#define BX_PREFETCH_HINT _MM_HINT_T0
#endif

typedef float v8 __attribute__((vector_size(VW * 4)));
typedef float v8u __attribute__((vector_size(VW * 4), aligned(4), may_alias)); /* unaligned loads / stores */
#define ld(p) (*(const v8u *)(p))
#define st(p, v) (*(v8u *)(p) = (v))

const char *bx_blas_name(void) { return "builtin"; }

/* W packed K block by K block, and within a block panel by panel (each k row of a panel: NR
 * contiguous columns): block [k0, k1) of panel p starts at k0 * Npad + p * (k1 - k0) * NR, so a
 * product reads the packed weights front to back (at batch 1 they stream from memory: the
 * hardware prefetchers and the kernel's prefetches see one sequential stream per thread). */
static size_t block_offset(size_t K, size_t panels, size_t k0, size_t p) {
    size_t k1 = k0 + KC < K ? k0 + KC : K;
    return k0 * panels * NR + p * (k1 - k0) * NR;
}

int bx_pack(bx_linear *l) {
    size_t K = (size_t)l->in, N = (size_t)l->out, panels = (N + NR - 1) / NR;
    l->packed = aligned_alloc(64, panels * K * NR * sizeof(float));
    if (!l->packed) return BERXIT_ERR_NOMEM;
    for (size_t k0 = 0; k0 < K; k0 += KC) {
        size_t k1 = k0 + KC < K ? k0 + KC : K;
        for (size_t p = 0; p < panels; p++) {
            float *dst = l->packed + block_offset(K, panels, k0, p);
            for (size_t k = k0; k < k1; k++)
                for (size_t j = 0; j < NR; j++) {
                    size_t col = p * NR + j;
                    dst[(k - k0) * NR + j] = col < N ? l->w[k * N + col] : 0.0f;
                }
        }
    }
    return BERXIT_OK;
}

#if defined(BX_AVX2) && !defined(__AVX512F__)
#if defined(__clang__)
#define BX_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define BX_UNROLL _Pragma("GCC unroll 8")
#else
#define BX_UNROLL
#endif

/* the epilogue's GELU, on the stored tile (kept out of the kernel: the accumulators stay in registers) */
static __attribute__((noinline)) void gelu_rows(float *const out[MR], int mr) {
    for (int r = 0; r < mr; r++) {
        _mm256_storeu_ps(out[r], bx_gelu8(_mm256_loadu_ps(out[r])));
        _mm256_storeu_ps(out[r] + 8, bx_gelu8(_mm256_loadu_ps(out[r] + 8)));
    }
}

/* rows 0..mr-1 (mr <= MR, a constant after inlining) of x, the 16 columns of one panel, k in
 * [k0, k1): out[r] = start[r] + x[r] . panel; gelu: then GELU of the result */
static inline __attribute__((always_inline)) void kernel_fma(const float *x, size_t K, const float *bp, size_t k0,
                                                             size_t k1, float *const out[MR], const float *const start[MR],
                                                             const int mr, int gelu) {
    __m256 c0[MR], c1[MR];
    const float *a[MR];
    BX_UNROLL for (int r = 0; r < mr; r++) {
        c0[r] = _mm256_loadu_ps(start[r]);
        c1[r] = _mm256_loadu_ps(start[r] + 8);
        a[r] = x + (size_t)r * K;
    }
    for (size_t k = k0; k < k1; k++) {
        const float *bk = bp + (k - k0) * NR;
        _mm_prefetch((const char *)(bk + BX_PREFETCH), BX_PREFETCH_HINT);
        __m256 b0 = _mm256_load_ps(bk), b1 = _mm256_load_ps(bk + 8);
        BX_UNROLL for (int r = 0; r < mr; r++) {
            __m256 av = _mm256_broadcast_ss(a[r] + k);
            c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
            c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
        }
    }
    BX_UNROLL for (int r = 0; r < mr; r++) {
        _mm256_storeu_ps(out[r], c0[r]);
        _mm256_storeu_ps(out[r] + 8, c1[r]);
    }
    if (gelu) gelu_rows(out, mr);
}

static void kernel(const float *x, size_t K, const float *bp, size_t k0, size_t k1, float *const out[MR], int mr,
                   const float *const start[MR], int gelu) {
    switch (mr) {
    case 6: kernel_fma(x, K, bp, k0, k1, out, start, 6, gelu); break;
    case 5: kernel_fma(x, K, bp, k0, k1, out, start, 5, gelu); break;
    case 4: kernel_fma(x, K, bp, k0, k1, out, start, 4, gelu); break;
    case 3: kernel_fma(x, K, bp, k0, k1, out, start, 3, gelu); break;
    case 2: kernel_fma(x, K, bp, k0, k1, out, start, 2, gelu); break;
    default: kernel_fma(x, K, bp, k0, k1, out, start, 1, gelu); break;
    }
}
#else
/* portable: rows 0..mr-1 of x (mr <= MR), columns of one panel, k in [k0, k1) */
static void kernel(const float *x, size_t K, const float *bp, size_t k0, size_t k1, float *const out[MR], int mr,
                   const float *const start[MR], int gelu) {
    v8 c[MR][2];
    for (int r = 0; r < MR; r++) {
        const float *s = start[r < mr ? r : 0];
        c[r][0] = ld(s);
        c[r][1] = ld(s + VW);
    }
    const float *a[MR];
    for (int r = 0; r < MR; r++) a[r] = x + (size_t)(r < mr ? r : 0) * K;
    for (size_t k = k0; k < k1; k++) {
        v8 b0 = ld(bp + (k - k0) * NR), b1 = ld(bp + (k - k0) * NR + VW);
        for (int r = 0; r < MR; r++) {
            v8 av = (v8){0} + a[r][k];
            c[r][0] += av * b0;
            c[r][1] += av * b1;
        }
    }
    for (int r = 0; r < mr; r++) {
        st(out[r], c[r][0]);
        st(out[r] + VW, c[r][1]);
        if (gelu)
            for (int j = 0; j < NR; j++) out[r][j] = bx_gelu1(out[r][j]);
    }
}
#endif

size_t bx_panels(const bx_linear *l) { return ((size_t)l->out + NR - 1) / NR; }

/* columns of panels [p0, p1) of y = act(x W + b (+ res)) */
void bx_linear_panels(const bx_linear *l, const float *x, int32_t rows, float *y, const float *res, size_t p0,
                      size_t p1) {
    size_t K = (size_t)l->in, N = (size_t)l->out, panels = bx_panels(l);
    float bias_pad[NR], buf[MR][NR];
    for (size_t k0 = 0; k0 < K; k0 += KC) {
        size_t k1 = k0 + KC < K ? k0 + KC : K;
        int gelu = l->act == BX_ACT_GELU && k1 == K;
        for (size_t p = p0; p < p1; p++) {
            const float *bp = l->packed + block_offset(K, panels, k0, p);
            size_t n0 = p * NR, nn = N - n0 < NR ? N - n0 : NR;
            if (k0 == 0 && !res)
                for (size_t j = 0; j < NR; j++) bias_pad[j] = j < nn ? l->b[n0 + j] : 0.0f;
            for (int32_t i = 0; i < rows; i += MR) {
                int mr = rows - i < MR ? rows - i : MR;
                float *out[MR];
                const float *start[MR];
                for (int r = 0; r < mr; r++) {
                    size_t row = (size_t)(i + r);
                    float *yr = y + row * N + n0;
                    if (k0 == 0 && res) { /* start from b + res, in the output (or the buffer) */
                        float *s = nn == NR ? yr : buf[r];
                        const float *rr = res + row * N + n0;
                        for (size_t j = 0; j < NR; j++) s[j] = j < nn ? l->b[n0 + j] + rr[j] : 0.0f;
                        start[r] = s;
                    } else if (k0 > 0 && nn == NR) start[r] = yr;
                    else if (k0 > 0) { memcpy(buf[r], yr, nn * sizeof(float)); start[r] = buf[r]; }
                    else start[r] = bias_pad;
                    out[r] = nn == NR ? yr : buf[r];
                }
                kernel(x + (size_t)i * K, K, bp, k0, k1, out, mr, start, gelu);
                if (nn < NR)
                    for (int r = 0; r < mr; r++) memcpy(y + (size_t)(i + r) * N + n0, buf[r], nn * sizeof(float));
            }
        }
    }
}
#endif
