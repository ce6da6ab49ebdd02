/* berxit.h -- early-exit inference for BERT-class models, in C11, without Python.
 *
 * Runs an artifact written by `python -m export.build` from its weights file
 * (ARTIFACT/native_weights.bin): embeddings, transformer layers, one exit head per exit layer,
 * the exit signals, and the early-exit loop with batch compaction (rows that exit leave the
 * batch). Every function returns BERXIT_OK (0) or an error code; the handle keeps a message for
 * its last error (berxit_errmsg), and a failed open leaves one in berxit_open_errmsg().
 *
 * Thread safety: a berxit_model is safe to share between threads. berxit_run serialises calls on
 * one handle with a mutex around the handle's workspace (for parallel runs, open one handle per
 * thread, or use one berxit_workspace per thread). A berxit_workspace is used by one thread at a
 * time. The model's weights are read-only after open. berxit_errmsg reflects the last failed call
 * on that handle by any thread; read it in the thread that got the error, before its next call.
 * The library has no global mutable state; berxit_open_errmsg is thread-local.
 *
 * Threads: see berxit_set_threads (the builtin sgemm can use one helper thread per workspace).
 *
 * Memory: the caller owns every input and output buffer. The workspace grows to the largest
 * (batch, sequence) seen and is reused: repeated calls at or below that size allocate nothing.
 * Inputs: int64 token ids, token type ids and an attention mask, [batch, seq] row-major, right
 * padded (each mask row is 1s then 0s, at least one 1). Token ids must lie in [0, vocab), type
 * ids in [0, type_vocab), seq <= max_seq_len, batch <= BERXIT_MAX_BATCH.
 */
#ifndef BERXIT_H
#define BERXIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BERXIT_VERSION_MAJOR 0
#define BERXIT_VERSION_MINOR 1
#define BERXIT_MAX_BATCH 4096

typedef enum {
    BERXIT_OK = 0,
    BERXIT_ERR_ARG = 1,        /* a NULL pointer, a size or value out of range */
    BERXIT_ERR_IO = 2,         /* the weights file cannot be opened or read */
    BERXIT_ERR_FORMAT = 3,     /* not a weights file, another version, truncated or corrupt */
    BERXIT_ERR_NOMEM = 4,      /* out of memory */
    BERXIT_ERR_INPUT = 5,      /* token ids / type ids / mask not valid for this model */
    BERXIT_ERR_POLICY = 6,     /* the exit policy does not fit this model */
    BERXIT_ERR_NONFINITE = 7,  /* a row's outputs are NaN or infinite (per row, in result.status) */
    BERXIT_ERR_STATE = 8       /* workspace calls out of order */
} berxit_status;

typedef enum { BERXIT_CLASSIFICATION = 0, BERXIT_REGRESSION = 1 } berxit_task_kind;
typedef enum { BERXIT_POOL_CLS = 0, BERXIT_POOL_MEAN = 1 } berxit_pooling;

typedef struct berxit_model berxit_model;         /* opaque: weights + one workspace + mutex */
typedef struct berxit_workspace berxit_workspace; /* opaque: scratch for one run at a time */

typedef struct {
    int32_t num_layers;     /* layers in the file */
    int32_t num_exits;      /* exit layers (every layer, unless the export chose a subset) */
    int32_t exits[64];      /* the first min(num_exits, 64) 1-based exit layers */
    int32_t num_outputs;    /* labels (classification) or 1 (regression) */
    int32_t task_kind;      /* berxit_task_kind */
    int32_t pooling;        /* berxit_pooling */
    int32_t has_lte;        /* 1 when the model has an LTE head (the lte signal and policy) */
    int32_t max_seq_len;    /* longest input the model takes (tokens) */
    int32_t hidden_size;
    int32_t num_heads;
    int32_t intermediate_size;
    int32_t vocab_size;
    int32_t type_vocab_size;
    const char *blas;       /* "openblas" or "builtin": the matrix products compiled in */
} berxit_model_info;

typedef enum {
    BERXIT_POLICY_CONFIDENCE = 1, /* max softmax >= threshold (classification) */
    BERXIT_POLICY_ENTROPY = 2,    /* softmax entropy (nats) <= threshold (classification) */
    BERXIT_POLICY_LTE = 3,        /* LTE certainty sigmoid(u) >= threshold (needs an LTE head) */
    BERXIT_POLICY_PATIENCE = 4,   /* same label (regression: |change| < threshold) `patience` exits in a row */
    BERXIT_POLICY_FIXED = 5,      /* exit at layer `exit_layer` (must be an exit layer) */
    BERXIT_POLICY_NONE = 6        /* no exit check: every row runs to the last layer */
} berxit_policy_kind;

typedef struct {
    int32_t kind;              /* berxit_policy_kind */
    float threshold;           /* confidence / entropy / lte; patience: regression tolerance (> 0) */
    int32_t exit_layer;        /* fixed: the 1-based layer */
    int32_t patience;          /* patience: consecutive agreeing exits (>= 1) */
    const float *per_layer;    /* confidence / entropy / lte: NULL, or one threshold per exit */
    int32_t num_per_layer;     /* entries of per_layer (== num_exits) */
} berxit_policy;

/* Caller-owned outputs, one entry per input row in input order. Any pointer may be NULL
 * (that output is not written), except exit_layer and status. */
typedef struct {
    int32_t *label;      /* [batch] argmax of the exit's logits (classification; -1 on error / regression) */
    float *value;        /* [batch] regression: the predicted value (logits[0]) */
    int32_t *exit_layer; /* [batch] 1-based layer the row left at */
    int32_t *status;     /* [batch] BERXIT_OK, or BERXIT_ERR_NONFINITE for a row with NaN / inf outputs */
    float *logits;       /* [batch * num_outputs] the exit's logits */
    float *confidence;   /* [batch] max softmax at the exit (NaN for regression) */
    float *entropy;      /* [batch] softmax entropy at the exit (NaN for regression) */
    float *lte;          /* [batch] LTE certainty at the exit (NaN without an LTE head) */
} berxit_result;

/* Open ARTIFACT_DIR (reads ARTIFACT_DIR/native_weights.bin) or a weights file path. The file
 * is read into memory and checked (magic, version, every size, offset, dtype and shape, the
 * checksum) before use. On failure *out is NULL and berxit_open_errmsg() says why. */
int berxit_open(const char *dir_or_weights_path, berxit_model **out);
/* The same from a weights file already in memory (copied; `data` may be freed afterwards). */
int berxit_open_memory(const void *data, size_t size, berxit_model **out);
const char *berxit_open_errmsg(void);

int berxit_info(const berxit_model *m, berxit_model_info *info);

/* One batch with early exit under `policy` (NULL: no exit check, the last layer). Returns
 * BERXIT_OK when every row was run (rows with non-finite outputs say so in result.status), or
 * an error code with nothing written for invalid arguments. */
int berxit_run(berxit_model *m, const int64_t *ids, const int64_t *type_ids, const int64_t *mask,
               int32_t batch, int32_t seq, const berxit_policy *policy, berxit_result *out);

/* Threads of the builtin matrix products per workspace: 1 (default) or 2 (one helper thread
 * per workspace, started on first use, blocked between products). Applies to the handle's
 * workspace and to workspaces created afterwards. OpenBLAS builds use OPENBLAS_NUM_THREADS. */
int berxit_set_threads(berxit_model *m, int32_t threads);

/* The last error's message on this handle ("" if none). Valid until the next call on it. */
const char *berxit_errmsg(const berxit_model *m);
void berxit_close(berxit_model *m);

/* -- stage by stage (what runtime/backends/native.py drives; hosts normally use berxit_run) --
 * embed a batch, run exit stages in order, keep only some rows (compaction). Each stage k
 * (0-based) runs the layers after exit k-1 up to exit k and writes the exit head's raw output
 * [live_rows, num_outputs (+1 LTE logit)] to head_out. */
int berxit_workspace_new(berxit_model *m, berxit_workspace **out);
void berxit_workspace_free(berxit_workspace *ws);
int berxit_ws_embed(berxit_workspace *ws, const int64_t *ids, const int64_t *type_ids, const int64_t *mask,
                    int32_t batch, int32_t seq);
int berxit_ws_stage(berxit_workspace *ws, int32_t k, float *head_out);
int berxit_ws_keep(berxit_workspace *ws, const int64_t *rows, int32_t n);
int32_t berxit_ws_rows(const berxit_workspace *ws);
/* For hosts that merge the rows of several workspaces between stages (a server batching across
 * requests). berxit_ws_max_len: the longest live row's tokens (0 without a batch).
 * berxit_ws_save: the live rows' hidden states after the stages run so far, padded:
 * hidden [rows, seq, hidden_size] (zeros past a row's length), mask [rows, seq] (1 on its tokens);
 * seq >= berxit_ws_max_len. berxit_ws_load: rows in that form (masks right padded, seq <=
 * max_seq_len) become the live rows, as if `stage` stages (1 .. num_exits - 1) had run on them;
 * the next berxit_ws_stage call is stage `stage`. */
int32_t berxit_ws_max_len(const berxit_workspace *ws);
int berxit_ws_save(berxit_workspace *ws, float *hidden, int64_t *mask, int32_t seq);
int berxit_ws_load(berxit_workspace *ws, const float *hidden, const int64_t *mask, int32_t batch, int32_t seq,
                   int32_t stage);
/* The last error's message on this workspace. */
const char *berxit_ws_errmsg(const berxit_workspace *ws);

/* -- WordPiece tokenizer (BERT uncased / cased), from ARTIFACT/native_vocab.txt, native_tokenizer.txt --
 * Gives the ids the artifact's tokenizer.json gives through the `tokenizers` library. Artifacts
 * with another tokenizer type have no native_tokenizer.txt: open fails with "unsupported
 * tokenizer; pass token ids". A tokenizer is read-only after open and safe to share between
 * threads; each call allocates scratch memory for its text (freed before it returns). */
typedef struct berxit_tokenizer berxit_tokenizer;
int berxit_tokenizer_open(const char *artifact_dir, berxit_tokenizer **out); /* errors: berxit_open_errmsg() */
/* text_b: NULL for single-text tasks. Writes n <= max_len ids ([CLS] A [SEP] (B [SEP]), longest
 * first truncation) and type ids (may be NULL); *truncated (may be NULL) = 1 when cut. Invalid
 * UTF-8 -> BERXIT_ERR_INPUT. */
int berxit_tokenize(berxit_tokenizer *t, const char *text_a, const char *text_b, int32_t max_len, int64_t *ids,
                    int64_t *type_ids, int32_t *n_out, int32_t *truncated);
const char *berxit_tokenizer_errmsg(const berxit_tokenizer *t);
void berxit_tokenizer_close(berxit_tokenizer *t);

#ifdef __cplusplus
}
#endif
#endif /* BERXIT_H */
