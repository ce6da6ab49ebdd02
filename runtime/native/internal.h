/* Internal structures of the native runtime (not installed; hosts include berxit.h only). */
#ifndef BERXIT_INTERNAL_H
#define BERXIT_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>

#include "berxit.h"

#define BX_ERR_LEN 320

typedef struct {
    int32_t layers, hidden, heads, intermediate, vocab, max_positions, type_vocab;
    int32_t num_outputs, task_kind, pooling, activation, has_lte, max_seq_len, num_exits;
    float eps;
} bx_config;

/* y = x W + b: W [in, out] row-major, b [out]; `packed`: W in 16-column panels (builtin sgemm). */
typedef struct {
    const float *w, *b;
    float *packed;
    int32_t in, out;
    int32_t act;                    /* BX_ACT_NONE, or BX_ACT_GELU: y = gelu(x W + b) */
} bx_linear;
#define BX_ACT_NONE 0
#define BX_ACT_GELU 1

typedef struct {
    bx_linear qkv, attn_out, ffn_in, ffn_out;
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
} bx_layer;

struct berxit_model {
    bx_config cfg;
    int32_t *exits;                 /* [num_exits] 1-based exit layers */
    unsigned char *file;            /* the whole weights file, 64-byte aligned */
    size_t file_size;
    const float *word, *pos, *type, *emb_ln_w, *emb_ln_b;
    bx_layer *layer;                /* [layers] */
    bx_linear *head;                /* [num_exits] */
    berxit_workspace *ws;           /* berxit_run's workspace, under `mu` */
    int32_t threads;                /* threads per workspace for the builtin sgemm (1 or 2) */
    pthread_mutex_t mu;
    char err[BX_ERR_LEN];
};

struct berxit_workspace {
    const berxit_model *m;
    int32_t rows;                   /* live rows */
    int32_t tokens;                 /* their real tokens in all */
    int32_t stage;                  /* stages run since embed; -1: no batch */
    size_t cap_tokens, cap_rows, cap_seq;
    int32_t *len, *start;           /* [cap_rows] per live row: tokens, first token */
    float *x, *qkv, *ctx, *tmp, *ffn, *scores, *kt, *pooled, *head; /* activations, packed tokens */
    /* berxit_run's loop state */
    int32_t *orig, *kidx, *prev_label, *count;
    float *prev_value;
    unsigned char *done;
    /* a helper thread for the matrix products (berxit_set_threads(m, 2)); started on first use */
    int32_t threads, helper_up;
    pthread_t helper;
    pthread_mutex_t tmu;
    pthread_cond_t cv_go, cv_done;
    atomic_uint gen;                /* job generation posted (the helper spins on it, then sleeps) */
    atomic_ullong next;             /* (generation << 32) | next unit to claim: both threads claim chunks */
    atomic_uint done_units;         /* units of the current job completed */
    atomic_uint job_units, job_chunk; /* read by a claimer that may be a job late: atomic */
    atomic_int quit, helper_sleeping, caller_sleeping;
    unsigned pokes;                 /* wake-ups ahead of a run (bx_threads_warm), under tmu */
    const bx_linear *job_l;
    const float *job_x, *job_res;
    float *job_y;
    int32_t job_rows;
    char err[BX_ERR_LEN];
};

/* errors: write a message and return the code */
int bx_fail(char *buf, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* weights.c: parse and check a weights file held in m->file; fills the model's pointers */
int bx_load_weights(berxit_model *m, char *err);
uint64_t bx_checksum(const unsigned char *p, size_t n);

/* gemm.c */
const char *bx_blas_name(void);
int bx_pack(bx_linear *l);          /* builtin sgemm: pack W into panels (no-op with BLAS) */
size_t bx_panels(const bx_linear *l);
/* y = act(x W + b (+ res)) for the column panels [p0, p1); res: NULL or [rows, out] added before act */
void bx_linear_panels(const bx_linear *l, const float *x, int32_t rows, float *y, const float *res, size_t p0,
                      size_t p1);
/* threads.c: the same for all panels, split between the calling thread and the workspace's helper */
void bx_linear_forward(berxit_workspace *ws, const bx_linear *l, const float *x, int32_t rows, float *y,
                       const float *res);
void bx_threads_stop(berxit_workspace *ws);
void bx_threads_warm(berxit_workspace *ws);
/* attention of all heads (split between the two threads like the products) */
void bx_attention_forward(berxit_workspace *ws);

/* forward.c */
int bx_ws_reserve(berxit_workspace *ws, size_t rows, size_t seq);
void bx_embed(berxit_workspace *ws, const int64_t *ids, const int64_t *tt, const int64_t *mask, int32_t seq);
void bx_layer_forward(berxit_workspace *ws, int32_t i);
/* heads [h0, h1) of every live row: ctx from qkv; sc [cap_seq + 8], kt [(cap_seq + 8) * head dim] scratch */
void bx_attention_heads(berxit_workspace *ws, int32_t h0, int32_t h1, float *sc, float *kt);
void bx_head_forward(berxit_workspace *ws, int32_t exit_index, float *out);
void bx_keep_rows(berxit_workspace *ws, const int32_t *rows, int32_t n);

/* policy.c */
int bx_check_policy(const berxit_model *m, const berxit_policy *p, char *err);
float bx_confidence(const float *logits, int32_t c);
float bx_entropy(const float *logits, int32_t c);
float bx_sigmoid(float x);
int32_t bx_argmax(const float *logits, int32_t c);

#endif
