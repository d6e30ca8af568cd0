/* app.c: the C ABI used as an app would. Load a fixture model with its tokenizer, generate with
 * streaming, attach a LoRA adapter, run DPO for a few steps on preference pairs held in memory
 * with a progress callback, cancel a run mid-way and continue it (bit-identical to a run that
 * was never stopped), SFT on texts, serve the trained adapter at once, save and reload it and
 * get the same outputs.  Usage: app MODEL_DIR TOKENIZER_JSON SCRATCH_DIR */
#include "check.h"
#include <math.h>

/* Streaming: every piece the callback sees, concatenated, and the token count. */
typedef struct {
    char text[4096];
    int tokens;
    int stop_after; /* return false after this many tokens (0: never) */
} Stream;

static bool on_token(void *user, uint32_t token, const char *piece) {
    Stream *s = (Stream *)user;
    (void)token;
    strncat(s->text, piece, sizeof s->text - strlen(s->text) - 1);
    s->tokens++;
    return s->stop_after == 0 || s->tokens < s->stop_after;
}

/* Progress: the steps seen and the last loss; stops the run at `stop_at` (0: never). */
typedef struct {
    unsigned long steps[64];
    int n;
    float last_loss;
    unsigned long stop_at;
} Progress;

static bool on_progress(void *user, const PlumbProgress *p) {
    Progress *pr = (Progress *)user;
    CHECK(pr->n < 64);
    CHECK(isfinite(p->loss) && p->lr > 0 && p->total_steps > 0 && p->metrics_json && p->metrics_json[0] == '{');
    pr->steps[pr->n++] = p->step;
    pr->last_loss = p->loss;
    printf("  step %lu/%lu loss %.4f lr %.2e grad_norm %.3f metrics %.60s...\n", (unsigned long)p->step,
           (unsigned long)p->total_steps, p->loss, p->lr, p->grad_norm, p->metrics_json);
    return pr->stop_at == 0 || p->step < pr->stop_at;
}

/* Greedy continuation of a fixed prompt, as text (caller frees). */
static char *greedy(PlumbModel *m) {
    PlumbGenerateParams gp = plumb_generate_params_default();
    gp.temperature = 0;
    gp.max_new_tokens = 12;
    gp.stop_at_eos = false;
    char *out = NULL;
    OK(plumb_generate(m, "the cat sat on", &gp, NULL, NULL, &out));
    return out;
}

static void add_pairs(PlumbData *d) {
    const char *p[][3] = {
        {"the sky is", "blue and warm .", "green and cold ."},
        {"a cat sat on", "the mat .", "the sea ."},
        {"i like the", "sun and the moon .", "dark night ."},
        {"we see a", "happy bird .", "sad fish ."},
    };
    for (int i = 0; i < 4; i++) OK(plumb_data_add_pair(d, p[i][0], p[i][1], p[i][2]));
}

static int file_equal(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    CHECK(fa && fb);
    int ca, cb, same = 1;
    do {
        ca = fgetc(fa);
        cb = fgetc(fb);
        if (ca != cb) same = 0;
    } while (same && ca != EOF);
    fclose(fa);
    fclose(fb);
    return same;
}

int main(int argc, char **argv) {
    CHECK(argc == 4);
    const char *model_dir = argv[1], *tokenizer = argv[2], *scratch = argv[3];
    char cfg[1024], path[4096], path2[4096];

    PlumbGpu *gpu = NULL;
    OK(plumb_gpu_open(NULL, NULL, &gpu));
    PlumbModel *model = NULL;
    OK(plumb_model_load(gpu, model_dir, tokenizer, &model));

    /* 1. Streaming generation: the pieces add up to the returned text. */
    Stream s = {{0}, 0, 0};
    PlumbGenerateParams gp = plumb_generate_params_default();
    gp.max_new_tokens = 10;
    gp.seed = 7;
    char *text = NULL;
    OK(plumb_generate(model, "hello world", &gp, on_token, &s, &text));
    printf("generated (%d tokens): %s\n", s.tokens, text);
    CHECK(s.tokens >= 1 && s.tokens <= 10);
    CHECK(strcmp(s.text, text) == 0);
    plumb_string_free(text);
    /* The same seed gives the same text; the callback stops generation early. */
    Stream s2 = {{0}, 0, 3};
    gp.stop_at_eos = false;
    EXPECT_STATUS(plumb_generate(model, "hello world", &gp, on_token, &s2, &text), PLUMB_STATUS_CANCELLED, "after 3 tokens");
    CHECK(s2.tokens == 3 && text != NULL);
    CHECK(strncmp(s.text, s2.text, strlen(s2.text)) == 0);
    plumb_string_free(text);

    char *base = greedy(model);
    printf("base model, greedy: %s\n", base);

    /* 2. DPO for a few steps on pairs in memory, a LoRA adapter, a progress callback. */
    OK(plumb_lora_attach(model, "{\"r\": 4, \"alpha\": 8}", 3));
    PlumbData *data = NULL;
    OK(plumb_data_new(&data));
    add_pairs(data);
    Progress pr = {{0}, 0, 0, 0};
    char *result = NULL;
    OK(plumb_train(model, "{\"method\": \"dpo\", \"steps\": 3, \"batch_size\": 2, \"lr\": 0.05, \"warmup\": 0, \"beta\": 0.5}", data, on_progress, &pr, &result));
    printf("dpo result: %s\n", result);
    CHECK(pr.n == 3 && pr.steps[0] == 1 && pr.steps[2] == 3);
    CHECK(strstr(result, "\"steps_done\":3") && strstr(result, "\"cancelled\":false"));
    plumb_string_free(result);

    /* 3. Serve the adapter right away; save it, detach (base again), load it back: same text. */
    char *tuned = greedy(model);
    printf("with adapter, greedy: %s\n", tuned);
    CHECK(strcmp(tuned, base) != 0); /* the adapter changed the model */
    snprintf(path, sizeof path, "%s/adapter", scratch);
    OK(plumb_lora_save(model, path));
    OK(plumb_lora_set_enabled(model, false));
    char *off = greedy(model);
    CHECK(strcmp(off, base) == 0);
    plumb_string_free(off);
    OK(plumb_lora_set_enabled(model, true));
    OK(plumb_lora_detach(model));
    char *again = greedy(model);
    CHECK(strcmp(again, base) == 0);
    plumb_string_free(again);
    OK(plumb_lora_load(model, path));
    again = greedy(model);
    CHECK(strcmp(again, tuned) == 0);
    plumb_string_free(again);
    /* ... and into a second, fresh model. */
    PlumbModel *fresh = NULL;
    OK(plumb_model_load(gpu, model_dir, tokenizer, &fresh));
    OK(plumb_lora_load(fresh, path));
    again = greedy(fresh);
    CHECK(strcmp(again, tuned) == 0);
    plumb_string_free(again);
    plumb_model_free(fresh);
    plumb_string_free(tuned);
    OK(plumb_lora_detach(model));

    /* 4. Cancel mid-way and continue: 6 steps stopped after 2, then resumed, must equal 6 steps
     * in one go (same adapter seed, same data, same settings). A fresh run starts without
     * "resume" (resuming a directory with no checkpoint is an error, never a fresh start). */
    const char *dpo6 = "{\"method\": \"dpo\", \"steps\": 6, \"batch_size\": 2, \"lr\": 0.02, \"warmup\": 0, \"seed\": 5, \"out_dir\": \"%s/%s\", \"resume\": %s}";
    OK(plumb_lora_attach(model, "{\"r\": 4, \"alpha\": 8}", 11));
    Progress a = {{0}, 0, 0, 2};
    snprintf(cfg, sizeof cfg, dpo6, scratch, "resumed", "true");
    EXPECT_STATUS(plumb_train(model, cfg, data, on_progress, &a, &result), PLUMB_STATUS_CONFIG, "no checkpoint to resume from");
    snprintf(cfg, sizeof cfg, dpo6, scratch, "resumed", "false");
    EXPECT_STATUS(plumb_train(model, cfg, data, on_progress, &a, &result), PLUMB_STATUS_CANCELLED, "stopped after step 2 of 6");
    CHECK(a.n == 2 && strstr(result, "\"cancelled\":true"));
    plumb_string_free(result);
    /* plumb_model_cancel from the callback's point of view is the same flag; continue: */
    snprintf(cfg, sizeof cfg, dpo6, scratch, "resumed", "true");
    Progress b = {{0}, 0, 0, 0};
    OK(plumb_train(model, cfg, data, on_progress, &b, NULL));
    CHECK(b.n == 4 && b.steps[0] == 3 && b.steps[3] == 6);
    snprintf(path, sizeof path, "%s/resumed/checkpoint-6/adapter_model.safetensors", scratch);

    PlumbModel *straight = NULL;
    OK(plumb_model_load(gpu, model_dir, tokenizer, &straight));
    OK(plumb_lora_attach(straight, "{\"r\": 4, \"alpha\": 8}", 11));
    Progress c = {{0}, 0, 0, 0};
    snprintf(cfg, sizeof cfg, dpo6, scratch, "straight", "false");
    OK(plumb_train(straight, cfg, data, on_progress, &c, NULL));
    CHECK(c.n == 6);
    CHECK(c.last_loss == b.last_loss);
    snprintf(path2, sizeof path2, "%s/straight/checkpoint-6/adapter_model.safetensors", scratch);
    CHECK(file_equal(path, path2));
    printf("cancelled + resumed run == uninterrupted run (adapter files identical)\n");
    plumb_model_free(straight);

    /* 5. SFT on texts in memory, on the same adapter, then generation still works. */
    PlumbData *texts = NULL;
    OK(plumb_data_new(&texts));
    OK(plumb_data_add_text(texts, "the sky is blue . the sun is warm . the moon is cold ."));
    OK(plumb_data_add_text(texts, "a cat sat on the mat . a dog sat on the mat ."));
    uint32_t ids[8] = {0, 5, 6, 7, 8, 1};
    OK(plumb_data_add_tokens(texts, ids, 6));
    Progress d = {{0}, 0, 0, 0};
    OK(plumb_train(model, "{\"method\": \"sft\", \"steps\": 3, \"batch_size\": 2, \"seq_len\": 8, \"lr\": 0.01}", texts, on_progress, &d, NULL));
    CHECK(d.n == 3);
    /* The same with two micro-batches of one sequence a step: still one callback per step. */
    Progress ga = {{0}, 0, 0, 0};
    OK(plumb_train(model, "{\"method\": \"sft\", \"steps\": 2, \"batch_size\": 1, \"grad_accum\": 2, \"seq_len\": 8, \"lr\": 0.01}", texts, on_progress, &ga, NULL));
    CHECK(ga.n == 2);
    plumb_data_free(texts);
    char *after = greedy(model);
    printf("after SFT, greedy: %s\n", after);
    plumb_string_free(after);

    /* 6. KTO on thumbs up/down collected in the app: one answer each, no pairs needed. */
    PlumbData *thumbs = NULL;
    OK(plumb_data_new(&thumbs));
    OK(plumb_data_add_feedback(thumbs, "the sky is", " blue .", true));
    OK(plumb_data_add_feedback(thumbs, "the sky is", " green .", false));
    OK(plumb_data_add_feedback(thumbs, "a cat sat on", " the mat .", true));
    OK(plumb_data_add_feedback_tokens(thumbs, ids, 2, ids + 2, 3, false));
    size_t n_feedback = 0;
    OK(plumb_data_feedback_count(thumbs, &n_feedback));
    CHECK(n_feedback == 4);
    Progress k = {{0}, 0, 0, 0};
    OK(plumb_train(model, "{\"method\": \"kto\", \"steps\": 3, \"batch_size\": 2, \"lr\": 0.02, \"warmup\": 0, \"beta\": 0.5}", thumbs, on_progress, &k, &result));
    printf("kto result: %s\n", result);
    CHECK(k.n == 3 && k.steps[2] == 3 && strstr(result, "\"method\":\"kto\"") && strstr(result, "\"steps_done\":3"));
    plumb_string_free(result);
    EXPECT_STATUS(plumb_train(model, "{\"method\": \"kto\", \"loss_type\": \"bco\"}", thumbs, NULL, NULL, NULL), PLUMB_STATUS_CONFIG, "bco");
    plumb_data_free(thumbs);

    plumb_data_free(data);
    plumb_string_free(base);
    plumb_model_free(model);
    plumb_gpu_free(gpu);
    printf("app: all passed\n");
    return 0;
}
