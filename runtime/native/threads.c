/* Two threads for the builtin sgemm: a workspace may own one helper thread (berxit_set_threads
 * 2) that computes the second half of each matrix product's column panels while the calling
 * thread computes the first half; both stream half of the weights (at batch 1 the products are
 * bound by memory bandwidth as much as by arithmetic). The helper blocks on a condition
 * variable between products (no spinning) and is joined when the workspace is freed. */
#include <stdlib.h>

#include "internal.h"

static void *helper_main(void *p) {
    berxit_workspace *ws = p;
    unsigned seen = 0;
    pthread_mutex_lock(&ws->tmu);
    for (;;) {
        while (ws->gen == seen && !ws->quit) pthread_cond_wait(&ws->cv_go, &ws->tmu);
        if (ws->quit) break;
        seen = ws->gen;
        const bx_linear *l = ws->job_l;
        const float *x = ws->job_x;
        float *y = ws->job_y;
        int32_t rows = ws->job_rows;
        size_t p0 = ws->job_p0, p1 = ws->job_p1;
        pthread_mutex_unlock(&ws->tmu);
        bx_linear_panels(l, x, rows, y, p0, p1);
        pthread_mutex_lock(&ws->tmu);
        ws->finished = seen;
        pthread_cond_signal(&ws->cv_done);
    }
    pthread_mutex_unlock(&ws->tmu);
    return NULL;
}

static int start_helper(berxit_workspace *ws) {
    if (pthread_mutex_init(&ws->tmu, NULL)) return 0;
    if (pthread_cond_init(&ws->cv_go, NULL)) { pthread_mutex_destroy(&ws->tmu); return 0; }
    if (pthread_cond_init(&ws->cv_done, NULL)) { pthread_cond_destroy(&ws->cv_go); pthread_mutex_destroy(&ws->tmu); return 0; }
    ws->gen = ws->finished = 0;
    ws->quit = 0;
    if (pthread_create(&ws->helper, NULL, helper_main, ws)) {
        pthread_cond_destroy(&ws->cv_done); pthread_cond_destroy(&ws->cv_go); pthread_mutex_destroy(&ws->tmu);
        return 0;
    }
    return 1;
}

void bx_linear_forward(berxit_workspace *ws, const bx_linear *l, const float *x, int32_t rows, float *y) {
    size_t panels = bx_panels(l);
    /* small products (exit heads, tiny models) are not worth a hand-off */
    if (ws->threads < 2 || panels < 2 || (size_t)rows * l->in * l->out < (1u << 16)) {
        bx_linear_panels(l, x, rows, y, 0, panels);
        return;
    }
    if (!ws->helper_up) {
        ws->helper_up = start_helper(ws) ? 1 : -1; /* -1: no thread could be made: one thread from now on */
    }
    if (ws->helper_up < 0) {
        bx_linear_panels(l, x, rows, y, 0, panels);
        return;
    }
    size_t half = panels / 2;
    pthread_mutex_lock(&ws->tmu);
    ws->job_l = l; ws->job_x = x; ws->job_y = y; ws->job_rows = rows; ws->job_p0 = half; ws->job_p1 = panels;
    unsigned g = ++ws->gen;
    pthread_cond_signal(&ws->cv_go);
    pthread_mutex_unlock(&ws->tmu);
    bx_linear_panels(l, x, rows, y, 0, half);
    pthread_mutex_lock(&ws->tmu);
    while (ws->finished != g) pthread_cond_wait(&ws->cv_done, &ws->tmu);
    pthread_mutex_unlock(&ws->tmu);
}

void bx_threads_stop(berxit_workspace *ws) {
    if (ws->helper_up != 1) return;
    pthread_mutex_lock(&ws->tmu);
    ws->quit = 1;
    pthread_cond_signal(&ws->cv_go);
    pthread_mutex_unlock(&ws->tmu);
    pthread_join(ws->helper, NULL);
    pthread_cond_destroy(&ws->cv_done); pthread_cond_destroy(&ws->cv_go); pthread_mutex_destroy(&ws->tmu);
    ws->helper_up = 0;
}
