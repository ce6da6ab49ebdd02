/* C tests of the native runtime: bad inputs and bad files each give an error code and a
 * message; results do not depend on the thread or on batching; stage-by-stage calls check
 * their order. Run by tests/test_native.py (also under ASan/UBSan and valgrind).
 *
 *   test_native WEIGHTS_FILE              every check
 *   test_native WEIGHTS_FILE alloc N      open, N runs, close (valgrind counts the allocations) */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "berxit.h"

static int failures, checks;
#define CHECK(cond, ...) do { checks++; if (!(cond)) { failures++; printf("FAIL %s:%d: ", __FILE__, __LINE__); \
    printf(__VA_ARGS__); printf("\n"); } } while (0)

static unsigned char *file_data;
static size_t file_size;
static berxit_model_info info;

enum { B = 6, S = 12 };
static int64_t ids[B * S], types[B * S], mask[B * S];

static void make_inputs(void) {
    for (int r = 0; r < B; r++)
        for (int p = 0; p < S; p++) {
            int n = 2 + (r * 5) % (S - 1); /* lengths 2..12, mixed */
            ids[r * S + p] = p < n ? (p == 0 ? 2 : 5 + (r * 7 + p * 3) % (info.vocab_size - 5)) : 0;
            types[r * S + p] = p < n && p > n / 2 && info.type_vocab_size > 1;
            mask[r * S + p] = p < n;
        }
}

typedef struct { int32_t label[B], layer[B], status[B]; float value[B], conf[B], ent[B], lte[B], *logits; } outs;

static berxit_result result_of(outs *o) {
    return (berxit_result){o->label, o->value, o->layer, o->status, o->logits, o->conf, o->ent, o->lte};
}

static int run(berxit_model *m, const berxit_policy *p, outs *o, int32_t batch, int32_t seq) {
    berxit_result r = result_of(o);
    return berxit_run(m, ids, types, mask, batch, seq, p, &r);
}

static void expect_error(berxit_model *m, int rc, const char *what) {
    CHECK(rc != BERXIT_OK, "%s: accepted", what);
    CHECK(rc == BERXIT_OK || strlen(berxit_errmsg(m)) > 0, "%s: no message", what);
}

static void bad_inputs(berxit_model *m) {
    float lg[B * 8];
    outs o = {.logits = lg};
    berxit_result r = result_of(&o);
    berxit_policy conf = {BERXIT_POLICY_CONFIDENCE, 0.9f, 0, 0, NULL, 0};
    const berxit_policy *pol = info.task_kind == BERXIT_CLASSIFICATION ? &conf : NULL;
    expect_error(m, berxit_run(m, NULL, types, mask, 1, S, pol, &r), "ids NULL");
    expect_error(m, berxit_run(m, ids, types, NULL, 1, S, pol, &r), "mask NULL");
    expect_error(m, berxit_run(m, ids, types, mask, 1, S, pol, NULL), "result NULL");
    berxit_result nolayer = r;
    nolayer.exit_layer = NULL;
    expect_error(m, berxit_run(m, ids, types, mask, 1, S, pol, &nolayer), "result.exit_layer NULL");
    expect_error(m, run(m, pol, &o, 0, S), "batch 0");
    expect_error(m, run(m, pol, &o, -3, S), "batch < 0");
    expect_error(m, run(m, pol, &o, BERXIT_MAX_BATCH + 1, S), "batch too large");
    expect_error(m, run(m, pol, &o, 1, 0), "seq 0");
    expect_error(m, run(m, pol, &o, 1, info.max_seq_len + 1), "seq > max_seq_len");
    CHECK(berxit_run(NULL, ids, types, mask, 1, S, pol, &r) == BERXIT_ERR_ARG, "NULL handle");
    int64_t save = ids[1];
    ids[1] = info.vocab_size;
    expect_error(m, run(m, pol, &o, 1, S), "id == vocab");
    ids[1] = -1;
    expect_error(m, run(m, pol, &o, 1, S), "negative id");
    ids[1] = save;
    save = types[1];
    types[1] = info.type_vocab_size;
    expect_error(m, run(m, pol, &o, 1, S), "type id out of range");
    types[1] = save;
    save = mask[1];
    mask[1] = 2;
    expect_error(m, run(m, pol, &o, 1, S), "mask value 2");
    mask[1] = save;
    int64_t m0 = mask[0];
    mask[0] = 0;
    expect_error(m, run(m, pol, &o, 1, S), "mask with a hole / empty row");
    mask[0] = m0;
    /* policies */
    berxit_policy p;
    p = conf; p.threshold = NAN;
    if (info.task_kind == BERXIT_CLASSIFICATION) {
        expect_error(m, run(m, &p, &o, 1, S), "NaN threshold");
        p.threshold = 1.5f;
        expect_error(m, run(m, &p, &o, 1, S), "confidence > 1");
        p = (berxit_policy){BERXIT_POLICY_ENTROPY, 5.0f, 0, 0, NULL, 0};
        expect_error(m, run(m, &p, &o, 1, S), "entropy > ln C");
        float per[2] = {0.5f, NAN};
        p = (berxit_policy){BERXIT_POLICY_CONFIDENCE, 0.5f, 0, 0, per, 1};
        expect_error(m, run(m, &p, &o, 1, S), "per-layer count");
        p.num_per_layer = 2;
        if (info.num_exits == 2) expect_error(m, run(m, &p, &o, 1, S), "per-layer NaN");
    } else {
        p = conf;
        expect_error(m, run(m, &p, &o, 1, S), "confidence on regression");
        p = (berxit_policy){BERXIT_POLICY_PATIENCE, 0.0f, 0, 2, NULL, 0};
        expect_error(m, run(m, &p, &o, 1, S), "regression patience without tolerance");
    }
    p = (berxit_policy){BERXIT_POLICY_LTE, INFINITY, 0, 0, NULL, 0};
    expect_error(m, run(m, &p, &o, 1, S), "lte infinite threshold");
    p = (berxit_policy){BERXIT_POLICY_FIXED, 0.0f, info.num_layers + 1, 0, NULL, 0};
    expect_error(m, run(m, &p, &o, 1, S), "fixed layer out of range");
    p = (berxit_policy){BERXIT_POLICY_PATIENCE, 0.0f, 0, 0, NULL, 0};
    expect_error(m, run(m, &p, &o, 1, S), "patience 0");
    p = (berxit_policy){99, 0.5f, 0, 0, NULL, 0};
    expect_error(m, run(m, &p, &o, 1, S), "unknown policy");
    /* workspaces: calls out of order */
    berxit_workspace *ws;
    CHECK(berxit_workspace_new(m, &ws) == BERXIT_OK, "workspace");
    float head[B * 8];
    CHECK(berxit_ws_stage(ws, 0, head) == BERXIT_ERR_STATE && strlen(berxit_ws_errmsg(ws)), "stage before embed");
    CHECK(berxit_ws_embed(ws, ids, types, mask, B, S) == BERXIT_OK, "embed");
    CHECK(berxit_ws_stage(ws, 1, head) == BERXIT_ERR_STATE, "stage out of order");
    CHECK(berxit_ws_stage(ws, 0, head) == BERXIT_OK, "stage 0");
    int64_t rows[2] = {3, 1};
    CHECK(berxit_ws_keep(ws, rows, 2) == BERXIT_ERR_ARG, "keep: decreasing rows");
    rows[0] = 1; rows[1] = B;
    CHECK(berxit_ws_keep(ws, rows, 2) == BERXIT_ERR_ARG, "keep: row out of range");
    /* hidden states handed to another workspace between stages: the same next stage */
    if (info.num_exits >= 2) {
        int32_t L = berxit_ws_max_len(ws), H = info.hidden_size;
        CHECK(L > 0 && L <= S, "max_len %d", L);
        float *hid = malloc(sizeof(float) * (size_t)B * S * (size_t)H), want[B * 8], got[B * 8];
        int64_t msk[B * S];
        CHECK(berxit_ws_save(ws, hid, msk, L - 1) == BERXIT_ERR_ARG, "save: seq too short");
        CHECK(berxit_ws_save(ws, NULL, msk, L) == BERXIT_ERR_ARG, "save: NULL");
        CHECK(berxit_ws_save(ws, hid, msk, L) == BERXIT_OK, "save: %s", berxit_ws_errmsg(ws));
        berxit_workspace *w2;
        CHECK(berxit_workspace_new(m, &w2) == BERXIT_OK, "workspace 2");
        CHECK(berxit_ws_save(w2, hid, msk, L) == BERXIT_ERR_STATE, "save before a stage");
        CHECK(berxit_ws_load(w2, hid, msk, B, L, 0) == BERXIT_ERR_ARG, "load: stage 0");
        CHECK(berxit_ws_load(w2, hid, msk, B, L, info.num_exits) == BERXIT_ERR_ARG, "load: stage past the last");
        CHECK(berxit_ws_load(w2, hid, msk, 0, L, 1) == BERXIT_ERR_ARG, "load: batch 0");
        CHECK(berxit_ws_load(w2, hid, msk, B, info.max_seq_len + 1, 1) == BERXIT_ERR_ARG, "load: seq too long");
        int64_t m0 = msk[0];
        msk[0] = 0;
        CHECK(berxit_ws_load(w2, hid, msk, B, L, 1) == BERXIT_ERR_INPUT, "load: row without a token");
        msk[0] = m0;
        CHECK(berxit_ws_stage(w2, 1, got) == BERXIT_ERR_STATE, "stage after a refused load");
        CHECK(berxit_ws_load(w2, hid, msk, B, L, 1) == BERXIT_OK, "load: %s", berxit_ws_errmsg(w2));
        CHECK(berxit_ws_stage(ws, 1, want) == BERXIT_OK && berxit_ws_stage(w2, 1, got) == BERXIT_OK, "stage 1");
        CHECK(memcmp(want, got, sizeof(float) * B * (size_t)(info.num_outputs + info.has_lte)) == 0,
              "stage 1 after load differs");
        berxit_workspace_free(w2);
        free(hid);
    }
    berxit_workspace_free(ws);
}

static berxit_model *open_copy(const unsigned char *d, size_t n, int *rc) {
    berxit_model *m = NULL;
    *rc = berxit_open_memory(d, n, &m);
    return m;
}

static uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static void wr32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }

static void bad_files(void) {
    int rc;
    berxit_model *m = NULL;
    CHECK(berxit_open("/nonexistent/berxit", &m) == BERXIT_ERR_IO && m == NULL && strlen(berxit_open_errmsg()),
          "missing file");
    CHECK(berxit_open("/", &m) != BERXIT_OK && strlen(berxit_open_errmsg()), "folder without weights");
    CHECK(berxit_open(NULL, &m) == BERXIT_ERR_ARG, "NULL path");
    CHECK(berxit_open_memory(file_data, file_size, NULL) == BERXIT_ERR_ARG, "NULL out");
    unsigned char *c = malloc(file_size);
    /* truncations: every prefix below the header, then some inside the table and the data */
    size_t cuts[] = {0, 1, 7, 8, 64, 127, 128, 200, 1000, file_size / 2, file_size - 64, file_size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        if (cuts[i] >= file_size) continue;
        m = open_copy(file_data, cuts[i], &rc);
        CHECK(rc == BERXIT_ERR_FORMAT && !m && strlen(berxit_open_errmsg()), "truncated to %zu bytes: rc %d", cuts[i], rc);
    }
    struct { size_t off; uint32_t val; const char *what; } edits[] = {
        {0, 0x58585858u, "wrong magic"}, {8, 2, "wrong version"}, {12, 64, "header size"},
        {16, 0, "0 layers"}, {24, 7, "heads not dividing hidden"}, {32, 0x7fffffffu, "huge vocab"},
        {44, 0, "0 outputs"}, {48, 5, "task kind"}, {52, 9, "pooling"}, {56, 3, "activation"},
        {64, 100000, "max_seq_len"}, {68, 0, "0 exits"}, {72, 0xbf800000u, "negative eps"},
        {76, 0xffffffffu, "tensor count"}, {88, 0xfffffff0u, "table offset"}, {96, 3, "data offset"},
        {104, 5, "file size"}, {112, 1, "checksum"}, {120, 1, "flags"}};
    for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
        memcpy(c, file_data, file_size);
        wr32(c + edits[i].off, edits[i].val);
        m = open_copy(c, file_size, &rc);
        CHECK(rc == BERXIT_ERR_FORMAT && !m && strlen(berxit_open_errmsg()), "%s: rc %d", edits[i].what, rc);
        berxit_close(m);
    }
    /* the tensor table: dtype, ndim, shape, offset, size, name of the first entry */
    uint64_t table;
    memcpy(&table, file_data + 88, 8);
    size_t entry_edits[][2] = {{56, 2}, {60, 0}, {60, 5}, {64, 1}, {80, 1}, {84, 0xffff}, {88, 12}, {0, 0}};
    for (size_t i = 0; i < sizeof entry_edits / sizeof entry_edits[0]; i++) {
        memcpy(c, file_data, file_size);
        wr32(c + table + entry_edits[i][0], (uint32_t)entry_edits[i][1]);
        m = open_copy(c, file_size, &rc);
        CHECK(rc == BERXIT_ERR_FORMAT && !m, "table edit %zu at +%zu: rc %d", i, entry_edits[i][0], rc);
        berxit_close(m);
    }
    memcpy(c, file_data, file_size); /* the second entry renamed as the first: a duplicate */
    memcpy(c + table + 96, c + table, 56);
    m = open_copy(c, file_size, &rc);
    CHECK(rc == BERXIT_ERR_FORMAT && !m, "duplicate tensor name: rc %d", rc);
    memcpy(c, file_data, file_size); /* a flipped bit in the data */
    c[file_size - 100] ^= 4;
    m = open_copy(c, file_size, &rc);
    CHECK(rc == BERXIT_ERR_FORMAT && !m && strstr(berxit_open_errmsg(), "checksum"), "flipped data bit: rc %d", rc);
    (void)rd32;
    free(c);
}

typedef struct { berxit_model *m; const outs *ref; int use_ws; int bad; } thread_arg;

static void *worker(void *p) {
    thread_arg *a = p;
    float lg[B * 8];
    berxit_policy pol = {BERXIT_POLICY_FIXED, 0.0f, info.num_layers, 0, NULL, 0};
    berxit_workspace *ws = NULL;
    float head[B * 8];
    if (a->use_ws && berxit_workspace_new(a->m, &ws) != BERXIT_OK) { a->bad++; return NULL; }
    for (int it = 0; it < 30; it++) {
        if (a->use_ws) {
            if (berxit_ws_embed(ws, ids, types, mask, B, S) != BERXIT_OK) { a->bad++; continue; }
            for (int k = 0; k < info.num_exits; k++)
                if (berxit_ws_stage(ws, k, head) != BERXIT_OK) a->bad++;
            int W = info.num_outputs + info.has_lte;
            for (int r = 0; r < B; r++)
                for (int j = 0; j < info.num_outputs; j++)
                    if (head[r * W + j] != a->ref->logits[r * info.num_outputs + j]) a->bad++;
        } else {
            outs o = {.logits = lg};
            if (run(a->m, &pol, &o, B, S) != BERXIT_OK) { a->bad++; continue; }
            if (memcmp(lg, a->ref->logits, sizeof(float) * B * (size_t)info.num_outputs) ||
                memcmp(o.layer, a->ref->layer, sizeof o.layer)) a->bad++;
        }
    }
    berxit_workspace_free(ws);
    return NULL;
}

static void threads_and_batching(berxit_model *m) {
    float ref_lg[B * 8], one_lg[8];
    outs ref = {.logits = ref_lg};
    berxit_policy pol = {BERXIT_POLICY_FIXED, 0.0f, info.num_layers, 0, NULL, 0};
    CHECK(run(m, &pol, &ref, B, S) == BERXIT_OK, "reference run: %s", berxit_errmsg(m));
    /* each row alone (its own length, no padding) gives its batched values */
    for (int r = 0; r < B; r++) {
        outs one = {.logits = one_lg};
        berxit_result res = result_of(&one);
        CHECK(berxit_run(m, ids + r * S, types + r * S, mask + r * S, 1, S, &pol, &res) == BERXIT_OK, "row %d", r);
        for (int j = 0; j < info.num_outputs; j++)
            CHECK(fabsf(one_lg[j] - ref_lg[r * info.num_outputs + j]) < 1e-5f, "row %d alone differs", r);
    }
    /* two threads per workspace (the helper splits the products' panels): the same values */
    CHECK(berxit_set_threads(m, 3) == BERXIT_ERR_ARG, "3 threads refused");
    CHECK(berxit_set_threads(m, 2) == BERXIT_OK, "2 threads");
    float two_lg[B * 8];
    outs two = {.logits = two_lg};
    CHECK(run(m, &pol, &two, B, S) == BERXIT_OK, "two-thread run");
    CHECK(memcmp(two_lg, ref_lg, sizeof(float) * B * (size_t)info.num_outputs) == 0, "two threads give other values");
    pthread_t t[4];
    thread_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (thread_arg){m, &ref, i % 2, 0};
        pthread_create(&t[i], NULL, worker, &a[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        CHECK(a[i].bad == 0, "thread %d (%s): %d results differ from the single-thread run", i,
              a[i].use_ws ? "own workspace" : "shared handle", a[i].bad);
    }
}

static int read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    file_data = malloc((size_t)n);
    file_size = fread(file_data, 1, (size_t)n, f);
    fclose(f);
    return file_size == (size_t)n ? 0 : -1;
}

/* the WordPiece tokenizer of the artifact holding this weights file (ARTIFACT/native/) */
static void tokenizer_checks(const char *weights) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", weights);
    char *cut = strstr(dir, "/native_weights.bin");
    if (!cut) return;
    *cut = 0;
    berxit_tokenizer *t;
    if (berxit_tokenizer_open(dir, &t) != BERXIT_OK) { printf("note: no tokenizer (%s)\n", berxit_open_errmsg()); return; }
    int64_t ids[16], tt[16];
    int32_t n, trunc;
    CHECK(berxit_tokenize(t, "the cat", "a dog", 16, ids, tt, &n, &trunc) == BERXIT_OK && n >= 5 && !trunc, "pair");
    CHECK(tt[0] == 0 && tt[n - 1] == 1, "type ids");
    CHECK(berxit_tokenize(t, "\xff\xfe", NULL, 16, ids, tt, &n, &trunc) == BERXIT_ERR_INPUT &&
          strlen(berxit_tokenizer_errmsg(t)), "invalid UTF-8");
    CHECK(berxit_tokenize(t, "x", "y", 2, ids, tt, &n, &trunc) == BERXIT_ERR_ARG, "max_len too small");
    CHECK(berxit_tokenize(t, NULL, NULL, 16, ids, tt, &n, &trunc) == BERXIT_ERR_ARG, "NULL text");
    char *big = malloc(20001);
    for (int i = 0; i < 20000; i++) big[i] = "ab c\xc3\xa9,"[i % 7];
    big[20000] = 0;
    CHECK(berxit_tokenize(t, big, big, 16, ids, tt, &n, &trunc) == BERXIT_OK && n == 16 && trunc, "long pair truncated");
    free(big);
    berxit_tokenizer *u;
    CHECK(berxit_tokenizer_open("/nonexistent", &u) != BERXIT_OK && strlen(berxit_open_errmsg()), "no tokenizer files");
    berxit_tokenizer_close(t);
}

int main(int argc, char **argv) {
    if (argc < 2 || read_file(argv[1]) != 0) { fprintf(stderr, "usage: %s WEIGHTS_FILE [alloc N]\n", argv[0]); return 2; }
    berxit_model *m;
    if (berxit_open(argv[1], &m) != BERXIT_OK) { printf("FAIL open: %s\n", berxit_open_errmsg()); return 1; }
    berxit_info(m, &info);
    make_inputs();
    if (argc == 4 && strcmp(argv[2], "alloc") == 0) {
        float lg[B * 8];
        berxit_policy pol = {BERXIT_POLICY_FIXED, 0.0f, info.num_layers, 0, NULL, 0};
        for (int i = 0; i < atoi(argv[3]); i++) {
            outs o = {.logits = lg};
            if (run(m, &pol, &o, B, S) != BERXIT_OK) return 1;
        }
        berxit_close(m);
        free(file_data);
        return 0;
    }
    int nap = argc == 4 && strcmp(argv[2], "nap") == 0; /* the same with a pause before each run: the helper
                                                             falls asleep and each run wakes it ahead of its jobs */
    if (argc == 4 && (strcmp(argv[2], "stress") == 0 || nap)) { /* back-to-back jobs of changing sizes, two threads */
        float lg[B * 8], ref_lg[B * 8];
        berxit_policy pol = {BERXIT_POLICY_FIXED, 0.0f, info.num_layers, 0, NULL, 0};
        outs ref = {.logits = ref_lg};
        int rc = run(m, &pol, &ref, B, S), differ = 0;
        if (rc == BERXIT_OK) rc = berxit_set_threads(m, 2);
        for (int i = 0; rc == BERXIT_OK && i < atoi(argv[3]); i++) {
            outs o = {.logits = lg};
            int32_t n = 1 + i % B;
            if (nap) nanosleep(&(struct timespec){0, 300000L}, NULL); /* > the helper's 100 us of spinning */
            rc = run(m, &pol, &o, n, S);
            for (int j = 0; rc == BERXIT_OK && j < n * info.num_outputs; j++) differ += fabsf(lg[j] - ref_lg[j]) > 1e-5f;
        }
        printf("%s %s: %s runs, %d logits differ from one thread %s\n", rc == BERXIT_OK && !differ ? "ok" : "FAILED",
               argv[2], argv[3], differ, rc == BERXIT_OK ? "" : berxit_errmsg(m));
        berxit_close(m);
        free(file_data);
        return rc != BERXIT_OK || differ;
    }
    bad_inputs(m);
    bad_files();
    threads_and_batching(m);
    tokenizer_checks(argv[1]);
    berxit_close(m);
    free(file_data);
    printf("%s: %d checks, %d failures\n", failures ? "FAILED" : "ok", checks, failures);
    return failures != 0;
}
