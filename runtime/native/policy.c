/* Exit signals and policy checks, as runtime/policies.py computes and validates them (float32,
 * log-softmax for the entropy, so no exp overflows). */
#include <math.h>

#include "internal.h"

float bx_confidence(const float *l, int32_t c) { /* max softmax = exp(0) / sum exp(l - max) */
    float mx = l[0], s = 0.0f;
    for (int32_t j = 1; j < c; j++) if (l[j] > mx) mx = l[j];
    for (int32_t j = 0; j < c; j++) s += expf(l[j] - mx);
    return 1.0f / s;
}

float bx_entropy(const float *l, int32_t c) { /* -sum p log p, logp = z - log sum exp z */
    float mx = l[0], s = 0.0f, e = 0.0f;
    for (int32_t j = 1; j < c; j++) if (l[j] > mx) mx = l[j];
    for (int32_t j = 0; j < c; j++) s += expf(l[j] - mx);
    float lse = logf(s);
    for (int32_t j = 0; j < c; j++) {
        float lp = (l[j] - mx) - lse;
        e += expf(lp) * lp;
    }
    return -e;
}

float bx_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

int32_t bx_argmax(const float *l, int32_t c) { /* the first maximum, as numpy's argmax */
    int32_t a = 0;
    for (int32_t j = 1; j < c; j++) if (l[j] > l[a]) a = j;
    return a;
}

static int check_threshold(const berxit_model *m, int32_t kind, float t, char *err) {
    if (!isfinite(t)) return bx_fail(err, BERXIT_ERR_POLICY, "policy threshold must be a finite number, got %g", (double)t);
    if ((kind == BERXIT_POLICY_CONFIDENCE || kind == BERXIT_POLICY_LTE) && !(t >= 0.0f && t <= 1.0f))
        return bx_fail(err, BERXIT_ERR_POLICY, "%s threshold must lie in [0, 1], got %g",
                       kind == BERXIT_POLICY_LTE ? "lte" : "confidence", (double)t);
    if (kind == BERXIT_POLICY_ENTROPY) {
        double hi = log(m->cfg.num_outputs > 2 ? m->cfg.num_outputs : 2) + 1e-6;
        if (!(t >= 0.0f && t <= hi))
            return bx_fail(err, BERXIT_ERR_POLICY, "entropy threshold must lie in [0, ln(%d) = %.4f], got %g",
                           m->cfg.num_outputs, hi - 1e-6, (double)t);
    }
    return BERXIT_OK;
}

int bx_check_policy(const berxit_model *m, const berxit_policy *p, char *err) {
    const bx_config *c = &m->cfg;
    int32_t k = p->kind;
    if (k < BERXIT_POLICY_CONFIDENCE || k > BERXIT_POLICY_NONE)
        return bx_fail(err, BERXIT_ERR_POLICY, "unknown policy kind %d (1 confidence .. 6 none)", k);
    if ((k == BERXIT_POLICY_CONFIDENCE || k == BERXIT_POLICY_ENTROPY) && c->task_kind != BERXIT_CLASSIFICATION)
        return bx_fail(err, BERXIT_ERR_POLICY, "confidence and entropy policies need a classification model (they "
                       "read the softmax); this is a regression model: use lte, patience or fixed");
    if (k == BERXIT_POLICY_LTE && !c->has_lte)
        return bx_fail(err, BERXIT_ERR_POLICY, "policy lte needs an LTE head, which this model does not have "
                       "(train with --lte)");
    if (p->per_layer != NULL) {
        if (k != BERXIT_POLICY_CONFIDENCE && k != BERXIT_POLICY_ENTROPY && k != BERXIT_POLICY_LTE)
            return bx_fail(err, BERXIT_ERR_POLICY, "per-layer thresholds apply to confidence, entropy and lte only");
        if (p->num_per_layer != c->num_exits)
            return bx_fail(err, BERXIT_ERR_POLICY, "%d per-layer thresholds for a model with %d exits",
                           p->num_per_layer, c->num_exits);
        for (int32_t i = 0; i < c->num_exits; i++) {
            int rc = check_threshold(m, k, p->per_layer[i], err);
            if (rc) return rc;
        }
        return BERXIT_OK;
    }
    if (k == BERXIT_POLICY_CONFIDENCE || k == BERXIT_POLICY_ENTROPY || k == BERXIT_POLICY_LTE)
        return check_threshold(m, k, p->threshold, err);
    if (k == BERXIT_POLICY_FIXED) {
        for (int32_t i = 0; i < c->num_exits; i++)
            if (m->exits[i] == p->exit_layer) return BERXIT_OK;
        return bx_fail(err, BERXIT_ERR_POLICY, "fixed exit layer %d has no exit in this model (its exits are layers "
                       "%d..%d, %d of them)", p->exit_layer, m->exits[0], m->exits[c->num_exits - 1], c->num_exits);
    }
    if (k == BERXIT_POLICY_PATIENCE) {
        if (p->patience < 1) return bx_fail(err, BERXIT_ERR_POLICY, "patience must be >= 1, got %d", p->patience);
        if (!isfinite(p->threshold) || p->threshold < 0.0f)
            return bx_fail(err, BERXIT_ERR_POLICY, "patience tolerance must be a finite number >= 0, got %g",
                           (double)p->threshold);
        if (c->task_kind == BERXIT_REGRESSION && !(p->threshold > 0.0f))
            return bx_fail(err, BERXIT_ERR_POLICY, "patience on a regression model needs threshold > 0 (the largest "
                           "change between exits that counts as agreement)");
    }
    return BERXIT_OK;
}
