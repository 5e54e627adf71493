// cifar.hpp: a header-only C++17 wrapper over libcifar's C API (cifar.h).
//
// RAII handles (move-only), exceptions carrying the status code and message, and
// std::vector results. Thread safety is the C API's: a Model may be shared across
// threads (sessions keep it alive); a Session belongs to one thread at a time.
//
//   cifar::Model model("model.cifar");
//   cifar::Session session = model.session();
//   for (const auto& p : session.classify_encoded(bytes, 3)) std::cout << p.label << "\n";
#ifndef CIFAR_HPP
#define CIFAR_HPP

#include <cifar.h>

#include <array>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace cifar {

// A failed libcifar call: the status code and the library's message.
class Error : public std::runtime_error {
 public:
  Error(cifar_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  cifar_status status() const noexcept { return status_; }

 private:
  cifar_status status_;
};

inline void check(cifar_status status) {
  if (status != CIFAR_STATUS_OK) {
    throw Error(status, std::string(cifar_status_str(status)) + ": " + cifar_last_error());
  }
}

// The library's version string and ABI version (compare with CIFAR_ABI_VERSION).
inline std::string version() { return cifar_version(); }
inline uint32_t abi_version() { return cifar_abi_version(); }

struct Prediction {
  uint32_t class_index;
  float probability;
  float logit;
  std::string label;
};

class Options {
 public:
  Options() {
    cifar_options* o = nullptr;
    check(cifar_options_new(&o));
    handle_.reset(o);
  }
  Options& device(const std::string& policy) {
    check(cifar_options_set_device(handle_.get(), policy.c_str()));
    return *this;
  }
  Options& threads(uint32_t n) {
    check(cifar_options_set_threads(handle_.get(), n));
    return *this;
  }
  Options& max_batch(uint32_t n) {
    check(cifar_options_set_max_batch(handle_.get(), n));
    return *this;
  }
  const cifar_options* get() const noexcept { return handle_.get(); }

 private:
  struct Free {
    void operator()(cifar_options* o) const noexcept { cifar_options_free(o); }
  };
  std::unique_ptr<cifar_options, Free> handle_;
};

class Session;

class Model {
 public:
  explicit Model(const std::string& path, const Options* options = nullptr) {
    cifar_model* m = nullptr;
    check(cifar_model_open(path.c_str(), options ? options->get() : nullptr, &m));
    handle_.reset(m);
  }
  static Model from_buffer(const std::vector<uint8_t>& bytes, const Options* options = nullptr) {
    cifar_model* m = nullptr;
    check(cifar_model_open_buffer(bytes.data(), bytes.size(), options ? options->get() : nullptr, &m));
    return Model(m);
  }
  size_t num_classes() const {
    size_t n = 0;
    check(cifar_model_num_classes(handle_.get(), &n));
    return n;
  }
  std::string label(size_t index) const {
    const char* s = nullptr;
    check(cifar_model_label(handle_.get(), index, &s));
    return s;
  }
  std::vector<std::string> labels() const {
    std::vector<std::string> out;
    for (size_t i = 0, n = num_classes(); i < n; i++) out.push_back(label(i));
    return out;
  }
  std::array<size_t, 3> input_shape() const {
    std::array<size_t, 3> s{};
    check(cifar_model_input_shape(handle_.get(), s.data()));
    return s;
  }
  std::string precision() const {
    const char* s = nullptr;
    check(cifar_model_precision(handle_.get(), &s));
    return s;
  }
  std::string device() const {
    const char* s = nullptr;
    check(cifar_model_device(handle_.get(), &s, nullptr));
    return s;
  }
  std::string device_reason() const {
    const char* s = nullptr;
    check(cifar_model_device(handle_.get(), nullptr, &s));
    return s;
  }
  inline Session session() const;
  const cifar_model* get() const noexcept { return handle_.get(); }

 private:
  explicit Model(cifar_model* m) { handle_.reset(m); }
  struct Free {
    void operator()(cifar_model* m) const noexcept { cifar_model_free(m); }
  };
  std::unique_ptr<cifar_model, Free> handle_;
};

class Session {
 public:
  // Raw logits of `batch` 32x32 RGB8 images: batch x classes floats.
  std::vector<float> logits_rgb8(const uint8_t* pixels, size_t len, size_t batch) {
    std::vector<float> out(batch * labels_.size());
    check(cifar_logits_rgb8(handle_.get(), pixels, len, batch, out.data(), out.size()));
    return out;
  }
  std::vector<float> logits_rgb8(const std::vector<uint8_t>& pixels, size_t batch) {
    return logits_rgb8(pixels.data(), pixels.size(), batch);
  }
  // Raw logits of `batch` normalized NCHW images.
  std::vector<float> logits_nchw(const std::vector<float>& input, size_t batch) {
    std::vector<float> out(batch * labels_.size());
    check(cifar_logits_nchw(handle_.get(), input.data(), input.size(), batch, out.data(), out.size()));
    return out;
  }
  // Top-k per image of `batch` RGB8 images.
  std::vector<std::vector<Prediction>> classify_rgb8(const std::vector<uint8_t>& pixels, size_t batch, size_t k) {
    std::vector<cifar_prediction> raw(batch * k);
    check(cifar_classify_rgb8(handle_.get(), pixels.data(), pixels.size(), batch, k, raw.data(), raw.size()));
    std::vector<std::vector<Prediction>> out(batch);
    for (size_t b = 0; b < batch; b++)
      for (size_t i = 0; i < k; i++) out[b].push_back(wrap(raw[b * k + i]));
    return out;
  }
  // Top-k of an encoded image (PNG, JPEG, PPM; any size).
  std::vector<Prediction> classify_encoded(const std::vector<uint8_t>& data, size_t k) {
    std::vector<cifar_prediction> raw(k);
    check(cifar_classify_encoded(handle_.get(), data.data(), data.size(), k, raw.data(), raw.size()));
    std::vector<Prediction> out;
    for (const auto& p : raw) out.push_back(wrap(p));
    return out;
  }

 private:
  friend class Model;
  explicit Session(const Model& model) : labels_(model.labels()) {
    cifar_session* s = nullptr;
    check(cifar_session_new(model.get(), &s));
    handle_.reset(s);
  }
  Prediction wrap(const cifar_prediction& p) const {
    return Prediction{p.class_index, p.probability, p.logit, p.class_index < labels_.size() ? labels_[p.class_index] : ""};
  }
  struct Free {
    void operator()(cifar_session* s) const noexcept { cifar_session_free(s); }
  };
  std::vector<std::string> labels_;
  std::unique_ptr<cifar_session, Free> handle_;
};

inline Session Model::session() const { return Session(*this); }

}  // namespace cifar

#endif  // CIFAR_HPP
