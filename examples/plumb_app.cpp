// plumb_app.cpp: plumb's C ABI from C++, as an app embeds it: serve a model, collect feedback,
// train a LoRA adapter on it (DPO) on a worker thread with progress and a cancel button, and
// serve the improved model at once, in one process. A thin RAII layer over include/plumb.h.
//
// Build (after `cargo build --release -p plumb-capi`):
//   c++ -std=c++17 -O2 examples/plumb_app.cpp -Iinclude -Ltarget/release -lplumb -Wl,-rpath,$PWD/target/release -pthread -o plumb_app
//   ./plumb_app models/fixtures/tiny-gpt2 tests/c/fixtures/words64/tokenizer.json
// capi/tests/capi.rs builds and runs it the same way against the debug library.
#include <cstdio>
#include <array>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "plumb.h"

namespace plumb {

// Turns a failed status into an exception carrying plumb's message.
inline void check(PlumbStatus s, const char *what) {
    if (s != PLUMB_STATUS_OK) throw std::runtime_error(std::string(what) + ": " + plumb_last_error());
}

// A string the library allocated, freed on scope exit.
inline std::string take(char *s) {
    std::unique_ptr<char, decltype(&plumb_string_free)> owned(s, plumb_string_free);
    return s ? std::string(s) : std::string();
}

class Model {
  public:
    Model(const std::string &dir, const std::string &tokenizer) {
        PlumbGpu *gpu = nullptr;
        check(plumb_gpu_open(nullptr, nullptr, &gpu), "open GPU");
        gpu_.reset(gpu);
        PlumbModel *m = nullptr;
        check(plumb_model_load(gpu, dir.c_str(), tokenizer.empty() ? nullptr : tokenizer.c_str(), &m), "load model");
        model_.reset(m);
    }

    // Generate, calling on_piece with each piece of text as it comes.
    std::string generate(const std::string &prompt, std::function<void(const std::string &)> on_piece, uint32_t max_new = 16) {
        PlumbGenerateParams p = plumb_generate_params_default();
        p.max_new_tokens = max_new;
        p.temperature = 0;  // greedy: the same answer every time
        char *out = nullptr;
        auto cb = [](void *user, uint32_t, const char *piece) -> bool {
            (*static_cast<std::function<void(const std::string &)> *>(user))(piece);
            return true;
        };
        check(plumb_generate(model_.get(), prompt.c_str(), &p, cb, &on_piece, &out), "generate");
        return take(out);
    }

    void attach_adapter(const char *json) { check(plumb_lora_attach(model_.get(), json, 0), "attach adapter"); }
    void save_adapter(const std::string &dir) { check(plumb_lora_save(model_.get(), dir.c_str()), "save adapter"); }
    void cancel() { plumb_model_cancel(model_.get()); }

    // DPO on (prompt, chosen, rejected) triples; returns the run's summary JSON.
    std::string train_dpo(const std::vector<std::array<std::string, 3>> &pairs, const std::string &config,
                          std::function<bool(const PlumbProgress &)> on_step) {
        PlumbData *d = nullptr;
        check(plumb_data_new(&d), "new data");
        std::unique_ptr<PlumbData, decltype(&plumb_data_free)> data(d, plumb_data_free);
        for (auto &p : pairs) check(plumb_data_add_pair(d, p[0].c_str(), p[1].c_str(), p[2].c_str()), "add pair");
        auto cb = [](void *user, const PlumbProgress *p) -> bool {
            return (*static_cast<std::function<bool(const PlumbProgress &)> *>(user))(*p);
        };
        char *result = nullptr;
        PlumbStatus s = plumb_train(model_.get(), config.c_str(), d, cb, &on_step, &result);
        std::string summary = take(result);
        if (s != PLUMB_STATUS_CANCELLED) check(s, "train");
        return summary;
    }

  private:
    std::unique_ptr<PlumbGpu, decltype(&plumb_gpu_free)> gpu_{nullptr, plumb_gpu_free};
    std::unique_ptr<PlumbModel, decltype(&plumb_model_free)> model_{nullptr, plumb_model_free};
};

}  // namespace plumb

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL_DIR [TOKENIZER_JSON]\n", argv[0]);
        return 2;
    }
    try {
        plumb::Model model(argv[1], argc > 2 ? argv[2] : "");
        std::printf("plumb %s\nbefore: ", plumb_version());
        std::string before = model.generate("the sky is", [](const std::string &p) { std::printf("%s", p.c_str()); std::fflush(stdout); });
        std::printf("\n");

        // The user preferred one answer over another: train an adapter on it, off the UI thread.
        model.attach_adapter("{\"r\": 4, \"alpha\": 8}");
        std::vector<std::array<std::string, 3>> feedback = {
            {"the sky is", "blue and warm .", "green and cold ."},
            {"a cat sat on", "the mat .", "the sea ."},
        };
        std::string summary;
        std::thread worker([&] {
            summary = model.train_dpo(feedback, R"({"method": "dpo", "steps": 4, "batch_size": 2, "lr": 0.05, "warmup": 0})",
                                      [](const PlumbProgress &p) {
                                          std::printf("step %llu/%llu loss %.4f\n", (unsigned long long)p.step,
                                                      (unsigned long long)p.total_steps, p.loss);
                                          return true;  // false would cancel, as model.cancel() does
                                      });
        });
        worker.join();  // an app keeps its UI running here
        std::printf("trained: %s\n", summary.c_str());

        // Serve the adapter at once, no reload.
        std::string after = model.generate("the sky is", [](const std::string &) {});
        std::printf("after: %s\n", after.c_str());
        return 0;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
