/* threads.c: two models on two threads. While model A trains on a worker thread, the main
 * thread tokenizes and generates with model B, and must finish before A's run ends: a long call
 * on one model never blocks another model. A call on A from the main thread meanwhile returns
 * PLUMB_STATUS_BUSY at once, and plumb_model_cancel(A) from the main thread stops A's run.
 * Usage: threads MODEL_DIR TOKENIZER_JSON */
#define _DEFAULT_SOURCE /* usleep */
#include "check.h"
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

static atomic_int steps_done;
static atomic_int b_finished_at = -1; /* A's step count when B's work was done */

typedef struct {
    PlumbModel *model;
    PlumbData *data;
    PlumbStatus status;
} Job;

static bool on_progress(void *user, const PlumbProgress *p) {
    (void)user;
    atomic_store(&steps_done, (int)p->step);
    return true;
}

static void *train_a(void *arg) {
    Job *j = (Job *)arg;
    j->status = plumb_train(j->model, "{\"method\": \"dpo\", \"steps\": 100000, \"batch_size\": 2, \"lr\": 0.01}", j->data, on_progress, NULL, NULL);
    return NULL;
}

int main(int argc, char **argv) {
    CHECK(argc == 3);
    PlumbGpu *gpu_a = NULL, *gpu_b = NULL;
    OK(plumb_gpu_open(NULL, NULL, &gpu_a));
    OK(plumb_gpu_open(NULL, NULL, &gpu_b));
    PlumbModel *a = NULL, *b = NULL;
    OK(plumb_model_load(gpu_a, argv[1], argv[2], &a));
    OK(plumb_model_load(gpu_b, argv[1], argv[2], &b));
    OK(plumb_lora_attach(a, NULL, 1));
    PlumbData *data = NULL;
    OK(plumb_data_new(&data));
    OK(plumb_data_add_pair(data, "the sky is", "blue .", "green ."));
    OK(plumb_data_add_pair(data, "a cat sat on", "the mat .", "the sea ."));

    Job job = {a, data, PLUMB_STATUS_OK};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, train_a, &job) == 0);
    while (atomic_load(&steps_done) < 1) usleep(1000); /* A is training */

    /* A is busy: a second call on it returns at once. */
    size_t n = 0;
    uint32_t ids[16];
    EXPECT_STATUS(plumb_tokenize(a, "hello", false, ids, 16, &n), PLUMB_STATUS_BUSY, "one call at a time");

    /* B works meanwhile. */
    PlumbGenerateParams gp = plumb_generate_params_default();
    gp.max_new_tokens = 8;
    char *text = NULL;
    for (int i = 0; i < 3; i++) {
        OK(plumb_tokenize(b, "hello world", true, ids, 16, &n));
        OK(plumb_generate(b, "hello world", &gp, NULL, NULL, &text));
        plumb_string_free(text);
    }
    atomic_store(&b_finished_at, atomic_load(&steps_done));
    printf("model B done while model A had run %d of 100000 steps\n", atomic_load(&b_finished_at));
    CHECK(atomic_load(&b_finished_at) < 100000);

    /* Stop A from this thread. */
    OK(plumb_model_cancel(a));
    CHECK(pthread_join(t, NULL) == 0);
    printf("model A stopped after %d steps with status %d\n", atomic_load(&steps_done), (int)job.status);
    CHECK(job.status == PLUMB_STATUS_CANCELLED);
    CHECK(atomic_load(&steps_done) < 100000);
    /* A is free again. */
    OK(plumb_tokenize(a, "hello", false, ids, 16, &n));

    plumb_data_free(data);
    plumb_model_free(a);
    plumb_model_free(b);
    plumb_gpu_free(gpu_a);
    plumb_gpu_free(gpu_b);
    printf("threads: all passed\n");
    return 0;
}
