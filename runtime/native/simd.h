/* Vector helpers (internal): AVX2 + FMA intrinsics where the target has them (BX_AVX2 set),
 * otherwise nothing here is used and the callers keep their portable C loops. FMA comes from
 * the intrinsics themselves, so it does not depend on -ffp-contract (off under -std=c11). */
#ifndef BERXIT_SIMD_H
#define BERXIT_SIMD_H

#include <stdint.h>
#include <string.h>

/* exp(x) for x <= 0, branch free (vectorizes): 2^n * p(r), |r| <= ln2 / 2, rel. error ~2e-7 */
static inline float bx_exp_neg(float x) {
    float keep = x == x ? 1.0f : x; /* NaN in, NaN out (as the graphs give) */
    x = x >= -87.0f ? (x <= 0.0f ? x : 0.0f) : -87.0f; /* NaN and -inf -> -87: a defined int conversion */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest, no libm call */
    float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666666f + r * (0.041666418f + r * (0.0083333949f
              + r * 0.0013888889f)))));
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, 4);
    return p * s * keep;
}

/* GELU with erf (not the tanh form): erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, as
 * onnxruntime's own vectorized erf is an approximation at float precision too) */
static inline float bx_gelu1(float x) {
    float z = x * 0.70710678118654752f, a = z < 0.0f ? -z : z;
    float t = 1.0f / (1.0f + 0.3275911f * a);
    float y = 1.0f - t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f
              + t * 1.061405429f)))) * bx_exp_neg(-a * a);
    return 0.5f * x * (1.0f + (z < 0.0f ? -y : y));
}

#if defined(__AVX2__) && defined(__FMA__) && !defined(BERXIT_PORTABLE)
#define BX_AVX2 1
#include <immintrin.h>

static inline float bx_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float bx_hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* exp(x) for x <= 0 (larger x as 0, below -87 as -87; NaN lanes give 1, callers that can see
 * NaN put it back): 2^n * p(r), |r| <= ln2 / 2, rel. error ~2e-7 (the scalar exp_neg's math) */
static inline __m256 bx_exp_neg8(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_setzero_ps()), _mm256_set1_ps(-87.0f));
    const __m256 shift = _mm256_set1_ps(12582912.0f);
    __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), shift), shift);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
    __m256 p = _mm256_set1_ps(0.0013888889f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.0083333949f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.041666418f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.16666666f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* erf GELU, Abramowitz & Stegun 7.1.26 for erf (|error| < 1.5e-7), NaN in -> NaN out */
static inline __m256 bx_gelu8(__m256 x) {
    __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));
    __m256 sign = _mm256_and_ps(z, _mm256_set1_ps(-0.0f));
    __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), z);
    __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), a, _mm256_set1_ps(1.0f)));
    __m256 q = _mm256_set1_ps(1.061405429f);
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(-1.453152027f));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(1.421413741f));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(-0.284496736f));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(0.254829592f));
    q = _mm256_mul_ps(q, t);
    __m256 e = bx_exp_neg8(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), a), a));
    __m256 y = _mm256_fnmadd_ps(q, e, _mm256_set1_ps(1.0f)); /* erf(|z|) */
    y = _mm256_xor_ps(y, sign);
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(_mm256_set1_ps(1.0f), y));
}
#endif

#endif
