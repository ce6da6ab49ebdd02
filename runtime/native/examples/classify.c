/* classify ARTIFACT_DIR TOKEN_ID... : one row through the early-exit model, printed.
 * Build: cc -std=c11 -O2 -Iruntime/native runtime/native/examples/classify.c runtime/native/[a-z]*.c -lm -lpthread */
#include <stdio.h>
#include <stdlib.h>

#include "berxit.h"

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s ARTIFACT_DIR TOKEN_ID...\n", argv[0]); return 2; }
    berxit_model *m;
    if (berxit_open(argv[1], &m) != BERXIT_OK) { fprintf(stderr, "error: %s\n", berxit_open_errmsg()); return 1; }
    berxit_model_info info;
    berxit_info(m, &info);
    int32_t seq = argc - 2;
    int64_t *ids = calloc((size_t)seq, sizeof *ids), *types = calloc((size_t)seq, sizeof *types);
    int64_t *mask = calloc((size_t)seq, sizeof *mask);
    float *logits = calloc((size_t)info.num_outputs, sizeof *logits);
    for (int32_t i = 0; i < seq; i++) { ids[i] = strtoll(argv[i + 2], NULL, 10); mask[i] = 1; }
    /* confidence >= 0.9 for classifiers, LTE >= 0.5 for regressors (fixed: the last layer without LTE) */
    berxit_policy pol = {BERXIT_POLICY_CONFIDENCE, 0.9f, 0, 0, NULL, 0};
    if (info.task_kind == BERXIT_REGRESSION)
        pol = info.has_lte ? (berxit_policy){BERXIT_POLICY_LTE, 0.5f, 0, 0, NULL, 0}
                           : (berxit_policy){BERXIT_POLICY_FIXED, 0.0f, info.num_layers, 0, NULL, 0};
    int32_t label, layer, status;
    float value;
    berxit_result res = {&label, &value, &layer, &status, logits, NULL, NULL, NULL};
    int rc = berxit_run(m, ids, types, mask, 1, seq, &pol, &res);
    if (rc != BERXIT_OK) fprintf(stderr, "error: %s\n", berxit_errmsg(m));
    else if (info.task_kind == BERXIT_CLASSIFICATION) printf("label=%d exit_layer=%d/%d\n", label, layer, info.num_layers);
    else printf("value=%.4f exit_layer=%d/%d\n", value, layer, info.num_layers);
    free(ids); free(types); free(mask); free(logits);
    berxit_close(m);
    return rc == BERXIT_OK ? 0 : 1;
}
