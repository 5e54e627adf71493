/*
 * The C test suite of libcifar: every function, the happy paths and misuse (NULL
 * everywhere, wrong sizes, missing and malformed files, freeing NULL, freeing a model
 * while its sessions run), the panic boundary, 8 threads sharing one model, and logits
 * bit for bit equal to the Rust SDK's (the file written by `dump_logits`).
 *
 * usage: test_cifar FIXTURES_DIR RUST_LOGITS.txt
 */
#include <cifar.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
static int checks = 0;

#define CHECK(cond)                                                                  \
  do {                                                                               \
    checks++;                                                                        \
    if (!(cond)) {                                                                   \
      failures++;                                                                    \
      fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__,       \
              __LINE__, #cond, cifar_last_error());                                  \
    }                                                                                \
  } while (0)

#define CHECK_STATUS(call, want) CHECK((call) == (want))

static char fixtures[1024];

static void path_of(char *buf, size_t n, const char *rel) { snprintf(buf, n, "%s/%s", fixtures, rel); }

static unsigned char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
  *len = fread(buf, 1, (size_t)n, f);
  fclose(f);
  return buf;
}

static cifar_model *open_model(const char *name) {
  char p[1600];
  path_of(p, sizeof p, name);
  cifar_model *m = NULL;
  CHECK_STATUS(cifar_model_open(p, NULL, &m), CIFAR_STATUS_OK);
  return m;
}

static void fill_pixels(unsigned char *px, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) px[i] = (unsigned char)((i * 31u + seed * 17u) % 251u);
}

static void test_versions(void) {
  CHECK(cifar_abi_version() == CIFAR_ABI_VERSION);
  char want[64];
  snprintf(want, sizeof want, "%d.%d.%d", CIFAR_VERSION_MAJOR, CIFAR_VERSION_MINOR, CIFAR_VERSION_PATCH);
  CHECK(strcmp(cifar_version(), want) == 0);
  CHECK(strcmp(cifar_status_str(CIFAR_STATUS_OK), "CIFAR_STATUS_OK") == 0);
  CHECK(strcmp(cifar_status_str(CIFAR_STATUS_PANIC), "CIFAR_STATUS_PANIC") == 0);
  CHECK(strcmp(cifar_status_str(CIFAR_STATUS_INTERNAL), "CIFAR_STATUS_INTERNAL") == 0);
  CHECK(strcmp(cifar_status_str(12345), "CIFAR_STATUS_UNKNOWN") == 0);
  CHECK(cifar_last_error() != NULL);
}

static void test_options(void) {
  cifar_options *o = NULL;
  CHECK_STATUS(cifar_options_new(NULL), CIFAR_STATUS_NULL_POINTER);
  CHECK_STATUS(cifar_options_new(&o), CIFAR_STATUS_OK);
  CHECK(o != NULL);
  CHECK_STATUS(cifar_options_set_device(o, "cpu"), CIFAR_STATUS_OK);
  CHECK_STATUS(cifar_options_set_device(o, "tpu"), CIFAR_STATUS_INVALID_ARGUMENT);
  CHECK(strstr(cifar_last_error(), "tpu") != NULL);
  CHECK_STATUS(cifar_options_set_device(o, NULL), CIFAR_STATUS_NULL_POINTER);
  CHECK_STATUS(cifar_options_set_device(NULL, "cpu"), CIFAR_STATUS_NULL_POINTER);
  CHECK_STATUS(cifar_options_set_threads(o, 2), CIFAR_STATUS_OK);
  CHECK_STATUS(cifar_options_set_threads(o, 100000), CIFAR_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cifar_options_set_threads(NULL, 1), CIFAR_STATUS_NULL_POINTER);
  CHECK_STATUS(cifar_options_set_max_batch(o, 0), CIFAR_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cifar_options_set_max_batch(o, 16), CIFAR_STATUS_OK);
  CHECK_STATUS(cifar_options_set_max_batch(NULL, 16), CIFAR_STATUS_NULL_POINTER);

  char p[1600];
  path_of(p, sizeof p, "models/tiny-int8.cifar");
  cifar_model *m = NULL;
  CHECK_STATUS(cifar_model_open(p, o, &m), CIFAR_STATUS_OK);
  const char *device = NULL, *reason = NULL;
  CHECK_STATUS(cifar_model_device(m, &device, &reason), CIFAR_STATUS_OK);
  CHECK(strcmp(device, "cpu") == 0);
  CHECK(strstr(reason, "cpu") != NULL);
  cifar_model_free(m);

  /* Policy gpu in a build without CUDA: a clear error, never a silent fallback. */
  CHECK_STATUS(cifar_options_set_device(o, "gpu"), CIFAR_STATUS_OK);
  m = NULL;
  CHECK_STATUS(cifar_model_open(p, o, &m), CIFAR_STATUS_DEVICE);
  CHECK(m == NULL);
  CHECK(strstr(cifar_last_error(), "cuda") != NULL);
  /* gpu-or-cpu falls back and says so. */
  CHECK_STATUS(cifar_options_set_device(o, "gpu-or-cpu"), CIFAR_STATUS_OK);
  CHECK_STATUS(cifar_model_open(p, o, &m), CIFAR_STATUS_OK);
  CHECK_STATUS(cifar_model_device(m, NULL, &reason), CIFAR_STATUS_OK);
  CHECK(strstr(reason, "fell back to the CPU") != NULL);
  CHECK_STATUS(cifar_model_device(m, NULL, NULL), CIFAR_STATUS_NULL_POINTER);
  cifar_model_free(m);
  cifar_options_free(o);
  cifar_options_free(NULL);
}

static void test_model_info(void) {
  cifar_model *m = open_model("models/tiny-f32.cifar");
  size_t n = 0, shape[3] = {0, 0, 0};
  CHECK_STATUS(cifar_model_num_classes(m, &n), CIFAR_STATUS_OK);
  CHECK(n == 10);
  CHECK_STATUS(cifar_model_num_classes(NULL, &n), CIFAR_STATUS_NULL_POINTER);
  CHECK_STATUS(cifar_model_num_classes(m, NULL), CIFAR_STATUS_NULL_POINTER);
  const char *label = NULL;
  CHECK_STATUS(cifar_model_label(m, 3, &label), CIFAR_STATUS_OK);
  CHECK(label && strcmp(label, "cat") == 0);
  CHECK_STATUS(cifar_model_label(m, 10, &label), CIFAR_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cifar_model_label(m, 0, NULL), CIFAR_STATUS_NULL_POINTER);
  CHECK_STATUS(cifar_model_input_shape(m, shape), CIFAR_STATUS_OK);
  CHECK(shape[0] == 3 && shape[1] == 32 && shape[2] == 32);
  CHECK_STATUS(cifar_model_input_shape(m, NULL), CIFAR_STATUS_NULL_POINTER);
  const char *precision = NULL;
  CHECK_STATUS(cifar_model_precision(m, &precision), CIFAR_STATUS_OK);
  CHECK(strcmp(precision, "f32") == 0);
  CHECK_STATUS(cifar_model_precision(NULL, &precision), CIFAR_STATUS_NULL_POINTER);
  cifar_model_free(m);
  cifar_model_free(NULL);
}

static void test_open_errors(void) {
  cifar_model *m = NULL;
  CHECK_STATUS(cifar_model_open("/nonexistent/model.cifar", NULL, &m), CIFAR_STATUS_IO);
  CHECK(strstr(cifar_last_error(), "/nonexistent/model.cifar") != NULL);
  CHECK(m == NULL);
  CHECK_STATUS(cifar_model_open(NULL, NULL, &m), CIFAR_STATUS_NULL_POINTER);
  char p[1600];
  path_of(p, sizeof p, "models/tiny-f32.cifar");
  CHECK_STATUS(cifar_model_open(p, NULL, NULL), CIFAR_STATUS_NULL_POINTER);
  /* Malformed files: specific codes, never a crash. */
  path_of(p, sizeof p, "malformed/a-flipped-weight-byte.cifar");
  CHECK_STATUS(cifar_model_open(p, NULL, &m), CIFAR_STATUS_CHECKSUM);
  path_of(p, sizeof p, "malformed/newer-version.cifar");
  CHECK_STATUS(cifar_model_open(p, NULL, &m), CIFAR_STATUS_UNSUPPORTED_VERSION);
  path_of(p, sizeof p, "malformed/reads-a-later-node.cifar");
  CHECK_STATUS(cifar_model_open(p, NULL, &m), CIFAR_STATUS_INVALID_MODEL);
  CHECK(strstr(cifar_last_error(), "cycle") != NULL);
  path_of(p, sizeof p, "malformed/truncated-to-100-bytes.cifar");
  CHECK_STATUS(cifar_model_open(p, NULL, &m), CIFAR_STATUS_INVALID_MODEL);
  CHECK(m == NULL);

  /* From a buffer: the same checks; the buffer can be freed right after. */
  size_t len = 0;
  path_of(p, sizeof p, "models/tiny-int8.cifar");
  unsigned char *bytes = read_file(p, &len);
  CHECK(bytes != NULL);
  CHECK_STATUS(cifar_model_open_buffer(bytes, len, NULL, &m), CIFAR_STATUS_OK);
  CHECK_STATUS(cifar_model_open_buffer(bytes, 0, NULL, &m), CIFAR_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cifar_model_open_buffer(NULL, len, NULL, &m), CIFAR_STATUS_NULL_POINTER);
  cifar_model *bad = NULL;
  CHECK_STATUS(cifar_model_open_buffer(bytes, len / 2, NULL, &bad), CIFAR_STATUS_INVALID_MODEL);
  CHECK(bad == NULL);
  free(bytes);
  size_t n = 0;
  CHECK_STATUS(cifar_model_num_classes(m, &n), CIFAR_STATUS_OK);
  CHECK(n == 10);
  cifar_model_free(m);
}

static void test_inference(void) {
  cifar_model *m = open_model("models/tiny-int8.cifar");
  cifar_session *s = NULL;
  CHECK_STATUS(cifar_session_new(m, NULL), CIFAR_STATUS_NULL_POINTER);
  CHECK_STATUS(cifar_session_new(NULL, &s), CIFAR_STATUS_NULL_POINTER);
  CHECK_STATUS(cifar_session_new(m, &s), CIFAR_STATUS_OK);
  enum { B = 3, IMG = 32 * 32 * 3 };
  unsigned char px[B * IMG];
  fill_pixels(px, sizeof px, 1);
  float logits[B * 10];
  CHECK_STATUS(cifar_logits_rgb8(s, px, sizeof px, B, logits, B * 10), CIFAR_STATUS_OK);
  /* The batch equals the images one by one. */
  for (int b = 0; b < B; b++) {
    float one[10];
    CHECK_STATUS(cifar_logits_rgb8(s, px + b * IMG, IMG, 1, one, 10), CIFAR_STATUS_OK);
    CHECK(memcmp(one, logits + b * 10, sizeof one) == 0);
  }
  /* Wrong sizes, zero batch, NULLs. */
  CHECK_STATUS(cifar_logits_rgb8(s, px, sizeof px - 1, B, logits, B * 10), CIFAR_STATUS_BUFFER_SIZE);
  CHECK_STATUS(cifar_logits_rgb8(s, px, sizeof px, B, logits, B * 10 - 1), CIFAR_STATUS_BUFFER_SIZE);
  CHECK_STATUS(cifar_logits_rgb8(s, px, sizeof px, 0, logits, B * 10), CIFAR_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cifar_logits_rgb8(s, px, 0, B, logits, B * 10), CIFAR_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cifar_logits_rgb8(s, NULL, sizeof px, B, logits, B * 10), CIFAR_STATUS_NULL_POINTER);
  CHECK_STATUS(cifar_logits_rgb8(s, px, sizeof px, B, NULL, B * 10), CIFAR_STATUS_NULL_POINTER);
  CHECK_STATUS(cifar_logits_rgb8(NULL, px, sizeof px, B, logits, B * 10), CIFAR_STATUS_NULL_POINTER);
  CHECK_STATUS(cifar_logits_rgb8(s, px, (size_t)-1, B, logits, B * 10), CIFAR_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cifar_logits_rgb8(s, px, sizeof px, (size_t)-1 / 4, logits, B * 10), CIFAR_STATUS_INVALID_ARGUMENT);

  /* NCHW input. */
  static float nchw[2 * 3 * 32 * 32];
  for (size_t i = 0; i < sizeof nchw / sizeof nchw[0]; i++) nchw[i] = (float)((int)(i % 41) - 20) / 10.0f;
  float l2[20];
  CHECK_STATUS(cifar_logits_nchw(s, nchw, sizeof nchw / sizeof nchw[0], 2, l2, 20), CIFAR_STATUS_OK);
  CHECK_STATUS(cifar_logits_nchw(s, nchw, 100, 2, l2, 20), CIFAR_STATUS_BUFFER_SIZE);
  CHECK_STATUS(cifar_logits_nchw(s, NULL, 6144, 2, l2, 20), CIFAR_STATUS_NULL_POINTER);

  /* Top-k, batch. */
  cifar_prediction top[B * 3];
  CHECK_STATUS(cifar_classify_rgb8(s, px, sizeof px, B, 3, top, B * 3), CIFAR_STATUS_OK);
  for (int b = 0; b < B; b++) {
    int best = 0;
    for (int c = 1; c < 10; c++)
      if (logits[b * 10 + c] > logits[b * 10 + best]) best = c;
    CHECK(top[b * 3].class_index == (uint32_t)best);
    CHECK(top[b * 3].logit == logits[b * 10 + best]);
    CHECK(top[b * 3].probability >= top[b * 3 + 1].probability);
    CHECK(top[b * 3 + 1].probability >= top[b * 3 + 2].probability);
  }
  CHECK_STATUS(cifar_classify_rgb8(s, px, sizeof px, B, 0, top, B * 3), CIFAR_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cifar_classify_rgb8(s, px, sizeof px, B, 11, top, B * 3), CIFAR_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cifar_classify_rgb8(s, px, sizeof px, B, 3, top, B * 3 - 1), CIFAR_STATUS_BUFFER_SIZE);
  CHECK_STATUS(cifar_classify_rgb8(s, px, sizeof px, B, 3, NULL, B * 3), CIFAR_STATUS_NULL_POINTER);

  /* Encoded images. */
  char p[1600];
  path_of(p, sizeof p, "images/15004-cat.png");
  size_t len = 0;
  unsigned char *png = read_file(p, &len);
  CHECK(png != NULL);
  cifar_prediction enc[5];
  CHECK_STATUS(cifar_classify_encoded(s, png, len, 5, enc, 5), CIFAR_STATUS_OK);
  CHECK(enc[0].class_index < 10 && enc[0].probability > 0.0f);
  CHECK_STATUS(cifar_classify_encoded(s, png, len / 2, 5, enc, 5), CIFAR_STATUS_IMAGE);
  CHECK_STATUS(cifar_classify_encoded(s, (const uint8_t *)"not an image", 12, 5, enc, 5), CIFAR_STATUS_IMAGE);
  CHECK_STATUS(cifar_classify_encoded(s, png, len, 5, enc, 4), CIFAR_STATUS_BUFFER_SIZE);
  CHECK_STATUS(cifar_classify_encoded(s, png, len, 5, NULL, 5), CIFAR_STATUS_NULL_POINTER);
  free(png);

  /* Freeing the model while the session lives: the session keeps it alive. */
  cifar_model_free(m);
  float after[B * 10];
  CHECK_STATUS(cifar_logits_rgb8(s, px, sizeof px, B, after, B * 10), CIFAR_STATUS_OK);
  CHECK(memcmp(after, logits, sizeof after) == 0);
  cifar_session_free(s);
  cifar_session_free(NULL);
}

static void test_panic_boundary(void) {
  CHECK_STATUS(cifar_test_force_panic(), CIFAR_STATUS_PANIC);
  CHECK(strstr(cifar_last_error(), "panic") != NULL);
  /* The library keeps working. */
  cifar_model *m = open_model("models/tiny-f32.cifar");
  size_t n = 0;
  CHECK_STATUS(cifar_model_num_classes(m, &n), CIFAR_STATUS_OK);
  cifar_model_free(m);
}

/* 8 threads share one model, each with its own session. The sessions are created
 * first and the model handle is freed while the threads run: sessions keep it alive. */
enum { THREADS = 8, TB = 4, TIMG = 32 * 32 * 3 };
static unsigned char thread_px[TB * TIMG];
static float reference[TB * 10];

struct worker {
  cifar_session *session;
  int ok;
};

static void *worker_main(void *arg) {
  struct worker *w = arg;
  w->ok = 1;
  for (int i = 0; i < 5 && w->ok; i++) {
    float out[TB * 10];
    w->ok = cifar_logits_rgb8(w->session, thread_px, sizeof thread_px, TB, out, TB * 10) == CIFAR_STATUS_OK &&
            memcmp(out, reference, sizeof out) == 0;
  }
  cifar_session_free(w->session);
  return NULL;
}

static void test_threads(void) {
  const char *models[2] = {"models/tiny-f32.cifar", "models/tiny-int8.cifar"};
  for (int mi = 0; mi < 2; mi++) {
    cifar_model *m = open_model(models[mi]);
    fill_pixels(thread_px, sizeof thread_px, 7);
    cifar_session *s = NULL;
    CHECK_STATUS(cifar_session_new(m, &s), CIFAR_STATUS_OK);
    CHECK_STATUS(cifar_logits_rgb8(s, thread_px, sizeof thread_px, TB, reference, TB * 10), CIFAR_STATUS_OK);
    cifar_session_free(s);
    pthread_t t[THREADS];
    struct worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
      w[i].ok = 0;
      w[i].session = NULL;
      CHECK_STATUS(cifar_session_new(m, &w[i].session), CIFAR_STATUS_OK);
    }
    for (int i = 0; i < THREADS; i++) CHECK(pthread_create(&t[i], NULL, worker_main, &w[i]) == 0);
    cifar_model_free(m); /* while the sessions run */
    for (int i = 0; i < THREADS; i++) {
      pthread_join(t[i], NULL);
      CHECK(w[i].ok);
    }
  }
}

/* Logits bit for bit equal to the Rust SDK's (dump_logits output). */
static void test_matches_rust(const char *rust_file) {
  FILE *f = fopen(rust_file, "r");
  CHECK(f != NULL);
  if (!f) return;
  char model_name[256], image_name[256];
  int lines = 0;
  while (fscanf(f, "%255s %255s", model_name, image_name) == 2) {
    unsigned bits[10];
    for (int c = 0; c < 10; c++) CHECK(fscanf(f, "%x", &bits[c]) == 1);
    char p[1600];
    snprintf(p, sizeof p, "models/%s", model_name);
    cifar_model *m = open_model(p);
    cifar_session *s = NULL;
    CHECK_STATUS(cifar_session_new(m, &s), CIFAR_STATUS_OK);
    snprintf(p, sizeof p, "%s/images/%s", fixtures, image_name);
    size_t len = 0;
    unsigned char *img = read_file(p, &len);
    CHECK(img != NULL);
    /* Decode through the library, then compare raw logits. */
    cifar_prediction top[10];
    CHECK_STATUS(cifar_classify_encoded(s, img, len, 10, top, 10), CIFAR_STATUS_OK);
    for (int k = 0; k < 10; k++) {
      unsigned got;
      memcpy(&got, &top[k].logit, sizeof got);
      CHECK(got == bits[top[k].class_index]);
    }
    free(img);
    cifar_session_free(s);
    cifar_model_free(m);
    lines++;
  }
  fclose(f);
  CHECK(lines == 20);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s FIXTURES_DIR RUST_LOGITS.txt\n", argv[0]);
    return 2;
  }
  snprintf(fixtures, sizeof fixtures, "%s", argv[1]);
  test_versions();
  test_options();
  test_model_info();
  test_open_errors();
  test_inference();
  test_panic_boundary();
  test_threads();
  test_matches_rust(argv[2]);
  printf("%d checks, %d failures\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
