// Tests of the C++ wrapper: RAII, exceptions with status and message, results equal
// to the Rust SDK's bit for bit.  usage: test_cifar_cpp FIXTURES_DIR RUST_LOGITS.txt
#include <cifar.hpp>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <thread>

static int failures = 0, checks = 0;
#define CHECK(cond)                                                                     \
  do {                                                                                  \
    checks++;                                                                           \
    if (!(cond)) {                                                                      \
      failures++;                                                                       \
      std::cerr << __FILE__ << ":" << __LINE__ << ": check failed: " #cond "\n";        \
    }                                                                                   \
  } while (0)

template <class F>
static cifar_status status_of(F f) {
  try {
    f();
  } catch (const cifar::Error& e) {
    CHECK(std::strlen(e.what()) > 0);
    return e.status();
  }
  return CIFAR_STATUS_OK;
}

static std::vector<uint8_t> read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  const std::string fx = argv[1];
  CHECK(cifar::abi_version() == CIFAR_ABI_VERSION);

  cifar::Model model(fx + "/models/tiny-int8.cifar");
  CHECK(model.num_classes() == 10);
  CHECK(model.label(0) == "airplane");
  CHECK(model.precision() == "int8");
  CHECK(model.input_shape()[1] == 32);
  CHECK(model.device() == "cpu");

  // Exceptions carry the status.
  CHECK(status_of([&] { cifar::Model m(fx + "/nope.cifar"); }) == CIFAR_STATUS_IO);
  CHECK(status_of([&] { cifar::Model m(fx + "/malformed/a-flipped-weight-byte.cifar"); }) == CIFAR_STATUS_CHECKSUM);
  CHECK(status_of([&] {
          cifar::Options o;
          o.device("gpu");
          cifar::Model m(fx + "/models/tiny-int8.cifar", &o);
        }) == CIFAR_STATUS_DEVICE);
  CHECK(status_of([&] { model.label(99); }) == CIFAR_STATUS_INVALID_ARGUMENT);
  CHECK(status_of([&] { cifar::Options().max_batch(0); }) == CIFAR_STATUS_INVALID_ARGUMENT);

  cifar::Options opts;
  opts.device("cpu").threads(1).max_batch(8);
  cifar::Model from_buf = cifar::Model::from_buffer(read(fx + "/models/tiny-f32.cifar"), &opts);
  CHECK(from_buf.precision() == "f32");

  cifar::Session session = model.session();
  std::vector<uint8_t> px(2 * 32 * 32 * 3);
  for (size_t i = 0; i < px.size(); i++) px[i] = static_cast<uint8_t>((i * 13) % 251);
  auto logits = session.logits_rgb8(px, 2);
  CHECK(logits.size() == 20);
  auto top = session.classify_rgb8(px, 2, 3);
  CHECK(top.size() == 2 && top[0].size() == 3);
  CHECK(top[0][0].logit == *std::max_element(logits.begin(), logits.begin() + 10));
  CHECK(status_of([&] { session.logits_rgb8(px.data(), px.size() - 1, 2); }) == CIFAR_STATUS_BUFFER_SIZE);
  CHECK(status_of([&] { session.classify_encoded({1, 2, 3}, 3); }) == CIFAR_STATUS_IMAGE);
  std::vector<float> nchw(3 * 32 * 32, 0.5f);
  CHECK(session.logits_nchw(nchw, 1).size() == 10);

  // Moving and dropping the model: sessions keep working.
  {
    cifar::Model moved = std::move(model);
    CHECK(moved.num_classes() == 10);
  }
  CHECK(session.logits_rgb8(px, 2) == logits);

  // Threads, each with its own session on a shared model.
  {
    cifar::Model shared(fx + "/models/tiny-f32.cifar");
    auto want = shared.session().logits_rgb8(px, 2);
    std::vector<std::thread> ts;
    std::vector<int> ok(4, 0);
    for (int t = 0; t < 4; t++)
      ts.emplace_back([&, t] { ok[t] = shared.session().logits_rgb8(px, 2) == want; });
    for (auto& t : ts) t.join();
    for (int v : ok) CHECK(v);
  }

  // Bit for bit equal to the Rust SDK.
  std::ifstream rust(argv[2]);
  std::string line;
  int lines = 0;
  while (std::getline(rust, line)) {
    std::istringstream in(line);
    std::string model_name, image;
    in >> model_name >> image;
    cifar::Model m(fx + "/models/" + model_name);
    auto s = m.session();
    auto preds = s.classify_encoded(read(fx + "/images/" + image), 10);
    std::vector<uint32_t> bits(10);
    for (auto& b : bits) in >> std::hex >> b;
    for (const auto& p : preds) {
      uint32_t got;
      std::memcpy(&got, &p.logit, sizeof got);
      CHECK(got == bits[p.class_index]);
    }
    lines++;
  }
  CHECK(lines == 20);
  std::cout << checks << " checks, " << failures << " failures\n";
  return failures == 0 ? 0 : 1;
}
