/* errors.c: every error path of the C ABI that needs no GPU work, plus the calls that run on
 * the CPU (tokenizer, chat template, config parsing). Each must return the right status and a
 * message that names what is wrong, never crash, and leave nothing allocated: CI runs this
 * program under valgrind (tests/capi.rs).
 * Usage: errors MODEL_DIR TOKENIZER_JSON SCRATCH_DIR */
#include "check.h"

int main(int argc, char **argv) {
    CHECK(argc == 4);
    const char *model_dir = argv[1], *tokenizer = argv[2], *scratch = argv[3];
    char path[4096];

    CHECK(strlen(plumb_version()) > 0);
    CHECK(strcmp(plumb_last_error(), "") == 0);

    /* NULL handles and outputs. */
    PlumbModel *model = NULL;
    EXPECT_STATUS(plumb_model_load(NULL, model_dir, tokenizer, &model), PLUMB_STATUS_INVALID_ARGUMENT, "`gpu` is NULL");
    CHECK(model == NULL);
    EXPECT_STATUS(plumb_gpu_open(NULL, NULL, NULL), PLUMB_STATUS_INVALID_ARGUMENT, "`out`");
    EXPECT_STATUS(plumb_gpu_open("no-such-backend", NULL, &(PlumbGpu *){NULL}), PLUMB_STATUS_CONFIG, "no-such-backend");
    size_t n = 0;
    EXPECT_STATUS(plumb_tokenize(NULL, "hello", false, NULL, 0, &n), PLUMB_STATUS_INVALID_ARGUMENT, "`model` is NULL");
    EXPECT_STATUS(plumb_train(NULL, "{}", NULL, NULL, NULL, NULL), PLUMB_STATUS_INVALID_ARGUMENT, "`model` is NULL");
    EXPECT_STATUS(plumb_model_cancel(NULL), PLUMB_STATUS_INVALID_ARGUMENT, "`model` is NULL");
    EXPECT_STATUS(plumb_data_add_text(NULL, "x"), PLUMB_STATUS_INVALID_ARGUMENT, "`data` is NULL");
    plumb_gpu_free(NULL);
    plumb_model_free(NULL);
    plumb_data_free(NULL);
    plumb_string_free(NULL);

    PlumbGpu *gpu = NULL;
    OK(plumb_gpu_open(NULL, NULL, &gpu));
    char *desc = NULL;
    OK(plumb_gpu_describe(gpu, &desc));
    printf("gpu: %s\n", desc);
    plumb_string_free(desc);

    /* Bad paths. */
    EXPECT_STATUS(plumb_model_load(gpu, "/no/such/model", NULL, &model), PLUMB_STATUS_IO, "/no/such/model");
    EXPECT_STATUS(plumb_model_load(gpu, "/models/smollm2.gguf", NULL, &model), PLUMB_STATUS_IO, "no such GGUF file");
    EXPECT_STATUS(plumb_model_load(gpu, scratch, NULL, &model), PLUMB_STATUS_IO, "config.json");
    EXPECT_STATUS(plumb_model_load(gpu, model_dir, "/no/such/tokenizer.json", &model), PLUMB_STATUS_IO, "/no/such/tokenizer.json");
    CHECK(model == NULL);

    /* A model without a tokenizer: ids work, text does not. */
    OK(plumb_model_load(gpu, model_dir, NULL, &model));
    EXPECT_STATUS(plumb_tokenize(model, "hello", false, NULL, 0, &n), PLUMB_STATUS_INVALID_ARGUMENT, "no tokenizer");
    plumb_model_free(model);

    OK(plumb_model_load(gpu, model_dir, tokenizer, &model));
    /* Free the GPU handle before the model: the model keeps the device alive. */
    plumb_gpu_free(gpu);

    /* Tokenizer round trip, and a buffer that is too small. */
    uint32_t ids[16];
    OK(plumb_tokenize(model, "Hello world the sky is blue", true, ids, 16, &n));
    CHECK(n == 7 && ids[0] == 0);
    EXPECT_STATUS(plumb_tokenize(model, "hello world", false, ids, 1, &n), PLUMB_STATUS_BUFFER_TOO_SMALL, "buffer of 1");
    CHECK(n == 2);
    char *text = NULL;
    OK(plumb_tokenize(model, "the sky is blue", false, ids, 16, &n));
    OK(plumb_detokenize(model, ids, n, &text));
    CHECK(strcmp(text, "the sky is blue") == 0);
    plumb_string_free(text);
    uint32_t bad_id = 70;
    EXPECT_STATUS(plumb_detokenize(model, &bad_id, 1, &text), PLUMB_STATUS_CONFIG, "70");
    EXPECT_STATUS(plumb_detokenize(model, NULL, 3, &text), PLUMB_STATUS_INVALID_ARGUMENT, "`ids` is NULL");
    EXPECT_STATUS(plumb_tokenize(model, "\xff\xfe", false, ids, 16, &n), PLUMB_STATUS_INVALID_ARGUMENT, "UTF-8");

    /* Chat template. */
    PlumbMessage msgs[2] = {{"system", "be kind"}, {"user", "hello"}};
    OK(plumb_chat_apply(model, msgs, 2, true, &text));
    CHECK(strcmp(text, "<|im_start|>system\nbe kind<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n") == 0);
    plumb_string_free(text);
    PlumbMessage bad_msg = {NULL, "x"};
    EXPECT_STATUS(plumb_chat_apply(model, &bad_msg, 1, false, &text), PLUMB_STATUS_INVALID_ARGUMENT, "messages[0].role");

    /* Generation settings checked before any GPU work. */
    PlumbGenerateParams gp = plumb_generate_params_default();
    gp.max_new_tokens = 1000;
    EXPECT_STATUS(plumb_generate(model, "hello", &gp, NULL, NULL, &text), PLUMB_STATUS_CONFIG, "positions");
    CHECK(text == NULL);

    /* Adapter calls in the wrong order. */
    snprintf(path, sizeof path, "%s/adapter", scratch);
    EXPECT_STATUS(plumb_lora_save(model, path), PLUMB_STATUS_CONFIG, "no adapter is attached");
    EXPECT_STATUS(plumb_lora_set_enabled(model, false), PLUMB_STATUS_INVALID_ARGUMENT, "no adapter");
    EXPECT_STATUS(plumb_lora_detach(model), PLUMB_STATUS_INVALID_ARGUMENT, "no adapter");
    EXPECT_STATUS(plumb_lora_merge(model), PLUMB_STATUS_CONFIG, "no adapter");
    EXPECT_STATUS(plumb_lora_load(model, "/no/such/adapter"), PLUMB_STATUS_IO, "/no/such/adapter");
    EXPECT_STATUS(plumb_lora_attach(model, "{\"r\": 0}", 1), PLUMB_STATUS_CONFIG, "rank");
    EXPECT_STATUS(plumb_lora_attach(model, "{\"r\": 4,", 1), PLUMB_STATUS_CONFIG, "line 1");
    OK(plumb_lora_attach(model, "{\"r\": 4, \"alpha\": 8}", 1));
    EXPECT_STATUS(plumb_lora_attach(model, NULL, 1), PLUMB_STATUS_CONFIG, "already attached");

    /* Training configs and data rejected before any step. */
    PlumbData *data = NULL;
    OK(plumb_data_new(&data));
    EXPECT_STATUS(plumb_train(model, "{\"method\": \"dpo\", \"stpes\": 3}", data, NULL, NULL, NULL), PLUMB_STATUS_CONFIG, "unknown field `stpes`");
    EXPECT_STATUS(plumb_train(model, "{\"steps\": 3}", data, NULL, NULL, NULL), PLUMB_STATUS_CONFIG, "missing field `method`");
    EXPECT_STATUS(plumb_train(model, "{\"method\": \"sft\", \"grad_accum\": 0}", data, NULL, NULL, NULL), PLUMB_STATUS_CONFIG, "grad_accum must be at least 1");
    EXPECT_STATUS(plumb_train(model, "not json", data, NULL, NULL, NULL), PLUMB_STATUS_CONFIG, "line 1 column");
    EXPECT_STATUS(plumb_train(model, "{\"method\": \"ppo\"}", data, NULL, NULL, NULL), PLUMB_STATUS_CONFIG, "`ppo` is not one of sft, dpo, kto");
    EXPECT_STATUS(plumb_train(model, "{\"method\": \"kto\"}", data, NULL, NULL, NULL), PLUMB_STATUS_INVALID_ARGUMENT, "KTO needs answers with feedback");
    EXPECT_STATUS(plumb_data_add_feedback(data, "hello", NULL, true), PLUMB_STATUS_INVALID_ARGUMENT, "`completion` is NULL");
    EXPECT_STATUS(plumb_data_add_feedback_tokens(data, NULL, 0, NULL, 0, true), PLUMB_STATUS_INVALID_ARGUMENT, "at least one token");
    EXPECT_STATUS(plumb_train(model, "{\"method\": \"dpo\"}", NULL, NULL, NULL, NULL), PLUMB_STATUS_INVALID_ARGUMENT, "exactly one");
    EXPECT_STATUS(plumb_train(model, "{\"method\": \"dpo\"}", data, NULL, NULL, NULL), PLUMB_STATUS_INVALID_ARGUMENT, "needs preference pairs");
    EXPECT_STATUS(plumb_train(model, "{\"method\": \"sft\"}", data, NULL, NULL, NULL), PLUMB_STATUS_INVALID_ARGUMENT, "has none");
    EXPECT_STATUS(plumb_train(model, "{\"method\": \"dpo\", \"data\": \"/no/such/prefs.bin\"}", NULL, NULL, NULL, NULL), PLUMB_STATUS_IO, "/no/such/prefs.bin");
    EXPECT_STATUS(plumb_data_add_pair(data, "hello", NULL, "no"), PLUMB_STATUS_INVALID_ARGUMENT, "`chosen` is NULL");
    uint32_t far[1] = {99};
    OK(plumb_data_add_pair_tokens(data, NULL, 0, far, 1, far, 1));
    EXPECT_STATUS(plumb_train(model, "{\"method\": \"dpo\", \"steps\": 1}", data, NULL, NULL, NULL), PLUMB_STATUS_INVALID_ARGUMENT, "99 is outside");
    EXPECT_STATUS(plumb_data_add_pair_tokens(data, NULL, 0, far, 0, far, 1), PLUMB_STATUS_INVALID_ARGUMENT, "at least one token");
    size_t n_texts = 9, n_pairs = 9;
    OK(plumb_data_count(data, &n_texts, &n_pairs));
    CHECK(n_texts == 0 && n_pairs == 1);
    plumb_data_free(data);

    /* Saving base weights to a path that cannot be written. */
    EXPECT_STATUS(plumb_model_save(model, "/proc/no-such-dir/model"), PLUMB_STATUS_IO, "/proc/no-such-dir");

    plumb_model_free(model);
    printf("errors: all passed\n");
    return 0;
}
